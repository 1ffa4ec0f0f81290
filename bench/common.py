"""Shared benchmark plumbing: input data on the real broker, and results with their context."""

from __future__ import annotations

import io
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

from confluent_kafka import Producer
from fastavro import schemaless_writer

from streaming.config import Settings
from streaming.core.avro_codec import confluent_frame
from streaming.core.source_position import HEADER, encode
from streaming.serde import Registry, local_schema

RESULTS = Path(__file__).resolve().parent / "results"


def review(i: int) -> dict:
    """A realistic review: mostly empty text, skewed ratings, a few dozen courses."""
    course = i % 40
    return {
        "id": 10_000_000 + i,
        "title": None,
        "content": "" if i % 5 else f"Clear explanations, good pace. Review #{i} — très bien",
        "rating": ("5.0", "5.0", "5.0", "4.5", "5.0", "4.0", "5.0", "3.5")[i % 8],
        "created": 1_700_000_000_000 + i * 997,
        "modified": 1_700_000_000_000 + i * 997,
        "user": {"title": f"Student {i}", "name": "Student", "display_name": f"Student {i}"},
        "course": {"id": 1_000_000 + course, "title": f"Course {course}", "url": f"/c-{course}/"},
    }


def produce_reviews(settings: Settings, topic: str, n: int) -> None:
    """n distinct Avro reviews, keyed by review id, Java-compatible partitioning. Each carries
    the source-position header the fraud filter adds (review i at offset i), so the topic reads
    as the fraud filter's output."""
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    schema = local_schema("review.avsc")
    p = Producer(
        settings.kafka_config(
            **{
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 2_000_000,
                "enable.idempotence": True,
            }
        )
    )
    buf = io.BytesIO()
    for i in range(n):
        buf.seek(0)
        buf.truncate()
        r = review(i)
        schemaless_writer(buf, schema, r)
        value = confluent_frame(schema_id, buf.getvalue())
        while True:
            try:
                p.produce(topic, value, str(r["id"]).encode(), headers=[(HEADER, encode(0, i))])
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120) != 0:
        raise RuntimeError("benchmark input not fully delivered")


def write_result(name: str, figures: dict, command: str) -> Path:
    """bench/results/<name>.json with the figures, the command and the machine they came from."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(
        json.dumps(
            {
                "figures": figures,
                "command": command,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "versions": {pkg: version(pkg) for pkg in ("confluent-kafka", "fastavro", "numba")},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"figures written to {out}; reproduce with: {command}")
    return out


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
