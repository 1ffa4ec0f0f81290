"""The compiled Review encoder the batch verdicts use: the same bytes as fastavro, or no verdict
agrees with the fraud filter's."""

import io
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core.review_bytes import encode_reviews
from streaming.serde import local_schema

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=300)  # past 63 UTF-8 bytes the length takes several varint bytes
ROWS = st.tuples(
    LONGS,
    st.none() | TEXT,
    st.none() | TEXT,
    TEXT,
    LONGS,
    LONGS,
    TEXT,
    TEXT,
    TEXT,
    LONGS,
    TEXT,
    TEXT,
)


def _fastavro(row: tuple[Any, ...]) -> bytes:
    rid, title, content, rating, created, modified, u_title, u_name, u_display, cid, ctitle, url = (
        row
    )
    buf = io.BytesIO()
    schemaless_writer(
        buf,
        local_schema("review.avsc"),
        {
            "id": rid,
            "title": title,
            "content": content,
            "rating": rating,
            "created": created,
            "modified": modified,
            "user": {"title": u_title, "name": u_name, "display_name": u_display},
            "course": {"id": cid, "title": ctitle, "url": url},
        },
    )
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.lists(ROWS, max_size=8))
def test_bodies_equal_fastavro(rows: list[tuple[Any, ...]]) -> None:
    buf, starts, ends = encode_reviews(rows)
    assert [bytes(buf[s:e]) for s, e in zip(starts, ends, strict=True)] == [
        _fastavro(r) for r in rows
    ]
    assert starts.tolist() == [0, *ends.tolist()][: len(rows)], "back to back, as `pack` packs"


def test_a_missing_required_string_or_field_is_refused() -> None:
    row = (1, None, None, "5.0", 0, 0, "u", "n", "d", 7, "course", "/c/")
    with pytest.raises(ValueError, match=r"field 3 .* required string"):
        encode_reviews([(*row[:3], None, *row[4:])])
    with pytest.raises(ValueError, match="12 fields, not 11"):
        encode_reviews([row[:11]])


def _as_bytes(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(v.encode() if isinstance(v, str) else v for v in row)


@settings(max_examples=100, deadline=None)
@given(st.lists(ROWS, min_size=1, max_size=8))
def test_strings_given_as_utf8_bytes_encode_the_same(rows: list[tuple[Any, ...]]) -> None:
    """What the batch's verdicts step hands over: the driver's undecoded text."""
    want, got = encode_reviews(rows), encode_reviews([_as_bytes(r) for r in rows])
    assert all((a == b).all() for a, b in zip(want, got, strict=True))


def test_a_missing_required_string_given_as_bytes_is_refused() -> None:
    row = _as_bytes((1, None, None, "5.0", 0, 0, "u", "n", "d", 7, "course", "/c/"))
    with pytest.raises(ValueError, match=r"field 6 .* required string"):
        encode_reviews([row, (*row[:6], None, *row[7:])])
