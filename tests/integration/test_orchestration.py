"""Orchestration against the real PostgreSQL and Kafka of the stack.

The batch's dbt models, run by Dagster, must give exactly the numbers of `compute_from_scratch`
(the stream's reference) on a scripted data set, every dbt test passing as an asset check; the
reconciliation must pass on agreeing tables and fail on
a tampered one; the Kafka offset reads must tell transaction markers from unread records.
"""

import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from sqlalchemy import Engine, create_engine, text

from orchestration.assets.backfill import course_reviews, courses
from orchestration.assets.batch import batch_assets
from orchestration.assets.reconciliation import stream_vs_batch, wait_for_stages
from orchestration.assets.stream import observe_tables
from orchestration.checks import reconciliation_checks
from orchestration.dbt_project import DBT_PROJECT
from orchestration.resources import (
    KafkaResource,
    LocalProcessRuntime,
    OfflineDbtCliResource,
    PostgresResource,
    ReviewSourceResource,
    SchemaRegistryResource,
    SchemasResource,
)
from orchestration.sensors import observe_stream
from orchestration.topology import SINKS, GroupStage, table_key, topic_key
from streaming.admin import load_topic_specs
from streaming.batch.dbt import dbt_executable
from streaming.core.fraud import HashFraudModel
from streaming.core.ratings import BUCKET_FIELDS, RATINGS, rating_halves
from streaming.core.source_position import order
from streaming.core.stats import ReviewVersion, compute_from_scratch
from streaming.core.validity import classify
from streaming.core.window import MS_PER_DAY, day_to_date
from streaming.kafka_acl import revoke
from streaming.settings import REPO_ROOT, Settings, client_secret
from streaming.source.client import UdemyClient
from streaming.sql import ensure_schema
from tests.integration.kafka_helpers import grant_topics

pytestmark = pytest.mark.integration

AS_OF_DAY = 20_000  # 2024-10-04
COURSES = {
    101: ("Apache Kafka Series - Learn Apache Kafka for Beginners", "/kafka-beginners/"),
    102: ("Kafka Streams for Data Processing", "/kafka-streams/"),
    103: ("Kafka Connect Hands-on Learning", "/kafka-connect/"),
    104: ("A course whose only review is fraud", "/fraud-only/"),
}
STAT_COLUMNS = (
    "course_id bigint primary key, course_title text not null, average_rating float8 not null, "
    "count_reviews bigint not null, count_five_stars bigint not null, "
    "count_four_stars bigint not null, count_three_stars bigint not null, "
    "count_two_stars bigint not null, count_one_star bigint not null, "
    "count_zero_star bigint not null, last_review_time timestamp not null, "
    "sum_rating float8 not null, window_start_day date, window_end_day date, as_of_time timestamp"
)


def _review(
    review_id: int, course_id: int, rating: str, created: int, modified: int, content: str | None
) -> dict[str, Any]:
    title, url = COURSES[course_id]
    return {
        "id": review_id,
        "title": None if review_id % 7 == 0 else "",
        "content": content,
        "rating": rating,
        "created": created,
        "modified": modified,
        "user": {
            "title": f"User {review_id}",
            "name": f"User {review_id % 13}",
            "display_name": f"U. {review_id}",
        },
        "course": {"id": course_id, "title": title, "url": url},
    }


def _content_with_verdict(model: HashFraudModel, base: dict[str, Any], fraud: bool) -> str:
    """A review text that makes `base` get the wanted verdict (the rule hashes the bytes)."""
    for n in range(10_000):
        content = f"edited text {n}"
        if model.is_fraud({**base, "content": content}) == fraud:
            return content
    raise AssertionError("no text found with the wanted verdict")


