"""Quix Streams peer of the fraud filter and the stats aggregator, for side-by-side benchmarks.

Runs in its own venv (`requirements.txt`: Quix pins its own confluent-kafka), so it does not
import the project's `streaming` package; the rule and the record shapes are restated here the
way an idiomatic Quix application would write them, per record:

    fraud      input (Confluent-framed Review) -> valid / fraud topic, raw bytes through;
               fraud iff toPositive(murmur2(C3 01 + fingerprint_le + body)) % 100 < 5
    aggregate  valid topic -> decode -> group_by course id (Quix repartition topic) ->
               stateful statistic (RocksDB + changelog) -> CourseStatistic, Confluent-framed

Both run with processing_guarantee="exactly-once". The first record handled prints
`FIRST <epoch_ms>` so the harness (`bench/peers/harness.py`) can time the peer from outside.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.types import Schema
from murmurhash2 import murmurhash2
from quixstreams import Application, State
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import Topic
from quixstreams.models.serializers import (
    Deserializer,
    SerializationContext,
    Serializer,
)

MURMUR2_SEED = 0x9747B28C  # Kafka's Utils.murmur2
FRAUD_PERCENT = 5
CONFLUENT_HEADER = struct.Struct(">BI")
STAR_BUCKETS = (
    "count_zero_star",
    "count_one_star",
    "count_two_stars",
    "count_three_stars",
    "count_four_stars",
    "count_five_stars",
)

# The project's stream workers (streaming/workers/eos.py) run with these client settings; the
# peer gets the same so the comparison measures the engines, not librdkafka tuning.
PRODUCER_CONFIG = {
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "transaction.timeout.ms": 60_000,
}
CONSUMER_CONFIG = {
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 4_194_304,
}


class FirstRecord:
    """Prints `FIRST <epoch_ms>` once, when the first input record is handled."""

    def __init__(self) -> None:
        self.seen = False

    def mark(self) -> None:
        if not self.seen:
            self.seen = True
            print(f"FIRST {int(time.time() * 1000)}", flush=True)


def load_avsc(path: Path, logical_types: bool = True) -> Schema:
    """Parse an .avsc file; without logical types timestamps stay plain longs (JSON-friendly)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    raw = json.loads(path.read_text())
    return parse_schema(raw if logical_types else strip(raw))


class ConfluentAvroDeserializer(Deserializer):
    """Confluent wire format -> dict: drop magic byte and schema id, read the Avro body."""

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.schema = schema

    def __call__(self, value: bytes, ctx: SerializationContext) -> dict[str, Any]:
        body = io.BytesIO(value[CONFLUENT_HEADER.size :])
        return cast("dict[str, Any]", schemaless_reader(body, self.schema, None))  # a record


class ConfluentAvroSerializer(Serializer):
    """dict -> Confluent wire format under a schema id registered by the caller."""

    def __init__(self, schema: Schema, schema_id: int) -> None:
        self.schema = schema
        self.header = CONFLUENT_HEADER.pack(0, schema_id)

    def __call__(self, value: dict[str, Any], ctx: SerializationContext) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        schemaless_writer(buf, self.schema, value)
        return buf.getvalue()


def connection(bootstrap: str) -> ConnectionConfig:
    """The brokers and the login the pipeline's clients use, from the same variables:
    KAFKA_SECURITY_CONFIG (`key=value;...`), KAFKA_SASL_USERNAME over its `sasl.username`, and
    the password in the file KAFKA_SASL_PASSWORD_FILE names."""
    config = {"bootstrap.servers": bootstrap}
    for item in filter(
        None, (p.strip() for p in os.environ.get("KAFKA_SECURITY_CONFIG", "").split(";"))
    ):
        key, _, value = item.partition("=")
        config[key.strip()] = value.strip()
    if os.environ.get("KAFKA_SASL_USERNAME"):
        config["sasl.username"] = os.environ["KAFKA_SASL_USERNAME"]
    if os.environ.get("KAFKA_SASL_PASSWORD_FILE"):
        config["sasl.password"] = Path(os.environ["KAFKA_SASL_PASSWORD_FILE"]).read_text().strip()
    return ConnectionConfig.from_librdkafka_dict(config)


