"""Changelog-backed state stores, as Kafka Streams' and Quix Streams' state stores (one per stage).

A store holds one state object per partition. Partition p of each of its input topics reads and
writes state partition p, and every change is written to changelog partition p (a compacted
topic) in the same transaction as the outputs and input offsets. So the committed changelog is
exactly the state at the committed input offsets.

Restoring a partition (on assignment, after an abort) starts from the best committed state at a
known changelog offset and reads the changelog's tail past it (read_committed):
1. the state this instance kept: when a rebalance took the partition away (it was committed
   then: the revoke commits first) and the partition came back, or the copy its warm spare
   followed as a standby replica (`streaming.workers.standby`) while the last incarnation ran;
2. the local snapshot (`streaming.workers.snapshots`) if `snapshot_problem` finds none;
3. otherwise a fresh state and the whole changelog.
The offset a state reflects comes from the delivery reports of its own changelog writes, moved
to `positions` only once their transaction committed. Snapshots are written after a commit, of
committed state only, from a background thread (the state's bytes are taken in the loop).

The state object is the stage's own (pure) class: `restore(entries)` applies changelog entries in
order on top of it, `to_snapshot()` gives its bytes, and the store's `loader` reads them back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streaming.settings import Settings
from streaming.workers.logs import log_event
from streaming.workers.snapshots import (
    ChangelogIdentity,
    SnapshotDir,
    SnapshotHeader,
    SnapshotUnreadable,
    snapshot_problem,
)

log = logging.getLogger("state")
RESTORE_TIMEOUT_S = 600


class Restorable(Protocol):
    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Apply (key, value) changelog entries, in order, on top of this state: all that a
        restore reads in one call, and only whole committed transactions (a state may resolve
        keys across them: a course's member entries precede its title entry in a transaction,
        and a tombstone or a later value of a key read in another call would otherwise be
        missed); returns how many entries it could not read."""
        ...

    def compact(self) -> None:
        """Fold changes applied since the last call into the state's compact form (a standby
        copy applies tails for hours without being snapshotted)."""
        ...

    def to_snapshot(self) -> bytes:
        """The state as bytes its store's `loader` reads back."""
        ...


S = TypeVar("S", bound=Restorable)
Progress = Callable[[int, int], None]
"""(changelog records read so far, records to read) while a restore runs."""


@dataclass
class Source(Generic[S]):
    """Where a partition's restore starts: a state and the changelog offset it reflects."""

    state: S
    offset: int | None
    """None: a fresh state, the whole changelog follows."""
    kind: str