def scripted_versions() -> list[dict[str, Any]]:
    """Review versions in arrival order: all ratings (0.5 included), edits that change the
    rating, an edit that flips a review to fraud, a course with only fraud, days on both sides
    of the recent window and after the as-of day, created times with milliseconds."""
    rng = random.Random(20241004)
    model = HashFraudModel()
    versions = []
    offsets = [-400, -200, -90, -89, -88, -30, -1, 0, 1, 5]  # days relative to the as-of day
    for review_id in range(1, 301):
        course_id = rng.choice((101, 101, 102, 103))
        day = AS_OF_DAY + rng.choice(offsets)
        created = day * MS_PER_DAY + rng.randrange(MS_PER_DAY)
        rating = rng.choice(RATINGS)
        content = rng.choice((None, "", "great course", "too fast"))
        versions.append(_review(review_id, course_id, rating, created, created, content))
        if rng.random() < 0.3:
            edited = created + rng.randrange(1, 40) * MS_PER_DAY + rng.randrange(1000)
            new_rating = rng.choice(RATINGS)
            versions.append(_review(review_id, course_id, new_rating, created, edited, content))
    # a valid review edited into fraud: its first version counts, its current one must not
    created = (AS_OF_DAY - 3) * MS_PER_DAY + 123
    first = _review(400, 102, "5.0", created, created, None)
    first["content"] = _content_with_verdict(model, first, fraud=False)
    second = _review(400, 102, "4.5", created, created + 60_000, None)
    second["content"] = _content_with_verdict(model, second, fraud=True)
    # a course whose only review is fraud: zero statistics, but the course exists
    lone = _review(401, 104, "1.0", created, created, None)
    lone["content"] = _content_with_verdict(model, lone, fraud=True)
    versions += [first, second, lone]
    verdicts = [model.is_fraud(v) for v in versions]
    assert 0 < sum(verdicts) < len(versions), "the data must hold valid and fraud versions"
    return versions


def _ts(ms: int, aware: bool) -> datetime:
    value = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    return value.replace(tzinfo=UTC) if aware else value


Located = tuple[int, int, dict[str, Any]]
"""(partition, offset, review record): a record of `udemy-reviews` where the sink found it."""


def located(versions: list[dict[str, Any]], partitions: int = 4) -> list[Located]:
    """Records in arrival order as the topic holds them: a partition per review id (as keying by
    id does), offsets growing in arrival order within each partition."""
    next_offset = [0] * partitions
    out = []
    for v in versions:
        partition = v["id"] % partitions
        out.append((partition, next_offset[partition], v))
        next_offset[partition] += 1
    return out


