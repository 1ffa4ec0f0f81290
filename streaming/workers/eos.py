"""The exactly-once loop every stream worker runs, as in confluent-kafka's eos-transactions example.

consume a batch -> `process` it (produce into the open transaction) -> every N records or T ms:
send the consumed positions with the consumer's group metadata, commit, begin the next one
(`streaming.workers.checkpoint.Checkpoint`).

State: a worker declares its changelog-backed stores (`streaming.workers.state`); partition p of
a store's inputs is served by state partition p. Newly assigned partitions are paused in the
rebalance callback and restored in the loop, *after* their committed offsets are fetched: a read
of stable offsets (KIP-447) waits for a previous owner's pending transaction, so the changelog
read afterwards holds every change those offsets include. Then the partitions are sought to
those offsets and resumed. An aborted transaction rewinds the same way: every state is dropped
and every partition held, restored and sought again, so nothing is lost or doubled.

Zombie fencing: the transactional id is stable per instance (`<group>-<instance>`), so a restarted
instance fences its previous incarnation; offsets go with the group metadata (KIP-447), so a
member that lost its partitions in a rebalance cannot commit them. Static membership
(`group.instance.id`) hands a restarted instance its partitions back without a rebalance.
Fatal errors (fenced) end the process for the supervisor to restart; consumer error events that
are not fatal are logged and counted, never processed as records.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from streaming.config import Settings
from streaming.pipeline import WorkerSpec
from streaming.settings import LoopSettings, load
from streaming.workers import refusals
from streaming.workers.checkpoint import Checkpoint
from streaming.workers.refusals import Refusals
from streaming.workers.runtime import Backoff, StopFlag, WorkerMetrics, log_event
from streaming.workers.snapshots import ChangelogIdentity, SnapshotDir
from streaming.workers.standby import Standby
from streaming.workers.state import ChangelogStore

log = logging.getLogger("eos")

MAX_PRODUCE_BYTES = 64 * 1024 * 1024
"""The producer's own record limit, above any topic's: the broker enforces each topic's
max.message.bytes, and librdkafka's default (1,000,000) is below Kafka's (1,048,588), so a record
that fits its input topic could not even be passed through or dead-lettered."""
DEFAULT_TOPIC_MAX_BYTES = 1_000_000
"""Assumed max.message.bytes of a dead-letter topic whose config cannot be read."""
RECORD_SLACK_BYTES = 1024
"""Record batch and record framing around a record's key, value and headers."""
SNAPSHOT_COST_SHARE = 20
"""Periodic snapshots are at least this many times their own cost apart."""
RESNAPSHOT_AFTER_RECORDS = 20_000
"""A restore that read more of the changelog than this snapshots at its first commit."""
COMMITTED_TIMEOUT_S = 120
"""How long to wait for stable committed offsets: a previous owner's open transaction holds
them until it commits, aborts or times out (transaction.timeout.ms, 60 s), and one that a hard
broker restart left hanging until the stack's reaper aborts it (stack/txn_reaper.py, < 90 s)."""
COMMITTED_CALL_TIMEOUT_S = 10
"""One fetch of them; librdkafka retries unstable offsets inside it, so a timeout is retried."""


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
}
"""The transactional producer's buffers."""


def committed_retriable(err: KafkaError) -> bool:
    """A committed-offsets fetch worth repeating: a retriable error, or the call's own timeout
    (an open transaction still holds the offsets: a later fetch may see them stable)."""
    return not err.fatal() and (err.retriable() or err.code() == KafkaError._TIMED_OUT)


@dataclass(frozen=True)
class LoopConfig:
    group_id: str
    instance: str = "0"
    commit_every_records: int = 20_000
    commit_interval_ms: int = 100
    batch_size: int = 5_000
    session_timeout_ms: int = 10_000
    snapshot_interval_s: float = 30.0

    @classmethod
    def from_env(cls, spec: WorkerSpec) -> LoopConfig:
        """`<PREFIX>_GROUP_ID` [the declared group], WORKER_INSTANCE [0], COMMIT_EVERY_RECORDS
        [20000], COMMIT_INTERVAL_MS [100], SESSION_TIMEOUT_MS [10000], SNAPSHOT_INTERVAL_S
        [30] (how often changed state is snapshotted to STATE_DIR, or less often when a snapshot
        costs more than 1/20 of that; 0: never)."""
        s = load(LoopSettings)
        return cls(
            group_id=os.environ.get(spec.group_env) or spec.group_id,
            instance=s.worker_instance,
            commit_every_records=s.commit_every_records,
            commit_interval_ms=s.commit_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            snapshot_interval_s=s.snapshot_interval_s,
        )

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-{self.instance}"


def tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


class EosWorker(ABC):
    """Base of the stream workers: owns the consumer, the transactional producer, the stores
    and the loop."""

    name = "worker"
    compression = "none"
    """The producer's codec (`compression.type`): a stage whose copies may be large sets one."""

    def __init__(self, settings: Settings, loop: LoopConfig, stop: StopFlag) -> None:
        self.settings = settings
        self.loop = loop
        self.stop = stop
        self.metrics = WorkerMetrics(self.name, loop.instance)
        self._service_backoff = Backoff()  # while a service the records need is unreachable
        self.consumer = Consumer(
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
                    "stats_cb": self.metrics.on_stats,
                    **CONSUMER_BUFFERS,
                }
            )
        )
        self.producer = Producer(
            settings.kafka_config(
                **{
                    "transactional.id": loop.transactional_id,
                    "partitioner": "murmur2_random",  # same key -> same partition as Java
                    **PRODUCER_BUFFERS,
                    "transaction.timeout.ms": 60_000,
                    "message.max.bytes": MAX_PRODUCE_BYTES,
                    "compression.type": self.compression,
                    # records sent per partition, for /metrics (parsed every 5 s: no cost)
                    "statistics.interval.ms": 5000,
                    "stats_cb": self.metrics.on_producer_stats,
                }
            )
        )
        self.checkpoint = Checkpoint(
            self.producer, loop.commit_every_records, loop.commit_interval_ms / 1000
        )
        self.stores: list[ChangelogStore] = []
        self.snapshots = SnapshotDir.from_env(loop.group_id) if loop.snapshot_interval_s else None
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = 0.0
        """Seconds the loop spent on the last periodic snapshot (`_snapshot_due`)."""
        self._held: set[tuple[str, int]] = set()
        self._owned: dict[str, list[int]] | None = None
        """The store partitions of the last assignment, until `_announce_owned`."""
        self._topic_max_bytes: dict[str, int] = {}
        self.refusals = Refusals()
        self._careful_msg: tuple[str, int, int] | None = None
        """The one record of the open transaction while going through a refused batch."""

    # -- what a worker defines ---------------------------------------------------------------
    @abstractmethod
    def topics(self) -> list[str]:
        """The input topics."""

    @abstractmethod
    def process(self, msgs: list[Message]) -> None:
        """Produce the outputs of one consumed batch into the open transaction."""

    @abstractmethod
    def dead_letter_topic(self) -> str:
        """Where records go that cannot be processed, or whose outputs the broker refuses."""

    def divertible(self, topic: str) -> bool:
        """Whether a record of this input topic may go to the dead letters when the broker
        refuses its outputs (not a worker's own internal records: losing one would make the
        state inexact; then the worker stalls and says why)."""
        return True

    def tick(self) -> None:  # noqa: B027 - optional hook
        """Called every loop turn, inside the open transaction (e.g. time-driven output)."""

    def state_restored(self, store: ChangelogStore, partitions: list[int]) -> None:  # noqa: B027
        """Fresh state for `partitions` of `store`, at the committed offsets (e.g. re-emit)."""

    def committed(self, positions: list[TopicPartition]) -> None:  # noqa: B027 - optional hook
        """The input positions of a transaction that just committed."""

    # -- dead letters ------------------------------------------------------------------------
    def produce_dead_letter(
        self, topic: str, msg: Message, reason: str, kind: str | None = None
    ) -> None:
        """Send a record that cannot go on to `topic` in the open transaction, cut to fit the
        topic; `kind` is the validity rule's when the record is no review (`validity.KINDS`)."""
        headers = dead_letter_headers(msg, reason, self.loop.transactional_id, kind)
        limit = min(self.topic_max_bytes(topic), MAX_PRODUCE_BYTES)  # the client's limit too
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

    # -- transactions ------------------------------------------------------------------------
    def commit(self) -> None:
        """Commit the open transaction with the positions of every partition consumed from."""
        positions = [
            tp
            for tp in self.consumer.position(self.consumer.assignment())
            if tp.offset >= 0 and (tp.topic, tp.partition) not in self._held
        ]
        started = time.monotonic()
        self.checkpoint.commit(positions, self.consumer.consumer_group_metadata())
        self.metrics.commit_latency.observe(time.monotonic() - started)
        self.metrics.transactions += 1
        self.metrics.extra["commit_retries"] = self.checkpoint.retries
        self.metrics.committed()
        if self.metrics.extra.pop("waiting_for", None) is not None:
            self._service_backoff = Backoff()  # while a service the records need is unreachable
        if self.metrics.first_commit_time is None:
            self.metrics.first_commit_time = self.metrics.last_commit_time
            log_event(
                log,
                "first commit",
                seconds_since_start=round(time.time() - self.metrics.started_at, 2),
                records_in=self.metrics.records_in,
            )
        self.producer.poll(0)  # serve the last delivery reports: where each state ends
        for store in self.stores:
            store.committed()
        self._announce_owned()
        if self._snapshot_due():
            self.snapshot()
        # What survived a transaction is long-lived state (acyclic: freed by reference counts):
        # out of the cyclic collector, which would otherwise rescan all of it on every full
        # collection (45 % of the review stage's time at 1M reviews). O(1).
        gc.freeze()
        self.committed(positions)

    def _announce_owned(self) -> None:
        """After the first commit on an assignment (its state restored, its backlog under way):
        tell the warm spare what to keep standby copies of; not sooner, as its copies would
        compete with this restore for the CPU."""
        if self._owned is not None and self.snapshots is not None and self.stores:
            self.snapshots.write_owned(self.loop.transactional_id, self._owned)
        self._owned = None

    def _snapshot_due(self) -> bool:
        """Every `snapshot_interval_s`, or less often when taking one costs more than 1/20 of
        the time between them (a state of millions of reviews: the loop must not spend its
        time snapshotting; the standby copies and the changelog tail cover the gap)."""
        every = max(self.loop.snapshot_interval_s, SNAPSHOT_COST_SHARE * self._snapshot_cost)
        return (
            bool(self.stores)
            and self.snapshots is not None
            and (time.monotonic() - self._last_snapshot >= every)
        )

    def snapshot(self, partitions: dict[str, list[int]] | None = None) -> None:
        """Snapshot committed state (right after a commit): every changed partition, or the
        given ones of each store."""
        t0 = time.monotonic()
        taken = sum(
            store.snapshot(None if partitions is None else partitions.get(store.name, []))
            for store in self.stores
        )
        self._last_snapshot = time.monotonic()
        if partitions is None:
            self._snapshot_cost = self._last_snapshot - t0
        self.metrics.extra["snapshots"] = self.metrics.extra.get("snapshots", 0) + taken

    def abort(self, reason: str) -> None:
        """Abort the open transaction; every state is void and every partition rewinds.
        `reason`: the broker's error name, or what made the loop give the batch up."""
        self.checkpoint.abort()
        self.metrics.aborted(reason)
        for store in self.stores:
            store.aborted()
            store.drop(list(store.partitions))
        self._hold(self.consumer.assignment())

    # -- assignment --------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        check_copartitioned(self.stores, partitions)
        self._hold(partitions)
        self.metrics.assigned += [tp_name(p) for p in partitions]
        log_event(log, "assigned", partitions=[tp_name(p) for p in partitions])
        self._owned = {
            store.name: sorted({tp.partition for tp in partitions if tp.topic in store.inputs})
            for store in self.stores
        }

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.checkpoint.records:  # hand over exactly what was processed
            self.commit()
        # The revoked state is committed now: snapshot it for whoever gets it on this
        # machine, and keep it in case it comes back (an eager rebalance revokes everything).
        revoked = {
            store.name: [tp.partition for tp in partitions if tp.topic in store.inputs]
            for store in self.stores
        }
        self.snapshot(revoked)
        for store in self.stores:
            store.park(revoked[store.name])
        self._forget(partitions)
        log_event(log, "revoked", partitions=[tp_name(p) for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already belong to another member: its commit would be fenced, abort."""
        self.abort("partitions lost")
        self._forget(partitions)
        log_event(log, "lost", logging.WARNING, partitions=[tp_name(p) for p in partitions])

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for store in self.stores:
            store.drop(tp.partition for tp in partitions if tp.topic in store.inputs)
        self._held -= {(tp.topic, tp.partition) for tp in partitions}
        gone = {tp_name(p) for p in partitions}
        self.metrics.assigned = [a for a in self.metrics.assigned if a not in gone]

    def _hold(self, partitions: Sequence[TopicPartition]) -> None:
        """Pause partitions until their committed offsets are known and their state restored."""
        if not partitions:
            return
        self.consumer.pause(list(partitions))
        self._held |= {(tp.topic, tp.partition) for tp in partitions}
        self.metrics.restoring_since = self.metrics.restoring_since or time.monotonic()

    def _release(self) -> None:
        """Restore the state of held partitions after fetching their committed offsets, seek
        them there and resume them."""
        tps = [TopicPartition(t, p) for t, p in sorted(self._held)]
        offsets = self._committed(tps)
        jobs = [
            (store, parts)
            for store in self.stores
            if (
                parts := sorted(
                    {tp.partition for tp in tps if tp.topic in store.inputs}
                    - store.partitions.keys()
                )
            )
        ]
        # Stores restore side by side: each reads its own changelog, so one's fetch (in
        # librdkafka's threads, without the GIL) overlaps another's replay.
        with ThreadPoolExecutor(max(len(jobs), 1), thread_name_prefix="restore") as pool:
            futures = [
                pool.submit(
                    store.restore_partitions,
                    self.settings,
                    parts,
                    self.loop.group_id,
                    self._progress(store.name),
                )
                for store, parts in jobs
            ]
            for future in futures:
                future.result()
        for store, parts in jobs:  # in declaration order, once every state is back
            self.state_restored(store, parts)
            self.metrics.extra.setdefault("restored_from", {})[store.name] = {
                p: {"source": kind, "records": n}
                for p, (kind, n) in sorted(store.restored_from.items())
                if p in store.partitions
            }
        for store in self.stores:  # what did not come back belongs to another member now
            store.forget_parked()
        self.metrics.extra.pop("restore_progress", None)
        for tp in offsets:
            self.consumer.seek(
                TopicPartition(
                    tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                )
            )
        self.consumer.resume(tps)
        self._held.clear()
        # A restored state is a snapshot and a tail: snapshot again at the first commit only
        # when the tail was long (the next restart would read it all again).
        tail = max((n for st, _ in jobs for _, n in st.restored_from.values()), default=0)
        if tail < RESNAPSHOT_AFTER_RECORDS:
            self._last_snapshot = time.monotonic()
        self.metrics.restoring_since = None
        self.metrics.progress_since = time.monotonic()
        self.metrics.last_loop_time = time.monotonic()

    def _progress(self, store: str) -> Callable[[int, int], None]:
        """Restore progress of one store, for /health (`restore_progress`)."""

        def report(done: int, total: int) -> None:
            self.metrics.extra.setdefault("restore_progress", {})[store] = {
                "records": done,
                "of": total,
            }

        return report

    def _identify_stores(self) -> None:
        """Each changelog's id, partition count and delete.retention.ms: what a snapshot
        must match to be used."""
        if not self.stores or self.snapshots is None:
            return
        self.snapshots.remove_leftovers()
        admin = AdminClient(self.settings.kafka_config())
        names = [store.changelog for store in self.stores]
        described = admin.describe_topics(TopicCollection(names))
        resources = {n: ConfigResource(ConfigResource.Type.TOPIC, n) for n in names}
        configs = admin.describe_configs(list(resources.values()))
        for store in self.stores:
            topic = described[store.changelog].result(30)
            config = configs[resources[store.changelog]].result(30)
            identity = ChangelogIdentity(
                str(topic.topic_id),
                len(topic.partitions),
                int(config["delete.retention.ms"].value),
            )
            if store.identity is not None and store.identity != identity:
                store.forget_parked()  # standby copies of a changelog that is not this one
            store.snapshots, store.identity = self.snapshots, identity

    def stand_by(self, wait_for_go: Callable[[], None]) -> None:
        """As a warm spare, until `wait_for_go` returns: standby copies of the partitions the
        running incarnation owns (`streaming.workers.standby`), then kept by the stores."""
        if not self.stores or self.snapshots is None:
            wait_for_go()
            return
        self._identify_stores()
        snapshots, instance = self.snapshots, self.loop.transactional_id
        standby = Standby(
            self.settings,
            self.stores,
            lambda: snapshots.read_owned(instance),
            self.loop.group_id,
            lambda note: snapshots.write_note(f"standby-{instance}", note),
        )
        standby.start()
        try:
            wait_for_go()
        finally:
            standby.hand_over()
        self.metrics.started_at, self.metrics.last_loop_time = time.time(), time.monotonic()

    def _committed(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """Stable committed offsets (read_committed: a pending transaction's offsets are waited
        for), retrying retriable errors up to COMMITTED_TIMEOUT_S."""
        deadline, waited = time.monotonic() + COMMITTED_TIMEOUT_S, False
        while True:
            try:
                offsets = self.consumer.committed(tps, timeout=COMMITTED_CALL_TIMEOUT_S)
                failed = [tp for tp in offsets if tp.error is not None]
                if not failed:
                    if waited:
                        self.metrics.extra.pop("waiting_for", None)
                    return offsets
                raise KafkaException(failed[0].error)
            except KafkaException as exc:
                err = exc.args[0]
                if not committed_retriable(err) or time.monotonic() > deadline:
                    raise
                # /health is public: the error's name there, its text (the broker's) in the log
                self.metrics.extra["waiting_for"] = f"stable committed offsets ({err.name()})"
                waited = True
                log_event(log, "committed offsets not ready", logging.WARNING, error=str(err))

    # -- the loop ---------------------------------------------------------------------------
    def records(self, msgs: list[Message]) -> list[Message]:
        """The records of a consumed batch; error events logged and counted (fatal: raised)."""
        errors = [m for m in msgs if m.error() is not None]
        if not errors:
            return msgs
        for m in errors:
            err = m.error()
            if err.fatal():
                raise KafkaException(err)
            self.metrics.consumer_errors += 1
            log_event(log, "consumer error", logging.WARNING, error=str(err), topic=m.topic())
        return [m for m in msgs if m.error() is None]

    def _divert_refused(self, msgs: list[Message]) -> list[Message]:
        """Send the records whose outputs the broker refused to the dead letters, with its
        reason; the others, to process."""
        if not self.refusals.blamed:
            return msgs
        kept = []
        for m in msgs:
            why = self.refusals.take(*position_of(m))
            if why is None:
                kept.append(m)
                continue
            self.produce_dead_letter(self.dead_letter_topic(), m, why)
            self.metrics.dead_letters += 1
            self.checkpoint.add(1)
            log_event(
                log,
                "dead letter",
                logging.WARNING,
                reason=why,
                topic=m.topic(),
                partition=m.partition(),
                offset=m.offset(),
            )
        return kept

    def _on_refused(self, err: KafkaError) -> None:
        """The broker refused an output for good: abort, then find the record (going through
        the batch one record per transaction) and dead-letter it (`streaming.workers.refusals`)."""
        why = refusals.reason(err)
        if self._careful_msg is not None and not refusals.refused(err):
            # only the failed transaction's echo (_STATE, e.g. the sequence gap a refused
            # batch leaves until the abort bumps the epoch): this record is not to blame
            log_event(
                log,
                "transaction failed: aborting, the record again",
                logging.WARNING,
                error=str(err),
                record=self._careful_msg,
            )
        elif self._careful_msg is not None and not self.divertible(self._careful_msg[0]):
            log_event(
                log,
                "an internal record's output refused: stalled",
                logging.ERROR,
                error=why,
                record=self._careful_msg,
            )
        elif self._careful_msg is not None:
            if not self.refusals.blame(*self._careful_msg, why):
                log_event(
                    log,
                    "its dead letter was refused too: stalled",
                    logging.ERROR,
                    error=why,
                    record=self._careful_msg,
                )
        else:
            consumed = self.consumer.position(self.consumer.assignment())
            self.refusals.suspect(
                [(tp.topic, tp.partition, tp.offset) for tp in consumed if tp.offset >= 0]
            )
        log_event(
            log,
            "an output refused: aborting to find its record",
            logging.WARNING,
            error=why,
            record=self._careful_msg,
        )
        self._careful_msg = None
        self.abort(err.name())

    def _wait_for_service(self, exc: ConnectionError) -> None:
        """A service the records need is unreachable (not the data's fault): abort, so the
        batch is read again, and wait a growing moment (0.5 s doubling to 5 s) with the loop
        alive. Exiting instead would turn a 40 s registry restart into a crash loop."""
        waits = self.metrics.extra.get("service_waits", 0) + 1
        self.metrics.extra["service_waits"] = waits
        self.metrics.extra["waiting_for"] = type(exc).__name__  # its text (a URL) in the log
        log_event(
            log,
            "a service is unreachable, aborting and retrying",
            logging.WARNING,
            error=str(exc),
            attempt=waits,
        )
        self.abort("service unreachable")
        time.sleep(self._service_backoff.next())  # back-off before the retry; the loop turns again

    def run(self) -> None:
        cfg = self.loop
        self._identify_stores()
        self.producer.init_transactions(60)
        self.consumer.subscribe(
            self.topics(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.checkpoint.begin()
        interval = cfg.commit_interval_ms / 1000
        # Every consumed record is an object the cyclic collector tracks: at its default
        # young-generation threshold (700 allocations) it ran ~7 times a batch, 8 % of the
        # fraud filter's time (py-spy). Nothing here makes cycles (reference counts free each
        # batch), so a young collection every ten batches is plenty.
        gc.set_threshold(10 * cfg.batch_size, 10, 10)
        log_event(log, "started", transactional_id=cfg.transactional_id, topics=self.topics())
        while not self.stop:
            self.metrics.last_loop_time = time.monotonic()
            try:
                if self._held:
                    self._release()
                careful = self.refusals.careful
                if careful:  # time-driven output in a transaction of its own: blamed on no record
                    self.tick()
                    if self.checkpoint.records:
                        self.commit()
                msgs = self.records(
                    self.consumer.consume(
                        1 if careful else cfg.batch_size, timeout=min(interval, 0.5)
                    )
                )
                if msgs:
                    self._careful_msg = position_of(msgs[-1]) if careful else None
                    kept = self._divert_refused(msgs)
                    if kept:
                        self.process(kept)
                self.tick()
                if self._careful_msg is not None:  # one record, one transaction
                    self.commit()
                    self.refusals.passed(*self._careful_msg)
                    self._careful_msg = None
                if careful:
                    assigned = self.consumer.position(self.consumer.assignment())
                    self.refusals.caught_up({(t.topic, t.partition): t.offset for t in assigned})
                elif self.checkpoint.due():
                    self.commit()
                elif not self.checkpoint.records and self._snapshot_due():
                    self.snapshot()  # idle after a commit: the state is the committed one
            except KafkaException as exc:
                err = exc.args[0]
                if refusals.refused(err) or refusals.failed_transaction(err):
                    # a record the broker refused failed the transaction (in the background:
                    # a later produce says only _STATE); find it, one record per transaction
                    self._on_refused(err)
                    continue
                if not (err.txn_requires_abort() or err.retriable()) or err.fatal():
                    raise
                log_event(log, "aborting transaction", logging.WARNING, error=str(err))
                self.abort(err.name())
            except ConnectionError as exc:  # e.g. the schema registry restarting
                self._wait_for_service(exc)
        if self.checkpoint.records:
            self.commit()
        self.checkpoint.abort()  # the empty transaction opened by the last commit
        self.snapshot()  # what was committed last, for the next start
        for store in self.stores:
            store.flush_snapshots()
        self.consumer.close()
        log_event(log, "stopped", records_in=self.metrics.records_in)


def position_of(msg: Message) -> tuple[str, int, int]:
    return msg.topic(), msg.partition(), msg.offset()  # type: ignore[return-value]


def check_copartitioned(stores: list[ChangelogStore], assigned: list[TopicPartition]) -> None:
    """Every store partition needs partition p of each of its inputs on this instance; an
    assignment that splits them (inputs with different partition counts, another assignor)
    would make the state inexact, so it is refused loudly."""
    have = {(tp.topic, tp.partition) for tp in assigned}
    for store in stores:
        parts = {p for t, p in have if t in store.inputs}
        missing = sorted((t, p) for p in parts for t in store.inputs if (t, p) not in have)
        if missing:
            raise RuntimeError(
                f"store {store.name}: assignment lacks {missing}; its inputs "
                f"{list(store.inputs)} must have equal partition counts (range assignor)"
            )


def dead_letter_headers(
    msg: Message, reason: str, worker: str, kind: str | None = None
) -> list[tuple[str, bytes]]:
    """Why and where from: enough to find, fix and replay the record; `dlq.kind` (the validity
    rule's kind) when the record is no review, which the reconciliation counts."""
    return [
        ("dlq.error", reason.encode()),
        *([] if kind is None else [("dlq.kind", kind.encode())]),
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
