"""The batch's Python step: the stream's verdict on every version of the sink's `reviews`.

Each version is `valid`, `fraud` or `invalid` (the validity rule, `streaming.core.validity`,
with its kind and reason), and a counted one has its rating in halves. The fraud rule hashes a
review's canonical Avro bytes and the validity rule is Python, neither of which SQL should
re-type, so the dbt models read the verdicts from a table this step writes
(`<schema>.review_verdicts`, the source `batch.review_verdicts` of `current_reviews`). Each
version is re-encoded from its row by the compiled encoder (the sink's rows hold what Java
decoded, so this is the canonical encoding the original app hashed) and judged by the stream's
own code: `scan_bodies` and `validity.field_problems` as the aggregator runs them, the model's
batch entry point as the fraud filter runs it.

A version's verdict never changes (a record of `udemy-reviews` is immutable and the rule is a
function of its bytes), so a run judges only the versions it has not judged yet, found by their
Kafka coordinates, the table's key. The table remembers which model judged it: another
FRAUD_MODEL (or `full_refresh`) judges every version again into a new table swapped in at the
end. One run at a time per table (an advisory lock): two would judge the same versions twice.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg2.extensions
from sqlalchemy import Connection, Engine, text

from streaming.core.fraud import FraudModel, load_model
from streaming.core.review_bytes import REVIEW_LAYOUT, Longs, encode_reviews, scan_bodies
from streaming.core.validity import TEXT_FIELDS, Problem, field_problems, text_problem
from streaming.pipeline import REVIEWS_SINK
from streaming.settings import PipelineSettings, load, schemas_dir
from streaming.sql import ensure_schema, quote, swap_in

VERDICTS = "review_verdicts"
LAYOUT = 2
"""The table's columns: 1 had only `is_fraud`; 2 the verdict, kind, reason and halves. A table
of another layout is judged again whole (its comment names the layout)."""
CHUNK = 50_000
VALID, FRAUD, INVALID = "valid", "fraud", "invalid"
DEFAULT_MODEL = "default (the hash rule)"
"""How the table names the model when FRAUD_MODEL is unset."""

_MS = "(extract(epoch from {}) * 1000)::bigint"
REVIEW_COLUMNS = (
    "id",
    "title",
    "content",
    "rating",
    _MS.format("created"),
    _MS.format("modified"),
    "user_title",
    "user_name",
    "user_display_name",
    "course_id",
    "course_title",
    "course_url",
)
"""The sink's columns in the Review schema's field order (what `encode_reviews` takes)."""
COORDINATES = ("__connect_partition", "__connect_offset")


class MissingReviews(LookupError):
    """The sink's `reviews` table does not exist (yet): nothing to judge."""


@dataclass(frozen=True)
class VerdictRun:
    judged: int
    fraud: int
    invalid: int
    total: int
    rebuilt: bool
    """Whether every version was judged again (first run, another model, or asked)."""


def _table_model(conn: Connection, schema: str) -> str | None:
    """The model the table's comment names; None when the table does not exist."""
    row = conn.execute(
        text(
            "select c.oid, obj_description(c.oid, 'pg_class') from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = :schema and c.relname = :table and c.relkind = 'r'"
        ),
        {"schema": schema, "table": VERDICTS},
    ).first()
    return None if row is None else (row[1] or "")


def _create(conn: Connection, relation: str, model_name: str) -> None:
    conn.execute(text(f"drop table if exists {relation}"))
    conn.execute(
        text(
            f"create table {relation} (id bigint not null, source_partition integer not null, "
            "source_offset bigint not null, "
            f"verdict text not null check (verdict in ('{VALID}', '{FRAUD}', '{INVALID}')), "
            "invalid_kind text, reason text, halves smallint check (halves between 1 and 10), "
            "primary key (source_partition, source_offset), "
            f"check ((verdict = '{INVALID}') = (halves is null)), "
            f"check ((verdict = '{INVALID}') = (invalid_kind is not null)))"
        )
    )
    comment = _comment(model_name).replace("'", "''")
    conn.execute(text(f"comment on table {relation} is '{comment}'"))


def _comment(model_name: str) -> str:
    return f"model: {model_name}; layout {LAYOUT}"