def write_reviews(
    engine: Engine,
    schema: str,
    records: list[Located],
    timestamp_type: str,
    title_collation: str = "default",
) -> None:
    """The `reviews` table as the sink writes it: one row per record, keyed by its Kafka
    coordinates, flattened (the column types the Debezium sink creates). `title_collation`
    stands for a database whose default collation is not "C"."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f'create table "{schema}".reviews (__connect_topic text not null, '
                "__connect_partition integer not null, __connect_offset bigint not null, "
                "id bigint not null, title text, content text, "
                f"rating text not null, created {timestamp_type} not null, "
                f"modified {timestamp_type} not null, user_title text not null, "
                "user_name text not null, user_display_name text not null, "
                "course_id bigint not null, "
                f'course_title text collate "{title_collation}" not null, '
                "course_url text not null, "
                "primary key (__connect_topic, __connect_partition, __connect_offset))"
            )
        )
        epoch = f"{timestamp_type} 'epoch'"  # ms past year 9999 too, which datetime cannot hold
        conn.execute(
            text(
                f"insert into \"{schema}\".reviews values ('udemy-reviews', :partition, :offset, "
                f":id, :title, :content, :rating, {epoch} + :created * interval '1 millisecond', "
                f"{epoch} + :modified * interval '1 millisecond', :user_title, :user_name, "
                ":user_display_name, :course_id, :course_title, :course_url)"
            ),
            [
                {
                    "partition": partition,
                    "offset": offset,
                    "id": v["id"],
                    "title": v["title"],
                    "content": v["content"],
                    "rating": v["rating"],
                    "created": v["created"],
                    "modified": v["modified"],
                    "user_title": v["user"]["title"],
                    "user_name": v["user"]["name"],
                    "user_display_name": v["user"]["display_name"],
                    "course_id": v["course"]["id"],
                    "course_title": v["course"]["title"],
                    "course_url": v["course"]["url"],
                }
                for partition, offset, v in records
            ],
        )


def expected_statistics(records: list[Located]) -> dict[int, tuple[dict, dict]]:
    """The stream's reference numbers: compute_from_scratch over the records, their verdicts
    by the rule, their (partition, offset) as positions and their course titles."""
    model = HashFraudModel()
    events = [
        (
            v["id"],
            ReviewVersion(
                v["modified"],
                v["created"],
                rating_halves(v["rating"]),
                not model.is_fraud(v),
                v["course"]["id"],
                order(partition, offset),  # (partition, offset) orders equal-modified versions
            ),
            v["course"]["title"],
        )
        for partition, offset, v in records
        if classify(v) is None  # the validity rule: an invalid version is no version at all
    ]
    return compute_from_scratch(events, AS_OF_DAY)


def write_stream_tables(engine: Engine, schema: str, stats: dict[int, tuple[dict, dict]]) -> None:
    """long_term_stats and recent_stats as the sink would hold them after the stream ran."""
    emitted = datetime(2024, 10, 4, 12, 0, 0)
    with engine.begin() as conn:
        for index, table in enumerate(("long_term_stats", "recent_stats")):
            conn.execute(text(f'create table "{schema}".{table} ({STAT_COLUMNS})'))
            rows = []
            for pair in stats.values():
                row = dict(pair[index])
                row["last_review_time"] = _ts(row["last_review_time"], aware=False)
                for day in ("window_start_day", "window_end_day"):
                    row[day] = None if row[day] is None else day_to_date(row[day])
                row["as_of_time"] = emitted
                rows.append(row)
            conn.execute(
                text(
                    f'insert into "{schema}".{table} values (:course_id, :course_title, '
                    ":average_rating, :count_reviews, :count_five_stars, :count_four_stars, "
                    ":count_three_stars, :count_two_stars, :count_one_star, :count_zero_star, "
                    ":last_review_time, :sum_rating, :window_start_day, :window_end_day, "
                    ":as_of_time)"
                ),
                rows,
            )


def build_batch(
    settings: Settings, layout: SchemasResource, as_of_day: int
) -> dg.ExecuteInProcessResult:
    """The batch job's assets (verdicts, every dbt model and test), the recent window ending on
    `as_of_day`'s partition, into the scratch schemas; every dbt test must pass."""
    result = dg.materialize(
        batch_assets,
        partition_key=day_to_date(as_of_day).isoformat(),
        resources={
            "postgres": PostgresResource(database_url=settings.database_url),
            "schemas": layout,
            "dbt": OfflineDbtCliResource(project_dir=DBT_PROJECT, dbt_executable=dbt_executable()),
        },
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert len(checks) >= 20 and all(checks.values()), checks
    return result


def _batch_rows(
    engine: Engine, schema: str, table: str, as_of_day: int = AS_OF_DAY
) -> dict[int, dict[str, Any]]:
    where = (
        f"where window_end_day = date '1970-01-01' + {as_of_day}" if table == "recent_stats" else ""
    )
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    "select *, (extract(epoch from last_review_time) * 1000)::bigint as last_ms, "
                    "window_start_day - date '1970-01-01' as start_day, "
                    "window_end_day - date '1970-01-01' as end_day "
                    f'from "{schema}".{table} {where}'
                )
            )
            .mappings()
            .all()
        )
    return {row["course_id"]: dict(row) for row in rows}


@pytest.mark.parametrize("timestamp_type", ["timestamp", "timestamptz"])
def test_batch_models_equal_the_stream_reference(
    engine: Engine, scratch: SchemasResource, settings: Settings, timestamp_type: str
) -> None:
    records = located(scripted_versions())
    write_reviews(engine, scratch.stream_schema, records, timestamp_type)
    result = build_batch(settings, scratch, AS_OF_DAY)
    expected = expected_statistics(records)
    assert expected[104][0]["count_reviews"] == 0, "the fraud-only course must count nothing"
    for index, table in enumerate(("long_term_stats", "recent_stats")):
        got = _batch_rows(engine, scratch.batch_schema, table)
        assert got.keys() == expected.keys()
        for course_id, pair in expected.items():
            want, row = pair[index], got[course_id]
            for field, value in want.items():
                if field == "last_review_time":
                    assert row["last_ms"] == value, (table, course_id, field)
                elif field == "window_start_day":
                    assert row["start_day"] == value, (table, course_id, field)
                elif field == "window_end_day":
                    assert row["end_day"] == value, (table, course_id, field)
                elif field != "as_of_time":
                    assert row[field] == value, (table, course_id, field, row[field], value)
    materialised = {m.asset_key: m for m in result.asset_materializations_for_node("batch_models")}
    long_term = materialised[dg.AssetKey(["batch", "long_term_stats"])]
    assert long_term.metadata["dagster/row_count"].value == len(COURSES)


