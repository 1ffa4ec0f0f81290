"""One validity rule, both sides, on the real stack: records of every kind that is no review, and
valid ones in bytes Avro's writers never produce, among a history of edits of fresh courses.

The stream's statistics (topics, PostgreSQL, the read API) must be those of the valid records
alone (a refused edit supersedes nothing), each refusal must be a dead letter of its kind at its
input position, and the batch, rebuilt from the raw sink's rows of these courses, must agree:
the same statistics (the reconciliation), the same verdict on the non-canonical records, and
the same refusals by kind (its verdicts table and the raw sink's dead letters)."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy import Engine, text

from orchestration.assets.reconciliation import read_refusals
from orchestration.resources import KafkaResource, SchemasResource
from streaming.core import java_text
from streaming.core.validity import RATING, TEXT, TIMESTAMP, TOMBSTONE, UNDECODABLE
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
from tests.integration.test_edits_end_to_end import MODEL, TIMEOUT_S, exact_everywhere
from tests.integration.test_legacy_producer import copy_courses
from tests.integration.test_orchestration import reconcile

pytestmark = pytest.mark.integration
MARK = "\u20ac\u20ac"  # six UTF-8 bytes replaced by six that are not UTF-8


def invalid_utf8(schema_id: int, rec: dict[str, Any], bad: bytes) -> tuple[bytes, dict]:
    """`rec` with six bytes of its content that are not UTF-8, and the review Java reads."""
    content = f"{rec['content']} {MARK}"
    value = encode_review(schema_id, review_record({**rec, "content": content}))
    at = value.rindex(MARK.encode())
    read = {**rec, "content": java_text.decode(content.encode()[:-6] + bad)}
    return value[:at] + bad + value[at + 6 :], read


def padded_id(schema_id: int, rec: dict[str, Any]) -> bytes:
    """`rec` with its id's varint one byte longer than needed."""
    value = encode_review(schema_id, review_record(rec))
    end = next(i for i in range(5, len(value)) if value[i] < 0x80)
    return value[:end] + bytes([value[end] | 0x80, 0]) + value[end + 1 :]


def produce_values(settings: Settings, values: list[tuple[bytes, bytes | None]]) -> list:
    """(key, value) pairs into udemy-reviews in order; the (partition, offset) of each."""
    p = Producer(
        settings.kafka_config(**{"partitioner": "murmur2_random", "enable.idempotence": True})
    )
    positions: list[tuple[int, int] | None] = [None] * len(values)

    def delivered(i: int):
        def report(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            positions[i] = (msg.partition(), msg.offset())

        return report

    for i, (key, value) in enumerate(values):
        p.produce("udemy-reviews", value, key, on_delivery=delivered(i))
        p.poll(0)
    assert p.flush(60) == 0
    return positions


def test_every_kind_of_record_is_judged_alike_by_stream_and_batch(
    settings: Settings, engine: Engine, scratch: SchemasResource
) -> None:
    rng = random.Random(32)
    now_ms = int(time.time() * 1000)
    base = 8_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 4)
    sid = Registry(settings.schema_registry_url).register("udemy-reviews-value", "review.avsc")
    records = history(60, now_ms, courses, first_id=base * 10, seed=32)
    for rec in records:
        rec["_fraud"] = MODEL.is_fraud(review_record(rec))
    valid = [(rec, encode_review(sid, review_record(rec))) for rec in records]
    for n, bad in enumerate(
        (b"\xed\xa0\x80\xed\xbf\xbf", b"\xe2\x82ABCD", b"\xff\xfe\xfd\xfc\xfb\xfa")
    ):
        rec = {**records[n], "modified": records[n]["modified"] + 1000 + n}
        value, read = invalid_utf8(sid, rec, bad)
        valid.append(({**read, "_fraud": MODEL.is_fraud(review_record(read))}, value))
    padded = {**records[5], "modified": records[5]["modified"] + 2000}
    padded["_fraud"] = MODEL.is_fraud(review_record(padded))
    valid.append((padded, padded_id(sid, padded)))
    target = records[7]  # its later edits are refused: it stays the current version
    later = {**target, "modified": target["modified"] + 10**6}
    later["course"] = {**target["course"], "title": "A title from a refused record"}
    invalid = {
        RATING: encode_review(sid, review_record({**later, "rating": "4.7"})),
        TIMESTAMP: encode_review(sid, review_record({**later, "modified": 253_402_300_800_000})),
        TEXT: encode_review(sid, review_record({**later, "content": "a\x00b"})),
        TOMBSTONE: None,
        UNDECODABLE: b"\x01" + encode_review(sid, review_record(later))[1:],
    }
    sent = [(str(r["id"]).encode(), v) for r, v in valid]
    sent += [(str(target["id"]).encode(), v) for v in invalid.values()]
    positions = produce_values(settings, sent)
    valid_positions = positions[: len(valid)]
    refused = dict(zip(positions[len(valid) :], invalid, strict=True))

    ids = set(courses)
    expected = expected_stats(
        [r for r, _ in valid], valid_positions, epoch_day(now_ms), [r["_fraud"] for r, _ in valid]
    )
    exact_everywhere(settings, ids, expected)

    # the raw sink stores the valid versions and the bad rating; it dead-letters the rest
    copy_courses(engine, scratch.stream_schema, ids, len(valid) + 1)
    checks = reconcile(settings, scratch, epoch_day(now_ms))
    assert checks["long_term_stats_agree"] and checks["recent_stats_agree"], checks

    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        batch, stream = read_refusals(
            kafka, engine, scratch.reconciliation_schema, settings.schema_registry_url
        )
        mine_b = {p: k for p, k in batch.items() if p in refused}
        mine_s = {p: k for p, k in stream.items() if p in refused}
        if mine_b == mine_s == refused or time.monotonic() > deadline:
            break
        time.sleep(1.0)  # poll interval: the raw sink's dead letters may still be on their way
    assert mine_s == refused, "the stream refuses each record as its kind"
    assert mine_b == refused, "the batch (verdicts and the raw sink's dead letters) alike"

    with engine.connect() as conn:
        verdicts = dict(
            conn.execute(
                text(
                    "select (source_partition, source_offset)::text, verdict from "
                    f'"{scratch.reconciliation_schema}".review_verdicts'
                )
            ).all()
        )
    for (rec, _), (p, o) in zip(
        valid[len(records) :], valid_positions[len(records) :], strict=True
    ):
        assert verdicts[f"({p},{o})"] == ("fraud" if rec["_fraud"] else "valid")
