"""Stats aggregator throughput with exactly-once, and its memory per million tracked reviews.

The input (a valid and a fraud topic, as the fraud filter leaves them) is produced once; each
run is a fresh aggregator (fresh group, internal and output topics) that stops when every input
record has gone through both stages (current versions, then course statistics). Throughput
counts input records from the first consumed to the last aggregated; memory is the RSS the
process gained while building its state, divided by the reviews it tracks.

    make up && .venv/bin/python bench/aggregate_throughput.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import produce_reviews, rss_mb, write_result
from streaming.config import Settings
from streaming.workers.eos import LoopConfig
from streaming.workers.runtime import StopFlag
from streaming.workers.stats_aggregator import AggregatorTopics, StatsAggregator


class TimedAggregator(StatsAggregator):
    target = 0
    first: float | None = None
    last: float = 0.0
    rss_at_end: float = 0.0
    tracked: int = 0

    def process(self, msgs: list[Message]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        super().process(msgs)
        extra = self.metrics.extra
        if (
            self.metrics.records_in >= self.target
            and extra["changes_applied"] >= extra["changes_out"]
        ):
            self.last = time.perf_counter()
            self.rss_at_end = rss_mb()  # before close() drops the state of revoked partitions
            self.tracked = sum(len(s.reviews) for s in self.versions.partitions.values())
            self.stop.set()


def run_once(
    settings: Settings, admin: AdminClient, valid: str, fraud: str, records: int, partitions: int
) -> tuple[float, float, int]:
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
    rss_before = rss_mb()
    worker = TimedAggregator(
        settings, LoopConfig(group_id=f"bench-agg-{tag}", instance=tag), topics, StopFlag()
    )
    worker.target = records
    worker.run()
    rss_after, reviews = worker.rss_at_end, worker.tracked
    for fut in admin.delete_topics(list(t.values())).values():
        fut.result(30)
    return records / (worker.last - worker.first), rss_after - rss_before, reviews


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
        print(f"producing {args.records:,} reviews into {valid} ...", flush=True)
        produce_reviews(settings, valid, args.records)
        rates, mems = [], []
        for run in range(args.runs):
            rate, mem, reviews = run_once(
                settings, admin, valid, fraud, args.records, args.partitions
            )
            rates.append(rate)
            mems.append(mem * 1_000_000 / reviews)
            print(
                f"run {run + 1}: {rate:,.0f} records/s, +{mem:,.0f} MB RSS for {reviews:,} reviews",
                flush=True,
            )
    finally:
        for fut in admin.delete_topics([valid, fraud]).values():
            fut.result(30)
    result = {
        "aggregate_eos_rps": round(statistics.median(rates)),
        "aggregator_rss_mb_per_1m_reviews": round(statistics.median(mems)),
        "runs": args.runs,
        "records": args.records,
        "partitions": args.partitions,
    }
    print(json.dumps(result, indent=2))
    write_result("aggregate", result, " ".join(["bench/aggregate_throughput.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
