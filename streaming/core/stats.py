"""Course statistics arithmetic: the single transition the stream aggregator applies, and the
from-scratch reference the batch side and the tests compare it with.

Model. The aggregator keeps, per review id, the review's current version (`ReviewVersion`: only
what retraction needs) and, per course, a `CourseStats`. Counts are histograms indexed by halves
(rating * 2, 1..10; index 0 stays 0): one increment per review, and every CourseStatistic field
(count, exact integer sum, the six star buckets) follows from the histogram.

last_review_time must stay exact when the latest review is retracted, and the recent window
must move by whole days, so each course keeps its counted reviews as one sorted list of keys
(created ms * 16 + halves): the latest review is the last key (or the last one before the
window's end), and the reviews of a day are one bisected slice.

Memory: a counted review costs one int in its course's key list (a 32-byte int and an 8-byte
pointer); the current versions themselves are kept columnar by the aggregator
(`streaming.core.aggregation.VersionsState`).
"""

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.core.ratings import BUCKET_FIELDS, star_bucket
from streaming.core.window import MS_PER_DAY, epoch_day, window_bounds

CourseStatistic = dict[str, Any]
"""A dict with exactly the fields of schemas/course_statistic.avsc."""

_SLOTS = 11
_KEY_SCALE = 16
"""A counted review's key is created ms * 16 + halves (halves < 16): sorted keys are sorted by
created time, and a key's day is key // (16 * MS_PER_DAY)."""


@dataclass(slots=True)
class ReviewVersion:
    """One version of one review, reduced to what counting and retracting it needs.

    Never mutated once built (a frozen dataclass costs 5x more to construct). `halves` is
    rating * 2 as returned by `rating_halves`; `valid` is the fraud filter's verdict;
    `position` is the record's offset in `udemy-reviews` (all versions of a review share a
    partition there), which orders versions with equal `modified`.
    """

    modified_ms: int
    created_ms: int
    halves: int
    valid: bool
    course_id: int
    position: int = -1


