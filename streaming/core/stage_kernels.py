"""The aggregator's two stages as compiled kernels over whole batches and columnar state.

`streaming.core.aggregation` owns the state objects and their formats; these numba functions do
the per-record work, so no Python object is built per review, per record or per change:

- `apply_versions`: one partition of the review stage. For each incoming version (in order),
  stale or superseding by (modified, position), it updates the review's row and writes the
  packed change records (re-keyed by course) and the packed changelog value into byte buffers.
- `apply_changes`: one partition of the course stage. It checks and applies each packed change
  (member rows keyed by (review, course slot), per-course histograms and latest-review times),
  writes the member changelog entries, and names each course's winning title of the batch.
- `recount`: the per-course figures a scan of the member rows gives (after a restore, when a
  window moves, or when the latest review of a course was retracted).

Byte layouts are those of `streaming.core.aggregation.formats` (big-endian, a leading format
byte); their sizes and the column layouts of the arrays the kernels take (`VersionColumn`,
`MemberColumn`, `Figure`, `Histogram`) are defined here, in the compiled module, because numba
freezes them into its cached machine code, which it invalidates only when this file changes.
"""

from __future__ import annotations

from enum import IntEnum

import numba
import numpy as np

from streaming.core import hash_index as hx
from streaming.core.review_bytes import valid_utf8
from streaming.core.window import MS_PER_DAY

SLOTS = 11
"""Histogram slots: index = rating halves (1..10); slot 0 stays 0."""
CHANGE_FORMAT, VERSION_FORMAT = 2, 4
CHANGE_HEAD, VERSION_SIZE = 36, 43
MEMBER_KEY_SIZE, MEMBER_VALUE_SIZE = 17, 9
RETRACT, ADD, TITLE = 1, 2, 4
TITLE_MODIFIED_AT = 28
"""Byte offset of the title's modified time in a packed change."""


class VersionColumn(IntEnum):
    """The int64 columns of a table of review versions: a batch of incoming versions
    (`apply_versions`) and a changelog replayed (`upsert_versions`)."""

    REVIEW = 0
    MODIFIED = 1
    POSITION = 2
    CREATED = 3
    COURSE = 4
    HALVES = 5
    VALID = 6


class Bound(IntEnum):
    """The columns of a table of (start, end) byte offsets, such as the titles of a batch."""

    START = 0
    END = 1


class MemberColumn(IntEnum):
    """The int64 columns of member entries replayed (`upsert_members`); HALVES 0: removed."""

    SLOT = 0
    REVIEW = 1
    CREATED = 2
    HALVES = 3


class Figure(IntEnum):
    """The columns of a course slot's figures: its latest review time (all-time, recent) with
    how many counted reviews share it (the column after each time), and whether it must be
    recounted (`recount`)."""

    LATEST = 0
    AT_LATEST = 1
    RECENT_LATEST = 2
    AT_RECENT_LATEST = 3
    DIRTY = 4


class Histogram(IntEnum):
    """The second axis of a course slot's histograms of rating halves."""

    ALL_TIME = 0
    RECENT = 1


# error codes of apply_changes (aggregation.courses.CHANGE_ERRORS says them in words)
NOT_A_CHANGE, BAD_HALVES, BAD_TITLE, UNSEEN_COURSE, NEVER_ADDED, RATING_NEVER_ADDED, TWICE = range(
    1, 8
)


# -- bytes ----------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, inline="always")
def _put_i64(out: np.ndarray, pos: int, value: int) -> None:
    v = np.uint64(value)
    for k in range(8):
        out[pos + k] = np.uint8((v >> np.uint64(56 - 8 * k)) & np.uint64(0xFF))


@numba.njit(cache=True, nogil=True, inline="always")
def _get_i64(buf: np.ndarray, pos: int) -> int:
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    return np.int64(v)  # type: ignore[return-value]  # numba's int64 is Python's int when boxed


