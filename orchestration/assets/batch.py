"""The nightly batch pipeline, kept as the reference: SQL models over the sink's `reviews` table.

Each `dbt_like_sql/*.sql` file becomes an asset in the `batch` group; the fraud verdicts are a
Python asset in the same graph because the rule hashes Avro bytes, which SQL cannot: it runs the
stream's own rule code (`streaming.core.fraud`) over every current version at once.
"""

import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine, text

from orchestration.resources import PostgresResource, SqlModelsResource
from orchestration.sql_models import (
    SqlModel,
    load_models,
    materialise,
    quote,
    swap_in,
    topological_order,
)
from orchestration.topology import batch_key, table_key
from streaming.config import clock_from_env
from streaming.core.fraud import FraudModel, load_model
from streaming.core.review_bytes import encode_reviews
from streaming.core.window import RECENT_DAYS, date_to_day
from streaming.settings import PipelineSettings, load

VERDICTS = "review_verdicts"
PYTHON_MODELS: dict[str, tuple[str, ...]] = {VERDICTS: ("current_reviews",)}
"""Tables Python code builds inside the SQL graph, with the models each one reads."""

SOURCE_TABLES: dict[tuple[str, str], str] = {("stream", "reviews"): "reviews"}
"""source(group, name) of the models -> the stream table it stands for."""

VERDICT_CHUNK = 50_000

REVIEW_COLUMNS = (
    "id",
    "title",
    "content",
    "rating",
    "created_ms",
    "modified_ms",
    "user_title",
    "user_name",
    "user_display_name",
    "course_id",
    "course_title",
    "course_url",
)
"""`current_reviews` columns in the Review schema's field order (what `encode_reviews` takes)."""
VERSION_KEY = ("source_partition", "source_offset")
"""A version's unique key in `current_reviews`: its Kafka coordinates in `udemy-reviews`."""


def source_relations(layout: SqlModelsResource) -> dict[tuple[str, str], str]:
    return {
        source: f"{quote(layout.stream_schema)}.{quote(table)}"
        for source, table in SOURCE_TABLES.items()
    }


def model_variables(as_of_day: int) -> dict[str, object]:
    return {"as_of_day": as_of_day, "recent_days": RECENT_DAYS}


def today() -> int:
    """The current UTC day as an epoch day (on the clock CLOCK_OFFSET_S shifts, as the
    aggregator's)."""
    return date_to_day(datetime.fromtimestamp(clock_from_env()(), UTC).date())


def write_review_verdicts(engine: Engine, schema: str, model: FraudModel) -> tuple[int, int]:
    """Judge every current version with the stream's rule; build `schema.review_verdicts`.

    Each row is re-encoded as the canonical Review Avro body (the bytes the fraud filter hashes),
    a chunk at a time by the compiled encoder, and judged by the model's batch entry point.
    Verdicts are keyed by the version's Kafka coordinates (VERSION_KEY), the key `valid_reviews`
    joins on: `(id, modified)` is not unique once equal-modified versions are kept.
    Returns (rows, fraud).
    """
    source = f"{quote(schema)}.{quote('current_reviews')}"
    fields = len(REVIEW_COLUMNS)
    rows = fraud = 0
    with engine.connect() as reader, engine.begin() as writer:
        writer.execute(text(f"drop table if exists {quote(schema)}.{quote(VERDICTS + '__new')}"))
        writer.execute(
            text(
                f"create table {quote(schema)}.{quote(VERDICTS + '__new')} "
                "(id bigint not null, source_partition integer not null, "
                "source_offset bigint not null, is_fraud boolean not null, "
                "primary key (source_partition, source_offset))"
            )
        )
        cursor = writer.connection.cursor()
        result = reader.execution_options(stream_results=True, yield_per=VERDICT_CHUNK).execute(
            text(f"select {', '.join(REVIEW_COLUMNS + VERSION_KEY)} from {source}")
        )
        for chunk in result.partitions():
            verdicts = model.is_fraud_batch(*encode_reviews([row[:fields] for row in chunk]))
            lines = io.StringIO()
            for row, is_fraud in zip(chunk, verdicts.tolist(), strict=True):
                partition, offset = row[fields:]
                lines.write(f"{row[0]}\t{partition}\t{offset}\t{'t' if is_fraud else 'f'}\n")
            lines.seek(0)
            cursor.copy_expert(
                f"copy {quote(schema)}.{quote(VERDICTS + '__new')} from stdin", lines
            )
            rows += len(chunk)
            fraud += int(verdicts.sum())
        swap_in(writer, schema, VERDICTS)
    return rows, fraud


