"""Reconciliation: the stream's statistics against the batch reference, at a consistent cut.

The cut is the input topic's end offsets. Every stage (fraud filter, the aggregator's two
steps, the sink connectors) is then waited on, upstream first, until its consumer group has
committed everything up to the cut: for the first stages the cut itself, for later ones the end
offsets of their input topics once the stage before them got there. The batch models are then
rebuilt from the sink's `reviews` table into the reconciliation schema (the verdicts step, then
`dbt run`, as the nightly batch builds them), their recent window ending on the as-of day (today,
UTC, unless configured), and every course's statistics compared
with the stream tables: titles, counts, buckets and sums exactly, averages within a tolerance.
A stream row of `recent_stats` whose window ends on another day is a mismatch of its own (the
aggregator has not moved it with the clock). If input arrived or the UTC day changed meanwhile,
the comparison is repeated at a new cut. What each side refused before the cut (records that are
no review, by the validity rule) is compared too, per kind and position (`streaming.refused`),
into the `refusals` table.
"""

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine, text

from orchestration.assets.batch import build_batch_tables, today
from orchestration.resources import (
    NO_OFFSET,
    KafkaResource,
    Offsets,
    PostgresResource,
    SchemaRegistryResource,
    SchemasResource,
)
from orchestration.topology import (
    INPUT_TOPIC,
    LONG_TERM_TABLE,
    RECENT_TABLE,
    RECONCILIATION_KEY,
    REVIEWS_TABLE,
    STAGES,
    GroupStage,
    batch_key,
    table_key,
    topic_key,
)
from streaming.batch.verdicts import VERDICTS
from streaming.core.ratings import BUCKET_FIELDS
from streaming.core.review_frames import value_problem
from streaming.core.window import date_to_day, day_to_date
from streaming.pipeline import CONNECT_DEAD_LETTER, DEAD_LETTER
from streaming.refused import (
    Position,
    RefusalCount,
    compare_refusals,
    connect_refusals,
    stream_refusals,
)
from streaming.serde import Registry, ReviewWriters
from streaming.sql import quote, replace_table

EXACT_FIELDS = (
    "course_title",
    "count_reviews",
    *reversed(BUCKET_FIELDS),
    "sum_rating",
    "last_review_ms",
)
"""Compared exactly: the title, counts, star buckets, the exact (half-step) sum, last review."""
AVERAGE_FIELD = "average_rating"
WINDOW_FIELD = "window_end_day"
KINDS = ("long_term", "recent")
MISMATCHES_TABLE = "mismatches"
REFUSALS_TABLE = "refusals"
POLL_INTERVAL_S = 0.5
_EPOCH = datetime(1970, 1, 1)


class ReconciliationConfig(dg.Config):
    as_of_day: int | None = Field(
        default=None,
        description="Epoch day (UTC) every recent window must end on; default: today.",
    )
    timeout_s: float = Field(
        default=300.0, description="How long the stages may take to reach a cut (seconds)."
    )
    attempts: int = Field(
        default=3,
        description="Cuts to try when input arrives (or the UTC day changes) during a comparison.",
    )
    average_tolerance: float = Field(
        default=1e-9, description="Largest accepted difference of average ratings."
    )


@dataclass(frozen=True)
class StageProgress:
    stage: GroupStage
    target: int
    lag_at_cut: int
    seconds: float


@dataclass(frozen=True)
class Mismatch:
    """One difference; `reason` says what it means when the values alone do not."""

    kind: str
    course_id: int
    field: str
    batch: str
    stream: str
    reason: str = ""


@dataclass(frozen=True)
class Comparison:
    """Both sides' statistics read at one cut: {kind: {course id: row}} each."""

    cut: Offsets
    attempt: int
    as_of_day: int
    stages: list[StageProgress]
    batch: dict[str, dict[int, dict[str, Any]]]
    stream: dict[str, dict[int, dict[str, Any]]]


def _caught_up(kafka: KafkaResource, tp: tuple[str, int], committed: int, end: int) -> bool:
    """Committed at or past `end`, or only transaction markers / aborted records in between."""
    if committed >= end:
        return True
    return not kafka.has_records(tp[0], tp[1], max(committed, 0), end)


