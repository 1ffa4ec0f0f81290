"""The aggregator's two stages as pure state machines, and their internal record formats.

The Kafka Streams KTable model (`table.groupBy(course).aggregate(init, adder, subtractor)`):

1. `VersionsState`, one partition of the review stage (keyed by review id, co-partitioned with
   the valid and fraud topics, keyed by the review id): the current version of every review.
   Each incoming version either is stale (it only offers its course title) or supersedes the
   stored one; then it emits *changes*, each routed by course: a retraction of the old counted
   version to the old course and an addition of the new one to its course (one record when both
   are the same course). Re-ratings, verdict flips and moves between courses are all this one
   mechanism.
2. `CourseState`, one partition of the course stage (keyed by course id): applies changes to the
   course statistics and keeps each course's title by the order-independent rule.

Both keep their state columnar, a row per review and no Python object per review, and apply a
batch with one compiled call (`streaming.core.stage_kernels`); `apply` of one record is the same
code on a batch of one.

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

import numpy as np

from streaming.core import hash_index as hx
from streaming.core import stage_kernels as kernels
from streaming.core.stats import CourseStatistic, ReviewVersion, statistic_record
from streaming.core.window import window_bounds

VERSION_FORMAT = 4
# format, review, course, modified, position, created, halves, valid; position is
# source_position.order(partition, offset) in udemy-reviews (format 3 held the offset alone, on
# the partition of the producer's key: state of that layout cannot be carried over exactly)
LEGACY_VERSION_FORMATS = frozenset({3})
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


class StateLayoutError(RuntimeError):
    """A changelog written by an earlier layout of the state, which this version cannot read
    exactly: the stream's state must be rebuilt from `udemy-reviews`."""


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
assert _VERSION_DTYPE.itemsize == _VERSION.size == kernels.VERSION_SIZE
assert _CHANGE.size == kernels.CHANGE_HEAD
_VERSIONS_SNAPSHOT = struct.Struct("<4sBq")  # magic, format, reviews
_VERSIONS_MAGIC, _VERSIONS_SNAPSHOT_FORMAT = b"RVVS", 2  # 2: positions as source order
_INT_COLUMNS = ("ids", "course", "modified", "position", "created")
_BYTE_COLUMNS = ("halves", "valid")
BATCH_COLUMNS = ("review", "modified", "position", "created", "course", "halves", "valid")
"""The columns of a batch of incoming versions (`VersionsState.apply_batch`), in order."""


@dataclass(frozen=True, slots=True)
class VersionChanges:
    """What a batch of versions emits: change k is changes[ends[k-1]:ends[k]] (ends[-1] = 0),
    routed to course courses[k]; changelog value j is versions[43 j:43 (j+1)], written for
    input row sources[j]."""

    changes: bytes
    ends: list[int]
    courses: list[int]
    versions: bytes
    sources: list[int]


