"""End-to-end latency: `POST /reviews` answered -> the course's row in PostgreSQL, at steady rates,
with the time to each hop on the way.

Each POSTed review belongs to a course of its own, so its course's `long_term_stats` row appears
exactly when this review has gone through the fraud filter, the aggregator and the JDBC sink
(fraud reviews too: a course's row exists from its first review, with zero counts). A trigger
notifies each row as its transaction commits; latency = row notified - POST answered (wall
clock, one machine).
The breakdown: a read_committed consumer of each hop's output records when the review (or its
course) first becomes visible there, i.e. when that hop's transaction committed (plus a fetch):
the input (the API's produce), the valid or fraud topic (the fraud filter), the changes topic
(the aggregator's first stage), `long-term-stats` (its second stage), then the row (the sink).

    make up && .venv/bin/python bench/e2e_latency.py [--rates 100,1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import own_course_review, write_result
from streaming.api.auth import client_token_file
from streaming.ingest.producer import ReviewProducer
from streaming.pipeline import CHANGES, FRAUD, INPUT, LONG_TERM, LONG_TERM_SINK, VALID
from streaming.settings import Settings

UNDEFINED_TABLE = "42P01"
"""PostgreSQL's SQLSTATE for a relation that does not exist."""
POLL_S = 0.5
"""How often to look for the sink's table on a fresh stack (its rows are then notified)."""
HOPS: dict[str, tuple[str, ...]] = {
    "input": (INPUT.name,),
    "fraud_filter": (VALID.name, FRAUD.name),
    "versions_stage": (CHANGES.name,),
    "course_stage": (LONG_TERM.name,),
}
"""Each hop and the topics its committed output lands in (keyed by the review or course id,
the same number in this load)."""
PERCENTILES = (50, 99)
KEYLESS_SHARE = 0.1
"""The share of the load another producer writes with no key (the re-keying path)."""


class HopWatcher(threading.Thread):
    """Records when each id in [lo, hi) first becomes visible (read_committed) on each hop."""

    def __init__(
        self, settings: Settings, lo: int, hi: int, hops: dict[str, tuple[str, ...]]
    ) -> None:
        super().__init__(daemon=True)
        self.lo, self.hi = lo, hi
        self.seen: dict[str, dict[int, float]] = {hop: {} for hop in hops}
        self.hop_of = {topic: hop for hop, topics in hops.items() for topic in topics}
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": f"bench-e2e-{lo}",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    # the broker answers a fetch as soon as a record is committed; this only
                    # bounds an idle fetch, so the watcher adds no wait of its own
                    "fetch.wait.max.ms": 100,
                }
            )
        )

    def run(self) -> None:
        consumer = self.consumer
        try:
            consumer.assign(self._ends())
            self.ready.set()  # positioned before the load: nothing of it missed
            while not self.stop.is_set():
                self._take(consumer.consume(1000, timeout=0.05))
        finally:
            consumer.close()

    def _ends(self) -> list[TopicPartition]:
        """Every partition of the hops' topics at its current end."""
        out = []
        for topic in self.hop_of:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
                out.append(TopicPartition(topic, p, high))
        return out

    def _take(self, msgs: list) -> None:
        now = time.time()
        for m in msgs:
            if m.error() is not None or m.key() is None:
                continue
            try:
                key = int(m.key())
            except ValueError:
                continue
            if self.lo <= key < self.hi:
                self.seen[self.hop_of[m.topic()]].setdefault(key, now)


def percentiles(values: list[float]) -> dict[str, int | None]:
    """p50, p99 and max of `values` (ms), rounded; None for no values."""
    ordered = sorted(values)
    out: dict[str, int | None] = {}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = round(ordered[int(p / 100 * (len(ordered) - 1))]) if ordered else None
    out["max_ms"] = round(ordered[-1]) if ordered else None
    return out


class KeylessLoad(threading.Thread):
    """Another producer's share of the load: reviews written straight to udemy-reviews with no
    key (as the original Java producer writes), paced at `rate`/s, each of a course of its own;
    records when the broker acknowledged each (its "answer")."""

    def __init__(self, settings: Settings, rate: float, ids: range) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate, self.ids = settings, rate, ids
        self.acked: dict[int, float] = {}
        self.failed = 0

    def run(self) -> None:
        producer = ReviewProducer(self.settings, INPUT.name, **{"linger.ms": 1})

        def delivered(err: KafkaError | None, msg: Message, *, review_id: int) -> None:
            if err is None:
                self.acked[review_id] = time.time()
            else:
                self.failed += 1

        start = time.monotonic()
        for k, review_id in enumerate(self.ids):
            due = start + k / self.rate
            while (now := time.monotonic()) < due:
                producer.poll(min(due - now, 0.002))
            now_ms = int(time.time() * 1000)
            value = producer.encode(own_course_review(review_id, now_ms, "4.5"))
            producer.producer.produce(
                INPUT.name,
                value,
                None,
                on_delivery=functools.partial(delivered, review_id=review_id),
            )
            producer.poll(0)
        producer.flush(30)


