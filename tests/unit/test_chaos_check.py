"""The chaos check's pure parts: routing against the oracle, acknowledgements as a multiset,
the latest statistic per course."""

from __future__ import annotations

import json
import struct
from collections import Counter
from io import BytesIO
from pathlib import Path

from fastavro import parse_schema, schemaless_writer

from chaos.check import acknowledged_missing, canonical, decode_statistics, routing
from chaos.oracle import FRAUD, VALID

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
STAT = json.loads((SCHEMAS / "course_statistic.avsc").read_text())


class Verdicts:
    def __init__(self, verdicts: dict[tuple[int, int], str], ids: dict[tuple[int, int], int]):
        self.verdicts = verdicts
        self.review_ids = ids


def test_routing_by_input_position_losses_duplicates_wrong_topic_wrong_key() -> None:
    """Inputs with no key, an 8-byte key, the id: each output names its input position."""
    window = [(0, 1, None, b"a"), (0, 2, b"\0" * 7 + b"\2", b"b"), (1, 1, b"3", b"c")]
    oracle = Verdicts(
        {(0, 1): VALID, (0, 2): FRAUD, (1, 1): VALID}, {(0, 1): 1, (0, 2): 2, (1, 1): 3}
    )
    right = {
        VALID: [((0, 1), b"1", b"a"), ((1, 1), b"3", b"c"), ((0, 0), b"9", b"earlier")],
        FRAUD: [((0, 2), b"2", b"b")],
    }
    assert routing(window, oracle, right) == {"lost": 0, "duplicated": 0, "misrouted": 0}  # type: ignore[arg-type]  # Verdicts stands in for the Oracle
    swapped = {VALID: [((0, 1), b"1", b"a"), ((0, 2), b"2", b"b")], FRAUD: [((1, 1), b"3", b"c")]}
    assert routing(window, oracle, swapped)["misrouted"] == 2  # type: ignore[arg-type]  # Verdicts stands in for the Oracle
    doubled = {**right, VALID: [*right[VALID], ((0, 1), b"1", b"a")]}
    assert routing(window, oracle, doubled)["duplicated"] == 1  # type: ignore[arg-type]  # Verdicts stands in for the Oracle
    lost = {**right, FRAUD: []}
    assert routing(window, oracle, lost)["lost"] == 1  # type: ignore[arg-type]  # Verdicts stands in for the Oracle
    keyed_as_input = {**right, FRAUD: [((0, 2), b"\0" * 7 + b"\2", b"b")]}
    assert routing(window, oracle, keyed_as_input)["misrouted"] == 1  # type: ignore[arg-type]  # Verdicts stands in for the Oracle
    changed = {**right, FRAUD: [((0, 2), b"2", b"B")]}
    assert routing(window, oracle, changed)["misrouted"] == 1  # type: ignore[arg-type]  # Verdicts stands in for the Oracle


def test_two_acknowledged_edits_of_one_review_are_two_records() -> None:
    v1 = {"id": 7, "rating": "4.0", "modified": 1}
    v2 = {"id": 7, "rating": "2.0", "modified": 2}
    inputs = {canonical(b"7", v1): 1, canonical(b"7", v2): 1}
    acked = [{"key": b"7".hex(), "record": v1}, {"key": b"7".hex(), "record": v2}]
    assert acknowledged_missing(acked, Counter(inputs)) == 0
    assert acknowledged_missing([*acked, acked[0]], Counter(inputs)) == 1  # acked twice, once in
    assert acknowledged_missing(acked, Counter({canonical(b"7", v1): 1})) == 1


def frame(stat: dict) -> bytes:
    buf = BytesIO()
    schemaless_writer(buf, parse_schema(STAT), stat)
    return b"\x00" + struct.pack(">I", 9) + buf.getvalue()


def test_the_latest_statistic_of_each_course_wins() -> None:
    def stat(course: int, count: int) -> dict:
        return {
            "course_id": course,
            "course_title": "t",
            "average_rating": 4.0 if count else 0.0,
            "count_reviews": count,
            **{
                k: 0
                for k in (
                    "count_five_stars",
                    "count_four_stars",
                    "count_three_stars",
                    "count_two_stars",
                    "count_one_star",
                    "count_zero_star",
                )
            },
            "last_review_time": 0,
            "sum_rating": 4.0 * count,
        }

    records = [(0, 5, b"1", frame(stat(1, 2))), (0, 3, b"1", frame(stat(1, 1))), (1, 0, b"2", None)]
    latest = decode_statistics(records, lambda _id: STAT)
    assert list(latest) == [1] and latest[1]["count_reviews"] == 2
