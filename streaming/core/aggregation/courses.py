"""Stage 2 of the aggregator: the statistics of every course, from the changes stage 1 routes.

One partition of the course stage (keyed by course id) applies change records
(`streaming.core.aggregation.versions`: retract a counted version, add one, offer a title) to the
course statistics, keeps each course's title by the order-independent rule (the greatest
modified time, ties to the greater title) and its recent window on one as-of day, and says what
to write to its changelog so `restore` rebuilds exactly the committed state. The per-record work
is compiled (`stage_kernels.apply_changes`); formats are in `streaming.core.aggregation.formats`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from streaming.core import hash_index as hx
from streaming.core import stage_kernels as kernels
from streaming.core.aggregation.formats import (
    CHANGE_HEAD,
    COURSES_MAGIC,
    COURSES_SNAPSHOT,
    COURSES_SNAPSHOT_FORMAT,
    DAY,
    MEMBERS_DTYPE,
    NO_VALUE,
    PUBLISHED_DAY_KEY,
    TITLE_KEY,
    TITLE_MODIFIED_AT,
    TITLE_VALUE,
    RecordFormatError,
    parse_course_changelog,
)
from streaming.core.stage_kernels import Figure, Histogram, MemberColumn
from streaming.core.stats import CourseStatistic, statistic_record
from streaming.core.window import window_bounds

CHANGE_ERRORS = {
    kernels.NOT_A_CHANGE: "not a change record",
    kernels.BAD_HALVES: "rating halves outside 1..10",
    kernels.BAD_TITLE: "the course title is not UTF-8",
    kernels.UNSEEN_COURSE: "a retraction for a course never seen",
    kernels.NEVER_ADDED: "retracting a version never added",
    kernels.RATING_NEVER_ADDED: "retracting a rating never added",
    kernels.TWICE: "adding a review already counted",
}
_HISTOGRAM = (int(Histogram.ALL_TIME), int(Histogram.RECENT))
_LATEST = (int(Figure.LATEST), int(Figure.RECENT_LATEST))
"""By whether recent: the histogram and latest-time columns (plain ints: a record's hot path)."""
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
        "_title_bytes",
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
        self._title_bytes = 0
        """The UTF-8 titles' bytes, kept as they change (`nbytes` is read on every commit)."""
        self._rows = 0
        self._index = np.full(hx.MIN_CAPACITY, hx.EMPTY, dtype=np.int32)
        self.m_review, self.m_created = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.m_course, self.m_halves = np.zeros(0, np.int32), np.zeros(0, np.int8)
        self.course_ids, self.live = np.zeros(0, np.int64), np.zeros(0, np.uint8)
        self.hist = np.zeros((0, 2, kernels.SLOTS), np.int64)
        self.figures = np.zeros((0, len(Figure)), np.int64)
        self.published_day: int | None = None
        """The as-of day of the last full publication of the partition's recent records, as
        committed (`published`): a restore on that day need not publish them again."""

    def nbytes(self) -> int:
        """Bytes this state holds in memory (member rows with room to grow, index, courses)."""
        arrays = (*_MEMBER_COLUMNS, *_COURSE_COLUMNS)
        columns: int = sum(getattr(self, c).nbytes for c in arrays)
        return columns + self._index.nbytes + self._title_bytes

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

    def _set_title(self, slot: int, modified: int | None, raw: bytes, text: str) -> None:
        self._title_bytes += len(raw) - len(self._titles[slot][1])
        self._titles[slot] = (modified, raw, text)

    def _reserve(self, more: int) -> None:
        need = self._rows + more
        for name in _MEMBER_COLUMNS:
            setattr(self, name, hx.grown(getattr(self, name), need))
        if hx.needs_growth(self._index, need):
            self._index = hx.build(self.m_review, self.m_course, self._rows, hx.capacity_for(need))

    def _members(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """The member index, _MEMBER_COLUMNS and the row count, as the kernels take them."""
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
        dirty = self.figures[:, Figure.DIRTY] != 0
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
        for slot in np.unique(slots[slots >= 0]).tolist():  # a course goes live by its changes
            if self.live[slot] and int(self.course_ids[slot]) not in self.courses:
                self._go_live(slot)
        changed = {int(self.course_ids[s]) for s in np.flatnonzero(touched).tolist()}
        entries = _member_entries(keys.tobytes(), member_values.tobytes(), present, n_entries)
        for slot in np.flatnonzero(best >= 0).tolist():
            data = values[int(best[slot])]
            assert data is not None
            modified = TITLE_VALUE.unpack_from(data, TITLE_MODIFIED_AT)[0]
            titled, retitled = self._offer_title(slot, modified, data[CHANGE_HEAD:])
            course_id = int(self.course_ids[slot])
            if titled:
                title = TITLE_VALUE.pack(modified) + data[CHANGE_HEAD:]
                entries.append((TITLE_KEY.pack(b"t", course_id), title))
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
        self._set_title(slot, modified, raw, raw.decode("utf-8") if retitled else text)
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
        members, titles, day, unreadable = parse_course_changelog(entries)
        if day is not None:
            self.published_day = day
        for course_id, (modified, raw) in titles.items():
            slot = self._slot(course_id)
            self._set_title(slot, modified, raw, raw.decode("utf-8"))
            self._go_live(slot)
        courses = self.courses  # a lookup per entry: the tail is small, the state may be large
        known = np.fromiter((c in courses for c in members["course"].tolist()), bool, len(members))
        orphans = ~known & (members["halves"] != 0) if fresh else ~known
        self._replay(members[known])
        return unreadable + int(orphans.sum())

    def _replay(self, members: np.ndarray) -> None:
        """Member rows (`formats.MEMBERS_DTYPE`; halves 0: removed) on top."""
        table = np.empty((len(members), len(MemberColumn)), np.int64)
        table[:, MemberColumn.SLOT] = [self.courses[c] for c in members["course"].tolist()]
        table[:, MemberColumn.REVIEW] = members["review"]
        table[:, MemberColumn.CREATED] = members["created"]
        table[:, MemberColumn.HALVES] = members["halves"]
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
        modified = np.array([NO_VALUE if m is None else m for m, _, _ in titles], dtype="<i8")
        raws = [raw for _, raw, _ in titles]
        lengths = np.array([len(r) for r in raws], dtype="<i8")
        n = self._rows
        table = np.zeros(n, dtype=MEMBERS_DTYPE)
        table["course"] = self.course_ids[self.m_course[:n]]
        table["review"], table["created"] = self.m_review[:n], self.m_created[:n]
        table["halves"] = self.m_halves[:n]
        table = table[np.lexsort((table["review"], table["course"]))]
        day = NO_VALUE if self.published_day is None else self.published_day
        head = COURSES_SNAPSHOT.pack(
            COURSES_MAGIC, COURSES_SNAPSHOT_FORMAT, day, len(ids), len(table)
        )
        parts = [head, ids.tobytes(), modified.tobytes(), lengths.tobytes()]
        return b"".join([*parts, *raws, table.tobytes()])

    @classmethod
    def from_snapshot(cls, data: bytes, as_of_day: int) -> CourseState:
        """The state `to_snapshot` wrote, its windows on `as_of_day` (RecordFormatError when
        `data` is not one)."""
        head = COURSES_SNAPSHOT.size
        if len(data) < head:
            raise RecordFormatError("course-stats snapshot: truncated header")
        magic, fmt, day, n, m = COURSES_SNAPSHOT.unpack_from(data)
        if (magic, fmt) != (COURSES_MAGIC, COURSES_SNAPSHOT_FORMAT) or n < 0 or m < 0:
            raise RecordFormatError(f"not a course-stats snapshot ({magic!r}, format {fmt})")
        if len(data) < head + 24 * n:
            raise RecordFormatError("course-stats snapshot: truncated course table")
        ids, modified, lengths = (
            np.frombuffer(data, "<i8", n, head + 8 * n * i).tolist() for i in range(3)
        )
        offset = head + 24 * n
        size = offset + sum(lengths) + m * MEMBERS_DTYPE.itemsize
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
            state._set_title(slot, None if mod == NO_VALUE else mod, raw, text)
            state._go_live(slot)
        table = np.frombuffer(data, MEMBERS_DTYPE, m, offset)
        if m and not ((table["halves"] >= 1) & (table["halves"] <= 10)).all():
            raise RecordFormatError("course-stats snapshot: rating halves outside 1..10")
        if not np.isin(table["course"], np.array(ids, dtype=np.int64)).all():
            raise RecordFormatError("course-stats snapshot: a member of a course it lacks")
        state._replay(table)
        if state._rows != m:
            raise RecordFormatError("course-stats snapshot: a member twice")
        state.published_day = None if day == NO_VALUE else day
        return state

    # -- the window, the records ---------------------------------------------------------------
    def published(self, day: int) -> tuple[bytes, bytes]:
        """Every recent record of the partition was just published for `day`: the changelog
        entry that says so (written in the same transaction)."""
        self.published_day = day
        return PUBLISHED_DAY_KEY, DAY.pack(day)

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
        counts = self.hist[slot, _HISTOGRAM[recent]].tolist()
        last = int(self.figures[slot, _LATEST[recent]])
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
