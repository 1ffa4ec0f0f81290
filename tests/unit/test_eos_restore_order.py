"""The loop's restore path, with a fake consumer: what happens in which order.

KIP-447: a new owner must read the committed offsets (stable: a previous owner's pending
transaction is waited for) *before* it replays a changelog, or that transaction's changes can be
missing from the state while the offsets already include them. Aborts restore the same way.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from streaming.workers.clients import LoopConfig
from streaming.workers.metrics import WorkerMetrics
from streaming.workers.state import ChangelogStore
from streaming.workers.stores import StoreManager, check_copartitioned


class FakeConsumer:
    def __init__(self, calls: list[str], committed: dict[tuple[str, int], int]) -> None:
        self.calls = calls
        self.offsets = committed
        self.assigned: list[TopicPartition] = []
        self.unstable = 0

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.unstable:
            self.unstable -= 1
            raise KafkaException(
                KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT, "pending", retriable=True)
            )
        self.calls.append("committed")
        return [
            TopicPartition(t.topic, t.partition, self.offsets.get((t.topic, t.partition), -1001))
            for t in tps
        ]

    def seek(self, tp: TopicPartition) -> None:
        self.calls.append(f"seek {tp.topic}[{tp.partition}]@{tp.offset}")

    def pause(self, tps: list[TopicPartition]) -> None:
        self.calls.append("pause " + ",".join(f"{t.topic}[{t.partition}]" for t in tps))

    def resume(self, tps: list[TopicPartition]) -> None:
        self.calls.append("resume")

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)


class FakeState:
    def restore(self, entries: Any) -> int:
        return 0

    def to_snapshot(self) -> bytes:
        return b""

    @classmethod
    def load(cls, data: bytes) -> FakeState:
        return cls()


def manager(calls: list[str], committed: dict[tuple[str, int], int]) -> StoreManager:
    """The store manager of a worker with one store, on a fake consumer (no Kafka clients)."""
    consumer = FakeConsumer(calls, committed)
    store: ChangelogStore[FakeState] = ChangelogStore(
        "s", "s-changelog", ("in-a", "in-b"), FakeState, FakeState.load
    )

    def restore_partitions(
        settings: Any, partitions: list[int], prefix: str, progress: Any = None
    ) -> dict:
        calls.append(f"restore {partitions}")
        store.partitions.update({p: FakeState() for p in partitions})
        return {}

    store.restore_partitions = restore_partitions  # type: ignore[method-assign]  # a stand-in restore
    metrics = WorkerMetrics("w", "0")
    return StoreManager(consumer, [store], metrics, None, LoopConfig(group_id="g"))  # type: ignore[arg-type]  # fake consumer and metrics


def assign(m: StoreManager, parts: list[TopicPartition]) -> None:
    """What the loop's rebalance callback does: assign, then hand the partitions to the stores."""
    m.consumer.assign(parts)
    m.assigned(parts)


def test_assigned_partitions_are_restored_only_after_their_committed_offsets_are_read():
    calls: list[str] = []
    w = manager(calls, {("in-a", 0): 7})
    parts = [TopicPartition("in-a", 0), TopicPartition("in-b", 0)]
    assign(w, parts)
    assert calls == ["pause in-a[0],in-b[0]"], "held, nothing restored inside the callback"
    assert w.metrics.snapshot(30)["status"] == "restoring"
    w.release()
    assert calls[1:] == [
        "committed",
        "restore [0]",
        "seek in-a[0]@7",
        f"seek in-b[0]@{OFFSET_BEGINNING}",  # no committed offset: from the beginning
        "resume",
    ]
    assert w.metrics.snapshot(30)["status"] == "ok" and not w.held


def test_unstable_offsets_are_waited_for_before_restoring():
    calls: list[str] = []
    w = manager(calls, {})
    w.consumer.unstable = 2  # type: ignore[attr-defined]  # the fake consumer's own knob
    assign(w, [TopicPartition("in-a", 1), TopicPartition("in-b", 1)])
    w.release()
    assert calls.index("committed") < calls.index("restore [1]")


def test_a_partition_kept_across_release_is_not_restored_twice():
    calls: list[str] = []
    w = manager(calls, {})
    assign(w, [TopicPartition("in-a", 0), TopicPartition("in-b", 0)])
    w.release()
    w.hold([TopicPartition("in-a", 0)])  # e.g. paused again for a rewind of offsets only
    w.release()
    assert calls.count("restore [0]") == 1


def test_an_assignment_that_splits_a_store_partition_is_refused():
    store = ChangelogStore("s", "c", ("valid", "fraud"), FakeState, FakeState.load)
    with pytest.raises(RuntimeError, match=r"lacks \[\('fraud', 2\)\]"):
        check_copartitioned(
            [store],
            [TopicPartition("valid", 2), TopicPartition("fraud", 1), TopicPartition("valid", 1)],
        )
    check_copartitioned([store], [TopicPartition("valid", 1), TopicPartition("fraud", 1)])