def wait_for_stages(
    kafka: KafkaResource,
    cut: Offsets,
    timeout_s: float,
    stages: Iterable[GroupStage] = STAGES,
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
    read = [f for f in EXACT_FIELDS if f != "last_review_ms"]
    columns = ", ".join(
        ("course_id", AVERAGE_FIELD, *read, "last_review_time", WINDOW_FIELD, "as_of_time")
    )
    with engine.connect() as conn:
        rows = conn.execute(text(f"select {columns} from {relation} as s")).mappings().all()
    out = {}
    for row in rows:
        record = dict(row)
        record["last_review_ms"] = _millis(record.pop("last_review_time"))
        record[WINDOW_FIELD] = _day(record[WINDOW_FIELD])
        out[int(record["course_id"])] = record
    return out


def compare(
    kind: str,
    batch: Mapping[int, Mapping[str, Any]],
    stream: Mapping[int, Mapping[str, Any]],
    average_tolerance: float,
    as_of_day: int | None = None,
) -> list[Mismatch]:
    """Every difference between two sets of statistics rows, field by field.

    With `as_of_day` (recent statistics, whose batch rows end on it), a stream row whose
    window ends on another day is one mismatch, its other fields not compared: they count
    another window, so their differences would only repeat it.
    """
    out = []
    for course_id in sorted(batch.keys() | stream.keys()):
        b, s = batch.get(course_id), stream.get(course_id)
        if b is None or s is None:
            side = "stream" if s is None else "batch"
            out.append(
                Mismatch(
                    kind,
                    course_id,
                    "row",
                    "present" if b else "missing",
                    "present" if s else "missing",
                    f"the course is missing from the {side}",
                )
            )
            continue
        if as_of_day is not None and s[WINDOW_FIELD] != as_of_day:
            out.append(stale_window(kind, course_id, as_of_day, s[WINDOW_FIELD]))
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


def stale_window(kind: str, course_id: int, as_of_day: int, end_day: int | None) -> Mismatch:
    """A stream row whose recent window does not end on the reconciliation's as-of day."""
    found = "no window" if end_day is None else f"a window ending on {day_to_date(end_day)}"
    return Mismatch(
        kind,
        course_id,
        WINDOW_FIELD,
        str(day_to_date(as_of_day)),
        "none" if end_day is None else str(day_to_date(end_day)),
        f"the stream's row has {found}, not one ending on the as-of day "
        f"{day_to_date(as_of_day)}: not moved with the clock (other fields not compared)",
    )


def write_mismatches(engine: Engine, schema: str, mismatches: list[Mismatch]) -> None:
    """Replace `schema.mismatches`, which the asset checks read."""
    replace_table(
        engine,
        schema,
        MISMATCHES_TABLE,
        "kind text not null, course_id bigint not null, field text not null, "
        "batch text not null, stream text not null, reason text not null",
        [m.__dict__ for m in mismatches],
    )


def _newest_seconds(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Epoch seconds of the newest as_of_time (when the aggregator emitted the row)."""
    stamps = [_millis(r["as_of_time"]) for r in rows if r["as_of_time"] is not None]
    return max(stamps) / 1000 if stamps else None


def _report(
    *,
    comparison: Comparison,
    compared: Mapping[str, int],
    mismatches: list[Mismatch],
    refusals: list[RefusalCount],
    stream_age: float | None,
    batch_age: float | None,
) -> str:
    def age(seconds: float | None) -> str:
        return "never" if seconds is None else f"{seconds:.0f} s"

    failing = {kind: {m.course_id for m in mismatches if m.kind == kind} for kind in KINDS}
    stale = sum(m.field == WINDOW_FIELD for m in mismatches)
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
        f"Recent window as-of day: {day_to_date(comparison.as_of_day)}"
        + (
            f"; {stale} stream rows of recent_stats end on another day (not moved with the clock)."
            if stale
            else "; every stream row of recent_stats ends on it."
        ),
        f"Freshness: stream {age(stream_age)} (since the aggregator last emitted a statistic), "
        f"batch {age(batch_age)} (since the nightly batch last built batch/long_term_stats).",
        f"Cut (attempt {comparison.attempt}): `{INPUT_TOPIC}` end offsets "
        + ", ".join(f"p{p}={o}" for (_, p), o in sorted(comparison.cut.items()))
        + ".",
        "",
        "| stage | group | lag at the cut | target (sum of offsets) | reached after |",
        "|---|---|---|---|---|",
        *(
            f"| {s.stage.name} | {s.stage.group_id} | {s.lag_at_cut} | {s.target} "
            f"| {s.seconds:.1f} s |"
            for s in comparison.stages
        ),
    ]
    lines += [
        "",
        "| refused (no review) | batch | stream | positions one side alone refused |",
        "|---|---|---|---|",
        *(
            f"| {c.kind} | {c.batch} | {c.stream} | "
            + (" ".join(f"p{p}@{o}" for p, o in c.differing) or "none")
            + " |"
            for c in refusals
        ),
    ]
    if mismatches:
        lines += [
            "",
            f"#### Mismatches (first 50 of {len(mismatches)})",
            "",
            "| statistics | course | field | batch | stream | why |",
            "|---|---|---|---|---|---|",
            *(
                f"| {m.kind} | {m.course_id} | {m.field} | {cell(m.batch)} | {cell(m.stream)} "
                f"| {m.reason} |"
                for m in mismatches[:50]
            ),
        ]
    return "\n".join(lines)


def cell(value: str) -> str:
    """A value (a course title may hold anything) as one Markdown table cell."""
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}" if whole else "100.00"


def read_at_a_cut(
    context: dg.AssetExecutionContext,
    config: ReconciliationConfig,
    kafka: KafkaResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
) -> Comparison:
    """Wait for every stage to reach a cut, read the stream tables, rebuild and read the batch
    ones; again at a new cut while input arrives or the UTC day changes during an attempt."""
    schema = schemas.reconciliation_schema
    engine = postgres.engine()
    tables = {"long_term": LONG_TERM_TABLE, "recent": RECENT_TABLE}
    for attempt in range(1, config.attempts + 1):
        cut = kafka.end_offsets([INPUT_TOPIC])
        as_of_day = config.as_of_day if config.as_of_day is not None else today()
        stages = wait_for_stages(kafka, cut, config.timeout_s)
        stream = {
            kind: read_statistics(engine, f"{quote(schemas.stream_schema)}.{quote(table)}")
            for kind, table in tables.items()
        }
        build_batch_tables(engine, postgres.database_url, schemas.stream_schema, schema, as_of_day)
        # the batch's models are named as the stream tables they rebuild
        batch = {
            "long_term": read_statistics(engine, f"{quote(schema)}.{quote(LONG_TERM_TABLE)}"),
            # the model keeps a set of rows per as-of day: this one's
            "recent": read_statistics(
                engine,
                f"(select * from {quote(schema)}.{quote(RECENT_TABLE)} "
                f"where window_end_day = date '1970-01-01' + {int(as_of_day)})",
            ),
        }
        same_day = config.as_of_day is not None or today() == as_of_day
        if same_day and kafka.end_offsets([INPUT_TOPIC]) == cut:
            return Comparison(cut, attempt, as_of_day, stages, batch, stream)
        context.log.info(
            f"input arrived or the UTC day changed during attempt {attempt}: comparing at a new cut"
        )
    raise dg.Failure(f"input kept arriving during {config.attempts} comparisons")


def read_refusals(
    kafka: KafkaResource, engine: Engine, schema: str, registry_url: str
) -> tuple[dict[Position, str], dict[Position, str]]:
    """(batch, stream) refusals, {position in the input: kind}: the batch's are the invalid
    versions of its verdicts table (in `schema`) and the raw sink's dead letters (classified
    by the validity rule), the stream's its dead letters that name a kind."""
    stream = stream_refusals(
        (headers for headers, _ in kafka.records(DEAD_LETTER.name)), INPUT_TOPIC
    )
    writers = ReviewWriters(Registry(registry_url))

    def classify(value: bytes | None) -> Any:
        return value_problem(value, writers, writers.review_schema)

    batch = connect_refusals(kafka.records(CONNECT_DEAD_LETTER.name), INPUT_TOPIC, classify)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select source_partition, source_offset, invalid_kind from "
                f"{quote(schema)}.{quote(VERDICTS)} where verdict = 'invalid'"
            )
        ).all()
    batch.update({(int(p), int(o)): str(kind) for p, o, kind in rows})  # type: ignore[call-overload]  # Row: object
    return batch, stream