def build_batch_tables(
    engine: Engine,
    layout: SqlModelsResource,
    schema: str,
    as_of_day: int,
    skip: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Every model (SQL and Python) in dependency order into `schema`; rows per table.

    The reconciliation uses it to rebuild the batch side at its cut in its own schema.
    """
    models = load_models(layout.models_dir)
    counts = {}
    for name in topological_order(models, PYTHON_MODELS):
        if name in skip:
            continue
        if name == VERDICTS:
            counts[name] = write_review_verdicts(engine, schema, fraud_model())[0]
        else:
            _, counts[name] = materialise(
                engine,
                models[name],
                schema=schema,
                sources=source_relations(layout),
                variables=model_variables(as_of_day),
            )
    return counts


def fraud_model() -> FraudModel:
    """The model the fraud filter runs (FRAUD_MODEL, default the hash rule)."""
    return load_model(load(PipelineSettings).fraud_model)


class BatchConfig(dg.Config):
    as_of_day: int | None = Field(
        default=None,
        description="Epoch day (UTC) the recent window ends on; default: today.",
    )


def _sql_block(sql: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"```sql\n{sql}\n```")


def _model_asset(model: SqlModel) -> dg.AssetsDefinition:
    deps = [batch_key(ref) for ref in model.refs] + [
        table_key(SOURCE_TABLES[source]) for source in model.sources
    ]

    def run(
        context: dg.AssetExecutionContext,
        as_of_day: int,
        postgres: PostgresResource,
        sql_models: SqlModelsResource,
    ) -> dg.MaterializeResult:
        sql, rows = materialise(
            postgres.engine(),
            model,
            schema=sql_models.batch_schema,
            sources=source_relations(sql_models),
            variables=model_variables(as_of_day),
        )
        context.log.info(f"{sql_models.batch_schema}.{model.name}: {rows} rows")
        return dg.MaterializeResult(
            metadata={
                "sql": _sql_block(sql),
                "dagster/row_count": rows,
                "table": f"{sql_models.batch_schema}.{model.name}",
                **({"as_of_day": as_of_day} if "as_of_day" in model.vars else {}),
            }
        )

    spec: Mapping[str, Any] = {
        "key": batch_key(model.name),
        "deps": deps,
        "group_name": "batch",
        "kinds": {"sql", "postgres"},
        "description": model.description,
        "metadata": {"model": _sql_block(model.template)},
    }
    if "as_of_day" in model.vars:

        @dg.asset(**spec)
        def with_day(
            context: dg.AssetExecutionContext,
            config: BatchConfig,
            postgres: PostgresResource,
            sql_models: SqlModelsResource,
        ) -> dg.MaterializeResult:
            day = config.as_of_day if config.as_of_day is not None else today()
            return run(context, day, postgres, sql_models)

        return with_day

    @dg.asset(**spec)
    def without_day(
        context: dg.AssetExecutionContext, postgres: PostgresResource, sql_models: SqlModelsResource
    ) -> dg.MaterializeResult:
        return run(context, today(), postgres, sql_models)

    return without_day


@dg.asset(
    key=batch_key(VERDICTS),
    deps=[batch_key(name) for name in PYTHON_MODELS[VERDICTS]],
    group_name="batch",
    kinds={"python", "postgres"},
)
def review_verdicts(
    context: dg.AssetExecutionContext, postgres: PostgresResource, sql_models: SqlModelsResource
) -> dg.MaterializeResult:
    """The fraud filter's verdict on every current review version, by the stream's own rule code
    (FRAUD_MODEL, default the murmur2 hash rule) over the canonical Avro re-encoding of the row,
    so batch and stream agree on which reviews count."""
    rows, fraud = write_review_verdicts(postgres.engine(), sql_models.batch_schema, fraud_model())
    context.log.info(f"{rows} verdicts, {fraud} fraud")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "fraud": fraud,
            "fraud_percent": round(100 * fraud / rows, 3) if rows else 0.0,
            "table": f"{sql_models.batch_schema}.{VERDICTS}",
        }
    )


def build_batch_assets(models_dir: str) -> list[dg.AssetsDefinition]:
    """One asset per SQL model file, plus the Python verdict step they ref."""
    return [_model_asset(model) for model in load_models(models_dir).values()] + [review_verdicts]


def dated_models(models_dir: str) -> list[str]:
    """Names of the models that take the as-of day (the schedule configures them)."""
    return [m.name for m in load_models(models_dir).values() if "as_of_day" in m.vars]
