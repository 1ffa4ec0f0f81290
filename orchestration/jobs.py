"""Jobs: the backfill, the nightly batch, the reconciliation, and the supervisors' restarts."""

import dagster as dg
from pydantic import Field

from orchestration.resources import ConnectResource, WorkerRuntimeResource
from orchestration.topology import BACKFILL_KEY, RECONCILIATION_KEY
from streaming.sink.connect import describe

course_backfill_job = dg.define_asset_job(
    "course_backfill",
    selection=dg.AssetSelection.assets(BACKFILL_KEY),
    description="Reviews of the selected courses into udemy-reviews (all courses: one run).",
)

# The batch and the reconciliation work inside PostgreSQL: one process for all steps saves a
# Python start-up per step on a small machine and loses no parallelism worth having.
batch_job = dg.define_asset_job(
    "batch_statistics",
    selection=dg.AssetSelection.groups("batch"),
    executor_def=dg.in_process_executor,
    # partitioned as its assets are: by as-of day (recent_stats); the others take no day
    description="The nightly batch: the fraud verdicts, then the dbt models and their tests over "
    "the reviews table, the recent window ending on the partition's day.",
)

reconciliation_job = dg.define_asset_job(
    "reconciliation",
    selection=dg.AssetSelection.assets(RECONCILIATION_KEY),
    executor_def=dg.in_process_executor,
    description="Stream statistics against the batch models at a consistent cut, with checks.",
)


class RestartWorkerConfig(dg.Config):
    worker: str = Field(
        description="Worker process name (fraud-filter-0, aggregator-1; the worker's name when "
        "it runs one instance)."
    )
    reason: str = Field(default="", description="Why the supervisor asked for the restart.")


@dg.op
def restart_worker(
    context: dg.OpExecutionContext,
    config: RestartWorkerConfig,
    worker_runtime: WorkerRuntimeResource,
) -> None:
    """Restart the process through its supervisor (a start when it has none); done once it is
    healthy again."""
    context.log.info(f"restarting {config.worker}: {config.reason or 'asked'}")
    status = worker_runtime.restart(config.worker)
    context.log.info(f"{config.worker} is back: pid {status.pid}, health {status.health}")


@dg.job(description="Restart one stream worker process (launched by its supervisor sensor).")
def restart_worker_job() -> None:
    restart_worker()


class RestartConnectorConfig(dg.Config):
    connector: str = Field(description="Connector name.")
    reason: str = Field(default="", description="Why the supervisor asked for the restart.")


@dg.op
def restart_connector(
    context: dg.OpExecutionContext, config: RestartConnectorConfig, connect: ConnectResource
) -> None:
    """Restart the connector if it failed, and each of its failed tasks."""
    context.log.info(f"restarting {config.connector}: {config.reason or 'asked'}")
    state = connect.restart_failed(config.connector)
    context.log.info(f"{config.connector}: {describe(state)}")


@dg.job(description="Restart the failed parts of one sink connector (launched by its sensor).")
def restart_connector_job() -> None:
    restart_connector()
