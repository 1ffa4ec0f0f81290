"""The statistics arithmetic: the production state (`VersionsState` routing changes to
`CourseState`, as the worker wires them: current version per review, retract the old, add the
new) must equal the from-scratch reference for any arrival order, and the reference must equal an
independent pandas computation."""

import json
import math
import re
import struct
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.aggregation import CourseState, VersionsState
from streaming.core.ratings import (
    BUCKET_FIELDS,
    RATINGS,
    normalise_rating,
    rating_halves,
    star_bucket,
)
from streaming.core.stats import (
    ReviewVersion,
    compute_from_scratch,
    supersedes,
    title_wins,
)
from streaming.core.window import (
    MS_PER_DAY,
    RECENT_DAYS,
    date_to_day,
    day_to_date,
    epoch_day,
    window_bounds,
)
from tests.unit.aggregation_records import Change, pack_change, title_key

AS_OF = 20_000  # 2024-10-04
T = 7  # as_of_time of the statistics records compared here (CourseState needs an int)
SCHEMA_PATH = Path(__file__).parents[2] / "schemas" / "course_statistic.avsc"
SCHEMA = parse_schema(json.loads(SCHEMA_PATH.read_text()))
FIELDS = [field["name"] for field in json.loads(SCHEMA_PATH.read_text())["fields"]]

Event = tuple[int, ReviewVersion, str]  # review id, version, the record's course title

# Days around both window edges, far in the past, and after the as-of day (clock behind).
DAYS = [AS_OF - 400, AS_OF - 90, AS_OF - 89, AS_OF - 40, AS_OF - 1, AS_OF, AS_OF + 1, AS_OF + 30]
TITLES = ["", "Kafka", "Kafka 101", "Zebra"]
versions = st.builds(
    ReviewVersion,
    modified_ms=st.integers(0, 5),  # few values, so ties (the later position wins) are common
    created_ms=st.builds(
        lambda day, ms: day * MS_PER_DAY + ms,
        st.sampled_from(DAYS),
        st.sampled_from([0, 1, 3_600_000, MS_PER_DAY - 1]),
    ),
    halves=st.integers(1, 10),
    valid=st.booleans(),
    course_id=st.integers(1, 3),
)


@st.composite
def histories(draw: st.DrawFn, min_size: int = 0) -> list[Event]:
    """Records of a few reviews in any arrival order. Each record has its own position in
    udemy-reviews; some are delivered twice (the same record: equal position), some are re-sent
    as new records with equal contents (a new position)."""
    drawn = draw(
        st.lists(
            st.tuples(st.integers(0, 12), versions, st.sampled_from(TITLES)),
            min_size=min_size,
            max_size=50,
        )
    )
    events: list[Event] = []
    for position, (review_id, version, title) in enumerate(drawn):
        version.position = position
        events.append((review_id, version, title))
    if events:
        for _ in range(draw(st.integers(0, 8))):
            review_id, version, title = draw(st.sampled_from(events))
            copy = ReviewVersion(
                version.modified_ms,
                version.created_ms,
                version.halves,
                version.valid,
                version.course_id,
                # re-delivered (same record) or re-sent (a new record, after every other)
                version.position if draw(st.booleans()) else len(events) + len(drawn),
            )
            events.insert(draw(st.integers(0, len(events))), (review_id, copy, title))
    return draw(st.permutations(events))


class Model:
    """The KTable transition in one process, as the worker wires it: one `VersionsState`
    (a review's current version is its greatest (modified, position); a superseding version
    emits the retraction of the old one, if it was counted, and the addition of itself, if
    valid; every record offers its course title) routing its changes to one `CourseState`."""

    def __init__(self, as_of_day: int) -> None:
        self.versions = VersionsState()
        self.courses = CourseState(as_of_day)

    def apply(self, event: Event) -> set[int]:
        review_id, version, title = event
        routed, _entry = self.versions.apply(review_id, version, title.encode("utf-8"))
        changed, _entries, errors = self.courses.apply(routed)
        assert errors == {}
        return changed

    def advance(self, as_of_day: int) -> list[int]:
        return self.courses.advance(as_of_day)

    def total(self, course_id: int) -> list[int]:
        return histogram(self.courses, course_id)

    def recent(self, course_id: int) -> list[int]:
        return histogram(self.courses, course_id, recent=True)

    def snapshot(self, as_of_time: int = T) -> dict[int, tuple[dict, dict]]:
        return {cid: self.courses.statistics(cid, as_of_time) for cid in self.courses.courses}


