"""Recovery of one stream-worker instance after SIGKILL, on the running stack, with its partner
running and reviews (new ones and edits) flowing into `udemy-reviews` at a steady rate.

First instance 0's state is grown to `--state-reviews` reviews (1M: new reviews produced as
fast as the pipeline takes them; its /health `state_reviews` says when). Then for each of
`--kills` SIGKILLs of the aggregator's instance 0:
  recovery_s               kill -> that instance's first committed transaction (its /health:
                           a new pid, and its `first_commit_time`; both on this machine's clock)
  recovery_correct_stat_s  kill -> every one of `--probes` reviews posted just after the kill,
                           each for a course of its own, is in its course's statistic
                           (long-term-stats, read_committed)
Kills are at least `--spacing` s apart (longer than the supervisor's 10 s that resets its
back-off), so each measures a first crash, as a production restart policy sees it, and each
waits until the instance's warm spare reports its standby copies caught up
(`streaming.workers.standby`): `standby_ready_s` is how long after a restart that took (the
window in which a second crash restores from snapshots instead). `--no-standby-wait` kills on
the spacing alone, and `restored_from` counts what each restart restored from.
rebalance_s: instance 1 is held and stopped until instance 0 owns every partition, then let
back in under load: seconds until both committed after its return.

  .venv/bin/python -m bench.recovery [--kills 10] [--rate 1000] [--probes 20]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_reader, schemaless_writer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result
from stack import procs
from streaming.core.avro_codec import confluent_frame
from streaming.pipeline import AGGREGATOR, INPUT, LONG_TERM
from streaming.serde import Registry, local_schema
from streaming.settings import Settings
from streaming.workers.clients import LoopConfig
from streaming.workers.snapshots import SnapshotDir

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
T0_MS = int(time.time() * 1000)
PROBE_BASE = 10**10 + (T0_MS // 1000) % 10**7 * 10**4
"""Review and course ids of this run's probes (PROBE_BASE + kill * 100 + probe): new in every
run. A probe reusing an earlier run's review could be a version the fraud rule rejects after
one it rejected too: nothing to count, no statistic to wait for."""


def log(msg: str) -> None:
    print(f"[recovery] {msg}", flush=True)


def health(url: str) -> dict | None:
    try:
        body = httpx.get(url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def until(what: str, cond: Callable[[], object], timeout_s: float = 120) -> float:
    """Seconds until cond() holds (polled every 20 ms)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.02)  # poll interval
    return time.monotonic() - t0


class Feeder(threading.Thread):
    """Reviews at `rate`/s into udemy-reviews: new reviews, and every tenth an edit (a later
    version with another rating) of an earlier one."""

    def __init__(self, settings: Settings, rate: int, base: int) -> None:
        super().__init__(daemon=True, name="feeder")
        self.settings, self.rate, self.base = settings, rate, base
        registry = Registry(settings.schema_registry_url)
        self.schema_id = registry.register(f"{INPUT.name}-value", "review.avsc")
        self.schema = local_schema("review.avsc")
        self.producer = Producer(
            settings.kafka_config(**{"linger.ms": 5, "partitioner": "murmur2_random"})
        )
        self.stop = threading.Event()
        self.sent = 0

    def review(self, rid: int, course: int, rating: str, modified_ms: int) -> bytes:
        buf = io.BytesIO()
        record = {
            "id": rid,
            "title": None,
            "content": "",
            "rating": rating,
            "created": T0_MS,
            "modified": modified_ms,
            "user": {"title": f"S{rid}", "name": "S", "display_name": f"S{rid}"},
            "course": {"id": course, "title": f"Course {course}", "url": f"/c-{course}/"},
        }
        schemaless_writer(buf, self.schema, record)
        return confluent_frame(self.schema_id, buf.getvalue())

    def send(self, rid: int, course: int, rating: str, modified_ms: int) -> None:
        value = self.review(rid, course, rating, modified_ms)
        self.producer.produce(INPUT.name, value, str(rid).encode())

    def run(self) -> None:
        rng = random.Random(7)
        t0 = time.monotonic()
        while not self.stop.is_set():
            i = self.sent
            if i % 10 == 9 and i > 10:  # an edit of an earlier review: a retraction downstream
                rid = self.base + rng.randrange(i)
                self.send(rid, 2_000_000 + rid % 500, "1.0", T0_MS + 1000 + i)
            else:
                self.send(self.base + i, 2_000_000 + (self.base + i) % 500, "4.5", T0_MS + i)
            self.sent += 1
            self.producer.poll(0)
            ahead = self.sent / self.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)  # pacing the input rate
        self.producer.flush(30)


