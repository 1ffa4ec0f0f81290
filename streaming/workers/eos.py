"""The exactly-once loop every stream worker runs, as in confluent-kafka's eos-transactions example.

consume a batch -> `process` it (produce into the open transaction) -> every N records or T ms:
send the consumed positions with the consumer's group metadata, commit, begin the next one.

Zombie fencing: the transactional id is stable per instance (`<group>-<instance>`), so a restarted
instance fences its previous incarnation; offsets go with the group metadata (KIP-447), so a
member that lost its partitions in a rebalance cannot commit them. Static membership
(`group.instance.id`) hands a restarted instance its partitions back without a rebalance.
A transaction that must abort is aborted and the consumer rewound to the committed offsets, so
nothing is lost or doubled; fatal errors (fenced) end the process for the supervisor to restart.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from streaming.config import Settings
from streaming.workers.runtime import StopFlag, WorkerMetrics, env_int, log_event

log = logging.getLogger("eos")

MAX_PRODUCE_BYTES = 8 * 1024 * 1024
"""The producer's own record limit, above any topic's: the broker enforces each topic's
max.message.bytes, and librdkafka's default (1,000,000) is below Kafka's (1,048,588), so a record
that fits its input topic could not even be passed through or dead-lettered."""
DEFAULT_TOPIC_MAX_BYTES = 1_000_000
"""Assumed max.message.bytes of a dead-letter topic whose config cannot be read."""
RECORD_SLACK_BYTES = 1024
"""Record batch and record framing around a record's key, value and headers."""


@dataclass(frozen=True)
class LoopConfig:
    group_id: str
    instance: str = "0"
    commit_every_records: int = 20_000
    commit_interval_ms: int = 100
    batch_size: int = 5_000
    session_timeout_ms: int = 10_000

    @classmethod
    def from_env(cls, group_env: str, default_group: str) -> LoopConfig:
        """WORKER_INSTANCE, COMMIT_EVERY_RECORDS, COMMIT_INTERVAL_MS, SESSION_TIMEOUT_MS, group."""
        d = cls(group_id=default_group)
        return cls(
            group_id=os.environ.get(group_env, d.group_id),
            instance=os.environ.get("WORKER_INSTANCE", d.instance),
            commit_every_records=env_int("COMMIT_EVERY_RECORDS", d.commit_every_records),
            commit_interval_ms=env_int("COMMIT_INTERVAL_MS", d.commit_interval_ms),
            session_timeout_ms=env_int("SESSION_TIMEOUT_MS", d.session_timeout_ms),
        )

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-{self.instance}"


def tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


