"""Reconciliation of a million reviews: the `stream_vs_batch` asset's own work, timed.

A scratch schema gets a `reviews` table shaped as the sink's (`like public.reviews`: keyed by
each record's Kafka coordinates), filled in SQL with realistic records of `udemy-reviews`
(skewed course popularity, the brief's rating mix, creation over the last `--days` days so the
90-day window is partial, edits that may change rating and text, hence the fraud verdict, which
the batch side derives from the bytes like the stream; about 1 % of versions sent twice at the
same `modified`, half of them with a corrected text, so the later offset decides). Each record
sits at a partition chosen by its review id and an offset growing with `modified`, as in the
topic. Its `long_term_stats` / `recent_stats` are computed independently from the same rows by
the stream's pure reference (`compute_from_scratch` over (modified, offset) and the records'
titles; verdicts by the fraud filter's model over bodies fastavro encodes, as ingestion does),
so every run also proves agreement: any mismatch fails the benchmark.

Each run materialises the real asset and its checks through Dagster on the stack's PostgreSQL,
with the scratch schemas as `SchemasResource` and the stages reported caught up: the scratch
tables are not fed by the live pipeline, and others' traffic into it would only make the asset
compare again. `reconcile_1m_s` is thus what the asset does once its stages have caught up:
rebuild the batch side (the verdicts of new versions, then `dbt run` of every model), read both
sides, compare every course, write the mismatches, plus Dagster's in-process run and the two
checks. The asset's wait on the live stages (offset reads
and marker probes on the real broker) is timed apart after each run (`stage_wait_s`).

    make up && .venv/bin/python bench/reconcile_throughput.py [--reviews 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from fastavro import schemaless_writer
from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result
from orchestration.assets.batch import today
from orchestration.assets.reconciliation import MISMATCHES_TABLE, stream_vs_batch, wait_for_stages
from orchestration.checks import reconciliation_checks
from orchestration.resources import (
    KafkaResource,
    Offsets,
    PostgresResource,
    SchemaRegistryResource,
    SchemasResource,
)
from orchestration.topology import INPUT_TOPIC
from streaming.batch.dbt import PROJECT_DIR
from streaming.core.fraud import load_model
from streaming.core.ratings import rating_halves
from streaming.core.review_bytes import pack
from streaming.core.source_position import order
from streaming.core.stats import ReviewVersion, compute_from_scratch
from streaming.core.window import day_to_date
from streaming.pipeline import LONG_TERM_SINK, RECENT_SINK, REVIEWS_SINK
from streaming.refused import Headers
from streaming.serde import local_schema
from streaming.settings import PipelineSettings, Settings, load, schemas_dir
from streaming.sink.render import load_connector
from streaming.sink.tables import check_table, table_key
from streaming.sql import quote

SINK_SCHEMA = "public"
"""Where the sink's tables are: the scratch ones copy their columns, keys and types."""
PARTITIONS = 4
"""As `udemy-reviews` has: a review's records share one, its offsets order them."""
FIRST_REVIEW_ID = 50_000_000
FIRST_COURSE_ID = 9_000_000
SEED = 0.2024
"""setseed() value: the same draws every run (the timestamps still follow the clock)."""
CHUNK = 50_000
STAGE_TIMEOUT_S = 300.0

