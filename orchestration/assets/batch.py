"""The nightly batch pipeline, kept as the reference: the dbt project `dbt_like_sql/` in Dagster.

Every dbt model is an asset of the `batch` group (its columns, descriptions and lineage from the
manifest), every dbt test an asset check. The sink's `reviews` table is the source; the fraud
verdicts are a Python asset between it and `valid_reviews` (the rule hashes Avro bytes, which
SQL cannot) that runs the stream's own rule code (`streaming.batch.verdicts`).

`recent_stats` depends on the as-of day, so it is the one partitioned asset: a daily partition
per as-of day, today's included, its rows keyed by the day (an incremental model), so a backfill
of past days never replaces today's rows. The other models hold no day and are not partitioned.
"""

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets
from sqlalchemy import Engine, text

from orchestration.dbt_project import BUILT_DAILY, DBT_PROJECT, MANIFEST, TRANSLATOR, dbt_connection
from orchestration.resources import PostgresResource, SchemasResource
from orchestration.topology import RECENT_TABLE, REVIEWS_TABLE, batch_key, table_key
from streaming.batch.dbt import PROJECT_DIR, dbt_env, dbt_executable
from streaming.batch.verdicts import VERDICTS, judge_new_versions
from streaming.core.window import date_to_day
from streaming.settings import clock_from_env
from streaming.sql import quote

PARTITIONED_MODEL = RECENT_TABLE
"""The one model that takes the as-of day (var('as_of_day')): the batch's `recent_stats`, named
as the stream table it rebuilds."""
AS_OF_DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1, timezone="UTC")
"""One partition per as-of day (UTC); end_offset=1: today's day is a partition, not only the
finished ones, as the nightly job has always built the window ending today."""


def today() -> int:
    """The current UTC day as an epoch day (on the clock CLOCK_OFFSET_S shifts, as the
    aggregator's)."""
    return date_to_day(datetime.fromtimestamp(clock_from_env()(), UTC).date())


def partition_day(partition_key: str) -> int:
    """A daily partition's key (YYYY-MM-DD) as an epoch day."""
    return date_to_day(date.fromisoformat(partition_key))


def dbt_vars(schemas: SchemasResource, **extra: object) -> str:
    """`--vars` for a run: where the sink's tables are and where the models go."""
    return json.dumps(
        {"stream_schema": schemas.stream_schema, "target_schema": schemas.batch_schema, **extra}
    )


def _build(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
    as_of_day: int | None = None,
) -> Iterator[Any]:
    """`dbt build` of the selected models and their tests, each model's output with its row
    count (counted where this run built it: the manifest names the default schemas)."""
    extra = {} if as_of_day is None else {"as_of_day": as_of_day}
    with dbt_connection(postgres.database_url):
        invocation = dbt.cli(["build", "--vars", dbt_vars(schemas, **extra)], context=context)
        for event in invocation.stream():
            key = context.assets_def.keys_by_output_name.get(getattr(event, "output_name", ""))
            if isinstance(event, dg.Output) and key is not None:
                rows = _row_count(postgres.engine(), schemas.batch_schema, key.path[-1], as_of_day)
                event = event.with_metadata({**event.metadata, "dagster/row_count": rows})
            yield event


def _row_count(engine: Engine, schema: str, model: str, as_of_day: int | None) -> int:
    """Rows of a model; of the as-of day's set for recent_stats."""
    where = "" if as_of_day is None else f" where window_end_day = date '1970-01-01' + {as_of_day}"
    with engine.connect() as conn:
        sql = f"select count(*) from {quote(schema)}.{quote(model)}{where}"
        return int(conn.execute(text(sql)).scalar_one())


@dbt_assets(
    manifest=MANIFEST,
    project=DBT_PROJECT,
    exclude=PARTITIONED_MODEL,
    dagster_dbt_translator=TRANSLATOR,
    name="batch_models",
)
def batch_models(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
) -> Iterator[Any]:
    """The models that hold no as-of day, and their tests (`dbt build`)."""
    yield from _build(context, dbt, postgres, schemas)


