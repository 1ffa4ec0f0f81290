"""The aggregator's two stages as pure state machines, and their internal record formats.

The Kafka Streams KTable model (`table.groupBy(course).aggregate(init, adder, subtractor)`):

1. `VersionsState`, one partition of the review stage (keyed by review id, co-partitioned with
   `udemy-reviews`): the current version of every review. Each incoming version either is stale
   (it only offers its course title) or supersedes the stored one; then it emits *changes*, each
   routed by course: a retraction of the old counted version to the old course and an addition
   of the new one to its course (one record when both are the same course). Re-ratings, verdict
   flips and moves between courses are all this one mechanism.
2. `CourseState`, one partition of the course stage (keyed by course id): applies changes to the
   course statistics (`CourseStats`) and keeps each course's title by the order-independent rule.

Each state says what to write to its changelog, so the worker writes it in the same transaction
as its outputs and input offsets, and `restore` rebuilds the state from those records:
- review versions: key = review id, value = the packed current version;
- course stats: key = (course, review) -> the counted (created, halves), a tombstone when
  retracted; key = course -> its title and the modified time that won it.
All formats are internal (like Kafka Streams' internal serdes); a leading format byte lets a
later version change them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from streaming.core.stats import CourseStatistic, CourseStats, ReviewVersion, supersedes
from streaming.core.stats import to_course_statistic as _to_course_statistic

VERSION_FORMAT = 3
# format, review, course, modified, position, created, halves, valid
_VERSION = struct.Struct(">BqqqqqBB")
CHANGE_FORMAT = 2
# format, flags, review, old (created, halves), new (created, halves), title modified
_CHANGE = struct.Struct(">BBqqBqBq")
CHANGE_HEAD = _CHANGE.size
RETRACT, ADD, TITLE = 1, 2, 4
_MEMBER_KEY = struct.Struct(">cqq")  # b"m", course, review
_TITLE_KEY = struct.Struct(">cq")  # b"t", course
_MEMBER = struct.Struct(">qB")  # created, halves
_TITLE = struct.Struct(">q")  # modified, then the title's UTF-8 bytes


class RecordFormatError(ValueError):
    """An internal record that is not in a known format (a bug or a foreign writer)."""


# -- review versions -------------------------------------------------------------------------
def pack_version(review_id: int, v: ReviewVersion) -> bytes:
    return _VERSION.pack(
        VERSION_FORMAT,
        review_id,
        v.course_id,
        v.modified_ms,
        v.position,
        v.created_ms,
        v.halves,
        v.valid,
    )


def unpack_version(data: bytes | None) -> tuple[int, ReviewVersion]:
    if data is None or len(data) != _VERSION.size or data[0] != VERSION_FORMAT:
        raise RecordFormatError(f"not a review-version record ({_describe(data)})")
    _, review_id, course_id, modified, position, created, halves, valid = _VERSION.unpack(data)
    if not 1 <= halves <= 10:
        raise RecordFormatError(f"rating halves {halves} outside 1..10")
    return review_id, ReviewVersion(modified, created, halves, bool(valid), course_id, position)


# -- changes ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Change:
    """What one course must do about one review: uncount `retract`, count `add` (each a
    (created ms, halves) pair), offer `title` ((modified ms, UTF-8 title)). Never mutated
    (not frozen: a frozen dataclass costs several times more to build, on the hot path)."""

    review_id: int
    retract: tuple[int, int] | None = None
    add: tuple[int, int] | None = None
    title: tuple[int, bytes] | None = None


def pack_change(c: Change) -> bytes:
    flags = (RETRACT if c.retract else 0) | (ADD if c.add else 0) | (TITLE if c.title else 0)
    old, new, title = c.retract or (0, 0), c.add or (0, 0), c.title or (0, b"")
    return _CHANGE.pack(CHANGE_FORMAT, flags, c.review_id, *old, *new, title[0]) + title[1]


def unpack_change(data: bytes | None) -> Change:
    """The change a record carries (RecordFormatError when it is none of ours)."""
    flags, review_id, old_c, old_h, new_c, new_h, title_m = _unpack_change(data)
    return Change(
        review_id,
        (old_c, old_h) if flags & RETRACT else None,
        (new_c, new_h) if flags & ADD else None,
        (title_m, data[CHANGE_HEAD:]) if flags & TITLE and data is not None else None,
    )


def _unpack_change(data: bytes | None) -> tuple[int, int, int, int, int, int, int]:
    if data is None or len(data) < CHANGE_HEAD or data[0] != CHANGE_FORMAT:
        raise RecordFormatError(f"not a change record ({_describe(data)})")
    _, flags, review_id, old_c, old_h, new_c, new_h, title_m = _CHANGE.unpack_from(data)
    if (flags & RETRACT and not 1 <= old_h <= 10) or (flags & ADD and not 1 <= new_h <= 10):
        raise RecordFormatError(f"rating halves {old_h}/{new_h} outside 1..10")
    return flags, review_id, old_c, old_h, new_c, new_h, title_m


def _describe(data: bytes | None) -> str:
    if data is None:
        return "null value"
    return f"{len(data)} bytes, format byte {data[:1].hex() or '-'}"


class VersionsState:
    """The current version of every review of one review-stage partition."""

    __slots__ = ("reviews",)

    def __init__(self) -> None:
        self.reviews: dict[int, ReviewVersion] = {}

    def apply(
        self, review_id: int, incoming: ReviewVersion, title: bytes
    ) -> tuple[list[tuple[int, bytes]], bytes | None]:
        """One incoming version: ([(course id, packed change)] to route by course, the
        changelog value to write for the review, None when the version is stale).

        On the hot path (one call per input record), so changes are packed here directly;
        `unpack_change` reads them back as `Change`s."""
        stored = self.reviews.get(review_id)
        pack = _CHANGE.pack
        modified = incoming.modified_ms
        if stored is not None and not supersedes(incoming, stored):
            return [
                (
                    incoming.course_id,
                    pack(CHANGE_FORMAT, TITLE, review_id, 0, 0, 0, 0, modified) + title,
                )
            ], None
        self.reviews[review_id] = incoming
        changelog = pack_version(review_id, incoming)
        flags = TITLE
        new_c = new_h = old_c = old_h = 0
        if incoming.valid:
            flags |= ADD
            new_c, new_h = incoming.created_ms, incoming.halves
        if stored is not None and stored.valid:
            old_c, old_h = stored.created_ms, stored.halves
            if stored.course_id != incoming.course_id:
                retract = pack(CHANGE_FORMAT, RETRACT, review_id, old_c, old_h, 0, 0, 0)
                add = pack(CHANGE_FORMAT, flags, review_id, 0, 0, new_c, new_h, modified)
                return [(stored.course_id, retract), (incoming.course_id, add + title)], changelog
            if flags & ADD and (old_c, old_h) == (new_c, new_h):
                flags, new_c, new_h, old_c, old_h = TITLE, 0, 0, 0, 0  # counts stay as they are
            else:
                flags |= RETRACT
        change = pack(CHANGE_FORMAT, flags, review_id, old_c, old_h, new_c, new_h, modified)
        return [(incoming.course_id, change + title)], changelog

    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Rebuild from changelog (key, value) entries in changelog order (each value is the
        review's current version then); how many could not be read."""
        unreadable = 0
        reviews = self.reviews
        for _key, data in entries:
            if data is None:  # compaction keeps no tombstones of ours; nothing to undo
                continue
            try:
                review_id, version = unpack_version(data)
            except RecordFormatError:
                unreadable += 1
                continue
            reviews[review_id] = version
        return unreadable


