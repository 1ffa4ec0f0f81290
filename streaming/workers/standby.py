"""Standby replicas kept by a warm spare, as Kafka Streams' standby tasks
(`num.standby.replicas`): a restart starts from state already in memory.

While an instance's running incarnation owns store partitions, its warm spare
(`stack.procs --warm`) keeps a copy of each: loaded from the partition's snapshot (or built from
its whole changelog), then kept current from the committed changelog as the running one writes
it. When the running incarnation dies the spare is told to go, and `hand_over` gives the copies
to its stores as kept state: the restore that follows reads only the changelog written since the
copies' last catch-up, instead of loading snapshots (seconds at 1M reviews on two loaded cores).

Which partitions: those the running incarnation was assigned, as it says after its first commit
on the assignment (`SnapshotDir.write_owned`: not sooner, or the copies' loading would compete
with its restore for the CPU), re-read every turn. Entries are applied at the partition's end
only (EOF at the last stable offset): what was read by then is whole committed transactions, as
a restore's tail is, so `restore` sees what it always sees; the copy's offset is that end.

The hand-over never waits for a copy being loaded: it takes the copies that are whole (a lock
guards them), and the thread drops the one it was loading. It does not lower its own CPU
priority either: an unprivileged process cannot raise it again, and a low-priority thread
holding the GIL would stall the incarnation taking over (priority inversion).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streaming.core.aggregation import StateLayoutError
from streaming.settings import Settings
from streaming.workers.logs import log_event
from streaming.workers.state import ChangelogStore, restore_consumer

log = logging.getLogger("standby")
POLL_S = 0.1
"""Longest wait in a consume: also how long `hand_over` may wait for the thread to stop."""
BATCH = 10_000
COMPACT_AFTER = 50_000
"""Entries applied to a copy between compactions (its in-memory changes are folded in)."""


@dataclass
class Copy:
    """A standby copy of one store partition: its state holds the committed changelog below
    `offset`; `pending` is what was read past it, applied at the partition's next end."""

    state: Any
    offset: int
    pending: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    since_compact: int = 0
    caught_up: bool = False
    """It reached the changelog's end at least once since it was loaded."""


