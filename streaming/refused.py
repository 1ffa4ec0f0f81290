"""Which records of the input topic each side refused, by position and kind: what the
reconciliation compares besides the statistics.

The stream refuses a record that is no review to its dead-letter topic with the validity rule's
kind in `dlq.kind`, found at its position in `udemy-reviews`: the fraud filter's dead letters
carry their own input coordinates (`dlq.source.*`), the aggregator's the fraud filter's
`source.position` header. The batch refuses the versions its verdicts step calls invalid, and
never sees the records the raw `reviews` sink could not store: Kafka Connect's dead letters of
that sink (`__connect.errors.*` headers), classified here by the same rule on their bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from streaming.core import source_position
from streaming.core.validity import Problem

Position = tuple[int, int]
Headers = Sequence[tuple[str, bytes | None]] | None
UNSTORED = "unstored"
"""The batch's kind for a record its sink dead-lettered although the rule finds it valid."""
EXAMPLES = 5


def _header(headers: Headers, name: str) -> bytes | None:
    return next((v for k, v in headers or () if k == name), None)


def stream_position(headers: Headers, input_topic: str) -> Position | None:
    """Where in `input_topic` a stream dead letter came from; None for one from elsewhere."""
    if _header(headers, "dlq.source.topic") == input_topic.encode():
        partition = _header(headers, "dlq.source.partition")
        offset = _header(headers, "dlq.source.offset")
        if partition is not None and offset is not None:
            return int(partition), int(offset)
    position = _header(headers, source_position.HEADER)
    try:
        return None if position is None else source_position.decode(position)
    except ValueError:
        return None


def stream_refusals(headers: Iterable[Headers], input_topic: str) -> dict[Position, str]:
    """{position: kind} of the stream's dead letters that name a kind (records that are no
    review), deduplicated by position (a rebuilt stream refuses the same record again)."""
    out: dict[Position, str] = {}
    for hs in headers:
        kind = _header(hs, "dlq.kind")
        position = stream_position(hs, input_topic) if kind is not None else None
        if kind is not None and position is not None:
            out[position] = kind.decode()
    return out


def connect_refusals(
    records: Iterable[tuple[Headers, bytes | None]],
    input_topic: str,
    classify: Callable[[bytes | None], Problem | None],
) -> dict[Position, str]:
    """{position: kind} of Kafka Connect's dead letters of records of `input_topic` (the raw
    sink's), each classified by `classify` (the validity rule); UNSTORED where it finds none."""
    out: dict[Position, str] = {}
    for hs, value in records:
        if _header(hs, "__connect.errors.topic") != input_topic.encode():
            continue
        partition = _header(hs, "__connect.errors.partition")
        offset = _header(hs, "__connect.errors.offset")
        if partition is None or offset is None:
            continue
        problem = classify(value)
        out[(int(partition), int(offset))] = UNSTORED if problem is None else problem.kind
    return out


@dataclass(frozen=True)
class RefusalCount:
    """One kind's refusals on each side; `differing` names a few positions only one side (or
    each side with another kind) refused."""

    kind: str
    batch: int
    stream: int
    differing: tuple[Position, ...]

    @property
    def agree(self) -> bool:
        return not self.differing


def compare_refusals(
    batch: Mapping[Position, str], stream: Mapping[Position, str], cut: Mapping[int, int]
) -> list[RefusalCount]:
    """Both sides' refusals of records before the cut ({partition: end offset}), per kind."""

    def before(refused: Mapping[Position, str]) -> dict[Position, str]:
        return {p: k for p, k in refused.items() if p[1] < cut.get(p[0], 0)}

    b, s = before(batch), before(stream)
    counts_b, counts_s = Counter(b.values()), Counter(s.values())
    out = []
    for kind in sorted(counts_b.keys() | counts_s.keys()):
        positions = {p for p, k in b.items() if k == kind} ^ {p for p, k in s.items() if k == kind}
        out.append(
            RefusalCount(kind, counts_b[kind], counts_s[kind], tuple(sorted(positions))[:EXAMPLES])
        )
    return out
