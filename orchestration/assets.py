"""The pipeline's Kafka topics as external assets, so the stream lineage shows in the graph."""

from __future__ import annotations

import dagster as dg

from streaming.admin import load_topic_specs

topic_assets = [
    dg.AssetSpec(
        key=dg.AssetKey(["kafka", spec.name]),
        description=spec.description,
        group_name="streaming",
        kinds={"kafka"},
        metadata={"partitions": spec.partitions, **{k: v for k, v in spec.config.items()}},
    )
    for spec in load_topic_specs()
]