def histogram(state: CourseState, course_id: int, recent: bool = False) -> list[int]:
    """A course's all-time or recent histogram of rating halves (index = halves, 0..10)."""
    return state.hist[state.courses[course_id], int(recent)].tolist()


def change(
    review_id: int,
    *,
    retract: tuple[int, int] | None = None,
    add: tuple[int, int] | None = None,
    title: tuple[int, bytes] | None = None,
) -> bytes:
    return pack_change(Change(review_id, retract=retract, add=add, title=title))


def apply_ok(state: CourseState, course_id: int, *changes: bytes) -> set[int]:
    """Apply packed changes to one course; none may be refused."""
    changed, _entries, errors = state.apply([(course_id, c) for c in changes])
    assert errors == {}
    return changed


def fingerprint(state: CourseState) -> tuple:
    """Everything a course stage holds: courses, titles, member rows, histograms, figures."""
    return (
        state.to_snapshot(),
        {
            cid: (state.statistics(cid, T), state.hist[slot].tolist(), state.figures[slot].tolist())
            for cid, slot in state.courses.items()
        },
    )


def assert_refused(state: CourseState, course_id: int, data: bytes, reason: str) -> None:
    """The change is refused with `reason` and leaves the state as it was."""
    before = fingerprint(state)
    changed, entries, errors = state.apply([(course_id, data)])
    assert list(errors) == [0]
    assert errors[0].endswith(f"course {course_id}: {reason}"), errors[0]
    assert (changed, entries) == (set(), {})
    assert fingerprint(state) == before


def offer_title(state: CourseState, course_id: int, modified: int, title: bytes) -> bool:
    """Offer a record's course title (a title-only change, as a stale version emits); whether
    it won (the course's (modified, title) changed, even when the title text stays the same)."""
    first = course_id not in state.courses
    text_before = None if first else state.title(course_id)[1]
    changed, entries, errors = state.apply([(course_id, change(0, title=(modified, title)))])
    assert errors == {}
    won = title_key(course_id) in entries
    if won:
        assert entries[title_key(course_id)] == struct.pack(">q", modified) + title
    assert set(entries) <= {title_key(course_id)}
    # Its statistics records change when the course is new or its title text changed.
    assert (course_id in changed) == (first or state.title(course_id)[1] != text_before)
    return won


def scratch(events: list[Event], as_of_day: int, as_of_time: int = T) -> dict:
    return compute_from_scratch(events, as_of_day, as_of_time=as_of_time)


def check_sane(stats: dict[int, tuple[dict, dict]]) -> None:
    for records in stats.values():
        for record in records:
            assert set(record) == set(FIELDS)
            assert math.isfinite(record["average_rating"])
            assert math.isfinite(record["sum_rating"])
            if record["count_reviews"] == 0:
                assert record["average_rating"] == 0.0
                assert record["last_review_time"] == 0
            assert validate(record, SCHEMA)


@settings(max_examples=250, deadline=None)
@given(histories())
def test_incremental_equals_from_scratch_after_every_record(events: list[Event]) -> None:
    model = Model(AS_OF)
    for n, event in enumerate(events, start=1):
        model.apply(event)
        assert model.snapshot(7) == scratch(events[:n], AS_OF, 7)
    check_sane(model.snapshot())