@numba.njit(cache=True, nogil=True)
def _put_change(
    out: np.ndarray,
    pos: int,
    flags: int,
    review: int,
    old_c: int,
    old_h: int,
    new_c: int,
    new_h: int,
    title_m: int,
    buf: np.ndarray,
    t0: int,
    t1: int,
) -> int:
    """A packed change (with the title bytes buf[t0:t1] when TITLE); the position after it."""
    out[pos] = CHANGE_FORMAT
    out[pos + 1] = flags
    _put_i64(out, pos + 2, review)
    _put_i64(out, pos + 10, old_c)
    out[pos + 18] = old_h
    _put_i64(out, pos + 19, new_c)
    out[pos + 27] = new_h
    _put_i64(out, pos + TITLE_MODIFIED_AT, title_m)
    pos += CHANGE_HEAD
    if flags & TITLE:
        n = t1 - t0
        out[pos : pos + n] = buf[t0:t1]
        pos += n
    return pos


@numba.njit(cache=True, nogil=True)
def _bytes_greater(buf: np.ndarray, a0: int, a1: int, b0: int, b1: int) -> bool:
    """buf[a0:a1] > buf[b0:b1], bytewise (UTF-8 byte order is code point order)."""
    n = min(a1 - a0, b1 - b0)
    for k in range(n):
        if buf[a0 + k] != buf[b0 + k]:
            return buf[a0 + k] > buf[b0 + k]  # type: ignore[no-any-return]  # uint8 > uint8: bool
    return a1 - a0 > b1 - b0


# -- stage 1: current versions ----------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def apply_versions(
    index: np.ndarray,
    ids: np.ndarray,
    course: np.ndarray,
    modified: np.ndarray,
    position: np.ndarray,
    created: np.ndarray,
    halves: np.ndarray,
    valid: np.ndarray,
    rows: int,
    batch: np.ndarray,
    use: np.ndarray,
    buf: np.ndarray,
    titles: np.ndarray,
    changes: np.ndarray,
    change_ends: np.ndarray,
    change_course: np.ndarray,
    versions: np.ndarray,
    version_src: np.ndarray,
) -> tuple[int, int, int]:
    """Apply the versions of `batch` (`VersionColumn`s; rows where `use`) in order;
    titles[i] = (start, end) in `buf`.

    Writes the change records to `changes` (record k ends at change_ends[k], routed to
    change_course[k]) and the changelog values (VERSION_SIZE each) to `versions`, the input
    row of each in version_src. Returns (rows, changes written, changelog values written)."""
    n_changes = 0
    n_versions = 0
    pos = 0
    for i in range(batch.shape[0]):
        if not use[i]:
            continue
        review, mod, posn, cre, crs, hv, ok = (
            batch[i, VersionColumn.REVIEW],
            batch[i, VersionColumn.MODIFIED],
            batch[i, VersionColumn.POSITION],
            batch[i, VersionColumn.CREATED],
            batch[i, VersionColumn.COURSE],
            batch[i, VersionColumn.HALVES],
            batch[i, VersionColumn.VALID],
        )
        t0, t1 = titles[i, Bound.START], titles[i, Bound.END]
        row = hx.find(index, ids, ids, review, review)
        if row >= 0 and (mod < modified[row] or (mod == modified[row] and posn <= position[row])):
            pos = _put_change(changes, pos, TITLE, review, 0, 0, 0, 0, mod, buf, t0, t1)
            change_ends[n_changes] = pos
            change_course[n_changes] = crs
            n_changes += 1
            continue
        stored_valid = row >= 0 and valid[row] != 0
        old_course = course[row] if stored_valid else 0
        old_c = created[row] if stored_valid else 0
        old_h = halves[row] if stored_valid else 0
        if row < 0:
            row = rows
            rows += 1
            ids[row] = review
            hx.insert(index, ids, ids, row)
        course[row], modified[row], position[row] = crs, mod, posn
        created[row], halves[row], valid[row] = cre, hv, ok
        _put_version(versions, n_versions * VERSION_SIZE, review, crs, mod, posn, cre, hv, ok)
        version_src[n_versions] = i
        n_versions += 1
        flags = TITLE
        new_c = 0
        new_h = 0
        if ok:
            flags |= ADD
            new_c, new_h = cre, hv
        if stored_valid and old_course != crs:
            pos = _put_change(changes, pos, RETRACT, review, old_c, old_h, 0, 0, 0, buf, 0, 0)
            change_ends[n_changes] = pos
            change_course[n_changes] = old_course
            n_changes += 1
            old_c = 0
            old_h = 0
        elif stored_valid:
            if flags & ADD and old_c == new_c and old_h == new_h:
                flags, new_c, new_h, old_c, old_h = TITLE, 0, 0, 0, 0  # the counts stay
            else:
                flags |= RETRACT
        pos = _put_change(changes, pos, flags, review, old_c, old_h, new_c, new_h, mod, buf, t0, t1)
        change_ends[n_changes] = pos
        change_course[n_changes] = crs
        n_changes += 1
    return rows, n_changes, n_versions


