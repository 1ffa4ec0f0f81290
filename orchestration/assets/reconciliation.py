"""Reconciliation: the stream's statistics against the batch reference, at a consistent cut.

The cut is the input topic's end offsets. Every stage (fraud filter, the aggregator's two
steps, the sink connectors) is then waited on, upstream first, until its consumer group has
committed everything up to the cut: for the first stages the cut itself, for later ones the end
offsets of their input topics once the stage before them got there. The batch models are then
rebuilt from the sink's `reviews` table into the reconciliation schema and every course's
statistics compared with the stream tables (recent ones at the as-of day each stream row
carries). If input arrived meanwhile the comparison is repeated at a new cut.
"""

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine, text

from orchestration.assets.batch import (
    build_batch_tables,
    model_variables,
    source_relations,
    today,
)
from orchestration.resources import (
    NO_OFFSET,
    KafkaResource,
    Offsets,
    PostgresResource,
    SqlModelsResource,
)
from orchestration.sql_models import ensure_schema, load_models, quote, render, swap_in
from orchestration.topology import (
    INPUT_TOPIC,
    RECONCILIATION_KEY,
    STAGES,
    Stage,
    batch_key,
    table_key,
    topic_key,
)
from streaming.core.ratings import BUCKET_FIELDS
from streaming.core.window import date_to_day, day_to_date

EXACT_FIELDS = ("count_reviews", *reversed(BUCKET_FIELDS), "sum_rating", "last_review_ms")
"""Compared exactly: counts, star buckets, the exact (half-step) sum, last review time."""
AVERAGE_FIELD = "average_rating"
KINDS = ("long_term", "recent")
MISMATCHES_TABLE = "mismatches"
POLL_INTERVAL_S = 0.5
_EPOCH = datetime(1970, 1, 1)


class ReconciliationConfig(dg.Config):
    timeout_s: float = Field(
        default=300.0, description="How long the stages may take to reach a cut (seconds)."
    )
    attempts: int = Field(
        default=3, description="Cuts to try when input arrives during a comparison."
    )
    average_tolerance: float = Field(
        default=1e-9, description="Largest accepted difference of average ratings."
    )


@dataclass(frozen=True)
class StageProgress:
    stage: Stage
    target: int
    lag_at_cut: int
    seconds: float


@dataclass(frozen=True)
class Mismatch:
    kind: str
    course_id: int
    field: str
    batch: str
    stream: str


def _caught_up(kafka: KafkaResource, tp: tuple[str, int], committed: int, end: int) -> bool:
    """Committed at or past `end`, or only transaction markers / aborted records in between."""
    if committed >= end:
        return True
    return not kafka.has_records(tp[0], tp[1], max(committed, 0), end)


def wait_for_stages(
    kafka: KafkaResource,
    cut: Offsets,
    timeout_s: float,
    stages: Iterable[Stage] = STAGES,
) -> list[StageProgress]:
    """Wait, upstream first, until every stage's group committed up to the cut (see module)."""
    deadline = time.monotonic() + timeout_s
    progress = []
    for stage in stages:
        started = time.monotonic()
        if all(any(tp[0] == topic for tp in cut) for topic in stage.topics):
            target = {tp: end for tp, end in cut.items() if tp[0] in stage.topics}
        else:
            target = kafka.end_offsets(stage.topics)
        lag_at_cut = None
        while True:
            committed = kafka.committed_offsets(stage.group_id, stage.topics)
            if lag_at_cut is None:
                lag_at_cut = sum(
                    max(end - max(committed.get(tp, NO_OFFSET), 0), 0) for tp, end in target.items()
                )
            behind = [
                f"{tp[0]}[{tp[1]}] at {committed.get(tp, NO_OFFSET)} of {end}"
                for tp, end in sorted(target.items())
                if not _caught_up(kafka, tp, committed.get(tp, NO_OFFSET), end)
            ]
            if not behind:
                break
            if time.monotonic() >= deadline:
                raise dg.Failure(
                    f"stage {stage.name} (group {stage.group_id}) has not reached the cut "
                    f"after {timeout_s:.0f}s: {', '.join(behind)}"
                )
            time.sleep(POLL_INTERVAL_S)  # interval between offset polls
        progress.append(
            StageProgress(stage, sum(target.values()), lag_at_cut, time.monotonic() - started)
        )
    return progress


