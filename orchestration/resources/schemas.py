"""Which PostgreSQL schemas a run reads and writes: a run's choice (tests use scratch ones)."""

from __future__ import annotations

import dagster as dg


class SchemasResource(dg.ConfigurableResource):
    """Which PostgreSQL schemas the batch and the reconciliation read and write.

    `stream_schema` holds the tables the sink connectors write (`reviews`, `long_term_stats`,
    `recent_stats`); the dbt models go to `batch_schema`, the reconciliation's rebuild and its
    `mismatches` to `reconciliation_schema`. Tests and benchmarks point them at scratch schemas.
    """

    stream_schema: str = "public"
    batch_schema: str = "batch"
    reconciliation_schema: str = "reconciliation"
