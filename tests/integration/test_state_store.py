"""Changelog-backed stores on the real broker: a restore equals the live state it logged.

Regression: the course-stats store was replayed one consumer batch at a time, and a batch did not
see the entries of the previous ones: a member whose course title came in a later batch was
skipped, a tombstone or a re-rating in a later batch missed its earlier value. `make chaos` found
13,095 wrong recent records after a restore of ~60k entries (10,000 a batch); small histories,
read in one batch, never showed it.
"""

from __future__ import annotations

import random
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streaming.config import Settings
from streaming.core.aggregation import CourseState, VersionsState
from streaming.core.stats import ReviewVersion
from streaming.core.window import MS_PER_DAY
from streaming.workers.state import read_changelog
from tests.integration.kafka_helpers import delete_topics, make_topics

pytestmark = pytest.mark.integration
DAY = 20_000
T = DAY * MS_PER_DAY


def logged_history(n: int, seed: int) -> tuple[VersionsState, CourseState, list, list]:
    """Live states of both stages over n random versions (new, re-rated, flipped, moved,
    retitled), and the changelog entries each emitted, in order."""
    rng = random.Random(seed)
    versions, courses = VersionsState(), CourseState(DAY)
    versions_log: list[tuple[bytes, bytes | None]] = []
    courses_log: list[tuple[bytes, bytes | None]] = []
    for i in range(n):
        review = rng.randrange(n // 3 + 1)
        version = ReviewVersion(
            i,
            (DAY - rng.randrange(150)) * MS_PER_DAY,
            rng.randint(1, 10),
            rng.random() > 0.2,
            rng.randrange(6),
            i,
        )
        title = f"Course {version.course_id}{rng.choice(['', ' v2'])}".encode()
        routed, entry = versions.apply(review, version, title)
        if entry is not None:
            versions_log.append((str(review).encode(), entry))
        _, changelog, errors = courses.apply(routed)
        assert not errors
        courses_log.extend(changelog.items())
    return versions, courses, versions_log, courses_log


def produce(settings: Settings, topic: str, entries: list) -> None:
    p = Producer(settings.kafka_config(**{"enable.idempotence": True, "linger.ms": 5}))
    for key, value in entries:
        p.produce(topic, value, key, partition=0)
    assert p.flush(60) == 0


@pytest.fixture
def topics(admin: AdminClient):
    t = make_topics(admin, "store", ["versions", "courses"], partitions=1)
    yield t
    delete_topics(admin, list(t.values()))


def test_a_restore_read_in_many_batches_equals_the_live_state(settings, topics):
    live_versions, live_courses, versions_log, courses_log = logged_history(3000, seed=7)
    assert any(v is None for _, v in courses_log), "the history retracts"
    produce(settings, topics["versions"], versions_log)
    produce(settings, topics["courses"], courses_log)
    group = f"store-{uuid.uuid4().hex[:8]}"
    restored_versions, restored_courses = VersionsState(), CourseState(DAY)
    counts = read_changelog(
        settings, topics["versions"], [0], {0: restored_versions}, group, batch=97
    )
    assert counts == {0: (len(versions_log), 0)}
    counts = read_changelog(
        settings, topics["courses"], [0], {0: restored_courses}, group, batch=97
    )
    assert counts == {0: (len(courses_log), 0)}
    assert restored_versions.as_dict() == live_versions.as_dict()
    assert restored_courses.courses.keys() == live_courses.courses.keys()
    for course in live_courses.courses:
        assert restored_courses.statistics(course, T) == live_courses.statistics(course, T)
