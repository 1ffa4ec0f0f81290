"""The fraud filter's transform, pure: Confluent-framed Review values in, a route per record out.

Values written with the canonical Review schema are not decoded: their Avro body is checked for
structure and hashed as it is, in one compiled pass over the batch. Values written with another
(compatible) schema are decoded into the Review schema and re-encoded, so the verdict is the one
the canonical bytes get. Anything unreadable gets a reason and goes to the dead-letter topic.
The registry lookups happen at the edge: the caller passes the writer schemas it resolved.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from streaming.core.fraud import FraudModel
from streaming.core.review_bytes import REVIEW_LAYOUT, check_bodies, pack

VALID, FRAUD, DEAD = 0, 1, 2
HEADER = 5  # magic byte + 4-byte schema id
_HOLE = b"\x00" * HEADER  # stands in for the header of a re-encoded body


@dataclass(frozen=True)
class Writer:
    """A writer schema as the transform needs it: parsed, and whether it is the canonical Review."""

    parsed: Any
    canonical: bool


def writer_for(parsed: Any, review_schema: Any) -> Writer:
    canonical = to_parsing_canonical_form(parsed) == to_parsing_canonical_form(review_schema)
    return Writer(parsed, canonical)


def schema_ids(values: Sequence[bytes | None]) -> set[int]:
    """Schema ids named by well-framed values: what the edge must resolve before `route`."""
    ids: set[int] = set()
    last = b""
    for v in values:
        if v is not None and len(v) >= HEADER and v[0] == 0:
            head = v[1:HEADER]
            if head != last:
                ids.add(int.from_bytes(head, "big"))
                last = head
    return ids


def route(
    values: Sequence[bytes | None],
    writers: Mapping[int, Writer | None],
    model: FraudModel,
    review_schema: Any,
) -> tuple[np.ndarray, dict[int, str]]:
    """Route each value: VALID, FRAUD or DEAD (with the reason, by index).

    `writers` maps every schema id in the batch to its writer schema, or None when the registry
    does not know the id.
    """
    n = len(values)
    codes = np.full(n, DEAD, dtype=np.int8)
    reasons: dict[int, str] = {}
    framed: list[bytes] = []  # header + canonical body, for each readable record
    index: list[int] = []
    last_head, last_writer = b"", None
    for i, v in enumerate(values):
        if v is None:
            reasons[i] = "null value (tombstone): a review topic carries no deletes"
            continue
        if len(v) < HEADER:
            reasons[i] = f"wire format: {len(v)} bytes, shorter than the 5-byte Confluent header"
            continue
        if v[0] != 0:
            reasons[i] = f"wire format: magic byte {v[0]}, expected 0"
            continue
        head = v[1:HEADER]
        if head != last_head:
            last_head, last_writer = head, writers.get(int.from_bytes(head, "big"))
        if last_writer is None:
            reasons[i] = f"unknown schema id {int.from_bytes(head, 'big')}"
            last_head = b""
            continue
        if last_writer.canonical:
            framed.append(v)
        else:
            try:
                framed.append(_HOLE + reencode(v, last_writer.parsed, review_schema))
            except Exception as exc:  # any decode/resolution failure is the record's fault
                sid = int.from_bytes(head, "big")
                reasons[i] = f"cannot read with writer schema {sid} as Review: {exc}"
                continue
        index.append(i)
    if framed:
        buf, starts, ends = pack(framed)
        starts += HEADER
        ok = check_bodies(buf, starts, ends, REVIEW_LAYOUT)
        fraud = model.is_fraud_batch(buf, starts, ends)
        idx = np.asarray(index)
        codes[idx] = np.where(ok, np.where(fraud, FRAUD, VALID), DEAD)
        for j in np.flatnonzero(~ok):
            reasons[index[j]] = "malformed Avro body: truncated, corrupt or with trailing bytes"
    return codes, reasons


def reencode(value: bytes, writer: Any, review_schema: Any) -> bytes:
    """Decode with the writer schema into the Review schema, then encode canonically."""
    bio = io.BytesIO(value[HEADER:])
    record: dict[str, Any] = schemaless_reader(bio, writer, review_schema)
    if bio.tell() != len(value) - HEADER:
        raise ValueError("trailing bytes after the Avro body")
    out = io.BytesIO()
    schemaless_writer(out, review_schema, record)
    return out.getvalue()
