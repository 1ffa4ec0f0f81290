"""A compiled open-addressing hash index from an (int64, int64) key to a row of dense arrays.

The aggregator's state keeps one row per review in plain numpy columns (no Python object per
review); this index finds a key's row. It is `index: int32[capacity]` (capacity a power of two,
-1 for an empty slot) probed linearly from a splitmix64 hash of the key, whose keys live in the
rows themselves (`key_a[row]`, `key_b[row]`), so a slot costs 4 bytes. Deletion shifts the
probe run back (no tombstones), so a lookup never scans dead slots. Growth (a bigger index,
rebuilt from the rows) is the caller's, before a batch: `needs_growth`.

Every function is compiled with numba and called from other compiled code (the stage kernels
in `streaming.core.stage_kernels`) or, for whole arrays, from Python.
"""

from __future__ import annotations

import numba
import numpy as np

EMPTY = np.int32(-1)
MAX_LOAD = 0.7
"""Rows per slot before the index doubles: linear probing stays short below ~0.7."""
MIN_CAPACITY = 1024


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(a: int, b: int) -> np.uint64:
    """splitmix64 of the two key halves (uint64 throughout: numba turns int64/uint64 mixes into
    floats)."""
    z = np.uint64(a) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(b)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def find(index: np.ndarray, key_a: np.ndarray, key_b: np.ndarray, a: int, b: int) -> int:
    """The row of key (a, b), or -1."""
    mask = np.uint64(len(index) - 1)
    slot = _hash(a, b) & mask
    while True:
        row: int = index[slot]
        if row < 0:
            return -1
        if key_a[row] == a and key_b[row] == b:
            return row
        slot = (slot + np.uint64(1)) & mask


@numba.njit(cache=True, nogil=True)
def insert(index: np.ndarray, key_a: np.ndarray, key_b: np.ndarray, row: int) -> None:
    """Index `row` under its key (not present yet; the index has a free slot)."""
    mask = np.uint64(len(index) - 1)
    slot = _hash(key_a[row], key_b[row]) & mask
    while index[slot] >= 0:
        slot = (slot + np.uint64(1)) & mask
    index[slot] = row


@numba.njit(cache=True, nogil=True)
def _slot_of(index: np.ndarray, key_a: np.ndarray, key_b: np.ndarray, row: int) -> np.uint64:
    mask = np.uint64(len(index) - 1)
    slot = _hash(key_a[row], key_b[row]) & mask
    while index[slot] != row:
        slot = (slot + np.uint64(1)) & mask
    return slot


@numba.njit(cache=True, nogil=True)
def remove(index: np.ndarray, key_a: np.ndarray, key_b: np.ndarray, row: int) -> None:
    """Unindex `row` (indexed), shifting back the probe run after its slot."""
    mask = np.uint64(len(index) - 1)
    hole = _slot_of(index, key_a, key_b, row)
    index[hole] = EMPTY
    slot = (hole + np.uint64(1)) & mask
    while index[slot] >= 0:
        moved = index[slot]
        home = _hash(key_a[moved], key_b[moved]) & mask
        # `moved` may fill the hole when its home is not cyclically in (hole, slot]
        if (slot - home) & mask >= (slot - hole) & mask:
            index[hole] = moved
            index[slot] = EMPTY
            hole = slot
        slot = (slot + np.uint64(1)) & mask


@numba.njit(cache=True, nogil=True)
def renumber(index: np.ndarray, key_a: np.ndarray, key_b: np.ndarray, old: int, new: int) -> None:
    """The row indexed as `old` now lives at `new` (a dense table filled a hole with its last
    row); its key is already at `key_a[new]`, `key_b[new]`."""
    mask = np.uint64(len(index) - 1)
    slot = _hash(key_a[new], key_b[new]) & mask
    while index[slot] != old:
        slot = (slot + np.uint64(1)) & mask
    index[slot] = new


@numba.njit(cache=True, nogil=True)
def build(key_a: np.ndarray, key_b: np.ndarray, rows: int, capacity: int) -> np.ndarray:
    """An index of the first `rows` rows (keys distinct) with `capacity` slots."""
    index = np.full(capacity, EMPTY, dtype=np.int32)
    for row in range(rows):
        insert(index, key_a, key_b, row)
    return index


def capacity_for(rows: int) -> int:
    """The smallest power-of-two slot count that holds `rows` below MAX_LOAD."""
    capacity = MIN_CAPACITY
    while rows > capacity * MAX_LOAD:
        capacity *= 2
    return capacity


def needs_growth(index: np.ndarray, rows: int) -> bool:
    return rows > len(index) * MAX_LOAD


def grown(column: np.ndarray, rows: int) -> np.ndarray:
    """`column` with room for at least `rows` rows (its first rows kept), grown by 1/4 at a
    time so a table's spare room stays near an eighth of it on average."""
    if rows <= len(column):
        return column
    out = np.empty(max(rows, len(column) + len(column) // 4, 1024), dtype=column.dtype)
    out[: len(column)] = column
    return out
