"""The compiled hash index under the aggregator's state: every sequence of inserts, lookups and
deletions (with the dense table's fill-the-hole move) agrees with a dict, also when every key
collides into a few slots."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core import hash_index as hx

_op = st.tuples(st.booleans(), st.integers(-4, 40), st.integers(-2, 3))


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=120), st.sampled_from([64, 128, 1024]))
def test_inserts_and_deletions_agree_with_a_dict(ops, capacity):
    key_a, key_b = np.zeros(64, np.int64), np.zeros(64, np.int32)
    index = np.full(capacity, hx.EMPTY, np.int32)
    rows: dict[tuple[int, int], int] = {}
    n = 0
    for add, a, b in ops:
        row = hx.find(index, key_a, key_b, a, b)
        assert row == rows.get((a, b), -1)
        if add and row < 0 and n < 44:  # stays below MAX_LOAD of the smallest index
            key_a[n], key_b[n] = a, b
            hx.insert(index, key_a, key_b, n)
            rows[(a, b)] = n
            n += 1
        elif not add and row >= 0:  # delete, then move the last row into the hole
            hx.remove(index, key_a, key_b, row)
            del rows[(a, b)]
            n -= 1
            if row != n:
                key_a[row], key_b[row] = key_a[n], key_b[n]
                hx.renumber(index, key_a, key_b, n, row)
                rows[(int(key_a[row]), int(key_b[row]))] = row
    for (a, b), row in rows.items():
        assert hx.find(index, key_a, key_b, a, b) == row
    assert (index >= 0).sum() == len(rows) == n
    rebuilt = hx.build(key_a, key_b, n, hx.capacity_for(n))
    assert all(hx.find(rebuilt, key_a, key_b, a, b) == row for (a, b), row in rows.items())


def test_capacity_and_growth():
    assert hx.capacity_for(0) == hx.MIN_CAPACITY
    assert hx.capacity_for(10_000) * hx.MAX_LOAD >= 10_000
    assert not hx.needs_growth(np.zeros(1024, np.int32), 700)
    assert hx.needs_growth(np.zeros(1024, np.int32), 717)
    column = np.arange(5)
    assert hx.grown(column, 3) is column
    grown = hx.grown(column, 6)
    assert len(grown) >= 6 and grown[:5].tolist() == [0, 1, 2, 3, 4]