def _record(
    model: HashFraudModel,
    review_id: int,
    course: tuple[int, str],
    rating: str,
    modified: int,
    *,
    fraud: bool = False,
) -> dict[str, Any]:
    """A review record with the wanted verdict, created on the day before the as-of day."""
    created = (AS_OF_DAY - 1) * MS_PER_DAY + review_id
    base = _review(review_id, 101, rating, created, modified, None)
    base["course"] = {"id": course[0], "title": course[1], "url": f"/course-{course[0]}/"}
    base["content"] = _content_with_verdict(model, base, fraud)
    return base


def tie_records() -> list[Located]:
    """Records of `udemy-reviews` at their (partition, offset) that only the contract orders:
    versions with equal `modified` (the later offset wins, whatever its other columns say),
    verdict flips both ways at an equal `modified`, moves between courses (one at an equal
    `modified`), a stale version at a later offset, and course titles tied on `modified`."""
    model = HashFraudModel()
    t = AS_OF_DAY * MS_PER_DAY - 3_600_000  # every version but two modified at t
    k201, k202 = (201, "Kafka 201"), (202, "Streams 202")
    records = [
        # 1001: equal modified, the later offset has the lower rating (the old tie-break by
        # rating or content would pick offset 0); it counts in 201 as 2.0
        (0, 0, _record(model, 1001, k201, "5.0", t)),
        (0, 3, _record(model, 1001, k201, "2.0", t)),
        # 1002: valid, then fraud at the same modified: not counted
        (1, 0, _record(model, 1002, k201, "4.0", t)),
        (1, 1, _record(model, 1002, k201, "4.0", t, fraud=True)),
        # 1003: fraud, then valid at the same modified: counted in 202 as 0.5
        (1, 2, _record(model, 1003, k202, "3.0", t, fraud=True)),
        (1, 4, _record(model, 1003, k202, "0.5", t)),
        # 1004: moved from 202 into 203 by a later edit: counted in 203 as 4.5
        (2, 0, _record(model, 1004, k202, "4.5", t)),
        (2, 1, _record(model, 1004, (203, "Zeta 203"), "4.5", t + 1000)),
        # 1005: moved from 203 into 201 at the same modified: counted in 201 as 5.0
        (2, 2, _record(model, 1005, (203, "zzz 203"), "5.0", t)),
        (2, 6, _record(model, 1005, (201, "Kafka 201 (renamed)"), "5.0", t)),
        # 1006: an older version arriving later: the newer one counts in 204 as 3.5
        (3, 0, _record(model, 1006, (204, "Current 204"), "3.5", t + 5000)),
        (3, 1, _record(model, 1006, (204, "Old 204"), "1.0", t)),
        # fraud records still name their course's title: a tie on 203's greatest modified,
        # won by the greater title by code point ("É" > "Z" > "a"; not so in most locales),
        # and 204's title from its greatest modified, a fraud record
        (3, 2, _record(model, 1007, (203, "Émile 203"), "1.0", t + 1000, fraud=True)),
        (3, 3, _record(model, 1008, (203, "alpha 203"), "1.0", t + 1000, fraud=True)),
        (0, 5, _record(model, 1009, (204, "From a fraud record 204"), "2.0", t + 9000, fraud=True)),
        # versions the validity rule refuses supersede nothing and name no course: 1001's
        # later edit rated "4.7" under a new title, 1003's rated "NaN", a review rated "" alone
        # in course 205, one modified in year 10000 (PostgreSQL holds it, Python does not)
        (0, 7, _record(model, 1001, (201, "Invalid 201"), "4.7", t + 50_000)),
        (1, 7, _record(model, 1003, (202, "Invalid 202"), "NaN", t + 100)),
        (1, 6, _record(model, 1010, (205, "Invalid 205"), "", t)),
        (3, 5, _record(model, 1013, k201, "4.0", 253_402_300_800_000 + 1000)),
        # a valid rating spelled "5" counts as 5.0 in both
        (2, 8, _record(model, 1012, k202, "5", t)),
    ]
    random.Random(13).shuffle(records)  # the table's physical order decides nothing
    return records


