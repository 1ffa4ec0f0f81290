"""The aggregator's internal record format and per-partition state, without Kafka."""

from __future__ import annotations

import random

import pytest

from streaming.core.aggregation import (
    PartitionState,
    RecordFormatError,
    pack_version,
    unpack_version,
)
from streaming.core.stats import ReviewVersion, compute_from_scratch

DAY = 20_000


def version(i: int, modified: int, halves: int = 10, valid: bool = True) -> ReviewVersion:
    return ReviewVersion(modified, (DAY - i % 120) * 86_400_000, halves, valid, 7 + i % 3)


def test_pack_round_trip_keeps_every_field_and_the_title():
    v = version(5, 1_700_000_000_123, halves=9, valid=False)
    assert unpack_version(pack_version(42, v, "Kafka — très bien 👍".encode())) == (
        42,
        v,
        "Kafka — très bien 👍",
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "format byte -"),
        (b"\x02" + bytes(40), "format byte 02"),
        (pack_version(1, version(1, 1), b"t")[:-3], "format byte 01"),
    ],
)
def test_unknown_formats_are_refused(data, reason):
    with pytest.raises(RecordFormatError, match=reason):
        unpack_version(data)


def test_apply_reports_changes_changelog_and_unreadable_records():
    state = PartitionState(DAY)
    first = pack_version(1, version(1, 100), b"Course")
    edit = pack_version(1, version(1, 200, halves=4), b"Course")
    stale = pack_version(1, version(1, 150), b"Course")
    changed, changelog, errors = state.apply([first, b"junk", None, edit, stale])
    assert changed == {8}
    assert changelog == {1: edit}, "only the current version is logged"
    assert set(errors) == {1, 2}
    stats = state.statistics(8, 0)[0]
    assert (stats["count_reviews"], stats["sum_rating"]) == (1, 2.0)


def test_restore_from_changelog_equals_the_live_state():
    rng = random.Random(5)
    live = PartitionState(DAY)
    history = []
    changelog: dict[int, bytes] = {}
    for n in range(3000):
        rid = rng.randrange(800)
        data = pack_version(
            rid, version(rid, rng.randrange(10**6), rng.randint(1, 10), rng.random() > 0.1), b"T"
        )
        history.append((rid, unpack_version(data)[1]))
        changelog.update(live.apply([data])[1])
        if n % 500 == 0:
            live.advance(DAY + n // 500)
    restored = PartitionState(live.aggregates.as_of_day)
    assert restored.restore(changelog.values()) == 0
    expected = compute_from_scratch(
        history, live.aggregates.as_of_day, titles={7: "T", 8: "T", 9: "T"}
    )
    for course_id, (all_time, recent) in expected.items():
        for state in (live, restored):
            got_all, got_recent = state.statistics(course_id, None)
            assert got_all == all_time and got_recent == recent
