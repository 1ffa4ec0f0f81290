"""The exactly-once loop every stream worker runs, as in confluent-kafka's eos-transactions example.

consume a batch -> `process` it (a transform that produces into the open transaction) -> every
N records or T ms: send the consumed positions with the consumer's group metadata, commit, begin
the next one (`streaming.workers.transaction`). A batch is what the consumer holds, taken without
waiting, or the first record to arrive (`clients.take`): an idle hop handles a record at once and,
its transaction being older than T, commits it at once. The loop counts what it consumed.

Around the loop: the stores' assign / revoke / restore / snapshot (`streaming.workers.stores`),
the dead letters and the careful pass over a batch the broker refused (`.dead_letters`), the
clients (`.clients`). An error that requires an abort aborts and rewinds; fatal errors (fenced)
end the process for the supervisor to restart; consumer error events are logged and counted.
"""

from __future__ import annotations

import gc
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streaming.settings import Settings
from streaming.workers import refusals
from streaming.workers.clients import LoopConfig, loop_consumer, loop_producer, records, take
from streaming.workers.dead_letters import DeadLetters, position_of
from streaming.workers.logs import log_event
from streaming.workers.metrics import WorkerMetrics
from streaming.workers.process import Backoff, StopFlag
from streaming.workers.snapshots import SnapshotDir
from streaming.workers.state import ChangelogStore
from streaming.workers.stores import StoreManager
from streaming.workers.transaction import Transaction

log = logging.getLogger("eos")


