"""The pipeline's PostgreSQL database."""

from __future__ import annotations

from functools import cache

import dagster as dg
from sqlalchemy import Engine, create_engine

from streaming.settings import Settings


@cache
def _engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True)


class PostgresResource(dg.ConfigurableResource):
    """The pipeline's PostgreSQL database (stream tables, batch and reconciliation schemas)."""

    database_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresResource:
        """At the deployment's database (DATABASE_URL)."""
        return cls(database_url=settings.database_url)

    def engine(self) -> Engine:
        """One pooled engine per URL and process (sensors evaluate every few seconds)."""
        return _engine(self.database_url)