def write_refusals(engine: Engine, schema: str, counts: list[RefusalCount]) -> None:
    """Replace `schema.refusals`, which the `refusals_agree` check reads."""
    replace_table(
        engine,
        schema,
        REFUSALS_TABLE,
        "kind text primary key, batch bigint not null, stream bigint not null, "
        "differing text not null",
        [
            {
                "kind": c.kind,
                "batch": c.batch,
                "stream": c.stream,
                "differing": " ".join(f"p{p}@{o}" for p, o in c.differing),
            }
            for c in counts
        ],
    )


@dg.asset(
    key=RECONCILIATION_KEY,
    deps=[
        topic_key(INPUT_TOPIC),
        table_key(REVIEWS_TABLE),
        table_key(LONG_TERM_TABLE),
        table_key(RECENT_TABLE),
    ],
    group_name="reconciliation",
    kinds={"python", "postgres"},
)
def stream_vs_batch(
    context: dg.AssetExecutionContext,
    config: ReconciliationConfig,
    kafka: KafkaResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
    schema_registry: SchemaRegistryResource,
) -> dg.MaterializeResult:
    """Every course's stream statistics (long_term_stats, recent_stats) against the batch
    models rebuilt at a consistent cut of the input topic; differences go to the
    `mismatches` table of the reconciliation schema, what each side refused (per kind) to
    `refusals`; the asset checks judge both."""
    engine = postgres.engine()
    comparison = read_at_a_cut(context, config, kafka, postgres, schemas)
    refused_batch, refused_stream = read_refusals(
        kafka, engine, schemas.reconciliation_schema, schema_registry.url
    )
    cut_offsets = {p: o for (_, p), o in comparison.cut.items()}
    refusals = compare_refusals(refused_batch, refused_stream, cut_offsets)
    write_refusals(engine, schemas.reconciliation_schema, refusals)
    batch, stream = comparison.batch, comparison.stream
    tolerance = config.average_tolerance
    mismatches = compare("long_term", batch["long_term"], stream["long_term"], tolerance)
    mismatches += compare(
        "recent", batch["recent"], stream["recent"], tolerance, comparison.as_of_day
    )
    write_mismatches(engine, schemas.reconciliation_schema, mismatches)
    now = time.time()
    newest = _newest_seconds([*stream["long_term"].values(), *stream["recent"].values()])
    last_batch = context.instance.get_latest_materialization_event(batch_key(LONG_TERM_TABLE))
    stream_age = None if newest is None else now - newest
    batch_age = None if last_batch is None else now - last_batch.timestamp
    compared = {kind: len(batch[kind].keys() | stream[kind].keys()) for kind in KINDS}
    report = _report(
        comparison=comparison,
        compared=compared,
        mismatches=mismatches,
        refusals=refusals,
        stream_age=stream_age,
        batch_age=batch_age,
    )
    cut = comparison.cut
    differing = {m.course_id for m in mismatches}
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.md(report),
        "mismatches": len(mismatches),
        # numeric, so the asset's page plots them over the runs
        "courses_differing": len(differing),
        "agreement_pct": round(100.0 * (1 - len(differing) / max(compared["long_term"], 1)), 2),
        "stale_windows": sum(m.field == WINDOW_FIELD for m in mismatches),
        "as_of_day": str(day_to_date(comparison.as_of_day)),
        "courses": compared["long_term"],
        "cut": dg.MetadataValue.json({f"{t}[{p}]": o for (t, p), o in sorted(cut.items())}),
        "refused": dg.MetadataValue.json(
            {c.kind: {"batch": c.batch, "stream": c.stream} for c in refusals}
        ),
        "refusal_kinds_differing": sum(not c.agree for c in refusals),
        **{f"lag at cut: {s.stage.name}": s.lag_at_cut for s in comparison.stages},
    }
    if stream_age is not None:
        metadata["stream_freshness_s"] = round(stream_age, 1)
    if batch_age is not None:
        metadata["batch_freshness_s"] = round(batch_age, 1)
    return dg.MaterializeResult(metadata=metadata)