class EosWorker(ABC):
    """Base of the stream workers: the clients, the stores, the dead letters and the loop."""

    name = "worker"
    compression = "none"
    """The producer's codec (`compression.type`): a stage whose copies may be large sets one."""

    def __init__(
        self,
        settings: Settings,
        loop: LoopConfig,
        stop: StopFlag,
        inputs: Sequence[str],
        dead_letter_topic: str,
        stores: Sequence[ChangelogStore] = (),
        internal_inputs: frozenset[str] = frozenset(),
    ) -> None:
        """`internal_inputs`: the worker's own intermediate topics among `inputs`; their records
        are no `records_in`, and never dead letters (one lost would make the state inexact)."""
        self.settings, self.loop, self.stop = settings, loop, stop
        self.inputs, self.internal_inputs = list(inputs), internal_inputs
        self.metrics = WorkerMetrics(self.name, loop.instance)
        self._service_backoff = Backoff()  # while a service the records need is unreachable
        self.consumer = loop_consumer(settings, loop, self.metrics.on_stats)
        self.producer = loop_producer(
            settings, loop, self.compression, self.metrics.on_producer_stats
        )
        every_s, min_s = loop.commit_interval_ms / 1000, loop.commit_min_ms / 1000
        self.transaction = Transaction(self.producer, loop.commit_every_records, every_s, min_s)
        self.idle_wait_s = min(loop.commit_interval_ms / 1000, 0.5)  # for an idle turn's record
        snapshots = SnapshotDir.from_env(loop.group_id) if loop.snapshot_interval_s else None
        self.stores = StoreManager(
            self.consumer, stores, self.metrics, settings, loop, snapshots, self.state_restored
        )
        self.dead_letters = DeadLetters(
            self.producer,
            settings,
            self.metrics,
            dead_letter_topic,
            loop.transactional_id,
            lambda topic: topic not in internal_inputs,
        )

    # -- what a worker defines ---------------------------------------------------------------
    @abstractmethod
    def process(self, msgs: list[Message]) -> None:
        """Produce the outputs of one consumed batch into the open transaction."""

    def tick(self) -> int:
        """Called every loop turn, inside the open transaction (e.g. time-driven output): how
        many records it produced (they count towards the transaction's size)."""
        return 0

    def state_restored(self, store: ChangelogStore, partitions: list[int]) -> None:  # noqa: B027
        """Fresh state for `partitions` of `store`, at the committed offsets (e.g. re-emit)."""

    def committed(self, positions: list[TopicPartition]) -> None:  # noqa: B027 - optional hook
        """The input positions of a transaction that just committed."""

    def dead_letter(self, msg: Message, reason: str, kind: str | None = None) -> None:
        """Refuse a record: to the dead letters in the open transaction, logged and counted."""
        self.dead_letters.send(msg, reason, kind)

    def stand_by(self, wait_for_go: Callable[[], None]) -> None:
        """As a warm spare: standby copies of the state until the go; the loop starts then."""
        self.stores.stand_by(wait_for_go)
        self.metrics.started()

    # -- transactions ------------------------------------------------------------------------
    def commit(self) -> None:
        """Commit the open transaction with the positions of every partition consumed from."""
        positions = self.stores.positions()
        started = time.monotonic()
        self.transaction.commit(positions, self.consumer.consumer_group_metadata())
        self._count_commit(time.monotonic() - started)
        self.producer.poll(0)  # serve the last delivery reports: where each state ends
        self.stores.committed()
        # What survived a transaction is long-lived state (acyclic: freed by reference counts):
        # out of the cyclic collector, which would otherwise rescan all of it on every full
        # collection (45 % of the review stage's time at 1M reviews). O(1).
        gc.freeze()
        self.committed(positions)

    def _count_commit(self, seconds: float) -> None:
        m = self.metrics
        if m.transaction_committed(seconds, self.transaction.retries):
            since_start = round(time.time() - m.started_at, 2)
            log_event(log, "first commit", seconds_since_start=since_start, records_in=m.records_in)
        if m.waiting_for is not None:  # the service answered
            m.waiting_for = None
            self._service_backoff = Backoff()

    def abort(self, reason: str) -> None:
        """Abort the open transaction; every state is void and every partition rewinds.
        `reason`: the broker's error name, or what made the loop give the batch up."""
        self.transaction.abort()
        self.metrics.aborted(reason)
        self.stores.rewind()

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Turn until told to stop; then commit, snapshot and leave the group."""
        self.stores.identify()
        self.producer.init_transactions(60)
        self.consumer.subscribe(
            self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self.transaction.begin()
        # Every consumed record is an object the cyclic collector tracks: at its default
        # young-generation threshold (700 allocations) it ran ~7 times a batch, 8 % of the
        # fraud filter's time (py-spy). Nothing here makes cycles (reference counts free each
        # batch), so a young collection every ten batches is plenty.
        gc.set_threshold(10 * self.loop.batch_size, 10, 10)
        log_event(log, "started", transactional_id=self.loop.transactional_id, topics=self.inputs)
        while not self.stop:
            self.metrics.last_loop_time = time.monotonic()
            try:
                self._turn()
            except KafkaException as exc:
                self._on_kafka_error(exc)
            except ConnectionError as exc:  # e.g. the schema registry restarting
                self._wait_for_service(exc)
        if self.transaction.records:
            self.commit()
        self.transaction.abort()  # the empty transaction opened by the last commit
        self.stores.close()
        self.consumer.close()
        log_event(log, "stopped", records_in=self.metrics.records_in)

    def _turn(self) -> None:
        """One batch: consume, transform, and commit when due (one record per transaction,
        and time-driven output in one of its own, while `careful`)."""
        if self.stores.held:
            self.stores.release()
        careful, letters = self.dead_letters.careful, self.dead_letters
        if careful:  # time-driven output in a transaction of its own: blamed on no record
            self.transaction.add(self.tick())
            if self.transaction.records:
                self.commit()
        batch = 1 if careful else self.loop.batch_size
        txn = self.transaction  # with records in it, wait no longer than until it is due
        wait = txn.time_left() if txn.records else self.idle_wait_s
        msgs = records(self.metrics, take(self.consumer, batch, wait))
        drained = len(msgs) < batch  # the consumer held no more: due at the minimum age
        if msgs:
            letters.careful_record = position_of(msgs[-1]) if careful else None
            self._transform(msgs)
        self.transaction.add(self.tick())
        if letters.careful_record is not None:  # one record, one transaction
            self.commit()
            letters.record_passed()
        if careful:
            letters.caught_up(self._consumed())
        elif self.transaction.due(drained):
            self.commit()
        elif not self.transaction.records and self.stores.snapshot_due():
            self.stores.snapshot()  # idle after a commit: the state is the committed one

    def _transform(self, msgs: list[Message]) -> None:
        """Dead-letter the records the broker refused, `process` the rest, count them."""
        kept = self.dead_letters.divert_refused(msgs)
        if kept:
            self.process(kept)
        internal = self.internal_inputs
        counted = sum(m.topic() not in internal for m in kept) if internal else len(kept)
        self.metrics.records_in += counted
        self.transaction.add(len(msgs))

    def _on_kafka_error(self, exc: KafkaException) -> None:
        """Abort what a retry can fix; find a record the broker refused; raise the rest."""
        err = exc.args[0]
        if refusals.refused(err) or refusals.failed_transaction(err):
            # a record the broker refused failed the transaction (in the background: a later
            # produce says only _STATE); find it, one record per transaction
            self.dead_letters.on_refused(err, self._consumed)
            self.abort(err.name())
            return
        if not (err.txn_requires_abort() or err.retriable()) or err.fatal():
            raise exc
        log_event(log, "aborting transaction", logging.WARNING, error=str(err))
        self.abort(err.name())

    def _consumed(self) -> list[TopicPartition]:
        return self.consumer.position(self.consumer.assignment())

    def _wait_for_service(self, exc: ConnectionError) -> None:
        """A service the records need is unreachable (not the data's fault): abort, so the
        batch is read again, and wait a growing moment (0.5 s doubling to 5 s) with the loop
        alive. Exiting instead would turn a 40 s registry restart into a crash loop."""
        waits = self.metrics.service_waits = (self.metrics.service_waits or 0) + 1
        self.metrics.waiting_for = type(exc).__name__  # its text (a URL) in the log
        message = "a service is unreachable, aborting and retrying"
        log_event(log, message, logging.WARNING, error=str(exc), attempt=waits)
        self.abort("service unreachable")
        time.sleep(self._service_backoff.next())  # back-off before the retry; the loop turns again

    # -- rebalance callbacks -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        self.stores.assigned(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.transaction.records:  # hand over exactly what was processed
            self.commit()
        self.stores.revoked(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already belong to another member: its commit would be fenced, abort."""
        self.abort("partitions lost")
        self.stores.lost(partitions)
