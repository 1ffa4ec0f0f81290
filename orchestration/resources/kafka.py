"""Kafka admin reads the orchestrator needs (end offsets, group offsets, gap probes)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import dagster as dg
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from streaming.refused import Headers
from streaming.settings import Settings
from streaming.topic_reader import read_records

Offsets = dict[tuple[str, int], int]
"""(topic, partition) -> offset."""

NO_OFFSET = -1
"""What `committed_offsets` reports for a partition the group never committed."""


class KafkaResource(dg.ConfigurableResource):
    """Kafka admin reads the orchestrator needs: end offsets, group offsets, gap probes.

    Extra librdkafka settings (SASL/TLS) come from KAFKA_SECURITY_CONFIG at use time, as for
    every service of the pipeline, so secrets never appear in Dagster's run config.
    """

    bootstrap_servers: str
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaResource:
        """At the deployment's brokers (KAFKA_BOOTSTRAP_SERVERS)."""
        return cls(bootstrap_servers=settings.kafka_bootstrap_servers)

    def settings(self, schema_registry_url: str) -> Settings:
        """The `streaming` settings for code that takes them (the backfill producer)."""
        return Settings.from_env().replace(
            kafka_bootstrap_servers=self.bootstrap_servers, schema_registry_url=schema_registry_url
        )

    def config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings: bootstrap servers, security extras, then overrides."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **Settings.from_env().kafka_extra,
            **overrides,
        }

    def admin(self) -> AdminClient:
        return AdminClient(self.config())

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        metadata = self.admin().list_topics(timeout=self.timeout_s).topics
        out = []
        for topic in topics:
            if topic not in metadata:
                raise LookupError(f"topic {topic!r} does not exist")
            out += [TopicPartition(topic, p) for p in sorted(metadata[topic].partitions)]
        return out

    def end_offsets(self, topics: Iterable[str]) -> Offsets:
        """Last stable offsets: what a read_committed consumer can reach now."""
        admin = self.admin()  # referenced until the futures resolve (its thread serves them)
        request = {tp: OffsetSpec.latest() for tp in self.partitions(topics)}
        futures = admin.list_offsets(
            request,
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self.timeout_s,
        )
        return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}

    def committed_offsets(self, group_id: str, topics: Iterable[str]) -> Offsets:
        """The group's committed offsets (NO_OFFSET where it has none, or no such group)."""
        partitions = self.partitions(topics)
        request = [ConsumerGroupTopicPartitions(group_id, partitions)]
        admin = self.admin()  # referenced until the future resolves (its thread serves it)
        futures = admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)
        result = futures[group_id].result()
        return {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else NO_OFFSET
            for tp in result.topic_partitions
        }

    def newest_timestamp(self, topic: str) -> float | None:
        """Epoch seconds of the newest record of `topic` (its Kafka timestamp), None when it
        has none: each partition read from just before its end (a transaction's marker takes
        the last offset, so two back) to the end."""
        ends = self.end_offsets([topic])
        live = {p: end for (_, p), end in ends.items() if end > 0}
        if not live:
            return None
        consumer = self._probe_consumer()
        newest: float | None = None
        try:
            consumer.assign([TopicPartition(topic, p, max(end - 2, 0)) for p, end in live.items()])
            pending, deadline = set(live), time.monotonic() + self.timeout_s
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                if error is None:
                    stamp = msg.timestamp()[1] / 1000
                    newest = stamp if newest is None else max(newest, stamp)
                if error is not None or msg.offset() >= live[msg.partition()] - 1:  # type: ignore[operator, index]  # a consumed record's is set
                    pending.discard(msg.partition())  # type: ignore[arg-type]  # ... or an EOF event's
            if pending:
                raise TimeoutError(f"no answer reading the end of {topic} {sorted(pending)}")
            return newest
        finally:
            consumer.close()

    def records(self, topic: str) -> Iterator[tuple[Headers, bytes | None]]:
        """(headers, value) of every committed record of `topic` now (dead letters, to count
        refusals): each partition from its beginning to its end."""
        settings = self.settings(schema_registry_url="")
        for msg in read_records(settings, topic, timeout_s=self.timeout_s * 10):
            yield msg.headers(), msg.value()  # type: ignore[misc]  # a consumed record's headers: a list

    def _probe_consumer(self) -> Consumer:
        """A read_committed consumer of its own group that commits nothing: for reads at
        chosen offsets that must not disturb any group."""
        return Consumer(
            self.config(
                **{
                    "group.id": f"orchestration-probe-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                }
            )
        )

    def has_records(self, topic: str, partition: int, start: int, end: int) -> bool:
        """Whether a read_committed consumer finds a record at an offset in [start, end).

        A group that read everything of a transactional topic may have committed below the end
        offset: transaction markers take offsets but are never delivered (Connect commits the
        last record's offset + 1). Reading the gap tells markers from unread records.
        """
        if start >= end:
            return False
        consumer = self._probe_consumer()
        try:
            consumer.assign([TopicPartition(topic, partition, max(start, 0))])
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                error = msg.error()
                if error is None:
                    return msg.offset() < end  # type: ignore[operator]  # a consumed record's is set
                if error.code() == KafkaError._PARTITION_EOF:
                    return False
                raise KafkaException(error)
            raise TimeoutError(f"no answer reading {topic}[{partition}] from offset {start}")
        finally:
            consumer.close()