@dataclass
class ChangelogStore(Generic[S]):
    """The state of one stage, per partition, backed by one changelog topic."""

    name: str
    changelog: str
    inputs: tuple[str, ...]
    """Input topics whose partition p is served by state partition p."""
    factory: Callable[[], S]
    loader: Callable[[bytes], S]
    """A state from `to_snapshot()` bytes (raises ValueError when they are not one)."""
    partitions: dict[int, S] = field(default_factory=dict)
    snapshots: SnapshotDir | None = None
    identity: ChangelogIdentity | None = None
    positions: dict[int, int] = field(default_factory=dict)
    """Per owned partition: the changelog offset its committed state reflects."""
    restored_from: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Per partition, its last restore: (kept | snapshot | changelog, changelog records read)."""
    _pending: dict[int, int] = field(default_factory=dict)
    _snapped: dict[int, int] = field(default_factory=dict)
    _kept: dict[int, tuple[S, int, str]] = field(default_factory=dict)
    """Committed states of partitions not owned: revoked ones, standby copies."""
    _writes: list[Future] = field(default_factory=list)
    _writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="snapshot")
    )

    def __getitem__(self, partition: int) -> S:
        return self.partitions[partition]

    def write(self, producer: Producer, partition: int, key: bytes, value: bytes | None) -> None:
        """A change of state partition `partition`, into the open transaction."""
        producer.produce(self.changelog, value, key, partition, on_delivery=self.delivered)

    def write_all(
        self,
        producer: Producer,
        partition: int,
        keys: Sequence[bytes | None],
        values: bytes,
        size: int,
    ) -> None:
        """Changes of state partition `partition`: values[size k:size (k+1)] under keys[k]. Only
        the last one reports its delivery: it is where the partition's state ends (a
        partition's records are delivered in order)."""
        last = len(keys) - 1
        produce, topic = producer.produce, self.changelog
        for k, key in enumerate(keys):
            value = values[size * k : size * (k + 1)]
            if k == last:
                produce(topic, value, key, partition, on_delivery=self.delivered)
            else:
                produce(topic, value, key, partition)

    def write_entries(
        self, producer: Producer, partition: int, entries: list[tuple[bytes, bytes | None]]
    ) -> None:
        """(key, value) changes of state partition `partition`, in order (only the last one
        reports its delivery, as in `write_all`)."""
        last = len(entries) - 1
        produce, topic = producer.produce, self.changelog
        for k, (key, value) in enumerate(entries):
            if k == last:
                produce(topic, value, key, partition, on_delivery=self.delivered)
            else:
                produce(topic, value, key, partition)

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        """Delivery report of a changelog write: where the partition's state now ends."""
        if err is None:
            p: int
            p, end = msg.partition(), msg.offset() + 1  # type: ignore[assignment, operator]  # delivered: set
            if end > self._pending.get(p, -1):
                self._pending[p] = end

    def committed(self) -> None:
        """The open transaction committed: its changelog writes are state now."""
        for p, end in self._pending.items():
            if p in self.partitions:
                self.positions[p] = max(self.positions.get(p, -1), end)
        self._pending.clear()

    def aborted(self) -> None:
        self._pending.clear()

    def discard(self, partitions: Iterable[int]) -> None:
        """Forget the state of partitions (void after an abort, or another member's now)."""
        for p in partitions:
            self.partitions.pop(p, None)
            self.positions.pop(p, None)

    def keep_revoked(self, partitions: Iterable[int]) -> None:
        """Keep the committed state of partitions a rebalance takes away, in case they come
        back (an eager rebalance revokes every partition, then reassigns most of them)."""
        for p in list(partitions):
            state, position = self.partitions.pop(p, None), self.positions.pop(p, None)
            if state is not None and position is not None:
                self._kept[p] = (state, position, "kept")

    def keep_standby(self, partition: int, state: S, position: int, kind: str) -> None:
        """Hold a committed state of a partition this instance does not own yet (a standby
        copy), used if the partition is assigned while its offset is in the changelog."""
        self._kept[partition] = (state, position, kind)

    def discard_kept(self) -> None:
        """Drop the kept states (their partitions were not assigned here again)."""
        self._kept.clear()

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, partitions: Iterable[int] | None = None) -> int:
        """Snapshot committed state whose position moved since its last snapshot (call right
        after a commit); the files are written in the background. How many were taken."""
        if self.snapshots is None or self.identity is None:
            return 0
        taken = 0
        for p in list(self.partitions) if partitions is None else list(partitions):
            position = self.positions.get(p)
            if p not in self.partitions or position is None or self._snapped.get(p) == position:
                continue
            header = SnapshotHeader(
                self.name,
                self.changelog,
                self.identity.topic_id,
                self.identity.partitions,
                p,
                position,
                int(time.time() * 1000),
            )
            payload = self.partitions[p].to_snapshot()
            self._snapped[p] = position
            self._writes = [f for f in self._writes if not f.done()]
            self._writes.append(self._writer.submit(self._write, header, payload))
            taken += 1
        return taken

    def _write(self, header: SnapshotHeader, payload: bytes) -> None:
        assert self.snapshots is not None
        t0 = time.monotonic()
        try:
            path = self.snapshots.write(header, payload)
        except OSError as exc:  # a cache: the changelog still has everything
            log_event(log, "snapshot not written", logging.WARNING, error=str(exc))
            return
        log_event(
            log,
            "snapshot written",
            store=self.name,
            partition=header.partition,
            offset=header.offset,
            bytes=len(payload),
            seconds=round(time.monotonic() - t0, 3),
            path=str(path),
        )

    def flush_snapshots(self) -> None:
        """Wait for snapshot files being written (before exiting)."""
        for f in self._writes:
            f.result()
        self._writes.clear()

    # -- restore ---------------------------------------------------------------------------
    def _source(self, p: int, low: int, high: int) -> Source[S]:
        """The best committed state of partition p to start from (see the module doc)."""
        kept = self._kept.pop(p, None)
        if kept is not None and low <= kept[1] <= high:
            return Source(*kept)
        return self.stored_source(p, low, high)

    def stored_source(self, p: int, low: int, high: int) -> Source[S]:
        """The snapshot of partition p if `snapshot_problem` finds none, else a fresh state."""
        if self.snapshots is not None and self.identity is not None:
            try:
                found = self.snapshots.read(self.changelog, p)
                if found is not None:
                    header, payload = found
                    problem = snapshot_problem(
                        header, self.identity, p, low, high, int(time.time() * 1000)
                    )
                    if problem is None:
                        return Source(self.loader(payload), header.offset, "snapshot")
                    raise SnapshotUnreadable(problem)
            except (OSError, ValueError) as exc:  # SnapshotUnreadable, a loader's refusal
                log_event(
                    log,
                    "snapshot discarded",
                    logging.WARNING,
                    store=self.name,
                    partition=p,
                    reason=str(exc),
                )
                self.snapshots.discard(self.changelog, p)
        return Source(self.factory(), None, "changelog")

    def restore_partitions(
        self,
        settings: Settings,
        partitions: list[int],
        group_prefix: str,
        progress: Progress | None = None,
    ) -> dict[int, S]:
        """Committed state for each partition (kept, snapshot or fresh, then the changelog
        after it: all partitions read at once by one consumer), installed and returned."""
        t0 = time.monotonic()
        reader = restore_consumer(settings, group_prefix)
        try:
            marks = {
                p: reader.get_watermark_offsets(TopicPartition(self.changelog, p), timeout=30)
                for p in partitions
            }
            sources = {p: self._source(p, *marks[p]) for p in partitions}
            states = {p: s.state for p, s in sources.items()}
            starts = {p: s.offset for p, s in sources.items()}
            counts = read_changelog_with(reader, self.changelog, starts, marks, states, progress)
        finally:
            reader.close()
        for p, (read, _, end) in counts.items():
            self.positions[p] = end
            self.restored_from[p] = (sources[p].kind, read)
            self._snapped[p] = starts[p] if sources[p].kind == "snapshot" else -1  # type: ignore[assignment]  # a snapshot has its offset
        self.partitions.update(states)
        log_event(
            log,
            "state restored",
            store=self.name,
            partitions=partitions,
            sources={p: s.kind for p, s in sources.items()},
            records=sum(c[0] for c in counts.values()),
            unreadable=sum(c[1] for c in counts.values()),
            seconds=round(time.monotonic() - t0, 2),
        )
        return states