@settings(max_examples=150, deadline=None)
@given(
    histories(),
    st.lists(st.one_of(st.integers(0, 3), st.integers(-120, 200)), min_size=1, max_size=10),
    st.data(),
)
def test_moving_window_both_ways_interleaved_with_versions_equals_from_scratch(
    events: list[Event], steps: list[int], data: st.DataObject
) -> None:
    model = Model(AS_OF)
    size = len(steps)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), min_size=size, max_size=size)))
    day, done = AS_OF, 0
    for step, cut in zip(steps, cuts, strict=True):
        for event in events[done:cut]:
            model.apply(event)
        done = cut
        before = {cid: model.recent(cid) for cid in model.courses.courses}
        day += step
        moved = model.advance(day)
        assert model.snapshot() == scratch(events[:done], day)
        for cid in model.courses.courses:
            if model.recent(cid) != before[cid]:
                assert cid in moved, "advance must name the courses whose recent counts changed"
            if step == 0:
                assert cid not in moved
    for event in events[done:]:
        model.apply(event)
    assert model.snapshot() == scratch(events, day)
    check_sane(model.snapshot())
    # With no new reviews, every course decays to zero 90 days after its latest one.
    last_day = max((epoch_day(v.created_ms) for _, v, _ in events), default=day)
    model.advance(max(day, last_day + RECENT_DAYS))
    assert all(model.recent(cid) == [0] * 11 for cid in model.courses.courses)


def test_course_decays_to_zero_after_90_days_and_comes_back() -> None:
    events = [
        (
            review_id,
            ReviewVersion(1, (AS_OF - review_id) * MS_PER_DAY + 5, 10, True, 7, review_id),
            "T",
        )
        for review_id in range(10)
    ]
    model = Model(AS_OF)
    for event in events:
        model.apply(event)
    days = [*range(AS_OF, AS_OF + RECENT_DAYS + 2), AS_OF - 5, AS_OF + 500, AS_OF]
    for day in days:
        model.advance(day)
        assert model.snapshot() == scratch(events, day)
    model.advance(AS_OF + RECENT_DAYS + 1)
    all_time, recent = model.courses.statistics(7, T)
    assert (recent["count_reviews"], recent["average_rating"], recent["last_review_time"]) == (
        0,
        0.0,
        0,
    )
    assert all_time["count_reviews"] == 10
    model.advance(AS_OF)  # back again: the window takes the reviews back
    assert model.courses.statistics(7, T)[1]["count_reviews"] == 10


def test_edits_verdict_flips_ties_and_stale_versions_move_the_statistics() -> None:
    model = Model(AS_OF)
    created = AS_OF * MS_PER_DAY
    steps = [
        ((1, ReviewVersion(created, created, 10, True, 5, 0), "T"), 1, 5.0),
        ((2, ReviewVersion(created + 9, created + 9, 8, True, 5, 1), "T"), 2, 9.0),
        ((2, ReviewVersion(created + 20, created + 9, 6, True, 5, 2), "T"), 2, 8.0),  # re-rated
        ((2, ReviewVersion(created + 10, created + 9, 2, True, 5, 3), "T"), 2, 8.0),  # stale
        ((1, ReviewVersion(created + 30, created, 10, False, 5, 4), "T"), 1, 3.0),  # -> fraud
        ((1, ReviewVersion(created + 30, created, 10, False, 5, 4), "T"), 1, 3.0),  # again
        ((1, ReviewVersion(created + 40, created, 9, True, 5, 6), "T"), 2, 7.5),  # -> valid
        ((1, ReviewVersion(created + 40, created, 2, True, 5, 5), "T"), 2, 7.5),  # earlier tie
        ((1, ReviewVersion(created + 40, created, 2, True, 5, 7), "T"), 2, 4.0),  # later tie
    ]
    seen = []
    for event, count, sum_rating in steps:
        model.apply(event)
        seen.append(event)
        record = model.courses.statistics(5, T)[0]
        assert (record["count_reviews"], record["sum_rating"]) == (count, sum_rating)
        assert model.snapshot() == scratch(seen, AS_OF)
    assert record["average_rating"] == 2.0
    assert record["last_review_time"] == created + 9
    assert (record["count_one_star"], record["count_three_stars"]) == (1, 1)