@numba.njit(cache=True, nogil=True)
def _put_version(
    out: np.ndarray,
    pos: int,
    review: int,
    course: int,
    modified: int,
    position: int,
    created: int,
    halves: int,
    valid: int,
) -> None:
    out[pos] = VERSION_FORMAT
    _put_i64(out, pos + 1, review)
    _put_i64(out, pos + 9, course)
    _put_i64(out, pos + 17, modified)
    _put_i64(out, pos + 25, position)
    _put_i64(out, pos + 33, created)
    out[pos + 41] = halves
    out[pos + 42] = valid


@numba.njit(cache=True, nogil=True)
def upsert_versions(
    index: np.ndarray,
    ids: np.ndarray,
    course: np.ndarray,
    modified: np.ndarray,
    position: np.ndarray,
    created: np.ndarray,
    halves: np.ndarray,
    valid: np.ndarray,
    rows: int,
    table: np.ndarray,
) -> int:
    """Set each review of `table` (`VersionColumn`s) to its row there, unconditionally (a
    changelog replayed in order); the rows used."""
    for i in range(table.shape[0]):
        review = table[i, VersionColumn.REVIEW]
        row = hx.find(index, ids, ids, review, review)
        if row < 0:
            row = rows
            rows += 1
            ids[row] = review
            hx.insert(index, ids, ids, row)
        course[row] = table[i, VersionColumn.COURSE]
        modified[row] = table[i, VersionColumn.MODIFIED]
        position[row] = table[i, VersionColumn.POSITION]
        created[row] = table[i, VersionColumn.CREATED]
        halves[row] = table[i, VersionColumn.HALVES]
        valid[row] = table[i, VersionColumn.VALID]
    return rows


# -- stage 2: course statistics ---------------------------------------------------------------
@numba.njit(cache=True, nogil=True, inline="always")
def _in_window(created: int, first_day: int, last_day: int) -> bool:
    day = created // MS_PER_DAY
    return first_day <= day <= last_day


@numba.njit(cache=True, nogil=True, inline="always")
def _see_latest(figures: np.ndarray, c: int, col: int, created: int) -> None:
    """A counted review of course slot c created at `created`: the latest time (figures[c,
    col], `Figure.LATEST` or `Figure.RECENT_LATEST`) and how many reviews share it (the
    column after it)."""
    if figures[c, col + 1] == 0 or created > figures[c, col]:
        figures[c, col] = created
        figures[c, col + 1] = 1
    elif created == figures[c, col]:
        figures[c, col + 1] += 1


@numba.njit(cache=True, nogil=True)
def _count(
    figures: np.ndarray,
    hist: np.ndarray,
    c: int,
    created: int,
    h: int | np.int64,
    sign: int,
    recent: bool,
) -> None:
    """Count (sign 1) or uncount (-1) one review in course slot c: histograms and the latest
    review time with how many reviews share it (`Figure`). An uncounted latest review leaves
    the course dirty (`recount`)."""
    for axis, col, on in (
        (Histogram.ALL_TIME, Figure.LATEST, True),
        (Histogram.RECENT, Figure.RECENT_LATEST, recent),
    ):
        if not on:
            continue
        hist[c, axis, h] += sign
        if sign > 0:
            _see_latest(figures, c, col, created)
        elif created == figures[c, col]:
            figures[c, col + 1] -= 1
            if figures[c, col + 1] == 0:
                figures[c, Figure.DIRTY] = 1


