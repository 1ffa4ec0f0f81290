"""The aggregator's state per partition and its internal record format, pure.

Records on the repartition topic (key: course id) and on the changelog topic (key: review id)
share one compact binary format: a review's version reduced to what the statistics need, plus
the course title. It is internal to the aggregator (like Kafka Streams' internal serdes): a
leading format byte lets a later version change it.

`PartitionState` is what one aggregator instance keeps for one repartition partition: the
current version of every review whose course hashes there, and the course statistics. It applies
batches of incoming versions and says which courses changed and which reviews' changelog entries
to write; restoring replays the changelog through the same code.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from streaming.core.stats import Aggregates, CourseStatistic, ReviewVersion, apply_version
from streaming.core.stats import to_course_statistic as _to_course_statistic

FORMAT_V1 = 1
_HEAD = struct.Struct(">BqqqqBB")  # format, review id, course id, modified, created, halves, valid
HEAD_SIZE = _HEAD.size


class RecordFormatError(ValueError):
    """An internal record that is not in a known format (a bug or a foreign writer)."""


def pack_version(review_id: int, version: ReviewVersion, title: bytes) -> bytes:
    """Encode one review version with its course title (UTF-8 bytes, as read from the Avro)."""
    return (
        _HEAD.pack(
            FORMAT_V1,
            review_id,
            version.course_id,
            version.modified_ms,
            version.created_ms,
            version.halves,
            version.valid,
        )
        + title
    )


def unpack_version(data: bytes) -> tuple[int, ReviewVersion, str]:
    if len(data) < HEAD_SIZE or data[0] != FORMAT_V1:
        raise RecordFormatError(f"not an aggregator record (format byte {data[:1].hex() or '-'})")
    _, review_id, course_id, modified, created, halves, valid = _HEAD.unpack_from(data)
    if not 1 <= halves <= 10:
        raise RecordFormatError(f"rating halves {halves} outside 1..10")
    title = data[HEAD_SIZE:].decode("utf-8")
    return review_id, ReviewVersion(modified, created, halves, bool(valid), course_id), title


class PartitionState:
    """Current versions and statistics of the courses of one repartition partition."""

    __slots__ = ("aggregates", "reviews")

    def __init__(self, as_of_day: int) -> None:
        self.reviews: dict[int, ReviewVersion] = {}
        self.aggregates = Aggregates(as_of_day)

    def apply(
        self, records: Iterable[bytes | None]
    ) -> tuple[set[int], dict[int, bytes], dict[int, str]]:
        """Apply packed versions in arrival order.

        Returns (ids of courses whose statistics records changed, {review id: packed record}
        for every review whose current version changed: the changelog entries to write,
        {index: reason} of records that could not be read and were skipped).
        """
        changed: set[int] = set()
        changelog: dict[int, bytes] = {}
        errors: dict[int, str] = {}
        reviews = self.reviews
        for i, data in enumerate(records):
            try:
                if data is None:
                    raise RecordFormatError("null value")
                review_id, incoming, title = unpack_version(data)
            except (RecordFormatError, UnicodeDecodeError) as exc:
                errors[i] = f"aggregator record: {exc}"
                continue
            stored = reviews.get(review_id)
            current, courses = apply_version(self.aggregates, stored, incoming, title)
            if current is incoming:
                reviews[review_id] = incoming
                changelog[review_id] = data
            changed.update(courses)
        return changed, changelog, errors

    def restore(self, records: Iterable[bytes | None]) -> int:
        """Rebuild from changelog records (current versions, in changelog order); returns how
        many records could not be read (a changelog is written only by the aggregator)."""
        return len(self.apply(records)[2])

    def advance(self, as_of_day: int) -> list[int]:
        """Move the recent window; every course's recent record changes (its window moved)."""
        if as_of_day != self.aggregates.as_of_day:
            self.aggregates.advance(as_of_day)
            return list(self.aggregates.courses)
        return []

    def statistics(
        self, course_id: int, as_of_time: int
    ) -> tuple[CourseStatistic, CourseStatistic]:
        """(all-time, recent) CourseStatistic records of one course."""
        course = self.aggregates.courses[course_id]
        return (
            _to_course_statistic(course, recent=False, as_of_time=as_of_time),
            _to_course_statistic(course, recent=True, as_of_time=as_of_time),
        )
