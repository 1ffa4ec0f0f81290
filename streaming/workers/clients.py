"""The loop's settings (`LoopConfig`) and the two Kafka clients every stream worker runs with.

One consumer (read_committed, subscribed with the range assignor and static membership) and one
transactional producer whose id is stable per instance (`<group>-<instance>`): a restarted
instance fences its previous incarnation, and a member that lost its partitions in a rebalance
cannot commit them (offsets go with the group metadata, KIP-447). Their buffers are fixed, so a
worker's memory is its state plus a constant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, Producer

from streaming.pipeline import WorkerSpec
from streaming.settings import LoopSettings, Settings, load, worker_settings
from streaming.workers.logs import log_event
from streaming.workers.metrics import WorkerMetrics

log = logging.getLogger("eos")

MAX_PRODUCE_BYTES = 64 * 1024 * 1024
"""The producer's own record limit, above any topic's: the broker enforces each topic's
max.message.bytes, and librdkafka's default (1,000,000) is below Kafka's (1,048,588), so a record
that fits its input topic could not even be passed through or dead-lettered."""
CONSUMER_BUFFERS = {
    # prefetch: 16 MB is over a second of input at 100k records/s, and the loop takes a batch
    # every few ms; librdkafka's 64 MB default would be a third of the aggregator's memory
    "queued.max.messages.kbytes": 16_384,
    # one fetch response, all partitions, and a partition's share of it: with 16 MB and 4 MB,
    # or 8 MB and 2 MB, the aggregator ran at 65 % of its speed (measured, 1M records)
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 4_194_304,
}
"""The consumer's buffers: fixed, so a worker's memory is its state plus a constant."""
PRODUCER_BUFFERS = {
    "linger.ms": 5,  # batches fill within a commit interval (100 ms)
    "batch.size": 1_000_000,
    # a transaction holds at most commit_every_records inputs' outputs (~10 MB); the queue
    # must never refuse one mid-transaction (default: 100,000 records, 1 GB)
    "queue.buffering.max.messages": 1_000_000,
    # a transaction begun right after a commit finds the coordinator still writing the last
    # one's markers: its first AddPartitionsToTxn is answered CONCURRENT_TRANSACTIONS and
    # retried after retry.backoff.ms, librdkafka's 100 ms by default (doubling to 1 s), which
    # a busy hop's next commit then waits for. The Java client backs off 20 ms for this error
    # (KAFKA-5477); the markers take a few ms here.
    "retry.backoff.ms": 5,
    "retry.backoff.max.ms": 100,
}
"""The transactional producer's buffers and retry pace."""
Stats = Callable[[str], None]
"""A librdkafka statistics callback (the JSON every statistics.interval.ms)."""


@dataclass(frozen=True)
class LoopConfig:
    group_id: str
    instance: str = "0"
    commit_every_records: int = 20_000
    commit_interval_ms: int = 100
    commit_min_ms: int = 10
    batch_size: int = 5_000
    session_timeout_ms: int = 10_000
    snapshot_interval_s: float = 30.0

    @classmethod
    def from_env(cls, spec: WorkerSpec) -> LoopConfig:
        """`<PREFIX>_GROUP_ID` [the declared group], WORKER_INSTANCE [0], COMMIT_EVERY_RECORDS
        [20000], COMMIT_INTERVAL_MS [100], COMMIT_MIN_MS [10], SESSION_TIMEOUT_MS [10000],
        SNAPSHOT_INTERVAL_S [30] (how often changed state is snapshotted to STATE_DIR, or less
        often when a snapshot costs more than 1/20 of that; 0: never)."""
        s = load(LoopSettings)
        return cls(
            group_id=worker_settings(spec).group_id,
            instance=s.worker_instance,
            commit_every_records=s.commit_every_records,
            commit_interval_ms=s.commit_interval_ms,
            commit_min_ms=s.commit_min_ms,
            session_timeout_ms=s.session_timeout_ms,
            snapshot_interval_s=s.snapshot_interval_s,
        )

    @property
    def transactional_id(self) -> str:
        """Stable per instance: a restart fences its previous incarnation."""
        return f"{self.group_id}-{self.instance}"


def loop_consumer(settings: Settings, loop: LoopConfig, on_stats: Stats) -> Consumer:
    """The consumer of the inputs: read_committed, offsets committed only with transactions."""
    return Consumer(
        settings.kafka_config(
            **{
                "group.id": loop.group_id,
                "group.instance.id": loop.transactional_id,
                "session.timeout.ms": loop.session_timeout_ms,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # range puts partition p of co-partitioned inputs on one member: a store
                # partition needs all of them (checked on every assignment)
                "partition.assignment.strategy": "range",
                # the input may grow (partitions added to udemy-reviews): a new partition
                # is seen, assigned and read within 10 s (librdkafka's default: 5 min)
                "topic.metadata.refresh.interval.ms": 10_000,
                "statistics.interval.ms": 5000,
                "stats_cb": on_stats,
                **CONSUMER_BUFFERS,
            }
        )
    )


def loop_producer(
    settings: Settings, loop: LoopConfig, compression: str, on_stats: Stats
) -> Producer:
    """The transactional producer of the outputs, the changelogs and the dead letters."""
    return Producer(
        settings.kafka_config(
            **{
                "transactional.id": loop.transactional_id,
                "partitioner": "murmur2_random",  # same key -> same partition as Java
                **PRODUCER_BUFFERS,
                "transaction.timeout.ms": 60_000,
                "message.max.bytes": MAX_PRODUCE_BYTES,
                "compression.type": compression,
                # records sent per partition, for /metrics (parsed every 5 s: no cost)
                "statistics.interval.ms": 5000,
                "stats_cb": on_stats,
            }
        )
    )


def take(consumer: Consumer, batch: int, wait_s: float) -> list[Message]:
    """Up to `batch` records the consumer already holds, without waiting; when it holds none,
    wait up to `wait_s` for the first and take what arrived with it. `consume(n, timeout)`
    alone would wait the whole timeout for a batch that is not full, however early the first
    record came: a hop would hold each record for its poll timeout before even processing it."""
    msgs = consumer.consume(batch, timeout=0)
    if msgs or wait_s <= 0:
        return msgs
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(batch - 1, timeout=0)] if batch > 1 else [first]


def records(metrics: WorkerMetrics, msgs: list[Message]) -> list[Message]:
    """The records of a consumed batch; error events logged and counted (fatal: raised)."""
    errors = [m for m in msgs if m.error() is not None]
    if not errors:
        return msgs
    for m in errors:
        err = m.error()
        if err.fatal():  # type: ignore[union-attr]  # these are the messages with an error
            raise KafkaException(err)
        metrics.consumer_errors += 1
        log_event(log, "consumer error", logging.WARNING, error=str(err), topic=m.topic())
    return [m for m in msgs if m.error() is None]
