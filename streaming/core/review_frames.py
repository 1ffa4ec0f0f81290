"""Batches of Confluent-framed Review values made ready for byte-level work, without decoding.

A batch is packed into one buffer; the header checks and the body's scan (structure, minimal
varints, UTF-8, NUL) run compiled over it (`review_bytes`). Every readable record ends up as
the canonical encoding of its *decoded* value, as the original Java app re-encoded it before
hashing: nearly every body already is, and is left as it came; one with another (compatible)
writer schema, a varint longer than needed or invalid UTF-8 is decoded into the Review schema
(invalid UTF-8 replaced with U+FFFD exactly as Java, and so Kafka Connect, decodes it:
`java_text`) and re-encoded. That is what the fraud rule hashes and the aggregator's field
extraction reads. Each record that is no review gets a `validity.Problem` for the dead-letter
topic: undecodable, a tombstone, or U+0000 in a text field. Registry lookups stay at the edge:
the caller passes `resolve`, mapping a schema id to its writer schema (None when the registry
has none); it is called once per distinct id in a batch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from streaming.core import java_text
from streaming.core.review_bytes import (
    BAD_MAGIC,
    MALFORMED,
    NON_CANONICAL,
    REVIEW_LAYOUT,
    SHORT_FRAME,
    frame_schema_ids,
    pack,
    scan_bodies,
)
from streaming.core.validity import (
    TEXT_FIELDS,
    TOMBSTONE,
    TOMBSTONE_REASON,
    UNDECODABLE,
    Problem,
    field_problems,
    text_problem,
)

HEADER = 5  # magic byte + 4-byte schema id
MALFORMED_REASON = "malformed Avro body: truncated, corrupt or with trailing bytes"


@dataclass(frozen=True)
class Writer:
    """A writer schema as the batch needs it: parsed, whether it is the canonical Review, and
    both it and the Review schema `_plain` (every string read as bytes, the same binary
    encoding, so a record decodes whatever its UTF-8 and its strings are decoded as Java does)."""

    parsed: Any
    canonical: bool
    as_bytes: Any
    review_as_bytes: Any


def writer_for(parsed: Any, review_schema: Any) -> Writer:
    canonical = to_parsing_canonical_form(parsed) == to_parsing_canonical_form(review_schema)
    review_as_bytes = parse_schema(_plain(review_schema))
    as_bytes = review_as_bytes if canonical else parse_schema(_plain(parsed))
    return Writer(parsed, canonical, as_bytes, review_as_bytes)


def _plain(schema: Any) -> Any:
    """`schema` (parsed or JSON) read as Java's converters read it for us: "string" as "bytes"
    (decoded afterwards, Java's way), timestamps as the plain longs they are (a datetime holds
    years 1 .. 9999 only; the validity rule judges the value, not the reader); fastavro's
    bookkeeping keys dropped so the result parses afresh."""
    if schema == "string":
        return "bytes"
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    if isinstance(schema, dict):
        return {
            k: _plain(v) if k in ("type", "fields", "items", "values") else v
            for k, v in schema.items()
            if not k.startswith("__") and k != "logicalType"
        }
    return schema


@dataclass
class FramedBatch:
    """Canonical Review bodies at buf[body_starts[i]:ends[i]], readable where `readable[i]`;
    the problem of every other record by index."""

    buf: np.ndarray
    body_starts: np.ndarray
    ends: np.ndarray
    readable: np.ndarray
    problems: dict[int, Problem]


def frame_batch(
    values: Sequence[bytes | None],
    resolve: Callable[[int], Writer | None],
    review_schema: Any,
) -> FramedBatch:
    n = len(values)
    problems: dict[int, Problem] = {}
    # a tombstone is rare: one C-speed membership test spares the batch a Python pass
    tombstones = [i for i, v in enumerate(values) if v is None] if None in values else []
    packed = (
        [b"" if v is None else v for v in values]
        if tombstones
        else cast("list[bytes]", list(values))  # no None in values
    )
    buf, starts, ends = pack(packed)
    sids = frame_schema_ids(buf, starts, ends)
    readable = np.zeros(n, dtype=bool)
    writers: dict[int, Writer] = {}
    for sid in np.unique(sids[sids >= 0]).tolist():
        members = np.flatnonzero(sids == sid)
        writer = resolve(sid)
        if writer is None:
            problems.update(
                (int(i), Problem(UNDECODABLE, f"unknown schema id {sid}")) for i in members
            )
            continue
        writers[sid] = writer
        readable[members] = True
        if not writer.canonical:
            _canonicalise(packed, members.tolist(), sid, writer, review_schema, readable, problems)
    for i in np.flatnonzero(sids == SHORT_FRAME).tolist():
        problems[i] = Problem(
            UNDECODABLE,
            f"wire format: {ends[i] - starts[i]} bytes, shorter than the 5-byte Confluent header",
        )
    for i in np.flatnonzero(sids == BAD_MAGIC).tolist():
        problems[i] = Problem(UNDECODABLE, f"wire format: magic byte {buf[starts[i]]}, expected 0")
    for i in tombstones:
        problems[i] = Problem(TOMBSTONE, TOMBSTONE_REASON)
    if writers and any(not w.canonical for w in writers.values()):
        buf, starts, ends = pack(packed)
    body_starts = np.minimum(starts + HEADER, ends)
    status, nul = scan_bodies(buf, body_starts, ends, REVIEW_LAYOUT)
    redo = np.flatnonzero(readable & (status == NON_CANONICAL)).tolist()
    if redo:  # rare: Java re-encodes these differently from their bytes
        for i in redo:
            sid = int(sids[i])
            _canonicalise(packed, [i], sid, writers[sid], review_schema, readable, problems)
        buf, starts, ends = pack(packed)
        body_starts = np.minimum(starts + HEADER, ends)
        status, nul = scan_bodies(buf, body_starts, ends, REVIEW_LAYOUT)
    for i in np.flatnonzero(readable & (status == MALFORMED)).tolist():
        problems[i] = Problem(UNDECODABLE, MALFORMED_REASON)
        readable[i] = False
    for i in np.flatnonzero(readable & (nul >= 0)).tolist():
        problems[i] = text_problem(".".join(TEXT_FIELDS[nul[i]]))
        readable[i] = False
    return FramedBatch(buf, body_starts, ends, readable, problems)


def _canonicalise(
    packed: list[bytes],
    members: list[int],
    sid: int,
    writer: Writer,
    review_schema: Any,
    readable: np.ndarray,
    problems: dict[int, Problem],
) -> None:
    """Replace each member's value by its canonical re-encoding, or mark it undecodable."""
    for i in members:
        try:
            body = reencode(packed[i], writer, review_schema)
        except Exception as exc:  # any decode/resolution failure is the record's fault
            problems[i] = Problem(
                UNDECODABLE, f"cannot read with writer schema {sid} as Review: {exc}"
            )
            readable[i] = False
            continue
        packed[i] = bytes(HEADER) + body


