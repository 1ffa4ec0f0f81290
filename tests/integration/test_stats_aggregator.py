"""The stats aggregator on the real stack, checked against an independent pandas computation.

Histories of real edits (`edit_history`) go straight into the aggregator's inputs, as the fraud
filter leaves them (each record with its source position header, in the topic of its verdict),
over courses that hash to different partitions; the published statistics must equal the
reference in every field, under SIGKILLs, with two instances rebalancing while input flows, and
after a day-change transaction aborts.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streaming.core.source_position import HEADER, encode
from streaming.core.window import MS_PER_DAY, day_to_date, epoch_day
from streaming.serde import Registry, decode, local_schema
from streaming.settings import Settings
from streaming.workers.clients import LoopConfig
from streaming.workers.process import StopFlag
from streaming.workers.stats_aggregator import AggregatorTopics, StatsAggregator
from tests.integration.edit_history import (
    FIELDS,
    courses_on_distinct_partitions,
    expected_stats,
    history,
    review_record,
    with_positions,
)
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
STAT = local_schema("course_statistic.avsc")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PORTS = {
    "valid": "valid",
    "fraud": "fraud",
    "changes": "changes",
    "long_term": "long",
    "recent": "recent",
    "versions_changelog": "versions",
    "courses_changelog": "courses",
    "dead_letter": "dlq",
}


@pytest.fixture
def topics(admin):
    t = make_topics(admin, "agg", list(PORTS.values()))
    yield t
    delete_topics(admin, list(t.values()))


@pytest.fixture(scope="module")
def schema_id(settings) -> int:
    return Registry(settings.schema_registry_url).register("udemy-reviews-value", "review.avsc")


def env_for(topics: dict[str, str], group: str, instance: str = "0", **extra: str) -> dict:
    return {
        **{f"AGGREGATOR_{port.upper()}_TOPIC": topics[name] for port, name in PORTS.items()},
        "AGGREGATOR_GROUP_ID": group,
        "WORKER_INSTANCE": instance,
        **extra,
    }


def worker_topics(topics: dict[str, str]) -> AggregatorTopics:
    return AggregatorTopics(**{port: topics[name] for port, name in PORTS.items()})


def stream_stats(settings: Settings, topics: dict[str, str]) -> pd.DataFrame:
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


def low_watermarks(settings: Settings, topic: str) -> list[int]:
    c = Consumer(settings.kafka_config(**{"group.id": f"probe-{uuid.uuid4().hex}"}))
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in range(4)]
    finally:
        c.close()


def feed(settings, topics, schema_id, records, positions) -> None:
    """Each record into the topic of its verdict, with its position in udemy-reviews."""
    p = producer(settings)
    for rec, (partition, offset) in zip(records, positions, strict=True):
        topic = topics["fraud" if rec["_fraud"] else "valid"]
        value = encode_review(schema_id, review_record(rec))
        headers = [(HEADER, encode(partition, offset))]
        while True:
            try:
                p.produce(topic, value, str(rec["id"]).encode(), headers=headers)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


def wait_for(expected: pd.DataFrame, settings, topics, timeout_s: float = 120) -> pd.DataFrame:
    deadline = time.monotonic() + timeout_s
    while True:
        got = stream_stats(settings, topics)
        if (len(got) == len(expected) and got.equals(expected)) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)  # poll interval


def edits(n: int, now_ms: int, seed: int) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    courses = courses_on_distinct_partitions(500 + 1000 * seed, 12)
    records = history(n, now_ms, courses, first_id=900_000 + 100_000 * seed, seed=seed)
    return records, with_positions(records)


def test_every_kind_of_edit_equals_an_independent_computation(
    settings, topics, schema_id, tmp_path
):
    """Re-ratings, verdict flips, moves across course partitions, equal-modified versions,
    stale and exact re-sends, title changes and ties: every field exact."""
    now_ms = int(time.time() * 1000)
    records, positions = edits(2000, now_ms, seed=1)
    feed(settings, topics, schema_id, records, positions)
    expected = expected_stats(records, positions, epoch_day(now_ms))
    env = env_for(topics, f"agg-{uuid.uuid4().hex[:8]}", REPARTITION_PURGE_S="0")
    with worker_process(MODULE, env, tmp_path / "agg.log") as worker:
        worker.wait_healthy()
        got = wait_for(expected, settings, topics)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        # consumed change records are purged once committed
        deadline = time.monotonic() + 30
        while not any(low > 0 for low in low_watermarks(settings, topics["changes"])):
            assert time.monotonic() < deadline, "changes topic never purged"
            time.sleep(0.3)  # poll interval


def test_the_order_of_the_system_of_record_decides_whatever_topic_is_read_first(
    settings, topics, schema_id, tmp_path
):
    """Two versions at one `modified`: the later record of udemy-reviews wins even when it is
    produced (and so read) first, through the other topic."""
    now_ms = int(time.time() * 1000)
    base = {
        "id": 4242,
        "title": None,
        "content": "",
        "rating": "5.0",
        "created": now_ms - MS_PER_DAY,
        "modified": now_ms - MS_PER_DAY,
        "user": {"title": "U", "name": "U", "display_name": "U"},
        "course": {"id": 77, "title": "Tie", "url": "/tie/"},
    }
    later_fraud = {**base, "rating": "1.0", "_fraud": True}
    earlier_valid = {**base, "_fraud": False}
    # the fraud version is later in udemy-reviews but reaches the aggregator first
    feed(settings, topics, schema_id, [later_fraud, earlier_valid], [(0, 9), (0, 3)])
    env = env_for(topics, f"agg-{uuid.uuid4().hex[:8]}")
    with worker_process(MODULE, env, tmp_path / "agg.log") as worker:
        worker.wait_healthy()
        expected = expected_stats([earlier_valid, later_fraud], [(0, 3), (0, 9)], epoch_day(now_ms))
        got = wait_for(expected, settings, topics, timeout_s=60)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got.loc[(False, 77), "count_reviews"] == 0


def test_a_record_without_its_source_position_is_dead_lettered(
    settings, topics, schema_id, tmp_path
):
    rec = review_record(history(1, int(time.time() * 1000), [5], first_id=1)[0])
    p = producer(settings)
    p.produce(topics["valid"], encode_review(schema_id, rec), b"1")
    assert p.flush(30) == 0
    env = env_for(topics, f"agg-{uuid.uuid4().hex[:8]}")
    with worker_process(MODULE, env, tmp_path / "agg.log") as worker:
        worker.wait_healthy()
        deadline = time.monotonic() + 60
        while not (dead := read_all(settings, topics["dlq"])):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.3)  # poll interval
    headers = dict(dead[0].headers())
    assert HEADER.encode() in headers["dlq.error"], headers
    assert read_all(settings, topics["long"]) == [], "nothing counted"


def test_a_timestamp_no_sink_can_store_is_dead_lettered_and_never_counted(
    settings, topics, schema_id, tmp_path
):
    """A `created` in year 296,675 (Avro takes any long) would become the course's
    last_review_time, which neither PostgreSQL, the sink's converters nor the read API keep."""
    now_ms = int(time.time() * 1000)
    ok = review_record(history(1, now_ms, [5], first_id=11)[0])
    far = {**ok, "id": ok["id"] + 1, "created": 9_300_000_000_000_000}
    p = producer(settings)
    for n, rec in enumerate((ok, far)):
        headers = [(HEADER, encode(0, n))]
        p.produce(
            topics["valid"], encode_review(schema_id, rec), str(rec["id"]).encode(), headers=headers
        )
    assert p.flush(30) == 0
    env = env_for(topics, f"agg-{uuid.uuid4().hex[:8]}")
    with worker_process(MODULE, env, tmp_path / "agg.log") as worker:
        worker.wait_healthy()
        deadline = time.monotonic() + 60
        while not (dead := read_all(settings, topics["dlq"])) or not read_all(
            settings, topics["long"]
        ):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.3)  # poll interval
    assert [m.key() for m in dead] == [str(far["id"]).encode()]
    assert b"outside 0001-01-01" in dict(dead[0].headers())["dlq.error"]
    registry = Registry(settings.schema_registry_url)
    [stat] = [decode(registry, m.value(), STAT) for m in read_all(settings, topics["long"])][-1:]
    assert stat["count_reviews"] == 1, "only the storable review counts"


