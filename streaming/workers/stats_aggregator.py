"""Stats aggregator: valid + fraud reviews -> `long-term-stats` and `recent-stats`, exactly once.

Two stages in one loop and one transaction per commit, as a Kafka Streams topology
`table(reviews).groupBy(course).aggregate(adder, subtractor)` would run (declared in
`streaming.pipeline.AGGREGATOR`):

1. current versions (state keyed by review id, co-partitioned with the valid and fraud topics,
   which the fraud filter keys by the review id): each record
   of `udemy-reviews-valid` / `-fraud` (the verdict is the topic) is ordered by (modified, its
   position in `udemy-reviews`, carried by the fraud filter's header), so the later record of
   the system of record wins whatever topic or interleaving it arrived in. A superseding version
   emits changes re-keyed by course to the internal changes topic: a retraction to the old
   course, an addition to the new one. Edits, verdict flips and moves between courses are one
   mechanism (`streaming.core.aggregation.VersionsState`).
2. course statistics (state keyed by course id): changes update the courses of their partition
   (`CourseState`); each changed course gets one `long-term-stats` and one `recent-stats` record
   per batch. Consumed change records are deleted once their transaction committed.

Both stages write their state changes to their changelogs in the same transaction as the outputs
and the input offsets of both stages, so state restored from a changelog is exactly the state at
the committed offsets. The recent window follows the injectable clock: when the UTC day changes,
and after any restore (a start, a rebalance, an aborted transaction), every recent record of the
partition is re-emitted inside a transaction; an abort restores and so re-emits again, so no
window is left behind.

Environment (defaults): KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, WORKER_INSTANCE [0],
AGGREGATOR_GROUP_ID [stats-aggregator], AGGREGATOR_<PORT>_TOPIC for each declared port,
COMMIT_EVERY_RECORDS, COMMIT_INTERVAL_MS, SESSION_TIMEOUT_MS, HEALTH_PORT [the declared port +
instance], REPARTITION_PURGE_S [30] (how often consumed change records are deleted).
"""

from __future__ import annotations

import functools
import io
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message, TopicPartition
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_writer

from streaming.core import review_bytes
from streaming.core.aggregation import CourseState, VersionChanges, VersionsState, read_versions
from streaming.core.avro_codec import confluent_frame
from streaming.core.stage_kernels import VERSION_SIZE, VersionColumn
from streaming.core.validity import Problem
from streaming.core.window import epoch_day
from streaming.pipeline import AGGREGATOR
from streaming.serde import Registry, ReviewWriters, local_schema
from streaming.settings import LoopSettings, Settings, clock_from_env, load
from streaming.workers.clients import LoopConfig
from streaming.workers.eos import EosWorker
from streaming.workers.logs import log_event
from streaming.workers.metrics import StageFigures
from streaming.workers.process import StopFlag, run_worker, until_reachable
from streaming.workers.state import ChangelogStore

log = logging.getLogger("stats_aggregator")
Clock = Callable[[], float]  # seconds since the epoch, like time.time