class StatWatcher(threading.Thread):
    """The courses seen in long-term-stats since it was created, read continuously."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="watcher")
        self.schema = local_schema("course_statistic.avsc")
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": f"bench-recovery-{os.getpid()}",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                }
            )
        )
        parts = self.consumer.list_topics(LONG_TERM.name, timeout=10).topics[LONG_TERM.name]
        # explicit end offsets, not OFFSET_END: that is resolved at the first fetch, which
        # may come after the probes' statistics were written
        ends = [
            self.consumer.get_watermark_offsets(TopicPartition(LONG_TERM.name, p), timeout=10)[1]
            for p in parts.partitions
        ]
        self.consumer.assign(
            [
                TopicPartition(LONG_TERM.name, p, end)
                for p, end in zip(parts.partitions, ends, strict=True)
            ]
        )
        self.seen: set[int] = set()

    def run(self) -> None:
        while True:
            self.poll()

    def poll(self) -> None:
        for m in self.consumer.consume(1000, timeout=0.2):
            if m.error() is None and m.value():
                body = m.value()[5:]  # type: ignore[index]  # not None: checked above
                record = cast("dict[str, Any]", schemaless_reader(io.BytesIO(body), self.schema))
                self.seen.add(int(record["course_id"]))


def preload(settings: Settings, url: str, target: int) -> int:
    """Grow instance 0's state to `target` reviews (new reviews, as fast as the pipeline
    takes them); its state size once it holds them."""
    until(
        "instance 0 committing",
        lambda: (h := health(url) or {}).get("status") == "ok" and "state_reviews" in h,
        timeout_s=300,
    )
    have = int((health(url) or {}).get("state_reviews") or 0)
    if have < target:
        owned = len([a for a in (health(url) or {}).get("assigned_partitions", []) if "valid" in a])
        meta = AdminClient(settings.kafka_config()).list_topics(INPUT.name, timeout=10)
        total = len(meta.topics[INPUT.name].partitions)
        n = (target - have) * total // max(owned, 1) * 21 // 20  # 5 % for an uneven spread
        log(f"preloading {n} reviews: instance 0 holds {have}, the target is {target}")
        loader = Feeder(settings, rate=1, base=10**12 + int(time.time()) * 10**6)
        for i in range(n):
            loader.send(loader.base + i, 3_000_000 + i % 20_000, "4.0", T0_MS)
            if i % 10_000 == 0:
                loader.producer.poll(0)
        loader.producer.flush(120)

    def loaded() -> bool:
        h = health(url) or {}
        return int(h.get("state_reviews") or 0) >= target and h.get("consumer_lag") == 0

    until(f"instance 0 holding {target} reviews", loaded, timeout_s=1800)
    return int((health(url) or {}).get("state_reviews") or 0)


def standby_ready(snapshots: SnapshotDir, name: str, instance: str) -> bool:
    """The instance's current warm spare has caught-up copies of what the instance owns."""
    note = snapshots.read_note(f"standby-{instance}")
    spare = procs.read_record(STATE, name).get("spare_pid")
    return note.get("ready") is True and spare is not None and note.get("pid") == spare


def kill_once(feeder: Feeder, watcher: StatWatcher, url: str, probes: int, n: int) -> tuple:
    h = health(url) or {}
    if h.get("status") != "ok":
        until(
            "instance 0 healthy before the kill", lambda: (health(url) or {}).get("status") == "ok"
        )
        h = health(url) or {}
    pid = procs.read_pid(STATE, f"{AGGREGATOR.name}-0")  # instance 0's (/health shows none)
    if pid is None:
        raise SystemExit("instance 0 has no process to kill (is the stack up?)")
    wall, t0 = time.time(), time.monotonic()
    os.kill(pid, signal.SIGKILL)
    courses = [PROBE_BASE + n * 100 + k for k in range(probes)]
    for course in courses:  # a new review of a new course each: its statistic is news
        feeder.send(course, course, "5.0", int(wall * 1000))
    feeder.producer.flush(10)

    first: list[float] = []

    def committed() -> bool:
        b = health(url) or {}
        if b.get("incarnation") in (None, h.get("incarnation")):
            return False  # the killed process's answer, or none
        if (b.get("first_commit_time") or 0) <= wall:
            return False
        first.append(float(b["first_commit_time"]))
        return True

    def stats_in() -> bool:
        return all(c in watcher.seen for c in courses)

    until("first commit after the kill", committed)
    recovered = first[0] - wall  # as the worker clocked it: not when a poll saw it
    until("the probes' statistics", stats_in)
    sources = {
        kind["source"]
        for parts in ((health(url) or {}).get("restored_from") or {}).values()
        for kind in parts.values()
    }
    return recovered, time.monotonic() - t0, "+".join(sorted(sources))