GENERATE = """
insert into {reviews} (__connect_topic, __connect_partition, __connect_offset, id, modified,
    title, content, rating, created, user_title, user_name, user_display_name, course_id,
    course_title, course_url)
with review as materialized (
    select
        g as n,
        :first_id + g as id,
        :first_course + floor(:courses * power(random(), 3))::bigint as course_id,
        date_trunc('milliseconds', cast(:now as timestamp) - random() * :days * interval '1 day')
            as created,
        random() as pick_rating,
        random() as pick_versions,
        random() as pick_text
    from generate_series(1, :reviews) as g
), version as materialized (
    select
        r.*,
        v,
        case when v = 0 then r.created
            else date_trunc('milliseconds', r.created + v * interval '1 millisecond'
                + (cast(:now as timestamp) - r.created) * ((v - 1 + random()) / 2))
        end as modified,
        case when v = 0 or random() < 0.5 then r.pick_rating else random() end as pick,
        random() as pick_resend
    from review as r
    cross join lateral generate_series(
        0, case when r.pick_versions < 0.02 then 2 when r.pick_versions < 0.10 then 1 else 0 end
    ) as v
), record as materialized (
    select
        e.*,
        copy,
        abs(hashtext(e.id::text)) % :partitions as part
    from version as e
    cross join lateral generate_series(0, case when e.pick_resend < 0.01 then 1 else 0 end)
        as copy
)
select
    :topic,
    part,
    row_number() over (partition by part order by modified, n, v, copy) - 1,
    id,
    modified,
    case when n % 7 = 0 then null else '' end,
    case when v > 0 then 'Edited after the last section (version ' || v || ' of review ' || n || ')'
        when pick_text < 0.8 then ''
        else (array['Clear explanations, good pace.', 'Too fast for beginners.',
            'Great hands-on labs', 'Très bien expliqué', 'Outdated in places'])[1 + n % 5]
    end || case when copy = 1 and pick_resend < 0.005 then ' (corrected)' else '' end,
    case when pick < 0.75 then '5.0' when pick < 0.86 then '4.5' when pick < 0.95 then '4.0'
        when pick < 0.97 then '3.5' when pick < 0.985 then '3.0'
        else (array['2.5', '2.0', '1.5', '1.0'])[1 + floor((pick - 0.985) / 0.015 * 4)::int]
    end,
    created,
    'Student ' || n,
    (array['Ana', 'Ben', 'Chen', 'Dana', 'Emeka', 'Farah', 'Goran'])[1 + n % 7],
    'Student ' || n,
    course_id,
    'Course ' || course_id || ': Apache Kafka for Beginners',
    '/course-' || course_id || '/'
from record
"""
"""Records of review versions: the brief's rating mix, ~10 % of reviews edited (2 % twice), each
edit later than the version before, spread up to now, a popular head of courses with tens of
thousands; ~1 % of versions sent again at the same `modified` (half with a corrected text);
one partition per review id, offsets in order of `modified` within a partition."""

READ_VERSIONS = """
select id, title, content, rating, (extract(epoch from created) * 1000)::bigint,
    (extract(epoch from modified) * 1000)::bigint, user_title, user_name, user_display_name,
    course_id, course_title, course_url, __connect_partition, __connect_offset
from {reviews}
"""


class CaughtUpKafka(KafkaResource):
    """Every stage committed up to the end of its input: the asset goes straight to its work.

    The scratch tables are not fed by the live pipeline, so the live offsets say nothing about
    them, and traffic from other users would only make the asset compare again at a new cut.
    The asset's real wait on the live stack is timed apart (`stage_wait_s`).
    """

    def end_offsets(self, topics: Iterable[str]) -> Offsets:
        return {(topic, 0): 0 for topic in topics}

    def committed_offsets(self, group_id: str, topics: Iterable[str]) -> Offsets:
        return {(topic, 0): 0 for topic in topics}

    def records(self, topic: str) -> Iterator[tuple[Headers, bytes | None]]:
        """No dead letters: the scratch input holds no refused record, and the live dead-letter
        topics belong to the live input."""
        return iter(())


def check_sink_table(engine: Engine) -> None:
    """The sink's `reviews` table exists, keyed by Kafka coordinates: the scratch one copies it."""
    table = f"{SINK_SCHEMA}.{REVIEWS_SINK.table}"
    if table_key(engine, table) is None:
        raise SystemExit(f"{table} does not exist yet: the sink creates it with its first record")
    config = {**load_connector(REVIEWS_SINK.connector), "collection.name.format": table}
    check_table(engine, REVIEWS_SINK.connector, config)