def _millis(value: Any) -> int:
    """Epoch ms of a timestamp column (naive = UTC, as the sink writes) or of a bigint one."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return (value - _EPOCH) // timedelta(milliseconds=1)
    return int(value)


def _day(value: Any) -> int | None:
    if value is None:
        return None
    return date_to_day(value) if isinstance(value, date) else int(value)


def read_statistics(engine: Engine, relation: str) -> dict[int, dict[str, Any]]:
    """CourseStatistic rows of a table or parenthesised query, by course id."""
    columns = ", ".join(
        (
            "course_id",
            "course_title",
            AVERAGE_FIELD,
            *EXACT_FIELDS[:-1],
            "last_review_time",
            "window_end_day",
            "as_of_time",
        )
    )
    with engine.connect() as conn:
        rows = conn.execute(text(f"select {columns} from {relation} as s")).mappings().all()
    out = {}
    for row in rows:
        record = dict(row)
        record["last_review_ms"] = _millis(record.pop("last_review_time"))
        record["window_end_day"] = _day(record["window_end_day"])
        out[int(record["course_id"])] = record
    return out


def compare(
    kind: str,
    batch: Mapping[int, Mapping[str, Any]],
    stream: Mapping[int, Mapping[str, Any]],
    average_tolerance: float,
) -> list[Mismatch]:
    """Every difference between two sets of statistics rows, field by field."""
    out = []
    for course_id in sorted(batch.keys() | stream.keys()):
        b, s = batch.get(course_id), stream.get(course_id)
        if b is None or s is None:
            out.append(
                Mismatch(
                    kind,
                    course_id,
                    "row",
                    "present" if b else "missing",
                    "present" if s else "missing",
                )
            )
            continue
        for field in EXACT_FIELDS:
            if b[field] != s[field]:
                out.append(Mismatch(kind, course_id, field, str(b[field]), str(s[field])))
        if abs(b[AVERAGE_FIELD] - s[AVERAGE_FIELD]) > average_tolerance:
            out.append(
                Mismatch(
                    kind, course_id, AVERAGE_FIELD, repr(b[AVERAGE_FIELD]), repr(s[AVERAGE_FIELD])
                )
            )
    return out


def batch_recent_for(
    engine: Engine,
    layout: SqlModelsResource,
    schema: str,
    stream_recent: Mapping[int, Mapping[str, Any]],
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Batch recent statistics of each course at the as-of day its stream row carries.

    Courses the stream has no recent row for are computed at the stream's latest day (today
    when it has none), so they show up as missing. Returns (rows, the days used).
    """
    courses_by_day: dict[int, set[int]] = defaultdict(set)
    for course_id, row in stream_recent.items():
        courses_by_day[row["window_end_day"]].add(course_id)
    default_day = max(courses_by_day, default=today())
    model = load_models(layout.models_dir)["recent_stats"]
    out: dict[int, dict[str, Any]] = {}
    for day in sorted(courses_by_day.keys() | {default_day}):
        sql = render(
            model, schema=schema, sources=source_relations(layout), variables=model_variables(day)
        )
        for course_id, row in read_statistics(engine, f"({sql})").items():
            if course_id in courses_by_day.get(day, ()) or (
                course_id not in stream_recent and day == default_day
            ):
                out[course_id] = row
    return out, sorted(courses_by_day) or [default_day]


def write_mismatches(engine: Engine, schema: str, mismatches: list[Mismatch]) -> None:
    """Replace `schema.mismatches`, which the asset checks read."""
    scratch = f"{quote(schema)}.{quote(MISMATCHES_TABLE + '__new')}"
    ensure_schema(engine, schema)
    with engine.begin() as conn:
        conn.execute(text(f"drop table if exists {scratch}"))
        conn.execute(
            text(
                f"create table {scratch} (kind text not null, course_id bigint not null, "
                "field text not null, batch text not null, stream text not null)"
            )
        )
        if mismatches:
            conn.execute(
                text(f"insert into {scratch} values (:kind, :course_id, :field, :batch, :stream)"),
                [m.__dict__ for m in mismatches],
            )
        swap_in(conn, schema, MISMATCHES_TABLE)