def test_last_review_time_survives_retracting_the_latest_review() -> None:
    state = CourseState(AS_OF)
    early = (AS_OF - 3) * MS_PER_DAY
    late = AS_OF * MS_PER_DAY + 7
    same_day = AS_OF * MS_PER_DAY + 3
    future = (AS_OF + 2) * MS_PER_DAY
    review = {created: review_id for review_id, created in enumerate((late, early, future))}
    review[same_day] = 3
    apply_ok(state, 1, change(0, title=(0, b"T")))
    for created in (late, early, future, same_day):
        apply_ok(state, 1, change(review[created], add=(created, 10)))

    def last() -> tuple[int, int]:
        all_time, recent = state.statistics(1, T)
        return all_time["last_review_time"], recent["last_review_time"]

    assert last() == (future, late)
    apply_ok(state, 1, change(review[future], retract=(future, 10)))
    assert last() == (late, late)
    apply_ok(state, 1, change(review[late], retract=(late, 10)))
    assert last() == (same_day, same_day)
    apply_ok(state, 1, change(review[same_day], retract=(same_day, 10)))
    assert last() == (early, early)
    state.advance(AS_OF + RECENT_DAYS)  # early has left the window, not the course
    assert last() == (early, 0)
    apply_ok(state, 1, change(review[early], retract=(early, 10)))
    assert last() == (0, 0)
    assert_refused(
        state, 1, change(review[early], retract=(early, 10)), "retracting a version never added"
    )


def test_retract_refuses_what_was_never_added_and_changes_nothing() -> None:
    state = CourseState(AS_OF)
    created = AS_OF * MS_PER_DAY
    apply_ok(state, 1, change(1, add=(created, 10), title=(0, b"T")))
    assert_refused(state, 1, change(1, retract=(created, 9)), "retracting a rating never added")
    assert_refused(
        state, 1, change(1, retract=(created + 1, 10)), "retracting a version never added"
    )
    assert_refused(state, 1, change(2, retract=(created, 10)), "retracting a version never added")
    assert_refused(state, 1, change(1, add=(created, 10)), "adding a review already counted")
    assert_refused(
        state, 2, change(1, retract=(created, 10)), "a retraction for a course never seen"
    )
    assert histogram(state, 1) == histogram(state, 1, recent=True) == [0] * 10 + [1]
    assert state.statistics(1, T)[0]["last_review_time"] == created
    assert list(state.courses) == [1]


def test_title_is_the_greatest_modified_then_the_greatest_title() -> None:
    assert title_wins(5, "", None)
    assert title_wins(6, "A", (5, "Z"))
    assert not title_wins(4, "Z", (5, "A"))
    assert title_wins(5, "B", (5, "A"))
    assert not title_wins(5, "A", (5, "B"))
    assert not title_wins(5, "A", (5, "A"))
    state = CourseState(AS_OF)
    assert 3 not in state.courses  # no title, no course
    assert offer_title(state, 3, 10, b"Kafka")
    assert not offer_title(state, 3, 5, b"Old title")  # stale: does not revert it
    assert state.title(3)[1] == "Kafka"
    assert offer_title(state, 3, 10, b"Kafka!")  # a tie: the greater title
    assert not offer_title(state, 3, 10, b"Kafka")
    assert offer_title(state, 3, 20, b"Kafka for Beginners")
    assert offer_title(state, 3, 30, b"Kafka for Beginners")  # the same title wins again, later
    assert not offer_title(state, 3, 25, b"Later title")  # ... so 30 is what a rival must beat
    assert state.title(3) == (30, "Kafka for Beginners")
    assert_refused(state, 3, change(0, title=(99, b"\xff")), "the course title is not UTF-8")
    assert state.title(3) == (30, "Kafka for Beginners")
    assert state.statistics(3, T)[0]["count_reviews"] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.text(max_size=3)), max_size=8))
