"""The aggregator's two pure stages (review versions -> changes -> course statistics), their
internal record formats and their changelogs, without Kafka."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.aggregation import (
    CourseState,
    RecordFormatError,
    StateLayoutError,
    VersionsState,
)
from streaming.core.stage_kernels import valid_utf8
from streaming.core.stats import ReviewVersion, compute_from_scratch
from tests.unit.aggregation_records import (
    Change,
    member_key,
    pack_change,
    pack_version,
    title_key,
    unpack_change,
    unpack_version,
)

DAY = 20_000
MS = 86_400_000
T = 99  # as_of_time of every statistics record compared here


def version(i: int, modified: int, halves: int = 10, valid: bool = True, position: int = 0):
    return ReviewVersion(modified, (DAY - i % 120) * MS, halves, valid, 7 + i % 3, position)


class Stages:
    """One review partition and one course partition, wired as the worker wires them."""

    def __init__(self, as_of_day: int = DAY) -> None:
        self.versions = VersionsState()
        self.courses = CourseState(as_of_day)
        self.versions_log: list[tuple[bytes, bytes | None]] = []
        self.courses_log: list[tuple[bytes, bytes | None]] = []
        self.records: list[tuple[int, ReviewVersion, str]] = []

    def feed(self, review_id: int, v: ReviewVersion, title: str = "T") -> set[int]:
        self.records.append((review_id, v, title))
        routed, entry = self.versions.apply(review_id, v, title.encode())
        if entry is not None:  # keyed by review id, as the worker writes it
            self.versions_log.append((str(review_id).encode(), entry))
        changed, entries, errors = self.courses.apply(routed)  # packed, keyed by course
        assert errors == {}
        self.courses_log += entries.items()
        return changed

    def restored(self) -> Stages:
        copy = Stages(self.courses.as_of_day)
        assert copy.versions.restore(self.versions_log) == 0
        assert copy.courses.restore(self.courses_log) == 0
        copy.versions_log, copy.courses_log = list(self.versions_log), list(self.courses_log)
        copy.records = list(self.records)
        return copy

    def snapshot(self) -> dict[int, tuple[dict, dict]]:
        return {cid: self.courses.statistics(cid, T) for cid in self.courses.courses}

    def scratch(self) -> dict[int, tuple[dict, dict]]:
        return compute_from_scratch(self.records, self.courses.as_of_day, as_of_time=T)


# -- record formats --------------------------------------------------------------------------
def test_version_round_trip_keeps_every_field():
    v = ReviewVersion(1_700_000_000_123, -5 * MS, 9, False, 2**40, 123_456_789)
    assert unpack_version(pack_version(42, v)) == (42, v)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "null value"),
        (b"", "format byte -"),
        (b"\x02" + bytes(42), "format byte 02"),
        (pack_version(1, version(1, 1))[:-3], "format byte 04"),
        (pack_version(1, version(1, 1)) + b"x", "format byte 04"),
        (pack_version(1, version(1, 1))[:-2] + b"\x00\x01", "halves 0 outside"),
        (pack_version(1, version(1, 1))[:-2] + b"\x0b\x01", "halves 11 outside"),
    ],
)
def test_unknown_version_records_are_refused(data, reason):
    with pytest.raises(RecordFormatError, match=reason):
        unpack_version(data)


def with_byte(data: bytes, index: int, value: int) -> bytes:
    out = bytearray(data)
    out[index] = value
    return bytes(out)


titles = st.text(max_size=8).map(lambda s: s.encode("utf-8"))
pairs = st.tuples(st.integers(-(2**62), 2**62), st.integers(1, 10))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(-(2**62), 2**62),
    st.none() | pairs,
    st.none() | pairs,
    st.none() | st.tuples(st.integers(-(2**62), 2**62), titles),
)
def test_change_round_trip(review_id, retract, add, title):
    change = Change(review_id, retract, add, title)
    assert unpack_change(pack_change(change)) == change


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "null value"),
        (b"", "format byte -"),
        (b"\x01" + bytes(40), "format byte 01"),
        (pack_change(Change(1, title=(0, b"")))[:-1], "format byte 02"),
        (with_byte(pack_change(Change(1, add=(0, 1))), 27, 11), r"halves \S*11 outside 1\.\.10"),
        (with_byte(pack_change(Change(1, retract=(0, 1))), 18, 0), r"halves 0\S* outside 1\.\.10"),
    ],
)
def test_unknown_change_records_are_refused(data, reason):
    with pytest.raises(RecordFormatError, match=reason):
        unpack_change(data)


def test_a_change_flag_not_set_ignores_its_field():
    """Halves 0 in an absent retraction/addition is just padding."""
    assert unpack_change(pack_change(Change(3, add=(5, 10)))) == Change(3, add=(5, 10))
    assert unpack_change(pack_change(Change(3))) == Change(3)


# -- the review stage ------------------------------------------------------------------------
class Review:
    """A review stage whose routed changes are read back as `Change`s."""

    def __init__(self) -> None:
        self.state = VersionsState()

    def apply(self, review_id, v, title):
        routed, entry = self.state.apply(review_id, v, title)
        assert all(isinstance(data, bytes) for _, data in routed), "routed packed, as produced"
        return [(course, unpack_change(data)) for course, data in routed], entry

    @property
    def reviews(self):
        return self.state.as_dict()


def test_review_stage_changes_for_each_kind_of_version():
    state = Review()
    first = ReviewVersion(100, 5 * MS, 10, True, 7, 0)
    routed, entry = state.apply(1, first, b"A")
    assert routed == [(7, Change(1, add=(5 * MS, 10), title=(100, b"A")))]
    assert unpack_version(entry) == (1, first)

    stale = ReviewVersion(50, 5 * MS, 2, True, 8, 1)  # older, even on another course
    assert state.apply(1, stale, b"B") == ([(8, Change(1, title=(50, b"B")))], None)

    rerated = ReviewVersion(200, 5 * MS, 6, True, 7, 2)
    routed, entry = state.apply(1, rerated, b"A")
    assert routed == [(7, Change(1, (5 * MS, 10), (5 * MS, 6), (200, b"A")))]
    assert unpack_version(entry) == (1, rerated)

    resent = ReviewVersion(200, 5 * MS, 6, True, 7, 3)  # equal contents, a new record
    routed, entry = state.apply(1, resent, b"A2")
    assert routed == [(7, Change(1, title=(200, b"A2")))]
    assert unpack_version(entry) == (1, resent)

    assert state.apply(1, resent, b"A2")[1] is None, "the same record again is stale"

    fraud = ReviewVersion(200, 5 * MS, 6, False, 7, 4)  # flipped at equal modified
    routed, _ = state.apply(1, fraud, b"A")
    assert routed == [(7, Change(1, retract=(5 * MS, 6), title=(200, b"A")))]

    moved_fraud = ReviewVersion(300, 5 * MS, 6, False, 9, 5)  # nothing counted to retract
    routed, _ = state.apply(1, moved_fraud, b"C")
    assert routed == [(9, Change(1, title=(300, b"C")))]

    valid_again = ReviewVersion(400, 5 * MS, 8, True, 9, 6)
    routed, _ = state.apply(1, valid_again, b"C")
    assert routed == [(9, Change(1, add=(5 * MS, 8), title=(400, b"C")))]

    moved = ReviewVersion(500, 6 * MS, 8, True, 7, 7)
    routed, _ = state.apply(1, moved, b"A")
    assert routed == [
        (9, Change(1, retract=(5 * MS, 8))),
        (7, Change(1, add=(6 * MS, 8), title=(500, b"A"))),
    ]
    moved_to_fraud = ReviewVersion(600, 6 * MS, 8, False, 9, 8)
    routed, _ = state.apply(1, moved_to_fraud, b"C")
    assert routed == [(7, Change(1, retract=(6 * MS, 8))), (9, Change(1, title=(600, b"C")))]
    assert state.reviews == {1: moved_to_fraud}


def test_review_stage_restore_replays_entries_in_order():
    live = VersionsState()
    entries = []
    for n, (rid, modified) in enumerate([(1, 5), (2, 5), (1, 9), (1, 7), (2, 5), (3, 1)]):
        entry = live.apply(rid, ReviewVersion(modified, 0, 10, True, 1, n), b"")[1]
        if entry is not None:
            entries.append((str(rid).encode(), entry))
    assert len(entries) == 5, "a stale version writes nothing"
    restored = VersionsState()
    junk = [(b"9", None), (b"9", b"junk"), (None, b"")]
    assert restored.restore([*entries[:2], *junk, *entries[2:]]) == 2
    assert restored.as_dict() == live.as_dict()
    assert restored.as_dict()[1].modified_ms == 9


# -- the course stage ------------------------------------------------------------------------
def test_course_stage_reports_changes_changelog_and_unreadable_records():
    state = CourseState(DAY)
    add = pack_change(Change(1, add=(DAY * MS, 10), title=(100, b"Course")))
    edit = pack_change(Change(1, (DAY * MS, 10), (DAY * MS, 4), (200, b"Course")))
    title_only = pack_change(Change(2, title=(50, b"Older title")))
    changed, changelog, errors = state.apply(
        [(8, add), (8, b"junk"), (8, None), (8, edit), (8, title_only)]
    )
    assert changed == {8}
    assert set(errors) == {1, 2}
    assert all(reason.startswith("aggregator change record: ") for reason in errors.values())
    # The final value of each key the batch touched: what compaction keeps.
    assert sorted(changelog) == sorted([member_key(8, 1), title_key(8)])
    assert changelog[title_key(8)].endswith(b"Course")
    all_time, recent = state.statistics(8, T)
    assert (all_time["count_reviews"], all_time["sum_rating"], recent["sum_rating"]) == (1, 2, 2)
    assert all_time["course_title"] == "Course"
    restored = CourseState(DAY)
    assert restored.restore(changelog.items()) == 0
    assert restored.statistics(8, T) == state.statistics(8, T)

    # A title that loses changes nothing; a retraction leaves a tombstone.
    retract = pack_change(Change(1, retract=(DAY * MS, 4)))
    changed, changelog, errors = state.apply([(8, title_only), (8, retract)])
    assert (changed, changelog, errors) == ({8}, {member_key(8, 1): None}, {})
    assert state.apply([(8, title_only)]) == (set(), {}, {})
    # Counted, retracted and counted again in one batch: the last value of the key is logged.
    add6 = pack_change(Change(1, add=(DAY * MS, 6), title=(200, b"Course")))
    retract6 = pack_change(Change(1, retract=(DAY * MS, 6)))
    changed, changelog, errors = state.apply([(8, add6), (8, retract6), (8, add6)])
    assert (changed, list(changelog), errors) == ({8}, [member_key(8, 1)], {})
    restored = CourseState(DAY)
    assert restored.restore(changelog.items()) == 1, "its course's title entry is elsewhere"
    changed, changelog, errors = state.apply([(8, retract6), (8, add6), (8, retract6)])
    assert (changed, changelog, errors) == ({8}, {member_key(8, 1): None}, {})


def test_course_stage_refuses_impossible_changes_without_touching_the_state():
    state = CourseState(DAY)
    never_seen = pack_change(Change(1, retract=(DAY * MS, 4)))
    never_added = pack_change(Change(2, retract=(DAY * MS, 4), title=(1, b"T")))
    bad_title = pack_change(Change(3, add=(DAY * MS, 4), title=(1, b"\xff")))
    changed, changelog, errors = state.apply([(8, never_seen), (8, bad_title)])
    assert (changed, changelog, set(errors)) == (set(), {}, {0, 1})
    assert "never seen" in errors[0]
    assert state.courses == {}
    changed, changelog, errors = state.apply([(9, never_added)])
    assert (changed, changelog, set(errors)) == (set(), {}, {0})
    assert "never seen" in errors[0]
    # The docstring of CourseState._apply: all checks before any state changes.
    assert state.courses == {}, "a refused change created a course (no changelog entry for it)"
    # a course that exists: the retraction of a version it never counted changes nothing
    state.apply([(9, pack_change(Change(5, title=(1, b"Nine"))))])
    before = state.statistics(9, T)
    changed, changelog, errors = state.apply(
        [(9, pack_change(Change(6, retract=(DAY * MS, 4), title=(9, b"Z"))))]
    )
    assert (changed, changelog, set(errors)) == (set(), {}, {0})
    assert "never added" in errors[0]
    assert state.statistics(9, T) == before, "the title offer of a refused change is not taken"


def test_a_new_course_is_a_change_even_with_nothing_counted():
    state = CourseState(DAY)
    changed, changelog, _ = state.apply([(4, pack_change(Change(1, title=(0, b""))))])
    assert changed == {4}
    assert list(changelog) == [title_key(4)]
    assert state.statistics(4, T)[0]["count_reviews"] == 0
    restored = CourseState(DAY)
    assert restored.restore(changelog.items()) == 0
    assert restored.statistics(4, T) == state.statistics(4, T)


def test_course_stage_restore_counts_unreadable_entries():
    live = Stages()
    live.feed(1, ReviewVersion(1, DAY * MS, 10, True, 7, 0), "Seven")
    live.feed(2, ReviewVersion(1, DAY * MS, 6, True, 7, 1), "Seven")
    good = list(live.courses_log)
    bad = [
        (None, b"x"),
        (b"junk", b"x"),
        (member_key(7, 3), b"\x00"),  # a member value of the wrong size
        (member_key(7, 4), bytes(8) + b"\x0b"),  # halves 11
        (title_key(7), b"\x00" * 8 + b"\xff"),  # not UTF-8
        (member_key(5, 1), bytes(8) + b"\x01"),  # a course without a title entry
    ]
    restored = CourseState(DAY)
    assert restored.restore([*good[:1], *bad, *good[1:]]) == len(bad)
    assert restored.statistics(7, T) == live.courses.statistics(7, T)
    assert 5 not in restored.courses


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6),  # review
            st.integers(0, 4),  # modified
            st.sampled_from([DAY - 100, DAY - 89, DAY, DAY + 3]),
            st.integers(1, 10),
            st.booleans(),
            st.integers(1, 3),  # course
            st.sampled_from(["", "A", "B"]),
        ),
        max_size=30,
    )
)
def test_stages_equal_from_scratch_and_report_every_change(events):
    live = Stages()
    before = live.snapshot()
    for position, (rid, modified, day, halves, valid, course, title) in enumerate(events):
        changed = live.feed(
            rid, ReviewVersion(modified, day * MS, halves, valid, course, position), title
        )
        after = live.snapshot()
        assert after == live.scratch()
        assert {cid for cid in after if before.get(cid) != after[cid]} <= changed
        before = after
    assert live.restored().snapshot() == before


def test_restore_from_changelog_equals_the_live_state():
    rng = random.Random(5)
    live = Stages()
    for n in range(3000):
        rid = rng.randrange(800)
        modified = rng.randrange(10**6)
        v = version(rid, modified, rng.randint(1, 10), rng.random() > 0.1, position=n)
        live.feed(rid, v, rng.choice(["T", "U"]))
        if n % 500 == 0:
            live.courses.advance(DAY + n // 500)
    restored = live.restored()
    assert restored.versions.as_dict() == live.versions.as_dict()
    expected = live.scratch()
    assert live.snapshot() == restored.snapshot() == expected
    assert sorted(expected) == [7, 8, 9]


def test_a_snapshot_and_the_changelog_after_it_equal_the_live_state():
    """Snapshots between edits, re-ratings, verdict flips and moves between courses; each
    restore (snapshot + the changelog after it) equals the live state and the reference."""
    rng = random.Random(11)
    live = Stages()
    snaps: list[tuple[bytes, int, bytes, int]] = []
    for n in range(4000):
        rid = rng.randrange(600)
        created = (DAY - rng.randrange(200)) * MS
        v = ReviewVersion(
            rng.randrange(10**6),
            created,
            rng.randint(1, 10),
            rng.random() > 0.2,
            rng.choice([3, 4, 5, 6]),
            n,
        )
        live.feed(rid, v, rng.choice(["T", "U", "Ü"]))
        if n % 450 == 449:
            snaps.append(
                (
                    live.versions.to_snapshot(),
                    len(live.versions_log),
                    live.courses.to_snapshot(),
                    len(live.courses_log),
                )
            )
        if n % 610 == 609:
            vdata, vn, cdata, cn = snaps[-1]
            versions = VersionsState.from_snapshot(vdata)
            assert versions.restore(live.versions_log[vn:]) == 0
            assert versions.as_dict() == live.versions.as_dict()
            courses = CourseState.from_snapshot(cdata, DAY)
            assert courses.restore(live.courses_log[cn:]) == 0
            got = {cid: courses.statistics(cid, T) for cid in courses.courses}
            assert got == live.snapshot() == live.scratch()
            assert title_bytes_kept(courses) and title_bytes_kept(live.courses)
            assert courses.to_snapshot() == live.courses.to_snapshot(), "same member table"


def test_the_published_day_is_state_of_the_changelog_and_of_a_snapshot():
    live = Stages()
    live.feed(1, version(1, 5), "T")
    assert live.courses.published_day is None
    live.courses_log.append(live.courses.published(DAY))
    restored = CourseState(DAY)
    assert restored.restore(live.courses_log) == 0
    assert restored.published_day == DAY
    assert CourseState.from_snapshot(restored.to_snapshot(), DAY + 1).published_day == DAY
    tail = CourseState.from_snapshot(CourseState(DAY).to_snapshot(), DAY)
    assert tail.published_day is None
    assert tail.restore([live.courses.published(DAY + 1)]) == 0
    assert tail.published_day == DAY + 1


@pytest.mark.parametrize("cut", [0, 5, 13, -1, -9])
def test_a_damaged_snapshot_is_refused(cut):
    live = Stages()
    for n in range(20):
        live.feed(n, version(n, 5, 1 + n % 10, position=n), "Tï")
    for data, load in (
        (live.versions.to_snapshot(), VersionsState.from_snapshot),
        (live.courses.to_snapshot(), lambda d: CourseState.from_snapshot(d, DAY)),
    ):
        with pytest.raises(RecordFormatError):
            load(data[:cut])
        with pytest.raises(RecordFormatError):
            load(b"XXXX" + data[4:])
        with pytest.raises(RecordFormatError):
            load(data + b"\0")


def test_advance_moves_every_window_and_names_every_course():
    live = Stages()
    live.feed(1, ReviewVersion(1, DAY * MS, 10, True, 7, 0))
    live.feed(2, ReviewVersion(1, 0, 10, False, 8, 1))
    assert live.courses.advance(DAY) == []
    assert sorted(live.courses.advance(DAY + 90)) == [7, 8]
    assert live.snapshot() == live.scratch()
    assert live.courses.statistics(7, T)[1]["count_reviews"] == 0
    assert sorted(live.courses.advance(DAY + 89)) == [7, 8]
    assert live.courses.statistics(7, T)[1]["count_reviews"] == 1
    assert live.snapshot() == live.scratch()


def test_title_survives_restore_when_a_later_version_repeats_it():
    """The course title rule is a max over (modified, title). A later record repeating the
    current title raises the modified a rival must beat; the restored state must know it too,
    or a crash changes which title wins."""
    live = Stages()
    live.feed(1, ReviewVersion(10, DAY * MS, 10, True, 5, 0), "A")
    live.feed(2, ReviewVersion(20, DAY * MS, 10, True, 5, 1), "A")
    restored = live.restored()
    for stages in (live, restored):
        stages.feed(3, ReviewVersion(15, DAY * MS, 10, True, 5, 2), "B")
    assert live.snapshot() == live.scratch()
    assert live.courses.statistics(5, T)[0]["course_title"] == "A"
    assert restored.courses.statistics(5, T)[0]["course_title"] == "A"


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=12) | st.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_the_compiled_utf8_check_is_pythons(data):
    """Titles are judged compiled, decoded in Python afterwards: the two must never disagree."""
    try:
        data.decode("utf-8")
        expected = True
    except UnicodeDecodeError:
        expected = False
    buf = np.frombuffer(b"pad" + data + b"pad", np.uint8)
    assert valid_utf8(buf, 3, 3 + len(data)) == expected


def test_course_stage_refuses_a_second_add_and_a_retraction_of_another_rating():
    state = CourseState(DAY)
    add = pack_change(Change(1, add=(DAY * MS, 8), title=(1, b"A")))
    assert state.apply([(7, add)])[2] == {}
    _, changelog, errors = state.apply(
        [
            (7, add),
            (7, pack_change(Change(1, retract=(DAY * MS, 6)))),
            (7, pack_change(Change(1, retract=(DAY * MS - 1, 8)))),
            (7, pack_change(Change(2, title=(1, b"\xff")))),
            (9, pack_change(Change(1, retract=(DAY * MS, 8)))),
        ]
    )
    assert [reason.rsplit(": ", 1)[1] for _, reason in sorted(errors.items())] == [
        "adding a review already counted",
        "retracting a rating never added",
        "retracting a version never added",
        "the course title is not UTF-8",
        "a retraction for a course never seen",
    ]
    assert changelog == {} and 9 not in state.courses
    assert state.statistics(7, T)[0]["count_reviews"] == 1


def test_retracting_the_latest_review_finds_the_one_before():
    state = CourseState(DAY)
    for review, day in ((1, DAY - 3), (2, DAY - 1), (3, DAY - 1)):
        state.apply([(7, pack_change(Change(review, add=(day * MS, 8), title=(1, b"A"))))])
    state.apply([(7, pack_change(Change(3, retract=((DAY - 1) * MS, 8))))])
    assert state.statistics(7, T)[0]["last_review_time"] == (DAY - 1) * MS
    state.apply([(7, pack_change(Change(2, retract=((DAY - 1) * MS, 8))))])
    all_time, recent = state.statistics(7, T)
    assert all_time["last_review_time"] == recent["last_review_time"] == (DAY - 3) * MS
    state.apply([(7, pack_change(Change(1, retract=((DAY - 3) * MS, 8))))])
    assert state.statistics(7, T)[0]["last_review_time"] == 0


def title_bytes_kept(state: CourseState) -> bool:
    """`nbytes` counts titles by a running sum (read on every commit): it is their bytes."""
    return state._title_bytes == sum(len(raw) for _, raw, _ in state._titles)


def test_state_bytes_per_review_stay_compact():
    versions, courses = VersionsState(), CourseState(DAY)
    for i in range(20_000):
        routed, _ = versions.apply(i, version(i, 1, position=i), b"Title")
        courses.apply(routed)
    assert (versions.nbytes() + courses.nbytes()) / len(versions) < 100


def test_a_changelog_of_the_earlier_layout_is_refused_with_the_way_out() -> None:
    """Format 3 ordered versions by offset alone, on the partition of the producer's key:
    such state cannot be carried over exactly, so the worker refuses it (no silent skip)."""
    old = b"\x03" + pack_version(1, version(1, 1))[1:]
    with pytest.raises(StateLayoutError, match="format-3"):
        VersionsState().restore([(b"1", old)])