@dataclass(frozen=True)
class AggregatorTopics:
    valid: str
    fraud: str
    changes: str
    long_term: str
    recent: str
    versions_changelog: str
    courses_changelog: str
    dead_letter: str

    @classmethod
    def from_env(cls) -> AggregatorTopics:
        return cls(**AGGREGATOR.topics())


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
        self.topics = topics
        self.clock = clock
        self.versions: ChangelogStore[VersionsState] = ChangelogStore(
            "review-versions",
            topics.versions_changelog,
            (topics.valid, topics.fraud),
            VersionsState,
            VersionsState.from_snapshot,
        )
        self.courses: ChangelogStore[CourseState] = ChangelogStore(
            "course-stats",
            topics.courses_changelog,
            (topics.changes,),
            self._new_course_state,
            self._load_course_state,
        )
        super().__init__(
            settings,
            loop,
            stop,
            [topics.valid, topics.fraud, topics.changes],
            topics.dead_letter,
            [self.versions, self.courses],
            internal_inputs=frozenset({topics.changes}),  # a lost change: a course inexact
        )
        self.review_schema = local_schema("review.avsc")
        self.stat_schema = local_schema("course_statistic.avsc")
        self.registry = Registry(settings.schema_registry_url)
        self.resolve = ReviewWriters(self.registry)
        self.stat_schema_ids = register_statistics(self.registry, topics)
        self.unpublished: set[int] = set()
        """Course partitions whose every recent record must be (re-)emitted: restored, or the
        window moved."""
        self._course_keys: dict[int, bytes] = {}
        self.admin = AdminClient(settings.kafka_config())
        self._last_purge = time.monotonic()
        self.purge_interval_s = load(LoopSettings).repartition_purge_s
        self.figures = self.metrics.stage = StageFigures(as_of_day=self.today())

    def today(self) -> int:
        return epoch_day(int(self.clock() * 1000))

    def _new_course_state(self) -> CourseState:
        return CourseState(self.today())

    def _load_course_state(self, snapshot: bytes) -> CourseState:
        return CourseState.from_snapshot(snapshot, self.today())

    def process(self, msgs: list[Message]) -> None:
        inputs: list[Message] = []
        changes: list[Message] = []
        changes_topic = self.topics.changes
        for m in msgs:
            (changes if m.topic() == changes_topic else inputs).append(m)
        if inputs:
            self.current_versions(inputs)
        if changes:
            self.course_statistics(changes)

    # -- stage 1: current versions, changes re-keyed by course -----------------------------
    def current_versions(self, msgs: list[Message]) -> None:
        """Read the batch as versions at once (`aggregation.read_versions`: the validity
        rule's checks, the fields, the source positions), then apply each partition's versions
        with one compiled call (`VersionsState.apply_batch`); Python is left with the produce
        calls. Records refused go to dead letters."""
        valid_topic = self.topics.valid
        incoming = read_versions(
            [m.value() for m in msgs],
            [m.headers() for m in msgs],  # type: ignore[misc]  # a consumed record's are a list
            [m.topic() == valid_topic for m in msgs],
            self.resolve,
            self.review_schema,
        )
        partitions = np.fromiter((m.partition() for m in msgs), np.int64, len(msgs))
        columns, use, titles = incoming.columns, incoming.use, incoming.titles
        for partition in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == partition)
            out = self.versions[partition].apply_batch(
                columns[rows], use[rows], incoming.buf, titles[rows]
            )
            self._produce_changes(out)
            # keyed by the review id itself: a compacted changelog needs a key, and the id is
            # the review's identity whatever key its record travelled with
            reviews = columns[rows[out.sources], VersionColumn.REVIEW].tolist()
            keys = [b"%d" % rid for rid in reviews]
            self.versions.write_all(self.producer, partition, keys, out.versions, VERSION_SIZE)
        self._dead_letters(msgs, sorted(incoming.problems.items()))

    def _produce_changes(self, out: VersionChanges) -> None:
        produce = self.producer.produce
        topic, keys, blob = self.topics.changes, self._course_keys, out.changes
        start = 0
        for end, course in zip(out.ends, out.courses, strict=True):
            key = keys.get(course)
            if key is None:
                key = keys[course] = str(course).encode()
            produce(topic, blob[start:end], key)
            start = end
        self.metrics.records_out[topic] += len(out.ends)
        self.figures.changes_out += len(out.ends)

    # -- stage 2: course statistics --------------------------------------------------------
    def course_statistics(self, msgs: list[Message]) -> None:
        by_partition: dict[int, list[Message]] = {}
        for m in msgs:
            by_partition.setdefault(m.partition(), []).append(m)  # type: ignore[arg-type]  # a consumed record's is set
        now_ms = int(self.clock() * 1000)
        for partition, batch in by_partition.items():
            state = self.courses[partition]
            course_ids, values, bad = course_keys(batch)
            update = state.apply_batch(course_ids, values)
            self.courses.write_entries(self.producer, partition, update.entries)
            self._emit(state, update.changed, now_ms)
            self._dead_letters(batch, sorted({**update.errors, **bad}.items()))
        self.figures.changes_applied += len(msgs)

    def _emit(self, state: CourseState, courses: set[int] | list[int], now_ms: int) -> None:
        produce = self.producer.produce
        buf = io.BytesIO()
        for course_id in courses:
            key = str(course_id).encode()
            for topic, record in zip(
                (self.topics.long_term, self.topics.recent),
                state.statistics(course_id, now_ms),
                strict=True,
            ):
                buf.seek(0)
                buf.truncate()
                schemaless_writer(buf, self.stat_schema, record)
                produce(topic, confluent_frame(self.stat_schema_ids[topic], buf.getvalue()), key)
                self.metrics.records_out[topic] += 1

    def _dead_letters(self, msgs: list[Message], dead: list[tuple[int, Problem | str]]) -> None:
        """Refuse records: a `Problem` is the validity rule's (the record is no review), a
        bare reason the pipeline's own (a change record or header no stage wrote)."""
        for i, why in dead:
            self.dead_letter(msgs[i], str(why), why.kind if isinstance(why, Problem) else None)

    # -- time: the recent window -----------------------------------------------------------
    def tick(self) -> int:
        """Move windows to the clock's day and re-emit every recent record of the partitions
        that moved or were restored, inside the open transaction; how many records."""
        day = self.today()
        for partition, state in self.courses.partitions.items():
            if state.advance(day):
                self.unpublished.add(partition)
        if self.figures.as_of_day != day:
            self.figures.as_of_day = day
            log_event(log, "window moved", as_of_day=day)
        if not self.unpublished:
            return 0
        now_ms, emitted = int(self.clock() * 1000), 0
        for partition in sorted(self.unpublished & self.courses.partitions.keys()):
            state = self.courses[partition]
            emitted += self._emit_recent(state, now_ms)
            self.courses.write(self.producer, partition, *state.published(day))
        self.unpublished.clear()
        return emitted

    def _emit_recent(self, state: CourseState, now_ms: int) -> int:
        """Every recent record of a course partition; how many."""
        buf = io.BytesIO()
        schema_id = self.stat_schema_ids[self.topics.recent]
        for course_id in state.courses:
            buf.seek(0)
            buf.truncate()
            schemaless_writer(buf, self.stat_schema, state.recent_statistic(course_id, now_ms))
            self.producer.produce(
                self.topics.recent,
                confluent_frame(schema_id, buf.getvalue()),
                str(course_id).encode(),
            )
        self.metrics.records_out[self.topics.recent] += len(state.courses)
        return len(state.courses)

    def state_restored(self, store: ChangelogStore, partitions: list[int]) -> None:
        """A restored course partition re-emits its recent records unless its changelog says
        they were all published, in a committed transaction, for today's window: the window
        may have moved while no instance owned it, or the transaction that emitted them
        aborted (then its published day did not commit either)."""
        self._state_figures()
        if store is self.courses:
            today = self.today()
            self.unpublished.update(p for p in partitions if self.courses[p].published_day != today)

    def _state_figures(self) -> None:
        """Reviews tracked and the bytes both stages' state holds (on /health)."""
        stores: tuple[VersionsState | CourseState, ...] = (
            *self.versions.partitions.values(),
            *self.courses.partitions.values(),
        )
        self.figures.state_reviews = sum(map(len, self.versions.partitions.values()))
        self.figures.state_bytes = sum(s.nbytes() for s in stores)

    def committed(self, positions: list[TopicPartition]) -> None:
        """Purge change records below committed offsets, as Kafka Streams does: they are
        consumed and their effect is in the changelog, so the internal topic stays small."""
        self._state_figures()
        now = time.monotonic()
        if now - self._last_purge < self.purge_interval_s:
            return
        self._last_purge = now
        done = [
            TopicPartition(tp.topic, tp.partition, tp.offset)
            for tp in positions
            if tp.topic == self.topics.changes and tp.offset > 0
        ]
        if done:  # not waited for: the broker's answer can take a commit's time or more
            for tp, fut in self.admin.delete_records(done).items():
                fut.add_done_callback(functools.partial(_purged, tp.partition))


