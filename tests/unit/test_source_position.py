"""A record's position in udemy-reviews as one orderable int: the version order's tie-break."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.core import source_position
from streaming.core.source_position import (
    MAX_PARTITION,
    OFFSET_BITS,
    header_order,
    order,
    unorder,
)
from streaming.core.validity import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, timestamps_out_of_range

positions = st.tuples(st.integers(0, MAX_PARTITION), st.integers(0, (1 << OFFSET_BITS) - 1))


@given(positions, positions)
def test_packed_positions_order_as_the_pairs_do(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (order(*a) < order(*b)) == (a < b)
    assert unorder(order(*a)) == a and 0 <= order(*a) < 1 << 63


@pytest.mark.parametrize("pair", [(-1, 0), (0, -1), (MAX_PARTITION + 1, 0), (0, 1 << OFFSET_BITS)])
def test_a_position_outside_the_range_is_refused(pair: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        order(*pair)


@given(positions)
def test_the_aggregators_header_reading_is_the_same_order(pos: tuple[int, int]) -> None:
    header = (source_position.HEADER, source_position.encode(*pos))
    assert header_order([header]) == order(*pos)  # the lone header, read directly
    assert header_order([("other", b"x"), header]) == order(*pos)  # through find


def test_timestamps_outside_what_python_and_postgresql_store_are_refused() -> None:
    modified = np.array([0, MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS + 1, 5, MIN_TIMESTAMP_MS])
    created = np.array([0, 0, 0, 9_300_000_000_000_000, MIN_TIMESTAMP_MS - 1])
    assert timestamps_out_of_range(created, modified).tolist() == [False, False, True, True, True]