@dbt_assets(
    manifest=MANIFEST,
    project=DBT_PROJECT,
    select=PARTITIONED_MODEL,
    dagster_dbt_translator=TRANSLATOR,
    partitions_def=AS_OF_DAYS,
    name="batch_recent_stats",
    # a run per day: each invocation builds one as-of day's window
    backfill_policy=dg.BackfillPolicy.multi_run(1),
)
def batch_recent_stats(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
) -> Iterator[Any]:
    """The recent window ending on the partition's day, replacing that day's rows only."""
    day = partition_day(context.partition_key)
    yield from _build(context, dbt, postgres, schemas, day)


@dg.asset(
    key=batch_key(VERDICTS),
    deps=[table_key(REVIEWS_TABLE)],
    group_name="batch",
    kinds={"python", "postgres"},
    freshness_policy=BUILT_DAILY,
)
def review_verdicts(
    context: dg.AssetExecutionContext, postgres: PostgresResource, schemas: SchemasResource
) -> dg.MaterializeResult:
    """The stream's verdict on every version of `reviews`, by its own code: invalid (the
    validity rule, with kind and reason), else fraud or valid (FRAUD_MODEL, default the murmur2
    hash rule, over the canonical Avro re-encoding of the row), so batch and stream agree on
    which reviews count. Judges only versions not judged yet (`reviews verdicts` from a
    shell)."""
    run = judge_new_versions(
        postgres.engine(), source_schema=schemas.stream_schema, schema=schemas.batch_schema
    )
    context.log.info(
        f"{run.judged} versions judged, {run.fraud} fraud, {run.invalid} invalid; "
        f"{run.total} in all"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": run.total,
            "judged": run.judged,
            "fraud_judged": run.fraud,
            "invalid_judged": run.invalid,
            "rebuilt": run.rebuilt,
            "table": f"{schemas.batch_schema}.{VERDICTS}",
        }
    )


def build_batch_tables(
    engine: Engine, database_url: str, stream_schema: str, schema: str, as_of_day: int
) -> None:
    """The whole batch side into `schema`: the verdicts, then `dbt run` of every model (no tests:
    the reconciliation compares the results itself), the recent window ending on `as_of_day`.

    The reconciliation rebuilds at its cut with this. One build per schema at a time (a
    PostgreSQL advisory lock): two would race on the same tables. Each schema keeps its dbt
    artifacts in a directory of its own, so the next build with the same vars (the same day)
    parses only what changed.
    """
    variables = {"stream_schema": stream_schema, "target_schema": schema, "as_of_day": as_of_day}
    target = MANIFEST.parent / f"build-{schema}"
    env = {**dbt_env(database_url), "DBT_TARGET_PATH": str(target), "DBT_LOG_PATH": str(target)}
    with engine.connect() as lock:
        lock.execute(text("select pg_advisory_lock(hashtext(:k))"), {"k": f"batch build {schema}"})
        try:
            judge_new_versions(engine, source_schema=stream_schema, schema=schema)
            done = subprocess.run(
                [dbt_executable(), "--quiet", "run", "--vars", json.dumps(variables)],
                cwd=PROJECT_DIR,
                env=env,
                capture_output=True,
                text=True,
            )
        finally:
            lock.execute(text("select pg_advisory_unlock_all()"))
    if done.returncode != 0:
        raise dg.Failure(
            f"dbt run into {schema} failed (exit {done.returncode}; artifacts in {target})",
            metadata={"dbt output": dg.MetadataValue.text(done.stdout + done.stderr)},
        )


batch_assets: list[dg.AssetsDefinition] = [review_verdicts, batch_models, batch_recent_stats]


def batch_model_keys() -> list[dg.AssetKey]:
    """Every batch asset: the dbt models and the Python verdict step."""
    return [key for asset in batch_assets for key in asset.keys]