def supersedes(incoming: ReviewVersion, stored: ReviewVersion | None) -> bool:
    """Whether `incoming` becomes the current version: the greatest (modified, position in
    udemy-reviews) wins, whatever topic or order the versions arrived in. The same record
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


def _ranges_outside(start: int, end: int, other_start: int, other_end: int) -> list[range]:
    """The days of [start, end] not in [other_start, other_end], as at most two ranges."""
    return [
        r
        for r in (
            range(start, min(end, other_start - 1) + 1),
            range(max(start, other_end + 1), end + 1),
        )
        if r
    ]


class CourseStats:
    """The statistics of one course: an all-time and a recent histogram, both kept incrementally.

    `total` and `recent` are the histograms (index = halves). The counted reviews themselves are
    one sorted list of keys, created ms * 16 + halves: `add`/`retract` cost a bisection and a
    memmove of the list; `move_window` and the recent `last_review_time` bisect at day bounds
    and read only the days that left or entered the window.
    """

    __slots__ = (
        "_keys",
        "_packed",
        "_start",
        "as_of_day",
        "course_id",
        "recent",
        "title",
        "title_modified",
        "title_raw",
        "total",
    )

    def __init__(self, course_id: int, as_of_day: int) -> None:
        self.course_id = course_id
        self.title = ""
        self.title_raw = b""  # the title as UTF-8: bytes order is code point order
        self.title_modified: int | None = None  # None: no title seen yet
        self.total = [0] * _SLOTS
        self.recent = [0] * _SLOTS
        self.as_of_day = as_of_day
        self._start = window_bounds(as_of_day)[0]
        self._keys: list[int] = []
        self._packed: tuple[np.ndarray, np.ndarray] | None = None
        """(created ascending, halves) of the counted reviews, as a restore loaded them: the
        keys are built from it on the first add or retract (`_unpack`, one array operation),
        so a restore costs one step per course and the statistics are readable at once."""

    def offer_title(self, modified_ms: int, title: str) -> bool:
        """Take a record's course title if it wins (`title_wins`); whether it won (the course's
        (modified, title) state changed, even when the title text stays the same)."""
        return self.offer_title_bytes(modified_ms, title.encode("utf-8"))

    def offer_title_bytes(self, modified_ms: int, raw: bytes) -> bool:
        """`offer_title` for the UTF-8 bytes of a title, decoded only when the text changes
        (UnicodeDecodeError then, before any state changes)."""
        current = self.title_modified
        if current is not None and (
            modified_ms < current or (modified_ms == current and raw <= self.title_raw)
        ):
            return False
        if raw != self.title_raw or current is None:
            self.title = raw.decode("utf-8")
            self.title_raw = raw
        self.title_modified = modified_ms
        return True

    def set_title(self, modified_ms: int, raw: bytes) -> None:
        """Take (modified, title) as the current one, unconditionally: a restore replays the
        winners in the order they won (UnicodeDecodeError before any state changes)."""
        self.title = raw.decode("utf-8")
        self.title_raw = raw
        self.title_modified = modified_ms

    def _unpack(self) -> None:
        created, halves = self._packed  # type: ignore[misc]
        self._packed = None
        self._keys = np.sort(created * _KEY_SCALE + halves).tolist()  # equal times: by halves

    def add(self, created_ms: int, halves: int) -> None:
        """Count a review version (the caller decides it is current and valid)."""
        if not 0 < halves < _SLOTS:
            raise ValueError(f"halves {halves!r} is outside 1..10")
        if self._packed is not None:
            self._unpack()
        insort(self._keys, created_ms * _KEY_SCALE + halves)
        self.total[halves] += 1
        if self._start <= created_ms // MS_PER_DAY <= self.as_of_day:
            self.recent[halves] += 1

    def retract(self, created_ms: int, halves: int) -> None:
        """Uncount a version counted by `add`; ValueError if it was not counted."""
        if self._packed is not None:
            self._unpack()
        keys, key = self._keys, created_ms * _KEY_SCALE + halves
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            j = bisect_left(keys, created_ms * _KEY_SCALE)
            if j < len(keys) and keys[j] // _KEY_SCALE == created_ms:
                raise ValueError(f"course {self.course_id}: retracting a rating never added")
            raise ValueError(f"course {self.course_id}: retracting a version never added")
        del keys[i]
        self.total[halves] -= 1
        if self._start <= created_ms // MS_PER_DAY <= self.as_of_day:
            self.recent[halves] -= 1

    def _days_slice(self, days: range) -> list[int]:
        """The keys of the reviews created on `days`."""
        lo = bisect_left(self._keys, days.start * MS_PER_DAY * _KEY_SCALE)
        hi = bisect_left(self._keys, days.stop * MS_PER_DAY * _KEY_SCALE)
        return self._keys[lo:hi]

    def move_window(self, as_of_day: int) -> bool:
        """Make `recent` cover the window ending on `as_of_day` (any direction); whether its
        counts changed. Days that entered matter too: reviews created after the old as-of day."""
        start, end = window_bounds(as_of_day)
        if self._packed is not None:
            before = list(self.recent)
            self._start, self.as_of_day = start, end
            self.recent = _histogram(*_in_days(*self._packed, start, end))
            return self.recent != before
        left = _ranges_outside(self._start, self.as_of_day, start, end)
        entered = _ranges_outside(start, end, self._start, self.as_of_day)
        self._start, self.as_of_day = start, end
        changed = False
        recent = self.recent
        for sign, ranges in ((-1, left), (1, entered)):
            for days in ranges:
                for key in self._days_slice(days):
                    recent[key % _KEY_SCALE] += sign
                    changed = True
        return changed

    def last_review_time(self, recent: bool = False) -> int:
        """Greatest created time of the counted reviews (in the window if `recent`), 0 if none."""
        if self._packed is not None:
            created = self._packed[0]
            if recent:
                created = _in_days(created, created, self._start, self.as_of_day)[0]
            return int(created[-1]) if len(created) else 0
        keys = self._keys
        if not recent:
            return keys[-1] // _KEY_SCALE if keys else 0
        i = bisect_left(keys, (self.as_of_day + 1) * MS_PER_DAY * _KEY_SCALE) - 1
        if i < 0 or keys[i] < self._start * MS_PER_DAY * _KEY_SCALE:
            return 0
        return keys[i] // _KEY_SCALE


def _in_days(
    created: np.ndarray, halves: np.ndarray, first_day: int, last_day: int
) -> tuple[np.ndarray, np.ndarray]:
    """The slices of ascending `created` (and `halves`) on days first_day..last_day."""
    lo, hi = np.searchsorted(created, [first_day * MS_PER_DAY, (last_day + 1) * MS_PER_DAY])
    return created[lo:hi], halves[lo:hi]


def _histogram(_created: np.ndarray, halves: np.ndarray) -> list[int]:
    return np.bincount(halves, minlength=_SLOTS).tolist()


def build_course_stats(
    as_of_day: int,
    titles: Mapping[int, tuple[int, bytes]],
    course: np.ndarray,
    created: np.ndarray,
    halves: np.ndarray,
) -> dict[int, CourseStats]:
    """Every course of `titles` ({course: (title modified, UTF-8 title)}) with the counted
    reviews given as equal-length arrays (course id, created ms, halves 1..10; every course
    among `titles`), built at once: one step per course, each course's reviews kept packed
    until it first changes (`CourseStats._unpack`).

    The result equals adding each review in turn (the property tests compare the two)."""
    courses: dict[int, CourseStats] = {}
    for course_id, (modified, raw) in titles.items():
        stats = courses[course_id] = CourseStats(course_id, as_of_day)
        stats.set_title(modified, raw)
    if not len(course):
        return courses
    order = np.lexsort((created, course))
    course, created, halves = course[order], created[order], halves[order].astype(np.int64)
    first = np.ones(len(course), dtype=bool)
    first[1:] = course[1:] != course[:-1]
    starts = np.flatnonzero(first)
    ends = [*starts[1:].tolist(), len(course)]
    group = np.cumsum(first) - 1
    totals = np.bincount(group * _SLOTS + halves, minlength=len(starts) * _SLOTS)
    start, end = window_bounds(as_of_day)
    day = created // MS_PER_DAY
    window = (day >= start) & (day <= end)
    recents = np.bincount(group[window] * _SLOTS + halves[window], minlength=len(starts) * _SLOTS)
    totals_l = totals.reshape(-1, _SLOTS).tolist()
    recents_l = recents.reshape(-1, _SLOTS).tolist()
    for g, (s, e, course_id) in enumerate(
        zip(starts.tolist(), ends, course[starts].tolist(), strict=True)
    ):
        stats = courses[course_id]
        stats.total, stats.recent = totals_l[g], recents_l[g]
        stats._packed = (created[s:e], halves[s:e])
    return courses


def to_course_statistic(
    stats: CourseStats, *, recent: bool, as_of_time: int | None = None
) -> CourseStatistic:
    """The CourseStatistic record of a course: all-time, or the window ending on its as-of day.

    `as_of_time` is the emission time in epoch ms. Window days are epoch days, as Avro's `date`.
    """
    window = window_bounds(stats.as_of_day) if recent else (None, None)
    counts = stats.recent if recent else stats.total
    last = stats.last_review_time(recent)
    return statistic_record(stats.course_id, stats.title, counts, last, window, as_of_time)


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
        title = record[2] if len(record) > 2 else ""  # type: ignore[misc]
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