def test_exact_under_repeated_sigkill(settings, topics, schema_id, tmp_path):
    now_ms = int(time.time() * 1000)
    records, positions = edits(3000, now_ms, seed=2)
    expected = expected_stats(records, positions, epoch_day(now_ms))
    env = env_for(
        topics, f"agg-{uuid.uuid4().hex[:8]}", COMMIT_INTERVAL_MS="50", COMMIT_EVERY_RECORDS="300"
    )
    feeder = threading.Thread(
        target=paced_feed, args=(settings, topics, schema_id, records, positions)
    )
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


def paced_feed(settings, topics, schema_id, records, positions, chunk: int = 400) -> None:
    for start in range(0, len(records), chunk):
        end = start + chunk
        feed(settings, topics, schema_id, records[start:end], positions[start:end])
        time.sleep(0.3)  # pacing of the load generator


def test_two_instances_rebalance_while_input_flows(settings, topics, schema_id, tmp_path):
    """b joins and later leaves while records stream in: partitions and their state move
    between the instances through the changelogs, and every statistic stays exact."""
    now_ms = int(time.time() * 1000)
    records, positions = edits(4000, now_ms, seed=3)
    expected = expected_stats(records, positions, epoch_day(now_ms))
    group = f"agg-{uuid.uuid4().hex[:8]}"
    feeder = threading.Thread(
        target=paced_feed, args=(settings, topics, schema_id, records, positions, 250)
    )
    with worker_process(MODULE, env_for(topics, group, "a"), tmp_path / "a.log") as a:
        a.wait_healthy()
        feeder.start()
        with worker_process(MODULE, env_for(topics, group, "b"), tmp_path / "b.log") as b:
            b.wait_healthy()
            deadline = time.monotonic() + 60
            while not (
                (a.health() or {}).get("assigned_partitions")
                and (b.health() or {}).get("assigned_partitions")
            ):
                assert time.monotonic() < deadline, (a.health(), b.health())
                time.sleep(0.2)  # poll interval: the group is rebalancing
            time.sleep(1.0)  # both instances process for a while before b leaves
        assert feeder.is_alive(), "b left while input was still flowing"
        feeder.join()
        got = wait_for(expected, settings, topics)
        restored = [
            line
            for line in (tmp_path / "b.log").read_text().splitlines()
            if "state restored" in line
        ]
        assert restored, "b took over state"
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def in_process_worker(
    settings: Settings,
    topics: dict[str, str],
    clock: Any,
    cls: type = StatsAggregator,
    group: str | None = None,
) -> StatsAggregator:
    return cls(
        settings,
        LoopConfig(group_id=group or f"agg-{uuid.uuid4().hex[:8]}"),
        worker_topics(topics),
        StopFlag(),
        clock=clock,
    )


