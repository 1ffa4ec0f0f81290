"""Asset checks: stream and batch agree, workers are healthy, sink connectors run, every table
is fresh (`orchestration.freshness`).

The reconciliation checks judge what the reconciliation asset recorded at its cut (its
`mismatches` and `refusals` tables). A worker's health check covers all its instances. The
health checks can be run from the UI at any time; the supervisor sensors report results of the
same checks on every evaluation, healthy or not.
"""

import time
from typing import Any

import dagster as dg
from sqlalchemy import inspect, text

from orchestration.assets.batch import batch_model_keys
from orchestration.assets.reconciliation import MISMATCHES_TABLE, REFUSALS_TABLE, cell
from orchestration.assets.stream import latest_update_s
from orchestration.freshness import (
    BATCH_CHECK,
    STREAM_CHECK,
    STREAM_SLACK_S,
    batch_freshness,
    stream_freshness,
)
from orchestration.resources import (
    ConnectResource,
    KafkaResource,
    PostgresResource,
    SchemasResource,
    WorkerRuntimeResource,
)
from orchestration.resources.supervision import (
    CONNECTOR_CHECK,
    assess_worker,
    connector_metadata,
    worker_check_name,
    worker_health,
)
from orchestration.topology import (
    INPUT_TOPIC,
    LONG_TERM_TABLE,
    RECENT_TABLE,
    RECONCILIATION_KEY,
    SINKS,
    STATS_TABLES,
    WORKERS,
    SinkSpec,
    WorkerSpec,
    table_key,
    topic_key,
)
from streaming.sql import quote

SAMPLE_ROWS = 20
_NOT_YET = dg.AssetCheckResult(passed=False, description="no reconciliation has run yet")


def _recorded(
    postgres: PostgresResource,
    schemas: SchemasResource,
    table: str,
    query: str,
    params: dict[str, Any],
) -> list[Any] | None:
    """The rows `query` selects from one of the reconciliation's tables (named `{table}` in
    it), or None when no reconciliation has created that table yet."""
    engine = postgres.engine()
    schema = schemas.reconciliation_schema
    if not inspect(engine).has_table(table, schema=schema):
        return None
    qualified = f"{quote(schema)}.{quote(table)}"
    with engine.connect() as conn:
        return list(conn.execute(text(query.format(table=qualified)), params).all())


def _agreement_check(kind: str, table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=RECONCILIATION_KEY,
        name=f"{table}_agree",
        description=f"The stream's {table} equals the batch model for every course: title, "
        "counts, sums, star buckets and last review time exactly, averages within the "
        "tolerance, recent windows ending on the as-of day.",
    )
    def check(postgres: PostgresResource, schemas: SchemasResource) -> dg.AssetCheckResult:
        rows = _recorded(
            postgres,
            schemas,
            MISMATCHES_TABLE,
            "select course_id, field, batch, stream, reason from {table} "
            "where kind = :kind order by course_id, field",
            {"kind": kind},
        )
        if rows is None:
            return _NOT_YET
        sample = "\n".join(
            f"| {r[0]} | {r[1]} | {cell(r[2])} | {cell(r[3])} | {r[4]} |"
            for r in rows[:SAMPLE_ROWS]
        )
        return dg.AssetCheckResult(
            passed=not rows,
            metadata={
                "mismatches": len(rows),
                "courses": len({r[0] for r in rows}),
                "sample": dg.MetadataValue.md(
                    "| course | field | batch | stream | why |\n|---|---|---|---|---|\n" + sample
                ),
            },
        )

    return check


@dg.asset_check(
    asset=RECONCILIATION_KEY,
    name="refusals_agree",
    description="Stream and batch refused the same records of udemy-reviews before the cut, "
    "each with the same kind of the validity rule (undecodable, tombstone, text, rating, "
    "timestamp): the stream's dead letters against the batch's invalid verdicts and its raw "
    "sink's dead letters.",
)
def refusals_agree(postgres: PostgresResource, schemas: SchemasResource) -> dg.AssetCheckResult:
    rows = _recorded(
        postgres,
        schemas,
        REFUSALS_TABLE,
        "select kind, batch, stream, differing from {table} order by kind",
        {},
    )
    if rows is None:
        return _NOT_YET
    table = "\n".join(f"| {r[0]} | {r[1]} | {r[2]} | {r[3] or 'none'} |" for r in rows)
    return dg.AssetCheckResult(
        passed=all(not r[3] for r in rows),
        metadata={
            "kinds_differing": sum(bool(r[3]) for r in rows),
            "refused_batch": sum(r[1] for r in rows),
            "refused_stream": sum(r[2] for r in rows),
            "by kind": dg.MetadataValue.md(
                "| kind | batch | stream | positions one side alone refused |\n"
                "|---|---|---|---|\n" + table
            ),
        },
    )