class VersionsState:
    """The current version of every review of one review-stage partition.

    Columnar: one numpy column per field (review id, course, modified, position, created, rating
    halves, verdict), 42 bytes a review, and a compiled hash index from review id to row
    (`streaming.core.hash_index`, 4 bytes a slot). Batches are applied by a compiled kernel
    (`stage_kernels.apply_versions`), and a snapshot is the columns' bytes."""

    __slots__ = ("_index", "_rows", *_INT_COLUMNS, *_BYTE_COLUMNS)

    def __init__(self) -> None:
        self._rows = 0
        self._index = np.full(hx.MIN_CAPACITY, hx.EMPTY, dtype=np.int32)
        self.ids, self.course, self.modified, self.position, self.created = (
            np.zeros(0, np.int64) for _ in _INT_COLUMNS
        )
        self.halves, self.valid = np.zeros(0, np.int8), np.zeros(0, np.int8)

    def __len__(self) -> int:
        return self._rows

    def nbytes(self) -> int:
        """Bytes this state holds in memory (its columns, room to grow included, and index)."""
        columns = sum(getattr(self, c).nbytes for c in (*_INT_COLUMNS, *_BYTE_COLUMNS))
        return columns + self._index.nbytes

    def _reserve(self, more: int) -> None:
        need = self._rows + more
        for name in (*_INT_COLUMNS, *_BYTE_COLUMNS):
            setattr(self, name, hx.grown(getattr(self, name), need))
        if hx.needs_growth(self._index, need):
            self._index = hx.build(self.ids, self.ids, self._rows, hx.capacity_for(need))

    def _columns(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, c) for c in (*_INT_COLUMNS, *_BYTE_COLUMNS))

    def get(self, review_id: int) -> ReviewVersion | None:
        row = hx.find(self._index, self.ids, self.ids, review_id, review_id)
        if row < 0:
            return None
        return ReviewVersion(
            int(self.modified[row]),
            int(self.created[row]),
            int(self.halves[row]),
            bool(self.valid[row]),
            int(self.course[row]),
            int(self.position[row]),
        )

    def as_dict(self) -> dict[int, ReviewVersion]:
        """Every current version (for comparisons; not on any hot path)."""
        return {rid: self.get(rid) for rid in self.ids[: self._rows].tolist()}  # type: ignore[misc]

    def apply_batch(
        self, batch: np.ndarray, use: np.ndarray, buf: np.ndarray, titles: np.ndarray
    ) -> VersionChanges:
        """Apply incoming versions in order: batch[i] holds `BATCH_COLUMNS` (int64), rows
        where `use`; record i's course title is buf[titles[i, 0]:titles[i, 1]] (UTF-8, checked
        by the caller). A version that does not supersede the stored one by (modified,
        position) only offers its title; a superseding one emits the retraction of the old
        counted version (to the old course) and the addition of the new one, and its changelog
        value."""
        n = len(batch)
        self._reserve(n)
        lengths = titles[:, 1] - titles[:, 0]
        changes = np.empty(2 * kernels.CHANGE_HEAD * n + int(lengths[use].sum()), np.uint8)
        ends = np.empty(2 * n, np.int64)
        courses = np.empty(2 * n, np.int64)
        versions = np.empty(kernels.VERSION_SIZE * n, np.uint8)
        sources = np.empty(n, np.int64)
        self._rows, n_changes, n_versions = kernels.apply_versions(
            self._index,
            *self._columns(),
            self._rows,
            batch,
            use,
            buf,
            titles,
            changes,
            ends,
            courses,
            versions,
            sources,
        )
        used = int(ends[n_changes - 1]) if n_changes else 0
        return VersionChanges(
            changes[:used].tobytes(),
            ends[:n_changes].tolist(),
            courses[:n_changes].tolist(),
            versions[: kernels.VERSION_SIZE * n_versions].tobytes(),
            sources[:n_versions].tolist(),
        )

    def apply(
        self, review_id: int, incoming: ReviewVersion, title: bytes
    ) -> tuple[list[tuple[int, bytes]], bytes | None]:
        """One incoming version (`apply_batch` of one): ([(course id, packed change)] to
        route by course, the changelog value to write for the review, None when stale)."""
        batch = np.array(
            [
                [
                    review_id,
                    incoming.modified_ms,
                    incoming.position,
                    incoming.created_ms,
                    incoming.course_id,
                    incoming.halves,
                    int(incoming.valid),
                ]
            ],
            dtype=np.int64,
        )
        buf = np.frombuffer(title, np.uint8) if title else np.zeros(0, np.uint8)
        out = self.apply_batch(batch, np.ones(1, bool), buf, np.array([[0, len(title)]]))
        starts = [0, *out.ends[:-1]]
        routed = [
            (course, out.changes[a:b])
            for course, a, b in zip(out.courses, starts, out.ends, strict=True)
        ]
        return routed, out.versions or None

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
            if data[:1] and data[0] in LEGACY_VERSION_FORMATS:
                raise StateLayoutError(
                    f"the review-versions changelog holds format-{data[0]} records (versions "
                    "ordered by offset within the key's partition, before a review was "
                    f"identified by its value's id); this version writes format {VERSION_FORMAT}"
                )
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
        rows = np.column_stack(
            [table[f].astype(np.int64) for f in ("review", *_INT_COLUMNS[1:], *_BYTE_COLUMNS)]
        ).reshape(-1, 7)
        self._reserve(len(rows))
        self._rows = kernels.upsert_versions(self._index, *self._columns(), self._rows, rows)
        return unreadable

    def to_snapshot(self) -> bytes:
        """The state as bytes (`from_snapshot` reads them back): a header, then each column."""
        n = self._rows
        parts = [_VERSIONS_SNAPSHOT.pack(_VERSIONS_MAGIC, _VERSIONS_SNAPSHOT_FORMAT, n)]
        parts += [getattr(self, c)[:n].astype("<i8", copy=False).tobytes() for c in _INT_COLUMNS]
        parts += [getattr(self, c)[:n].tobytes() for c in _BYTE_COLUMNS]
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
        state = cls()
        offset = head
        for name in _INT_COLUMNS:
            setattr(state, name, np.frombuffer(data, "<i8", n, offset).astype(np.int64))
            offset += 8 * n
        for name in _BYTE_COLUMNS:
            setattr(state, name, np.frombuffer(data, np.int8, n, offset).copy())
            offset += n
        if n and not ((state.halves >= 1) & (state.halves <= 10)).all():
            raise RecordFormatError("review-versions snapshot: rating halves outside 1..10")
        if len(np.unique(state.ids)) != n:
            raise RecordFormatError("review-versions snapshot: a review id twice")
        state._rows = n
        state._index = hx.build(state.ids, state.ids, n, hx.capacity_for(n))
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
CHANGE_ERRORS = {
    kernels.NOT_A_CHANGE: "not a change record",
    kernels.BAD_HALVES: "rating halves outside 1..10",
    kernels.BAD_TITLE: "the course title is not UTF-8",
    kernels.UNSEEN_COURSE: "a retraction for a course never seen",
    kernels.NEVER_ADDED: "retracting a version never added",
    kernels.RATING_NEVER_ADDED: "retracting a rating never added",
    kernels.TWICE: "adding a review already counted",
}
_MEMBER_COLUMNS = ("m_review", "m_course", "m_created", "m_halves")
_COURSE_COLUMNS = ("course_ids", "live", "hist", "figures")


