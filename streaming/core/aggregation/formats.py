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
"""

from __future__ import annotations

import struct

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
