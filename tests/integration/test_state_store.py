"""Changelog-backed stores on the real broker: a restore equals the live state it logged.

Regression: the course-stats store was replayed one consumer batch at a time, and a batch did not
see the entries of the previous ones: a member whose course title came in a later batch was
skipped, a tombstone or a re-rating in a later batch missed its earlier value. `make chaos` found
13,095 wrong recent records after a restore of ~60k entries (10,000 a batch); small histories,
read in one batch, never showed it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from streaming.core.aggregation import CourseState, VersionsState
from streaming.core.stats import ReviewVersion
from streaming.core.window import MS_PER_DAY
from streaming.settings import Settings
from streaming.workers import standby
from streaming.workers.snapshots import (
    ChangelogIdentity,
    SnapshotDir,
    SnapshotHeader,
)
from streaming.workers.state import ChangelogStore, read_changelog_with, restore_consumer
from tests.integration.kafka_helpers import delete_topics, end_offsets, make_topics

pytestmark = pytest.mark.integration
DAY = 20_000
T = DAY * MS_PER_DAY


def logged_history(
    n: int, seed: int, n_courses: int = 6
) -> tuple[VersionsState, CourseState, list, list]:
    """Live states of both stages over n random versions (new, re-rated, flipped, moved,
    retitled) of reviews in `n_courses` courses, and the changelog entries each emitted, in
    order."""
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
            rng.randrange(n_courses),
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


def produce_transactions(settings: Settings, topic: str, entries: list, size: int) -> None:
    """`entries` in committed transactions of `size`, each followed by an aborted one that
    would wreck the state if it were applied (every member of the batch retracted)."""
    p = Producer(settings.kafka_config(**{"transactional.id": f"store-{uuid.uuid4().hex}"}))
    p.init_transactions(30)
    for i in range(0, len(entries), size):
        p.begin_transaction()
        for key, value in entries[i : i + size]:
            p.produce(topic, value, key, partition=0)
        p.commit_transaction(30)
        p.begin_transaction()
        for key, _ in entries[i : i + size]:
            p.produce(topic, None, key, partition=0)
        assert p.flush(30) == 0  # in the log before the abort marker, not purged unsent
        p.abort_transaction(30)


def test_a_standby_copy_follows_the_changelog_and_is_handed_over(
    settings, admin, topics, tmp_path, monkeypatch
):
    """A warm spare's standby copy: built from the whole changelog, then kept current while
    committed transactions (read in consumer batches that split them) and aborted ones come
    in; handed over, the store restores from it with nothing more to read, and its statistics
    are the live ones, also after the owner stopped saying what it owns (it died: the go is on
    its way). New courses keep coming: a transaction logs a new course's members
    before its title, which a copy applied mid-transaction would drop."""
    monkeypatch.setattr(standby, "BATCH", 7)  # batches end inside transactions
    _, live, _, log = logged_history(3000, seed=11, n_courses=1500)
    first = len(log) * 2 // 5
    produce_transactions(settings, topics["courses"], log[:first], 50)
    store = course_store(tmp_path, topics["courses"], identity(admin, topics["courses"]))
    notes: list[dict] = []
    ready = threading.Event()

    def report(note: dict) -> None:
        notes.append(note)
        if note["ready"]:
            ready.set()

    owner: list[dict | None] = [{"course-stats": [0]}]
    follower = standby.Standby(
        settings, [store], lambda: owner[0], f"store-{uuid.uuid4().hex[:8]}", report
    )
    follower.start()
    try:
        assert ready.wait(60), f"no copy caught up: {notes}"
        assert notes[-1]["partitions"] == {"course-stats": [0]}
        owner[0] = None  # the running incarnation died: its spare keeps what it keeps
        produce_transactions(settings, topics["courses"], log[first:], 50)
        end = end_offsets(settings, topics["courses"])[0]
        deadline = time.monotonic() + 60
        while follower.copies[(topics["courses"], 0)].offset < end:
            assert time.monotonic() < deadline, "the copy did not reach the changelog's end"
            ready.wait(0.05)  # the copy moves at each end of the partition it reads
    finally:
        assert follower.hand_over() == 1
    state = store.restore_partitions(settings, [0], f"store-{uuid.uuid4().hex[:8]}")[0]
    assert store.restored_from[0] == ("standby", 0)
    assert state.courses.keys() == live.courses.keys()
    for course in live.courses:
        assert state.statistics(course, T) == live.statistics(course, T)
