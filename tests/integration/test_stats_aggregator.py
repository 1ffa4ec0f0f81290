"""The stats aggregator on the real stack, checked against an independent pandas computation."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition

from streaming.core.window import MS_PER_DAY, day_to_date, epoch_day
from streaming.serde import Registry, decode, local_schema
from streaming.workers.eos import LoopConfig
from streaming.workers.runtime import StopFlag
from streaming.workers.stats_aggregator import AggregatorTopics, StatsAggregator
from tests.integration.kafka_helpers import (
    delete_topics,
    encode_review,
    make_topics,
    producer,
    read_all,
    worker_process,
)

pytestmark = pytest.mark.integration
MODULE = "streaming.workers.stats_aggregator"
RATINGS = ["5.0"] * 6 + ["4.5", "4.0", "3.5", "3.0", "2.0", "1.5", "1.0", "0.5"]
STAT = local_schema("course_statistic.avsc")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def topics(admin):
    names = ["valid", "fraud", "long", "recent", "repartition", "changelog", "dlq"]
    t = make_topics(admin, "agg", names)
    yield t
    delete_topics(admin, list(t.values()))


@pytest.fixture(scope="module")
def schema_id(settings) -> int:
    return Registry(settings.schema_registry_url).register("udemy-reviews-value", "review.avsc")


def env_for(topics: dict[str, str], group: str, instance: str = "0", **extra: str) -> dict:
    return {
        "STATS_VALID_TOPIC": topics["valid"],
        "STATS_FRAUD_TOPIC": topics["fraud"],
        "STATS_LONG_TERM_TOPIC": topics["long"],
        "STATS_RECENT_TOPIC": topics["recent"],
        "STATS_REPARTITION_TOPIC": topics["repartition"],
        "STATS_CHANGELOG_TOPIC": topics["changelog"],
        "DEAD_LETTER_TOPIC": topics["dlq"],
        "AGGREGATOR_GROUP_ID": group,
        "WORKER_INSTANCE": instance,
        **extra,
    }


def history(n_reviews: int, now_ms: int, seed: int = 1) -> list[tuple[str, dict]]:
    """Versions in arrival order: new reviews, edits (rating changes, verdict flips), stale
    re-sends, exact duplicates; created over 200 days, so many are older than the 90-day window.
    """
    rng = random.Random(seed)
    out: list[tuple[str, dict]] = []
    latest: dict[int, tuple[str, dict]] = {}
    for i in range(n_reviews):
        course = 500 + rng.randrange(12)
        created = now_ms - rng.randrange(200 * MS_PER_DAY)
        rec = {
            "id": 900_000 + i,
            "title": None,
            "content": "",
            "rating": rng.choice(RATINGS),
            "created": created,
            "modified": created,
            "user": {"title": "U", "name": "U", "display_name": "U"},
            "course": {"id": course, "title": f"Course {course}", "url": f"/c{course}/"},
        }
        kind = "fraud" if rng.random() < 0.05 else "valid"
        out.append((kind, rec))
        latest[rec["id"]] = (kind, rec)
    firsts = list(latest.values())
    for _kind, rec in rng.sample(firsts, n_reviews // 3):  # edits
        edit = {**rec, "modified": rec["modified"] + rng.randrange(1, 10**8)}
        if rng.random() < 0.6:
            edit["rating"] = rng.choice(RATINGS)
        kind = "fraud" if rng.random() < 0.15 else "valid"  # some flip either way
        out.append((kind, edit))
    for kind, rec in rng.sample(firsts, n_reviews // 10):  # stale re-sends of first versions
        out.append((kind, rec))
    out.extend(rng.sample(out, n_reviews // 20))  # exact duplicates
    return out


def expected_stats(versions: list[tuple[str, dict]], as_of_day: int) -> pd.DataFrame:
    """Independent computation: pandas over current versions (max modified, later arrival)."""
    df = pd.DataFrame(
        [
            {
                "arrival": n,
                "id": r["id"],
                "course_id": r["course"]["id"],
                "valid": kind == "valid",
                "halves": int(float(r["rating"]) * 2),
                "created": r["created"],
                "modified": r["modified"],
            }
            for n, (kind, r) in enumerate(versions)
        ]
    )
    current = df.sort_values(["modified", "arrival"]).groupby("id").tail(1)
    counted = current[current.valid].copy()
    counted["day"] = counted.created // MS_PER_DAY
    rows = []
    for recent in (False, True):
        part = counted[counted.day.between(as_of_day - 89, as_of_day)] if recent else counted
        for course_id in df.course_id.unique():
            c = part[part.course_id == course_id]
            stars = c.halves // 2
            rows.append(
                {
                    "recent": recent,
                    "course_id": int(course_id),
                    "count_reviews": len(c),
                    "sum_rating": c.halves.sum() / 2,
                    "count_five_stars": int((stars == 5).sum()),
                    "count_four_stars": int((stars == 4).sum()),
                    "count_three_stars": int((stars == 3).sum()),
                    "count_two_stars": int((stars == 2).sum()),
                    "count_one_star": int((stars == 1).sum()),
                    "count_zero_star": int((stars == 0).sum()),
                    "last_review_time": int(c.created.max()) if len(c) else 0,
                }
            )
    return pd.DataFrame(rows).set_index(["recent", "course_id"]).sort_index()


FIELDS = [
    "course_id",
    "count_reviews",
    "sum_rating",
    "count_five_stars",
    "count_four_stars",
    "count_three_stars",
    "count_two_stars",
    "count_one_star",
    "count_zero_star",
    "last_review_time",
]


def stream_stats(settings, topics) -> pd.DataFrame:
    """The latest long-term and recent record of every course, as the sink would keep them."""
    registry = Registry(settings.schema_registry_url)
    rows = []
    for recent, topic in ((False, topics["long"]), (True, topics["recent"])):
        latest = {}
        for m in read_all(settings, topic):
            latest[m.key()] = decode(registry, m.value(), STAT)
        for rec in latest.values():
            count = rec["count_reviews"]
            assert rec["average_rating"] == (rec["sum_rating"] / count if count else 0.0)
            rec["last_review_time"] = (rec["last_review_time"] - EPOCH) // timedelta(milliseconds=1)
            rows.append({"recent": recent, **{k: rec[k] for k in FIELDS}})
    frame = pd.DataFrame(rows, columns=["recent", *FIELDS])
    return frame.set_index(["recent", "course_id"]).sort_index()


def low_watermarks(settings, topic: str) -> list[int]:
    c = Consumer(settings.kafka_config(**{"group.id": f"probe-{uuid.uuid4().hex}"}))
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in range(4)]
    finally:
        c.close()


def feed(settings, topics, schema_id, versions) -> None:
    p = producer(settings)
    for kind, rec in versions:
        produce_all_one(p, topics[kind], str(rec["id"]).encode(), encode_review(schema_id, rec))
    assert p.flush(60) == 0


def produce_all_one(p, topic, key, value) -> None:
    while True:
        try:
            p.produce(topic, value, key)
            return
        except BufferError:
            p.poll(0.1)


def wait_for(expected: pd.DataFrame, settings, topics, timeout_s: float = 120) -> pd.DataFrame:
    deadline = time.monotonic() + timeout_s
    while True:
        got = stream_stats(settings, topics)
        if (len(got) == len(expected) and got.equals(expected)) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)  # poll interval


def test_statistics_equal_an_independent_computation(settings, topics, schema_id, tmp_path):
    now_ms = int(time.time() * 1000)
    versions = history(3000, now_ms)
    feed(settings, topics, schema_id, versions)
    expected = expected_stats(versions, epoch_day(now_ms))
    env = env_for(topics, f"agg-{uuid.uuid4().hex[:8]}", REPARTITION_PURGE_S="0")
    with worker_process(MODULE, env, tmp_path / "agg.log") as worker:
        worker.wait_healthy()
        got = wait_for(expected, settings, topics)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        # consumed repartition records are purged once committed
        deadline = time.monotonic() + 30
        while not any(low > 0 for low in low_watermarks(settings, topics["repartition"])):
            assert time.monotonic() < deadline, "repartition topic never purged"
            time.sleep(0.3)  # poll interval


def test_exact_under_repeated_sigkill(settings, topics, schema_id, tmp_path):
    now_ms = int(time.time() * 1000)
    versions = history(6000, now_ms, seed=2)
    expected = expected_stats(versions, epoch_day(now_ms))
    env = env_for(
        topics, f"agg-{uuid.uuid4().hex[:8]}", COMMIT_INTERVAL_MS="50", COMMIT_EVERY_RECORDS="300"
    )

    def slow_feed() -> None:
        for start in range(0, len(versions), 500):
            feed(settings, topics, schema_id, versions[start : start + 500])
            time.sleep(0.3)  # pacing of the load generator

    feeder = threading.Thread(target=slow_feed)
    feeder.start()
    rng = random.Random(9)
    with worker_process(MODULE, env, tmp_path / "agg.log") as worker:
        for _ in range(4):
            worker.wait_healthy()
            time.sleep(rng.uniform(0.5, 1.5))  # a random moment mid-stream
            worker.kill()
            worker.start()
        feeder.join()
        worker.wait_healthy()
        got = wait_for(expected, settings, topics)
        assert "state restored" in worker.log_path.read_text()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_two_instances_rebalance_and_stay_exact(settings, topics, schema_id, tmp_path):
    now_ms = int(time.time() * 1000)
    versions = history(4000, now_ms, seed=3)
    expected = expected_stats(versions, epoch_day(now_ms))
    group = f"agg-{uuid.uuid4().hex[:8]}"
    half = len(versions) // 2
    with worker_process(MODULE, env_for(topics, group, "a"), tmp_path / "a.log") as a:
        a.wait_healthy()
        feed(settings, topics, schema_id, versions[:half])
        with worker_process(MODULE, env_for(topics, group, "b"), tmp_path / "b.log") as b:
            b.wait_healthy()  # joining triggers a rebalance: state moves to b via changelog
            deadline = time.monotonic() + 60
            while not (
                (a.health() or {}).get("assigned_partitions")
                and (b.health() or {}).get("assigned_partitions")
            ):
                assert time.monotonic() < deadline, (a.health(), b.health())
                time.sleep(0.2)  # poll interval: the group is rebalancing
            feed(settings, topics, schema_id, versions[half:])
            got = wait_for(expected, settings, topics)
            restored = [
                line for line in b.log_path.read_text().splitlines() if "state restored" in line
            ]
            assert any('"reviews": 0' not in line for line in restored), "b took over state"
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_a_day_advance_decays_a_course(settings, topics, schema_id):
    now = {"ms": int(time.time() * 1000)}
    day0 = epoch_day(now["ms"])
    rec = {
        "id": 777,
        "title": None,
        "content": "",
        "rating": "4.5",
        "created": (day0 - 88) * MS_PER_DAY + 1000,  # in the window for two more days
        "modified": (day0 - 88) * MS_PER_DAY + 1000,
        "user": {"title": "U", "name": "U", "display_name": "U"},
        "course": {"id": 4242, "title": "Decaying", "url": "/decaying/"},
    }
    feed(settings, topics, schema_id, [("valid", rec)])
    worker = StatsAggregator(
        settings,
        LoopConfig(group_id=f"agg-{uuid.uuid4().hex[:8]}"),
        AggregatorTopics(
            valid=topics["valid"],
            fraud=topics["fraud"],
            long_term=topics["long"],
            recent=topics["recent"],
            repartition=topics["repartition"],
            changelog=topics["changelog"],
            dead_letter=topics["dlq"],
        ),
        StopFlag(),
        clock=lambda: now["ms"] / 1000,  # the injected clock the test moves
    )
    registry = Registry(settings.schema_registry_url)
    seen: list[dict] = []

    def drive() -> None:
        """Wait for the review to count, move the clock two days, wait for the decay."""
        deadline = time.monotonic() + 90
        moved = False
        while time.monotonic() < deadline:
            recs = [decode(registry, m.value(), STAT) for m in read_all(settings, topics["recent"])]
            if recs and not moved and recs[-1]["count_reviews"] == 1:
                seen.append(recs[-1])
                now["ms"] += 2 * MS_PER_DAY
                moved = True
            elif moved and recs[-1]["window_end_day"] == day_to_date(day0 + 2):
                seen.append(recs[-1])
                break
            time.sleep(0.3)  # poll interval
        worker.stop.set()

    driver = threading.Thread(target=drive)
    driver.start()
    worker.run()
    driver.join()
    assert len(seen) == 2, seen
    before, after = seen
    assert before["window_end_day"] == day_to_date(day0) and before["sum_rating"] == 4.5
    assert after["count_reviews"] == 0
    assert after["average_rating"] == 0.0
    assert after["window_start_day"] == day_to_date(day0 + 2 - 89)
    all_time = [decode(registry, m.value(), STAT) for m in read_all(settings, topics["long"])]
    assert all_time[-1]["count_reviews"] == 1, "all-time statistics do not decay"
