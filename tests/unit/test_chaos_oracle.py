"""The chaos oracle (`chaos/oracle.py`): each rule on hand-written histories, Kafka's murmur2, and
property tests against the stream's own reference (`compute_from_scratch`) and its readers.

Only the oracle must stay independent of `streaming/`; these tests import it freely to check
that both sides agree.
"""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.oracle import (
    COMPARED_FIELDS,
    DEAD,
    EDIT_KINDS,
    FRAUD,
    MS_PER_DAY,
    RATING,
    ROUTED_KINDS,
    TEXT,
    TIMESTAMP,
    TOMBSTONE,
    UNDECODABLE,
    VALID,
    Oracle,
    ReviewDecoder,
    Version,
    compare,
    decode_input,
    edit_kinds,
    is_fraud,
    murmur2,
    to_positive,
    without_logical_types,
)
from streaming.core.avro_codec import load_schema, schema_fingerprint_le
from streaming.core.fraud import HashFraudModel
from streaming.core.fraud_routing import DEAD as ROUTED_DEAD
from streaming.core.fraud_routing import FRAUD as ROUTED_FRAUD
from streaming.core.fraud_routing import route
from streaming.core.review_bytes import murmur2 as stream_murmur2
from streaming.core.review_frames import frame_batch, writer_for
from streaming.core.stats import ReviewVersion, compute_from_scratch
from streaming.core.validity import classify, field_problems

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
REVIEW_JSON = json.loads((SCHEMAS / "review.avsc").read_text())
REORDERED_JSON = {
    **REVIEW_JSON,
    "fields": [
        REVIEW_JSON["fields"][-1],  # course first: another canonical form, another body
        *REVIEW_JSON["fields"][:-1],
        {"name": "extra", "type": "string", "default": ""},  # dropped by the Review schema
    ],
}
REVIEW_ID, REORDERED_ID, UNKNOWN_ID = 1, 3, 2
REGISTRY = {REVIEW_ID: REVIEW_JSON, REORDERED_ID: json.dumps(REORDERED_JSON)}
WRITERS = {
    REVIEW_ID: parse_schema(without_logical_types(REVIEW_JSON)),
    REORDERED_ID: parse_schema(without_logical_types(REORDERED_JSON)),
}
DECODER = ReviewDecoder(REGISTRY.get)

D = 20_000  # the as-of day of most tests
DAY = D * MS_PER_DAY

# --- helpers ---------------------------------------------------------------------------------


def review(
    review_id: int,
    rating: str = "5.0",
    *,
    modified: int = DAY,
    created: int | None = None,
    course: int = 1,
    title: str = "Kafka",
    content: str | None = "",
) -> dict[str, Any]:
    return {
        "id": review_id,
        "title": None,
        "content": content,
        "rating": rating,
        "created": DAY if created is None else created,
        "modified": modified,
        "user": {"title": "u", "name": "n", "display_name": "d"},
        "course": {"id": course, "title": title, "url": f"/c{course}/"},
    }


def body(rec: dict[str, Any], schema_id: int = REVIEW_ID) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, WRITERS[schema_id], rec)
    return out.getvalue()


def frame(rec: dict[str, Any], schema_id: int = REVIEW_ID) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body(rec, schema_id)


def verdict(rec: dict[str, Any]) -> bool:
    return is_fraud(DECODER.prefix + body(rec))


def judged(rec: dict[str, Any], fraud: bool) -> dict[str, Any]:
    """`rec` with the user's display name varied until the fraud rule says `fraud`."""
    for n in range(10_000):
        candidate = {**rec, "user": {**rec["user"], "display_name": f"d{n}"}}
        if verdict(candidate) == fraud:
            return candidate
    raise AssertionError("no display name gives that verdict")


