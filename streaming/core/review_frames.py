"""Batches of Confluent-framed Review values made ready for byte-level work, without decoding.

A batch is packed into one buffer; the header checks and the body's structure check run compiled
over it (`review_bytes`). Values written with another (compatible) writer schema are decoded into
the Review schema and re-encoded, so every readable record ends up as canonical Review bytes —
what the fraud rule hashes and what the aggregator's field extraction reads. Each unreadable
record gets a reason for the dead-letter topic. Registry lookups stay at the edge: the caller
passes `resolve`, mapping a schema id to its writer schema (None when the registry has none); it
is called once per distinct id in a batch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from streaming.core.review_bytes import (
    BAD_MAGIC,
    REVIEW_LAYOUT,
    SHORT_FRAME,
    check_bodies,
    frame_schema_ids,
    pack,
)

HEADER = 5  # magic byte + 4-byte schema id
MALFORMED = "malformed Avro body: truncated, corrupt or with trailing bytes"


@dataclass(frozen=True)
class Writer:
    """A writer schema as the batch needs it: parsed, and whether it is the canonical Review."""

    parsed: Any
    canonical: bool


def writer_for(parsed: Any, review_schema: Any) -> Writer:
    canonical = to_parsing_canonical_form(parsed) == to_parsing_canonical_form(review_schema)
    return Writer(parsed, canonical)


@dataclass
class FramedBatch:
    """Canonical Review bodies at buf[body_starts[i]:ends[i]], readable where `readable[i]`."""

    buf: np.ndarray
    body_starts: np.ndarray
    ends: np.ndarray
    readable: np.ndarray
    reasons: dict[int, str]


def frame_batch(
    values: Sequence[bytes | None],
    resolve: Callable[[int], Writer | None],
    review_schema: Any,
) -> FramedBatch:
    n = len(values)
    reasons: dict[int, str] = {}
    tombstones = [i for i, v in enumerate(values) if v is None]
    packed = [b"" if v is None else v for v in values] if tombstones else list(values)
    buf, starts, ends = pack(packed)
    sids = frame_schema_ids(buf, starts, ends)
    readable = np.zeros(n, dtype=bool)
    reencoded = False
    for sid in np.unique(sids[sids >= 0]).tolist():
        members = np.flatnonzero(sids == sid)
        writer = resolve(sid)
        if writer is None:
            reasons.update((int(i), f"unknown schema id {sid}") for i in members)
        elif writer.canonical:
            readable[members] = True
        else:
            for i in members.tolist():
                try:
                    body = reencode(packed[i], writer.parsed, review_schema)
                except Exception as exc:  # any decode/resolution failure is the record's fault
                    reasons[i] = f"cannot read with writer schema {sid} as Review: {exc}"
                    continue
                packed[i] = bytes(HEADER) + body
                readable[i] = reencoded = True
    for i in np.flatnonzero(sids == SHORT_FRAME).tolist():
        reasons[i] = (
            f"wire format: {ends[i] - starts[i]} bytes, shorter than the 5-byte Confluent header"
        )
    for i in np.flatnonzero(sids == BAD_MAGIC).tolist():
        reasons[i] = f"wire format: magic byte {buf[starts[i]]}, expected 0"
    for i in tombstones:
        reasons[i] = "null value (tombstone): a review topic carries no deletes"
    if reencoded:
        buf, starts, ends = pack(packed)
    body_starts = np.minimum(starts + HEADER, ends)
    well_formed = check_bodies(buf, body_starts, ends, REVIEW_LAYOUT)
    for i in np.flatnonzero(readable & ~well_formed).tolist():
        reasons[i] = MALFORMED
    return FramedBatch(buf, body_starts, ends, readable & well_formed, reasons)


def reencode(value: bytes, writer: Any, review_schema: Any) -> bytes:
    """Decode a framed value with its writer schema into the Review schema, encode canonically."""
    bio = io.BytesIO(value[HEADER:])
    record: dict[str, Any] = schemaless_reader(bio, writer, review_schema)
    if bio.tell() != len(value) - HEADER:
        raise ValueError("trailing bytes after the Avro body")
    out = io.BytesIO()
    schemaless_writer(out, review_schema, record)
    return out.getvalue()
