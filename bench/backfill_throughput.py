"""Backfill throughput: every review of a generated catalogue from the local Udemy-compatible API
into Kafka (Avro, acks=all, idempotent), against the walk alone (fetch and map, no Kafka) in the
same run, so the figures show what the source costs and what producing adds.

    make up && .venv/bin/python bench/backfill_throughput.py [--reviews 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result
from streaming.core.review_mapping import json_to_review
from streaming.ingest.backfill import backfill_all
from streaming.ingest.producer import ReviewProducer
from streaming.settings import Settings
from streaming.source.client import UdemyClient

ROOT = Path(__file__).resolve().parents[1]


def start_source(reviews: int, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "UDEMY_API_PORT": str(port),
        "SAMPLE_SIZE": str(reviews),
        "UDEMY_CLIENT_ID": "bench",
        "UDEMY_CLIENT_SECRET": "bench",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streaming.source.server"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api-2.0/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the source server exited")
        time.sleep(0.2)  # poll interval
    proc.kill()
    raise TimeoutError("source server not ready in 120 s")


def walk_only(client: UdemyClient, concurrency: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for course in client.iter_courses():
        for page in client.iter_pages(int(course["id"]), concurrency=concurrency):
            for item in page.results:
                json_to_review(item)
                n += 1
    return n, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=18010)
    args = parser.parse_args()
    settings = Settings.from_env()
    admin = AdminClient(settings.kafka_config())
    source = start_source(args.reviews, args.port)
    walks, backfills = [], []
    try:
        url = f"http://127.0.0.1:{args.port}/api-2.0"
        for run in range(args.runs):
            with UdemyClient(url, "bench", "bench") as client:
                n, seconds = walk_only(client, args.concurrency)
            walks.append(seconds)
            topic = f"bench-backfill-{uuid.uuid4().hex[:8]}"
            admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
            try:
                with UdemyClient(url, "bench", "bench") as client:
                    t0 = time.perf_counter()
                    results = backfill_all(
                        source_client=client,
                        producer=ReviewProducer(settings, topic=topic),
                        concurrency=args.concurrency,
                    )
                    backfills.append(time.perf_counter() - t0)
            finally:
                admin.delete_topics([topic])[topic].result(30)
            produced = sum(r.reviews for r in results)
            assert produced == n, (produced, n)
            print(
                f"run {run + 1}: walk only {seconds:.1f} s, backfill into Kafka "
                f"{backfills[-1]:.1f} s ({n:,} reviews)",
                flush=True,
            )
    finally:
        source.terminate()
        source.wait(30)
    scale = 1_000_000 / args.reviews
    result = {
        "backfill_1m_s": round(statistics.median(backfills) * scale, 1),
        "backfill_rps": round(args.reviews / statistics.median(backfills)),
        "source_walk_1m_s": round(statistics.median(walks) * scale, 1),
        "backfill_vs_walk": round(statistics.median(walks) / statistics.median(backfills), 3),
        "reviews": args.reviews,
        "runs": args.runs,
        "concurrency": args.concurrency,
    }
    print(json.dumps(result, indent=2))
    write_result("backfill", result, " ".join(["bench/backfill_throughput.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
