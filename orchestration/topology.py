"""The pipeline's shape as the orchestrator sees it: workers, sinks, consumer-group stages, keys.

One place for names that sensors, the reconciliation and the asset graph must agree on. The
defaults are those of the workers (`FRAUD_GROUP_ID`, `AGGREGATOR_GROUP_ID`) and of the sink
connectors (Connect names a sink's consumer group `connect-<connector>`).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

INPUT_TOPIC = "udemy-reviews"
VALID_TOPIC = "udemy-reviews-valid"
FRAUD_TOPIC = "udemy-reviews-fraud"
REPARTITION_TOPIC = "stats-aggregator-repartition"
CHANGELOG_TOPIC = "stats-aggregator-changelog"
LONG_TERM_TOPIC = "long-term-stats"
RECENT_TOPIC = "recent-stats"
DEAD_LETTER_TOPIC = "reviews-dead-letter"
CONNECT_DEAD_LETTER_TOPIC = "connect-dead-letter"

TOPIC_UPSTREAM: dict[str, tuple[str, ...]] = {
    VALID_TOPIC: (INPUT_TOPIC,),
    FRAUD_TOPIC: (INPUT_TOPIC,),
    REPARTITION_TOPIC: (VALID_TOPIC, FRAUD_TOPIC),
    CHANGELOG_TOPIC: (REPARTITION_TOPIC,),
    LONG_TERM_TOPIC: (REPARTITION_TOPIC,),
    RECENT_TOPIC: (REPARTITION_TOPIC,),
    DEAD_LETTER_TOPIC: (INPUT_TOPIC, VALID_TOPIC, FRAUD_TOPIC),
    CONNECT_DEAD_LETTER_TOPIC: (INPUT_TOPIC, LONG_TERM_TOPIC, RECENT_TOPIC),
}
"""Which topics each topic is computed from (the lineage the stream workers implement)."""


@dataclass(frozen=True)
class WorkerSpec:
    """A stream worker: how to run it, where it reports health, what it writes."""

    name: str
    module: str
    health_url_env: str
    default_health_url: str
    group_id: str
    outputs: tuple[str, ...]


WORKERS: tuple[WorkerSpec, ...] = (
    WorkerSpec(
        "fraud-filter",
        "streaming.workers.fraud_filter",
        "FRAUD_FILTER_HEALTH_URL",
        "http://127.0.0.1:8091/health",
        "fraud-filter",
        (VALID_TOPIC, FRAUD_TOPIC),
    ),
    WorkerSpec(
        "aggregator",
        "streaming.workers.stats_aggregator",
        "AGGREGATOR_HEALTH_URL",
        "http://127.0.0.1:8092/health",
        "stats-aggregator",
        (LONG_TERM_TOPIC, RECENT_TOPIC),
    ),
)


@dataclass(frozen=True)
class SinkSpec:
    """A JDBC sink connector: the topic it reads and the table it upserts."""

    connector: str
    topic: str
    table: str

    @property
    def group_id(self) -> str:
        return f"connect-{self.connector}"


SINKS: tuple[SinkSpec, ...] = (
    SinkSpec("udemy-reviews", INPUT_TOPIC, "reviews"),
    SinkSpec("long-term-stats", LONG_TERM_TOPIC, "long_term_stats"),
    SinkSpec("recent-stats", RECENT_TOPIC, "recent_stats"),
)


@dataclass(frozen=True)
class Stage:
    """A consumer group reading some topics: one hop a record takes from input to table."""

    name: str
    group_id: str
    topics: tuple[str, ...]


STAGES: tuple[Stage, ...] = (
    Stage("fraud filter", "fraud-filter", (INPUT_TOPIC,)),
    Stage("reviews sink", SINKS[0].group_id, (INPUT_TOPIC,)),
    Stage("aggregator re-key", "stats-aggregator", (VALID_TOPIC, FRAUD_TOPIC)),
    Stage("aggregator aggregate", "stats-aggregator", (REPARTITION_TOPIC,)),
    Stage("long-term-stats sink", SINKS[1].group_id, (LONG_TERM_TOPIC,)),
    Stage("recent-stats sink", SINKS[2].group_id, (RECENT_TOPIC,)),
)
"""Upstream first: a stage's target offsets are read once every stage before it caught up."""

BACKFILL_KEY = dg.AssetKey(["ingest", "course_reviews"])
RECONCILIATION_KEY = dg.AssetKey(["reconciliation", "stream_vs_batch"])


def topic_key(topic: str) -> dg.AssetKey:
    return dg.AssetKey(["kafka", topic])


def table_key(table: str) -> dg.AssetKey:
    """A table the stream's sink connectors write."""
    return dg.AssetKey(["postgres", table])


def batch_key(model: str) -> dg.AssetKey:
    return dg.AssetKey(["batch", model])
