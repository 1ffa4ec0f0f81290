"""End-to-end latency: `POST /reviews` answered -> the course's row in PostgreSQL, at steady rates.

Each POSTed review belongs to a course of its own, so its course's `long_term_stats` row appears
exactly when this review has gone through the fraud filter, the aggregator and the JDBC sink
(fraud reviews too: a course's row exists from its first review, with zero counts). A poller
watches the table every 10 ms; latency = first seen - POST answered (wall clock, one machine).

    make up && .venv/bin/python bench/e2e_latency.py [--rates 100,1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result
from streaming.config import Settings


def review(review_id: int, course_id: int) -> dict:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "_class": "course_review",
        "id": review_id,
        "title": "",
        "content": "",
        "rating": random.choice([5.0, 5.0, 5.0, 4.5, 4.0]),
        "created": now,
        "modified": now,
        "user": {"_class": "user", "title": "Bench", "name": "Bench", "display_name": "Bench"},
        "course": {"_class": "course", "id": course_id, "title": "Bench", "url": "/bench/"},
    }


class Poller(threading.Thread):
    """Records when each course id in [lo, hi) first shows up in long_term_stats."""

    def __init__(self, engine: sa.Engine, lo: int, hi: int) -> None:
        super().__init__(daemon=True)
        self.engine, self.lo, self.hi = engine, lo, hi
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        query = sa.text(
            "select course_id from long_term_stats where course_id >= :lo and course_id < :hi"
        )
        floor = self.lo
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                now = time.time()
                for (cid,) in conn.execute(query, {"lo": floor, "hi": self.hi}):
                    self.seen.setdefault(cid, now)
                while floor in self.seen:
                    floor += 1
                conn.commit()
                time.sleep(0.01)  # the poll interval: the measurement's resolution


async def load(api_url: str, rate: int, seconds: float, ids: range, answered: dict) -> float:
    """POST at a steady rate (open loop); returns the achieved rate."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=api_url, timeout=30, limits=limits) as client:
        start = time.perf_counter()

        async def one(i: int, course_id: int) -> None:
            r = await client.post("/reviews", json=review(course_id, course_id))
            if r.status_code == 201:
                answered[course_id] = time.time()

        tasks = []
        for n, course_id in enumerate(ids):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n, course_id)))
            if n + 1 >= rate * seconds:
                break
        await asyncio.gather(*tasks)
        return len(tasks) / (time.perf_counter() - start)


def measure(settings: Settings, api_url: str, rate: int, seconds: float) -> dict:
    base = 2_000_000_000 + random.randrange(10**9)
    n = int(rate * seconds)
    engine = sa.create_engine(settings.database_url)
    poller = Poller(engine, base, base + n)
    poller.start()
    answered: dict[int, float] = {}
    achieved = asyncio.run(load(api_url, rate, seconds, range(base, base + n), answered))
    deadline = time.monotonic() + 60
    while len(poller.seen.keys() & answered.keys()) < len(answered) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the tail to arrive
    poller.stop.set()
    poller.join()
    engine.dispose()
    lat = sorted((poller.seen[c] - t) * 1000 for c, t in answered.items() if c in poller.seen)
    p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
    return {
        "rate": rate,
        "achieved_rps": round(achieved),
        "answered": len(answered),
        "missing": len(answered) - len(lat),
        "p50_ms": round(statistics.median(lat)) if lat else None,
        "p99_ms": round(p99) if lat else None,
        "max_ms": round(lat[-1]) if lat else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--api-url", default=os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    results = []
    for rate in (int(r) for r in args.rates.split(",")):
        res = measure(settings, args.api_url, rate, args.seconds)
        print(json.dumps(res), flush=True)
        results.append(res)
    figures = {f"e2e_{k}_at_{r['rate']}": r[k] for r in results for k in ("p50_ms", "p99_ms")}
    figures["runs"] = results
    write_result("e2e", figures, " ".join(["bench/e2e_latency.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