@dataclass(frozen=True, slots=True)
class CourseUpdate:
    """What a batch of changes did: the courses whose statistics records changed, the changelog
    entries to write (in order; a later entry of a key supersedes an earlier one), and
    {index: reason} of the records refused (each changed nothing)."""

    changed: set[int]
    entries: list[tuple[bytes, bytes | None]]
    errors: dict[int, str]


class CourseState:
    """The statistics of every course of one course-stage partition, windows on one as-of day.

    Columnar and compiled (`stage_kernels`): who is counted where is one member row per counted
    review, (review, course slot) -> (created, halves), found through a hash index (`hash_index`);
    each course slot holds an all-time and a recent histogram of rating halves and its latest
    review times (with how many reviews share them, so a retraction knows when to rescan).
    Course titles are Python objects (a course is few, its reviews many). The member rows are
    what the changelog's member entries say: a tail replayed on top of a snapshot uncounts the
    row a member entry replaces."""

    __slots__ = (
        "_index",
        "_rows",
        "_slots",
        "_titles",
        *_MEMBER_COLUMNS,
        *_COURSE_COLUMNS,
        "as_of_day",
        "courses",
        "published_day",
    )

    def __init__(self, as_of_day: int) -> None:
        self.as_of_day = as_of_day
        self.courses: dict[int, int] = {}
        """Every course of the partition: id -> slot."""
        self._slots: dict[int, int] = {}
        """Every course id given a slot, also those a refused record named."""
        self._titles: list[tuple[int | None, bytes, str]] = []
        """Per slot: (modified that won the title, None before any; UTF-8 title; title)."""
        self._rows = 0
        self._index = np.full(hx.MIN_CAPACITY, hx.EMPTY, dtype=np.int32)
        self.m_review, self.m_created = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.m_course, self.m_halves = np.zeros(0, np.int32), np.zeros(0, np.int8)
        self.course_ids, self.live = np.zeros(0, np.int64), np.zeros(0, np.uint8)
        self.hist = np.zeros((0, 2, kernels.SLOTS), np.int64)
        self.figures = np.zeros((0, 5), np.int64)
        self.published_day: int | None = None
        """The as-of day of the last full publication of the partition's recent records, as
        committed (`published`): a restore on that day need not publish them again."""

    def nbytes(self) -> int:
        """Bytes this state holds in memory (member rows with room to grow, index, courses)."""
        arrays = (*_MEMBER_COLUMNS, *_COURSE_COLUMNS)
        titles = sum(len(raw) for _, raw, _ in self._titles)
        return sum(getattr(self, c).nbytes for c in arrays) + self._index.nbytes + titles

    # -- slots and room ----------------------------------------------------------------------
    def _slot(self, course_id: int) -> int:
        slot = self._slots.get(course_id)
        if slot is None:
            slot = self._slots[course_id] = len(self._titles)
            self._titles.append((None, b"", ""))
            n = slot + 1
            if n > len(self.live):
                grow = max(n, 2 * len(self.live), 16)
                self.course_ids = _zero_grown(self.course_ids, grow)
                self.live = _zero_grown(self.live, grow)
                self.hist = _zero_grown(self.hist, grow)
                self.figures = _zero_grown(self.figures, grow)
            self.course_ids[slot] = course_id
        return slot

    def _reserve(self, more: int) -> None:
        need = self._rows + more
        for name in _MEMBER_COLUMNS:
            setattr(self, name, hx.grown(getattr(self, name), need))
        if hx.needs_growth(self._index, need):
            self._index = hx.build(self.m_review, self.m_course, self._rows, hx.capacity_for(need))

    def _members(self) -> tuple[np.ndarray, ...]:
        return (self._index, *(getattr(self, c) for c in _MEMBER_COLUMNS), self._rows)

    def _window(self) -> tuple[int, int]:
        return window_bounds(self.as_of_day)

    def _go_live(self, slot: int) -> None:
        self.live[slot] = 1
        self.courses[int(self.course_ids[slot])] = slot

    def _recount(self, which: np.ndarray, histograms: bool) -> None:
        kernels.recount(
            self.m_course,
            self.m_created,
            self.m_halves,
            self._rows,
            self.hist,
            self.figures,
            self._window(),
            which,
            histograms,
        )

    def _recount_dirty(self) -> None:
        dirty = self.figures[:, 4] != 0
        if dirty.any():
            self._recount(dirty, histograms=False)

    # -- changes -----------------------------------------------------------------------------
    def apply_batch(self, course_ids: list[int], values: list[bytes | None]) -> CourseUpdate:
        """Apply packed changes (values[i] for course course_ids[i]) in order."""
        n = len(values)
        slots = np.array([self._slot(c) for c in course_ids], dtype=np.int32).reshape(n)
        errors = np.zeros(n, np.int8)
        for i, v in enumerate(values):
            if v is None:
                slots[i], errors[i] = -1, kernels.NOT_A_CHANGE
        buf = np.frombuffer(b"".join(v for v in values if v is not None), np.uint8)
        ends = np.cumsum([0 if v is None else len(v) for v in values], dtype=np.int64)
        self._reserve(n)
        courses = len(self._titles)
        touched = np.zeros(courses, bool)
        best = np.full(courses, -1, np.int64)
        keys = np.empty(kernels.MEMBER_KEY_SIZE * n, np.uint8)
        member_values = np.empty(kernels.MEMBER_VALUE_SIZE * n, np.uint8)
        present = np.zeros(n, bool)
        self._rows, n_entries = kernels.apply_changes(
            *self._members(),
            self.live,
            self.hist,
            self.figures,
            self.course_ids,
            self._window(),
            buf,
            ends,
            slots,
            errors,
            touched,
            best,
            keys,
            member_values,
            present,
        )
        self._recount_dirty()
        for slot in np.flatnonzero(self.live[:courses]).tolist():
            if self.course_ids[slot] not in self.courses:
                self._go_live(slot)
        changed = {int(self.course_ids[s]) for s in np.flatnonzero(touched).tolist()}
        entries = _member_entries(keys.tobytes(), member_values.tobytes(), present, n_entries)
        for slot in np.flatnonzero(best >= 0).tolist():
            data = values[int(best[slot])]
            assert data is not None
            modified = _TITLE.unpack_from(data, 28)[0]
            titled, retitled = self._offer_title(slot, modified, data[CHANGE_HEAD:])
            course_id = int(self.course_ids[slot])
            if titled:
                entries.append(
                    (_TITLE_KEY.pack(b"t", course_id), _TITLE.pack(modified) + data[CHANGE_HEAD:])
                )
            if retitled:
                changed.add(course_id)
        reasons = {
            i: f"aggregator change record: course {course_ids[i]}: {CHANGE_ERRORS[code]}"
            for i, code in enumerate(errors.tolist())
            if code
        }
        return CourseUpdate(changed, entries, reasons)

    def apply(
        self, records: Iterable[tuple[int, bytes | None]]
    ) -> tuple[set[int], dict[bytes, bytes | None], dict[int, str]]:
        """`apply_batch` of (course id, packed change) records: (courses whose statistics
        records changed, the final changelog value of each key the batch touched, as
        compaction would keep it, {index: reason} of records refused)."""
        pairs = list(records)
        update = self.apply_batch([c for c, _ in pairs], [v for _, v in pairs])
        return update.changed, dict(update.entries), update.errors

    def _offer_title(self, slot: int, modified: int, raw: bytes) -> tuple[bool, bool]:
        """Take a (modified, UTF-8 title) if it wins (the greatest modified, ties to the
        greater title); (whether it won, whether the title text changed)."""
        current, current_raw, text = self._titles[slot]
        if current is not None and (modified, raw) <= (current, current_raw):
            return False, False
        retitled = current is None or raw != current_raw
        self._titles[slot] = (modified, raw, raw.decode("utf-8") if retitled else text)
        return True, retitled

    def title(self, course_id: int) -> tuple[int | None, str]:
        """(the modified time that won the course's title, None before any; the title)."""
        modified, _, text = self._titles[self.courses[course_id]]
        return modified, text

    # -- restore: a changelog (tail), a snapshot ---------------------------------------------
    def restore(self, entries: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Apply changelog (key, value) entries in changelog order on top of this state (the
        latest entry of a key wins, a tombstone removes it); how many could not be read.
        Entries are parsed as arrays and replayed by one compiled call."""
        fresh = not self.courses
        members, titles, day, unreadable = _parse_course_entries(entries)
        if day is not None:
            self.published_day = day
        for course_id, (modified, raw) in titles.items():
            slot = self._slot(course_id)
            self._titles[slot] = (modified, raw, raw.decode("utf-8"))
            self._go_live(slot)
        known = np.isin(members["course"], np.fromiter(self.courses, np.int64, len(self.courses)))
        orphans = ~known & (members["halves"] != 0) if fresh else ~known
        self._replay(members[known])
        return unreadable + int(orphans.sum())

    def _replay(self, members: np.ndarray) -> None:
        """Member rows (course id, review, created, halves; halves 0: removed) on top."""
        slots = np.array([self.courses[c] for c in members["course"].tolist()], np.int64)
        table = np.column_stack(
            [
                slots.reshape(-1),
                members["review"].astype(np.int64),
                members["created"].astype(np.int64),
                members["halves"].astype(np.int64),
            ]
        ).reshape(-1, 4)
        self._reserve(len(table))
        self._rows = kernels.upsert_members(
            *self._members(), self.hist, self.figures, self._window(), table
        )
        self._recount_dirty()

    def compact(self) -> None:
        """Nothing to fold: the member rows change in place."""

    def to_snapshot(self) -> bytes:
        """The state as bytes (`from_snapshot` reads them back): a header, each course's id,
        title modified and title length, the titles, then the member table sorted by
        (course, review)."""
        slots = list(self.courses.values())
        ids = np.array(list(self.courses), dtype="<i8")
        titles = [self._titles[s] for s in slots]
        modified = np.array([_NO_TITLE if m is None else m for m, _, _ in titles], dtype="<i8")
        raws = [raw for _, raw, _ in titles]
        lengths = np.array([len(r) for r in raws], dtype="<i8")
        n = self._rows
        table = np.zeros(n, dtype=_MEMBERS_DTYPE)
        table["course"] = self.course_ids[self.m_course[:n]]
        table["review"], table["created"] = self.m_review[:n], self.m_created[:n]
        table["halves"] = self.m_halves[:n]
        table = table[np.lexsort((table["review"], table["course"]))]
        day = _NO_TITLE if self.published_day is None else self.published_day
        head = _COURSES_SNAPSHOT.pack(
            _COURSES_MAGIC, _COURSES_SNAPSHOT_FORMAT, day, len(ids), len(table)
        )
        parts = [head, ids.tobytes(), modified.tobytes(), lengths.tobytes()]
        return b"".join([*parts, *raws, table.tobytes()])

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
        state = cls(as_of_day)
        for course_id, mod, length in zip(ids, modified, lengths, strict=True):
            raw = data[offset : offset + length]
            offset += length
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecordFormatError(
                    f"course-stats snapshot: a title is not UTF-8 ({exc})"
                ) from exc
            slot = state._slot(course_id)
            state._titles[slot] = (None if mod == _NO_TITLE else mod, raw, text)
            state._go_live(slot)
        table = np.frombuffer(data, _MEMBERS_DTYPE, m, offset)
        if m and not ((table["halves"] >= 1) & (table["halves"] <= 10)).all():
            raise RecordFormatError("course-stats snapshot: rating halves outside 1..10")
        if not np.isin(table["course"], np.array(ids, dtype=np.int64)).all():
            raise RecordFormatError("course-stats snapshot: a member of a course it lacks")
        state._replay(table)
        if state._rows != m:
            raise RecordFormatError("course-stats snapshot: a member twice")
        state.published_day = None if day == _NO_TITLE else day
        return state

    # -- the window, the records ---------------------------------------------------------------
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
        self._recount(self.live.astype(bool), histograms=True)
        return list(self.courses)

    def recent_statistic(self, course_id: int, as_of_time: int) -> CourseStatistic:
        """The recent CourseStatistic record of one course."""
        return self._statistic(self.courses[course_id], True, as_of_time)

    def statistics(
        self, course_id: int, as_of_time: int
    ) -> tuple[CourseStatistic, CourseStatistic]:
        """(all-time, recent) CourseStatistic records of one course."""
        slot = self.courses[course_id]
        return self._statistic(slot, False, as_of_time), self._statistic(slot, True, as_of_time)

    def _statistic(self, slot: int, recent: bool, as_of_time: int) -> CourseStatistic:
        counts = self.hist[slot, int(recent)].tolist()
        last = int(self.figures[slot, 2 if recent else 0])
        window = window_bounds(self.as_of_day) if recent else (None, None)
        return statistic_record(
            int(self.course_ids[slot]), self._titles[slot][2], counts, last, window, as_of_time
        )


def _zero_grown(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _member_entries(
    keys: bytes, values: bytes, present: np.ndarray, n: int
) -> list[tuple[bytes, bytes | None]]:
    ks, vs = kernels.MEMBER_KEY_SIZE, kernels.MEMBER_VALUE_SIZE
    return [
        (keys[ks * k : ks * (k + 1)], values[vs * k : vs * (k + 1)] if p else None)
        for k, p in enumerate(present[:n].tolist())
    ]


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
