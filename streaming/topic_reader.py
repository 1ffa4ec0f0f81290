"""A topic's committed records as of now: every partition read from a start offset to its end.

For tools that check what a topic holds (benchmarks, the chaos run), not for stream processing:
no group membership, no commits. librdkafka's partition EOF marks each end, which also covers a
transactional topic whose last offsets are commit markers rather than records.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from streaming.settings import Settings


def read_batches(
    settings: Settings,
    topic: str,
    start: Mapping[int, int] | None = None,
    timeout_s: float = 300,
) -> Iterator[list[Message]]:
    """Batches of the committed records of `topic`, each partition from `start` (default: its
    beginning) to its end. TimeoutError when the end is not reached within `timeout_s`."""
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"topic-reader-{uuid.uuid4().hex[:8]}",  # assigned, never joins
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "enable.auto.commit": False,
            }
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = start or {}
        consumer.assign(
            [TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in partitions]
        )
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to the end")
            batch = []
            for msg in consumer.consume(10_000, timeout=1):
                err = msg.error()
                if err is None:
                    batch.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise KafkaException(err)
            if batch:
                yield batch
    finally:
        consumer.close()


def read_records(
    settings: Settings,
    topic: str,
    start: Mapping[int, int] | None = None,
    timeout_s: float = 300,
) -> Iterator[Message]:
    """The records of `read_batches`, one by one."""
    for batch in read_batches(settings, topic, start, timeout_s):
        yield from batch
