"""The aggregator's internal records written and read in plain Python, for the tests.

Production writes and reads these bytes only in compiled code (`streaming.core.stage_kernels`)
or as whole arrays (`streaming.core.aggregation`); this is an independent, record-at-a-time
reading of the same layouts (`streaming.core.aggregation.formats`), so the tests can build
records to feed the stages and check what the stages wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from streaming.core.aggregation.formats import (
    ADD,
    CHANGE,
    CHANGE_FORMAT,
    CHANGE_HEAD,
    MEMBER_KEY,
    RETRACT,
    TITLE,
    TITLE_KEY,
    VERSION,
    VERSION_FORMAT,
    RecordFormatError,
)
from streaming.core.stats import ReviewVersion


def pack_version(review_id: int, v: ReviewVersion) -> bytes:
    """A review-versions changelog value."""
    return VERSION.pack(
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
    """(review id, version) of a review-versions changelog value (RecordFormatError when it
    is none)."""
    if data is None or len(data) != VERSION.size or data[0] != VERSION_FORMAT:
        raise RecordFormatError(f"not a review-version record ({describe(data)})")
    _, review_id, course_id, modified, position, created, halves, valid = VERSION.unpack(data)
    if not 1 <= halves <= 10:
        raise RecordFormatError(f"rating halves {halves} outside 1..10")
    return review_id, ReviewVersion(modified, created, halves, bool(valid), course_id, position)


@dataclass(slots=True)
class Change:
    """What one course must do about one review: uncount `retract`, count `add` (each a
    (created ms, halves) pair), offer `title` ((modified ms, UTF-8 title))."""

    review_id: int
    retract: tuple[int, int] | None = None
    add: tuple[int, int] | None = None
    title: tuple[int, bytes] | None = None


def pack_change(c: Change) -> bytes:
    """A change record."""
    flags = (RETRACT if c.retract else 0) | (ADD if c.add else 0) | (TITLE if c.title else 0)
    old, new, title = c.retract or (0, 0), c.add or (0, 0), c.title or (0, b"")
    return CHANGE.pack(CHANGE_FORMAT, flags, c.review_id, *old, *new, title[0]) + title[1]


def unpack_change(data: bytes | None) -> Change:
    """The change a record carries (RecordFormatError when it is none of ours)."""
    if data is None or len(data) < CHANGE_HEAD or data[0] != CHANGE_FORMAT:
        raise RecordFormatError(f"not a change record ({describe(data)})")
    _, flags, review_id, old_c, old_h, new_c, new_h, title_m = CHANGE.unpack_from(data)
    if (flags & RETRACT and not 1 <= old_h <= 10) or (flags & ADD and not 1 <= new_h <= 10):
        raise RecordFormatError(f"rating halves {old_h}/{new_h} outside 1..10")
    return Change(
        review_id,
        (old_c, old_h) if flags & RETRACT else None,
        (new_c, new_h) if flags & ADD else None,
        (title_m, data[CHANGE_HEAD:]) if flags & TITLE else None,
    )


def member_key(course_id: int, review_id: int) -> bytes:
    """The course-stats changelog key of a review counted in a course."""
    return MEMBER_KEY.pack(b"m", course_id, review_id)


def title_key(course_id: int) -> bytes:
    """The course-stats changelog key of a course's title."""
    return TITLE_KEY.pack(b"t", course_id)


def describe(data: bytes | None) -> str:
    """A record's size and format byte, for an error message."""
    if data is None:
        return "null value"
    return f"{len(data)} bytes, format byte {data[:1].hex() or '-'}"
