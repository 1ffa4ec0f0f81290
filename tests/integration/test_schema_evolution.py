"""Schema evolution of the system of record: `udemy-reviews-value` is FULL_TRANSITIVE, so every
writer schema the registry accepts is one our reader schema (review.avsc) reads, and one it
refuses never reaches the topic.

Another producer registers a v2 that adds an optional field and a v3 that drops `title` (whose
default is null), and writes reviews and edits with them among ours: the stream counts them by
schema resolution, the raw sink stores them (a new column, a null title), and the batch rebuilt
from the sink's rows agrees (the reconciliation). A v2 that drops `rating` or makes the course
title nullable is refused with the registry's reason, and so is our own schema under a subject
whose history it would break (`reviews bootstrap` says why)."""

from __future__ import annotations

import copy
import io
import json
import random
import time
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_writer
from sqlalchemy import Engine

from orchestration.resources import SchemasResource
from streaming.admin import SchemaRefused, register_schemas
from streaming.core.avro_codec import confluent_frame
from streaming.core.window import epoch_day
from streaming.pipeline import TopicSpec
from streaming.serde import SCHEMAS_DIR
from streaming.settings import Settings, registry_client_config
from tests.integration.edit_history import (
    courses_on_distinct_partitions,
    expected_stats,
    history,
    review_record,
)
from tests.integration.test_edits_end_to_end import MODEL, exact_everywhere
from tests.integration.test_legacy_producer import copy_courses
from tests.integration.test_orchestration import reconcile
from tests.integration.test_validity_end_to_end import produce_values

pytestmark = pytest.mark.integration
SUBJECT = "udemy-reviews-value"
REVIEW = json.loads((SCHEMAS_DIR / "review.avsc").read_text())


def with_language() -> dict[str, Any]:
    """v2: an optional field added (with its default)."""
    schema = copy.deepcopy(REVIEW)
    schema["fields"].append({"name": "language", "type": ["null", "string"], "default": None})
    return schema


def without_title() -> dict[str, Any]:
    """v3: `title` dropped (readers of older versions fill in its default, null)."""
    schema = with_language()
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "title"]
    return schema


def encode(schema: dict[str, Any], schema_id: int, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return confluent_frame(schema_id, out.getvalue())


@pytest.fixture
def registry(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient(registry_client_config(settings.schema_registry_url))


def test_the_input_subject_is_full_transitive_and_ours_backward(registry) -> None:
    assert registry.get_compatibility(SUBJECT) == "FULL_TRANSITIVE"
    for subject in ("long-term-stats-value", "recent-stats-value"):
        assert registry.get_compatibility(subject) == "BACKWARD"


def test_writer_schemas_our_reader_cannot_read_are_refused_with_the_reason(registry) -> None:
    no_rating = copy.deepcopy(REVIEW)
    no_rating["fields"] = [f for f in no_rating["fields"] if f["name"] != "rating"]
    nullable_title = copy.deepcopy(REVIEW)
    course = next(f for f in nullable_title["fields"] if f["name"] == "course")
    next(f for f in course["type"]["fields"] if f["name"] == "title")["type"] = ["null", "string"]
    before = registry.get_versions(SUBJECT)
    for change, schema in (("rating dropped", no_rating), ("title nullable", nullable_title)):
        with pytest.raises(SchemaRegistryError) as refused:
            registry.register_schema(SUBJECT, Schema(json.dumps(schema), "AVRO"))
        assert refused.value.http_status_code == 409, change
        assert refused.value.error_message, "the registry says why"
    assert registry.get_versions(SUBJECT) == before


def test_bootstrap_refuses_our_schema_where_a_subject_s_history_forbids_it(registry) -> None:
    """Another producer's v1 requires a field (no default): review.avsc's records lack it,
    so under FULL_TRANSITIVE the registry refuses ours, and bootstrap names the reason."""
    topic = f"t-evolution-{uuid.uuid4().hex[:8]}"
    theirs = copy.deepcopy(REVIEW)
    theirs["fields"].append({"name": "language", "type": "string"})
    registry.set_compatibility(subject_name=f"{topic}-value", level="FULL_TRANSITIVE")
    registry.register_schema(f"{topic}-value", Schema(json.dumps(theirs), "AVRO"))
    spec = TopicSpec(topic, value_schema="review.avsc", compatibility="FULL_TRANSITIVE")
    with pytest.raises(SchemaRefused) as refused:
        register_schemas(registry, [spec])
    assert f"{topic}-value (FULL_TRANSITIVE)" in str(refused.value)
    registry.delete_subject(f"{topic}-value", permanent=False)


def test_records_of_evolved_writer_schemas_count_in_stream_and_batch(
    settings: Settings, registry, engine: Engine, scratch: SchemasResource
) -> None:
    v2 = registry.register_schema(SUBJECT, Schema(json.dumps(with_language()), "AVRO"))
    v3 = registry.register_schema(SUBJECT, Schema(json.dumps(without_title()), "AVRO"))
    v1 = registry.register_schema(SUBJECT, Schema(json.dumps(REVIEW), "AVRO"))
    rng = random.Random(33)
    now_ms = int(time.time() * 1000)
    base = 9_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 4)
    records = history(40, now_ms, courses, first_id=base * 10, seed=33)
    sent, read = [], []
    for rec in records:
        review = review_record(rec)
        version = rng.choice((1, 2, 3))
        if version == 1:
            value = encode(REVIEW, v1, review)
        elif version == 2:
            value = encode(with_language(), v2, {**review, "language": rng.choice((None, "en"))})
        else:
            value = encode(without_title(), v3, {k: v for k, v in review.items() if k != "title"})
        as_read = {**rec, "title": None} if version == 3 else rec
        read.append({**as_read, "_fraud": MODEL.is_fraud(review_record(as_read))})
        sent.append((str(rec["id"]).encode(), value))
    positions = produce_values(settings, sent)
    expected = expected_stats(read, positions, epoch_day(now_ms), [r["_fraud"] for r in read])
    exact_everywhere(settings, set(courses), expected)
    copy_courses(engine, scratch.stream_schema, set(courses), len(records))
    assert reconcile(settings, scratch, epoch_day(now_ms)) == {
        "long_term_stats_agree": True,
        "recent_stats_agree": True,
        "refusals_agree": True,
    }
