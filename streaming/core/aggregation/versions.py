"""Stage 1 of the aggregator: every review's current version, and the changes a new one emits.

One partition of the review stage (keyed by review id, co-partitioned with the valid and fraud
topics) keeps the current version of every review. `read_versions` turns a batch of records into
incoming versions in one call: the validity rule's checks (`review_frames.frame_batch`,
`validity.field_problems`), the fields as named columns (`stage_kernels.VersionColumn`) and each
record's position in udemy-reviews (its `source_position` header). `VersionsState.apply_batch`
then applies them in order: a version that does not supersede the stored one by (modified,
position) only offers its course title; a superseding one emits a retraction of the old counted
version (routed to the old course) and an addition of the new one (to its course; one record when
both are the same course), and its changelog value. Re-ratings, verdict flips and moves between
courses are all this one mechanism. Formats: `streaming.core.aggregation.formats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.core import hash_index as hx
from streaming.core import source_position
from streaming.core import stage_kernels as kernels
from streaming.core.aggregation.formats import (
    LEGACY_VERSION_FORMATS,
    VERSION,
    VERSION_DTYPE,
    VERSION_FORMAT,
    VERSIONS_MAGIC,
    VERSIONS_SNAPSHOT,
    VERSIONS_SNAPSHOT_FORMAT,
    RecordFormatError,
    StateLayoutError,
)
from streaming.core.review_bytes import Longs, Spans
from streaming.core.review_frames import Writer, frame_batch
from streaming.core.stage_kernels import Bound, VersionColumn
from streaming.core.stats import ReviewVersion
from streaming.core.validity import Problem, field_problems

Headers = Sequence[tuple[str, bytes | None]] | None

_INT_COLUMNS = ("ids", "course", "modified", "position", "created")
_BYTE_COLUMNS = ("halves", "valid")
"""The state's columns, in the order a snapshot holds them."""
_Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""The arrays of _INT_COLUMNS then _BYTE_COLUMNS, as the kernels take them."""
_CHANGELOG_FIELDS = {
    VersionColumn.REVIEW: "review",
    VersionColumn.MODIFIED: "modified",
    VersionColumn.POSITION: "position",
    VersionColumn.CREATED: "created",
    VersionColumn.COURSE: "course",
    VersionColumn.HALVES: "halves",
    VersionColumn.VALID: "valid",
}
"""Where each field of a changelog value (`formats.VERSION_DTYPE`) goes in a version table."""


@dataclass(frozen=True, slots=True)
class IncomingVersions:
    """A batch of records read as versions: columns[i] by `VersionColumn` (int64), applied
    where `use`; record i's course title is buf[start:end] for titles[i] (`Bound`s; UTF-8,
    checked); the problem of every record refused, by index (a `validity.Problem` when the
    record is no review, a bare reason when it lacks the position header the fraud filter
    writes)."""

    columns: np.ndarray
    use: np.ndarray
    buf: np.ndarray
    titles: np.ndarray
    problems: dict[int, Problem | str]


def read_versions(
    values: Sequence[bytes | None],
    headers: Sequence[Headers],
    valid: Sequence[bool],
    resolve: Callable[[int], Writer | None],
    review_schema: Any,
) -> IncomingVersions:
    """Records of the valid / fraud topics (values[i] with headers[i], valid[i] whether it came
    through the valid topic) as incoming versions, each checked by the validity rule once:
    framed and read as a batch, compiled; Python is left with the rare record whose rating
    needs reading or a reason, and the headers."""
    batch = frame_batch(values, resolve, review_schema)
    longs, spans, invalid = field_problems(batch.buf, batch.body_starts, batch.ends, batch.readable)
    problems: dict[int, Problem | str] = {**batch.problems, **invalid}
    use = batch.readable.copy()
    use[list(invalid)] = False
    columns = np.empty((len(values), len(VersionColumn)), dtype=np.int64)
    columns[:, VersionColumn.REVIEW] = longs[:, Longs.ID]
    columns[:, VersionColumn.MODIFIED] = longs[:, Longs.MODIFIED]
    columns[:, VersionColumn.CREATED] = longs[:, Longs.CREATED]
    columns[:, VersionColumn.COURSE] = longs[:, Longs.COURSE]
    columns[:, VersionColumn.HALVES] = longs[:, Longs.HALVES]
    columns[:, VersionColumn.VALID] = valid
    position = columns[:, VersionColumn.POSITION]
    header_order = source_position.header_order
    for i in np.flatnonzero(use).tolist():
        try:
            position[i] = header_order(headers[i])
        except ValueError as exc:
            problems[i] = str(exc)
            use[i] = False
    titles = spans[:, Spans.TITLE_START : Spans.TITLE_END + 1]
    return IncomingVersions(columns, use, batch.buf, titles, problems)


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
        columns: int = sum(getattr(self, c).nbytes for c in (*_INT_COLUMNS, *_BYTE_COLUMNS))
        return columns + self._index.nbytes

    def _reserve(self, more: int) -> None:
        need = self._rows + more
        for name in (*_INT_COLUMNS, *_BYTE_COLUMNS):
            setattr(self, name, hx.grown(getattr(self, name), need))
        if hx.needs_growth(self._index, need):
            self._index = hx.build(self.ids, self.ids, self._rows, hx.capacity_for(need))

    def _columns(self) -> _Columns:
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
        return {rid: self.get(rid) for rid in self.ids[: self._rows].tolist()}  # type: ignore[misc]  # each id has one

    def apply_batch(
        self, batch: np.ndarray, use: np.ndarray, buf: np.ndarray, titles: np.ndarray
    ) -> VersionChanges:
        """Apply incoming versions in order (`IncomingVersions`' columns, use, buf, titles, or
        rows of them): a version that does not supersede the stored one by (modified,
        position) only offers its title; a superseding one emits the retraction of the old
        counted version (to the old course) and the addition of the new one, and its changelog
        value."""
        n = len(batch)
        self._reserve(n)
        lengths = titles[:, Bound.END] - titles[:, Bound.START]
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
        batch = np.empty((1, len(VersionColumn)), dtype=np.int64)
        batch[0, VersionColumn.REVIEW] = review_id
        batch[0, VersionColumn.MODIFIED] = incoming.modified_ms
        batch[0, VersionColumn.POSITION] = incoming.position
        batch[0, VersionColumn.CREATED] = incoming.created_ms
        batch[0, VersionColumn.COURSE] = incoming.course_id
        batch[0, VersionColumn.HALVES] = incoming.halves
        batch[0, VersionColumn.VALID] = int(incoming.valid)
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
        size = VERSION.size
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
        table = np.frombuffer(b"".join(values), dtype=VERSION_DTYPE)
        good = (table["halves"] >= 1) & (table["halves"] <= 10)
        unreadable += int(len(table) - good.sum())
        table = table[good]
        # the last entry of each review: unique over the reversed order keeps first = last
        _, first = np.unique(table["review"][::-1], return_index=True)
        table = table[np.sort(len(table) - 1 - first)]
        rows = np.empty((len(table), len(VersionColumn)), dtype=np.int64)
        for column, field in _CHANGELOG_FIELDS.items():
            rows[:, column] = table[field]
        self._reserve(len(rows))
        self._rows = kernels.upsert_versions(self._index, *self._columns(), self._rows, rows)
        return unreadable

    def to_snapshot(self) -> bytes:
        """The state as bytes (`from_snapshot` reads them back): a header, then each column."""
        n = self._rows
        parts = [VERSIONS_SNAPSHOT.pack(VERSIONS_MAGIC, VERSIONS_SNAPSHOT_FORMAT, n)]
        parts += [getattr(self, c)[:n].astype("<i8", copy=False).tobytes() for c in _INT_COLUMNS]
        parts += [getattr(self, c)[:n].tobytes() for c in _BYTE_COLUMNS]
        return b"".join(parts)

    def compact(self) -> None:
        """Nothing to fold: the columns change in place."""

    @classmethod
    def from_snapshot(cls, data: bytes) -> VersionsState:
        """The state `to_snapshot` wrote (RecordFormatError when `data` is not one)."""
        head = VERSIONS_SNAPSHOT.size
        if len(data) < head:
            raise RecordFormatError("review-versions snapshot: truncated header")
        magic, fmt, n = VERSIONS_SNAPSHOT.unpack_from(data)
        if (magic, fmt) != (VERSIONS_MAGIC, VERSIONS_SNAPSHOT_FORMAT) or n < 0:
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
