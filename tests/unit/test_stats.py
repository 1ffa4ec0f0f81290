"""The incremental statistics (apply_version, moving windows) must equal the from-scratch
reference for any arrival order, and the reference must equal an independent pandas computation."""

import json
import math
import re
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.ratings import (
    BUCKET_FIELDS,
    RATINGS,
    normalise_rating,
    rating_halves,
    star_bucket,
)
from streaming.core.stats import (
    Aggregates,
    CourseStats,
    ReviewVersion,
    apply_version,
    compute_from_scratch,
    supersedes,
    to_course_statistic,
)
from streaming.core.window import (
    MS_PER_DAY,
    RECENT_DAYS,
    date_to_day,
    day_to_date,
    epoch_day,
    window_bounds,
)

AS_OF = 20_000  # 2024-10-04
SCHEMA_PATH = Path(__file__).parents[2] / "schemas" / "course_statistic.avsc"
SCHEMA = parse_schema(json.loads(SCHEMA_PATH.read_text()))
FIELDS = [field["name"] for field in json.loads(SCHEMA_PATH.read_text())["fields"]]

Event = tuple[int, ReviewVersion]

# Days around both window edges, far in the past, and after the as-of day (clock behind).
DAYS = [AS_OF - 400, AS_OF - 90, AS_OF - 89, AS_OF - 40, AS_OF - 1, AS_OF, AS_OF + 1, AS_OF + 30]
versions = st.builds(
    ReviewVersion,
    modified_ms=st.integers(0, 5),  # few values, so ties (later record wins) are common
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
    """Versions of a few reviews in any order, with exact duplicates (equal copies) re-sent."""
    events = draw(st.lists(st.tuples(st.integers(0, 12), versions), min_size=min_size, max_size=50))
    if events:
        for _ in range(draw(st.integers(0, 8))):
            review_id, version = draw(st.sampled_from(events))
            events.insert(draw(st.integers(0, len(events))), (review_id, replace(version)))
    return draw(st.permutations(events))


def title(course_id: int) -> str:
    return f"course {course_id}"


def snapshot(state: Aggregates, as_of_time: int | None = None) -> dict[int, tuple[dict, dict]]:
    return {
        course_id: (
            to_course_statistic(course, recent=False, as_of_time=as_of_time),
            to_course_statistic(course, recent=True, as_of_time=as_of_time),
        )
        for course_id, course in state.courses.items()
    }


def scratch(events: list[Event], as_of_day: int, as_of_time: int | None = None) -> dict:
    titles = {version.course_id: title(version.course_id) for _, version in events}
    return compute_from_scratch(events, as_of_day, titles=titles, as_of_time=as_of_time)


def check_sane(stats: dict[int, tuple[dict, dict]]) -> None:
    for records in stats.values():
        for record in records:
            assert set(record) == set(FIELDS)
            assert math.isfinite(record["average_rating"])
            if record["count_reviews"] == 0:
                assert record["average_rating"] == 0.0
                assert record["last_review_time"] == 0
            assert validate(record, SCHEMA)


def apply(state: Aggregates, current: dict[int, ReviewVersion], event: Event) -> tuple[int, ...]:
    review_id, version = event
    stored = current.get(review_id)
    current[review_id], changed = apply_version(state, stored, version, title(version.course_id))
    return changed


@settings(max_examples=300, deadline=None)
@given(histories())
def test_incremental_equals_from_scratch_and_reports_every_change(events: list[Event]) -> None:
    state = Aggregates(AS_OF)
    current: dict[int, ReviewVersion] = {}
    seen: list[Event] = []
    before = snapshot(state)
    for event in events:
        changed = apply(state, current, event)
        seen.append(event)
        after = snapshot(state)
        assert after == scratch(seen, AS_OF)
        moved = {cid for cid in after if before.get(cid) != after[cid]}
        assert moved <= set(changed)
        before = after
    check_sane(before)


@settings(max_examples=150, deadline=None)
@given(
    histories(),
    st.lists(st.one_of(st.integers(0, 3), st.integers(-120, 200)), min_size=1, max_size=10),
    st.data(),
)
def test_moving_window_interleaved_with_versions_equals_from_scratch(
    events: list[Event], steps: list[int], data: st.DataObject
) -> None:
    state = Aggregates(AS_OF)
    current: dict[int, ReviewVersion] = {}
    size = len(steps)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), min_size=size, max_size=size)))
    day, done = AS_OF, 0
    for step, cut in zip(steps, cuts, strict=True):
        for event in events[done:cut]:
            apply(state, current, event)
        done = cut
        before = snapshot(state)
        day += step
        changed = state.advance(day)
        after = snapshot(state)
        assert after == scratch(events[:done], day)
        recounted = {
            cid
            for cid in after
            if before[cid][1]["count_reviews"] != after[cid][1]["count_reviews"]
        }
        assert recounted <= set(changed)
    for event in events[done:]:
        apply(state, current, event)
    assert snapshot(state) == scratch(events, day)
    check_sane(snapshot(state))
    # With no new reviews, every course decays to zero 90 days after its latest one.
    last_day = max((epoch_day(v.created_ms) for _, v in events), default=day)
    state.advance(max(day, last_day + RECENT_DAYS))
    assert all(course.recent == [0] * 11 for course in state.courses.values())


