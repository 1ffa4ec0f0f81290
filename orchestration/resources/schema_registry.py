"""The schema registry."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.settings import Settings, registry_client_config


class SchemaRegistryResource(dg.ConfigurableResource):
    """The Confluent-compatible schema registry (Apicurio's ccompat API locally)."""

    url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaRegistryResource:
        """At the deployment's registry (SCHEMA_REGISTRY_URL)."""
        return cls(url=settings.schema_registry_url)

    def latest_versions(self, subjects: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Subject -> (version, schema id) of its latest schema; unregistered subjects left out."""
        client = SchemaRegistryClient(registry_client_config(self.url))
        out: dict[str, tuple[int, int]] = {}
        for subject in subjects:
            try:
                latest = client.get_latest_version(subject)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    continue
                raise
            out[subject] = (latest.version, latest.schema_id)  # type: ignore[assignment]  # registered: set
        return out