# -- course statistics -----------------------------------------------------------------------
def member_key(course_id: int, review_id: int) -> bytes:
    return _MEMBER_KEY.pack(b"m", course_id, review_id)


def title_key(course_id: int) -> bytes:
    return _TITLE_KEY.pack(b"t", course_id)


class CourseState:
    """The statistics of every course of one course-stage partition, windows on one as-of day."""

    __slots__ = ("as_of_day", "courses")

    def __init__(self, as_of_day: int) -> None:
        self.as_of_day = as_of_day
        self.courses: dict[int, CourseStats] = {}

    def apply(
        self, records: Iterable[tuple[int, bytes | None]]
    ) -> tuple[set[int], dict[bytes, bytes | None], dict[int, str]]:
        """Apply (course id, packed change) records in order.

        Returns (ids of courses whose statistics records changed, the changelog entries to
        write: the final value of each key the batch touched, as compaction would keep it,
        {index: reason} of records that could not be applied and were skipped).
        """
        changed: set[int] = set()
        titled: set[int] = set()
        changelog: dict[bytes, bytes | None] = {}
        errors: dict[int, str] = {}
        apply = self._apply
        for i, (course_id, data) in enumerate(records):
            try:
                if apply(course_id, data, changelog, titled):  # type: ignore[arg-type]
                    changed.add(course_id)
            except (RecordFormatError, UnicodeDecodeError, ValueError) as exc:
                errors[i] = f"aggregator change record: {exc}"
        for course_id in titled:  # its final (modified, title) of the batch
            course = self.courses[course_id]
            value = _TITLE.pack(course.title_modified) + course.title_raw
            changelog[_TITLE_KEY.pack(b"t", course_id)] = value
        return changed, changelog, errors

    def _apply(
        self,
        course_id: int,
        data: bytes,
        changelog: dict[bytes, bytes | None],
        titled: set[int],
    ) -> bool:
        """Apply one packed change (every check before any state changes); whether the
        course's statistics records changed. Courses whose title state moved go to `titled`."""
        flags, review_id, old_c, old_h, new_c, new_h, title_m = _unpack_change(data)
        raw = data[CHANGE_HEAD:] if flags & TITLE else None
        course = self.courses.get(course_id)
        if raw is not None and (course is None or raw != course.title_raw):
            raw.decode("utf-8")  # a title that cannot be published is refused up front
        new_course = course is None
        if course is None:
            if raw is None or flags & RETRACT:  # nothing was ever counted there to retract
                raise ValueError(f"course {course_id}: a retraction for a course never seen")
            course = self.courses[course_id] = CourseStats(course_id, self.as_of_day)
        if flags & RETRACT:
            course.retract(old_c, old_h)
        if flags & ADD:
            course.add(new_c, new_h)
            changelog[_MEMBER_KEY.pack(b"m", course_id, review_id)] = _MEMBER.pack(new_c, new_h)
        elif flags & RETRACT:
            changelog[_MEMBER_KEY.pack(b"m", course_id, review_id)] = None
        retitled = False
        if raw is not None:
            before = course.title_raw
            if course.offer_title_bytes(title_m, raw):
                titled.add(course_id)  # the winning modified is state too
                retitled = course.title_raw != before
        return new_course or retitled or bool(flags & (RETRACT | ADD))

    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Rebuild from changelog (key, value) entries in changelog order (the latest entry of
        a key wins, a tombstone removes it); how many could not be read."""
        members: dict[tuple[int, int], tuple[int, int]] = {}
        titles: dict[int, tuple[int, str]] = {}
        unreadable = 0
        for key, value in entries:
            try:
                _restore_entry(key, value, members, titles)
            except (RecordFormatError, UnicodeDecodeError, struct.error):
                unreadable += 1
        for course_id, (modified, title) in titles.items():
            course = self.courses[course_id] = CourseStats(course_id, self.as_of_day)
            course.offer_title(modified, title)
        for (course_id, _review), (created, halves) in members.items():
            course = self.courses.get(course_id)
            if course is None:
                unreadable += 1  # a member of a course without a title entry: never written so
                continue
            course.add(created, halves)
        return unreadable

    def advance(self, as_of_day: int) -> list[int]:
        """Move every course's window to `as_of_day`; every course's recent record changes
        (its window bounds move even where no count does)."""
        if as_of_day == self.as_of_day:
            return []
        self.as_of_day = as_of_day
        for course in self.courses.values():
            course.move_window(as_of_day)
        return list(self.courses)

    def statistics(
        self, course_id: int, as_of_time: int
    ) -> tuple[CourseStatistic, CourseStatistic]:
        """(all-time, recent) CourseStatistic records of one course."""
        course = self.courses[course_id]
        return (
            _to_course_statistic(course, recent=False, as_of_time=as_of_time),
            _to_course_statistic(course, recent=True, as_of_time=as_of_time),
        )


def _restore_entry(
    key: bytes | None,
    value: bytes | None,
    members: dict[tuple[int, int], tuple[int, int]],
    titles: dict[int, tuple[int, str]],
) -> None:
    if key is not None and len(key) == _MEMBER_KEY.size and key[:1] == b"m":
        _, course_id, review_id = _MEMBER_KEY.unpack(key)
        if value is None:
            members.pop((course_id, review_id), None)
        else:
            created, halves = _MEMBER.unpack(value)
            if not 1 <= halves <= 10:
                raise RecordFormatError(f"rating halves {halves} outside 1..10")
            members[(course_id, review_id)] = (created, halves)
    elif key is not None and len(key) == _TITLE_KEY.size and key[:1] == b"t" and value:
        (course_id,) = _TITLE_KEY.unpack(key)[1:]
        (modified,) = _TITLE.unpack_from(value)
        titles[course_id] = (modified, value[_TITLE.size :].decode("utf-8"))
    else:
        raise RecordFormatError(f"not a course-stats changelog key ({_describe(key)})")