@pytest.mark.parametrize("collation", ["default", "und-x-icu"])
def test_batch_models_order_equal_modified_versions_by_offset(
    engine: Engine, scratch: SchemasResource, settings: Settings, collation: str
) -> None:
    records = tie_records()
    write_reviews(engine, scratch.stream_schema, records, "timestamp", collation)
    build_batch(settings, scratch, AS_OF_DAY)
    created = {rid: (AS_OF_DAY - 1) * MS_PER_DAY + rid for rid in range(1001, 1014)}
    # course: (title, count, sum, five, four, three, two, one, zero, last review created)
    expected = {
        201: ("Kafka 201 (renamed)", 2, 7.0, 1, 0, 0, 1, 0, 0, created[1005]),
        202: ("Streams 202", 2, 5.5, 1, 0, 0, 0, 0, 1, created[1012]),
        203: ("Émile 203", 1, 4.5, 0, 1, 0, 0, 0, 0, created[1004]),
        204: ("From a fraud record 204", 1, 3.5, 0, 0, 1, 0, 0, 0, created[1006]),
    }
    fields = ("course_title", "count_reviews", "sum_rating", *reversed(BUCKET_FIELDS))
    reference = expected_statistics(records)
    for index, table in enumerate(("long_term_stats", "recent_stats")):
        got = _batch_rows(engine, scratch.batch_schema, table)
        assert {cid: (*(row[f] for f in fields), row["last_ms"]) for cid, row in got.items()} == (
            expected
        )
        assert {
            cid: (*(pair[index][f] for f in fields), pair[index]["last_review_time"])
            for cid, pair in reference.items()
        } == expected, "the stream's reference agrees"
    with engine.connect() as conn:
        current = conn.execute(
            text(
                "select id, source_partition, source_offset from "
                f'"{scratch.batch_schema}".current_reviews order by id'
            )
        ).all()
    assert [tuple(r) for r in current] == [
        (1001, 0, 3), (1002, 1, 1), (1003, 1, 4), (1004, 2, 1), (1005, 2, 6), (1006, 3, 0),
        (1007, 3, 2), (1008, 3, 3), (1009, 0, 5), (1012, 2, 8),
    ]  # fmt: skip
    with engine.connect() as conn:
        invalid = conn.execute(
            text(
                "select source_partition, source_offset, invalid_kind from "
                f"\"{scratch.batch_schema}\".review_verdicts where verdict = 'invalid'"
            )
        ).all()
    assert {(p, o): kind for p, o, kind in invalid} == {
        (0, 7): "rating", (1, 7): "rating", (1, 6): "rating", (3, 5): "timestamp"
    }  # fmt: skip


class CaughtUpKafka(KafkaResource):
    """Every stage has committed up to the end: the reconciliation needs no stream running."""

    def end_offsets(self, topics: Any) -> dict[tuple[str, int], int]:
        return {(topic, 0): 42 for topic in topics}

    def committed_offsets(self, group_id: str, topics: Any) -> dict[tuple[str, int], int]:
        return {(topic, 0): 42 for topic in topics}

    def records(self, topic: str) -> Iterator[tuple[Any, bytes | None]]:
        """No dead letters: the scratch tables' records went through no stream."""
        return iter(())


def reconcile(
    settings: Settings, layout: SchemasResource, as_of_day: int = AS_OF_DAY
) -> dict[str, bool]:
    """The reconciliation asset and its checks on `layout`'s tables: {check: passed}."""
    result = dg.materialize(
        [stream_vs_batch, *reconciliation_checks],
        resources={
            "kafka": CaughtUpKafka(bootstrap_servers="unused:9092"),
            "postgres": PostgresResource(database_url=settings.database_url),
            "schemas": layout,
            "schema_registry": SchemaRegistryResource(url=settings.schema_registry_url),
        },
        run_config={
            "ops": {"reconciliation__stream_vs_batch": {"config": {"as_of_day": as_of_day}}}
        },
    )
    assert result.success
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_reconciliation_passes_on_agreement_and_fails_on_a_tampered_row(
    engine: Engine, scratch: SchemasResource, settings: Settings
) -> None:
    records = located(scripted_versions())
    write_reviews(engine, scratch.stream_schema, records, "timestamp")
    write_stream_tables(engine, scratch.stream_schema, expected_statistics(records))

    assert reconcile(settings, scratch) == {
        "long_term_stats_agree": True,
        "recent_stats_agree": True,
        "refusals_agree": True,
    }

    with engine.begin() as conn:  # one star too many in one course's recent statistics
        conn.execute(
            text(
                f'update "{scratch.stream_schema}".recent_stats '
                "set count_five_stars = count_five_stars + 1 where course_id = 101"
            )
        )
    assert reconcile(settings, scratch) == {
        "long_term_stats_agree": True,
        "recent_stats_agree": False,
        "refusals_agree": True,
    }
    with engine.connect() as conn:
        mismatches = conn.execute(
            text(f'select kind, course_id, field from "{scratch.reconciliation_schema}".mismatches')
        ).all()
    assert [tuple(m) for m in mismatches] == [("recent", 101, "count_five_stars")]