def create_reviews(engine: Engine, schema: str, reviews: int, courses: int, days: int) -> int:
    """The scratch `reviews` table (the sink's columns, keys and types), filled; rows written."""
    check_sink_table(engine)
    relation = f"{quote(schema)}.{quote(REVIEWS_SINK.table)}"
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(text(f"create schema {quote(schema)}"))
        conn.execute(
            text(f"create table {relation} (like {SINK_SCHEMA}.{REVIEWS_SINK.table} including all)")
        )
        conn.execute(text("select setseed(:seed)"), {"seed": SEED})
        rows = conn.execute(
            text(GENERATE.format(reviews=relation)),
            {
                "first_id": FIRST_REVIEW_ID,
                "first_course": FIRST_COURSE_ID,
                "courses": courses,
                "reviews": reviews,
                "days": days,
                "now": now,
                "topic": INPUT_TOPIC,
                "partitions": PARTITIONS,
            },
        ).rowcount
    # A steady-state table: statistics and visibility map as autovacuum would leave them, and no
    # autovacuum pass kicking in during the timed runs.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"vacuum (analyze) {relation}"))
    return rows


def stream_statistics(
    engine: Engine, schema: str, as_of_day: int
) -> tuple[dict[int, tuple[dict, dict]], int]:
    """What the stream's tables hold after it read every row: (stats by course, fraud records).

    Verdicts by the fraud filter's model over each record's canonical Avro body, statistics by
    `compute_from_scratch`, the stream's reference, over (modified, offset) and the records'
    titles, with no SQL involved.
    """
    model = load_model(load(PipelineSettings).fraud_model, schemas_dir())
    review_schema = local_schema("review.avsc")
    versions: list[tuple[int, ReviewVersion, str]] = []
    fraud = 0
    buf = io.BytesIO()
    sql = READ_VERSIONS.format(reviews=f"{quote(schema)}.{quote(REVIEWS_SINK.table)}")
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(text(sql))
        for chunk in result.partitions():
            bodies = []
            for row in chunk:
                rid, title, content, rating, created, modified, *user, cid, ctitle, url = row[:12]
                buf.seek(0)
                buf.truncate()
                schemaless_writer(
                    buf,
                    review_schema,
                    {
                        "id": rid,
                        "title": title,
                        "content": content,
                        "rating": rating,
                        "created": created,
                        "modified": modified,
                        "user": dict(zip(("title", "name", "display_name"), user, strict=True)),
                        "course": {"id": cid, "title": ctitle, "url": url},
                    },
                )
                bodies.append(buf.getvalue())
            verdicts = model.is_fraud_batch(*pack(bodies)).tolist()
            fraud += sum(verdicts)
            for row, is_fraud in zip(chunk, verdicts, strict=True):
                halves = rating_halves(row[3])
                position = order(row[12], row[13])  # (partition, offset): the version order's
                version = ReviewVersion(row[5], row[4], halves, not is_fraud, row[9], position)
                versions.append((row[0], version, row[10]))
    stats = compute_from_scratch(versions, as_of_day, as_of_time=int(time.time() * 1000))
    return stats, fraud


