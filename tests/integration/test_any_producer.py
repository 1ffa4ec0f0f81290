"""Any producer, any record: `udemy-reviews` written as other producers write it, exact in both
statistics topics, PostgreSQL and the read API.

A history of edits (re-ratings, verdict flips, moves, ties, stale re-sends) goes into the real
`udemy-reviews`, each record the way one of several producers would send it: keyed by the id
as ours are, with no key on a partition of its own choosing (the original Java producer), with
the id as an 8-byte long, or with a key that is not the id at all. So one review's versions sit
on several partitions. With them: a review whose record is a few hundred bytes under the
input's limit (incompressible text, sent uncompressed) and a 3 MB review sent zstd-compressed.
The reference orders versions by (modified, partition, offset) over the positions the broker
gave the records, with the rule's verdicts.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer

from streaming.core.window import epoch_day
from streaming.serde import Registry
from streaming.settings import Settings
from tests.integration.edit_history import (
    courses_on_distinct_partitions,
    expected_stats,
    history,
    review_record,
)
from tests.integration.kafka_helpers import encode_review
from tests.integration.test_edits_end_to_end import exact_everywhere, with_rule_verdicts

pytestmark = pytest.mark.integration
INPUT_LIMIT = 1_048_588  # the input's max.message.bytes (Kafka's default, as bootstrapped)
STYLES = ("id", "none", "long", "other")


def producers(settings: Settings) -> dict[str, Producer]:
    """Uncompressed (ours and the legacy one) and zstd-compressed, both allowed records up to
    8 MB on the client side: the broker's limit is what counts."""
    common = {"partitioner": "murmur2_random", "message.max.bytes": 8_388_608, "linger.ms": 5}
    return {
        "plain": Producer(settings.kafka_config(**common)),
        "zstd": Producer(settings.kafka_config(**common, **{"compression.type": "zstd"})),
    }


def send(
    producer: Producer, value: bytes, review_id: int, style: str, rng: random.Random, out: list
) -> None:
    """One record the way `style` producers send it; its (partition, offset) lands in out[i]."""
    i = len(out)
    out.append(None)

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        out[i] = (msg.partition(), msg.offset())

    kwargs: dict[str, Any] = {"on_delivery": delivered}
    if style == "id":
        kwargs["key"] = str(review_id).encode()
    elif style == "none":
        kwargs["partition"] = rng.randrange(4)  # a keyless producer picks any partition
    elif style == "long":
        kwargs["key"] = review_id.to_bytes(8, "big", signed=True)
    else:
        kwargs["key"] = f"user-{rng.randrange(1000)}".encode()
    producer.produce("udemy-reviews", value, **kwargs)
    producer.flush(60)  # one at a time: the order of production is the history's


def near_limit_content(schema_id: int, rec: dict[str, Any]) -> dict[str, Any]:
    """The record with incompressible text filling the input's limit but ~300 bytes (batch and
    record framing take the rest)."""
    bare = len(encode_review(schema_id, review_record({**rec, "content": ""})))
    size = INPUT_LIMIT - 300 - bare - 8  # the text's length prefix takes a few bytes
    return {**rec, "content": secrets.token_hex(size // 2)}


def test_records_of_any_producer_are_counted_exactly(settings: Settings) -> None:
    rng = random.Random(31)
    now_ms = int(time.time() * 1000)
    base = 6_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 6)
    records = history(240, now_ms, courses, first_id=base * 10, seed=31)
    last = records[-1]
    records.append({**last, "id": last["id"] + 1_000_001, "modified": last["modified"] + 1})
    records.append({**last, "id": last["id"] + 1_000_002, "modified": last["modified"] + 2})
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    records[-2] = near_limit_content(schema_id, records[-2])
    records[-1] = {**records[-1], "content": "kafka streams " * 220_000}  # 3 MB, compressible
    verdicts = with_rule_verdicts(records[:-2], rng)
    verdicts += with_rule_verdicts(records[-2:], random.Random(0))
    ps = producers(settings)
    positions: list = []
    for n, rec in enumerate(records):
        value = encode_review(schema_id, review_record(rec))
        if n == len(records) - 2:
            assert INPUT_LIMIT - 400 < len(value) < INPUT_LIMIT - 250, len(value)
        producer = ps["zstd"] if n == len(records) - 1 else ps["plain"]
        send(producer, value, rec["id"], rng.choice(STYLES), rng, positions)
    assert all(pos is not None for pos in positions)
    assert len({p for p, _ in positions}) == 4
    expected = expected_stats(records, positions, epoch_day(now_ms), fraud=verdicts)
    ids = set(courses) & {r["course"]["id"] for r in records}
    exact_everywhere(settings, ids, expected)
