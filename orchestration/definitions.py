"""The single entry point Dagster loads (workspace.yaml: `-m orchestration.definitions`).

Every service address comes from the operating contract's environment variables (`.stack/env`
locally), read when a run or sensor uses the resource, so one code location serves any stack.
Those resources are `pinned`: a run config cannot re-point them (only the scratch `schemas`
are a run's choice).
"""

from __future__ import annotations

import os

import dagster as dg

from orchestration.assets.backfill import course_reviews
from orchestration.assets.batch import batch_assets
from orchestration.assets.reconciliation import stream_vs_batch
from orchestration.assets.stream import table_specs, topic_specs
from orchestration.checks import freshness_checks, health_checks, reconciliation_checks
from orchestration.dbt_project import DBT_PROJECT
from orchestration.jobs import (
    batch_job,
    course_backfill_job,
    reconciliation_job,
    restart_connector_job,
    restart_worker_job,
)
from orchestration.resources import (
    ConnectResource,
    KafkaResource,
    LocalProcessRuntime,
    OfflineDbtCliResource,
    PostgresResource,
    ReviewSourceResource,
    SchemaRegistryResource,
    SchemasResource,
    pinned,
)
from orchestration.schedules import nightly_batch
from orchestration.sensors import all_sensors
from orchestration.topology import WORKERS
from streaming.batch.dbt import dbt_executable

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
    resources={
        "kafka": pinned(KafkaResource(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS"))),
        "schema_registry": pinned(SchemaRegistryResource(url=dg.EnvVar("SCHEMA_REGISTRY_URL"))),
        "postgres": pinned(PostgresResource(database_url=dg.EnvVar("DATABASE_URL"))),
        "review_source": pinned(
            ReviewSourceResource(
                api_url=dg.EnvVar("UDEMY_API_URL"),
                client_id=dg.EnvVar("UDEMY_CLIENT_ID"),
            )
        ),
        "connect": pinned(ConnectResource(url=dg.EnvVar("CONNECT_URL"))),
        # Same state directory, process names and health URLs as stack/stack.sh (STACK_DIR,
        # instance i of a worker on its base health port + i).
        "worker_runtime": pinned(
            LocalProcessRuntime(
                state_dir=os.environ.get("STACK_DIR", ".stack"),
                health_urls={
                    name: w.health_url(i)
                    for w in WORKERS
                    for i, name in enumerate(w.instance_names())
                },
            )
        ),
        "schemas": SchemasResource(),
        "dbt": pinned(
            OfflineDbtCliResource(project_dir=DBT_PROJECT, dbt_executable=dbt_executable())
        ),
    },
)