def test_reconciliation_fails_on_a_course_missing_from_the_stream(
    engine: Engine, scratch: SchemasResource, settings: Settings
) -> None:
    records = located(scripted_versions())
    write_reviews(engine, scratch.stream_schema, records, "timestamp")
    write_stream_tables(engine, scratch.stream_schema, expected_statistics(records))
    with engine.begin() as conn:
        conn.execute(
            text(f'delete from "{scratch.stream_schema}".long_term_stats where course_id = 104')
        )
    assert reconcile(settings, scratch)["long_term_stats_agree"] is False


def _mismatches(engine: Engine, layout: SchemasResource) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select kind, course_id, field, batch, stream, reason "
                f'from "{layout.reconciliation_schema}".mismatches order by kind, course_id'
            )
        ).all()
    return [tuple(r) for r in rows]


def test_reconciliation_fails_on_a_title_and_on_a_window_not_moved_with_the_clock(
    engine: Engine, scratch: SchemasResource, settings: Settings
) -> None:
    """Titles are compared exactly; a recent row still on yesterday's window is a mismatch
    with its reason, even where its counts happen to be right for the as-of day."""
    records = located(scripted_versions())
    write_reviews(engine, scratch.stream_schema, records, "timestamp")
    write_stream_tables(engine, scratch.stream_schema, expected_statistics(records))
    stream = scratch.stream_schema
    with engine.begin() as conn:
        conn.execute(
            text(
                f'update "{stream}".long_term_stats '
                "set course_title = course_title || ' (old)' where course_id = 102"
            )
        )
        conn.execute(
            text(
                f'update "{stream}".recent_stats set window_end_day = window_end_day - 1, '
                "window_start_day = window_start_day - 1 where course_id = 103"
            )
        )
    assert reconcile(settings, scratch) == {
        "long_term_stats_agree": False,
        "recent_stats_agree": False,
        "refusals_agree": True,
    }
    title = COURSES[102][0]
    assert _mismatches(engine, scratch) == [
        ("long_term", 102, "course_title", title, f"{title} (old)", ""),
        (
            "recent",
            103,
            "window_end_day",
            "2024-10-04",
            "2024-10-03",
            "the stream's row has a window ending on 2024-10-03, not one ending on the as-of day "
            "2024-10-04: not moved with the clock (other fields not compared)",
        ),
    ]


def test_parallel_steps_create_their_schema_without_racing(engine: Engine) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: ensure_schema(engine, schema), range(8)))
        with engine.connect() as conn:
            found = conn.execute(
                text("select count(*) from pg_namespace where nspname = :s"), {"s": schema}
            ).scalar()
        assert found == 1
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'drop schema if exists "{schema}" cascade'))


