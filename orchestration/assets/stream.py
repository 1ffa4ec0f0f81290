"""The stream side of the graph: topics and sink tables as external assets, and what observes them.

The stream workers and Connect run outside Dagster, so their outputs are external assets
(AssetSpec) whose lineage mirrors the topology: udemy-reviews -> valid / fraud -> the
aggregator's topics -> statistics topics -> the sink's tables. The observation sensor records
offsets, throughput, per-stage lag and table freshness on them as AssetObservations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import dagster as dg
from sqlalchemy import Engine, text

from orchestration.resources import KafkaResource, SchemaRegistryResource
from orchestration.topology import (
    BACKFILL_KEY,
    INPUT_TOPIC,
    SINKS,
    STAGES,
    STATS_TABLES,
    TOPIC_UPSTREAM,
    table_key,
    topic_key,
)
from streaming.admin import load_topic_specs
from streaming.sql import quote


def topic_specs() -> list[dg.AssetSpec]:
    """Every declared topic (streaming/pipeline.py), downstream of the topics it is made from."""
    specs = []
    for topic in load_topic_specs():
        deps = [topic_key(t) for t in TOPIC_UPSTREAM.get(topic.name, ())]
        if topic.name == INPUT_TOPIC:
            deps.append(BACKFILL_KEY)
        specs.append(
            dg.AssetSpec(
                key=topic_key(topic.name),
                deps=deps,
                description=topic.description,
                group_name="stream",
                kinds={"kafka"},
                metadata={"partitions": topic.partitions, **topic.config},
            )
        )
    return specs


def table_specs() -> list[dg.AssetSpec]:
    """The tables the JDBC sink connectors upsert, each downstream of its topic."""
    return [
        dg.AssetSpec(
            key=table_key(sink.table),
            deps=[topic_key(sink.topic)],
            description=f"Written by the Connect sink `{sink.connector}` from `{sink.topic}`.",
            group_name="stream",
            kinds={"postgres"},
            metadata={"connector": sink.connector},
        )
        for sink in SINKS
    ]


def observe_topics(
    kafka: KafkaResource,
    registry: SchemaRegistryResource,
    previous: Mapping[str, Any],
    now: float,
) -> tuple[list[dg.AssetObservation], dict[str, Any]]:
    """End offsets, throughput since the previous observation, each reading stage's lag, and
    the latest registered value schema.

    `previous` is the state this function returned last time ({} at first); lag counts offsets,
    so a transactional topic read to its end may show one per partition (commit markers).
    """
    specs = load_topic_specs()
    topics = [t.name for t in specs]
    schemas = registry.latest_versions(f"{t.name}-value" for t in specs if t.value_schema)
    ends = kafka.end_offsets(topics)
    totals: dict[str, int] = defaultdict(int)
    for (topic, _), offset in ends.items():
        totals[topic] += offset
    lags: dict[str, dict[str, int]] = defaultdict(dict)
    for stage in STAGES:
        committed = kafka.committed_offsets(stage.group_id, stage.topics)
        for topic in stage.topics:
            lags[topic][f"lag {stage.name}"] = sum(
                max(end - max(committed.get(tp, 0), 0), 0)
                for tp, end in ends.items()
                if tp[0] == topic
            )
    elapsed = now - previous.get("time", now)
    observations = []
    for topic in topics:
        metadata: dict[str, Any] = {"end_offsets": totals[topic], **lags[topic]}
        if f"{topic}-value" in schemas:
            version, schema_id = schemas[f"{topic}-value"]
            metadata["value_schema"] = f"version {version} (id {schema_id})"
        before = previous.get("totals", {}).get(topic)
        if before is not None and elapsed > 0:
            metadata["offsets_per_s"] = round((totals[topic] - before) / elapsed, 2)
        observations.append(dg.AssetObservation(asset_key=topic_key(topic), metadata=metadata))
    return observations, {"time": now, "totals": dict(totals)}


def latest_update_s(engine: Engine, schema: str, table: str) -> float | None:
    """Epoch seconds of a statistics table's newest row, by `as_of_time` (when the aggregator
    emitted it); None for no rows. The table must exist."""
    with engine.connect() as conn:
        value = conn.execute(
            text(
                "select extract(epoch from max(as_of_time))::float8 "
                f"from {quote(schema)}.{quote(table)}"
            )
        ).scalar()
    return None if value is None else float(value)


def observe_tables(
    engine: Engine, schema: str, previous: Mapping[str, Any], now: float
) -> tuple[list[dg.AssetObservation], dict[str, Any]]:
    """Rows and write rate of each sink table, and the last update of the statistics tables.

    Row counts and writes come from PostgreSQL's statistics views (`pg_stat_user_tables`), so
    an observation every minute never scans `reviews`, which holds every record ever ingested;
    the statistics tables (one row per course) are small enough to ask for max(as_of_time).
    `previous` is the state returned last time ({} at first), for the write rate.
    """
    with engine.connect() as conn:
        activity = {
            name: (int(rows), int(writes))  # type: ignore[call-overload]  # Row unpacks as object
            for name, rows, writes in conn.execute(
                text(
                    "select relname, n_live_tup, n_tup_ins + n_tup_upd "
                    "from pg_stat_user_tables where schemaname = :schema"
                ),
                {"schema": schema},
            )
        }
    elapsed = now - previous.get("time", now)
    observations = []
    for sink in SINKS:
        metadata: dict[str, Any] = {"exists": sink.table in activity}
        if sink.table in activity:
            rows, writes = activity[sink.table]
            metadata["rows (estimate)"] = rows
            before = previous.get("writes", {}).get(sink.table)
            if before is not None and elapsed > 0 and writes >= before:
                metadata["rows_written_per_s"] = round((writes - before) / elapsed, 2)
        if sink.table in activity and sink.table in STATS_TABLES:
            last = latest_update_s(engine, schema, sink.table)
            if last is not None:
                metadata["max as_of_time"] = dg.MetadataValue.timestamp(last)
                metadata["seconds_since_update"] = round(now - last, 1)
        observations.append(dg.AssetObservation(asset_key=table_key(sink.table), metadata=metadata))
    return observations, {"time": now, "writes": {t: w for t, (_, w) in activity.items()}}