def test_course_decays_to_zero_after_90_days() -> None:
    events = [
        (review_id, ReviewVersion(1, (AS_OF - review_id) * MS_PER_DAY + 5, 10, True, 7))
        for review_id in range(10)
    ]
    state = Aggregates(AS_OF)
    current: dict[int, ReviewVersion] = {}
    for event in events:
        apply(state, current, event)
    for day in range(AS_OF, AS_OF + RECENT_DAYS + 2):
        state.advance(day)
        assert snapshot(state) == scratch(events, day)
    recent = to_course_statistic(state.courses[7], recent=True)
    assert (recent["count_reviews"], recent["average_rating"], recent["last_review_time"]) == (
        0,
        0.0,
        0,
    )
    assert to_course_statistic(state.courses[7], recent=False)["count_reviews"] == 10


def test_edits_and_verdict_flips_move_the_statistics() -> None:
    state = Aggregates(AS_OF)
    current: dict[int, ReviewVersion] = {}
    created = AS_OF * MS_PER_DAY
    steps = [
        ((1, ReviewVersion(created, created, 10, True, 5)), (5,), 1, 5.0),
        ((2, ReviewVersion(created + 9, created + 9, 8, True, 5)), (5,), 2, 9.0),
        ((2, ReviewVersion(created + 20, created + 9, 6, True, 5)), (5,), 2, 8.0),  # edit
        ((2, ReviewVersion(created + 10, created + 9, 2, True, 5)), (), 2, 8.0),  # stale
        ((1, ReviewVersion(created + 30, created, 10, False, 5)), (5,), 1, 3.0),  # -> fraud
        ((1, ReviewVersion(created + 30, created, 10, False, 5)), (), 1, 3.0),  # duplicate
        ((1, ReviewVersion(created + 40, created, 9, True, 5)), (5,), 2, 7.5),  # -> valid
    ]
    for event, changed, count, sum_rating in steps:
        review_id, version = event
        current[review_id], got = apply_version(state, current.get(review_id), version)
        record = to_course_statistic(state.courses[5], recent=False)
        assert (got, record["count_reviews"], record["sum_rating"]) == (changed, count, sum_rating)
    assert record["average_rating"] == 3.75
    assert record["last_review_time"] == created + 9
    assert (record["count_four_stars"], record["count_three_stars"]) == (1, 1)


def test_last_review_time_survives_retracting_the_latest_review() -> None:
    stats = CourseStats(1, AS_OF)
    early = ReviewVersion(0, (AS_OF - 3) * MS_PER_DAY, 10, True, 1)
    late = ReviewVersion(0, AS_OF * MS_PER_DAY + 7, 10, True, 1)
    future = ReviewVersion(0, (AS_OF + 2) * MS_PER_DAY, 10, True, 1)
    for version in (late, early, future):
        stats.add(version)
    assert stats.last_review_time() == future.created_ms
    assert stats.last_review_time(recent=True) == late.created_ms
    stats.retract(future)
    stats.retract(late)
    assert stats.last_review_time() == stats.last_review_time(recent=True) == early.created_ms
    stats.retract(early)
    assert stats.last_review_time() == 0
    with pytest.raises(ValueError, match="never added"):
        stats.retract(early)


