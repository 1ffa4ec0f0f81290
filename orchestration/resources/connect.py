"""Kafka Connect's REST API."""

from __future__ import annotations

import dagster as dg

from orchestration.topology import SINKS
from streaming.settings import Settings
from streaming.sink.connect import ConnectClient, ConnectError, ConnectorState


class ConnectResource(dg.ConfigurableResource):
    """Kafka Connect's REST API, through the project's client."""

    url: str
    retry_conflicts_s: float = 10.0
    """How long to retry while Connect rebalances; short, a sensor tick must stay short."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectResource:
        """At the deployment's Connect (CONNECT_URL)."""
        return cls(url=settings.connect_url)

    def client(self) -> ConnectClient:
        """With CONNECT_USER / CONNECT_PASSWORD_FILE's credentials (`Settings.connect_auth`)."""
        auth = Settings.from_env().connect_auth()
        return ConnectClient(self.url, retry_conflicts_s=self.retry_conflicts_s, auth=auth)

    def statuses(self) -> dict[str, ConnectorState]:
        """The pipeline's sink connectors' states, by name; one not deployed is absent.

        Only the declared sinks: other connectors on a shared Connect cluster (tests, other
        teams) are not ours to judge or restart, and may vanish between a list and a status.
        """
        out: dict[str, ConnectorState] = {}
        with self.client() as client:
            for sink in SINKS:
                try:
                    out[sink.connector] = client.status(sink.connector)
                except ConnectError as exc:
                    if exc.status != 404:
                        raise
        return out

    def restart_failed(self, name: str) -> ConnectorState:
        """Restart the connector if it failed, and its failed tasks."""
        with self.client() as client:
            return client.restart_failed(name)
