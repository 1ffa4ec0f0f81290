"""The aggregator's internal record formats: changelog keys and values, change records, snapshots.

Like Kafka Streams' internal serdes they are ours alone, but they outlive a process (changelogs,
snapshots, the changes topic), so each is fixed here once, with a leading format byte that lets a
later version change it:

- review versions changelog: key = review id, value = the packed current version (`VERSION`);
- change records (the internal changes topic, keyed by course): `CHANGE`, then the title's UTF-8
  bytes when the TITLE flag is set;
- course stats changelog: key `MEMBER_KEY` (course, review) -> `MEMBER_VALUE` (created, halves),
  a tombstone when retracted; key `TITLE_KEY` (course) -> `TITLE_VALUE` (modified) + the title's
  UTF-8; key `PUBLISHED_DAY_KEY` -> `DAY`;
- snapshots of either state: a magic, a format byte, then columns (`*_SNAPSHOT`).

The compiled kernels (`streaming.core.stage_kernels`) write and read the same bytes; their sizes
and format bytes are defined there (numba freezes them) and checked against the layouts here.
`parse_course_changelog` reads a course-stats changelog as arrays (a restore).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from streaming.core import stage_kernels as kernels

VERSION_FORMAT = kernels.VERSION_FORMAT
LEGACY_VERSION_FORMATS = frozenset({3})
"""Format 3 held the source offset alone, on the partition of the producer's key: state of that
layout cannot be carried over exactly (`StateLayoutError`)."""
VERSION = struct.Struct(">BqqqqqBB")
"""format, review, course, modified, position, created, halves, valid; position is
`source_position.order(partition, offset)` in udemy-reviews."""
VERSION_DTYPE = np.dtype(
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
"""`VERSION` as a numpy record, to parse a changelog's values as one array."""

CHANGE_FORMAT = kernels.CHANGE_FORMAT
CHANGE = struct.Struct(">BBqqBqBq")
"""format, flags, review, old (created, halves), new (created, halves), title modified."""
CHANGE_HEAD = CHANGE.size
RETRACT, ADD, TITLE = kernels.RETRACT, kernels.ADD, kernels.TITLE
TITLE_MODIFIED_AT = kernels.TITLE_MODIFIED_AT

MEMBER_KEY = struct.Struct(">cqq")
"""b"m", course, review."""
MEMBER_TAG = ord("m")
TITLE_KEY = struct.Struct(">cq")
"""b"t", course."""
TITLE_TAG = ord("t")
MEMBER_VALUE = struct.Struct(">qB")
"""created, halves."""
TITLE_VALUE = struct.Struct(">q")
"""modified, then the title's UTF-8 bytes."""
PUBLISHED_DAY_KEY = b"d"
"""Changelog key of the as-of day whose recent records the partition last published in full."""
DAY = struct.Struct(">q")
MEMBER_KEY_DTYPE = np.dtype([("tag", "S1"), ("course", ">i8"), ("review", ">i8")])
MEMBER_VALUE_DTYPE = np.dtype([("created", ">i8"), ("halves", "u1")])

VERSIONS_SNAPSHOT = struct.Struct("<4sBq")
"""magic, format, reviews; then each int64 column (little-endian), then each byte column."""
VERSIONS_MAGIC, VERSIONS_SNAPSHOT_FORMAT = b"RVVS", 2  # 2: positions as source order
COURSES_SNAPSHOT = struct.Struct("<4sBqqq")
"""magic, format, published day, courses, members; then the course ids, title modified times
and title lengths (int64 each), the titles, then the member table (`MEMBERS_DTYPE`)."""
COURSES_MAGIC, COURSES_SNAPSHOT_FORMAT = b"RVCS", 2
MEMBERS_DTYPE = np.dtype(
    [("course", "<i8"), ("review", "<i8"), ("created", "<i8"), ("halves", "u1")]
)
"""A member table: (course id, review) -> (created, halves; 0: removed)."""
NO_VALUE = -(2**63)
"""A snapshot's int64 for None (no title won yet, nothing published)."""

assert VERSION_DTYPE.itemsize == VERSION.size == kernels.VERSION_SIZE
assert CHANGE.size == kernels.CHANGE_HEAD
assert (MEMBER_KEY.size, MEMBER_VALUE.size) == (kernels.MEMBER_KEY_SIZE, kernels.MEMBER_VALUE_SIZE)


class RecordFormatError(ValueError):
    """An internal record that is not in a known format (a bug or a foreign writer)."""


class StateLayoutError(RuntimeError):
    """A changelog written by an earlier layout of the state, which this version cannot read
    exactly: the stream's state must be rebuilt from `udemy-reviews`."""


def parse_course_changelog(
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
    member_size, title_size, value_size = MEMBER_KEY.size, TITLE_KEY.size, MEMBER_VALUE.size
    at = TITLE_VALUE.size  # the title's UTF-8 bytes
    for key, value in entries:  # a bad entry is skipped: the key keeps its value before it
        if key is None:
            unreadable += 1
        elif len(key) == member_size and key[0] == MEMBER_TAG:
            if value is None or len(value) == value_size:
                member_raw[key] = value
            else:
                unreadable += 1
        elif len(key) == title_size and key[0] == TITLE_TAG and value and len(value) >= at:
            try:
                value[at:].decode("utf-8")  # not publishable: unreadable
            except UnicodeDecodeError:
                unreadable += 1
                continue
            title_raw[key] = value
        elif key == PUBLISHED_DAY_KEY and value is not None and len(value) == DAY.size:
            (day,) = DAY.unpack(value)
        else:
            unreadable += 1
    titles = {
        TITLE_KEY.unpack(key)[1]: (TITLE_VALUE.unpack_from(value)[0], value[TITLE_VALUE.size :])
        for key, value in title_raw.items()
    }
    good = member_raw
    parsed = np.frombuffer(b"".join(good), MEMBER_KEY_DTYPE)
    table = np.zeros(len(good), dtype=MEMBERS_DTYPE)
    table["course"], table["review"] = parsed["course"], parsed["review"]
    present = np.fromiter((v is not None for v in good.values()), bool, len(good))
    counted = np.frombuffer(b"".join(v for v in good.values() if v), MEMBER_VALUE_DTYPE)
    table["created"][present], table["halves"][present] = counted["created"], counted["halves"]
    bad = present & ((table["halves"] < 1) | (table["halves"] > 10))
    unreadable += int(bad.sum())
    table = table[~bad]
    return table[np.lexsort((table["review"], table["course"]))], titles, day, unreadable
