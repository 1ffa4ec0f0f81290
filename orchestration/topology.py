"""The pipeline's shape as the orchestrator sees it: the declaration plus Dagster asset keys.

Everything here comes from `streaming.pipeline` (the one declaration of topics, workers,
stages, sinks and ports), so sensors, the reconciliation and the asset graph cannot drift from
what the workers and connectors run.
"""

from __future__ import annotations

import dagster as dg

from streaming.pipeline import (
    CONNECT_DEAD_LETTER,
    DEAD_LETTER,
    FRAUD,
    INPUT,
    LONG_TERM,
    LONG_TERM_SINK,
    RECENT,
    RECENT_SINK,
    REVIEWS_SINK,
    SINKS,
    VALID,
    WORKERS,
    GroupStage,
    SinkSpec,
    WorkerSpec,
    group_stages,
    lineage,
)

INPUT_TOPIC = INPUT.name
VALID_TOPIC = VALID.name
FRAUD_TOPIC = FRAUD.name
LONG_TERM_TOPIC = LONG_TERM.name
RECENT_TOPIC = RECENT.name
DEAD_LETTER_TOPIC = DEAD_LETTER.name
CONNECT_DEAD_LETTER_TOPIC = CONNECT_DEAD_LETTER.name
REVIEWS_TABLE = REVIEWS_SINK.table
LONG_TERM_TABLE = LONG_TERM_SINK.table
RECENT_TABLE = RECENT_SINK.table
STATS_TABLES = frozenset({LONG_TERM_TABLE, RECENT_TABLE})
"""The sink's statistics tables; the batch's dbt models that rebuild them have their names."""

TOPIC_UPSTREAM: dict[str, tuple[str, ...]] = lineage()
"""Which topics each topic is computed from (the lineage the stream workers implement)."""

STAGES: tuple[GroupStage, ...] = group_stages()
"""Upstream first: a stage's target offsets are read once every stage before it caught up."""

BACKFILL_KEY = dg.AssetKey(["ingest", "course_reviews"])
RECONCILIATION_KEY = dg.AssetKey(["reconciliation", "stream_vs_batch"])

__all__ = [
    "BACKFILL_KEY",
    "CONNECT_DEAD_LETTER_TOPIC",
    "DEAD_LETTER_TOPIC",
    "FRAUD_TOPIC",
    "INPUT_TOPIC",
    "LONG_TERM_TABLE",
    "LONG_TERM_TOPIC",
    "RECENT_TABLE",
    "RECENT_TOPIC",
    "RECONCILIATION_KEY",
    "REVIEWS_TABLE",
    "SINKS",
    "STAGES",
    "STATS_TABLES",
    "TOPIC_UPSTREAM",
    "VALID_TOPIC",
    "WORKERS",
    "GroupStage",
    "SinkSpec",
    "WorkerSpec",
    "batch_key",
    "table_key",
    "topic_key",
]


def topic_key(topic: str) -> dg.AssetKey:
    return dg.AssetKey(["kafka", topic])


def table_key(table: str) -> dg.AssetKey:
    """A table the stream's sink connectors write."""
    return dg.AssetKey(["postgres", table])


def batch_key(model: str) -> dg.AssetKey:
    return dg.AssetKey(["batch", model])