def application(args: argparse.Namespace) -> Application:
    """One Quix Application per run, exactly-once, earliest offsets, the shared client config."""
    kwargs: dict[str, Any] = {}
    if args.commit_interval is not None:
        kwargs["commit_interval"] = args.commit_interval
    return Application(
        broker_address=connection(args.bootstrap),
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=args.state_dir,
        producer_extra_config=PRODUCER_CONFIG,
        consumer_extra_config=CONSUMER_CONFIG,
        **kwargs,
    )


def run_fraud(args: argparse.Namespace) -> None:
    """Route each review, bytes untouched, by the hash of its Avro single-object encoding."""
    schema = load_avsc(Path(args.review_schema))
    prefix = b"\xc3\x01" + bytes.fromhex(
        fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    )
    app = application(args)
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    valid = app.topic(args.valid, key_serializer="bytes", value_serializer="bytes")
    fraud = app.topic(args.fraud, key_serializer="bytes", value_serializer="bytes")
    first = FirstRecord()

    def route(value: bytes, key: Any, timestamp: int, headers: Any) -> Topic:
        first.mark()
        h = murmurhash2(prefix + value[CONFLUENT_HEADER.size :], MURMUR2_SEED)
        return fraud if (h & 0x7FFFFFFF) % 100 < FRAUD_PERCENT else valid

    app.dataframe(source).to_topic(route)
    app.run()


def run_aggregate(args: argparse.Namespace) -> None:
    """All-time statistic per course, updated and emitted on every valid review."""
    review_schema = load_avsc(Path(args.review_schema), logical_types=False)
    stat_schema = load_avsc(Path(args.stat_schema))
    app = application(args)
    source = app.topic(
        args.input,
        key_deserializer="bytes",
        value_deserializer=ConfluentAvroDeserializer(review_schema),
    )
    output = app.topic(
        args.output,
        key_serializer="json",
        value_serializer=ConfluentAvroSerializer(stat_schema, args.schema_id),
    )
    first = FirstRecord()

    def course_id(review: dict[str, Any]) -> int:
        first.mark()
        return review["course"]["id"]

    def aggregate(review: dict[str, Any], state: State) -> dict[str, Any]:
        stat = state.get("stat") or {
            "course_id": review["course"]["id"],
            "course_title": "",
            "average_rating": 0.0,
            "count_reviews": 0,
            **dict.fromkeys(STAR_BUCKETS, 0),
            "last_review_time": 0,
            "sum_rating": 0.0,
        }
        rating = float(review["rating"])
        stat["course_title"] = review["course"]["title"]
        stat["count_reviews"] += 1
        stat["sum_rating"] += rating
        stat["average_rating"] = stat["sum_rating"] / stat["count_reviews"]
        stat[STAR_BUCKETS[int(rating * 2) // 2]] += 1
        stat["last_review_time"] = max(stat["last_review_time"], review["created"])
        state.set("stat", stat)
        return stat

    sdf = app.dataframe(source).group_by(course_id, name="course_id")
    sdf.apply(aggregate, stateful=True).to_topic(output)
    app.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fraud", "aggregate"])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", required=True, help="consumer group (and internal topic names)")
    parser.add_argument("--input", required=True, help="input topic")
    parser.add_argument("--valid", help="fraud: valid output topic")
    parser.add_argument("--fraud", help="fraud: fraud output topic")
    parser.add_argument("--output", help="aggregate: statistics output topic")
    parser.add_argument("--review-schema", required=True, help="path of review.avsc")
    parser.add_argument("--stat-schema", help="aggregate: path of course_statistic.avsc")
    parser.add_argument("--schema-id", type=int, help="aggregate: registry id of the output schema")
    parser.add_argument("--state-dir", default="state", help="Quix state directory (RocksDB)")
    parser.add_argument(
        "--commit-interval", type=float, help="seconds between commits (default: Quix's)"
    )
    args = parser.parse_args()
    if args.mode == "fraud":
        if not (args.valid and args.fraud):
            parser.error("fraud needs --valid and --fraud")
        run_fraud(args)
    else:
        if not (args.output and args.stat_schema and args.schema_id is not None):
            parser.error("aggregate needs --output, --stat-schema and --schema-id")
        run_aggregate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
