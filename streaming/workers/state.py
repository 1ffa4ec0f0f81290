"""Changelog-backed state stores, as Quix Streams' `StateStoreManager` and Kafka Streams' stores.

A store holds one state object per partition. Partition p of each of its input topics reads and
writes state partition p, and every change is written to changelog partition p (a compacted
topic) in the same transaction as the outputs and input offsets. So the committed changelog is
exactly the state at the committed input offsets: restoring replays it (read_committed) into a
fresh state object, on assignment and after an abort.

The state object is the stage's own (pure) class; the store only needs `restore(entries)`, which
rebuilds it from (key, value) changelog records in order and returns how many it could not read.
`restore_partitions` is the one place a snapshot or a faster layout can later sit behind.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streaming.config import Settings
from streaming.workers.runtime import log_event

log = logging.getLogger("state")
RESTORE_TIMEOUT_S = 600


class Restorable(Protocol):
    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Rebuild from every (key, value) entry of the partition's changelog, in order, in
        one call (a state may resolve keys across the whole changelog: a tombstone or a later
        value of a key read in another call would otherwise be missed); returns how many
        entries it could not read."""
        ...


S = TypeVar("S", bound=Restorable)


@dataclass
class ChangelogStore(Generic[S]):
    """The state of one stage, per partition, backed by one changelog topic."""

    name: str
    changelog: str
    inputs: tuple[str, ...]
    """Input topics whose partition p is served by state partition p."""
    factory: Callable[[], S]
    partitions: dict[int, S] = field(default_factory=dict)

    def __getitem__(self, partition: int) -> S:
        return self.partitions[partition]

    def write(self, producer: Producer, partition: int, key: bytes, value: bytes | None) -> None:
        """A change of state partition `partition`, into the open transaction."""
        producer.produce(self.changelog, value, key, partition)

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)

    def restore_partitions(
        self, settings: Settings, partitions: list[int], group_prefix: str
    ) -> dict[int, S]:
        """Fresh state for each partition, rebuilt from its committed changelog (all
        partitions read at once by one consumer), installed and returned."""
        t0 = time.monotonic()
        states = {p: self.factory() for p in partitions}
        counts = read_changelog(settings, self.changelog, partitions, states, group_prefix)
        self.partitions.update(states)
        log_event(
            log,
            "state restored",
            store=self.name,
            partitions=partitions,
            records=sum(c[0] for c in counts.values()),
            unreadable=sum(c[1] for c in counts.values()),
            seconds=round(time.monotonic() - t0, 2),
        )
        return states


def read_changelog(
    settings: Settings,
    topic: str,
    partitions: list[int],
    states: dict[int, S],
    group_prefix: str,
    timeout_s: float = RESTORE_TIMEOUT_S,
    batch: int = 10_000,
) -> dict[int, tuple[int, int]]:
    """Read each partition's committed changelog to its end, then replay it into its state
    in one call; {partition: (records read, unreadable)}."""
    reader = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"{group_prefix}-restore-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",  # aborted changes are no state
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "fetch.max.bytes": 52_428_800,
            }
        )
    )
    entries: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in partitions}
    try:
        todo = set()
        assignment = []
        for p in partitions:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                todo.add(p)
                assignment.append(TopicPartition(topic, p, low))
        reader.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic}{sorted(todo)} took over {timeout_s}s")
            for m in reader.consume(batch, timeout=1.0):
                err = m.error()
                if err is None:
                    entries[m.partition()].append((m.key(), m.value()))
                elif err.code() == KafkaError._PARTITION_EOF:  # at its end (the LSO)
                    todo.discard(m.partition())
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log_event(log, "restore consumer error", logging.WARNING, error=str(err))
    finally:
        reader.close()
    return {p: (len(entries[p]), states[p].restore(entries.pop(p))) for p in partitions}