class EosWorker(ABC):
    """Base of the stream workers: owns the consumer, the transactional producer and the loop."""

    name = "worker"

    def __init__(self, settings: Settings, loop: LoopConfig, stop: StopFlag) -> None:
        self.settings = settings
        self.loop = loop
        self.stop = stop
        self.metrics = WorkerMetrics(self.name, loop.instance)
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": loop.group_id,
                    "group.instance.id": loop.transactional_id,
                    "session.timeout.ms": loop.session_timeout_ms,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "statistics.interval.ms": 5000,
                    "stats_cb": self.metrics.on_stats,
                    "fetch.max.bytes": 52_428_800,
                    "max.partition.fetch.bytes": 4_194_304,
                }
            )
        )
        self.producer = Producer(
            settings.kafka_config(
                **{
                    "transactional.id": loop.transactional_id,
                    "partitioner": "murmur2_random",  # same key -> same partition as Java
                    "linger.ms": 5,
                    "batch.size": 1_000_000,
                    "queue.buffering.max.messages": 1_000_000,
                    "transaction.timeout.ms": 60_000,
                    "message.max.bytes": MAX_PRODUCE_BYTES,
                }
            )
        )
        self._topic_max_bytes: dict[str, int] = {}
        self.in_txn = 0
        self.txn_started = time.monotonic()

    # -- what a worker defines ---------------------------------------------------------------
    @abstractmethod
    def topics(self) -> list[str]:
        """The input topics."""

    @abstractmethod
    def process(self, msgs: list[Message]) -> None:
        """Produce the outputs of one consumed batch into the open transaction."""

    def tick(self) -> None:  # noqa: B027 - optional hook
        """Called every loop turn, inside the open transaction (e.g. time-driven output)."""

    def partitions_assigned(self, partitions: list[TopicPartition]) -> None:  # noqa: B027
        """Restore whatever state the new partitions need before their records arrive."""

    def partitions_revoked(self, partitions: list[TopicPartition]) -> None:  # noqa: B027
        """Drop the state of partitions this instance no longer owns."""

    def committed(self, positions: list[TopicPartition]) -> None:  # noqa: B027 - optional hook
        """The input positions of a transaction that just committed."""

    def transaction_aborted(self) -> None:  # noqa: B027 - optional hook
        """State changed since the last commit is void: restore it from the committed point."""

    # -- dead letters ------------------------------------------------------------------------
    def produce_dead_letter(self, topic: str, msg: Message, reason: str) -> None:
        """Send an unreadable record to `topic` in the open transaction, cut to fit the topic."""
        headers = dead_letter_headers(msg, reason, self.loop.transactional_id)
        limit = self.topic_max_bytes(topic)
        value, headers = fit_dead_letter(msg.key(), msg.value(), headers, limit)
        self.producer.produce(topic, value, msg.key(), headers=headers)

    def topic_max_bytes(self, topic: str) -> int:
        """A topic's max.message.bytes, read once (the broker refuses a larger record, which
        would abort the transaction, rewind, and fail again on every retry: a stalled worker)."""
        if topic not in self._topic_max_bytes:
            limit = DEFAULT_TOPIC_MAX_BYTES
            admin = AdminClient(self.settings.kafka_config())
            resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
            try:
                config = admin.describe_configs([resource])[resource].result(30)
                limit = int(config["max.message.bytes"].value)
            except (KafkaException, KeyError, ValueError) as exc:
                log_event(
                    log, "topic config unreadable", logging.WARNING, topic=topic, error=str(exc)
                )
            self._topic_max_bytes[topic] = limit
            self.metrics.extra["dead_letter_max_bytes"] = limit
        return self._topic_max_bytes[topic]

    # -- the loop ---------------------------------------------------------------------------
    def commit(self) -> None:
        positions = self.consumer.position(self.consumer.assignment())
        self.producer.send_offsets_to_transaction(
            positions, self.consumer.consumer_group_metadata()
        )
        self.producer.commit_transaction()
        self.metrics.transactions += 1
        self.metrics.last_commit_time = time.time()
        self.in_txn = 0
        self.producer.begin_transaction()
        self.txn_started = time.monotonic()
        self.committed(positions)

    def abort(self) -> None:
        """Abort the open transaction and rewind every partition to its committed offset."""
        self.producer.abort_transaction()
        committed = self.consumer.committed(self.consumer.assignment(), timeout=30)
        for tp in committed:
            tp.offset = tp.offset if tp.offset >= 0 else -2  # OFFSET_BEGINNING when none
            self.consumer.seek(tp)
        self.transaction_aborted()
        self.in_txn = 0
        self.producer.begin_transaction()
        self.txn_started = time.monotonic()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.restoring_since = time.monotonic()  # the health says restoring, not stalled
        try:
            self.partitions_assigned(partitions)
        finally:
            self.metrics.restoring_since = None
            self.metrics.last_loop_time = time.monotonic()
        self.metrics.assigned += [tp_name(p) for p in partitions]
        log_event(log, "assigned", partitions=[tp_name(p) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.in_txn:  # hand over exactly what was processed
            self.commit()
        self._forget(partitions)
        log_event(log, "revoked", partitions=[tp_name(p) for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already belong to another member: its commit would be fenced, abort."""
        self.producer.abort_transaction()
        self.transaction_aborted()
        self.in_txn = 0
        self.producer.begin_transaction()
        self.txn_started = time.monotonic()
        self._forget(partitions)
        log_event(log, "lost", logging.WARNING, partitions=[tp_name(p) for p in partitions])

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self.partitions_revoked(partitions)
        gone = {tp_name(p) for p in partitions}
        self.metrics.assigned = [a for a in self.metrics.assigned if a not in gone]

    def run(self) -> None:
        cfg = self.loop
        self.producer.init_transactions(60)
        self.consumer.subscribe(
            self.topics(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.producer.begin_transaction()
        interval = cfg.commit_interval_ms / 1000
        log_event(log, "started", transactional_id=cfg.transactional_id, topics=self.topics())
        while not self.stop:
            self.metrics.last_loop_time = time.monotonic()
            msgs = self.consumer.consume(cfg.batch_size, timeout=min(interval, 0.5))
            try:
                if msgs:
                    self.process(msgs)
                self.tick()
                due = time.monotonic() - self.txn_started >= interval
                if self.in_txn and (self.in_txn >= cfg.commit_every_records or due):
                    self.commit()
            except KafkaException as exc:
                err = exc.args[0]
                if err.txn_requires_abort():
                    log_event(log, "aborting transaction", logging.WARNING, error=str(err))
                    self.abort()
                elif err.retriable():
                    log_event(log, "retriable error, retrying", logging.WARNING, error=str(err))
                else:
                    raise
        if self.in_txn:
            self.commit()
        self.producer.abort_transaction()  # the empty transaction opened by the last commit
        self.consumer.close()
        log_event(log, "stopped", records_in=self.metrics.records_in)


def dead_letter_headers(msg: Message, reason: str, worker: str) -> list[tuple[str, bytes]]:
    """Why and where from: enough to find, fix and replay the record."""
    return [
        ("dlq.error", reason.encode()),
        ("dlq.source.topic", msg.topic().encode()),
        ("dlq.source.partition", str(msg.partition()).encode()),
        ("dlq.source.offset", str(msg.offset()).encode()),
        ("dlq.worker", worker.encode()),
        *(msg.headers() or []),
    ]


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The dead letter as it can be sent to a topic whose max.message.bytes is `limit`.

    Whole when it fits (the usual case: dead-letter topics are declared larger than the inputs).
    Otherwise the record's own headers (after the dlq.* ones) are dropped if they alone are too
    big, and the value is cut; `dlq.value.truncated` / `dlq.headers.dropped` give the original
    sizes, and the source coordinates still lead to the whole record.
    """

    def size(v: bytes | None, hs: list[tuple[str, bytes]]) -> int:
        framing = sum(len(k) + len(h or b"") for k, h in hs)
        return RECORD_SLACK_BYTES + len(key or b"") + len(v or b"") + framing

    if size(value, headers) <= limit:
        return value, headers
    n_own = sum(1 for k, _ in headers if k.startswith("dlq."))
    own, extra = headers[:n_own], headers[n_own:]
    if size(b"", headers) > limit // 2:
        dropped = sum(len(k) + len(h or b"") for k, h in extra)
        headers = [*own, ("dlq.headers.dropped", str(dropped).encode())]
        if size(value, headers) <= limit:
            return value, headers
    original = len(value or b"")
    headers = [*headers, ("dlq.value.truncated", str(original).encode())]
    room = max(limit - size(b"", headers), 0)
    return (value or b"")[:room], headers