@numba.njit(cache=True, nogil=True)
def apply_changes(
    index: np.ndarray,
    m_review: np.ndarray,
    m_course: np.ndarray,
    m_created: np.ndarray,
    m_halves: np.ndarray,
    rows: int,
    live: np.ndarray,
    hist: np.ndarray,
    figures: np.ndarray,
    course_ids: np.ndarray,
    window: tuple[int, int],
    buf: np.ndarray,
    ends: np.ndarray,
    slots: np.ndarray,
    errors: np.ndarray,
    touched: np.ndarray,
    best_title: np.ndarray,
    entry_keys: np.ndarray,
    entry_values: np.ndarray,
    entry_present: np.ndarray,
) -> tuple[int, int]:
    """Apply packed changes (record i is buf[ends[i-1]:ends[i]], for course slot slots[i], -1
    for none) in order. Every check comes before any state changes: a refused record gets its
    error code in errors[i] and changes nothing.

    Per course slot: `touched` when its statistics records changed (counts, or the course
    created), `best_title` the record whose (modified, title) is the batch's greatest. Member
    changelog entries go to entry_keys/entry_values (entry_present: a value, else a tombstone).
    Returns (member rows, entries written)."""
    first_day, last_day = window
    n_entries = 0
    start = 0
    for i in range(ends.shape[0]):
        end = ends[i]
        s0, start = start, end
        c = slots[i]
        if c < 0:
            continue
        if end - s0 < CHANGE_HEAD or buf[s0] != CHANGE_FORMAT:
            errors[i] = NOT_A_CHANGE
            continue
        flags = buf[s0 + 1]
        review = _get_i64(buf, s0 + 2)
        old_c, old_h = _get_i64(buf, s0 + 10), np.int64(buf[s0 + 18])
        new_c, new_h = _get_i64(buf, s0 + 19), np.int64(buf[s0 + 27])
        if (flags & RETRACT and not 1 <= old_h <= 10) or (flags & ADD and not 1 <= new_h <= 10):
            errors[i] = BAD_HALVES
            continue
        titled = flags & TITLE != 0
        if titled and not valid_utf8(buf, s0 + CHANGE_HEAD, end):
            errors[i] = BAD_TITLE
            continue
        if not live[c] and (not titled or flags & RETRACT):
            errors[i] = UNSEEN_COURSE  # nothing was ever counted there to retract
            continue
        row = hx.find(index, m_review, m_course, review, c)
        if flags & RETRACT:
            if row < 0 or m_created[row] != old_c:
                errors[i] = NEVER_ADDED
                continue
            if m_halves[row] != old_h:
                errors[i] = RATING_NEVER_ADDED
                continue
        elif flags & ADD and row >= 0:
            errors[i] = TWICE
            continue
        if not live[c]:
            live[c] = 1
            touched[c] = True
        if flags & ADD:
            if row < 0:
                row, rows = rows, rows + 1
                _new_member(index, m_review, m_course, row, review, c)
            m_created[row], m_halves[row] = new_c, new_h
            _count(figures, hist, c, new_c, new_h, 1, _in_window(new_c, first_day, last_day))
        if flags & RETRACT:
            _count(figures, hist, c, old_c, old_h, -1, _in_window(old_c, first_day, last_day))
            if not flags & ADD:
                rows = _remove_member(index, m_review, m_course, m_created, m_halves, rows, row)
        if flags & (ADD | RETRACT):
            touched[c] = True
            _member_entry(entry_keys, n_entries, course_ids[c], review)
            entry_present[n_entries] = flags & ADD != 0
            if flags & ADD:
                _put_i64(entry_values, n_entries * MEMBER_VALUE_SIZE, new_c)
                entry_values[n_entries * MEMBER_VALUE_SIZE + 8] = new_h
            n_entries += 1
        if titled:
            b = best_title[c]
            if b < 0:
                best_title[c] = i
            else:
                b0 = ends[b - 1] if b > 0 else 0
                b_m = _get_i64(buf, b0 + TITLE_MODIFIED_AT)
                t_m = _get_i64(buf, s0 + TITLE_MODIFIED_AT)
                if t_m > b_m or (
                    t_m == b_m
                    and _bytes_greater(buf, s0 + CHANGE_HEAD, end, b0 + CHANGE_HEAD, ends[b])
                ):
                    best_title[c] = i
    return rows, n_entries