def _timestamp(ms: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(milliseconds=ms)


def write_stream_tables(engine: Engine, schema: str, stats: dict[int, tuple[dict, dict]]) -> None:
    """long_term_stats and recent_stats shaped as the sink's, holding the stream's numbers."""
    with engine.begin() as conn:
        for index, table in enumerate((LONG_TERM_SINK.table, RECENT_SINK.table)):
            relation = f"{quote(schema)}.{quote(table)}"
            conn.execute(
                text(f"create table {relation} (like {SINK_SCHEMA}.{table} including all)")
            )
            rows = []
            for pair in stats.values():
                row = dict(pair[index])
                row["last_review_time"] = _timestamp(row["last_review_time"])
                row["as_of_time"] = _timestamp(row["as_of_time"])
                for day in ("window_start_day", "window_end_day"):
                    row[day] = None if row[day] is None else day_to_date(row[day])
                rows.append(row)
            columns = list(rows[0])
            conn.execute(
                text(
                    f"insert into {relation} ({', '.join(columns)}) "
                    f"values ({', '.join(':' + c for c in columns)})"
                ),
                rows,
            )


def stage_wait(kafka: KafkaResource) -> float:
    """Seconds the asset's wait on the live stages takes right now (offset reads and probes)."""
    started = time.perf_counter()
    wait_for_stages(kafka, kafka.end_offsets([INPUT_TOPIC]), STAGE_TIMEOUT_S)
    return time.perf_counter() - started


def run_once(database_url: str, registry_url: str, layout: SchemasResource) -> dict[str, Any]:
    """One materialisation of the asset and its checks: seconds, mismatches, check results."""
    started = time.perf_counter()
    result = dg.materialize(
        [stream_vs_batch, *reconciliation_checks],
        resources={
            "kafka": CaughtUpKafka(bootstrap_servers="unused:9092"),
            "postgres": PostgresResource(database_url=database_url),
            "schema_registry": SchemaRegistryResource(url=registry_url),
            "schemas": layout,
        },
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    seconds = time.perf_counter() - started
    [materialisation] = result.asset_materializations_for_node("reconciliation__stream_vs_batch")
    return {
        "reconcile_s": seconds,
        "mismatches": materialisation.metadata["mismatches"].value,
        "courses": materialisation.metadata["courses"].value,
        "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()},
    }


def _mismatch_sample(engine: Engine, schema: str) -> list[tuple]:
    relation = f"{quote(schema)}.{quote(MISMATCHES_TABLE)}"
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"select * from {relation} limit 10"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=1_000_000, help="distinct review ids")
    parser.add_argument("--courses", type=int, default=3_000)
    parser.add_argument("--days", type=int, default=200, help="creation spread, days back")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    settings = Settings.from_env()
    engine = create_engine(settings.database_url)
    base = f"bench_reconcile_{uuid.uuid4().hex[:8]}"
    layout = SchemasResource(
        stream_schema=base, batch_schema=f"{base}_batch", reconciliation_schema=f"{base}_recon"
    )
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap_servers)
    runs: list[dict[str, Any]] = []
    try:
        print(
            f"generating {args.reviews:,} reviews into {base}.{REVIEWS_SINK.table} ...", flush=True
        )
        started = time.perf_counter()
        rows = create_reviews(engine, base, args.reviews, args.courses, args.days)
        generated = time.perf_counter()
        as_of_day = today()
        stats, fraud = stream_statistics(engine, base, as_of_day)
        write_stream_tables(engine, base, stats)
        finished = time.perf_counter()
        print(
            f"setup: {rows:,} records of {args.reviews:,} reviews, {len(stats):,} courses, "
            f"{fraud:,} fraud records ({100 * fraud / rows:.1f} %); generated and loaded in "
            f"{generated - started:.1f} s, stream tables computed in Python in "
            f"{finished - generated:.1f} s",
            flush=True,
        )
        for run in range(args.runs):
            outcome = run_once(settings.database_url, settings.schema_registry_url, layout)
            outcome["stage_wait_s"] = stage_wait(kafka)
            runs.append(outcome)
            print(
                f"run {run + 1}: reconcile {outcome['reconcile_s']:.1f} s, "
                f"{outcome['courses']:,} courses, {outcome['mismatches']} mismatches; "
                f"wait on the live stages {outcome['stage_wait_s']:.1f} s",
                flush=True,
            )
            if outcome["mismatches"] or not all(outcome["checks"].values()):
                sample = _mismatch_sample(engine, layout.reconciliation_schema)
                raise SystemExit(
                    f"stream and batch disagree: {outcome['checks']}, first mismatches {sample}"
                )
    finally:
        with engine.begin() as conn:
            for schema in (base, layout.batch_schema, layout.reconciliation_schema):
                conn.execute(text(f"drop schema if exists {quote(schema)} cascade"))
        shutil.rmtree(PROJECT_DIR / "target" / f"build-{layout.reconciliation_schema}", True)
    result = {
        "reconcile_1m_s": round(statistics.median(r["reconcile_s"] for r in runs), 1),
        # the first run judges every version (its verdicts table is new); later ones only new
        # versions, as every reconciliation after the first does
        "reconcile_first_s": round(runs[0]["reconcile_s"], 1),
        "stage_wait_s": round(statistics.median(r["stage_wait_s"] for r in runs), 1),
        "setup_generate_s": round(generated - started, 1),
        "setup_stream_stats_s": round(finished - generated, 1),
        "mismatches": max(r["mismatches"] for r in runs),
        "reviews": args.reviews,
        "records": rows,
        "fraud_records": fraud,
        "courses": len(stats),
        "runs": args.runs,
    }
    print(json.dumps(result, indent=2))
    write_result("reconcile", result, " ".join(["bench/reconcile_throughput.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
