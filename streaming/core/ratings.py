"""Ratings as the pipeline carries them: strings with one decimal, "0.5" .. "5.0" in half steps.

Arithmetic uses *halves* (rating * 2, an int 1..10) so sums are exact; the string form is what
the `Review` record carries and what ingestion must produce.
"""

import math
import re
from decimal import Decimal
from numbers import Real

RATINGS: tuple[str, ...] = tuple(f"{h / 2:.1f}" for h in range(1, 11))
"""Every allowed rating string, in increasing order: RATINGS[halves - 1]."""

_HALVES: dict[str, int] = {rating: h for h, rating in enumerate(RATINGS, start=1)}
_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")

BUCKET_FIELDS: tuple[str, ...] = (
    "count_zero_star",
    "count_one_star",
    "count_two_stars",
    "count_three_stars",
    "count_four_stars",
    "count_five_stars",
)
"""CourseStatistic field of each star bucket, indexed by `star_bucket`."""


def _from_halves(halves: Decimal | float, value: object) -> str:
    if not 1 <= halves <= 10:
        raise ValueError(f"rating {value!r} is outside 0.5..5.0")
    if halves != int(halves):
        raise ValueError(f"rating {value!r} is not a multiple of 0.5")
    return RATINGS[int(halves) - 1]


def normalise_rating(value: str | int | float) -> str:
    """The canonical rating string of a JSON rating (5, 5.0, "5", "4.5" -> "5.0", ..., "4.5").

    Raises ValueError, saying why, for anything that is not a half step in 0.5..5.0: bools,
    NaN, infinities, non-numeric strings, other types. Strings are read as exact decimals, so
    "4.5000001" is rejected rather than rounded.
    """
    if isinstance(value, bool):
        raise ValueError(f"rating {value!r} is a boolean, not a number")
    if isinstance(value, str):
        if value in _HALVES:
            return value
        if not _DECIMAL.fullmatch(value):
            raise ValueError(f"rating {value!r} is not a decimal number")
        return _from_halves(Decimal(value) * 2, value)
    if isinstance(value, Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"rating {value!r} is not a finite number")
        return _from_halves(number * 2, value)
    raise ValueError(f"rating {value!r} has type {type(value).__name__}, not a number or string")


def rating_halves(rating: str) -> int:
    """Rating * 2 as an int ("4.5" -> 9): a dict lookup for canonical strings (the hot path).

    A non-canonical but valid string ("5", "4.50") is normalised first; anything else raises
    ValueError from `normalise_rating`.
    """
    try:
        return _HALVES[rating]
    except KeyError:
        return _HALVES[normalise_rating(rating)]


def star_bucket(halves: int) -> int:
    """Star bucket 0..5 of a rating given in halves: 0.5 -> 0, 1.0/1.5 -> 1, ..., 5.0 -> 5."""
    return halves // 2