def _purged(partition: int, fut: Future) -> None:
    """A purge's answer (in the admin client's thread): a failure is logged, never fatal; a
    later purge covers it."""
    exc = fut.exception()
    if exc is not None:
        log_event(log, "purge failed", logging.WARNING, partition=partition, error=str(exc))


def course_keys(msgs: list[Message]) -> tuple[list[int], list[bytes | None], dict[int, str]]:
    """(course ids, values) of change records; a key that is no course id is an error (its
    record is skipped with the reason; it keeps its index, with the value None)."""
    course_ids: list[int] = []
    values: list[bytes | None] = []
    bad: dict[int, str] = {}
    for i, m in enumerate(msgs):
        key = m.key()
        try:
            course_ids.append(int(key))  # type: ignore[arg-type]  # None: TypeError, caught below
            values.append(m.value())
        except (TypeError, ValueError):
            bad[i] = f"aggregator change record: key {key!r} is not a course id"
            course_ids.append(-1)
            values.append(None)
    return course_ids, values, bad


def register_statistics(registry: Registry, topics: AggregatorTopics) -> dict[str, int]:
    """The statistics topics' schema ids (registered idempotently)."""
    return {
        topic: registry.register(f"{topic}-value", "course_statistic.avsc")
        for topic in (topics.long_term, topics.recent)
    }


def build(settings: Settings, stop: StopFlag) -> StatsAggregator | None:
    """The aggregator as its settings declare it, once the registry has its statistics'
    schemas (None: told to stop while waiting for it)."""
    registry, topics = Registry(settings.schema_registry_url), AggregatorTopics.from_env()
    if not until_reachable(
        "the schema registry", lambda: register_statistics(registry, topics), stop
    ):
        return None
    # registers the statistics schemas (idempotent: known by now)
    return StatsAggregator(
        settings, LoopConfig.from_env(AGGREGATOR), topics, stop, clock_from_env()
    )


def main() -> int:
    return run_worker(AGGREGATOR, build, warm_up=review_bytes.warm_up, fixed_mmap_threshold=True)


if __name__ == "__main__":
    sys.exit(main())
