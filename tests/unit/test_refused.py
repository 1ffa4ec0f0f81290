"""Counting both sides' refusals: positions from each kind of dead letter, and the comparison."""

from __future__ import annotations

from streaming.core import source_position
from streaming.core.validity import RATING, TEXT, Problem
from streaming.refused import (
    UNSTORED,
    compare_refusals,
    connect_refusals,
    stream_position,
    stream_refusals,
)

INPUT = "udemy-reviews"


def fraud_filter_letter(partition: int, offset: int, kind: str | None) -> list:
    own = [("dlq.error", b"why")] + ([] if kind is None else [("dlq.kind", kind.encode())])
    return [
        *own,
        ("dlq.source.topic", INPUT.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
    ]


def aggregator_letter(partition: int, offset: int, kind: str | None) -> list:
    """From udemy-reviews-valid, at its own position there; the source header says where the
    record was in the input."""
    return [
        ("dlq.error", b"why"),
        *([] if kind is None else [("dlq.kind", kind.encode())]),
        ("dlq.source.topic", b"udemy-reviews-valid"),
        ("dlq.source.partition", b"3"),
        ("dlq.source.offset", b"999"),
        (source_position.HEADER, source_position.encode(partition, offset)),
    ]


def test_each_stage_s_dead_letters_are_found_at_their_input_position() -> None:
    assert stream_position(fraud_filter_letter(1, 5, TEXT), INPUT) == (1, 5)
    assert stream_position(aggregator_letter(2, 7, RATING), INPUT) == (2, 7)
    assert stream_position([("dlq.source.topic", b"elsewhere")], INPUT) is None


def test_only_records_that_are_no_review_count_once_each() -> None:
    letters = [
        fraud_filter_letter(0, 1, TEXT),
        aggregator_letter(0, 2, RATING),
        aggregator_letter(0, 2, RATING),  # a rebuilt stream refused it again
        aggregator_letter(1, 3, None),  # refused by the broker, not by the rule
    ]
    assert stream_refusals(letters, INPUT) == {(0, 1): TEXT, (0, 2): RATING}


def test_the_raw_sink_s_dead_letters_are_classified_by_the_rule() -> None:
    def connect(topic: str, partition: int, offset: int) -> list:
        return [
            ("__connect.errors.topic", topic.encode()),
            ("__connect.errors.partition", str(partition).encode()),
            ("__connect.errors.offset", str(offset).encode()),
        ]

    records = [
        (connect(INPUT, 0, 4), b"nul"),
        (connect(INPUT, 1, 8), b"fine"),
        (connect("long-term-stats", 0, 9), b"nul"),  # another sink's
    ]
    verdicts = {b"nul": Problem(TEXT, "NUL"), b"fine": None}
    assert connect_refusals(records, INPUT, verdicts.__getitem__) == {
        (0, 4): TEXT,
        (1, 8): UNSTORED,
    }


def test_the_comparison_counts_per_kind_before_the_cut_and_names_differences() -> None:
    batch = {(0, 1): TEXT, (0, 2): RATING, (1, 9): RATING, (1, 50): RATING}
    stream = {(0, 1): TEXT, (0, 2): RATING, (1, 9): TEXT}
    counts = {c.kind: c for c in compare_refusals(batch, stream, {0: 10, 1: 10})}
    assert counts[TEXT].batch == 1 and counts[TEXT].stream == 2
    assert counts[TEXT].differing == ((1, 9),) and not counts[TEXT].agree
    assert counts[RATING].batch == 2 and counts[RATING].stream == 1  # (1, 50) is past the cut
    assert counts[RATING].differing == ((1, 9),)
    same = compare_refusals({(0, 1): TEXT}, {(0, 1): TEXT}, {0: 2})
    assert [c.agree for c in same] == [True]