def latest_recent(settings: Settings, topics: dict[str, str]) -> dict[bytes, dict]:
    registry = Registry(settings.schema_registry_url)
    return {
        m.key(): decode(registry, m.value(), STAT) for m in read_all(settings, topics["recent"])
    }


def run_until(worker: StatsAggregator, done: Any, timeout_s: float = 120) -> bool:
    """Run the worker in this thread until `done()` holds (polled from another thread)."""
    outcome = {"done": False}

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not outcome["done"]:
            outcome["done"] = bool(done())
            time.sleep(0.3)  # poll interval
        worker.stop.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    worker.run()
    watcher.join()
    return outcome["done"]


def test_a_day_advance_decays_a_course(settings, topics, schema_id):
    now = {"ms": int(time.time() * 1000)}
    day0 = epoch_day(now["ms"])
    rec = history(1, now["ms"], [4242], first_id=777)[0]
    rec.update(created=(day0 - 88) * MS_PER_DAY + 1000, rating="4.5", _fraud=False)
    rec["modified"] = rec["created"]  # in the window for two more days
    feed(settings, topics, schema_id, [rec], with_positions([rec]))
    worker = in_process_worker(settings, topics, lambda: now["ms"] / 1000)
    seen: list[dict] = []

    def counted_then_decayed() -> bool:
        """The review counts: move the clock two days; then wait for the decay."""
        rec = latest_recent(settings, topics).get(b"4242")
        if rec and not seen and rec["count_reviews"] == 1:
            seen.append(rec)
            now["ms"] += 2 * MS_PER_DAY
        elif seen and rec and rec["window_end_day"] == day_to_date(day0 + 2):
            seen.append(rec)
            return True
        return False

    assert run_until(worker, counted_then_decayed, timeout_s=90), seen
    assert len(seen) == 2, seen
    before, after = seen
    assert before["window_end_day"] == day_to_date(day0) and before["sum_rating"] == 4.5
    assert after["count_reviews"] == 0
    assert after["average_rating"] == 0.0
    assert after["window_start_day"] == day_to_date(day0 + 2 - 89)
    registry = Registry(settings.schema_registry_url)
    all_time = [decode(registry, m.value(), STAT) for m in read_all(settings, topics["long"])]
    assert all_time[-1]["count_reviews"] == 1, "all-time statistics do not decay"


