"""The store manager: every changelog-backed store of a worker through assign, revoke, restore,
snapshot and standby, as Kafka Streams' `ProcessorStateManager` and Quix's `StateStoreManager`.

Partition p of a store's inputs is served by state partition p. Newly assigned partitions are
paused (*held*) in the rebalance callback and restored in the loop, *after* their committed
offsets are fetched: a read of stable offsets (KIP-447) waits for a previous owner's pending
transaction, so the changelog read afterwards holds every change those offsets include. Then the
partitions are sought to those offsets and resumed. An aborted transaction rewinds the same way:
every state is discarded and every partition held, restored and sought again, so nothing is lost
or doubled. A revoked partition's committed state is snapshotted and kept in case it comes back.

The manager is given the loop's consumer; it never creates Kafka clients of its own except the
restore and standby readers, so a test builds it with a fake consumer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from streaming.settings import Settings
from streaming.workers.clients import LoopConfig
from streaming.workers.logs import log_event
from streaming.workers.metrics import WorkerMetrics
from streaming.workers.snapshots import ChangelogIdentity, SnapshotDir
from streaming.workers.standby import Standby
from streaming.workers.state import ChangelogStore, Progress

log = logging.getLogger("stores")
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
Restored = Callable[[ChangelogStore, list[int]], None]
"""Fresh state for partitions of a store, at the committed offsets (the worker's hook)."""


def committed_retriable(err: KafkaError) -> bool:
    """A committed-offsets fetch worth repeating: a retriable error, or the call's own timeout
    (an open transaction still holds the offsets: a later fetch may see them stable)."""
    return not err.fatal() and (err.retriable() or err.code() == KafkaError._TIMED_OUT)


def tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def check_copartitioned(stores: Sequence[ChangelogStore], assigned: list[TopicPartition]) -> None:
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


class StoreManager:
    """A worker's stores and the input partitions held until their state is back."""

    def __init__(
        self,
        consumer: Consumer,
        stores: Sequence[ChangelogStore],
        metrics: WorkerMetrics,
        settings: Settings,
        loop: LoopConfig,
        snapshots: SnapshotDir | None = None,
        on_restored: Restored | None = None,
    ) -> None:
        self.consumer, self.stores, self.metrics = consumer, list(stores), metrics
        self.settings, self.loop, self.snapshots = settings, loop, snapshots
        self.on_restored = on_restored or (lambda store, partitions: None)
        self.held: set[tuple[str, int]] = set()
        """Input partitions paused until their committed offsets are read and state restored."""
        self._owned: dict[str, list[int]] | None = None
        """The store partitions of the last assignment, until `_announce_owned`."""
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = 0.0
        """Seconds the loop spent on the last periodic snapshot (`snapshot_due`)."""

    def __iter__(self) -> Iterator[ChangelogStore]:
        return iter(self.stores)

    def __len__(self) -> int:
        return len(self.stores)

    # -- assignment ------------------------------------------------------------------------
    def assigned(self, partitions: list[TopicPartition]) -> None:
        """New partitions (already assigned to the consumer): held until `release`."""
        check_copartitioned(self.stores, partitions)
        self.hold(partitions)
        self.metrics.assigned += [tp_name(p) for p in partitions]
        log_event(log, "assigned", partitions=[tp_name(p) for p in partitions])
        self._owned = {
            store.name: sorted({tp.partition for tp in partitions if tp.topic in store.inputs})
            for store in self.stores
        }

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Partitions taken away after the loop committed what it processed of them: their
        state is committed now, so snapshot it for whoever gets it on this machine, and keep it
        in case it comes back (an eager rebalance revokes everything)."""
        revoked = {
            store.name: [tp.partition for tp in partitions if tp.topic in store.inputs]
            for store in self.stores
        }
        self.snapshot(revoked)
        for store in self.stores:
            store.keep_revoked(revoked[store.name])
        self.forget(partitions)
        log_event(log, "revoked", partitions=[tp_name(p) for p in partitions])

    def lost(self, partitions: list[TopicPartition]) -> None:
        """Partitions that already belong to another member (the loop aborted first)."""
        self.forget(partitions)
        log_event(log, "lost", logging.WARNING, partitions=[tp_name(p) for p in partitions])

    def forget(self, partitions: list[TopicPartition]) -> None:
        for store in self.stores:
            store.discard(tp.partition for tp in partitions if tp.topic in store.inputs)
        self.held -= {(tp.topic, tp.partition) for tp in partitions}
        gone = {tp_name(p) for p in partitions}
        self.metrics.assigned = [a for a in self.metrics.assigned if a not in gone]

    def hold(self, partitions: Sequence[TopicPartition]) -> None:
        """Pause partitions until their committed offsets are known and their state restored."""
        if not partitions:
            return
        self.consumer.pause(list(partitions))
        self.held |= {(tp.topic, tp.partition) for tp in partitions}
        self.metrics.restoring_since = self.metrics.restoring_since or time.monotonic()

    def rewind(self) -> None:
        """The open transaction aborted: every state is void, every partition is held."""
        for store in self.stores:
            store.aborted()
            store.discard(list(store.partitions))
        self.hold(self.consumer.assignment())

    def positions(self) -> list[TopicPartition]:
        """The positions to commit: every partition consumed from, none of the held."""
        return [
            tp
            for tp in self.consumer.position(self.consumer.assignment())
            if tp.offset >= 0 and (tp.topic, tp.partition) not in self.held
        ]

    # -- restore ---------------------------------------------------------------------------
    def release(self) -> None:
        """Restore the state of held partitions after fetching their committed offsets, seek
        them there and resume them."""
        tps = [TopicPartition(t, p) for t, p in sorted(self.held)]
        offsets = self.committed_offsets(tps)
        jobs = self._restore(tps)
        for store in self.stores:  # what did not come back belongs to another member now
            store.discard_kept()
        self.metrics.restore_progress = None
        for tp in offsets:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self.consumer.resume(tps)
        self.held.clear()
        # A restored state is a snapshot and a tail: snapshot again at the first commit only
        # when the tail was long (the next restart would read it all again).
        tail = max((n for st, _ in jobs for _, n in st.restored_from.values()), default=0)
        if tail < RESNAPSHOT_AFTER_RECORDS:
            self._last_snapshot = time.monotonic()
        self.metrics.restoring_since = None
        self.metrics.progress_since = time.monotonic()
        self.metrics.last_loop_time = time.monotonic()

    def _restore(self, tps: list[TopicPartition]) -> list[tuple[ChangelogStore, list[int]]]:
        """Restore the store partitions of `tps` not in memory; (store, partitions) restored."""
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
            self.on_restored(store, parts)
            restored = self.metrics.restored_from = self.metrics.restored_from or {}
            restored[store.name] = {
                p: {"source": kind, "records": n}
                for p, (kind, n) in sorted(store.restored_from.items())
                if p in store.partitions
            }
        return jobs

    def _progress(self, store: str) -> Progress:
        """Restore progress of one store, for /health (`restore_progress`)."""

        def report(done: int, total: int) -> None:
            progress = self.metrics.restore_progress = self.metrics.restore_progress or {}
            progress[store] = {"records": done, "of": total}

        return report

    def committed_offsets(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """Stable committed offsets (read_committed: a pending transaction's offsets are waited
        for), retrying retriable errors up to COMMITTED_TIMEOUT_S."""
        deadline, waited = time.monotonic() + COMMITTED_TIMEOUT_S, False
        while True:
            try:
                offsets = self.consumer.committed(tps, timeout=COMMITTED_CALL_TIMEOUT_S)
                failed = [tp for tp in offsets if tp.error is not None]
                if not failed:
                    if waited:
                        self.metrics.waiting_for = None
                    return offsets
                raise KafkaException(failed[0].error)
            except KafkaException as exc:
                err = exc.args[0]
                if not committed_retriable(err) or time.monotonic() > deadline:
                    raise
                # /health is public: the error's name there, its text (the broker's) in the log
                self.metrics.waiting_for = f"stable committed offsets ({err.name()})"
                waited = True
                log_event(log, "committed offsets not ready", logging.WARNING, error=str(err))

    # -- commits and snapshots -------------------------------------------------------------
    def committed(self) -> None:
        """The open transaction committed (its delivery reports served): its changelog writes
        are state now; tell the spare what to copy; snapshot when due."""
        for store in self.stores:
            store.committed()
        self._announce_owned()
        if self.snapshot_due():
            self.snapshot()

    def _announce_owned(self) -> None:
        """After the first commit on an assignment (its state restored, its backlog under way):
        tell the warm spare what to keep standby copies of; not sooner, as its copies would
        compete with this restore for the CPU."""
        if self._owned is not None and self.snapshots is not None and self.stores:
            self.snapshots.write_owned(self.loop.transactional_id, self._owned)
        self._owned = None

    def snapshot_due(self) -> bool:
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
        self.metrics.snapshots = (self.metrics.snapshots or 0) + taken

    def close(self) -> None:
        """The loop stopped after its last commit: snapshot that state for the next start."""
        self.snapshot()
        for store in self.stores:
            store.flush_snapshots()

    # -- identity and standby --------------------------------------------------------------
    def identify(self) -> None:
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
                store.discard_kept()  # standby copies of a changelog that is not this one
            store.snapshots, store.identity = self.snapshots, identity

    def stand_by(self, wait_for_go: Callable[[], None]) -> None:
        """As a warm spare, until `wait_for_go` returns: standby copies of the partitions the
        running incarnation owns (`streaming.workers.standby`), then kept by the stores."""
        if not self.stores or self.snapshots is None:
            wait_for_go()
            return
        self.identify()
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