def test_titles_offered_as_utf8_follow_the_rule_on_text(offers: list[tuple[int, str]]) -> None:
    """The course stage compares titles as UTF-8 bytes; the rule is on text (code points)."""
    state = CourseState(AS_OF)
    best: tuple[int, str] | None = None
    for modified, title in offers:
        won = offer_title(state, 1, modified, title.encode("utf-8"))
        assert won == title_wins(modified, title, best)
        if won:
            best = (modified, title)
        assert state.title(1) == best
        # the UTF-8 title kept for comparisons is the text's (a snapshot stores those bytes)
        assert CourseState.from_snapshot(state.to_snapshot(), AS_OF).title(1) == best
    assert (1 in state.courses) == bool(offers)


def test_an_empty_title_is_a_title() -> None:
    state = CourseState(AS_OF)
    assert offer_title(state, 3, 1, b"")  # the first title, even empty, is news
    assert not offer_title(state, 3, 0, b"Older")
    assert state.title(3) == (1, "")


def test_a_review_moving_course_and_back_changes_both() -> None:
    model = Model(AS_OF)
    model.apply((1, ReviewVersion(1, 0, 10, True, 1, 0), "one"))
    model.apply((1, ReviewVersion(2, 0, 10, True, 2, 1), "two"))
    assert [sum(model.total(cid)) for cid in (1, 2)] == [0, 1]
    model.apply((1, ReviewVersion(3, 0, 4, True, 1, 2), "one"))
    assert [sum(model.total(cid)) for cid in (1, 2)] == [1, 0]
    assert model.total(1)[4] == 1


def test_records_match_the_avro_schema() -> None:
    state = CourseState(AS_OF)
    apply_ok(
        state,
        42,
        change(1, add=(AS_OF * MS_PER_DAY, 9), title=(0, b"A course")),
        change(2, add=((AS_OF - 200) * MS_PER_DAY, 1)),
    )
    apply_ok(state, 43, change(3, title=(0, b"")))  # a course with no review counted
    all_time, recent = state.statistics(42, T)
    empty = state.statistics(43, T)[1]
    for record in (all_time, recent, empty):
        assert list(record) == FIELDS
        assert validate(record, SCHEMA)
    assert (all_time["window_start_day"], all_time["window_end_day"]) == (None, None)
    assert (recent["window_start_day"], recent["window_end_day"]) == (AS_OF - 89, AS_OF)
    assert (all_time["sum_rating"], all_time["average_rating"]) == (5.0, 2.5)
    assert (all_time["count_zero_star"], all_time["count_four_stars"]) == (1, 1)
    assert (recent["count_reviews"], recent["sum_rating"], recent["as_of_time"]) == (1, 4.5, T)
    assert all_time["course_title"] == "A course"
    assert (empty["average_rating"], empty["last_review_time"], empty["course_title"]) == (
        0.0,
        0,
        "",
    )


@pytest.mark.parametrize("halves", [0, 11, -1])
def test_add_rejects_halves_out_of_range(halves: int) -> None:
    state = CourseState(AS_OF)
    apply_ok(state, 1, change(0, title=(0, b"T")))
    data = bytearray(change(1, add=(0, 1)))
    data[27] = halves & 0xFF  # the addition's halves byte (-1 is 255 on the wire)
    assert_refused(state, 1, bytes(data), "rating halves outside 1..10")
    assert histogram(state, 1) == histogram(state, 1, recent=True) == [0] * 11


def test_supersedes_greatest_modified_then_greatest_position() -> None:
    stored = ReviewVersion(10, 0, 10, True, 1, 5)
    assert supersedes(stored, None)
    assert supersedes(ReviewVersion(11, 0, 2, True, 1, 0), stored)
    assert supersedes(ReviewVersion(10, 0, 2, True, 1, 6), stored)
    assert not supersedes(ReviewVersion(10, 0, 2, True, 1, 4), stored)
    assert not supersedes(ReviewVersion(9, 0, 2, True, 1, 99), stored)
    assert not supersedes(ReviewVersion(10, 0, 10, True, 1, 5), stored), "the same record"