class _WholeReads(io.BytesIO):
    """A body whose reads are all or nothing: fastavro skips a field the Review drops with a
    plain read, which a body cut short answers with fewer bytes; Java's decoder (and ours)
    calls that malformed."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) < size:
            raise EOFError(f"{size} bytes wanted at byte {self.tell() - len(data)}, body cut short")
        return data


def reencode(value: bytes, writer: Writer, review_schema: Any) -> bytes:
    """Decode a framed value with its writer schema into the Review schema, strings as Java
    decodes them (invalid UTF-8 replaced with U+FFFD), and encode it canonically."""
    bio = _WholeReads(value[HEADER:])
    # a Review-shaped schema (a record) decodes to a dict
    record = cast("dict[str, Any]", schemaless_reader(bio, writer.as_bytes, writer.review_as_bytes))
    if bio.tell() != len(value) - HEADER:
        raise ValueError("trailing bytes after the Avro body")
    out = io.BytesIO()
    schemaless_writer(out, review_schema, _decoded(record))
    return out.getvalue()


def _decoded(value: Any) -> Any:
    """Every bytes value of a decoded record as text, as Java decodes it (`java_text`: invalid
    UTF-8 replaced with U+FFFD; the Review schema has no bytes field, so every bytes value here
    was a string)."""
    if isinstance(value, bytes):
        return java_text.decode(value)
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    return value


def value_problem(
    value: bytes | None, resolve: Callable[[int], Writer | None], review_schema: Any
) -> Problem | None:
    """The validity rule on one framed value, whole (what the stream's two stages check between
    them): None when it is a review. For a record found elsewhere, such as a sink's dead
    letter."""
    batch = frame_batch([value], resolve, review_schema)
    if 0 in batch.problems:
        return batch.problems[0]
    _, _, problems = field_problems(batch.buf, batch.body_starts, batch.ends, batch.readable)
    return problems.get(0)
