"""The validity rule and the canonical form, stream and batch side, against from-scratch references.

Bodies are written here by a small encoder of our own that can pad varints and put any bytes in
a string; the reference reads them back field by field, decodes the strings as Java does
(`java_text`, itself checked against a JVM in the integration tests), re-encodes with fastavro
and applies `validity.classify` to the decoded review. The stream's path (`frame_batch`, then
`field_problems`) and the batch's (`verdicts.judge` over the rows the sink stores) must agree
with it on every record: the canonical bytes the fraud rule hashes, and the kind of problem.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.batch.verdicts import judge
from streaming.core import java_text
from streaming.core.avro_codec import confluent_frame
from streaming.core.fraud import HashFraudModel
from streaming.core.ratings import RATINGS
from streaming.core.review_bytes import (
    CANONICAL,
    MALFORMED,
    NON_CANONICAL,
    REVIEW_LAYOUT,
    pack,
    scan_bodies,
    utf8_scan,
)
from streaming.core.review_frames import frame_batch, value_problem, writer_for
from streaming.core.validity import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    RATING,
    TEXT,
    TIMESTAMP,
    TOMBSTONE,
    UNDECODABLE,
    classify,
    field_problems,
)
from streaming.serde import local_schema

REVIEW = local_schema("review.avsc")
WRITER = writer_for(REVIEW, REVIEW)
MODEL = HashFraudModel()
LONG, STRING, OPTIONAL = 0, 1, 2


def zigzag(value: int, pad: int = 0) -> bytes:
    """The varint of a long, with `pad` extra zero groups (a non-minimal encoding)."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    for _ in range(pad):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def too_long(fields: list[Any], pads: list[int]) -> bool:
    """Whether a varint of the body runs past 10 bytes: Java's decoder refuses it."""
    longs = [
        (v if kind == LONG else 1 if v is not None else 0, pad)
        for kind, v, pad in zip(REVIEW_LAYOUT.tolist(), fields, pads, strict=True)
        if kind != STRING
    ]
    return any(len(zigzag(v, pad)) > 10 for v, pad in longs) or any(
        len(zigzag(len(v), pad)) > 10
        for kind, v, pad in zip(REVIEW_LAYOUT.tolist(), fields, pads, strict=True)
        if kind != LONG and v is not None
    )


def encode(fields: list[Any], pads: list[int]) -> bytes:
    """A Review body from its fields in layout order (strings as raw bytes, None for null)."""
    out = bytearray()
    for kind, value, pad in zip(REVIEW_LAYOUT.tolist(), fields, pads, strict=True):
        if kind == OPTIONAL:
            if value is None:
                out += zigzag(0, pad)
                continue
            out += zigzag(1, pad)
        if kind == LONG:
            out += zigzag(value, pad)
        else:
            out += zigzag(len(value), pad) + value
    return bytes(out)


def decoded(fields: list[Any]) -> dict[str, Any]:
    """The review Java reads from the fields: strings decoded with its replacement."""
    text = [
        None if v is None else java_text.decode(v) if isinstance(v, bytes) else v for v in fields
    ]
    return {
        "id": text[0],
        "title": text[1],
        "content": text[2],
        "rating": text[3],
        "created": text[4],
        "modified": text[5],
        "user": {"title": text[6], "name": text[7], "display_name": text[8]},
        "course": {"id": text[9], "title": text[10], "url": text[11]},
    }


def canonical(review: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, REVIEW, review)
    return buf.getvalue()


ODD_BYTES = st.sampled_from(
    [b"\xff", b"\xed\xa0\x80", b"\xe2\x82", b"\xc0\xaf", b"\x00", b"\xf0\x9f\x98", "é".encode()]
)
TEXT_BYTES = st.lists(
    st.one_of(st.binary(max_size=3), ODD_BYTES, st.text(max_size=4).map(str.encode)), max_size=4
).map(b"".join)
RATING_TEXT = st.one_of(
    st.sampled_from(RATINGS),
    st.sampled_from(["5", "4.50", "4.7", " 4.5", "4.5e0", "", "NaN", "0", "5.5", "0.25"]),
).map(str.encode)
TIMES = st.one_of(
    st.integers(0, 2_000_000_000_000),
    st.sampled_from(
        [MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS - 1, MAX_TIMESTAMP_MS + 1]
    ),
    st.integers(-(2**62), 2**62),
)
FIELDS = st.tuples(
    st.integers(1, 2**62),
    st.one_of(st.none(), TEXT_BYTES),
    st.one_of(st.none(), TEXT_BYTES),
    RATING_TEXT,
    TIMES,
    TIMES,
    TEXT_BYTES,
    TEXT_BYTES,
    TEXT_BYTES,
    st.integers(1, 2**62),
    TEXT_BYTES,
    TEXT_BYTES,
).map(list)
PADS = st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), min_size=12, max_size=12)