def rebalance(url0: str, url1: str) -> float:
    """Hold and stop instance 1 until instance 0 owns every partition; let it back in."""
    name = f"{AGGREGATOR.name}-1"
    procs.hold(STATE, name, "bench.recovery: rebalance")
    pid = procs.read_pid(STATE, name)
    if pid is not None:
        procs.terminate(pid, 30)
    until(
        "instance 0 owning every partition",
        lambda: len((health(url0) or {}).get("assigned_partitions", [])) == 12,
        timeout_s=90,
    )
    wall, t0 = time.time(), time.monotonic()
    procs.release(STATE, name)

    def both() -> bool:
        return all(((health(u) or {}).get("last_commit_time") or 0) > wall for u in (url0, url1))

    until("both instances committing", both)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="input reviews per second")
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=15.0, help="seconds between kills")
    parser.add_argument(
        "--state-reviews", type=int, default=1_000_000, help="state held by the killed instance"
    )
    parser.add_argument(
        "--no-standby-wait",
        action="store_true",
        help="kill on the spacing alone, ready standby copies or not",
    )
    args = parser.parse_args()
    if args.probes > 100:
        parser.error("--probes: at most 100 (the probes' ids leave room for 100 per kill)")
    settings = Settings.from_env()
    url0, url1 = AGGREGATOR.health_url(0), AGGREGATOR.health_url(1)
    if AGGREGATOR.instance_count() < 2 or health(url1) is None:
        raise SystemExit("bench.recovery needs two aggregator instances running (make up)")
    state_reviews = preload(settings, url0, args.state_reviews)
    feeder = Feeder(settings, args.rate, base=int(time.time()) * 1000)
    watcher = StatWatcher(settings)
    watcher.start()
    feeder.start()
    recoveries, stats, ready_waits, sources = [], [], [], []
    name, instance = f"{AGGREGATOR.name}-0", LoopConfig.from_env(AGGREGATOR).group_id + "-0"
    snapshots = SnapshotDir.from_env(LoopConfig.from_env(AGGREGATOR).group_id)
    killed_at = time.time()
    try:
        for n in range(args.kills):
            started = time.monotonic()
            if not args.no_standby_wait:
                until(
                    "the standby copies caught up",
                    lambda: standby_ready(snapshots, name, instance),
                    timeout_s=300,
                )
                if n:  # when the spare that replaced the last one said it was ready
                    at = float(snapshots.read_note(f"standby-{instance}")["at"])
                    ready_waits.append(at - killed_at)
            killed_at = time.time()
            rec, stat, source = kill_once(feeder, watcher, url0, args.probes, n)
            recoveries.append(rec)
            stats.append(stat)
            sources.append(source)
            log(
                f"kill {n + 1}: first commit {rec:.2f} s, probes' statistics {stat:.2f} s "
                f"(restored from {source})"
            )
            while time.monotonic() - started < args.spacing:
                time.sleep(0.2)  # pacing the kills
        rebalance_s = rebalance(url0, url1)
        log(f"rebalance: both committing {rebalance_s:.2f} s after instance 1 came back")
    finally:
        feeder.stop.set()
        feeder.join(30)
    figures = {
        "recovery_s": round(statistics.median(recoveries), 2),
        "recovery_max_s": round(max(recoveries), 2),
        "recovery_correct_stat_s": round(statistics.median(stats), 2),
        "recovery_correct_stat_max_s": round(max(stats), 2),
        "recovery_kills": len(recoveries),
        "restored_from": {k: sources.count(k) for k in sorted(set(sources))},
        "standby_ready_s": round(statistics.median(ready_waits), 2) if ready_waits else None,
        "standby_ready_max_s": round(max(ready_waits), 2) if ready_waits else None,
        "rebalance_s": round(rebalance_s, 2),
        "input_rps": args.rate,
        "killed_instance_state_reviews": state_reviews,
    }
    log(str(figures))
    write_result("recovery", figures, f"make bench BENCH_ARGS='--only recovery' ({args})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