def test_offset_reads_tell_transaction_markers_from_unread_records(
    settings: Settings, temp_topic: str
) -> None:
    """A group that read a transactional topic to its end commits below the end offset (the
    commit marker takes an offset): that counts as caught up; unread records do not."""
    producer = Producer(settings.kafka_config(**{"transactional.id": f"t-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(temp_topic, f"v{i}".encode(), b"k", partition=0)
    producer.commit_transaction(30)
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers)
    ends = kafka.end_offsets([temp_topic])
    assert ends == {(temp_topic, 0): 4}  # three records and the commit marker

    group = f"t-{uuid.uuid4().hex}"
    consumer = Consumer(settings.kafka_config(**{"group.id": group, "enable.auto.commit": False}))
    consumer.commit(offsets=[TopicPartition(temp_topic, 0, 3)], asynchronous=False)
    consumer.close()  # committed the last record + 1, as Connect does
    assert kafka.committed_offsets(group, [temp_topic]) == {(temp_topic, 0): 3}
    assert kafka.has_records(temp_topic, 0, 3, 4) is False
    assert kafka.has_records(temp_topic, 0, 2, 4) is True
    stage = GroupStage("test sink", group, (temp_topic,))
    [progress] = wait_for_stages(kafka, ends, timeout_s=30, stages=[stage])
    assert progress.lag_at_cut == 1

    behind = GroupStage("idle group", f"t-{uuid.uuid4().hex}", (temp_topic,))
    with pytest.raises(dg.Failure, match="has not reached the cut"):
        wait_for_stages(kafka, ends, timeout_s=1, stages=[behind])


def test_stream_observer_reports_every_topic_and_sink_table(settings: Settings) -> None:
    resources = {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers),
        "schema_registry": SchemaRegistryResource(url=settings.schema_registry_url),
        "postgres": PostgresResource(database_url=settings.database_url),
        "schemas": SchemasResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    first = observe_stream(dg.build_sensor_context(instance=instance, resources=resources))
    keys = {event.asset_key for event in first.asset_events}
    assert keys == {topic_key(t.name) for t in load_topic_specs()} | {
        table_key(s.table) for s in SINKS
    }
    reviews = next(e for e in first.asset_events if e.asset_key == topic_key("udemy-reviews"))
    assert "lag fraud filter" in reviews.metadata
    assert reviews.metadata["value_schema"].value.startswith("version ")
    second = observe_stream(
        dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources)
    )
    reviews = next(e for e in second.asset_events if e.asset_key == topic_key("udemy-reviews"))
    assert "offsets_per_s" in reviews.metadata
    table = next(e for e in second.asset_events if e.asset_key == table_key("reviews"))
    assert "rows (estimate)" in table.metadata and "rows_written_per_s" in table.metadata


def test_table_observations_read_statistics_views_not_the_tables(settings: Settings) -> None:
    """Rows and write rates from pg_stat_user_tables, the last update of statistics tables."""
    engine = create_engine(settings.database_url)
    schema = f"t_observe_{uuid.uuid4().hex[:8]}"

    def write(sql: str) -> None:
        with engine.begin() as conn:
            conn.execute(text(sql))
        engine.dispose()  # a backend reports its table statistics when it ends

    def observe_until(rows: int, previous: dict[str, Any], now: float) -> tuple[dict, dict]:
        deadline = time.monotonic() + 30
        while True:
            events, state = observe_tables(engine, schema, previous, now)
            by_table = {e.asset_key: {k: v.value for k, v in e.metadata.items()} for e in events}
            if by_table[table_key("reviews")].get("rows (estimate)") == rows:
                return by_table, state
            assert time.monotonic() < deadline, f"pg_stat_user_tables never showed {rows} rows"
            time.sleep(0.2)  # PostgreSQL publishes table statistics asynchronously

    try:
        write(f'create schema "{schema}"')
        write(f'create table "{schema}".reviews (id bigint primary key)')
        write(f'create table "{schema}".long_term_stats (course_id bigint, as_of_time timestamp)')
        write(f'insert into "{schema}".reviews select generate_series(1, 100)')
        write(f"insert into \"{schema}\".long_term_stats values (1, '2026-01-02 03:04:05')")
        first, state = observe_until(100, {}, now=1_000.0)
        assert "rows_written_per_s" not in first[table_key("reviews")]
        assert first[table_key("recent_stats")] == {"exists": False}
        stats = first[table_key("long_term_stats")]
        as_of = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
        assert stats["max as_of_time"] == as_of
        write(f'insert into "{schema}".reviews select generate_series(101, 150)')
        second, _ = observe_until(150, state, now=1_010.0)
        assert second[table_key("reviews")]["rows_written_per_s"] == 5.0
    finally:
        write(f'drop schema "{schema}" cascade')


def test_the_runtime_starts_restarts_and_stops_a_real_fraud_filter(
    admin: AdminClient, tmp_path: Path
) -> None:
    """The real worker module on scratch topics and group, under its process supervisor."""
    suffix = uuid.uuid4().hex[:8]
    topics = {name: f"t-{name}-{suffix}" for name in ("input", "valid", "fraud", "dlq")}
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()]).values():
        future.result(30)
    # the runtime starts it as its own principal: granted its scratch topics and group
    grants = grant_topics(admin, "fraud-filter", list(topics.values()), f"t-fraud-{suffix}")
    (tmp_path / "env").write_text(
        f"FRAUD_FILTER_GROUP_ID=t-fraud-{suffix}\nWORKER_INSTANCE=t\n"
        f"FRAUD_FILTER_INPUT_TOPIC={topics['input']}\nFRAUD_FILTER_VALID_TOPIC={topics['valid']}\n"
        f"FRAUD_FILTER_FRAUD_TOPIC={topics['fraud']}\nFRAUD_FILTER_DEAD_LETTER_TOPIC={topics['dlq']}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runtime = LocalProcessRuntime(
        state_dir=str(tmp_path),
        modules={"fraud-filter": "streaming.workers.fraud_filter"},
        health_urls={"fraud-filter": f"http://127.0.0.1:{port}/health"},
        ready_timeout_s=60,
    )
    try:
        first = runtime.start("fraud-filter")
        assert first.health is not None and first.health["worker"] == "fraud-filter"
        assert first.supervised, "the worker runs under a stack.procs supervisor"
        second = runtime.restart("fraud-filter")
        assert second.pid != first.pid and second.health is not None
        assert second.health["incarnation"] != first.health["incarnation"], "the new process's"
        assert "pid" not in second.health, "/health is public: no pid"
        assert (second.record or {})["restarts"][-1]["requested"], "a requested restart"
        log = (tmp_path / "logs" / "fraud-filter.log").read_text()
        assert '"msg": "stopped"' in log, "SIGTERM lets the worker finish and close cleanly"
    finally:
        runtime.stop("fraud-filter")
        admin.delete_topics(list(topics.values()))
        revoke(admin, grants)
    assert runtime.status("fraud-filter").health is None