class FailsTheDayChange(StatsAggregator):
    """A worker whose producer fails the commit of the first transaction that carries the
    day-change re-emits, as a broker would with an abortable error."""

    moved_at: int | None = None
    failed = 0

    def tick(self) -> int:
        before = self.figures.as_of_day
        emitted = super().tick()
        if self.figures.as_of_day != before and self.moved_at is None:
            self.moved_at = self.figures.as_of_day
        return emitted

    def commit(self) -> None:
        if self.moved_at is not None and not self.failed:
            self.failed += 1
            raise KafkaException(
                KafkaError(KafkaError._STATE, "injected abortable", txn_requires_abort=True)
            )
        super().commit()


def test_an_aborted_day_change_still_moves_every_idle_course(settings, topics, schema_id):
    """The transaction with the new day's recent records aborts: the restored state re-emits
    them, so no course keeps yesterday's window."""
    now = {"ms": int(time.time() * 1000)}
    day0 = epoch_day(now["ms"])
    records, positions = edits(300, now["ms"], seed=4)
    feed(settings, topics, schema_id, records, positions)
    courses = {str(r["course"]["id"]).encode() for r in records}
    expected = expected_stats(records, positions, day0 + 1)
    counts = {key: expected.loc[(True, int(key)), "count_reviews"] for key in courses}
    worker = in_process_worker(settings, topics, lambda: now["ms"] / 1000, FailsTheDayChange)
    outcome: dict[str, Any] = {}

    def published_then_moved() -> bool:
        """Every course published: move the clock a day (the input may still be flowing:
        the day-change transaction then holds records too); then wait until every course's
        recent record is on the new day with every record counted (while the records after
        the abort go one per transaction, a course's count may still be on its way)."""
        recent = latest_recent(settings, topics)
        if not outcome and set(recent) == courses:
            now["ms"] += MS_PER_DAY
            outcome["moved"] = True
        elif outcome and all(
            r["window_end_day"] == day_to_date(day0 + 1) and r["count_reviews"] == counts[key]
            for key, r in recent.items()
        ):
            outcome["recent"] = recent
            return True
        return False

    run_until(worker, published_then_moved)
    assert worker.failed == 1, "the day-change commit was failed once"
    assert sum(worker.metrics.aborts.values()) == 1
    assert "recent" in outcome, (
        "after the abort, a course kept yesterday's window or lost a count: "
        f"{latest_recent(settings, topics)}"
    )


def test_a_restart_across_midnight_moves_every_idle_course(settings, topics, schema_id):
    """Stopped on day D, started again on D+1 with no new input: the restored state re-emits
    every course's recent record at the new day."""
    now_ms = int(time.time() * 1000)
    day0 = epoch_day(now_ms)
    records, positions = edits(300, now_ms, seed=5)
    feed(settings, topics, schema_id, records, positions)
    courses = {str(r["course"]["id"]).encode() for r in records}
    group = f"agg-{uuid.uuid4().hex[:8]}"

    def all_on(day: int) -> bool:
        recent = latest_recent(settings, topics)
        return set(recent) == courses and all(
            r["window_end_day"] == day_to_date(day) for r in recent.values()
        )

    before = in_process_worker(settings, topics, lambda: now_ms / 1000, group=group)
    assert run_until(before, lambda: all_on(day0)), "day D published"
    after = in_process_worker(settings, topics, lambda: (now_ms + MS_PER_DAY) / 1000, group=group)
    assert run_until(after, lambda: all_on(day0 + 1)), "every course moved to D+1"
    assert after.metrics.records_in == 0, "nothing but the clock moved"
    expected = expected_stats(records, positions, day0 + 1)
    for key, rec in latest_recent(settings, topics).items():
        assert rec["count_reviews"] == expected.loc[(True, int(key)), "count_reviews"], key
