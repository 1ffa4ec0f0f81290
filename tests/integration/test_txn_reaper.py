"""The stack's hanging-transaction reaper on the real broker: a live transaction, open for longer
than the reaper's bound, is seen on its partition but left alone, because its coordinator still
holds it; it then commits, and its record is read.

(What it does abort, a transaction no coordinator knows of, cannot be made on purpose: it takes
a broker SIGKILL at the moment a coordinator completes a transaction. tests/unit/test_txn_reaper.py
runs the abort path on the tool's real answer from such a run.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

from stack.txn_reaper import MIN_OPEN_MINUTES, TOOL, Reaper, run_tool
from streaming.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
JAVA = str(Path(os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")) / "bin/java")
TOOL_CMD = [JAVA, "-cp", str(STACK_DIR / "dist/libs/*"), TOOL]


def login(bootstrap: str) -> list[str]:
    """The address, then the operator's login for the Kafka tools (`.stack/env`)."""
    return [bootstrap, "--command-config", os.environ["KAFKA_CLIENT_PROPERTIES"]]


def open_transaction_start(bootstrap: str, topic: str) -> str:
    """CurrentTransactionStartOffset of the partition's producers ("None" when none is open)."""
    done = run_tool(
        [
            *TOOL_CMD,
            "--bootstrap-server",
            *login(bootstrap),
            "describe-producers",
            "--topic",
            topic,
            "--partition",
            "0",
        ]
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    return ",".join(row[-1] for row in rows)


def test_a_live_transaction_older_than_the_bound_is_not_aborted(
    settings: Settings, temp_topic: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    producer = Producer(
        {
            **settings.kafka_config(),
            "transactional.id": f"reaper-test-{temp_topic}",
            "transaction.timeout.ms": 180_000,  # outlives the wait: the coordinator keeps it open
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(temp_topic, key=b"k", value=b"still open")
    assert producer.flush(30) == 0
    time.sleep(MIN_OPEN_MINUTES * 60 + 5)  # the transaction ages past the bound

    assert open_transaction_start(bootstrap, temp_topic) == "0"  # open, and a candidate by age
    found = Reaper(TOOL_CMD, login(bootstrap), 1, run_tool).find()
    assert [t for t in found if t.topic == temp_topic] == []

    producer.commit_transaction(30)
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"reaper-test-{temp_topic}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([temp_topic])
    try:
        deadline = time.monotonic() + 30
        values = []
        while not values and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
        assert values == [b"still open"]
    finally:
        consumer.close()
