"""Run a peer engine (Kafka Streams, Quix Streams) as a process and time it from the outside.

Every peer prints one line `FIRST <epoch_ms>` to stdout when it handles its first input record.
The harness times from that moment until a completion condition holds, observed on the broker:

- fraud: the peer's consumer group has committed the whole input (under exactly-once the
  outputs of those records are committed in the same transactions);
- aggregate: the peer's output topic (read_committed) holds, for every course, a statistic whose
  `count_reviews` equals the expected count.

Observing from outside costs at most one poll interval (50 ms) on runs of several seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streaming.config import Settings
from streaming.core.avro_codec import load_schema, schemas_dir, split_confluent

POLL_S = 0.05


@dataclass
class PeerRun:
    seconds: float
    records: int

    @property
    def rps(self) -> float:
        return self.records / self.seconds


class _Stdout(threading.Thread):
    """Echoes the peer's output to a log file and catches its FIRST line."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.log = proc, log
        self.first_ms: int | None = None

    def run(self) -> None:
        with self.log.open("w") as out:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                out.write(line)
                out.flush()
                if self.first_ms is None and line.startswith("FIRST "):
                    self.first_ms = int(line.split()[1])


def committed_total(admin: AdminClient, group: str, topics: Sequence[str]) -> int:
    """Sum of the group's committed offsets on the given topics (0 before its first commit)."""
    req = ConsumerGroupTopicPartitions(group)
    try:
        res = admin.list_consumer_group_offsets([req])[group].result(10)
    except KafkaException:
        return 0
    return sum(tp.offset for tp in res.topic_partitions if tp.topic in topics and tp.offset > 0)


def input_committed(
    settings: Settings, group: str, topics: Sequence[str], records: int
) -> Callable[[], bool]:
    """Fraud completion: the group committed all `records` input offsets."""
    admin = AdminClient(settings.kafka_config())
    return lambda: committed_total(admin, group, topics) >= records


class StatsWatcher:
    """Aggregate completion: every course's latest count_reviews reached its expected value."""

    def __init__(self, settings: Settings, topic: str, expected: dict[int, int]) -> None:
        from fastavro import schemaless_reader

        self._read = schemaless_reader
        self._schema = load_schema(schemas_dir() / "course_statistic.avsc")
        self.expected = expected
        self.latest: dict[int, int] = {}
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}",
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        self.consumer.subscribe([topic])

    def __call__(self) -> bool:
        import io

        for msg in self.consumer.consume(10_000, timeout=POLL_S):
            if msg.error() or msg.value() is None:
                continue
            _, body = split_confluent(msg.value())
            rec = self._read(io.BytesIO(body), self._schema, self._schema)
            self.latest[rec["course_id"]] = rec["count_reviews"]
        return all(self.latest.get(c) == n for c, n in self.expected.items())

    def close(self) -> None:
        self.consumer.close()


def run_peer(
    cmd: Sequence[str],
    done: Callable[[], bool],
    records: int,
    log: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> PeerRun:
    """Start `cmd`, wait for FIRST and then for `done()`, stop the peer, return the timing."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    reader = _Stdout(proc, log)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            if proc.poll() is not None:
                code = proc.returncode
                raise RuntimeError(f"peer exited with {code} before finishing; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"peer did not finish within {timeout_s:.0f} s; see {log}")
            time.sleep(POLL_S)  # the observation interval, not a readiness wait
        end_ms = time.time() * 1000
        if reader.first_ms is None:
            raise RuntimeError(f"peer finished without printing its FIRST line; see {log}")
        return PeerRun(seconds=(end_ms - reader.first_ms) / 1000, records=records)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the peer's process group, SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def end_offsets(settings: Settings, topic: str, partitions: int) -> int:
    """Total records in a topic (high watermarks), for sanity checks on peer input."""
    c = Consumer(settings.kafka_config(**{"group.id": "bench-peek"}))
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        c.close()