class RowWatcher(threading.Thread):
    """Records when each course id in [lo, hi) first shows up in `table` (long_term_stats).

    Not a poller: a trigger on the table (installed for the run, dropped after) notifies the
    course id when its row is inserted, and PostgreSQL delivers it when the sink's transaction
    commits, i.e. when the row becomes visible. A poller's resolution is its interval and its
    cost grows with the rows already there; this one is the notification's delivery (well
    under a millisecond here) at a cost per new row. Until the sink has created its table (a
    fresh stack) it looks for it every POLL_S, then reads the rows the trigger missed once.
    `error`: why it stopped watching, when it could not (`measure` stops with it)."""

    def __init__(self, engine: sa.Engine, lo: int, hi: int, table: str) -> None:
        super().__init__(daemon=True)
        self.engine, self.lo, self.hi, self.table = engine, lo, hi, table
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.channel = f"bench_e2e_{lo}"
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._watch()
        except (sa.exc.SQLAlchemyError, psycopg2.Error) as exc:  # e.g. no TRIGGER privilege
            self.error = f"{type(exc).__name__}: {exc}".strip()
        finally:
            self.ready.set()

    def _watch(self) -> None:
        raw = self.engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None  # a pooled connection just checked out
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {self.channel}")
                installed = self._install(cur)
                self.ready.set()  # installed before the load, or the catch-up reads the first
                while not self.stop.is_set() and not installed:
                    time.sleep(POLL_S)  # the sink creates the table with its first row
                    installed = self._install(cur)
                if self.stop.is_set():
                    return
                try:
                    self._catch_up(cur)
                    self._listen(conn)
                finally:
                    cur.execute(f"DROP TRIGGER IF EXISTS {self.channel} ON {self.table}")
                    cur.execute(f"DROP FUNCTION {self.channel}()")
        finally:
            raw.close()

    def _install(self, cur: Any) -> bool:
        """The trigger on the table; False while the table does not exist."""
        cur.execute(
            f"""CREATE OR REPLACE FUNCTION {self.channel}() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN
              IF NEW.course_id >= {self.lo} AND NEW.course_id < {self.hi} THEN
                PERFORM pg_notify('{self.channel}', NEW.course_id::text);
              END IF;
              RETURN NULL;
            END $$"""
        )
        try:
            cur.execute(
                f"CREATE TRIGGER {self.channel} AFTER INSERT ON {self.table} "
                f"FOR EACH ROW EXECUTE FUNCTION {self.channel}()"
            )
        except psycopg2.errors.UndefinedTable:  # the sink has not created it yet
            return False
        return True

    def _catch_up(self, cur: Any) -> None:
        """Rows committed before the trigger was there (a fresh stack only)."""
        now = time.time()
        cur.execute(
            f"SELECT course_id FROM {self.table} WHERE course_id >= %s AND course_id < %s",
            (self.lo, self.hi),
        )
        for (cid,) in cur.fetchall():
            self.seen.setdefault(cid, now)

    def _listen(self, conn: Any) -> None:
        while not self.stop.is_set():
            if not select.select([conn], [], [], 0.1)[0]:
                continue
            conn.poll()
            now = time.time()
            for note in conn.notifies:
                self.seen.setdefault(int(note.payload), now)
            conn.notifies.clear()


LUA = Path(__file__).with_name("e2e_load.lua")


