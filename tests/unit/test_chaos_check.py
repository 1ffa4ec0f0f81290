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
    def __init__(self, verdicts: dict[tuple[int, int], str]) -> None:
        self.verdicts = verdicts


def test_routing_counts_losses_duplicates_and_the_wrong_topic() -> None:
    window = [(0, 1, b"1", b"a"), (0, 2, b"2", b"b"), (1, 1, b"3", b"c")]
    oracle = Verdicts({(0, 1): VALID, (0, 2): FRAUD, (1, 1): VALID})
    right = {VALID: [(0, 0, b"1", b"a"), (1, 0, b"3", b"c")], FRAUD: [(0, 0, b"2", b"b")]}
    assert routing(window, oracle, right) == {"lost": 0, "duplicated": 0, "misrouted": 0}  # type: ignore[arg-type]
    swapped = {VALID: [(0, 0, b"1", b"a"), (0, 1, b"2", b"b")], FRAUD: [(1, 0, b"3", b"c")]}
    assert routing(window, oracle, swapped)["misrouted"] == 2  # type: ignore[arg-type]
    doubled = {**right, VALID: [*right[VALID], (0, 9, b"1", b"a")]}
    assert routing(window, oracle, doubled)["duplicated"] == 1  # type: ignore[arg-type]


def test_two_acknowledged_edits_of_one_review_are_two_records() -> None:
    v1 = {"id": 7, "rating": "4.0", "modified": 1}
    v2 = {"id": 7, "rating": "2.0", "modified": 2}
    inputs = {canonical(b"7", v1): 1, canonical(b"7", v2): 1}
    acked = [{"key": "7", "record": v1}, {"key": "7", "record": v2}]
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
