"""A history of real edits through the running pipeline: exact in both statistics topics, in
PostgreSQL and in the read API.

The records go into `udemy-reviews` itself, so the stack's fraud filter judges them with the real
rule and the stack's aggregator and sink connectors publish them. The history has new reviews,
re-ratings, verdict flips (edits chosen so the rule's verdict changes, some at an equal
`modified`), moves between courses that hash to different partitions, stale and exact re-sends,
title changes and title ties. The reference is the independent pandas computation over the
positions the broker gave the records and the verdicts of the rule.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, Message, Producer

from streaming.core.fraud import HashFraudModel
from streaming.core.window import epoch_day
from streaming.serde import Registry, decode, local_schema
from streaming.settings import Settings
from tests.integration.edit_history import (
    FIELDS,
    courses_on_distinct_partitions,
    expected_stats,
    history,
    review_record,
)
from tests.integration.kafka_helpers import encode_review, read_all

pytestmark = pytest.mark.integration
STAT = local_schema("course_statistic.avsc")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMEOUT_S = 180
MODEL = HashFraudModel()


def with_rule_verdicts(records: list[dict[str, Any]], rng: random.Random) -> list[bool]:
    """The rule's verdict of every record; where the history meant a flip (`_fraud` differs
    from the rule), the record's text is changed until the rule agrees, so flips happen."""
    verdicts = []
    for rec in records:
        want = rec["_fraud"]
        for attempt in range(2000):
            if MODEL.is_fraud(review_record(rec)) == want:
                break
            rec["content"] = f"edited {rng.random():.12f} #{attempt}"
        verdicts.append(MODEL.is_fraud(review_record(rec)))
    return verdicts


def produce_in_order(settings: Settings, records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Each record into udemy-reviews, one after another (delivery confirmed before the next
    is sent to its partition's leader in order); (partition, offset) of each."""
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    p = Producer(
        settings.kafka_config(
            **{"partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 5}
        )
    )
    positions: list[tuple[int, int] | None] = [None] * len(records)

    def delivered(i: int):
        def report(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            positions[i] = (msg.partition(), msg.offset())

        return report

    for i, rec in enumerate(records):
        value = encode_review(schema_id, review_record(rec))
        p.produce("udemy-reviews", value, str(rec["id"]).encode(), on_delivery=delivered(i))
        p.poll(0)
    assert p.flush(60) == 0
    assert all(pos is not None for pos in positions)
    return [pos for pos in positions if pos is not None]


def topic_stats(settings: Settings, courses: set[int]) -> pd.DataFrame:
    registry = Registry(settings.schema_registry_url)
    rows = []
    for recent, topic in ((False, "long-term-stats"), (True, "recent-stats")):
        latest = {}
        for m in read_all(settings, topic):
            if m.key() is not None and int(m.key()) in courses:
                latest[m.key()] = decode(registry, m.value(), STAT)
        rows += [row(recent, rec) for rec in latest.values()]
    return frame(rows)


def table_stats(engine: sa.Engine, courses: set[int]) -> pd.DataFrame:
    rows = []
    for recent, table in ((False, "long_term_stats"), (True, "recent_stats")):
        query = sa.text(f"SELECT * FROM public.{table} WHERE course_id = ANY(:ids)")
        try:
            with engine.connect() as conn:
                found = conn.execute(query, {"ids": list(courses)}).mappings().all()
        except sa.exc.ProgrammingError:  # the sink has not created the table yet
            found = []
        for rec in found:
            rec = dict(rec)
            rec["last_review_time"] = rec["last_review_time"].replace(tzinfo=UTC)
            rows.append(row(recent, rec))
    return frame(rows)


def api_stats(api: str, courses: set[int]) -> pd.DataFrame:
    rows = []
    for course in courses:
        answer = httpx.get(f"{api}/courses/{course}/stats", timeout=10)
        if answer.status_code != 200:
            continue
        body = answer.json()
        for recent, key in ((False, "all_time"), (True, "recent")):
            if body[key] is not None:
                rec = dict(body[key])
                rec["last_review_time"] = datetime.fromisoformat(rec["last_review_time"])
                rows.append(row(recent, rec))
    return frame(rows)


def row(recent: bool, rec: dict[str, Any]) -> dict[str, Any]:
    last = rec["last_review_time"]
    count = rec["count_reviews"]
    assert rec["average_rating"] == pytest.approx(rec["sum_rating"] / count if count else 0.0)
    return {
        "recent": recent,
        **{k: rec[k] for k in FIELDS},
        "last_review_time": (last - EPOCH) // timedelta(milliseconds=1),
    }


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return (
        pd.DataFrame(rows, columns=["recent", *FIELDS])
        .set_index(["recent", "course_id"])
        .sort_index()
    )


def eventually_equal(read, expected: pd.DataFrame, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        got = read()
        if len(got) == len(expected) and got.astype(object).equals(expected.astype(object)):
            return
        if time.monotonic() > deadline:
            pd.testing.assert_frame_equal(got, expected, check_dtype=False, obj=what)
            return
        time.sleep(1.0)  # poll interval: the pipeline is catching up


def exact_everywhere(settings: Settings, ids: set[int], expected: pd.DataFrame) -> None:
    """Both statistics topics, the PostgreSQL tables and the read API, each until it agrees."""
    eventually_equal(lambda: topic_stats(settings, ids), expected, "statistics topics")
    engine = sa.create_engine(settings.database_url)
    try:
        eventually_equal(lambda: table_stats(engine, ids), expected, "PostgreSQL tables")
    finally:
        engine.dispose()
    api = os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    eventually_equal(lambda: api_stats(api, ids), expected, "read API")


def test_a_history_of_edits_is_exact_in_topics_tables_and_the_api(settings: Settings) -> None:
    rng = random.Random(13)
    now_ms = int(time.time() * 1000)
    base = 5_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 8)
    records = history(600, now_ms, courses, first_id=base * 10, seed=13)
    verdicts = with_rule_verdicts(records, rng)
    assert sum(verdicts) > 10, "the history exercises fraud verdicts"
    positions = produce_in_order(settings, records)
    expected = expected_stats(records, positions, epoch_day(now_ms), fraud=verdicts)
    ids = set(courses) & {r["course"]["id"] for r in records}
    exact_everywhere(settings, ids, expected)
