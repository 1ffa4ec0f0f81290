"""Snapshot files and the decision to use one, and the store's bookkeeping of the changelog
offset its committed state reflects (no broker: delivery reports are handed in)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from streaming.core.aggregation import VersionsState
from streaming.core.stats import ReviewVersion
from streaming.workers.snapshots import (
    ChangelogIdentity,
    SnapshotDir,
    SnapshotHeader,
    SnapshotUnreadable,
    snapshot_problem,
)
from streaming.workers.state import ChangelogStore

IDENTITY = ChangelogIdentity("topic-id", 4, 86_400_000)
HEADER = SnapshotHeader("review-versions", "changelog", "topic-id", 4, 2, 100, 1_000_000)


@pytest.mark.parametrize(
    ("change", "low", "high", "now", "problem"),
    [
        ({}, 0, 100, 1_000_000, None),
        ({}, 100, 250, 1_000_000, None),
        ({"topic_id": "other"}, 0, 100, 1_000_000, "another changelog topic"),
        ({"partitions": 2}, 0, 100, 1_000_000, "written for 2 partitions"),
        ({"partition": 1}, 0, 100, 1_000_000, "written for partition 1"),
        ({}, 0, 99, 1_000_000, "ahead of the changelog"),
        ({}, 101, 200, 1_000_000, "behind the changelog's start"),
        ({}, 0, 100, 1_000_000 + 86_400_000, "older than the changelog's delete.retention.ms"),
    ],
)
def test_snapshot_problem(change, low, high, now, problem):
    got = snapshot_problem(replace(HEADER, **change), IDENTITY, 2, low, high, now)
    assert (got is None) if problem is None else (problem in got), got


def test_a_snapshot_file_round_trips_and_damage_is_found(tmp_path: Path):
    snaps = SnapshotDir(tmp_path, "group")
    path = snaps.write(HEADER, b"payload bytes")
    header, payload = snaps.read("changelog", 2)
    assert payload == b"payload bytes"
    assert replace(header, size=0, sha256="") == HEADER and header.size == 13
    assert snaps.read("changelog", 3) is None
    data = path.read_bytes()
    for damaged in (data[:-1], data[:-1] + b"X", b"other" + data, data[:30]):
        path.write_bytes(damaged)
        with pytest.raises(SnapshotUnreadable):
            snaps.read("changelog", 2)
    assert not list(path.parent.glob("*.tmp")), "written through a renamed temporary file"


def test_leftovers_of_dead_writers_are_removed(tmp_path: Path):
    snaps = SnapshotDir(tmp_path, "group")
    snaps.write(HEADER, b"x")
    dead = snaps.path("changelog", 2).with_name("2.snap.999999999.tmp")
    mine = snaps.path("changelog", 2).with_name(f"2.snap.{os.getpid()}.tmp")
    dead.write_bytes(b"half")
    mine.write_bytes(b"in progress")
    snaps.remove_leftovers()
    assert not dead.exists() and mine.exists()


@dataclass
class Delivered:
    """What a delivery report's message says."""

    p: int
    o: int

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


def store(tmp_path: Path) -> ChangelogStore[VersionsState]:
    return ChangelogStore(
        "review-versions",
        "changelog",
        ("valid",),
        VersionsState,
        VersionsState.from_snapshot,
        snapshots=SnapshotDir(tmp_path, "group"),
        identity=IDENTITY,
    )


def test_positions_move_only_when_the_transaction_commits(tmp_path: Path):
    s = store(tmp_path)
    s.partitions = {0: VersionsState(), 1: VersionsState()}
    s.positions = {0: 10, 1: 20}
    s.delivered(None, Delivered(0, 14))
    s.delivered(None, Delivered(0, 12))  # reports may come in any order
    s.delivered(object(), Delivered(1, 30))  # a failed delivery is no state
    s.aborted()
    assert s.positions == {0: 10, 1: 20}, "an aborted transaction's writes are not state"
    s.delivered(None, Delivered(0, 15))
    s.delivered(None, Delivered(1, 21))
    s.committed()
    assert s.positions == {0: 16, 1: 22}


def test_a_snapshot_is_taken_once_per_position_and_reads_back(tmp_path: Path):
    s = store(tmp_path)
    state = VersionsState()
    state.apply(5, ReviewVersion(1, 2, 8, True, 3, 0), b"T")
    s.partitions, s.positions = {2: state}, {2: 40}
    assert s.snapshot() == 1
    s.flush_snapshots()
    assert s.snapshot() == 0, "nothing changed since"
    header, payload = s.snapshots.read("changelog", 2)
    assert header.offset == 40 and header.topic_id == "topic-id" and header.partitions == 4
    assert VersionsState.from_snapshot(payload).as_dict() == state.as_dict()
    s.positions[2] = 41
    assert s.snapshot([2]) == 1


def test_revoked_state_is_kept_for_its_return_only_while_the_changelog_allows(tmp_path):
    s = store(tmp_path)
    state = VersionsState()
    s.partitions, s.positions = {0: state, 1: VersionsState()}, {0: 7, 1: 9}
    s.keep_revoked([0, 1])
    assert s.partitions == {} and s.positions == {}
    kept = s._source(0, 0, 12)
    assert (kept.kind, kept.offset, kept.state) == ("kept", 7, state)
    assert s._source(1, 10, 12).kind == "changelog", "the changelog moved past it: not usable"


def test_what_an_instance_owns_reads_back_while_it_lives(tmp_path: Path):
    snaps = SnapshotDir(tmp_path, "group")
    assert snaps.read_owned("g-0") is None
    snaps.write_owned("g-0", {"course-stats": [1, 3], "review-versions": [1, 3]})
    assert snaps.read_owned("g-0") == {"course-stats": [1, 3], "review-versions": [1, 3]}
    assert snaps.read_owned("g-1") is None, "another instance's"
    note = snaps.root / "owned-g-0.json"
    mine = f'{{"pid": {os.getpid()}, "stores": {{"course-stats": [1, "x"], "other": 5'
    note.write_text(mine)
    assert snaps.read_owned("g-0") is None, "torn"
    note.write_text(mine + "}}")
    assert snaps.read_owned("g-0") == {"course-stats": [1]}, "only partition numbers"
    note.write_text('{"pid": 999999999, "stores": {"course-stats": [1]}}')
    assert snaps.read_owned("g-0") is None, "its writer died: no say"
    dead = snaps.root / "owned-g-0.json.999999999.tmp"
    dead.write_text("{}")
    snaps.remove_leftovers()
    assert not dead.exists()


def test_a_standby_copy_is_kept_like_revoked_state(tmp_path):
    s = store(tmp_path)
    state = VersionsState()
    s.keep_standby(2, state, 40, "standby")
    assert s._source(2, 0, 40).kind == "standby" and s._source(2, 0, 40).kind == "changelog"
    s.keep_standby(2, state, 40, "standby")
    assert s._source(2, 41, 50).kind == "changelog", "compacted or deleted past it"
    s.keep_standby(2, state, 40, "standby")
    s.discard_kept()
    assert s._source(2, 0, 40).kind == "changelog", "not assigned: dropped"