def write_verdicts(
    engine: Engine,
    *,
    source_schema: str,
    schema: str,
    model: FraudModel,
    model_name: str,
    full_refresh: bool = False,
) -> VerdictRun:
    """Judge the versions of `source_schema.reviews` that `schema.review_verdicts` lacks."""
    reviews = f"{quote(source_schema)}.{quote(REVIEWS_SINK.table)}"
    with engine.connect() as conn:
        if conn.execute(text("select to_regclass(:t)"), {"t": reviews}).scalar() is None:
            raise MissingReviews(
                f"no table {source_schema}.{REVIEWS_SINK.table}: the sink connector "
                f"{REVIEWS_SINK.connector} has written nothing yet (is it deployed, has anything "
                "been ingested?)"
            )
    ensure_schema(engine, schema)
    table = f"{quote(schema)}.{quote(VERDICTS)}"
    judged = fraud = invalid = 0
    with engine.begin() as writer:
        writer.execute(text("select pg_advisory_xact_lock(hashtext(:t))"), {"t": table})
        rebuild = full_refresh or _table_model(writer, schema) != _comment(model_name)
        target = f"{quote(schema)}.{quote(VERDICTS + '__new')}" if rebuild else table
        if rebuild:
            _create(writer, target, model_name)
        unjudged = (
            ""
            if rebuild
            else f" where not exists (select 1 from {table} v where v.source_partition = "
            "r.__connect_partition and v.source_offset = r.__connect_offset)"
        )
        select = f"select {', '.join(REVIEW_COLUMNS + COORDINATES)} from {reviews} r{unjudged}"
        cursor = writer.connection.cursor()
        for chunk in _read_chunks(engine, select):
            judged += len(chunk)
            chunk_fraud, chunk_invalid = _copy_chunk(cursor, target, chunk, model)
            fraud += chunk_fraud
            invalid += chunk_invalid
        if rebuild:
            swap_in(writer, schema, VERDICTS)
        total = int(writer.execute(text(f"select count(*) from {table}")).scalar_one())
    return VerdictRun(judged, fraud, invalid, total, rebuild)


def judge_new_versions(
    engine: Engine, *, source_schema: str, schema: str, full_refresh: bool = False
) -> VerdictRun:
    """`write_verdicts` with the model the fraud filter runs (FRAUD_MODEL, default the hash
    rule): what `reviews verdicts`, the Dagster asset and the reconciliation all do."""
    spec = load(PipelineSettings).fraud_model
    return write_verdicts(
        engine,
        source_schema=source_schema,
        schema=schema,
        model=load_model(spec, schemas_dir()),
        model_name=spec or DEFAULT_MODEL,
        full_refresh=full_refresh,
    )


def _read_chunks(engine: Engine, select: str) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of `select`, CHUNK at a time, through a server-side cursor (the table may not
    fit in memory), text columns as undecoded UTF-8 bytes: the encoder wants bytes, and
    decoding a million rows' strings only to encode them again costs more than the judging."""
    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor(name="review_verdicts")  # type: ignore[union-attr]  # open: it has one
        psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor)
        cursor.itersize = CHUNK
        cursor.execute(select)
        while chunk := cursor.fetchmany(CHUNK):
            yield chunk
        cursor.close()
    finally:
        raw.rollback()
        raw.close()


def judge(
    rows: list[tuple[Any, ...]], model: FraudModel
) -> tuple[np.ndarray, np.ndarray, dict[int, Problem]]:
    """(fraud, halves, problems) of Review rows (REVIEW_COLUMNS' order), by the stream's code."""
    buf, starts, ends = encode_reviews(rows)
    _, nul = scan_bodies(buf, starts, ends, REVIEW_LAYOUT)  # the rows are canonical by now
    problems = {
        i: text_problem(".".join(TEXT_FIELDS[nul[i]])) for i in np.flatnonzero(nul >= 0).tolist()
    }
    readable = nul < 0
    longs, _, invalid = field_problems(buf, starts, ends, readable)
    fraud = model.is_fraud_batch(buf, starts, ends)
    return fraud, longs[:, Longs.HALVES], {**problems, **invalid}


def _copy_chunk(cursor: object, relation: str, chunk: list, model: FraudModel) -> tuple[int, int]:
    """Judge one chunk of rows and COPY its verdicts into `relation`: (fraud, invalid) counts."""
    fields = len(REVIEW_COLUMNS)
    fraud, halves, problems = judge([row[:fields] for row in chunk], model)
    lines = io.StringIO()
    n_fraud = 0
    for i, (row, is_fraud, h) in enumerate(
        zip(chunk, fraud.tolist(), halves.tolist(), strict=True)
    ):
        partition, offset = row[fields:]
        problem = problems.get(i)
        if problem is not None:
            reason = problem.reason.replace("\\", "\\\\").replace("\t", " ").replace("\n", " ")
            lines.write(
                f"{row[0]}\t{partition}\t{offset}\t{INVALID}\t{problem.kind}\t{reason}\t\\N\n"
            )
            continue
        n_fraud += is_fraud
        verdict = FRAUD if is_fraud else VALID
        lines.write(f"{row[0]}\t{partition}\t{offset}\t{verdict}\t\\N\t\\N\t{h}\n")
    lines.seek(0)
    cursor.copy_expert(f"copy {relation} from stdin", lines)  # type: ignore[attr-defined]  # psycopg2's
    return n_fraud, len(problems)
