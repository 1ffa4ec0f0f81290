"""The one way reviews are written to `udemy-reviews`: Avro via the registry, keyed by review id.

Idempotent producer with acks=all (no duplicates from retries, nothing acknowledged before every
in-sync replica has it) and Kafka's key hashing (`murmur2_random`), so a review id lands on the
partition a Java producer would pick.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from fastavro import schemaless_writer

from streaming.core.avro_codec import confluent_frame
from streaming.pipeline import INPUT
from streaming.serde import Registry, local_schema
from streaming.settings import Settings

REVIEWS_TOPIC = INPUT.name
DeliveryCallback = Callable[[KafkaError | None, Message], None]


class ReviewProducer:
    def __init__(self, settings: Settings, topic: str = REVIEWS_TOPIC, **overrides: Any) -> None:
        self.topic = topic
        self.schema = local_schema("review.avsc")
        registry = Registry(settings.schema_registry_url)
        self.schema_id = registry.register(f"{topic}-value", "review.avsc")
        config: dict[str, Any] = {
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 10,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "lz4",
            **overrides,
        }
        self.producer = Producer(settings.kafka_config(**config))
        self._buf = io.BytesIO()

    def encode(self, review: dict[str, Any]) -> bytes:
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        schemaless_writer(buf, self.schema, review)
        return confluent_frame(self.schema_id, buf.getvalue())

    def produce(self, review: dict[str, Any], on_delivery: DeliveryCallback | None = None) -> None:
        """Queue one review (BufferError when the local queue is full: poll and retry)."""
        self.producer.produce(
            self.topic, self.encode(review), str(review["id"]).encode(), on_delivery=on_delivery
        )

    def produce_raw(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        self.producer.produce(topic, value, key, headers=headers)  # type: ignore[arg-type]  # invariant list (stub)

    def poll(self, timeout: float = 0) -> int:
        return self.producer.poll(timeout)

    def flush(self, timeout: float = 60) -> int:
        """Wait for every queued record's acknowledgement; returns how many are still pending."""
        return self.producer.flush(timeout)