def test_dagster_yaml_gives_a_postgres_instance(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "orchestration" / "dagster.yaml", tmp_path / "dagster.yaml")
    script = (
        "import dagster as dg\n"
        "i = dg.DagsterInstance.get()\n"
        "storages = (i.run_storage, i.event_log_storage, i.schedule_storage)\n"
        "print(*(type(s).__name__ for s in storages), i.telemetry_enabled)\n"
    )
    env = {"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for key in ("PGHOST", "PGPORT", "PGUSER", "PGPASSFILE"):  # the password: libpq's file
        env[key] = os.environ[key]
    out = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/python"), "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == [
        "PostgresRunStorage",
        "PostgresEventLogStorage",
        "PostgresScheduleStorage",
        "False",
    ]


def test_backfill_asset_puts_a_small_course_into_kafka(settings: Settings) -> None:
    """The real resources: the stack's review source, registry and Kafka, one small course."""
    with UdemyClient.from_env() as source:
        counts = {
            int(c["id"]): source.fetch_page(int(c["id"]), 1).count for c in source.iter_courses()
        }
    course_id = min(counts, key=counts.get)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(courses.name, [str(course_id)])
    result = dg.materialize(
        [course_reviews],
        instance=instance,
        partition_key=str(course_id),
        resources={
            "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers),
            "schema_registry": SchemaRegistryResource(url=settings.schema_registry_url),
            "review_source": ReviewSourceResource(
                api_url=os.environ["UDEMY_API_URL"],
                client_id=os.environ["UDEMY_CLIENT_ID"],
                client_secret=client_secret(),
            ),
        },
    )
    assert result.success
    (materialisation,) = result.asset_materializations_for_node("ingest__course_reviews")
    assert materialisation.metadata["reviews"].value == counts[course_id]
    assert materialisation.metadata["last_offsets"].value, "offsets of the written records"


def test_the_newest_input_timestamp_reads_each_partitions_end(settings, temp_topic) -> None:
    """What the stream freshness checks compare with: None for an empty topic, else the
    newest record's Kafka timestamp, also when a transaction marker takes the last offset."""
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers, timeout_s=10)
    assert kafka.newest_timestamp(temp_topic) is None
    producer = Producer(
        settings.kafka_config(**{"transactional.id": f"fresh-{uuid.uuid4().hex[:8]}"})
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for stamp_ms in (1_700_000_000_000, 1_700_000_005_000, 1_700_000_002_000):
        producer.produce(temp_topic, b"v", b"k", timestamp=stamp_ms)
    producer.commit_transaction(30)
    assert kafka.newest_timestamp(temp_topic) == 1_700_000_002.0  # the last record's