def _newest_seconds(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Epoch seconds of the newest as_of_time (when the aggregator emitted the row)."""
    stamps = [_millis(r["as_of_time"]) for r in rows if r["as_of_time"] is not None]
    return max(stamps) / 1000 if stamps else None


def _report(
    *,
    cut: Offsets,
    attempt: int,
    stages: list[StageProgress],
    compared: Mapping[str, int],
    mismatches: list[Mismatch],
    days: list[int],
    stream_age: float | None,
    batch_age: float | None,
) -> str:
    def age(seconds: float | None) -> str:
        return "never" if seconds is None else f"{seconds:.0f} s"

    failing = {kind: {m.course_id for m in mismatches if m.kind == kind} for kind in KINDS}
    lines = [
        "### Stream vs batch",
        "",
        "| | all-time | recent |",
        "|---|---|---|",
        "| courses compared | " + " | ".join(str(compared[k]) for k in KINDS) + " |",
        "| agreement | "
        + " | ".join(f"{_percent(compared[k] - len(failing[k]), compared[k])} %" for k in KINDS)
        + " |",
        "",
        f"Recent window as-of day(s): {', '.join(str(day_to_date(d)) for d in days)}.",
        f"Freshness: stream {age(stream_age)} (since the aggregator last emitted a statistic), "
        f"batch {age(batch_age)} (since the nightly batch last built batch/long_term_stats).",
        f"Cut (attempt {attempt}): `{INPUT_TOPIC}` end offsets "
        + ", ".join(f"p{p}={o}" for (_, p), o in sorted(cut.items()))
        + ".",
        "",
        "| stage | group | lag at the cut | target (sum of offsets) | reached after |",
        "|---|---|---|---|---|",
        *(
            f"| {s.stage.name} | {s.stage.group_id} | {s.lag_at_cut} | {s.target} "
            f"| {s.seconds:.1f} s |"
            for s in stages
        ),
    ]
    if mismatches:
        lines += [
            "",
            f"#### Mismatches (first 50 of {len(mismatches)})",
            "",
            "| statistics | course | field | batch | stream |",
            "|---|---|---|---|---|",
            *(
                f"| {m.kind} | {m.course_id} | {m.field} | {m.batch} | {m.stream} |"
                for m in mismatches[:50]
            ),
        ]
    return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}" if whole else "100.00"


@dg.asset(
    key=RECONCILIATION_KEY,
    deps=[
        topic_key(INPUT_TOPIC),
        table_key("reviews"),
        table_key("long_term_stats"),
        table_key("recent_stats"),
    ],
    group_name="reconciliation",
    kinds={"python", "postgres"},
)
def stream_vs_batch(
    context: dg.AssetExecutionContext,
    config: ReconciliationConfig,
    kafka: KafkaResource,
    postgres: PostgresResource,
    sql_models: SqlModelsResource,
) -> dg.MaterializeResult:
    """Every course's stream statistics (long_term_stats, recent_stats) against the batch
    models rebuilt at a consistent cut of the input topic; differences go to the
    `mismatches` table of the reconciliation schema, which the asset checks judge."""
    engine = postgres.engine()
    schema = sql_models.reconciliation_schema
    stream_relation = f"{quote(sql_models.stream_schema)}.{{}}"
    for attempt in range(1, config.attempts + 1):
        cut = kafka.end_offsets([INPUT_TOPIC])
        stages = wait_for_stages(kafka, cut, config.timeout_s)
        stream_long = read_statistics(engine, stream_relation.format(quote("long_term_stats")))
        stream_recent = read_statistics(engine, stream_relation.format(quote("recent_stats")))
        build_batch_tables(engine, sql_models, schema, today(), skip=frozenset({"recent_stats"}))
        batch_long = read_statistics(engine, f"{quote(schema)}.{quote('long_term_stats')}")
        batch_recent, days = batch_recent_for(engine, sql_models, schema, stream_recent)
        if kafka.end_offsets([INPUT_TOPIC]) == cut:
            break
        context.log.info(f"input arrived during attempt {attempt}: comparing at a new cut")
    else:
        raise dg.Failure(f"input kept arriving during {config.attempts} comparisons")
    tolerance = config.average_tolerance
    mismatches = compare("long_term", batch_long, stream_long, tolerance) + compare(
        "recent", batch_recent, stream_recent, tolerance
    )
    write_mismatches(engine, schema, mismatches)
    now = time.time()
    newest = _newest_seconds([*stream_long.values(), *stream_recent.values()])
    last_batch = context.instance.get_latest_materialization_event(batch_key("long_term_stats"))
    stream_age = None if newest is None else now - newest
    batch_age = None if last_batch is None else now - last_batch.timestamp
    compared = {
        "long_term": len(batch_long.keys() | stream_long.keys()),
        "recent": len(batch_recent.keys() | stream_recent.keys()),
    }
    report = _report(
        cut=cut,
        attempt=attempt,
        stages=stages,
        compared=compared,
        mismatches=mismatches,
        days=days,
        stream_age=stream_age,
        batch_age=batch_age,
    )
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.md(report),
        "mismatches": len(mismatches),
        "courses": compared["long_term"],
        "cut": dg.MetadataValue.json({f"{t}[{p}]": o for (t, p), o in sorted(cut.items())}),
        **{f"lag at cut: {s.stage.name}": s.lag_at_cut for s in stages},
    }
    if stream_age is not None:
        metadata["stream_freshness_s"] = round(stream_age, 1)
    if batch_age is not None:
        metadata["batch_freshness_s"] = round(batch_age, 1)
    return dg.MaterializeResult(metadata=metadata)
