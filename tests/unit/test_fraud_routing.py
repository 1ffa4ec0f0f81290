"""The fraud filter's pure transform: routes, verdicts and dead-letter reasons."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from streaming.core.avro_codec import confluent_frame
from streaming.core.fraud import HashFraudModel
from streaming.core.fraud_routing import DEAD, FRAUD, VALID, route
from streaming.core.review_frames import writer_for
from streaming.serde import SCHEMAS_DIR, local_schema

REVIEW = local_schema("review.avsc")
MODEL = HashFraudModel()
REVIEW_ID, EVOLVED_ID, STATS_ID = 1, 2, 3


def review(i: int, content: str | None = "") -> dict[str, Any]:
    return {
        "id": i,
        "title": None,
        "content": content,
        "rating": "5.0",
        "created": 1_600_000_000_000 + i,
        "modified": 1_600_000_000_000 + i,
        "user": {"title": "A B", "name": "A", "display_name": "A B"},
        "course": {"id": 42, "title": "Kafka", "url": "/kafka/"},
    }


def body(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema, record)
    return buf.getvalue()


def evolved_schema() -> Any:
    """Review plus an optional field: BACKWARD-compatible, resolvable into Review."""
    raw = json.loads((SCHEMAS_DIR / "review.avsc").read_text())
    raw["fields"].append({"name": "language", "type": ["null", "string"], "default": None})
    return parse_schema(raw)


@pytest.fixture(scope="module")
def writers() -> dict[int, Any]:
    return {
        REVIEW_ID: writer_for(REVIEW, REVIEW),
        EVOLVED_ID: writer_for(evolved_schema(), REVIEW),
        STATS_ID: writer_for(local_schema("course_statistic.avsc"), REVIEW),
    }


def test_canonical_values_get_the_rule_verdict(writers):
    bodies = [body(REVIEW, review(i)) for i in range(2000)]
    codes, reasons, ids = route(
        [confluent_frame(REVIEW_ID, b) for b in bodies], writers.get, MODEL, REVIEW
    )
    assert reasons == {}
    assert ids.tolist() == [review(i)["id"] for i in range(2000)]
    assert codes.tolist() == [FRAUD if MODEL.is_fraud_body(b) else VALID for b in bodies]
    assert 0.03 < (codes == FRAUD).mean() < 0.07


def test_other_writer_schema_is_judged_on_its_canonical_bytes(writers):
    evolved = evolved_schema()
    records = [review(i) for i in range(300)]
    values = [confluent_frame(EVOLVED_ID, body(evolved, {**r, "language": "en"})) for r in records]
    codes, reasons, ids = route(values, writers.get, MODEL, REVIEW)
    assert reasons == {}
    assert codes.tolist() == [FRAUD if MODEL.is_fraud(r) else VALID for r in records]
    assert ids.tolist() == [r["id"] for r in records]  # read from the resolved record


def test_unreadable_records_are_dead_with_a_reason(writers):
    good = body(REVIEW, review(7, "fine"))
    cases = {
        "null value": None,
        "shorter than the 5-byte Confluent header": b"\x00\x00\x01",
        "magic byte 1": b"\x01" + confluent_frame(REVIEW_ID, good)[1:],
        "unknown schema id 99": confluent_frame(99, good),
        "malformed Avro body": confluent_frame(REVIEW_ID, good[:-2]),
        "trailing bytes": confluent_frame(REVIEW_ID, good + b"\x00"),
        "cannot read with writer schema 3": confluent_frame(STATS_ID, body(REVIEW, review(8))),
    }
    values = [*cases.values(), confluent_frame(REVIEW_ID, good)]
    writers = {**writers, 99: None}
    codes, reasons, ids = route(values, writers.get, MODEL, REVIEW)
    assert codes.tolist()[:-1] == [DEAD] * len(cases)
    assert ids.tolist() == [0] * len(cases) + [7]
    assert codes[-1] in (VALID, FRAUD)
    for i, expected in enumerate(cases):
        assert expected in str(reasons[i]), (expected, reasons[i])
        assert reasons[i].kind == ("tombstone" if i == 0 else "undecodable")
