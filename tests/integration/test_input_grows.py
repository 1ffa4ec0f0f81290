"""The input may grow: partitions added to `udemy-reviews` change no result.

Both workers of the committed code run on topics of their own: an input of 3 partitions (as the
original deployment had), everything downstream as declared (4). Reviews and edits go in keyed
by the id; then the input gains a partition, so the same reviews' later edits land on other
partitions than their earlier versions; the statistics equal the independent computation over
(modified, partition, offset) throughout."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from streaming.core.window import epoch_day
from streaming.serde import Registry
from streaming.settings import Settings
from tests.integration.edit_history import (
    courses_on_distinct_partitions,
    expected_stats,
    history,
    review_record,
)
from tests.integration.kafka_helpers import (
    delete_topics,
    encode_review,
    make_topics,
    worker_process,
)
from tests.integration.test_edits_end_to_end import MODEL, with_rule_verdicts
from tests.integration.test_fraud_filter import worker_env
from tests.integration.test_stats_aggregator import PORTS, env_for, stream_stats

pytestmark = pytest.mark.integration
TIMEOUT_S = 180


def produce_keyed(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> list:
    """One at a time, keyed (murmur2 over the topic's partitions now); their positions."""
    p = Producer(settings.kafka_config(**{"partitioner": "murmur2_random"}))
    out: list = []
    for key, value in values:

        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            out.append((msg.partition(), msg.offset()))

        p.produce(topic, value, key, on_delivery=delivered)
        assert p.flush(30) == 0
    return out


def eventually(read, expected, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        got = read()
        if got.astype(object).equals(expected.astype(object)):
            return
        assert time.monotonic() < deadline, f"{what}:\n{got}\nexpected:\n{expected}"
        time.sleep(1.0)  # poll interval: the workers are catching up


def test_partitions_added_to_the_input_change_no_result(
    settings: Settings, admin: AdminClient, tmp_path: Path
) -> None:
    rng = random.Random(53)
    now_ms = int(time.time() * 1000)
    base = 8_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 4)
    records = history(160, now_ms, courses, first_id=base * 10, seed=53)
    verdicts = with_rule_verdicts(records, rng)
    # an edit of every review once the input grew, another rating: half at a later modified,
    # half at the same modified as its latest version (a tie across partitions: the greater
    # partition, then the greater offset, is current)
    latest = {r["id"]: r for r in sorted(records, key=lambda r: r["modified"])}
    later = [
        {
            **r,
            "rating": "1.0" if r["rating"] != "1.0" else "5.0",
            "modified": r["modified"] + (10**6 if n % 2 else 0),
        }
        for n, r in enumerate(latest.values())
    ]
    verdicts += [MODEL.is_fraud(review_record(r)) for r in later]
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )

    def keyed(batch: list[dict]) -> list[tuple[bytes, bytes]]:
        return [(str(r["id"]).encode(), encode_review(schema_id, review_record(r))) for r in batch]

    [input_topic] = make_topics(admin, "grow", ["in"], partitions=3).values()
    t = make_topics(admin, "grow", sorted(set(PORTS.values())))
    group = f"grow-{uuid.uuid4().hex[:8]}"
    fraud_env = worker_env(
        {"in": input_topic, "valid": t["valid"], "fraud": t["fraud"], "dlq": t["dlq"]},
        f"{group}-ff",
    )
    day = epoch_day(now_ms)
    try:
        with (
            worker_process("streaming.workers.fraud_filter", fraud_env, tmp_path / "ff.log"),
            worker_process(
                "streaming.workers.stats_aggregator", env_for(t, f"{group}-agg"), tmp_path / "a.log"
            ) as agg,
        ):
            agg.wait_healthy()
            positions = produce_keyed(settings, input_topic, keyed(records))
            expected = expected_stats(records, positions, day, fraud=verdicts[: len(records)])
            eventually(lambda: stream_stats(settings, t), expected, "before the input grew")
            for fut in admin.create_partitions([NewPartitions(input_topic, 4)]).values():
                fut.result(30)
            positions += produce_keyed(settings, input_topic, keyed(later))
            grew = [(pos, r["id"]) for pos, r in zip(positions, records + later, strict=True)]
            assert any(p == 3 for (p, _), _ in grew), "edits on the new partition"
            apart = {rid for (p, _), rid in grew if p == 3} & {rid for (p, _), rid in grew if p < 3}
            assert apart, "some reviews' versions sit on two partitions"
            expected = expected_stats(records + later, positions, day, fraud=verdicts)
            eventually(lambda: stream_stats(settings, t), expected, "after the input grew")
    finally:
        delete_topics(admin, [input_topic, *t.values()])
