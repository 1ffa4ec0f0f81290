"""The validity rule: which records of `udemy-reviews` are reviews at all, for stream and batch.

Any producer may write to the topic, so some records cannot be counted. A record is *invalid*
when it is one of the kinds below; an invalid record is never counted, never becomes a review's
current version (the version before it stays current) and never names a course. Everything else
is a valid version, judged by the fraud rule. The stream refuses an invalid record to its
dead-letter topic with the kind in the `dlq.kind` header; the batch classifies every row of the
sink's `reviews` table into `review_verdicts` with the same compiled checks
(`review_bytes.scan_bodies`, `field_problems` here), and the reconciliation compares both sides'
refusals per kind. The rule is here once; SQL never re-types it. `classify` states it over one
decoded review: the plain reading the compiled paths are property-tested against.

Kinds:
- `undecodable`: not one Review in the Confluent wire format readable with its writer schema
  (short or wrong header, unknown schema id, a body that is not one whole record);
- `tombstone`: a null value (a review topic carries no deletes);
- `text`: U+0000 in a text field (PostgreSQL text cannot store it, so no sink could);
- `rating`: not one of the ten half steps 0.5 .. 5.0 (as a decimal: "5" and "4.50" are valid);
- `timestamp`: `created` or `modified` outside years 1 .. 9999 (what both Python and PostgreSQL
  store).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.core.ratings import normalise_rating, rating_halves
from streaming.core.review_bytes import Longs, Spans, extract_fields

UNDECODABLE, TOMBSTONE, TEXT, RATING, TIMESTAMP = (
    "undecodable",
    "tombstone",
    "text",
    "rating",
    "timestamp",
)
KINDS: tuple[str, ...] = (UNDECODABLE, TOMBSTONE, TEXT, RATING, TIMESTAMP)
"""Every kind of invalid record, in the order the rule checks them."""

MIN_TIMESTAMP_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z: the first instant Python's datetime (the read API) holds."""
MAX_TIMESTAMP_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last instant Python's datetime (the read API) holds."""

NUL_REASON = "contains U+0000 (NUL), which PostgreSQL text cannot store"
TOMBSTONE_REASON = "null value (tombstone): a review topic carries no deletes"
TIMESTAMP_REASON = (
    "created or modified outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z, what both "
    "Python and PostgreSQL store"
)
TEXT_FIELDS: tuple[tuple[str, ...], ...] = (
    ("title",),
    ("content",),
    ("rating",),
    ("user", "title"),
    ("user", "name"),
    ("user", "display_name"),
    ("course", "title"),
    ("course", "url"),
)
"""The Review's string fields, in the schema's order (the order `text` problems are named in)."""


@dataclass(frozen=True)
class Problem:
    """Why a record is invalid: its kind (one of KINDS) and a reason a person can act on."""

    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


def text_problem(field: str) -> Problem:
    return Problem(TEXT, f"{field} {NUL_REASON}")


def rating_problem(rating: str) -> Problem | None:
    """None for a rating among the ten half steps (spelled as any exact decimal)."""
    try:
        normalise_rating(rating)
    except ValueError as exc:
        return Problem(RATING, str(exc))
    return None


def timestamps_out_of_range(created: np.ndarray, modified: np.ndarray) -> np.ndarray:
    """Where either timestamp (epoch ms) lies outside years 1 .. 9999."""
    low, high = MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS
    return (modified < low) | (modified > high) | (created < low) | (created > high)


def timestamp_problem(created: int, modified: int) -> Problem | None:
    if timestamps_out_of_range(np.array([created]), np.array([modified]))[0]:
        return Problem(TIMESTAMP, TIMESTAMP_REASON)
    return None


def classify(review: Mapping[str, Any]) -> Problem | None:
    """The rule on one decoded Review, plainly (the reference of the property tests): None
    when valid.

    Strings are as decoded (a record's invalid UTF-8 is already U+FFFD, as the original Java
    app and Kafka Connect read it); a decoded record is never `undecodable` or a `tombstone`.
    """
    for path in TEXT_FIELDS:
        value: Any = review
        for name in path:
            value = value[name]
        if value is not None and "\x00" in value:
            return text_problem(".".join(path))
    return rating_problem(review["rating"]) or timestamp_problem(
        review["created"], review["modified"]
    )


def field_problems(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, readable: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[int, Problem]]:
    """The rule's field checks over a batch of canonical Review bodies (the stream's aggregator
    and the batch's verdicts step alike): `review_bytes.extract_fields`' (longs, spans) with
    every valid rating's halves filled in (columns `review_bytes.Longs`, `Spans`), and the
    problem of each readable body that has one.

    Ratings spelled "D.0"/"D.5" are read compiled; the rare other spelling goes through
    `rating_problem` here, in Python.
    """
    longs, spans, _ = extract_fields(buf, starts, ends)
    problems: dict[int, Problem] = {}
    raw = None
    for i in np.flatnonzero(readable & (longs[:, Longs.HALVES] < 0)).tolist():
        raw = buf.tobytes() if raw is None else raw
        rating = raw[spans[i, Spans.RATING_START] : spans[i, Spans.RATING_END]].decode("utf-8")
        problem = rating_problem(rating)
        if problem is None:
            longs[i, Longs.HALVES] = rating_halves(rating)
        else:
            problems[i] = problem
    created, modified = longs[:, Longs.CREATED], longs[:, Longs.MODIFIED]
    for i in np.flatnonzero(readable & timestamps_out_of_range(created, modified)).tolist():
        problems.setdefault(i, Problem(TIMESTAMP, TIMESTAMP_REASON))
    return longs, spans, problems