def test_from_scratch_refuses_two_versions_at_one_position_and_accepts_copies() -> None:
    v = ReviewVersion(10, 0, 10, True, 1, 5)
    copy = ReviewVersion(10, 0, 10, True, 1, 5)
    result = compute_from_scratch([(1, v), (1, copy)], AS_OF)
    assert result[1][0]["count_reviews"] == 1
    with pytest.raises(ValueError, match="one \\(modified, position\\)"):
        compute_from_scratch([(1, v), (1, ReviewVersion(10, 0, 8, True, 1, 5))], AS_OF)
    # Different reviews may share a position's value (different partitions).
    assert compute_from_scratch([(1, v), (2, copy)], AS_OF)[1][0]["count_reviews"] == 2


def test_from_scratch_names_every_course_of_any_record() -> None:
    events = [
        (1, ReviewVersion(10, 0, 10, True, 1, 0), "one"),
        (1, ReviewVersion(5, 0, 10, True, 2, 1), "stale two"),  # stale, on another course
        (2, ReviewVersion(10, 0, 10, False, 3, 2), "fraud three"),  # fraud only
        (3, ReviewVersion(10, 0, 10, True, 4, 3), "four"),
        (3, ReviewVersion(11, 0, 10, True, 1, 4), "one, later"),  # moved away from 4
    ]
    result = compute_from_scratch(events, AS_OF)
    assert sorted(result) == [1, 2, 3, 4]
    assert {cid: result[cid][0]["count_reviews"] for cid in result} == {1: 2, 2: 0, 3: 0, 4: 0}
    assert {cid: result[cid][0]["course_title"] for cid in result} == {
        1: "one, later",
        2: "stale two",
        3: "fraud three",
        4: "four",
    }
    assert compute_from_scratch(events, AS_OF, titles={1: "X"})[1][1]["course_title"] == "X"
    assert compute_from_scratch(events[::-1], AS_OF) == result
    check_sane(result)


@pytest.mark.parametrize(
    ("rating", "halves", "field"),
    [
        ("0.5", 1, "count_zero_star"),
        ("1.0", 2, "count_one_star"),
        ("1.5", 3, "count_one_star"),
        ("2.0", 4, "count_two_stars"),
        ("2.5", 5, "count_two_stars"),
        ("3.0", 6, "count_three_stars"),
        ("3.5", 7, "count_three_stars"),
        ("4.0", 8, "count_four_stars"),
        ("4.5", 9, "count_four_stars"),
        ("5.0", 10, "count_five_stars"),
    ],
)
def test_rating_halves_and_star_buckets(rating: str, halves: int, field: str) -> None:
    assert rating in RATINGS
    assert rating_halves(rating) == halves
    assert BUCKET_FIELDS[star_bucket(halves)] == field
    state = CourseState(AS_OF)
    apply_ok(state, 1, change(1, add=(AS_OF * MS_PER_DAY, halves), title=(0, b"T")))
    assert (
        histogram(state, 1)
        == histogram(state, 1, recent=True)
        == [int(h == halves) for h in range(11)]
    )
    all_time, record = state.statistics(1, T)
    assert all_time == {**record, "window_start_day": None, "window_end_day": None}
    assert [name for name in BUCKET_FIELDS if record[name]] == [field]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, "5.0"),
        (5.0, "5.0"),
        ("5", "5.0"),
        ("5.0", "5.0"),
        ("4.50", "4.5"),
        (0.5, "0.5"),
        ("+1", "1.0"),
        (np.float64(3.5), "3.5"),
        (np.int64(2), "2.0"),
    ],
)
def test_normalise_rating_accepts_half_steps(value: object, expected: str) -> None:
    assert normalise_rating(value) == expected  # type: ignore[arg-type]  # other types on purpose
    assert rating_halves(str(value)) == RATINGS.index(expected) + 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "outside 0.5..5.0"),
        (5.5, "outside 0.5..5.0"),
        ("-1", "outside 0.5..5.0"),
        (4.25, "not a multiple of 0.5"),
        ("4.5000001", "not a multiple of 0.5"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        ("nan", "not a decimal number"),
        ("", "not a decimal number"),
        (" 5", "not a decimal number"),
        ("1e0", "not a decimal number"),
        ("five", "not a decimal number"),
        (True, "boolean"),
        (None, "has type NoneType"),
        ([5], "has type list"),
    ],
)
def test_normalise_rating_rejects_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        normalise_rating(value)  # type: ignore[arg-type]  # other types on purpose


