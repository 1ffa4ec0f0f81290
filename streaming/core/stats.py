"""Course statistics record arithmetic, and the from-scratch reference the tests and the
benchmarks compare the stream aggregator with.

`ReviewVersion` is one version of a review, reduced to what counting and retracting it needs;
`supersedes` and `title_wins` are the order-independent rules for a review's current version
and a course's title; `statistic_record` turns a histogram of rating halves (rating * 2, 1..10)
into a CourseStatistic record; `compute_from_scratch` computes every course's records from the
review versions without any incremental state.

The incremental state lives in `streaming.core.aggregation`: `VersionsState` and `CourseState`
keep one row of numpy columns per review (its current version; where it is counted), and
`CourseState` keeps per course an all-time and a recent histogram of rating halves and the
latest review times, all updated by compiled kernels (`streaming.core.stage_kernels`).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streaming.core.ratings import BUCKET_FIELDS, star_bucket
from streaming.core.window import epoch_day, window_bounds

CourseStatistic = dict[str, Any]
"""A dict with exactly the fields of schemas/course_statistic.avsc."""


@dataclass(slots=True)
class ReviewVersion:
    """One version of one review, reduced to what counting and retracting it needs.

    Never mutated once built (a frozen dataclass costs 5x more to construct). `halves` is
    rating * 2 as returned by `rating_halves`; `valid` is the fraud filter's verdict;
    `position` is the record's place in `udemy-reviews`, (partition, offset) packed into one
    int that orders as the pair does (`source_position.order`): it orders versions with equal
    `modified`, wherever its producer put them.
    """

    modified_ms: int
    created_ms: int
    halves: int
    valid: bool
    course_id: int
    position: int = -1


def supersedes(incoming: ReviewVersion, stored: ReviewVersion | None) -> bool:
    """Whether `incoming` becomes the current version: the greatest (modified, partition,
    offset in udemy-reviews) wins, whatever topic or order the versions arrived in. The same record
    delivered again does not supersede itself."""
    if stored is None:
        return True
    if incoming.modified_ms != stored.modified_ms:
        return incoming.modified_ms > stored.modified_ms
    return incoming.position > stored.position


def title_wins(modified_ms: int, title: str, current: tuple[int, str] | None) -> bool:
    """Whether a record's course title replaces the course's current (modified, title): the
    title of the record with the greatest modified, ties to the greater title. A max over all
    records ever ingested for the course, so any arrival order gives the same title."""
    return current is None or (modified_ms, title) > current


def statistic_record(
    course_id: int,
    title: str,
    counts: list[int],
    last_review_time: int,
    window: tuple[int, int] | tuple[None, None],
    as_of_time: int | None,
) -> CourseStatistic:
    """The CourseStatistic record of a histogram of rating halves (counts[h], h = 1..10)."""
    count = sum(counts)
    sum_rating = sum(halves * n for halves, n in enumerate(counts)) / 2
    return {
        "course_id": course_id,
        "course_title": title,
        "average_rating": sum_rating / count if count else 0.0,
        "count_reviews": count,
        "count_five_stars": counts[10],
        "count_four_stars": counts[8] + counts[9],
        "count_three_stars": counts[6] + counts[7],
        "count_two_stars": counts[4] + counts[5],
        "count_one_star": counts[2] + counts[3],
        "count_zero_star": counts[1],
        "last_review_time": last_review_time,
        "sum_rating": sum_rating,
        "window_start_day": window[0],
        "window_end_day": window[1],
        "as_of_time": as_of_time,
    }


def _scratch_statistic(
    course_id: int,
    title: str,
    counted: list[ReviewVersion],
    window: tuple[int, int] | tuple[None, None],
    as_of_time: int | None,
) -> CourseStatistic:
    count = len(counted)
    sum_rating = sum(v.halves for v in counted) / 2
    buckets = [0] * len(BUCKET_FIELDS)
    for v in counted:
        buckets[star_bucket(v.halves)] += 1
    return {
        "course_id": course_id,
        "course_title": title,
        "average_rating": sum_rating / count if count else 0.0,
        "count_reviews": count,
        **dict(zip(BUCKET_FIELDS, buckets, strict=True)),
        "last_review_time": max((v.created_ms for v in counted), default=0),
        "sum_rating": sum_rating,
        "window_start_day": window[0],
        "window_end_day": window[1],
        "as_of_time": as_of_time,
    }


def compute_from_scratch(
    versions: Iterable[tuple[int, ReviewVersion] | tuple[int, ReviewVersion, str]],
    as_of_day: int,
    *,
    titles: Mapping[int, str] | None = None,
    as_of_time: int | None = None,
) -> dict[int, tuple[CourseStatistic, CourseStatistic]]:
    """The reference: {course id: (all-time, recent)} over (review id, version[, course title])
    records in any order, computed without any incremental state.

    A review's current version is its greatest (modified, position): never the arrival order,
    so two different versions with equal modified must carry their positions (ValueError
    otherwise). Every course of any record gets an entry (zero statistics if nothing counts).
    Its title is `titles[course]` when given, else the rule of `title_wins` over the records'
    titles ("" without any).
    """
    current: dict[int, ReviewVersion] = {}
    best_title: dict[int, tuple[int, str]] = {}
    for record in versions:
        review_id, version = record[0], record[1]
        stored = current.get(review_id)
        if stored is not None and (stored.modified_ms, stored.position) == (
            version.modified_ms,
            version.position,
        ):
            if stored != version:
                raise ValueError(f"review {review_id}: two versions at one (modified, position)")
        elif supersedes(version, stored):
            current[review_id] = version
        course_id = version.course_id
        title = record[2] if len(record) > 2 else ""
        if title_wins(version.modified_ms, title, best_title.get(course_id)):
            best_title[course_id] = (version.modified_ms, title)
    by_course: dict[int, list[ReviewVersion]] = {course_id: [] for course_id in best_title}
    for version in current.values():
        if version.valid:
            by_course[version.course_id].append(version)
    start, end = window_bounds(as_of_day)
    result = {}
    for course_id, counted in by_course.items():
        title = (titles or {}).get(course_id, best_title[course_id][1])
        in_window = [v for v in counted if start <= epoch_day(v.created_ms) <= end]
        result[course_id] = (
            _scratch_statistic(course_id, title, counted, (None, None), as_of_time),
            _scratch_statistic(course_id, title, in_window, (start, end), as_of_time),
        )
    return result