def valid(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return judged(review(*args, **kwargs), fraud=False)


def fraud(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return judged(review(*args, **kwargs), fraud=True)


def feed(records: list[Any], order: list[int] | None = None) -> Oracle:
    """An oracle fed records at offsets 0.. of partition 0 (dicts are framed with schema 1),
    in `order` (default: offset order)."""
    oracle = Oracle(REGISTRY.get)
    for offset in order if order is not None else range(len(records)):
        rec = records[offset]
        value = frame(rec) if isinstance(rec, dict) else rec
        oracle.add(0, offset, str(offset).encode(), value)
    return oracle


def stats(records: list[Any], as_of_day: int = D, **kw: Any) -> dict[int, Any]:
    return feed(records, **kw).result(as_of_day)


# --- murmur2 and the fraud rule --------------------------------------------------------------

# Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java (testMurmur2),
# plus tails of 0..3 bytes and bytes >= 0x80; every value checked against Utils.murmur2 of
# kafka-clients 4.3.1 (run with java on this machine).
MURMUR2_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (b"", 275646681),
    (b"a", -1563381124),
    (b"ab", 316155434),
    (b"abcd", -1323649548),
    (b"\xff\xfe\x80", -160726397),
]


@pytest.mark.parametrize(("data", "expected"), MURMUR2_VECTORS)
def test_murmur2_equals_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_murmur2_equals_the_stream_hash(data: bytes) -> None:
    assert murmur2(data) == stream_murmur2(data)


def test_to_positive_clears_only_the_sign_bit() -> None:
    assert to_positive(-973932308) == -973932308 + 2**31
    assert to_positive(-(2**31)) == 0
    assert to_positive(5) == 5


def test_fingerprint_bytes_are_little_endian_as_the_avro_spec_says() -> None:
    # Avro's schema-tests.txt: '"null"' has fingerprint 7195948357588979594 (a Java long)
    expected = (7195948357588979594).to_bytes(8, "little")
    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == expected


def test_single_object_prefix_equals_the_streams() -> None:
    fp = schema_fingerprint_le(load_schema(SCHEMAS / "review.avsc"))
    assert DECODER.prefix == b"\xc3\x01" + fp


def test_a_record_written_with_another_schema_is_hashed_as_its_review_encoding() -> None:
    rec = {**review(1), "extra": "x"}
    for n in range(200):  # both verdicts, so the body hashed matters
        rec = {**rec, "content": f"c{n}"}
        version = DECODER.decode(0, n, frame(rec, REORDERED_ID))
        assert version.fraud == is_fraud(DECODER.prefix + body(rec))


# --- current versions ------------------------------------------------------------------------


def count(result: dict[int, Any], course: int = 1) -> int:
    return result[course].all_time["count_reviews"]


def test_equal_modified_goes_to_the_greater_offset_in_any_order() -> None:
    records = [valid(1, "1.0"), valid(1, "5.0"), valid(1, "3.0")]  # all at modified DAY
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        assert stats(records, order=order)[1].all_time["sum_rating"] == 3.0


def test_a_stale_re_send_changes_nothing() -> None:
    records = [valid(1, "4.0", modified=DAY + 5), valid(1, "1.0", modified=DAY + 4)]
    assert stats(records)[1].all_time["sum_rating"] == 4.0


def test_a_stale_fraud_version_does_not_retract() -> None:
    records = [valid(1, "4.0", modified=DAY + 5), fraud(1, "4.0", modified=DAY + 1)]
    assert count(stats(records)) == 1


def test_a_move_retracts_from_the_old_course() -> None:
    records = [valid(1, course=1), valid(1, course=2, modified=DAY + 1)]
    result = stats(records)
    assert (count(result, 1), count(result, 2)) == (0, 1)
    assert result[1].all_time["last_review_time"] == 0


def test_a_move_back_and_forth_counts_once() -> None:
    records = [valid(1, course=c, modified=DAY + i) for i, c in enumerate([1, 2, 1, 2, 1])]
    result = stats(records)
    assert (count(result, 1), count(result, 2)) == (1, 0)


def test_verdict_flips_both_ways() -> None:
    base = review(1)
    to_fraud = [judged(base, False), judged({**base, "modified": DAY + 1}, True)]
    to_valid = [judged(base, True), judged({**base, "modified": DAY + 1}, False)]
    assert count(stats(to_fraud)) == 0
    assert count(stats(to_valid)) == 1


def test_a_verdict_flip_at_equal_modified_takes_the_greater_offset() -> None:
    records = [valid(1), fraud(1)]
    assert count(stats(records)) == 0
    assert count(stats(records[::-1])) == 1  # now the valid one is at the greater offset


def test_re_rating_replaces_the_rating() -> None:
    records = [valid(1, "5.0"), valid(1, "0.5", modified=DAY + 1)]
    all_time = stats(records)[1].all_time
    assert (all_time["count_reviews"], all_time["sum_rating"], all_time["count_zero_star"]) == (
        1,
        0.5,
        1,
    )
    assert all_time["count_five_stars"] == 0


def test_every_rating_goes_to_its_star_bucket() -> None:
    ratings = ["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"]
    all_time = stats([valid(i, r) for i, r in enumerate(ratings)])[1].all_time
    assert {k: v for k, v in all_time.items() if k.startswith("count_") and "star" in k} == {
        "count_zero_star": 1,
        "count_one_star": 2,
        "count_two_stars": 2,
        "count_three_stars": 2,
        "count_four_stars": 2,
        "count_five_stars": 1,
    }
    assert all_time["sum_rating"] == 27.5
    assert all_time["average_rating"] == 2.75


# --- courses and titles ----------------------------------------------------------------------


def title_of(records: list[Any], course: int = 1) -> str:
    return stats(records)[course].title


def test_the_title_is_the_one_with_the_greatest_modified() -> None:
    records = [valid(1, title="New", modified=DAY + 9), valid(2, title="Old", modified=DAY + 1)]
    assert title_of(records) == "New"


def test_a_title_tie_goes_to_the_greater_title_by_code_point() -> None:
    titles = ["Z", "Été", "a", "😀", "\uffff"]
    records = [valid(i, title=t) for i, t in enumerate(titles)]
    assert title_of(records) == "😀"
    assert title_of(records[::-1]) == "😀"


def test_titles_come_from_fraud_stale_and_superseded_records_too() -> None:
    fraud_title = [valid(1, title="A", modified=DAY), fraud(2, title="B", modified=DAY + 1)]
    assert title_of(fraud_title) == "B"
    stale = [valid(1, title="A", modified=DAY + 5), valid(1, title="Z", modified=DAY + 5)]
    assert title_of(stale[::-1]) == "Z"  # the winner by modified then title, not by offset
    moved = [valid(1, title="Was here", modified=DAY + 7), valid(1, course=2, modified=DAY + 8)]
    assert title_of(moved) == "Was here"


def test_a_course_of_fraud_reviews_only_has_zero_records() -> None:
    result = stats([fraud(1, course=7, title="F")])
    assert set(result) == {7}
    for record in (result[7].all_time, result[7].recent):
        assert record["count_reviews"] == 0
        assert record["average_rating"] == 0.0
        assert record["sum_rating"] == 0.0
        assert record["last_review_time"] == 0
        assert record["course_title"] == "F"


def test_a_course_named_only_by_a_stale_record_exists() -> None:
    records = [valid(1, course=1, modified=DAY + 5), valid(1, course=9, modified=DAY)]
    result = stats(records)
    assert count(result, 1) == 1
    assert result[9].all_time["count_reviews"] == 0


# --- the recent window -----------------------------------------------------------------------


def test_recent_covers_days_d_minus_89_to_d() -> None:
    created = {
        "before": (D - 90) * MS_PER_DAY + MS_PER_DAY - 1,
        "first": (D - 89) * MS_PER_DAY,
        "last": (D + 1) * MS_PER_DAY - 1,
        "after": (D + 1) * MS_PER_DAY,
    }
    records = [valid(i, created=c, modified=c) for i, c in enumerate(created.values())]
    result = stats(records)[1]
    assert result.all_time["count_reviews"] == 4
    assert result.all_time["last_review_time"] == created["after"]
    assert result.recent["count_reviews"] == 2
    assert result.recent["last_review_time"] == created["last"]
    assert (result.recent["window_start_day"], result.recent["window_end_day"]) == (D - 89, D)
    assert (result.all_time["window_start_day"], result.all_time["window_end_day"]) == (None,) * 2


def test_a_course_whose_reviews_left_the_window_has_a_zero_recent_record() -> None:
    old = (D - 200) * MS_PER_DAY
    recent = stats([valid(1, created=old)])[1].recent
    assert (recent["count_reviews"], recent["average_rating"], recent["last_review_time"]) == (
        0,
        0.0,
        0,
    )


def test_the_window_follows_created_not_modified() -> None:
    rec = valid(1, created=(D - 100) * MS_PER_DAY, modified=DAY)
    assert stats([rec])[1].recent["count_reviews"] == 0


def test_pre_epoch_days_floor() -> None:
    rec = valid(1, created=-1, modified=-1)  # 1969-12-31T23:59:59.999: day -1
    assert stats([rec], as_of_day=-1)[1].recent["count_reviews"] == 1
    assert stats([rec], as_of_day=-1 + 90)[1].recent["count_reviews"] == 0


# --- dead letters ----------------------------------------------------------------------------


def with_title_bytes(rec: dict[str, Any], raw: bytes) -> bytes:
    """A framed record whose course title is `raw` (any bytes), written by hand."""
    marker = "\u2603" * 7
    value = frame({**rec, "course": {**rec["course"], "title": marker}})
    encoded = marker.encode()
    length = bytes([len(encoded) * 2])  # zig-zag varint, one byte
    assert len(raw) < 64 and length + encoded in value
    return value.replace(length + encoded, bytes([len(raw) * 2]) + raw)


GOOD = frame(review(1))
NO_REVIEW = {
    "tombstone": (None, TOMBSTONE),
    "empty": (b"", UNDECODABLE),
    "short": (b"\x00\x00\x00\x01", UNDECODABLE),
    "bad magic": (b"\x01" + GOOD[1:], UNDECODABLE),
    "unknown schema": (b"\x00" + UNKNOWN_ID.to_bytes(4, "big") + GOOD[5:], UNDECODABLE),
    "truncated": (GOOD[:-1], UNDECODABLE),
    "trailing byte": (GOOD + b"\x00", UNDECODABLE),
    "bad union branch": (GOOD[:6] + b"\x04" + GOOD[7:], UNDECODABLE),  # title: branch 2
    "NUL title": (frame(review(1, title="a\x00b")), TEXT),
    "NUL content": (frame(review(1, content="a\x00b")), TEXT),
    "rating 4.3": (frame(review(1, "4.3")), RATING),
    "rating 0.0": (frame(review(1, "0.0")), RATING),
    "rating 5.5": (frame(review(1, "5.5")), RATING),
    "rating abc": (frame(review(1, "abc")), RATING),
    "rating with space": (frame(review(1, " 4.5")), RATING),
    "year 10000": (frame(review(1, modified=253_402_300_800_000)), TIMESTAMP),
    "before year 1": (frame(review(1, created=-62_135_596_800_001)), TIMESTAMP),
}


@pytest.mark.parametrize("name", sorted(NO_REVIEW))
def test_records_that_are_no_review_count_nowhere_and_name_no_course(name: str) -> None:
    value, kind = NO_REVIEW[name]
    oracle = feed([valid(5, course=5), value])
    assert oracle.refusals == {(0, 1): kind}
    routed = oracle.verdicts[(0, 1)]
    assert routed in (VALID, FRAUD) if kind in ROUTED_KINDS else routed == DEAD
    assert set(oracle.result(D)) == {5}  # course 1 of the refused record does not exist
    assert stream_reading(value)[3] == kind, "the stream refuses it as the same kind"


def test_a_refused_edit_supersedes_nothing() -> None:
    first = valid(1, "4.0", modified=1000)
    result = stats([first, frame(review(1, "4.7", modified=2000, title="Renamed"))])
    assert result[1].all_time["sum_rating"] == 4.0
    assert result[1].title == "Kafka", "a refused record names no title either"


@pytest.mark.parametrize("schema_id", [REVIEW_ID, REORDERED_ID])
def test_invalid_utf8_is_read_as_java_reads_it_whatever_the_writer_schema(schema_id: int) -> None:
    """An encoded surrogate (three bytes) is one U+FFFD for Java, three for Python."""
    value = frame({**review(1, content="xyz", title="T"), "extra": ""}, schema_id)
    raw = value.replace(b"xyz", b"\xed\xa0\x80")
    assert raw != value
    replaced = frame({**review(1, content="\ufffd", title="T"), "extra": ""}, REVIEW_ID)
    assert feed([raw]).verdicts[(0, 0)] == feed([replaced]).verdicts[(0, 0)]
    assert feed([raw]).verdicts[(0, 0)] == stream_outcome(raw)[0]
    assert DECODER.hashed_body(DECODER.read(*DECODER.split(raw))) == replaced[5:]


def test_a_course_title_that_is_not_utf8_is_read_as_java_reads_it() -> None:
    oracle = feed([with_title_bytes(review(1), b"ab\xff")])
    assert oracle.titles[1][1] == "ab\ufffd"


@pytest.mark.parametrize(("rating", "sum_rating"), [("5", 5.0), ("4.50", 4.5), ("+1.0", 1.0)])
def test_ratings_are_read_as_numbers(rating: str, sum_rating: float) -> None:
    assert stats([valid(1, rating)])[1].all_time["sum_rating"] == sum_rating


def test_timestamps_count_from_year_1_to_year_9999() -> None:
    first, last = -62_135_596_800_000, 253_402_300_799_999
    result = stats([valid(1, created=first, modified=last)], as_of_day=last // MS_PER_DAY)
    assert result[1].all_time["last_review_time"] == first


def test_timestamps_beyond_year_9999_are_refused_whatever_the_writer_schema() -> None:
    far = 300_000 * 365 * MS_PER_DAY
    rec = {**review(1, created=far, modified=far), "extra": ""}
    for schema_id in (REVIEW_ID, REORDERED_ID):
        value = frame(rec, schema_id)
        oracle = feed([value])
        assert oracle.refusals == {(0, 0): TIMESTAMP}
        assert oracle.verdicts[(0, 0)] == stream_outcome(value)[0] != DEAD


def with_id_bytes(raw: bytes) -> bytes:
    """GOOD (review id 1, one byte 0x02) with the id written as `raw`."""
    return GOOD[:5] + raw + GOOD[6:]


@pytest.mark.parametrize(
    "raw",
    [b"\x82\x00", b"\x82" + b"\x80" * 8 + b"\x00", b"\x80" * 10 + b"\x00", b"\x80" * 10],
    ids=["2 bytes", "10 bytes", "11 bytes", "cut short"],
)
def test_non_minimal_varints_are_read_as_the_stream_reads_them(raw: bytes) -> None:
    value = with_id_bytes(raw)
    assert feed([value]).verdicts[(0, 0)] == stream_outcome(value)[0]


def test_a_body_with_non_minimal_varints_is_hashed_as_its_canonical_encoding() -> None:
    """As the original app re-encoded each record: the padded bytes' own hash would differ."""
    for n in range(1000):
        value = frame(review(1, content=f"c{n}"))
        padded = value[:5] + b"\x82\x00" + value[6:]  # id 1 in two bytes
        if is_fraud(DECODER.prefix + value[5:]) != is_fraud(DECODER.prefix + padded[5:]):
            break
    assert feed([padded]).verdicts[(0, 0)] == stream_outcome(padded)[0]
    assert feed([value]).verdicts[(0, 0)] == stream_outcome(value)[0]
    assert feed([value]).verdicts[(0, 0)] == feed([padded]).verdicts[(0, 0)]


@pytest.mark.parametrize("schema_id", [REVIEW_ID, REORDERED_ID])
def test_a_negative_union_branch_is_malformed_whatever_the_writer_schema(schema_id: int) -> None:
    """fastavro reads branch -1 as the last one; the stream dead-letters it in a body written
    with the Review schema, but accepts it with another writer schema (read by fastavro)."""
    value = frame({**review(1, content="x"), "extra": ""}, schema_id)
    negative = value.replace(b"\x02\x02x", b"\x01\x02x")  # content: branch 1 -> -1
    assert negative != value
    assert feed([negative]).verdicts[(0, 0)] == DEAD


def test_a_long_beyond_64_bits_is_malformed() -> None:
    """Avro's Java decoder and the stream wrap it silently to 64 bits; the oracle calls the
    body malformed (a long is 64 bits). No producer of ours writes one."""
    value = with_id_bytes(b"\xff" * 9 + b"\x7f")
    assert feed([value]).verdicts[(0, 0)] == DEAD


def test_adding_a_record_twice_is_an_error() -> None:
    oracle = feed([valid(1)])
    with pytest.raises(ValueError, match="twice"):
        oracle.add(0, 0, None, GOOD)


def test_a_review_on_two_partitions_is_one_review_and_a_tie_goes_to_the_greater_partition() -> None:
    """No key, another key encoding, a grown topic: versions meet by the value's id."""
    oracle = Oracle(REGISTRY.get)
    oracle.add(2, 7, None, frame(valid(1, modified=DAY + 1)))
    oracle.add(0, 90, b"\0\0\0\0\0\0\0\1", frame(valid(1, modified=DAY + 1)))
    oracle.add(1, 3, b"1", frame(valid(1)))  # older: never current
    assert set(oracle.current) == {1}
    assert (oracle.current[1].partition, oracle.current[1].offset) == (2, 7)
    oracle.add(1, 4, None, frame(valid(1, modified=DAY + 2)))
    assert (oracle.current[1].partition, oracle.current[1].offset) == (1, 4)


def test_decode_input_feeds_every_record() -> None:
    records = [(0, 0, b"1", frame(valid(1))), (1, 0, b"2", b""), (1, 1, b"3", frame(fraud(3)))]
    oracle = decode_input(records, REGISTRY.get)
    assert oracle.verdicts == {(0, 0): VALID, (1, 0): DEAD, (1, 1): FRAUD}


# --- compare ---------------------------------------------------------------------------------


def published(expected: dict[int, Any]) -> tuple[dict[int, dict], dict[int, dict]]:
    """What a faithful stream would publish, as fastavro would read it back."""
    all_time = {c: {**e.all_time, "as_of_time": 1} for c, e in expected.items()}
    recent = {
        c: {
            **e.recent,
            "last_review_time": datetime.fromtimestamp(e.recent["last_review_time"] / 1000, UTC),
            "window_start_day": date.fromordinal(
                date(1970, 1, 1).toordinal() + e.recent["window_start_day"]
            ),
            "window_end_day": date.fromordinal(date(1970, 1, 1).toordinal() + D),
        }
        for c, e in expected.items()
    }
    return all_time, recent


def test_compare_accepts_what_a_faithful_stream_publishes() -> None:
    expected = stats([valid(1), valid(2, "4.5", course=2), fraud(3, course=3)])
    all_time, recent = published(expected)
    assert compare(expected, all_time, recent, D) == []


def test_compare_reports_every_kind_of_mismatch() -> None:
    expected = stats([valid(1), valid(2, "4.5", course=2), fraud(3, course=3)])
    all_time, recent = published(expected)
    all_time[1]["count_reviews"] = 2
    all_time[2]["average_rating"] = 4.5 + 1e-6
    all_time[2]["sum_rating"] *= 1 + 1e-12  # within the tolerance
    all_time[3]["course_title"] = "other"
    del all_time[2]["count_five_stars"]
    del recent[3]
    recent[4] = dict(recent[1])
    recent[1]["window_end_day"] = D - 1
    assert compare(expected, all_time, recent, D) == [
        "long-term-stats course 1: count_reviews expected 1, actual 2",
        "long-term-stats course 2: average_rating expected 4.5, actual 4.500001",
        "long-term-stats course 2: count_five_stars missing (expected 0)",
        "long-term-stats course 3: course_title expected 'Kafka', actual 'other'",
        f"recent-stats course 1: window_end_day expected {D}, actual {D - 1}",
        "recent-stats course 3: expected, missing",
        "recent-stats course 4: present, not expected (no readable record)",
    ]


def test_compare_refuses_nan_averages() -> None:
    expected = stats([fraud(1)])
    all_time, recent = published(expected)
    all_time[1]["average_rating"] = float("nan")
    assert len(compare(expected, all_time, recent, D)) == 1


def test_compare_needs_the_expectations_of_its_day() -> None:
    expected = stats([valid(1)])
    with pytest.raises(ValueError, match="not for day"):
        compare(expected, *published(expected), D + 1)


def test_expectations_hold_the_schema_fields_but_the_emission_time() -> None:
    expected = stats([valid(1)])[1]
    assert tuple(expected.all_time) == tuple(expected.recent) == COMPARED_FIELDS
    assert "as_of_time" not in COMPARED_FIELDS and "course_title" in COMPARED_FIELDS


# --- edit kinds ------------------------------------------------------------------------------


def test_edit_kinds_classifies_each_version_against_the_current_one() -> None:
    base = review(1, "5.0", modified=DAY)
    records = [
        judged(base, False),  # new
        judged({**base, "rating": "4.0", "modified": DAY + 1}, False),  # re-rating
        judged({**base, "rating": "4.0", "modified": DAY + 2}, True),  # verdict flip
        judged({**base, "rating": "4.0", "modified": DAY + 2}, True),  # equal modified
        judged({**base, "rating": "1.0", "modified": DAY}, False),  # stale re-send
        judged({**review(1, "4.0", course=2), "modified": DAY + 3}, True),  # move
        judged({**review(1, "4.0", course=2, title="T2"), "modified": DAY + 4}, True),  # title
        judged(review(2), False),  # new
    ]
    oracle = feed(records)
    assert edit_kinds(oracle.history) == {
        "new": 2,
        "re-rating": 1,
        "verdict flip": 1,
        "move": 1,
        "equal modified": 1,
        "stale re-send": 1,
        "title change": 1,
    }
    assert tuple(edit_kinds([])) == EDIT_KINDS


def test_edit_kinds_follows_offsets_not_the_order_fed() -> None:
    records = [valid(1), valid(1, "1.0", modified=DAY + 1)]
    oracle = feed(records, order=[1, 0])
    assert edit_kinds(oracle.history)["re-rating"] == 1


# --- property tests against the stream -------------------------------------------------------

RATINGS = ["0.5", "1.0", "2.5", "3.0", "4.5", "5.0"]
DAYS = [D - 400, D - 90, D - 89, D - 30, D, D + 1]
TITLES = ["", "A", "B", "Été", "\uffff", "😀"]
records_st = st.builds(
    lambda rid, modified, day, ms, rating, course, title, content: review(
        rid,
        rating,
        modified=modified,
        created=day * MS_PER_DAY + ms,
        course=course,
        title=title,
        content=content,
    ),
    st.integers(0, 6),  # review id
    st.integers(0, 4),  # modified: few values, so ties and stale re-sends are common
    st.sampled_from(DAYS),
    st.sampled_from([0, MS_PER_DAY - 1]),
    st.sampled_from(RATINGS),
    st.integers(1, 4),
    st.sampled_from(TITLES),
    st.text(max_size=3),  # varies the bytes, so verdicts vary too (5% fraud)
)


def positions(history: list[dict[str, Any]], partitions: int) -> list[tuple[int, int]]:
    """(partition, offset) of each record produced in order, partitioned by review id."""
    next_offset = [0] * partitions
    out = []
    for rec in history:
        p = rec["id"] % partitions
        out.append((p, next_offset[p]))
        next_offset[p] += 1
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(records_st, max_size=40),
    st.integers(1, 3),
    st.randoms(use_true_random=False),
    st.sampled_from([D - 1, D, D + 89]),
)
def test_the_oracle_equals_the_streams_from_scratch_reference(
    history: list[dict[str, Any]], partitions: int, rng: random.Random, as_of_day: int
) -> None:
    places = positions(history, partitions)
    oracle = Oracle(REGISTRY.get)
    order = list(range(len(history)))
    rng.shuffle(order)  # the oracle's result must not depend on the order it is fed in
    for i in order:
        oracle.add(*places[i], None, frame(history[i]))
    stream_valid = [not STREAM_MODEL.is_fraud_body(body(rec)) for rec in history]
    refused = [classify(rec) is not None for rec in history]  # U+0000 in a text: no review
    assert [oracle.verdicts[p] for p in places] == [
        DEAD if no else VALID if ok else FRAUD for no, ok in zip(refused, stream_valid, strict=True)
    ]
    reference = compute_from_scratch(
        [
            (
                rec["id"],
                ReviewVersion(
                    rec["modified"],
                    rec["created"],
                    RATINGS_HALVES[rec["rating"]],
                    ok,
                    rec["course"]["id"],
                    offset,
                ),
                rec["course"]["title"],
            )
            for rec, (_, offset), ok, no in zip(history, places, stream_valid, refused, strict=True)
            if not no
        ],
        as_of_day,
    )
    expected = oracle.result(as_of_day)
    assert set(expected) == set(reference)
    for course, (all_time, recent) in reference.items():
        assert expected[course].all_time == {k: all_time[k] for k in COMPARED_FIELDS}
        assert expected[course].recent == {k: recent[k] for k in COMPARED_FIELDS}
    actual_all_time = {c: r[0] for c, r in reference.items()}
    actual_recent = {c: r[1] for c, r in reference.items()}
    assert compare(expected, actual_all_time, actual_recent, as_of_day) == []


RATINGS_HALVES = {r: int(float(r) * 2) for r in RATINGS}


def stream_outcome(value: bytes) -> tuple[str, tuple[int, ...] | None]:
    """What the stream makes of one udemy-reviews value: the fraud filter's route, then the
    aggregator's stage-1 checks (as `StatsAggregator.current_versions` applies them), and the
    fields it reads ((id, created, modified, course, halves), None for a refused record)."""
    return stream_reading(value)[:2]


def stream_reading(value: bytes | None) -> tuple[str, tuple[int, ...] | None, str, str | None]:
    """`stream_outcome`, the dead-letter reason ("" when none) and the validity kind."""
    codes, reasons, _ = route([value], STREAM_WRITERS.get, STREAM_MODEL, STREAM_REVIEW_SCHEMA)
    if codes[0] == ROUTED_DEAD:
        return DEAD, None, str(reasons[0]), reasons[0].kind
    routed = FRAUD if codes[0] == ROUTED_FRAUD else VALID
    batch = frame_batch([value], STREAM_WRITERS.get, STREAM_REVIEW_SCHEMA)
    longs, _, invalid = field_problems(batch.buf, batch.body_starts, batch.ends, batch.readable)
    if 0 in invalid:  # routed by its verdict, then refused by the aggregator
        return routed, None, str(invalid[0]), invalid[0].kind
    review_id, created, modified, course, halves = longs.tolist()[0]
    return routed, (review_id, created, modified, course, halves), "", None


def fastavro_accepts(value: bytes) -> bool:
    """Whether fastavro alone reads the body as one whole Review (what the stream relies on for
    a writer schema other than the Review's)."""
    writer = STREAM_WRITERS[int.from_bytes(value[1:5], "big")].parsed
    stream = io.BytesIO(value[5:])
    try:
        schemaless_reader(stream, writer, STREAM_REVIEW_SCHEMA)
    except Exception:
        return False
    return stream.tell() == len(value) - 5


def test_a_dropped_field_cut_short_is_malformed_in_the_stream_too() -> None:
    """Another writer's field the Review drops, its length past the body's end: fastavro's
    skip reads what is left without complaint; the stream refuses it as the oracle does."""
    rec = {**review(1, content="x"), "extra": "e" * 40}
    value = frame(rec, REORDERED_ID)[:-20]
    assert stream_reading(value)[0] == "dead-letter"
    assert feed([value]).verdicts[(0, 0)] == "dead-letter"


def known_divergence(value: bytes, oracle: Oracle) -> bool:
    """Where the stream is known to be wrong, for a writer schema other than the Review. It
    reads such bodies with fastavro alone, so it accepts what fastavro reads too freely: a
    union branch -1 as the last branch, varints of 11 bytes
    (`test_a_negative_union_branch_is_malformed_whatever_the_writer_schema`), and then judges
    what it read (a U+0000 in it, say). A field the Review drops cut short it refuses, as the
    oracle does."""
    if len(value) < 5 or value[:5] != b"\x00" + REORDERED_ID.to_bytes(4, "big"):
        return False
    oracle_reason = oracle.dead_reasons.get((0, 0), "")
    return oracle_reason.startswith("malformed Avro body") and fastavro_accepts(value)


STREAM_REVIEW_SCHEMA = load_schema(SCHEMAS / "review.avsc")
STREAM_WRITERS = {
    sid: writer_for(parse_schema(schema), STREAM_REVIEW_SCHEMA)
    for sid, schema in ((REVIEW_ID, REVIEW_JSON), (REORDERED_ID, REORDERED_JSON))
}
STREAM_MODEL = HashFraudModel()
BAD_RATINGS = ["5", "4.50", "4.3", "0.0", "5.5", "", "x", "-1.0", "\u0665.0"]
ratings_st = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(BAD_RATINGS))
"""None (keep the record's own rating) three times in four."""
titles_st = st.sampled_from(["Kafka", "Été", "Kafka", "a\x00b"])
mutations = st.one_of(
    st.just(("none", 0, 0)),
    st.tuples(
        st.sampled_from(["truncate", "set", "set", "insert", "append", "schema", "magic"]),
        st.integers(0, 200),
        st.integers(0, 255),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records_st,
    st.sampled_from([REVIEW_ID, REORDERED_ID]),
    ratings_st,
    titles_st,
    mutations,
)
def test_the_oracle_reads_every_value_as_the_stream_does(
    rec: dict[str, Any],
    schema_id: int,
    rating: str | None,
    title: str,
    mutation: tuple[str, int, int],
) -> None:
    rec = {**rec, "course": {**rec["course"], "title": title}, "extra": "e"}
    if rating is not None:
        rec["rating"] = rating
    value = bytearray(frame(rec, schema_id))
    how, at, byte = mutation
    at %= len(value) + 1
    if how == "truncate":
        del value[at:]
    elif how == "set" and at < len(value):
        value[at] = byte
    elif how == "insert":
        value.insert(at, byte)
    elif how == "append":
        value.append(byte)
    elif how == "schema":
        value[1:5] = UNKNOWN_ID.to_bytes(4, "big")
    elif how == "magic":
        value[0] = byte or 1
    expected_verdict, fields, _, kind = stream_reading(bytes(value))
    oracle = feed([bytes(value)])
    if known_divergence(bytes(value), oracle):
        return
    assert oracle.verdicts[(0, 0)] == expected_verdict, (bytes(value).hex(), oracle.dead_reasons)
    assert oracle.refusals.get((0, 0)) == kind, (bytes(value).hex(), oracle.dead_reasons)
    if fields is not None:
        v: Version = oracle.history[0]
        assert (v.review_id, v.created, v.modified, v.course_id, v.halves) == fields