def load(
    api_url: str, rate: float, count: int, base: int, connections: int
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


PRELOAD_REVIEW_BASE = 5 * 10**12
PRELOAD_COURSE_BASE = 4 * 10**12
"""The reserved id ranges of the preloaded reviews and their courses (above every other load)."""


def preloaded_courses(engine: sa.Engine, courses: int) -> int:
    """How many of the preload's courses have their statistics row."""
    query = sa.text(
        f"select count(*) from {LONG_TERM_SINK.table} where course_id >= :lo and course_id < :hi"
    )
    with engine.connect() as conn:
        try:
            lo, hi = PRELOAD_COURSE_BASE, PRELOAD_COURSE_BASE + courses
            return int(conn.execute(query, {"lo": lo, "hi": hi}).scalar_one())
        except sa.exc.ProgrammingError as exc:
            if getattr(exc.orig, "pgcode", None) != UNDEFINED_TABLE:
                raise
            return 0


def preload(settings: Settings, reviews: int, courses: int, timeout_s: float = 1800) -> float:
    """Make the stack hold `reviews` reviews over `courses` courses (written keyed, as fast as
    the broker takes them, unless an earlier preload's are all there) and wait until every
    course has its row: the sustained step runs on a full stack, not an empty one. Returns
    the seconds it took (0 when they were there)."""
    engine = sa.create_engine(settings.database_url)
    started = time.monotonic()
    try:
        if preloaded_courses(engine, courses) == courses:
            return 0.0
        producer = ReviewProducer(settings, INPUT.name, **{"linger.ms": 20})
        created = int(time.time() * 1000) - 86_400_000
        for i in range(reviews):
            review_id, course = PRELOAD_REVIEW_BASE + i, PRELOAD_COURSE_BASE + i % courses
            rating = ("5.0", "4.5", "4.0", "3.0", "1.5")[i % 5]
            review = own_course_review(review_id, created + i, rating, course)
            while True:
                try:
                    producer.produce(review)
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 10_000 == 0:
                producer.poll(0)
        if producer.flush(120):
            raise SystemExit("the preload was not acknowledged in 120 s")
        deadline = time.monotonic() + timeout_s
        while preloaded_courses(engine, courses) < courses:
            if time.monotonic() > deadline:
                raise SystemExit(f"the preload's {courses} courses not all in {timeout_s:.0f} s")
            time.sleep(2)  # the poll interval of a wait of minutes
        return time.monotonic() - started
    finally:
        engine.dispose()


def measure(
    settings: Settings,
    api_url: str,
    rate: int,
    seconds: float,
    connections: int,
    table: str = LONG_TERM_SINK.table,
    hops: dict[str, tuple[str, ...]] = HOPS,
    keyless_share: float = KEYLESS_SHARE,
) -> dict:
    """One steady run of `rate` reviews/s: `keyless_share` of them written with no key by
    another producer, the rest POSTed. The first second is warm-up (connections, caches) and
    not counted. `table` and `hops`: where the pipeline under test lands (ours by default)."""
    base = 2_000_000_000 + random.randrange(10**9)
    keyless_rate = rate * keyless_share
    n = round((rate - keyless_rate) * seconds)
    # wrk builds one request per thread that it never sends, so ids can run one past base + n
    keyless_ids = range(base + n + 1, base + n + 1 + round(keyless_rate * seconds))
    engine = sa.create_engine(settings.database_url)
    rows = RowWatcher(engine, base, keyless_ids.stop, table)
    watcher = HopWatcher(settings, base, keyless_ids.stop, hops)
    watcher.start()
    if not watcher.ready.wait(30):
        raise SystemExit("the hop watcher could not position itself on the topics in 30 s")
    rows.start()
    if not rows.ready.wait(30) or rows.error:
        raise SystemExit(f"could not watch {table}: {rows.error or 'no answer in 30 s'}")
    keyless = KeylessLoad(settings, keyless_rate, keyless_ids)
    if keyless_ids:
        keyless.start()
    answered, failures = load(api_url, rate - keyless_rate, n, base, connections)
    if keyless_ids:
        keyless.join()
    answered.update(keyless.acked)
    deadline = time.monotonic() + 60
    while len(rows.seen.keys() & answered.keys()) < len(answered) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the tail to arrive
    for thread in (rows, watcher):
        thread.stop.set()
        thread.join()
    if rows.error:  # it stopped watching mid-run: its rows would read as missing
        raise SystemExit(f"stopped watching {table}: {rows.error}")
    engine.dispose()
    times = sorted(answered.values())
    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    counted = {c: t for c, t in answered.items() if t >= times[0] + 1} if times else {}
    lat = [(rows.seen[c] - t) * 1000 for c, t in counted.items() if c in rows.seen]
    breakdown = {
        hop: percentiles([(seen[c] - t) * 1000 for c, t in counted.items() if c in seen])
        for hop, seen in watcher.seen.items()
    }
    breakdown["row"] = percentiles(lat)
    minutes: dict[int, list[float]] = {}
    for c, t in counted.items():
        if c in rows.seen:
            minutes.setdefault(int((t - times[0]) // 60), []).append((rows.seen[c] - t) * 1000)
    breakdown["row_keyless"] = percentiles(
        [
            (rows.seen[c] - t) * 1000
            for c, t in counted.items()
            if c in rows.seen and c in keyless_ids
        ]
    )
    return {
        "rate": rate,
        "achieved_rps": round(achieved),
        "answered": len(answered),
        "failed": failures + keyless.failed,
        "unanswered": n + len(keyless_ids) - len(answered) - failures - keyless.failed,
        "missing": len(counted) - len(lat),
        **percentiles(lat),
        "breakdown": breakdown,
        "p99_ms_by_minute": [percentiles(minutes[m])["p99_ms"] for m in sorted(minutes)],
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
