"""Fraud filter: `udemy-reviews` -> `udemy-reviews-valid` | `udemy-reviews-fraud`, exactly once.

One loop, as in confluent-kafka-python's eos-transactions example: consume a batch, route it
with a pure function (`streaming.core.fraud_routing.route`), produce every record unchanged (same
key, value bytes, headers, timestamp) to its topic, and commit the input offsets in the same
transaction. A transaction closes every `COMMIT_EVERY_RECORDS` records or `COMMIT_INTERVAL_MS`,
whichever comes first. Unreadable records go to the dead-letter topic in the same transaction,
with the reason and their source coordinates in headers; the loop goes on.

Zombie fencing: the transactional id is stable per instance (`fraud-filter-<WORKER_INSTANCE>`),
so a restarted instance fences its previous incarnation; offsets are sent with the consumer's
group metadata (KIP-447), so a member that lost its partitions in a rebalance cannot commit them.

Environment (defaults): KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL (see streaming.config),
WORKER_INSTANCE [0], FRAUD_GROUP_ID [fraud-filter], FRAUD_INPUT_TOPIC [udemy-reviews],
FRAUD_VALID_TOPIC [udemy-reviews-valid], FRAUD_FRAUD_TOPIC [udemy-reviews-fraud],
DEAD_LETTER_TOPIC [reviews-dead-letter], COMMIT_EVERY_RECORDS [20000], COMMIT_INTERVAL_MS [100],
HEALTH_PORT [8091; 0 picks a free port], SESSION_TIMEOUT_MS [10000], FRAUD_MODEL [the hash rule].
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streaming.config import Settings
from streaming.core.fraud import FRAUD_MODEL_ENV, FraudModel, load_model
from streaming.core.fraud_routing import DEAD, FRAUD, Writer, route, schema_ids, writer_for
from streaming.serde import Registry, UnknownSchemaError, local_schema
from streaming.workers.runtime import (
    HealthServer,
    StopFlag,
    WorkerMetrics,
    env_int,
    log_event,
    setup_logging,
)

log = logging.getLogger("fraud_filter")


@dataclass(frozen=True)
class FraudFilterConfig:
    instance: str = "0"
    group_id: str = "fraud-filter"
    input_topic: str = "udemy-reviews"
    valid_topic: str = "udemy-reviews-valid"
    fraud_topic: str = "udemy-reviews-fraud"
    dead_letter_topic: str = "reviews-dead-letter"
    commit_every_records: int = 20_000
    commit_interval_ms: int = 100
    health_port: int = 8091
    batch_size: int = 5_000
    session_timeout_ms: int = 10_000

    @classmethod
    def from_env(cls) -> FraudFilterConfig:
        e = os.environ
        d = cls()
        return cls(
            instance=e.get("WORKER_INSTANCE", d.instance),
            group_id=e.get("FRAUD_GROUP_ID", d.group_id),
            input_topic=e.get("FRAUD_INPUT_TOPIC", d.input_topic),
            valid_topic=e.get("FRAUD_VALID_TOPIC", d.valid_topic),
            fraud_topic=e.get("FRAUD_FRAUD_TOPIC", d.fraud_topic),
            dead_letter_topic=e.get("DEAD_LETTER_TOPIC", d.dead_letter_topic),
            commit_every_records=env_int("COMMIT_EVERY_RECORDS", d.commit_every_records),
            commit_interval_ms=env_int("COMMIT_INTERVAL_MS", d.commit_interval_ms),
            health_port=env_int("HEALTH_PORT", d.health_port),
            session_timeout_ms=env_int("SESSION_TIMEOUT_MS", d.session_timeout_ms),
        )

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-{self.instance}"


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


class FraudFilter:
    def __init__(
        self, settings: Settings, config: FraudFilterConfig, model: FraudModel, stop: StopFlag
    ) -> None:
        self.settings = settings
        self.config = config
        self.model = model
        self.stop = stop
        self.review_schema = local_schema("review.avsc")
        self.registry = Registry(settings.schema_registry_url)
        self.writers: dict[int, Writer | None] = {}
        self.metrics = WorkerMetrics("fraud-filter", config.instance)
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": config.group_id,
                    # static membership: a restarted instance gets its partitions back at once
                    # instead of the group waiting out the dead member's session
                    "group.instance.id": config.transactional_id,
                    "session.timeout.ms": config.session_timeout_ms,
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
                    "transactional.id": config.transactional_id,
                    "partitioner": "murmur2_random",  # same key -> same partition as Java
                    "linger.ms": 5,
                    "batch.size": 1_000_000,
                    "queue.buffering.max.messages": 1_000_000,
                    "transaction.timeout.ms": 60_000,
                }
            )
        )
        self.in_txn = 0
        self.txn_started = time.monotonic()

    # -- edges: registry lookups, Kafka I/O ------------------------------------------------
    def resolve_writers(self, values: list[bytes | None]) -> None:
        for sid in schema_ids(values) - self.writers.keys():
            try:
                self.writers[sid] = writer_for(
                    self.registry.writer_schema(sid).parsed, self.review_schema
                )
            except UnknownSchemaError:
                self.writers[sid] = None

    def process(self, msgs: list[Message]) -> None:
        """Route and produce one consumed batch into the open transaction."""
        values = []
        for msg in msgs:
            err = msg.error()
            if err is not None and not err.retriable():
                raise KafkaException(err)
            values.append(msg.value())
        self.resolve_writers(values)
        codes, reasons = route(values, self.writers, self.model, self.review_schema)
        produce = self.producer.produce
        topics = (self.config.valid_topic, self.config.fraud_topic)
        for msg, code in zip(msgs, codes.tolist(), strict=True):
            if code == DEAD:
                continue
            produce(
                topics[code],
                msg.value(),
                msg.key(),
                headers=msg.headers(),
                timestamp=msg.timestamp()[1],
            )
        out = self.metrics.records_out
        n_fraud = int((codes == FRAUD).sum())
        out[self.config.fraud_topic] += n_fraud
        out[self.config.valid_topic] += len(msgs) - n_fraud - len(reasons)
        for i, reason in reasons.items():
            msg = msgs[i]
            produce(
                self.config.dead_letter_topic,
                msg.value(),
                msg.key(),
                headers=dead_letter_headers(msg, reason, self.config.transactional_id),
            )
            log_event(
                log,
                "dead letter",
                logging.WARNING,
                reason=reason,
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
            )
        self.metrics.dead_letters += len(reasons)
        self.metrics.records_in += len(msgs)
        self.in_txn += len(msgs)

    def commit(self) -> None:
        """Send the consumed positions with the group metadata, commit, open the next one."""
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

    def rewind(self) -> None:
        """After an abort: go back to the last committed offsets of every assigned partition."""
        committed = self.consumer.committed(self.consumer.assignment(), timeout=30)
        for tp in committed:
            tp.offset = tp.offset if tp.offset >= 0 else -2  # OFFSET_BEGINNING when none
            self.consumer.seek(tp)
        self.in_txn = 0

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.assigned += [f"{p.topic}[{p.partition}]" for p in partitions]
        log_event(log, "assigned", partitions=self.metrics.assigned)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {f"{p.topic}[{p.partition}]" for p in partitions}
        self.metrics.assigned = [a for a in self.metrics.assigned if a not in gone]

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was processed for these partitions before another member takes them."""
        if self.in_txn:
            self.commit()
        self._forget(partitions)
        log_event(log, "revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already belong to another member: its commit would be fenced, abort."""
        self.producer.abort_transaction()
        self.producer.begin_transaction()
        self.txn_started = time.monotonic()
        self.in_txn = 0
        log_event(
            log,
            "lost",
            logging.WARNING,
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
        )

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.config
        self.producer.init_transactions(60)
        self.consumer.subscribe(
            [cfg.input_topic],
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_lost,
        )
        self.producer.begin_transaction()
        interval = cfg.commit_interval_ms / 1000
        log_event(log, "started", transactional_id=cfg.transactional_id, input=cfg.input_topic)
        while not self.stop:
            self.metrics.last_loop_time = time.monotonic()
            msgs = self.consumer.consume(cfg.batch_size, timeout=min(interval, 0.5))
            try:
                if msgs:
                    self.process(msgs)
                due = time.monotonic() - self.txn_started >= interval
                if self.in_txn and (self.in_txn >= cfg.commit_every_records or due):
                    self.commit()
            except KafkaException as exc:
                err = exc.args[0]
                if err.txn_requires_abort():
                    log_event(log, "aborting transaction", logging.WARNING, error=str(err))
                    self.producer.abort_transaction()
                    self.rewind()
                    self.producer.begin_transaction()
                    self.txn_started = time.monotonic()
                elif err.retriable():
                    log_event(log, "retriable error, retrying", logging.WARNING, error=str(err))
                else:
                    raise
        if self.in_txn:
            self.commit()
        self.producer.abort_transaction()  # the empty transaction opened by the last commit
        self.consumer.close()
        log_event(log, "stopped", records_in=self.metrics.records_in)


def main() -> int:
    setup_logging()
    settings = Settings.from_env()
    config = FraudFilterConfig.from_env()
    try:
        model = load_model(os.environ.get(FRAUD_MODEL_ENV))
    except ValueError as exc:
        print(f"fraud-filter: {exc}", file=sys.stderr)
        return 2
    stop = StopFlag()
    worker = FraudFilter(settings, config, model, stop)
    health = HealthServer(worker.metrics, config.health_port).start()
    log_event(log, "health endpoint", url=f"http://127.0.0.1:{health.port}/health")
    try:
        worker.run()
    except KafkaException as exc:
        err = exc.args[0]
        code = err.code()
        fenced = code in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
        log_event(
            log,
            "fatal Kafka error, exiting for the supervisor to restart",
            logging.ERROR,
            error=str(err),
            fenced=fenced,
        )
        return 1
    finally:
        health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
