"""The aggregator's two stages as pure state machines, and their internal record formats.

The Kafka Streams KTable model (`table.groupBy(course).aggregate(init, adder, subtractor)`):

1. `versions`: one partition of the review stage (keyed by review id): the current version of
   every review; each incoming version either is stale (it only offers its course title) or
   supersedes the stored one, and then emits *changes*, each routed by course: a retraction of
   the old counted version to the old course and an addition of the new one to its course.
2. `courses`: one partition of the course stage (keyed by course id): applies changes to the
   course statistics and keeps each course's title by the order-independent rule.
3. `formats`: the changelog, change-record and snapshot byte layouts both stages write.

Both keep their state columnar, a row per review and no Python object per review, and apply a
batch with one compiled call (`streaming.core.stage_kernels`). Each state says what to write to
its changelog, so the worker writes it in the same transaction as its outputs and input offsets,
and `restore` rebuilds the state from those records. The names below are the package's API for
the worker, its state stores and the benchmarks.
"""

from streaming.core.aggregation.courses import CourseState, CourseUpdate
from streaming.core.aggregation.formats import RecordFormatError, StateLayoutError
from streaming.core.aggregation.versions import (
    IncomingVersions,
    VersionChanges,
    VersionsState,
    read_versions,
)

__all__ = [
    "CourseState",
    "CourseUpdate",
    "IncomingVersions",
    "RecordFormatError",
    "StateLayoutError",
    "VersionChanges",
    "VersionsState",
    "read_versions",
]
