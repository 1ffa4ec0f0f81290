"""Stats aggregator throughput with exactly-once, its memory and state per tracked review, and
whether its statistics are exact.

The input is the edit-heavy one (`bench.common.edit_heavy_records`: a valid and a fraud topic
as the fraud filter leaves them, about a fifth of the records edits of earlier reviews),
produced once; each run is a fresh aggregator (fresh group, internal and output topics) that
stops when every input record of both topics has gone through both stages (current versions,
then course statistics). Throughput counts input records from the first consumed to the last
aggregated; the state size is what the two stores say they hold (`nbytes()`), per
tracked review; mismatches compare the long-term topic with the from-scratch reference.

Memory is split in two: the fixed part (the RSS a warm worker adds to the bare process: its
Kafka clients with their buffers at the fixed sizes of `streaming.workers.clients`, the compiled
kernels, at the end of its first batch) and the state's: the RSS the process gives back when
the stopped worker's stores drop their state, per million tracked reviews. The allocator is set
up as the worker's `main` sets it (`process.fix_mmap_threshold`), so freed columns are returned.

    make up && .venv/bin/python bench/aggregate_throughput.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    EditHeavyInput,
    Mismatches,
    count_mismatches,
    in_child,
    produce_edit_heavy,
    rss_mb,
    write_result,
)
from streaming.settings import Settings
from streaming.workers.clients import LoopConfig
from streaming.workers.process import StopFlag, fix_mmap_threshold
from streaming.workers.stats_aggregator import AggregatorTopics, StatsAggregator


@dataclass
class OurRun:
    rps: float
    rss_fixed_mb: float
    """What the warm worker (clients, kernels, first batch) added to the bare process."""
    rss_state_mb: float
    """What the process gave back when the stopped worker's stores dropped their state."""
    reviews: int
    state_bytes_per_review: float | None
    """None while the state classes have no `nbytes()`."""
    mismatches: Mismatches


