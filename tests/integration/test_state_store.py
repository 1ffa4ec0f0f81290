"""Changelog-backed stores on the real broker: a restore equals the live state it logged.

Regression: the course-stats store was replayed one consumer batch at a time, and a batch did not
see the entries of the previous ones: a member whose course title came in a later batch was
skipped, a tombstone or a re-rating in a later batch missed its earlier value. `make chaos` found
13,095 wrong recent records after a restore of ~60k entries (10,000 a batch); small histories,
read in one batch, never showed it.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from streaming.config import Settings
from streaming.core.aggregation import CourseState, VersionsState
from streaming.core.stats import ReviewVersion
from streaming.core.window import MS_PER_DAY
from streaming.workers.snapshots import (
    ChangelogIdentity,
    SnapshotDir,
    SnapshotHeader,
)
from streaming.workers.state import ChangelogStore, read_changelog_with, restore_consumer
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
    for topic, state, log in (
        (topics["versions"], restored_versions, versions_log),
        (topics["courses"], restored_courses, courses_log),
    ):
        reader = restore_consumer(settings, group)
        try:
            marks = {0: reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)}
            counts = read_changelog_with(reader, topic, {0: None}, marks, {0: state}, batch=97)
        finally:
            reader.close()
        assert counts == {0: (len(log), 0, len(log))}
    assert restored_versions.as_dict() == live_versions.as_dict()
    assert restored_courses.courses.keys() == live_courses.courses.keys()
    for course in live_courses.courses:
        assert restored_courses.statistics(course, T) == live_courses.statistics(course, T)


def identity(admin: AdminClient, topic: str) -> ChangelogIdentity:
    described = admin.describe_topics(TopicCollection([topic]))[topic].result(30)
    return ChangelogIdentity(str(described.topic_id), len(described.partitions), 86_400_000)


def course_store(tmp_path: Path, topic: str, ident: ChangelogIdentity) -> ChangelogStore:
    return ChangelogStore(
        "course-stats",
        topic,
        ("changes",),
        lambda: CourseState(DAY),
        lambda data: CourseState.from_snapshot(data, DAY),
        snapshots=SnapshotDir(tmp_path, "group"),
        identity=ident,
    )


def test_a_snapshot_and_the_changelog_after_it_restore_the_live_state(
    settings, admin, topics, tmp_path
):
    """Snapshot at the middle of the changelog: the restore reads only the tail. A corrupt,
    foreign, too new or missing snapshot is discarded and the whole changelog read: the same
    statistics every time."""
    _, live, _, log = logged_history(3000, seed=3)
    half = len(log) // 2
    produce(settings, topics["courses"], log)
    ident = identity(admin, topics["courses"])
    middle = CourseState(DAY)
    assert middle.restore(log[:half]) == 0
    store = course_store(tmp_path, topics["courses"], ident)
    header = SnapshotHeader(
        "course-stats", topics["courses"], ident.topic_id, 1, 0, half, int(time.time() * 1000)
    )
    path = store.snapshots.write(header, middle.to_snapshot())

    def restored(source: str, reads: int) -> None:
        store.partitions.clear()
        state = store.restore_partitions(settings, [0], f"store-{uuid.uuid4().hex[:8]}")[0]
        assert state.courses.keys() == live.courses.keys()
        for course in live.courses:
            assert state.statistics(course, T) == live.statistics(course, T)
        assert store.positions[0] == len(log)
        assert store.restored_from[0] == (source, reads)

    restored("snapshot", len(log) - half)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # corrupt: the checksum no longer matches
    path.write_bytes(bytes(data))
    restored("changelog", len(log))
    assert not path.exists(), "a discarded snapshot is deleted"
    for bad in (
        SnapshotHeader(
            "course-stats", topics["courses"], "another-id", 1, 0, half, header.written_at_ms
        ),
        SnapshotHeader(
            "course-stats", topics["courses"], ident.topic_id, 2, 0, half, header.written_at_ms
        ),
        SnapshotHeader(
            "course-stats",
            topics["courses"],
            ident.topic_id,
            1,
            0,
            len(log) + 5,
            header.written_at_ms,
        ),
        SnapshotHeader("course-stats", topics["courses"], ident.topic_id, 1, 0, half, 0),
    ):
        store.snapshots.write(bad, middle.to_snapshot())
        restored("changelog", len(log))
        assert not path.exists()
    path.write_bytes(b"REVIEWS-SNAPSHOT 1\n{}")  # a torn or foreign file
    restored("changelog", len(log))
    restored("changelog", len(log))  # none at all