def test_rating_halves_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a decimal number"):
        rating_halves("great")


def test_window_and_day_arithmetic() -> None:
    assert RECENT_DAYS == 90
    assert window_bounds(AS_OF) == (AS_OF - 89, AS_OF)
    assert epoch_day(0) == 0
    assert epoch_day(MS_PER_DAY - 1) == 0
    assert epoch_day(MS_PER_DAY) == 1
    assert epoch_day(-1) == -1
    assert day_to_date(0) == date(1970, 1, 1)
    assert day_to_date(AS_OF) == date(2024, 10, 4)
    assert date_to_day(date(2024, 10, 4)) == AS_OF
    assert date_to_day(datetime(2024, 10, 4, 23, 59, tzinfo=UTC)) == AS_OF
    stamp = int(datetime(2024, 10, 4, 12, tzinfo=UTC).timestamp() * 1000)
    assert epoch_day(stamp) == AS_OF


@settings(max_examples=60, deadline=None)
@given(histories(min_size=1))
def test_from_scratch_equals_pandas_in_any_order(events: list[Event]) -> None:
    frame = pd.DataFrame(
        [
            {"review_id": rid, "title": title, **{k: getattr(v, k) for k in v.__slots__}}
            for rid, v, title in events
        ]
    )
    current = frame.sort_values(["modified_ms", "position"]).drop_duplicates(
        "review_id", keep="last"
    )
    counted = current[current["valid"]]
    start, end = window_bounds(AS_OF)
    day = counted["created_ms"] // MS_PER_DAY
    expected = {
        recent: aggregate_with_pandas(counted[day.between(start, end)] if recent else counted)
        for recent in (False, True)
    }
    titles = (
        frame.sort_values(["modified_ms", "title"]).drop_duplicates("course_id", keep="last")
    ).set_index("course_id")["title"]
    result = compute_from_scratch(events, AS_OF)
    assert compute_from_scratch(events[::-1], AS_OF) == result
    assert set(result) == set(frame["course_id"])
    for course_id, records in result.items():
        for recent, record in zip((False, True), records, strict=True):
            assert record["course_title"] == titles[course_id]
            row = expected[recent].get(course_id)
            if row is None:
                assert record["count_reviews"] == 0
                continue
            assert record["count_reviews"] == row["count"]
            assert record["sum_rating"] == row["sum_rating"]
            assert record["average_rating"] == pytest.approx(row["average"])
            assert record["last_review_time"] == row["last"]
            assert [record[name] for name in BUCKET_FIELDS] == row["buckets"]


def aggregate_with_pandas(counted: pd.DataFrame) -> dict[int, dict]:
    if counted.empty:
        return {}
    grouped = counted.groupby("course_id").agg(
        count=("halves", "size"), halves=("halves", "sum"), last=("created_ms", "max")
    )
    buckets = pd.crosstab(counted["course_id"], counted["halves"] // 2).reindex(
        columns=range(6), fill_value=0
    )
    return {
        int(course_id): {
            "count": int(row["count"]),
            "sum_rating": row["halves"] / 2,
            "average": row["halves"] / 2 / row["count"],
            "last": int(row["last"]),
            "buckets": [int(n) for n in buckets.loc[course_id]],
        }
        for course_id, row in grouped.iterrows()
    }