def test_title_follows_the_current_versions_and_stale_ones_do_not_revert_it() -> None:
    state = Aggregates(AS_OF)
    v1 = ReviewVersion(10, 0, 10, False, 3)
    v0 = ReviewVersion(5, 0, 10, True, 3)
    v2 = ReviewVersion(20, 0, 10, False, 3)
    stored, changed = apply_version(state, None, v1, "Kafka")
    assert (stored, changed, state.courses[3].title) == (v1, (3,), "Kafka")  # new course
    stored, changed = apply_version(state, stored, v0, "Old title")
    assert (stored, changed, state.courses[3].title) == (v1, (), "Kafka")
    stored, changed = apply_version(state, stored, v2, "Kafka for Beginners")
    assert (stored, changed, state.courses[3].title) == (v2, (3,), "Kafka for Beginners")
    assert to_course_statistic(state.courses[3], recent=False)["count_reviews"] == 0


def test_a_review_moving_course_changes_both() -> None:
    state = Aggregates(AS_OF)
    stored, _ = apply_version(state, None, ReviewVersion(1, 0, 10, True, 1))
    stored, changed = apply_version(state, stored, ReviewVersion(2, 0, 10, True, 2))
    assert set(changed) == {1, 2}
    assert [sum(state.courses[cid].total) for cid in (1, 2)] == [0, 1]


def test_records_match_the_avro_schema() -> None:
    stats = CourseStats(42, AS_OF, "A course")
    stats.add(ReviewVersion(0, AS_OF * MS_PER_DAY, 9, True, 42))
    stats.add(ReviewVersion(0, (AS_OF - 200) * MS_PER_DAY, 1, True, 42))
    all_time = to_course_statistic(stats, recent=False, as_of_time=123)
    recent = to_course_statistic(stats, recent=True, as_of_time=123)
    empty = to_course_statistic(CourseStats(43, AS_OF), recent=True)
    for record in (all_time, recent, empty):
        assert list(record) == FIELDS
        assert validate(record, SCHEMA)
    assert (all_time["window_start_day"], all_time["window_end_day"]) == (None, None)
    assert (recent["window_start_day"], recent["window_end_day"]) == (AS_OF - 89, AS_OF)
    assert (all_time["sum_rating"], all_time["average_rating"]) == (5.0, 2.5)
    assert (all_time["count_zero_star"], all_time["count_four_stars"]) == (1, 1)
    assert (recent["count_reviews"], recent["sum_rating"], recent["as_of_time"]) == (1, 4.5, 123)
    assert (empty["average_rating"], empty["last_review_time"], empty["course_title"]) == (
        0.0,
        0,
        "",
    )


def test_add_rejects_halves_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.10"):
        CourseStats(1, AS_OF).add(ReviewVersion(0, 0, 0, True, 1))


def test_supersedes_greatest_modified_and_later_record_on_ties() -> None:
    stored = ReviewVersion(10, 0, 10, True, 1)
    assert supersedes(stored, None)
    assert supersedes(ReviewVersion(11, 0, 2, True, 1), stored)
    assert supersedes(ReviewVersion(10, 0, 2, True, 1), stored)
    assert not supersedes(ReviewVersion(9, 0, 2, True, 1), stored)


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
    stats = CourseStats(1, AS_OF)
    stats.add(ReviewVersion(0, AS_OF * MS_PER_DAY, halves, True, 1))
    record = to_course_statistic(stats, recent=True)
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
    assert normalise_rating(value) == expected  # type: ignore[arg-type]
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
        normalise_rating(value)  # type: ignore[arg-type]


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
def test_from_scratch_equals_pandas(events: list[Event]) -> None:
    frame = pd.DataFrame(
        [
            {"review_id": rid, "seq": seq, **{k: getattr(v, k) for k in v.__slots__}}
            for seq, (rid, v) in enumerate(events)
        ]
    )
    current = frame.sort_values(["modified_ms", "seq"]).drop_duplicates("review_id", keep="last")
    counted = current[current["valid"]]
    start, end = window_bounds(AS_OF)
    day = counted["created_ms"] // MS_PER_DAY
    expected = {
        recent: aggregate_with_pandas(counted[day.between(start, end)] if recent else counted)
        for recent in (False, True)
    }
    result = compute_from_scratch(events, AS_OF)
    assert set(result) == set(frame["course_id"])
    for course_id, records in result.items():
        for recent, record in zip((False, True), records, strict=True):
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