@numba.njit(cache=True, nogil=True)
def _member_entry(keys: np.ndarray, k: int, course_id: int, review: int) -> None:
    at = k * MEMBER_KEY_SIZE
    keys[at] = 0x6D  # b"m"
    _put_i64(keys, at + 1, course_id)
    _put_i64(keys, at + 9, review)


@numba.njit(cache=True, nogil=True)
def _new_member(
    index: np.ndarray, m_review: np.ndarray, m_course: np.ndarray, row: int, review: int, c: int
) -> None:
    """Member `row` (the next free one) is (review, course slot c), indexed."""
    m_review[row], m_course[row] = review, c
    hx.insert(index, m_review, m_course, row)


@numba.njit(cache=True, nogil=True)
def _remove_member(
    index: np.ndarray,
    m_review: np.ndarray,
    m_course: np.ndarray,
    m_created: np.ndarray,
    m_halves: np.ndarray,
    rows: int,
    row: int,
) -> int:
    """Delete member `row`, moving the last row into its place; the rows left."""
    hx.remove(index, m_review, m_course, row)
    last = rows - 1
    if row != last:
        m_review[row], m_course[row] = m_review[last], m_course[last]
        m_created[row], m_halves[row] = m_created[last], m_halves[last]
        hx.renumber(index, m_review, m_course, last, row)
    return last


@numba.njit(cache=True, nogil=True)
def upsert_members(
    index: np.ndarray,
    m_review: np.ndarray,
    m_course: np.ndarray,
    m_created: np.ndarray,
    m_halves: np.ndarray,
    rows: int,
    hist: np.ndarray,
    figures: np.ndarray,
    window: tuple[int, int],
    table: np.ndarray,
) -> int:
    """Replay member entries (`MemberColumn`s), the latest per key, on top of the state: the
    old row of a key is uncounted first. Returns the rows used; courses whose latest review
    time may have moved are left dirty."""
    first_day, last_day = window
    for i in range(table.shape[0]):
        c, review = table[i, MemberColumn.SLOT], table[i, MemberColumn.REVIEW]
        new_c, new_h = table[i, MemberColumn.CREATED], table[i, MemberColumn.HALVES]
        row = hx.find(index, m_review, m_course, review, c)
        if row >= 0:
            old_c = m_created[row]
            _count(
                figures, hist, c, old_c, m_halves[row], -1, _in_window(old_c, first_day, last_day)
            )
            if new_h == 0:
                rows = _remove_member(index, m_review, m_course, m_created, m_halves, rows, row)
                continue
        elif new_h == 0:
            continue
        else:
            row, rows = rows, rows + 1
            _new_member(index, m_review, m_course, row, review, c)
        m_created[row], m_halves[row] = new_c, new_h
        _count(figures, hist, c, new_c, new_h, 1, _in_window(new_c, first_day, last_day))
    return rows


@numba.njit(cache=True, nogil=True)
def recount(
    m_course: np.ndarray,
    m_created: np.ndarray,
    m_halves: np.ndarray,
    rows: int,
    hist: np.ndarray,
    figures: np.ndarray,
    window: tuple[int, int],
    which: np.ndarray,
    histograms: bool,
) -> None:
    """Recompute, from the member rows, the latest review times of the course slots where
    `which` (and their histograms too when `histograms`: a restore, a window that moved)."""
    first_day, last_day = window
    for c in range(which.shape[0]):
        if which[c]:
            figures[c, :] = 0
            if histograms:
                hist[c, :, :] = 0
    for row in range(rows):
        c = m_course[row]
        if not which[c]:
            continue
        created, h = m_created[row], m_halves[row]
        recent = _in_window(created, first_day, last_day)
        if histograms:
            hist[c, Histogram.ALL_TIME, h] += 1
            if recent:
                hist[c, Histogram.RECENT, h] += 1
        for col, on in ((Figure.LATEST, True), (Figure.RECENT_LATEST, recent)):
            if on:
                _see_latest(figures, c, col, created)
