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
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import numpy as np

from streaming.core.stats import (
    CourseStatistic,
    CourseStats,
    ReviewVersion,
    build_course_stats,
)
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


_VERSION_DTYPE = np.dtype(
    [
        ("format", "u1"),
        ("review", ">i8"),
        ("course", ">i8"),
        ("modified", ">i8"),
        ("position", ">i8"),
        ("created", ">i8"),
        ("halves", "u1"),
        ("valid", "u1"),
    ]
)
assert _VERSION_DTYPE.itemsize == _VERSION.size
_VERSIONS_SNAPSHOT = struct.Struct("<4sBq")  # magic, format, reviews
_VERSIONS_MAGIC, _VERSIONS_SNAPSHOT_FORMAT = b"RVVS", 1
_INT_COLUMNS = ("ids", "course", "modified", "position", "created")
_BYTE_COLUMNS = ("halves", "valid")


class VersionsState:
    """The current version of every review of one review-stage partition.

    Columnar (one `array` per field, a dict from review id to row): a review costs ~150 bytes
    instead of ~245 as a `ReviewVersion` object, and a snapshot is the columns' bytes, loaded
    without building an object per review."""

    __slots__ = ("_row", *_INT_COLUMNS, *_BYTE_COLUMNS)

    def __init__(self) -> None:
        self._row: dict[int, int] = {}
        self.ids, self.course, self.modified, self.position, self.created = (
            array("q") for _ in _INT_COLUMNS
        )
        self.halves, self.valid = array("b"), array("b")

    def __len__(self) -> int:
        return len(self._row)

    def get(self, review_id: int) -> ReviewVersion | None:
        row = self._row.get(review_id)
        if row is None:
            return None
        return ReviewVersion(
            self.modified[row],
            self.created[row],
            self.halves[row],
            bool(self.valid[row]),
            self.course[row],
            self.position[row],
        )

    def as_dict(self) -> dict[int, ReviewVersion]:
        """Every current version (for comparisons; not on any hot path)."""
        return {review_id: self.get(review_id) for review_id in self._row}  # type: ignore[misc]

    def _put(self, review_id: int, v: ReviewVersion) -> None:
        row = self._row.get(review_id)
        if row is None:
            self._row[review_id] = len(self.ids)
            self.ids.append(review_id)
            self.course.append(v.course_id)
            self.modified.append(v.modified_ms)
            self.position.append(v.position)
            self.created.append(v.created_ms)
            self.halves.append(v.halves)
            self.valid.append(v.valid)
        else:
            self.course[row] = v.course_id
            self.modified[row] = v.modified_ms
            self.position[row] = v.position
            self.created[row] = v.created_ms
            self.halves[row] = v.halves
            self.valid[row] = v.valid

    def apply(
        self, review_id: int, incoming: ReviewVersion, title: bytes
    ) -> tuple[list[tuple[int, bytes]], bytes | None]:
        """One incoming version: ([(course id, packed change)] to route by course, the
        changelog value to write for the review, None when the version is stale).

        On the hot path (one call per input record), so changes are packed here directly;
        `unpack_change` reads them back as `Change`s. Stale: not `supersedes(incoming, stored)`
        (the greatest (modified, position) wins), compared column by column."""
        row = self._row.get(review_id)
        pack = _CHANGE.pack
        modified = incoming.modified_ms
        if row is not None and (
            modified < self.modified[row]
            or (modified == self.modified[row] and incoming.position <= self.position[row])
        ):
            return [
                (
                    incoming.course_id,
                    pack(CHANGE_FORMAT, TITLE, review_id, 0, 0, 0, 0, modified) + title,
                )
            ], None
        stored_valid = row is not None and self.valid[row]
        if stored_valid:
            old_course, old_c, old_h = self.course[row], self.created[row], self.halves[row]  # type: ignore[index]
        self._put(review_id, incoming)
        changelog = pack_version(review_id, incoming)
        flags = TITLE
        new_c = new_h = 0
        if incoming.valid:
            flags |= ADD
            new_c, new_h = incoming.created_ms, incoming.halves
        if stored_valid:
            if old_course != incoming.course_id:
                retract = pack(CHANGE_FORMAT, RETRACT, review_id, old_c, old_h, 0, 0, 0)
                add = pack(CHANGE_FORMAT, flags, review_id, 0, 0, new_c, new_h, modified)
                return [(old_course, retract), (incoming.course_id, add + title)], changelog
            if flags & ADD and (old_c, old_h) == (new_c, new_h):
                flags, new_c, new_h, old_c, old_h = TITLE, 0, 0, 0, 0  # counts stay as they are
            else:
                flags |= RETRACT
        else:
            old_c = old_h = 0
        change = pack(CHANGE_FORMAT, flags, review_id, old_c, old_h, new_c, new_h, modified)
        return [(incoming.course_id, change + title)], changelog

    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Apply changelog (key, value) entries in changelog order on top of this state (each
        value is the review's current version then; the last one of a review wins); how many
        could not be read. Parsed as one array, not record by record."""
        values: list[bytes] = []
        unreadable = 0
        size = _VERSION.size
        for _key, data in entries:
            if data is None:  # compaction keeps no tombstones of ours; nothing to undo
                continue
            if len(data) != size or data[0] != VERSION_FORMAT:
                unreadable += 1
                continue
            values.append(data)
        table = np.frombuffer(b"".join(values), dtype=_VERSION_DTYPE)
        good = (table["halves"] >= 1) & (table["halves"] <= 10)
        unreadable += int(len(table) - good.sum())
        table = table[good]
        # the last entry of each review: unique over the reversed order keeps first = last
        _, first = np.unique(table["review"][::-1], return_index=True)
        table = table[np.sort(len(table) - 1 - first)]
        if not self._row:
            self._load_columns({f: table[f] for f in _VERSION_DTYPE.names if f != "format"})
            return unreadable
        for record in table.tolist():
            _, review_id, course, modified, position, created, halves, valid = record
            self._put(
                review_id, ReviewVersion(modified, created, halves, bool(valid), course, position)
            )
        return unreadable

    def _load_columns(self, cols: dict[str, np.ndarray]) -> None:
        for name, field in zip(_INT_COLUMNS, ("review", *_INT_COLUMNS[1:]), strict=True):
            setattr(self, name, array("q", cols[field].astype("=i8").tobytes()))
        for name in _BYTE_COLUMNS:
            setattr(self, name, array("b", cols[name].astype("i1").tobytes()))
        self._row = dict(zip(self.ids, range(len(self.ids)), strict=True))

    def to_snapshot(self) -> bytes:
        """The state as bytes (`from_snapshot` reads them back): a header, then each column."""
        n = len(self.ids)
        parts = [_VERSIONS_SNAPSHOT.pack(_VERSIONS_MAGIC, _VERSIONS_SNAPSHOT_FORMAT, n)]
        parts += [
            np.frombuffer(getattr(self, c), "=i8").astype("<i8", copy=False).tobytes()
            for c in _INT_COLUMNS
        ]
        parts += [getattr(self, c).tobytes() for c in _BYTE_COLUMNS]
        return b"".join(parts)

    def compact(self) -> None:
        """Nothing to fold: the columns change in place."""

    @classmethod
    def from_snapshot(cls, data: bytes) -> VersionsState:
        """The state `to_snapshot` wrote (RecordFormatError when `data` is not one)."""
        head = _VERSIONS_SNAPSHOT.size
        if len(data) < head:
            raise RecordFormatError("review-versions snapshot: truncated header")
        magic, fmt, n = _VERSIONS_SNAPSHOT.unpack_from(data)
        if (magic, fmt) != (_VERSIONS_MAGIC, _VERSIONS_SNAPSHOT_FORMAT) or n < 0:
            raise RecordFormatError(f"not a review-versions snapshot ({magic!r}, format {fmt})")
        if len(data) != head + n * (8 * len(_INT_COLUMNS) + len(_BYTE_COLUMNS)):
            raise RecordFormatError(f"review-versions snapshot: {len(data)} bytes for {n} reviews")
        cols: dict[str, np.ndarray] = {}
        offset = head
        for name in _INT_COLUMNS:
            cols["review" if name == "ids" else name] = np.frombuffer(data, "<i8", n, offset)
            offset += 8 * n
        for name in _BYTE_COLUMNS:
            cols[name] = np.frombuffer(data, "i1", n, offset)
            offset += n
        if n and not ((cols["halves"] >= 1) & (cols["halves"] <= 10)).all():
            raise RecordFormatError("review-versions snapshot: rating halves outside 1..10")
        state = cls()
        state._load_columns(cols)
        if len(state._row) != n:
            raise RecordFormatError("review-versions snapshot: a review id twice")
        return state


# -- course statistics -----------------------------------------------------------------------
def member_key(course_id: int, review_id: int) -> bytes:
    return _MEMBER_KEY.pack(b"m", course_id, review_id)


def title_key(course_id: int) -> bytes:
    return _TITLE_KEY.pack(b"t", course_id)


_MEMBERS_DTYPE = np.dtype(
    [("course", "<i8"), ("review", "<i8"), ("created", "<i8"), ("halves", "u1")]
)
_COURSES_SNAPSHOT = struct.Struct("<4sBqqq")  # magic, format, published day, courses, members
_COURSES_MAGIC, _COURSES_SNAPSHOT_FORMAT = b"RVCS", 2
PUBLISHED_DAY_KEY = b"d"
"""Changelog key of the as-of day whose recent records the partition last published in full."""
_DAY = struct.Struct(">q")
_NO_TITLE = -(2**63)


class CourseState:
    """The statistics of every course of one course-stage partition, windows on one as-of day.

    Besides the statistics (`CourseStats`, which count reviews without naming them), it keeps
    who is counted where, (course, review) -> (created, halves), as the changelog's member
    entries say: a sorted array table plus a dict of the changes since it was last compacted.
    A tail of the changelog replayed on top of a snapshot needs it (a member entry replaces
    the one before it, which must be uncounted first), and so does the next snapshot."""

    __slots__ = ("_base", "_delta", "_index", "as_of_day", "courses", "published_day")

    def __init__(self, as_of_day: int) -> None:
        self.as_of_day = as_of_day
        self.courses: dict[int, CourseStats] = {}
        self._base = np.zeros(0, dtype=_MEMBERS_DTYPE)  # sorted by (course, review)
        self._delta: dict[tuple[int, int], tuple[int, int] | None] = {}
        self._index: np.ndarray | None = None
        """The base table's keys as sortable bytes (`_member_keys`), built on first use."""
        self.published_day: int | None = None
        """The as-of day of the last full publication of the partition's recent records, as
        committed (`published`): a restore on that day need not publish them again."""

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
            self._delta[(course_id, review_id)] = (new_c, new_h)
        elif flags & RETRACT:
            changelog[_MEMBER_KEY.pack(b"m", course_id, review_id)] = None
            self._delta[(course_id, review_id)] = None
        retitled = False
        if raw is not None:
            before = course.title_raw
            if course.offer_title_bytes(title_m, raw):
                titled.add(course_id)  # the winning modified is state too
                retitled = course.title_raw != before
        return new_course or retitled or bool(flags & (RETRACT | ADD))

    # -- restore: a changelog (tail), a snapshot ---------------------------------------------
    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Apply changelog (key, value) entries in changelog order on top of this state (the
        latest entry of a key wins, a tombstone removes it); how many could not be read.
        Entries are parsed as arrays; on an empty state (a whole changelog) the courses are
        built at once."""
        members, titles, day, unreadable = _parse_course_entries(entries)
        if day is not None:
            self.published_day = day
        if not self.courses and not len(self._base) and not self._delta:
            counted = members[members["halves"] != 0]
            orphan = ~np.isin(counted["course"], np.fromiter(titles, np.int64, len(titles)))
            self._load(titles, counted[~orphan])  # an orphan member: never written so
            return unreadable + int(orphan.sum())
        for course_id, (modified, raw) in titles.items():
            course = self.courses.get(course_id)
            if course is None:
                course = self.courses[course_id] = CourseStats(course_id, self.as_of_day)
            course.set_title(modified, raw)
        olds = self._members(members)
        for (course_id, review_id, created, halves), old in zip(
            members.tolist(), olds, strict=True
        ):
            course = self.courses.get(course_id)
            if course is None:
                unreadable += 1
                continue
            if old is not None:
                course.retract(*old)
            new = (created, halves) if halves else None
            if new is not None:
                course.add(*new)
            self._delta[(course_id, review_id)] = new
        return unreadable

    def _members(self, rows: np.ndarray) -> list[tuple[int, int] | None]:
        """What the changelog says is counted for each (course, review) of `rows`, or None:
        the changes since the last compaction, else the base table (searched at once)."""
        if self._index is None:
            self._index = _member_keys(self._base)
        found: list[tuple[int, int] | None] = [None] * len(rows)
        if len(self._base):
            keys = _member_keys(rows)
            at = np.minimum(self._index.searchsorted(keys), len(self._base) - 1)
            hit = self._index[at] == keys
            base = self._base[at]
            for i in np.flatnonzero(hit).tolist():
                found[i] = (int(base["created"][i]), int(base["halves"][i]))
        delta = self._delta
        if delta:
            for i, (course_id, review_id) in enumerate(rows[["course", "review"]].tolist()):
                if (course_id, review_id) in delta:
                    found[i] = delta[(course_id, review_id)]
        return found

    def _load(self, titles: dict[int, tuple[int, bytes]], table: np.ndarray) -> None:
        self.courses = build_course_stats(
            self.as_of_day,
            titles,
            table["course"],
            table["created"],
            table["halves"].astype(np.int64),
        )
        self._base, self._delta, self._index = table, {}, None

    def compact(self) -> None:
        """Fold the member changes since the last compaction into the sorted table."""
        if not self._delta:
            return
        self._base = _merge_members(self._base, self._delta, self._index)
        self._delta, self._index = {}, None

    def to_snapshot(self) -> bytes:
        """The state as bytes (`from_snapshot` reads them back): a header, each course's id,
        title modified and title length, the titles, then the member table."""
        self.compact()
        ids = np.fromiter(self.courses, np.int64, len(self.courses))
        modified = np.array(
            [
                _NO_TITLE if c.title_modified is None else c.title_modified
                for c in self.courses.values()
            ],
            dtype="<i8",
        )
        raws = [c.title_raw for c in self.courses.values()]
        lengths = np.array([len(r) for r in raws], dtype="<i8")
        day = _NO_TITLE if self.published_day is None else self.published_day
        head = _COURSES_SNAPSHOT.pack(
            _COURSES_MAGIC, _COURSES_SNAPSHOT_FORMAT, day, len(ids), len(self._base)
        )
        parts = [head, ids.astype("<i8").tobytes(), modified.tobytes(), lengths.tobytes()]
        return b"".join([*parts, *raws, self._base.tobytes()])

    @classmethod
    def from_snapshot(cls, data: bytes, as_of_day: int) -> CourseState:
        """The state `to_snapshot` wrote, its windows on `as_of_day` (RecordFormatError when
        `data` is not one)."""
        head = _COURSES_SNAPSHOT.size
        if len(data) < head:
            raise RecordFormatError("course-stats snapshot: truncated header")
        magic, fmt, day, n, m = _COURSES_SNAPSHOT.unpack_from(data)
        if (magic, fmt) != (_COURSES_MAGIC, _COURSES_SNAPSHOT_FORMAT) or n < 0 or m < 0:
            raise RecordFormatError(f"not a course-stats snapshot ({magic!r}, format {fmt})")
        if len(data) < head + 24 * n:
            raise RecordFormatError("course-stats snapshot: truncated course table")
        ids, modified, lengths = (
            np.frombuffer(data, "<i8", n, head + 8 * n * i).tolist() for i in range(3)
        )
        offset = head + 24 * n
        size = offset + sum(lengths) + m * _MEMBERS_DTYPE.itemsize
        if min(lengths, default=0) < 0 or len(data) != size:
            raise RecordFormatError(f"course-stats snapshot: {len(data)} bytes do not fit")
        titles: dict[int, tuple[int, bytes]] = {}
        for course_id, mod, length in zip(ids, modified, lengths, strict=True):
            titles[course_id] = (mod, data[offset : offset + length])
            offset += length
        table = np.frombuffer(data, _MEMBERS_DTYPE, m, offset).copy()
        if m and not ((table["halves"] >= 1) & (table["halves"] <= 10)).all():
            raise RecordFormatError("course-stats snapshot: rating halves outside 1..10")
        if not np.isin(table["course"], np.array(ids, dtype=np.int64)).all():
            raise RecordFormatError("course-stats snapshot: a member of a course it lacks")
        state = cls(as_of_day)
        try:
            state._load(titles, table)
        except UnicodeDecodeError as exc:
            raise RecordFormatError(f"course-stats snapshot: a title is not UTF-8 ({exc})") from exc
        for course_id, (mod, _raw) in titles.items():
            if mod == _NO_TITLE:
                state.courses[course_id].title_modified = None
        state.published_day = None if day == _NO_TITLE else day
        return state

    def published(self, day: int) -> tuple[bytes, bytes]:
        """Every recent record of the partition was just published for `day`: the changelog
        entry that says so (written in the same transaction)."""
        self.published_day = day
        return PUBLISHED_DAY_KEY, _DAY.pack(day)

    def advance(self, as_of_day: int) -> list[int]:
        """Move every course's window to `as_of_day`; every course's recent record changes
        (its window bounds move even where no count does)."""
        if as_of_day == self.as_of_day:
            return []
        self.as_of_day = as_of_day
        for course in self.courses.values():
            course.move_window(as_of_day)
        return list(self.courses)

    def recent_statistic(self, course_id: int, as_of_time: int) -> CourseStatistic:
        """The recent CourseStatistic record of one course."""
        return _to_course_statistic(self.courses[course_id], recent=True, as_of_time=as_of_time)

    def statistics(
        self, course_id: int, as_of_time: int
    ) -> tuple[CourseStatistic, CourseStatistic]:
        """(all-time, recent) CourseStatistic records of one course."""
        course = self.courses[course_id]
        return (
            _to_course_statistic(course, recent=False, as_of_time=as_of_time),
            _to_course_statistic(course, recent=True, as_of_time=as_of_time),
        )


def _member_keys(table: np.ndarray) -> np.ndarray:
    """(course, review) of each row as 16 bytes whose byte order is the numeric order (big
    endian, sign bit flipped), so one `searchsorted` finds many keys at once."""
    keys = np.empty(len(table), dtype=[("course", ">u8"), ("review", ">u8")])
    flip = np.uint64(1 << 63)
    keys["course"] = table["course"].astype(np.int64).view(np.uint64) ^ flip
    keys["review"] = table["review"].astype(np.int64).view(np.uint64) ^ flip
    return keys.view("S16")


def _members_table(members: dict[tuple[int, int], tuple[int, int] | None]) -> np.ndarray:
    """{(course, review): (created, halves), None for a removal (halves 0)} as a table
    sorted by (course, review)."""
    table = np.zeros(len(members), dtype=_MEMBERS_DTYPE)
    if members:
        n, flat, zero = len(members), chain.from_iterable, (0, 0)
        keys = np.fromiter(flat(members), np.int64, 2 * n).reshape(-1, 2)
        values = np.fromiter(flat(v or zero for v in members.values()), np.int64, 2 * n)
        values = values.reshape(-1, 2)
        table["course"], table["review"] = keys[:, 0], keys[:, 1]
        table["created"], table["halves"] = values[:, 0], values[:, 1]
    return table[np.lexsort((table["review"], table["course"]))]


def _merge_members(
    base: np.ndarray,
    delta: dict[tuple[int, int], tuple[int, int] | None],
    index: np.ndarray | None = None,
) -> np.ndarray:
    """The sorted table `base` with `delta`'s rows replacing, adding or (None) removing rows.

    Linear in the table: the (small) delta is sorted and searched in the base's keys (`index`,
    its `_member_keys` when already built), replaced rows are dropped and the delta's rows
    inserted where they sort, so a compaction of a large table copies it instead of sorting
    it again."""
    changes = _members_table(delta)
    keys = _member_keys(base) if index is None else index
    change_keys = _member_keys(changes)
    at = keys.searchsorted(change_keys)
    found = at < len(base)
    found[found] = keys[at[found]] == change_keys[found]
    keep = np.ones(len(base), dtype=bool)
    keep[at[found]] = False
    dropped_before = np.concatenate([[0], np.cumsum(~keep)])
    added = changes["halves"] != 0
    return np.insert(base[keep], (at - dropped_before[at])[added], changes[added])


_MEMBER_KEY_DTYPE = np.dtype([("tag", "S1"), ("course", ">i8"), ("review", ">i8")])
_MEMBER_VALUE_DTYPE = np.dtype([("created", ">i8"), ("halves", "u1")])


def _parse_course_entries(
    entries: Iterable[tuple[bytes | None, bytes | None]],
) -> tuple[np.ndarray, dict[int, tuple[int, bytes]], int | None, int]:
    """The latest member rows (halves 0: removed) sorted by (course, review), the latest
    title of each course, the latest published day, and how many entries could not be read,
    from changelog entries in order. One dict store per entry; the parsing is done on
    arrays."""
    member_raw: dict[bytes, bytes | None] = {}
    title_raw: dict[bytes, bytes] = {}
    unreadable = 0
    day: int | None = None
    member_size, title_size, value_size = _MEMBER_KEY.size, _TITLE_KEY.size, _MEMBER.size
    for key, value in entries:  # a bad entry is skipped: the key keeps its value before it
        if key is None:
            unreadable += 1
        elif len(key) == member_size and key[0] == 0x6D:  # b"m"
            if value is None or len(value) == value_size:
                member_raw[key] = value
            else:
                unreadable += 1
        elif len(key) == title_size and key[0] == 0x74 and value and len(value) >= 8:  # b"t"
            try:
                value[8:].decode("utf-8")  # not publishable: unreadable
            except UnicodeDecodeError:
                unreadable += 1
                continue
            title_raw[key] = value
        elif key == PUBLISHED_DAY_KEY and value is not None and len(value) == _DAY.size:
            (day,) = _DAY.unpack(value)
        else:
            unreadable += 1
    titles = {
        _TITLE_KEY.unpack(key)[1]: (_TITLE.unpack_from(value)[0], value[_TITLE.size :])
        for key, value in title_raw.items()
    }
    good = member_raw
    parsed = np.frombuffer(b"".join(good), _MEMBER_KEY_DTYPE)
    table = np.zeros(len(good), dtype=_MEMBERS_DTYPE)
    table["course"], table["review"] = parsed["course"], parsed["review"]
    present = np.fromiter((v is not None for v in good.values()), bool, len(good))
    counted = np.frombuffer(b"".join(v for v in good.values() if v), _MEMBER_VALUE_DTYPE)
    table["created"][present], table["halves"][present] = counted["created"], counted["halves"]
    bad = present & ((table["halves"] < 1) | (table["halves"] > 10))
    unreadable += int(bad.sum())
    table = table[~bad]
    return table[np.lexsort((table["review"], table["course"]))], titles, day, unreadable
