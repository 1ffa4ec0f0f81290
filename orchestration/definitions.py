"""The single entry point Dagster loads (workspace.yaml: `-m orchestration.definitions`).

Every resource is built from the settings model (`streaming.settings`: the operating contract's
environment variables, `.stack/env` locally), read when a run or sensor uses it, so one code
location serves any stack; a run config cannot re-point one (`orchestration.resources.deployed`;
only the scratch `schemas` are a run's choice).
"""

from __future__ import annotations

import dagster as dg

from orchestration.assets.backfill import course_reviews
from orchestration.assets.batch import batch_assets
from orchestration.assets.reconciliation import stream_vs_batch
from orchestration.assets.stream import table_specs, topic_specs
from orchestration.checks import freshness_checks, health_checks, reconciliation_checks
from orchestration.jobs import (
    batch_job,
    course_backfill_job,
    reconciliation_job,
    restart_connector_job,
    restart_worker_job,
)
from orchestration.resources import deployment_resources
from orchestration.schedules import nightly_batch
from orchestration.sensors import all_sensors

defs = dg.Definitions(
    assets=[
        course_reviews,
        *topic_specs(),
        *table_specs(),
        *batch_assets,
        stream_vs_batch,
    ],
    asset_checks=[*reconciliation_checks, *health_checks, *freshness_checks],
    jobs=[
        course_backfill_job,
        batch_job,
        reconciliation_job,
        restart_worker_job,
        restart_connector_job,
    ],
    schedules=[nightly_batch],
    sensors=all_sensors,
    resources=deployment_resources(),
)