def restore_consumer(settings: Settings, group_prefix: str, fetch_wait_ms: int = 10) -> Consumer:
    """A consumer of changelogs, assigned (never subscribed), read_committed, to their end.

    `fetch_wait_ms`: how long the broker holds a fetch that found nothing new; a restore wants
    to learn that it is at the end at once (the default 500 ms is a restart's last wait),
    a standby that follows for hours less often."""
    return Consumer(
        settings.kafka_config(
            **{
                "fetch.wait.max.ms": fetch_wait_ms,
                "group.id": f"{group_prefix}-restore-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",  # aborted changes are no state
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "fetch.max.bytes": 52_428_800,
            }
        )
    )


def read_changelog_with(
    reader: Consumer,
    topic: str,
    starts: dict[int, int | None],
    marks: dict[int, tuple[int, int]],
    states: dict[int, S],
    progress: Progress | None = None,
    timeout_s: float = RESTORE_TIMEOUT_S,
    batch: int = 10_000,
) -> dict[int, tuple[int, int, int]]:
    """Read each partition's committed changelog from its start (None: its beginning) to its
    end (the last stable offset), then apply it to its state in one call.

    `marks` are the (low, high) watermarks read before the states were chosen. Returns
    {partition: (records read, unreadable, the offset the state now reflects)}."""
    entries: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in starts}
    ends = {p: marks[p][0] if start is None else start for p, start in starts.items()}
    todo = {p for p in starts if ends[p] < marks[p][1]}
    total = sum(marks[p][1] - ends[p] for p in todo)
    reader.assign([TopicPartition(topic, p, ends[p]) for p in sorted(todo)])
    deadline = time.monotonic() + timeout_s
    done = 0
    while todo:
        if time.monotonic() > deadline:
            raise TimeoutError(f"restoring {topic}{sorted(todo)} took over {timeout_s}s")
        msgs = reader.consume(batch, timeout=1.0)
        for m in msgs:
            err = m.error()
            if err is None:
                entries[m.partition()].append((m.key(), m.value()))  # type: ignore[index]  # a consumed record's is set
            elif err.code() == KafkaError._PARTITION_EOF:  # at its end (the LSO)
                todo.discard(m.partition())  # type: ignore[arg-type]  # an EOF event has them set
                ends[m.partition()] = m.offset()  # type: ignore[index, assignment]  # an EOF event has them set
            elif err.fatal():
                raise KafkaException(err)
            else:
                log_event(log, "restore consumer error", logging.WARNING, error=str(err))
        done += len(msgs)
        if progress is not None:
            progress(done, total)
    return {p: (len(entries[p]), states[p].restore(entries.pop(p)), ends[p]) for p in list(starts)}
