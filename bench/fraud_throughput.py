"""Fraud filter throughput with exactly-once, against a raw transactional pass-through loop.

Both run the same consume -> produce -> send_offsets -> commit loop (the worker's own class); the
pass-through only skips the routing (no structure check, no hash, everything to one topic). They
alternate on the same input topic, each run with a fresh consumer group and fresh output topics,
and the figures are medians over the runs, so machine noise hits both sides alike.

    make up && .venv/bin/python bench/fraud_throughput.py [--records 1000000] [--runs 3]
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

from bench.common import produce_reviews, write_result
from streaming.core import review_bytes, source_position
from streaming.core.fraud import HashFraudModel
from streaming.settings import Settings
from streaming.workers.clients import LoopConfig
from streaming.workers.fraud_filter import FraudFilter, FraudTopics
from streaming.workers.process import StopFlag


class TimedFilter(FraudFilter):
    """The worker, stopping after `target` records and timing first record -> last commit."""

    target = 0
    first: float | None = None

    def process(self, msgs: list[Message]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        super().process(msgs)

    def tick(self) -> int:
        """Right after the loop counted the batch: stop at `target` (the loop ends the turn)."""
        if self.metrics.records_in >= self.target:
            self.stop.set()
        return super().tick()


class TimedPassThrough(TimedFilter):
    """Same loop, no routing: every record copied to one topic inside the transaction, with
    the source position header the fraud filter adds (the contract of its outputs)."""

    def process(self, msgs: list[Message]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        produce = self.producer.produce
        topic = self.topics.valid
        for msg in msgs:
            produce(
                topic,
                msg.value(),
                msg.key(),
                headers=source_position.replace(msg.headers(), msg.partition(), msg.offset()),  # type: ignore[arg-type]  # a consumed record's is set; invariant list (stub)
                timestamp=msg.timestamp()[1],
            )


def run_once(
    cls: type[TimedFilter],
    settings: Settings,
    admin: AdminClient,
    source: str,
    records: int,
    partitions: int,
) -> float:
    tag = uuid.uuid4().hex[:8]
    outs = [f"bench-{name}-{tag}" for name in ("valid", "fraud", "dlq")]
    for fut in admin.create_topics([NewTopic(t, partitions, 1) for t in outs]).values():
        fut.result(30)
    loop = LoopConfig(group_id=f"bench-{cls.__name__}-{tag}", instance=tag)
    topics = FraudTopics(input=source, valid=outs[0], fraud=outs[1], dead_letter=outs[2])
    worker = cls(settings, loop, topics, HashFraudModel(), StopFlag())
    worker.target = records
    review_bytes.warm_up()  # as a deployed instance, a warm spare, has before its first record
    worker.run()
    elapsed = time.perf_counter() - (worker.first or time.perf_counter())
    for fut in admin.delete_topics(outs).values():
        fut.result(30)
    return records / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    settings = Settings.from_env()
    admin = AdminClient(settings.kafka_config())
    source = f"bench-fraud-in-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(source, args.partitions, 1)])[source].result(30)
    try:
        print(f"producing {args.records:,} reviews into {source} ...", flush=True)
        produce_reviews(settings, source, args.records)
        passthrough, fraud = [], []
        for run in range(args.runs):
            passthrough.append(
                run_once(TimedPassThrough, settings, admin, source, args.records, args.partitions)
            )
            fraud.append(
                run_once(TimedFilter, settings, admin, source, args.records, args.partitions)
            )
            print(
                f"run {run + 1}: pass-through {passthrough[-1]:,.0f}/s, "
                f"fraud filter {fraud[-1]:,.0f}/s",
                flush=True,
            )
    finally:
        admin.delete_topics([source])[source].result(30)
    result = {
        "passthrough_eos_rps": round(statistics.median(passthrough)),
        "fraud_eos_rps": round(statistics.median(fraud)),
        "fraud_vs_passthrough": round(statistics.median(fraud) / statistics.median(passthrough), 3),
        "runs": args.runs,
        "records": args.records,
        "partitions": args.partitions,
    }
    print(json.dumps(result, indent=2))
    write_result("fraud", result, " ".join(["bench/fraud_throughput.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