def _worker_check(worker: WorkerSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=topic_key(worker.outputs[0]),
        name=worker_check_name(worker),
        description=f"Every {worker.name} instance answers its health endpoint, ok (not "
        "stalled, restarting, restoring or held).",
    )
    def check(worker_runtime: WorkerRuntimeResource) -> dg.AssetCheckResult:
        statuses = [worker_runtime.status(name) for name in worker.instance_names()]
        verdict = worker_health([(s, assess_worker(s, None)) for s in statuses])
        return dg.AssetCheckResult(
            passed=verdict.passed, severity=verdict.severity, metadata=verdict.metadata
        )

    return check


def _connector_check(sink: SinkSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=table_key(sink.table),
        name=CONNECTOR_CHECK,
        description=f"The sink connector {sink.connector} and all its tasks are RUNNING.",
    )
    def check(connect: ConnectResource) -> dg.AssetCheckResult:
        state = connect.statuses().get(sink.connector)
        return dg.AssetCheckResult(
            passed=state is not None and state.running,
            metadata=connector_metadata(sink, state, "connector not deployed"),
        )

    return check


def stream_table_freshness(
    table: str,
    kafka: KafkaResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
) -> dg.AssetCheckEvaluation:
    """A statistics table's freshness against the newest record of the pipeline's input."""
    newest = kafka.newest_timestamp(INPUT_TOPIC)
    engine, schema = postgres.engine(), schemas.stream_schema
    exists = inspect(engine).has_table(table, schema=schema)
    latest = latest_update_s(engine, schema, table) if exists else None
    verdict = stream_freshness(latest, newest)
    metadata: dict[str, Any] = {"allowed_lag_s": STREAM_SLACK_S}
    if verdict.lag_s is not None:
        metadata["lag_behind_input_s"] = round(verdict.lag_s, 1)
    if newest is not None:
        metadata["newest_input"] = dg.MetadataValue.timestamp(newest)
    if latest is not None:
        metadata["latest_update"] = dg.MetadataValue.timestamp(latest)
    return dg.AssetCheckEvaluation(
        asset_key=table_key(table),
        check_name=STREAM_CHECK,
        passed=verdict.passed,
        description=verdict.description,
        metadata=metadata,
    )


def batch_model_freshness(
    key: dg.AssetKey, instance: dg.DagsterInstance, now_s: float
) -> dg.AssetCheckEvaluation:
    """A batch model's freshness: its newest materialization within a day."""
    event = instance.get_latest_materialization_event(key)
    verdict = batch_freshness(None if event is None else event.timestamp, now_s)
    metadata = {} if verdict.lag_s is None else {"age_s": round(verdict.lag_s)}
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=BATCH_CHECK,
        passed=verdict.passed,
        description=verdict.description,
        metadata=metadata,
    )


def _stream_fresh_check(table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=table_key(table),
        name=STREAM_CHECK,
        description=f"{table}'s newest row is no older than the newest input record minus "
        f"{STREAM_SLACK_S:.0f} s (passes while there is no input). Evaluated every minute by "
        "the `freshness` sensor.",
    )
    def check(
        kafka: KafkaResource, postgres: PostgresResource, schemas: SchemasResource
    ) -> dg.AssetCheckResult:
        e = stream_table_freshness(table, kafka, postgres, schemas)
        return dg.AssetCheckResult(passed=e.passed, description=e.description, metadata=e.metadata)

    return check


def _batch_fresh_check(key: dg.AssetKey) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=key,
        name=BATCH_CHECK,
        description="Built within the last day (the nightly schedule's promise). Evaluated "
        "every minute by the `freshness` sensor.",
    )
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        e = batch_model_freshness(key, context.instance, time.time())
        return dg.AssetCheckResult(passed=e.passed, description=e.description, metadata=e.metadata)

    return check


freshness_checks = [_stream_fresh_check(t) for t in sorted(STATS_TABLES)] + [
    _batch_fresh_check(k) for k in batch_model_keys()
]

reconciliation_checks = [
    _agreement_check("long_term", LONG_TERM_TABLE),
    _agreement_check("recent", RECENT_TABLE),
    refusals_agree,
]
health_checks = [_worker_check(w) for w in WORKERS] + [_connector_check(s) for s in SINKS]
