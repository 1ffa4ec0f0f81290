"""Asset checks: stream and batch agree, workers are healthy, sink connectors run.

The reconciliation checks judge what the reconciliation asset recorded at its cut (its
`mismatches` table). A worker's health check covers all its instances. The health checks can be
run from the UI at any time; the supervisor sensors report results of the same checks on every
evaluation, healthy or not.
"""

import dagster as dg
from sqlalchemy import inspect, text

from orchestration.assets.reconciliation import MISMATCHES_TABLE, cell
from orchestration.resources import (
    ConnectResource,
    PostgresResource,
    SqlModelsResource,
    WorkerRuntimeResource,
)
from orchestration.sql_models import quote
from orchestration.supervision import (
    CONNECTOR_CHECK,
    assess_worker,
    connector_metadata,
    worker_check_name,
    worker_health,
)
from orchestration.topology import (
    RECONCILIATION_KEY,
    SINKS,
    WORKERS,
    SinkSpec,
    WorkerSpec,
    table_key,
    topic_key,
)

SAMPLE_ROWS = 20


def _agreement_check(kind: str, table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=RECONCILIATION_KEY,
        name=f"{table}_agree",
        description=f"The stream's {table} equals the batch model for every course: title, "
        "counts, sums, star buckets and last review time exactly, averages within the "
        "tolerance, recent windows ending on the as-of day.",
    )
    def check(postgres: PostgresResource, sql_models: SqlModelsResource) -> dg.AssetCheckResult:
        engine = postgres.engine()
        schema = sql_models.reconciliation_schema
        if not inspect(engine).has_table(MISMATCHES_TABLE, schema=schema):
            return dg.AssetCheckResult(passed=False, description="no reconciliation has run yet")
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"select course_id, field, batch, stream, reason "
                    f"from {quote(schema)}.{quote(MISMATCHES_TABLE)} "
                    "where kind = :kind order by course_id, field"
                ),
                {"kind": kind},
            ).all()
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


reconciliation_checks = [
    _agreement_check("long_term", "long_term_stats"),
    _agreement_check("recent", "recent_stats"),
]
health_checks = [_worker_check(w) for w in WORKERS] + [_connector_check(s) for s in SINKS]
