"""Stats aggregator: valid + fraud reviews -> `long-term-stats` and `recent-stats`, exactly once.

Two stages in one loop and one transaction per commit, as a Kafka Streams topology would run:

1. re-key: records of `udemy-reviews-valid` and `udemy-reviews-fraud` (key: review id) are reduced
   to what the statistics need (id, course, created, modified, rating, the verdict given by the
   topic) and written to the internal repartition topic keyed by course id. The fraud topic is
   read too, so an edit that flips a review to fraud retracts it.
2. aggregate: records of the repartition topic update the state of their partition
   (`streaming.core.aggregation.PartitionState`); each changed review's current version goes to
   the compacted changelog topic (same partition number), and each changed course gets a new
   `long-term-stats` and `recent-stats` record (once per batch, not once per review).
   Consumed repartition records are deleted after their transaction committed.

Outputs, changelog writes and the input offsets of both stages commit in one transaction, so the
state restored from the changelog on start or rebalance is exactly the state at the committed
offsets. The recent window follows the injectable clock: when the UTC day changes every course's
recent record is re-emitted (the window moved), without scanning reviews.

A review's course is taken to be fixed (Udemy reviews do not move between courses): state is
partitioned by course, so a version naming another course is counted where it lands.

Environment (defaults): KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, WORKER_INSTANCE [0],
AGGREGATOR_GROUP_ID [stats-aggregator], STATS_VALID_TOPIC [udemy-reviews-valid],
STATS_FRAUD_TOPIC [udemy-reviews-fraud], STATS_LONG_TERM_TOPIC [long-term-stats],
STATS_RECENT_TOPIC [recent-stats], STATS_REPARTITION_TOPIC [stats-aggregator-repartition],
STATS_CHANGELOG_TOPIC [stats-aggregator-changelog], DEAD_LETTER_TOPIC [reviews-dead-letter],
COMMIT_EVERY_RECORDS, COMMIT_INTERVAL_MS, SESSION_TIMEOUT_MS, HEALTH_PORT [8092],
REPARTITION_PURGE_S [30] (how often consumed repartition records are deleted).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_writer

from streaming.config import Settings
from streaming.core.aggregation import PartitionState, pack_version
from streaming.core.avro_codec import confluent_frame
from streaming.core.ratings import rating_halves
from streaming.core.review_bytes import extract_fields
from streaming.core.review_frames import frame_batch
from streaming.core.review_mapping import NUL_REASON
from streaming.core.stats import ReviewVersion
from streaming.core.window import epoch_day
from streaming.serde import Registry, RegistryUnavailable, ReviewWriters, local_schema
from streaming.workers.eos import EosWorker, LoopConfig
from streaming.workers.runtime import StopFlag, env_int, log_event, serve

log = logging.getLogger("stats_aggregator")
Clock = Callable[[], float]  # seconds since the epoch, like time.time
RESTORE_TIMEOUT_S = 600
PURGE_INTERVAL_S = 30


@dataclass(frozen=True)
class AggregatorTopics:
    valid: str = "udemy-reviews-valid"
    fraud: str = "udemy-reviews-fraud"
    long_term: str = "long-term-stats"
    recent: str = "recent-stats"
    repartition: str = "stats-aggregator-repartition"
    changelog: str = "stats-aggregator-changelog"
    dead_letter: str = "reviews-dead-letter"

    @classmethod
    def from_env(cls) -> AggregatorTopics:
        e, d = os.environ, cls()
        return cls(
            valid=e.get("STATS_VALID_TOPIC", d.valid),
            fraud=e.get("STATS_FRAUD_TOPIC", d.fraud),
            long_term=e.get("STATS_LONG_TERM_TOPIC", d.long_term),
            recent=e.get("STATS_RECENT_TOPIC", d.recent),
            repartition=e.get("STATS_REPARTITION_TOPIC", d.repartition),
            changelog=e.get("STATS_CHANGELOG_TOPIC", d.changelog),
            dead_letter=e.get("DEAD_LETTER_TOPIC", d.dead_letter),
        )


class StatsAggregator(EosWorker):
    name = "stats-aggregator"

    def __init__(
        self,
        settings: Settings,
        loop: LoopConfig,
        topics: AggregatorTopics,
        stop: StopFlag,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(settings, loop, stop)
        self.t = topics
        self.clock = clock
        self.review_schema = local_schema("review.avsc")
        self.stat_schema = local_schema("course_statistic.avsc")
        self.registry = Registry(settings.schema_registry_url)
        self.resolve = ReviewWriters(self.registry)
        self.stat_schema_ids = {
            topic: self.registry.register(f"{topic}-value", "course_statistic.avsc")
            for topic in (topics.long_term, topics.recent)
        }
        self.states: dict[int, PartitionState] = {}
        self.admin = AdminClient(settings.kafka_config())
        self._last_purge = time.monotonic()
        self.purge_interval_s = env_int("REPARTITION_PURGE_S", PURGE_INTERVAL_S)
        self.as_of_day = epoch_day(int(clock() * 1000))
        self.metrics.extra["as_of_day"] = self.as_of_day

    def topics(self) -> list[str]:
        return [self.t.valid, self.t.fraud, self.t.repartition]

    # -- stage 1: re-key by course ---------------------------------------------------------
    def rekey(self, msgs: list[Message]) -> None:
        batch = frame_batch([m.value() for m in msgs], self.resolve, self.review_schema)
        dead = batch.reasons
        longs, spans, _ = extract_fields(batch.buf, batch.body_starts, batch.ends)
        raw = batch.buf.tobytes()
        produce = self.producer.produce
        rekeyed = 0
        for i in np.flatnonzero(batch.readable).tolist():
            review_id, created, modified, course_id, halves = longs[i].tolist()
            r0, r1, t0, t1 = spans[i].tolist()
            if raw.find(b"\x00", t0, t1) >= 0:  # the stats sink would fail on it, every retry
                dead[i] = f"course.title: {NUL_REASON}"
                continue
            if halves < 0:
                try:
                    halves = rating_halves(raw[r0:r1].decode("utf-8", "strict"))
                except ValueError as exc:
                    dead[i] = f"rating: {exc}"
                    continue
            valid = msgs[i].topic() == self.t.valid
            version = ReviewVersion(modified, created, halves, valid, course_id)
            produce(
                self.t.repartition,
                pack_version(review_id, version, raw[t0:t1]),
                str(course_id).encode(),
            )
            rekeyed += 1
        self.metrics.records_out[self.t.repartition] += rekeyed
        self._dead_letters(msgs, sorted(dead.items()))

    # -- stage 2: aggregate ----------------------------------------------------------------
    def aggregate(self, msgs: list[Message]) -> None:
        by_partition: dict[int, list[Message]] = {}
        for m in msgs:
            by_partition.setdefault(m.partition(), []).append(m)
        now_ms = int(self.clock() * 1000)
        for partition, batch in by_partition.items():
            state = self.states[partition]
            changed, changelog, errors = state.apply([m.value() for m in batch])
            produce = self.producer.produce
            for review_id, data in changelog.items():
                produce(self.t.changelog, data, str(review_id).encode(), partition=partition)
            self._emit(state, changed, now_ms)
            self._dead_letters(batch, list(errors.items()))
        self.metrics.extra["versions_aggregated"] = self.metrics.extra.get(
            "versions_aggregated", 0
        ) + len(msgs)

    def _emit(self, state: PartitionState, courses: set[int] | list[int], now_ms: int) -> None:
        produce = self.producer.produce
        buf = io.BytesIO()
        for course_id in courses:
            key = str(course_id).encode()
            for topic, record in zip(
                (self.t.long_term, self.t.recent), state.statistics(course_id, now_ms), strict=True
            ):
                buf.seek(0)
                buf.truncate()
                schemaless_writer(buf, self.stat_schema, record)
                produce(topic, confluent_frame(self.stat_schema_ids[topic], buf.getvalue()), key)
                self.metrics.records_out[topic] += 1

    def _dead_letters(self, msgs: list[Message], dead: list[tuple[int, str]]) -> None:
        for i, reason in dead:
            m = msgs[i]
            self.produce_dead_letter(self.t.dead_letter, m, reason)
            log_event(
                log,
                "dead letter",
                logging.WARNING,
                reason=reason,
                topic=m.topic(),
                partition=m.partition(),
                offset=m.offset(),
            )
        self.metrics.dead_letters += len(dead)

    def process(self, msgs: list[Message]) -> None:
        inputs = [m for m in msgs if m.topic() != self.t.repartition]
        internal = [m for m in msgs if m.topic() == self.t.repartition]
        if inputs:
            self.rekey(inputs)
        if internal:
            self.aggregate(internal)
        self.metrics.records_in += len(inputs)
        self.in_txn += len(msgs)

    def tick(self) -> None:
        """When the UTC day changes, move every window and re-emit every recent record."""
        now_ms = int(self.clock() * 1000)
        day = epoch_day(now_ms)
        if day == self.as_of_day:
            return
        self.as_of_day = day
        self.metrics.extra["as_of_day"] = day
        for state in self.states.values():
            self._emit_recent(state, state.advance(day), now_ms)
        log_event(log, "window moved", as_of_day=day)

    def _emit_recent(self, state: PartitionState, courses: list[int], now_ms: int) -> None:
        buf = io.BytesIO()
        for course_id in courses:
            buf.seek(0)
            buf.truncate()
            schemaless_writer(buf, self.stat_schema, state.statistics(course_id, now_ms)[1])
            value = confluent_frame(self.stat_schema_ids[self.t.recent], buf.getvalue())
            self.producer.produce(self.t.recent, value, str(course_id).encode())
            self.metrics.records_out[self.t.recent] += 1
        self.in_txn += len(courses)

    def committed(self, positions: list[TopicPartition]) -> None:
        """Purge repartition records below committed offsets, as Kafka Streams does: they are
        consumed and their effect is in the changelog, so the internal topic stays small."""
        now = time.monotonic()
        if now - self._last_purge < self.purge_interval_s:
            return
        self._last_purge = now
        done = [
            TopicPartition(tp.topic, tp.partition, tp.offset)
            for tp in positions
            if tp.topic == self.t.repartition and tp.offset > 0
        ]
        if done:
            for tp, fut in self.admin.delete_records(done).items():
                try:
                    fut.result(10)
                except KafkaException as exc:  # a later purge covers it; never fail the loop
                    log_event(
                        log, "purge failed", logging.WARNING, partition=tp.partition, error=str(exc)
                    )

    # -- state: restore on assignment, drop on revocation ----------------------------------
    def partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        """Restore each new state partition, then re-emit its recent records: the window may
        have moved while no instance owned it (a restart across midnight)."""
        now_ms = int(self.clock() * 1000)
        for tp in partitions:
            if tp.topic == self.t.repartition and tp.partition not in self.states:
                state = self.states[tp.partition] = self._restore(tp.partition)
                self._emit_recent(state, list(state.aggregates.courses), now_ms)

    def partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.t.repartition:
                self.states.pop(tp.partition, None)

    def transaction_aborted(self) -> None:
        """State may hold uncommitted changes: rebuild every partition from its changelog."""
        for partition in list(self.states):
            self.states[partition] = self._restore(partition)

    def _restore(self, partition: int) -> PartitionState:
        """Read the changelog partition up to its end (committed records only) into state."""
        t0 = time.monotonic()
        state = PartitionState(self.as_of_day)
        reader = Consumer(
            self.settings.kafka_config(
                **{
                    "group.id": f"{self.loop.group_id}-restore-{uuid.uuid4().hex[:8]}",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        try:
            low, high = reader.get_watermark_offsets(
                TopicPartition(self.t.changelog, partition), timeout=30
            )
            reader.assign([TopicPartition(self.t.changelog, partition, low)])
            restored = unreadable = 0
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            while high > low:
                msgs = reader.consume(10_000, timeout=1.0)
                unreadable += state.restore(m.value() for m in msgs if m.error() is None)
                restored += len(msgs)
                (pos,) = reader.position([TopicPartition(self.t.changelog, partition)])
                if pos.offset >= high:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"restoring {self.t.changelog}[{partition}] took over "
                        f"{RESTORE_TIMEOUT_S}s (at offset {pos.offset} of {high})"
                    )
        finally:
            reader.close()
        log_event(
            log,
            "state restored",
            partition=partition,
            records=restored,
            unreadable=unreadable,
            reviews=len(state.reviews),
            courses=len(state.aggregates.courses),
            seconds=round(time.monotonic() - t0, 2),
        )
        return state


def main() -> int:
    settings = Settings.from_env()
    try:  # registers the statistics schemas: needs the registry
        worker = StatsAggregator(
            settings,
            LoopConfig.from_env("AGGREGATOR_GROUP_ID", "stats-aggregator"),
            AggregatorTopics.from_env(),
            StopFlag(),
        )
    except RegistryUnavailable as exc:
        print(f"stats-aggregator: {exc}", file=sys.stderr)
        return 1
    return serve(worker, env_int("HEALTH_PORT", 8092))


if __name__ == "__main__":
    sys.exit(main())
