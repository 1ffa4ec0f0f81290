"""End-to-end latency: `POST /reviews` answered -> the course's row in PostgreSQL, at steady rates.

Each POSTed review belongs to a course of its own, so its course's `long_term_stats` row appears
exactly when this review has gone through the fraud filter, the aggregator and the JDBC sink
(fraud reviews too: a course's row exists from its first review, with zero counts). A poller
watches the table every 10 ms; latency = first seen - POST answered (wall clock, one machine).

    make up && .venv/bin/python bench/e2e_latency.py [--rates 100,1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result
from streaming.api.auth import client_token_file
from streaming.pipeline import LONG_TERM_SINK
from streaming.settings import Settings

UNDEFINED_TABLE = "42P01"
"""PostgreSQL's SQLSTATE for a relation that does not exist."""


class Poller(threading.Thread):
    """Records when each course id in [lo, hi) first shows up in long_term_stats."""

    def __init__(self, engine: sa.Engine, lo: int, hi: int) -> None:
        super().__init__(daemon=True)
        self.engine, self.lo, self.hi = engine, lo, hi
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        query = sa.text(
            f"select course_id from {LONG_TERM_SINK.table}"
            " where course_id >= :lo and course_id < :hi"
        )
        floor = self.lo
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                now = time.time()
                try:
                    rows: Sequence[sa.Row[Any]] = conn.execute(
                        query, {"lo": floor, "hi": self.hi}
                    ).all()
                except sa.exc.ProgrammingError as exc:
                    if getattr(exc.orig, "pgcode", None) != UNDEFINED_TABLE:
                        raise
                    conn.rollback()
                    rows = []  # a fresh stack: the sink creates the table with its first row
                for (cid,) in rows:
                    self.seen.setdefault(cid, now)
                while floor in self.seen:
                    floor += 1
                conn.commit()
                time.sleep(0.01)  # the poll interval: the measurement's resolution


LUA = Path(__file__).with_name("e2e_load.lua")


def load(
    api_url: str, rate: int, count: int, base: int, connections: int
) -> tuple[dict[int, float], int]:
    """POST `count` reviews at `rate`/s with wrk; returns {id: answered epoch s} and failures."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does it)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answers"
        env = {
            **os.environ,
            "E2E_RATE": str(rate),
            "E2E_BASE": str(base),
            "E2E_COUNT": str(count),
            "E2E_OUT": str(out),
            "E2E_TOKEN_FILE": str(client_token_file()),  # its path: the value stays in the file
        }
        # wrk runs for its whole -d, even once the script stopped sending: the schedule plus
        # a margin for the last answers (those missing then are reported as unanswered)
        cap = int(count / rate) + 5
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{cap}s", "--timeout", "30s", "-s", str(LUA)]
        subprocess.run([*cmd, api_url], env=env, check=True, capture_output=True, text=True)
        answered: dict[int, float] = {}
        failures = 0
        for line in out.read_text().splitlines():
            key, value = line.split()
            if key == "!":
                failures += 1
            else:
                answered[int(key)] = float(value) / 1000
        return answered, failures


def measure(settings: Settings, api_url: str, rate: int, seconds: float, connections: int) -> dict:
    """One steady run; the first second is warm-up (connections, caches) and not counted."""
    base = 2_000_000_000 + random.randrange(10**9)
    n = int(rate * seconds)
    engine = sa.create_engine(settings.database_url)
    # wrk builds one request per thread that it never sends, so ids can run one past base + n
    poller = Poller(engine, base, base + n + 1)
    poller.start()
    answered, failures = load(api_url, rate, n, base, connections)
    deadline = time.monotonic() + 60
    while len(poller.seen.keys() & answered.keys()) < len(answered) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the tail to arrive
    poller.stop.set()
    poller.join()
    engine.dispose()
    times = sorted(answered.values())
    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    counted = {c: t for c, t in answered.items() if c >= base + rate}
    lat = sorted((poller.seen[c] - t) * 1000 for c, t in counted.items() if c in poller.seen)
    p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
    return {
        "rate": rate,
        "achieved_rps": round(achieved),
        "answered": len(answered),
        "failed": failures,
        "unanswered": n - len(answered) - failures,
        "missing": len(counted) - len(lat),
        "p50_ms": round(statistics.median(lat)) if lat else None,
        "p99_ms": round(p99) if lat else None,
        "max_ms": round(lat[-1]) if lat else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--api-url", default=os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    results = []
    for rate in (int(r) for r in args.rates.split(",")):
        res = measure(settings, args.api_url, rate, args.seconds, args.connections)
        print(json.dumps(res), flush=True)
        results.append(res)
    figures = {f"e2e_{k}_at_{r['rate']}": r[k] for r in results for k in ("p50_ms", "p99_ms")}
    figures["runs"] = results
    write_result("e2e", figures, " ".join(["bench/e2e_latency.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