class TimedAggregator(StatsAggregator):
    target = 0
    first: float | None = None
    last: float = 0.0
    rss_warm: float | None = None
    tracked: int = 0
    state_bytes: int | None = None

    def process(self, msgs: list[Message]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        super().process(msgs)
        if self.rss_warm is None:
            self.rss_warm = rss_mb()

    def tick(self) -> int:
        """Right after the loop counted the batch: stop once every record and change is in."""
        emitted = super().tick()
        if (
            self.first is not None
            and self.metrics.records_in >= self.target
            and self.figures.changes_applied >= self.figures.changes_out
        ):
            self.last = time.perf_counter()
            # before close() drops the state of revoked partitions
            self.tracked = sum(len(s) for s in self.versions.partitions.values())
            self.state_bytes = self._state_bytes()
            self.stop.set()
        return emitted

    def _state_bytes(self) -> int | None:
        """Bytes both stores hold, by their own `nbytes()` (None where a state lacks it)."""
        states = [*self.versions.partitions.values(), *self.courses.partitions.values()]
        sizes = [getattr(s, "nbytes", None) for s in states]
        if any(size is None for size in sizes):
            return None
        return sum(size() for size in sizes)  # type: ignore[misc]  # no None: returned above


def run_once(
    settings: Settings,
    admin: AdminClient,
    valid: str,
    fraud: str,
    data: EditHeavyInput,
    partitions: int,
) -> OurRun:
    """One fresh aggregator over the whole input; its figures and its mismatches."""
    tag = uuid.uuid4().hex[:8]
    names = ["long", "recent", "changes", "versions", "courses", "dlq"]
    t = {n: f"bench-agg-{n}-{tag}" for n in names}
    admin_futures = admin.create_topics([NewTopic(x, partitions, 1) for x in t.values()])
    for fut in admin_futures.values():
        fut.result(30)
    topics = AggregatorTopics(
        valid=valid,
        fraud=fraud,
        changes=t["changes"],
        long_term=t["long"],
        recent=t["recent"],
        versions_changelog=t["versions"],
        courses_changelog=t["courses"],
        dead_letter=t["dlq"],
    )
    try:
        fix_mmap_threshold()
        rss_before = rss_mb()
        worker = TimedAggregator(
            settings, LoopConfig(group_id=f"bench-agg-{tag}", instance=tag), topics, StopFlag()
        )
        worker.target = data.records
        worker.run()
        rss_state = state_rss_mb(worker)
        mismatches = count_mismatches(settings, t["long"], data.reference)
    finally:
        for fut in admin.delete_topics(list(t.values())).values():
            fut.result(30)
    reviews = worker.tracked
    per_review = None if worker.state_bytes is None else worker.state_bytes / max(reviews, 1)
    return OurRun(
        data.records / (worker.last - worker.first),  # type: ignore[operator]  # set: it consumed
        (worker.rss_warm or rss_before) - rss_before,
        rss_state,
        reviews,
        per_review,
        mismatches,
    )


def state_rss_mb(worker: TimedAggregator) -> float:
    """The RSS the stopped worker's state holds: what the process gives back when the stores
    drop it (the clients are closed by then, so their buffers are not in it). Closing revoked
    every partition, so the state is kept (for a partition that comes back): both go."""
    gc.collect()
    with_state = rss_mb()
    for store in worker.stores:
        store.partitions.clear()
        store.discard_kept()
    gc.collect()
    return with_state - rss_mb()


def rss_per_1m(run: OurRun) -> float:
    """MB of RSS the state held, per million reviews."""
    return run.rss_state_mb * 1_000_000 / max(run.reviews, 1)


def describe(run: OurRun) -> str:
    size = (
        "state size n/a (no nbytes())"
        if run.state_bytes_per_review is None
        else f"state {run.state_bytes_per_review:,.0f} bytes/review"
    )
    return (
        f"{run.rps:,.0f} records/s, RSS +{run.rss_fixed_mb:,.0f} MB warm, state "
        f"{rss_per_1m(run):,.0f} MB per 1M reviews ({run.reviews:,} tracked), "
        f"{size}, mismatches {run.mismatches}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    settings = Settings.from_env()
    admin = AdminClient(settings.kafka_config())
    tag = uuid.uuid4().hex[:8]
    valid, fraud = f"bench-agg-valid-{tag}", f"bench-agg-fraud-{tag}"
    for fut in admin.create_topics(
        [NewTopic(x, args.partitions, 1) for x in (valid, fraud)]
    ).values():
        fut.result(30)
    try:
        print(
            f"producing {args.records:,} edit-heavy records into {valid}, {fraud} ...", flush=True
        )
        data = in_child(produce_edit_heavy, settings, valid, fraud, args.records)
        runs = []
        for run in range(args.runs):
            runs.append(run_once(settings, admin, valid, fraud, data, args.partitions))
            print(f"run {run + 1}: {describe(runs[-1])}", flush=True)
    finally:
        for fut in admin.delete_topics([valid, fraud]).values():
            fut.result(30)
    result = {
        "aggregate_eos_rps": round(statistics.median(r.rps for r in runs)),
        "aggregator_rss_mb_per_1m_reviews": round(statistics.median(map(rss_per_1m, runs))),
        "aggregator_rss_fixed_mb": round(max(r.rss_fixed_mb for r in runs)),  # the first run
        "aggregate_mismatches": max(r.mismatches.wrong for r in runs),
        "aggregate_edit_fraction": data.edit_fraction,
        "runs": args.runs,
        "records": args.records,
        "partitions": args.partitions,
    }
    sizes = [r.state_bytes_per_review for r in runs if r.state_bytes_per_review is not None]
    if sizes:
        result["aggregator_state_bytes_per_review"] = round(statistics.median(sizes))
    print(json.dumps(result, indent=2))
    write_result("aggregate", result, " ".join(["bench/aggregate_throughput.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
