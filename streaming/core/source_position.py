"""Where a record stands in the system of record (`udemy-reviews`), carried as a header.

The current version of a review is its greatest (modified, partition, offset) in udemy-reviews:
a total order whoever wrote the versions. Versions sent with the review id as key share a
partition, so there the offset orders those with equal `modified`; versions from producers that
send no key or another key (or written before the topic grew) may sit on different partitions,
and the greater partition wins a tie. The fraud filter adds this header to every record it routes,
so the later record of the system of record wins whichever topic (valid or fraud) it reaches the
aggregator through, in whatever interleaving. 12 bytes: partition (int32) and offset (int64),
big-endian. `order` packs both into one int64 that compares as the pair does.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

HEADER = "source.position"
_POSITION = struct.Struct(">iq")


OFFSET_BITS = 43
"""`order` keeps offsets below 2**43 (8.8e12 records a partition) and partitions below 2**20."""
MAX_PARTITION = (1 << (63 - OFFSET_BITS)) - 1


def order(partition: int, offset: int) -> int:
    """(partition, offset) as one non-negative int64 that orders as the pair does."""
    if not 0 <= partition <= MAX_PARTITION or not 0 <= offset < 1 << OFFSET_BITS:
        raise ValueError(f"{HEADER} header: position ({partition}, {offset}) out of range")
    return (partition << OFFSET_BITS) | offset


def unorder(packed: int) -> tuple[int, int]:
    """The (partition, offset) of an `order` value."""
    return packed >> OFFSET_BITS, packed & ((1 << OFFSET_BITS) - 1)


def encode(partition: int, offset: int) -> bytes:
    return _POSITION.pack(partition, offset)


def decode(value: bytes | None) -> tuple[int, int]:
    """(partition, offset); ValueError when the header value is not one of ours."""
    if value is None or len(value) != _POSITION.size:
        raise ValueError(f"{HEADER} header: expected {_POSITION.size} bytes")
    partition, offset = _POSITION.unpack(value)
    if partition < 0 or offset < 0:
        raise ValueError(f"{HEADER} header: negative partition or offset")
    return partition, offset


def find(headers: Sequence[tuple[str, bytes | None]] | None) -> tuple[int, int]:
    """The position carried by a record's headers (the last one, if several)."""
    for name, value in reversed(headers or ()):
        if name == HEADER:
            return decode(value)
    raise ValueError(f"no {HEADER} header: records here come from the fraud filter")


OFFSET_LIMIT = 1 << OFFSET_BITS


def header_order(headers: Sequence[tuple[str, bytes | None]] | None) -> int:
    """The record's position as one orderable int (`order`), from its headers: the fraud
    filter's usual lone header read directly, anything else through `find`; ValueError when
    they carry none of ours."""
    if headers is not None and len(headers) == 1:
        name, value = headers[0]
        if name == HEADER and value is not None and len(value) == 12:
            partition = int.from_bytes(value[:4], "big", signed=True)
            offset = int.from_bytes(value[4:], "big", signed=True)
            if 0 <= partition <= MAX_PARTITION and 0 <= offset < OFFSET_LIMIT:
                return (partition << OFFSET_BITS) | offset
    return order(*find(headers))


def replace(
    headers: Sequence[tuple[str, bytes | None]] | None, partition: int, offset: int
) -> list[tuple[str, bytes | None]]:
    """The record's headers with its own position, any claimed one dropped."""
    own = (HEADER, encode(partition, offset))
    if not headers:
        return [own]
    return [*(h for h in headers if h[0] != HEADER), own]