def stream_view(values: list[bytes | None]) -> tuple[list[bytes | None], list[str | None]]:
    """What the stream makes of framed values: each one's canonical body (None when it is no
    review) and the kind of its problem."""
    batch = frame_batch(values, lambda _: WRITER, REVIEW)
    _, _, invalid = field_problems(batch.buf, batch.body_starts, batch.ends, batch.readable)
    bodies, kinds = [], []
    for i in range(len(values)):
        problem = batch.problems.get(i) or invalid.get(i)
        kinds.append(None if problem is None else problem.kind)
        readable = bool(batch.readable[i])
        body = batch.buf[batch.body_starts[i] : batch.ends[i]].tobytes()
        bodies.append(body if readable else None)
    return bodies, kinds


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(FIELDS, PADS), min_size=1, max_size=8))
def test_the_stream_reads_every_record_as_java_and_the_rule_classify_it(records) -> None:
    values = [confluent_frame(1, encode(fields, pads)) for fields, pads in records]
    bodies, kinds = stream_view(values)
    for (fields, pads), body, kind in zip(records, bodies, kinds, strict=True):
        review = decoded(fields)
        if too_long(fields, pads):
            assert kind == UNDECODABLE, fields
            continue
        expected = classify(review)
        assert kind == (None if expected is None else expected.kind), (fields, kind, expected)
        if expected is None or expected.kind != TEXT:
            assert body == canonical(review), fields
        assert value_problem(
            confluent_frame(1, encode(fields, [0] * 12)), lambda _: WRITER, REVIEW
        ) == (expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(FIELDS, min_size=1, max_size=8))
def test_the_batch_judges_the_stored_rows_as_the_stream_does(records) -> None:
    """Rows as the sink stores them (what Java decoded; the sink refuses NUL and the timestamps
    outside years 1..9999, so both are left out here): verdict, halves and kind agree."""
    stored = []
    for fields in records:
        review = decoded(fields)
        if classify(review) is not None and classify(review).kind in (TEXT, TIMESTAMP):
            continue
        stored.append(review)
    if not stored:
        return
    rows = [
        (
            r["id"], r["title"], r["content"], r["rating"], r["created"], r["modified"],
            r["user"]["title"], r["user"]["name"], r["user"]["display_name"],
            r["course"]["id"], r["course"]["title"], r["course"]["url"],
        )
        for r in stored
    ]  # fmt: skip
    fraud, halves, problems = judge(rows, MODEL)
    bodies, kinds = stream_view([confluent_frame(1, canonical(r)) for r in stored])
    for i, review in enumerate(stored):
        expected = classify(review)
        assert (problems[i].kind if i in problems else None) == kinds[i]
        assert (None if expected is None else expected.kind) == kinds[i]
        if expected is None:
            assert bool(fraud[i]) == MODEL.is_fraud(review) == MODEL.is_fraud_body(bodies[i])
            assert halves[i] == RATINGS.index(f"{float(review['rating']):.1f}") + 1


@given(st.binary(max_size=12))
def test_the_utf8_scan_judges_as_the_strict_decoders(data: bytes) -> None:
    buf = np.frombuffer(data, dtype=np.uint8)
    valid, nul = utf8_scan(buf, 0, len(data))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert not valid
        return
    assert valid
    assert nul == (0 in data)


def test_scan_bodies_names_the_malformed_the_padded_the_invalid_and_the_nul() -> None:
    fields = [7, None, b"ok", b"4.5", 1, 2, b"t", b"n", b"d", 9, b"c", b"/c/"]
    good = encode(fields, [0] * 12)
    padded = encode(fields, [1] + [0] * 11)
    bad_utf8 = encode([*fields[:2], b"\xff", *fields[3:]], [0] * 12)
    with_nul = encode([*fields[:7], b"a\x00b", *fields[8:]], [0] * 12)
    bodies = [good, padded, bad_utf8, with_nul, good[:-1], good + b"\x00"]
    status, nul = scan_bodies(*pack(bodies), REVIEW_LAYOUT)
    assert status.tolist() == [
        CANONICAL,
        NON_CANONICAL,
        NON_CANONICAL,
        CANONICAL,
        MALFORMED,
        MALFORMED,
    ]
    assert nul.tolist()[:4] == [-1, -1, -1, 4]  # user.name, the fifth string


def test_tombstones_and_unreadable_values_are_their_own_kinds() -> None:
    fields = [7, None, None, b"4.5", 1, 2, b"t", b"n", b"d", 9, b"c", b"/c/"]
    values = [
        None,
        b"\x00\x00",
        b"\x01" + bytes(8),
        confluent_frame(1, b"\x02"),
        confluent_frame(9, encode(fields, [0] * 12)),
    ]
    batch = frame_batch(values, lambda sid: WRITER if sid == 1 else None, REVIEW)
    assert {i: p.kind for i, p in batch.problems.items()} == {
        0: TOMBSTONE, 1: UNDECODABLE, 2: UNDECODABLE, 3: UNDECODABLE, 4: UNDECODABLE
    }  # fmt: skip
    assert "unknown schema id 9" in batch.problems[4].reason


def test_a_rating_the_rule_refuses_names_the_reason() -> None:
    fields = [7, None, None, b"4.7", 1, 2, b"t", b"n", b"d", 9, b"c", b"/c/"]
    problem = value_problem(confluent_frame(1, encode(fields, [0] * 12)), lambda _: WRITER, REVIEW)
    assert problem is not None and problem.kind == RATING
    assert "4.7" in problem.reason and str(problem).startswith("rating: ")
