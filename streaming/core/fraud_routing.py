"""The fraud filter's transform: Confluent-framed Review values in, a route per record out.

`review_frames.frame_batch` checks and canonicalises the batch; the model judges the canonical
bodies of the whole batch at once. Records that are no review are DEAD, with their
`validity.Problem` by index. Each readable record's review id (its value's `id`) comes back
too: the routed copy is keyed by it, so every version of a review meets on one partition
downstream whatever key it arrived with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streaming.core.fraud import FraudModel
from streaming.core.review_bytes import review_ids
from streaming.core.review_frames import Writer, frame_batch
from streaming.core.validity import Problem

VALID, FRAUD, DEAD = 0, 1, 2


def route(
    values: Sequence[bytes | None],
    resolve: Callable[[int], Writer | None],
    model: FraudModel,
    review_schema: Any,
) -> tuple[np.ndarray, dict[int, Problem], np.ndarray]:
    """Route each value: VALID, FRAUD or DEAD (with its problem, by index); and each readable
    value's review id (0 for DEAD ones)."""
    if not values:
        return np.zeros(0, dtype=np.int8), {}, np.zeros(0, dtype=np.int64)
    batch = frame_batch(values, resolve, review_schema)
    fraud = model.is_fraud_batch(batch.buf, batch.body_starts, batch.ends)
    codes = np.where(batch.readable, np.where(fraud, FRAUD, VALID), DEAD).astype(np.int8)
    ids = review_ids(batch.buf, batch.body_starts, batch.ends, batch.readable)
    return codes, batch.problems, ids
