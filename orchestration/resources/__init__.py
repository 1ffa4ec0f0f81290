"""Dagster resources: the pipeline's services, one resource per module.

Each resource is a thin typed handle over a client the `streaming` package has, so assets and
sensors never build connections themselves and tests swap a resource for a fake. The code
location binds each `deployed`: built from the settings model (`streaming.settings.Settings`,
read in the process that uses it) by the resource's `from_settings`, under an empty run-config
schema. What a resource reaches (an address, an executable, a module, a directory) is the
deployment's, never a run config's; only the scratch `schemas` are a run's choice.
`supervision.py`, beside the worker runtime, judges what that runtime reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, Self

import dagster as dg

from orchestration.resources.connect import ConnectResource
from orchestration.resources.dbt import OfflineDbtCliResource
from orchestration.resources.kafka import NO_OFFSET, KafkaResource, Offsets
from orchestration.resources.postgres import PostgresResource
from orchestration.resources.review_source import ReviewSourceResource
from orchestration.resources.schema_registry import SchemaRegistryResource
from orchestration.resources.schemas import SchemasResource
from orchestration.resources.worker_runtime import (
    LocalProcessRuntime,
    WorkerRuntimeResource,
    WorkerStatus,
)
from streaming.settings import Settings

__all__ = [
    "NO_OFFSET",
    "ConnectResource",
    "KafkaResource",
    "LocalProcessRuntime",
    "OfflineDbtCliResource",
    "Offsets",
    "PostgresResource",
    "ReviewSourceResource",
    "SchemaRegistryResource",
    "SchemasResource",
    "WorkerRuntimeResource",
    "WorkerStatus",
    "deployed",
    "deployment_resources",
]


class FromSettings(Protocol):
    """A resource the deployment's settings configure."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self: ...


def deployed(resource: type[FromSettings]) -> dg.ResourceDefinition:
    """`resource` as the deployment configures it: built by its `from_settings` from
    `Settings.from_env()` in the process that uses it (a run, a sensor), under an empty
    run-config schema, so Dagster refuses a run config that sets any of its fields: whoever
    can launch a run cannot point it at another URL, executable, module or directory (a
    Python of their own, say, run by the worker runtime)."""

    @dg.resource(config_schema={}, description=resource.__doc__)
    def _deployed(_context: dg.InitResourceContext) -> Iterator[Any]:
        built = resource.from_settings(Settings.from_env())
        assert isinstance(built, dg.ConfigurableResource)
        with built.process_config_and_initialize_cm() as ready:
            yield ready

    return _deployed


def deployment_resources() -> dict[str, Any]:
    """The code location's resources, by the names assets and sensors take them."""
    return {
        "kafka": deployed(KafkaResource),
        "schema_registry": deployed(SchemaRegistryResource),
        "postgres": deployed(PostgresResource),
        "review_source": deployed(ReviewSourceResource),
        "connect": deployed(ConnectResource),
        "worker_runtime": deployed(LocalProcessRuntime),
        "schemas": SchemasResource(),
        "dbt": deployed(OfflineDbtCliResource),
    }
