"""Restore of the aggregator's state for 1M reviews, cold (the whole changelog) and warm (the
local snapshot and the changelog's tail after it), through the worker's own stores.

The state is built by the aggregator's two pure stages from `--reviews` versions (new reviews,
and every fifth an edit of an earlier one, as in the aggregate benchmarks' input: a re-rating,
a verdict flip, a move to another course, or a stale version that loses), over 2,000 courses
and two years of creation days; their changelog entries go into two fresh 2-partition topics
(the share of one instance of two over 4 partitions). Then, per run:
  restore_cold_1m_s  both stores, every partition, from their whole changelogs (no snapshot),
                     the two stores side by side as the worker restores them;
  restore_warm_1m_s  the same from the snapshots taken at `--tail` records before the end
                     (the tail read and applied on top).
Each restored state is compared with the live one it was logged from.

  .venv/bin/python -m bench.restore [--reviews 1000000] [--runs 3] [--tail 10000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from confluent_kafka import Producer, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result
from streaming.core.aggregation import CourseState, VersionsState
from streaming.core.stats import ReviewVersion
from streaming.core.window import MS_PER_DAY
from streaming.settings import Settings
from streaming.workers.snapshots import ChangelogIdentity, SnapshotDir, SnapshotHeader
from streaming.workers.state import ChangelogStore

PARTITIONS = 2
DAY = 20_700
Log = list[tuple[bytes, bytes | None]]


def log(msg: str) -> None:
    print(f"[restore] {msg}", flush=True)


def build(n: int, tail: int) -> tuple[list, list, list[Log], list[Log]]:
    """Live states per partition, their snapshot bytes at `tail` versions before the end, and
    the changelog entries of each partition."""
    rng = random.Random(3)
    versions = [VersionsState() for _ in range(PARTITIONS)]
    courses = [CourseState(DAY) for _ in range(PARTITIONS)]
    vlogs: list[Log] = [[] for _ in range(PARTITIONS)]
    clogs: list[Log] = [[] for _ in range(PARTITIONS)]
    snaps: list = []
    batches: list[list[tuple[int, bytes]]] = [[] for _ in range(PARTITIONS)]
    seen = 0
    total = n * 5 // 4  # every fifth an edit: n distinct reviews
    for i in range(total):
        if i % 5 == 4:
            rid = rng.randrange(seen)
        else:
            rid, seen = seen, seen + 1
        course = rng.randrange(2000) if i % 30 == 29 else rid % 2000
        version = ReviewVersion(
            i,
            (DAY - rng.randrange(730)) * MS_PER_DAY + rng.randrange(MS_PER_DAY),
            rng.randint(1, 10),
            rng.random() > 0.1,
            course,
            i,
        )
        p = rid % PARTITIONS
        routed, entry = versions[p].apply(rid, version, b"Course %d" % course)
        if entry is not None:
            vlogs[p].append((str(rid).encode(), entry))
        for course_id, change in routed:
            batches[course_id % PARTITIONS].append((course_id, change))
        if i % 5000 == 4999 or i == total - 1:
            for q, batch in enumerate(batches):
                _, entries, errors = courses[q].apply(batch)
                assert not errors
                clogs[q].extend(entries.items())
                batch.clear()
        if i == total - tail - 1:
            snaps = [
                (v.to_snapshot(), len(vlogs[p]), c.to_snapshot(), len(clogs[p]))
                for p, (v, c) in enumerate(zip(versions, courses, strict=True))
            ]
    return [versions, courses], snaps, vlogs, clogs


def produce(settings: Settings, topic: str, logs: list[Log]) -> None:
    producer = Producer(
        settings.kafka_config(
            **{"linger.ms": 20, "enable.idempotence": True, "queue.buffering.max.messages": 500_000}
        )
    )
    for p, entries in enumerate(logs):
        for key, value in entries:
            while True:
                try:
                    producer.produce(topic, value, key, p)
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
    assert producer.flush(120) == 0


def restore(settings: Settings, stores: list[ChangelogStore]) -> float:
    """Both stores, every partition, side by side (as `StoreManager.release`); seconds."""
    for store in stores:
        store.partitions.clear()
    t0 = time.monotonic()
    group = f"bench-restore-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(len(stores)) as pool:
        jobs = [
            pool.submit(store.restore_partitions, settings, list(range(PARTITIONS)), group)
            for store in stores
        ]
        for job in jobs:
            job.result()
    return time.monotonic() - t0


def check(stores: list[ChangelogStore], live: list) -> None:
    versions, courses = live
    for p in range(PARTITIONS):
        assert stores[0].partitions[p].as_dict() == versions[p].as_dict()
        got, want = stores[1].partitions[p], courses[p]
        assert got.courses.keys() == want.courses.keys()
        for course_id in want.courses:
            assert got.statistics(course_id, 0) == want.statistics(course_id, 0), course_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tail", type=int, default=10_000, help="versions after the snapshot")
    args = parser.parse_args()
    settings = Settings.from_env()
    t0 = time.monotonic()
    live, snaps, vlogs, clogs = build(args.reviews, args.tail)
    log(f"built the state of {args.reviews:,} reviews in {time.monotonic() - t0:.1f} s")
    admin = AdminClient(settings.kafka_config())
    suffix = uuid.uuid4().hex[:8]
    topics = [f"bench-restore-versions-{suffix}", f"bench-restore-courses-{suffix}"]
    for fut in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        fut.result(30)
    try:
        produce(settings, topics[0], vlogs)
        produce(settings, topics[1], clogs)
        described = admin.describe_topics(TopicCollection(topics))
        ids = {t: str(described[t].result(30).topic_id) for t in topics}
        with tempfile.TemporaryDirectory() as tmp:
            snapshots = SnapshotDir(Path(tmp), "bench")
            stores: list[ChangelogStore] = [
                ChangelogStore(
                    name,
                    topic,
                    (),
                    factory,
                    loader,
                    snapshots=snapshots,
                    identity=ChangelogIdentity(ids[topic], PARTITIONS, 86_400_000),
                )
                for name, topic, factory, loader in (
                    ("review-versions", topics[0], VersionsState, VersionsState.from_snapshot),
                    (
                        "course-stats",
                        topics[1],
                        lambda: CourseState(DAY),
                        lambda data: CourseState.from_snapshot(data, DAY),
                    ),
                )
            ]
            cold, warm = [], []
            for run in range(args.runs):
                for p in range(PARTITIONS):
                    snapshots.discard(topics[0], p)
                    snapshots.discard(topics[1], p)
                cold.append(restore(settings, stores))
                check(stores, live)
                assert {s for st in stores for s, _ in st.restored_from.values()} == {"changelog"}
                for p, (vdata, vn, cdata, cn) in enumerate(snaps):
                    for topic, data, offset in ((topics[0], vdata, vn), (topics[1], cdata, cn)):
                        header = SnapshotHeader(
                            "bench",
                            topic,
                            ids[topic],
                            PARTITIONS,
                            p,
                            offset,
                            int(time.time() * 1000),
                        )
                        snapshots.write(header, data)
                warm.append(restore(settings, stores))
                check(stores, live)
                assert {s for st in stores for s, _ in st.restored_from.values()} == {"snapshot"}
                log(f"run {run + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s")
    finally:
        for fut in admin.delete_topics(topics).values():
            fut.result(30)
    records = sum(map(len, vlogs)) + sum(map(len, clogs))
    tail = sum(len(v) - s[1] + len(c) - s[3] for v, c, s in zip(vlogs, clogs, snaps, strict=True))
    figures = {
        "restore_cold_1m_s": round(statistics.median(cold), 2),
        "restore_warm_1m_s": round(statistics.median(warm), 2),
        "restore_runs": args.runs,
        "changelog_records": records,
        "warm_tail_records": tail,
        "reviews": args.reviews,
    }
    log(str(figures))
    write_result("restore", figures, f"make bench BENCH_ARGS='--only restore' ({args})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