class Standby:
    """Standby copies of the partitions `owned()` names ({store name: partitions}; None: no
    change, as when the running incarnation just died and the go is on its way)."""

    def __init__(
        self,
        settings: Settings,
        stores: list[ChangelogStore],
        owned: Callable[[], dict[str, list[int]] | None],
        group_prefix: str,
        report: Callable[[dict], None],
    ) -> None:
        """`report` publishes the standby's status ({pid, ready, partitions}): ready when
        every owned partition has a copy that reached the changelog's end."""
        self.settings, self.owned, self.group_prefix = settings, owned, group_prefix
        self.report = report
        self.ready = False
        self.stores = {store.changelog: store for store in stores}
        self.copies: dict[tuple[str, int], Copy] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        """Held while copies change; `hand_over` takes them under it, then they are gone."""
        self._thread = threading.Thread(target=self._run, name="standby", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hand_over(self) -> int:
        """Stop following and give every whole copy to its store (`ChangelogStore.keep_standby`);
        how many."""
        t0 = time.monotonic()
        self.stopping.set()
        with self._lock:
            copies, self.copies = self.copies, {}
        for (topic, p), copy in sorted(copies.items()):
            self.stores[topic].keep_standby(p, copy.state, copy.offset, "standby")
        self._report(False, copies)
        log_event(
            log,
            "standby handed over",
            partitions=self._by_store(copies),
            seconds=round(time.monotonic() - t0, 3),
        )
        return len(copies)

    def _run(self) -> None:
        consumer = restore_consumer(
            self.settings, f"{self.group_prefix}-standby", fetch_wait_ms=int(POLL_S * 1000)
        )
        try:
            while not self.stopping.is_set():
                owned = self.owned()
                if owned is not None:  # None: no live incarnation says; keep what is kept
                    self._follow(consumer, owned)
                if not self.copies:
                    self.stopping.wait(POLL_S * 5)  # until the running one says what it owns
                    continue
                msgs = consumer.consume(BATCH, timeout=POLL_S)
                with self._lock:
                    self._apply(msgs)
                    ready = all(c.caught_up for c in self.copies.values())
                    if ready and not self.ready and not self.stopping.is_set():
                        self._report(True, self.copies)
        except (KafkaException, ValueError, OSError, StateLayoutError) as exc:  # a cache
            log_event(log, "standby stopped", logging.WARNING, error=str(exc))
            with self._lock:
                self.copies.clear()
        finally:
            consumer.close()

    def _follow(self, consumer: Consumer, owned: dict[str, list[int]]) -> None:
        """Copies of exactly the owned partitions (new ones from their snapshot or a fresh
        state); on a change the consumer is assigned again, each copy at its offset."""
        wanted = {
            (topic, p) for topic, store in self.stores.items() for p in owned.get(store.name, [])
        }
        if wanted == self.copies.keys():
            return
        with self._lock:
            for key in self.copies.keys() - wanted:
                del self.copies[key]
        for topic, p in sorted(wanted - self.copies.keys()):
            if self.stopping.is_set():
                return
            t0 = time.monotonic()
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            source = self.stores[topic].stored_source(p, low, high)  # seconds: not locked
            offset = low if source.offset is None else source.offset
            with self._lock:
                if self.stopping.is_set():
                    return  # handed over meanwhile: this copy is nobody's
                self.copies[(topic, p)] = Copy(source.state, offset)
            log_event(
                log,
                "standby copy",
                changelog=topic,
                partition=p,
                source=source.kind,
                offset=offset,
                seconds=round(time.monotonic() - t0, 2),
            )
        with self._lock:
            if self.stopping.is_set():
                return
            self._report(False, self.copies)
            for copy in self.copies.values():
                copy.pending.clear()  # read again from its offset
            consumer.assign(
                [TopicPartition(t, p, c.offset) for (t, p), c in sorted(self.copies.items())]
            )

    def _by_store(self, copies: dict[tuple[str, int], Copy]) -> dict[str, list[int]]:
        return {
            s.name: sorted(p for t, p in copies if t == topic) for topic, s in self.stores.items()
        }

    def _report(self, ready: bool, copies: dict[tuple[str, int], Copy]) -> None:
        self.ready = ready
        parts = self._by_store(copies)
        with contextlib.suppress(OSError):  # a status for operators and benchmarks only
            self.report(
                {"pid": os.getpid(), "ready": ready, "partitions": parts, "at": time.time()}
            )

    def _apply(self, msgs: list[Message]) -> None:
        for m in msgs:
            copy = self.copies.get((m.topic(), m.partition()))  # type: ignore[arg-type]  # a consumed record's is set
            if copy is None:
                continue
            err = m.error()
            if err is None:
                copy.pending.append((m.key(), m.value()))
            elif err.code() == KafkaError._PARTITION_EOF:
                self._catch_up(m.topic(), copy, m.offset())  # type: ignore[arg-type]  # an EOF event has them set
            elif err.fatal():
                raise KafkaException(err)
            else:
                log_event(log, "standby consumer error", logging.WARNING, error=str(err))

    def _catch_up(self, topic: str, copy: Copy, end: int) -> None:
        """At the partition's end: apply what was read since the last one."""
        if copy.pending:
            unreadable = copy.state.restore(copy.pending)
            if unreadable:
                log_event(
                    log,
                    "standby: unreadable entries",
                    logging.WARNING,
                    changelog=topic,
                    unreadable=unreadable,
                )
            copy.since_compact += len(copy.pending)
            copy.pending = []
            if copy.since_compact >= COMPACT_AFTER:
                copy.state.compact()
                copy.since_compact = 0
        copy.offset, copy.caught_up = end, True
