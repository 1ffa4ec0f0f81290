"""Udemy review JSON <-> `Review` record dict (fastavro-ready), with user-facing rejections.

One mapping serves `POST /reviews` validation, the backfill and the sample generator, so a review
is accepted or refused the same way whichever path it takes. Values are kept as given: an empty
title stays "", a missing or null one becomes None. The original Java client filled `title` from
`content`; here `title` comes from `title`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from time import gmtime
from typing import Any

from streaming.core.ratings import RATINGS, normalise_rating
from streaming.core.validity import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, NUL_REASON

REVIEW_CLASS = "course_review"
USER_CLASS = "user"
COURSE_CLASS = "course"
USER_FIELDS: tuple[str, ...] = ("title", "name", "display_name")
LONG_MAX = 2**63 - 1
NUL = "\x00"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = _EPOCH.date()
_MS = timedelta(milliseconds=1)
_MS_PER_DAY = 86_400_000
_MISSING = object()
_ISO_SECONDS = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}".format
_CANONICAL_RATINGS: dict[object, str] = {
    **{float(rating): rating for rating in RATINGS},
    **{rating: rating for rating in RATINGS},
}
"""Ratings as Udemy sends them (4.5, 5.0, and ints, which hash like floats) -> canonical form."""


class ReviewMappingError(ValueError):
    """A JSON review that cannot become a `Review`: `path` names the field, `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages read by API users."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _object(value: object, path: str) -> Mapping[str, Any]:
    if value is _MISSING:
        raise ReviewMappingError(path, "missing")
    if not isinstance(value, Mapping):
        raise ReviewMappingError(path, f"expected an object, got {_json_type(value)}")
    return value


def _check_class(obj: Mapping[str, Any], path: str, expected: str) -> None:
    """`_class`, when present, must name the right resource (catches a course posted as review)."""
    value = obj.get("_class", expected)
    if value != expected:
        prefix = f"{path}._class" if path else "_class"
        raise ReviewMappingError(prefix, f"expected {expected!r}, got {value!r}")


def _id(value: object, path: str) -> int:
    if value is _MISSING:
        raise ReviewMappingError(path, "missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReviewMappingError(path, f"expected an integer, got {_json_type(value)}")
    if not 1 <= value <= LONG_MAX:
        raise ReviewMappingError(path, f"{value} is not a positive 64-bit integer")
    return value


def _string(value: object, path: str) -> str:
    if value is _MISSING:
        raise ReviewMappingError(path, "missing")
    if not isinstance(value, str):
        raise ReviewMappingError(path, f"expected a string, got {_json_type(value)}")
    if NUL in value:
        raise ReviewMappingError(path, NUL_REASON)
    return value


def _optional_string(value: object, path: str) -> str | None:
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, str):
        raise ReviewMappingError(path, f"expected a string or null, got {_json_type(value)}")
    if NUL in value:
        raise ReviewMappingError(path, NUL_REASON)
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rating(value: object) -> str:
    if value is _MISSING:
        raise ReviewMappingError("rating", "missing")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ReviewMappingError("rating", f"expected a number, got {_json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ReviewMappingError("rating", f"{value} is not a finite number")
    canonical = _CANONICAL_RATINGS.get(value)
    if canonical is not None:
        return canonical
    try:
        return normalise_rating(value)
    except (ValueError, OverflowError):
        pass
    if isinstance(value, str):
        if not _is_number(value):
            raise ReviewMappingError("rating", f'"{value}" is not a number')
        value = f'"{value}"'
    raise ReviewMappingError("rating", f"{value} is not a half step between 0.5 and 5.0")


@lru_cache(maxsize=16_384)
def _day_ms(day: str) -> int:
    return (date.fromisoformat(day) - _EPOCH_DATE).days * _MS_PER_DAY


@lru_cache(maxsize=86_400)
def _time_of_day_ms(hms: str) -> int:
    clock = time.fromisoformat(hms)
    return ((clock.hour * 60 + clock.minute) * 60 + clock.second) * 1000


def parse_timestamp(value: object, path: str) -> int:
    """Epoch milliseconds of an ISO-8601 timestamp with a UTC offset ("Z", "+02:00").

    Fractional seconds are optional; digits beyond milliseconds are dropped (floored). Udemy's
    own form "2017-03-30T20:13:54Z" takes a cached fast path: the backfill maps millions.
    """
    if value is _MISSING:
        raise ReviewMappingError(path, "missing")
    if not isinstance(value, str):
        raise ReviewMappingError(path, f"expected an ISO-8601 string, got {_json_type(value)}")
    if len(value) == 20 and value[10] == "T" and value[13] == value[16] == ":" and value[19] == "Z":
        try:
            return _day_ms(value[:10]) + _time_of_day_ms(value[11:19])
        except ValueError:
            pass  # the general parser below words the error
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ReviewMappingError(
            path, f'"{value}" is not an ISO-8601 timestamp such as "2017-03-30T20:13:54Z"'
        ) from None
    if parsed.tzinfo is None:
        raise ReviewMappingError(path, f'"{value}" has no UTC offset (add "Z" or "+00:00")')
    ms = (parsed - _EPOCH) // _MS
    if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        # an offset can push a valid local time past year 9999 or before year 1 in UTC, where
        # the statistics built from it could no longer be served
        raise ReviewMappingError(
            path, f'"{value}" is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z in UTC'
        )
    return ms


def format_timestamp(ms: int) -> str:
    """ISO-8601 UTC with "Z", as Udemy writes it; milliseconds only when not zero."""
    seconds, millis = divmod(ms, 1000)
    text = _ISO_SECONDS(*gmtime(seconds)[:6])
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def json_to_review(item: object) -> dict[str, Any]:
    """The `Review` record of one Udemy result item; raises ReviewMappingError saying why not.

    Fields beyond the record (`user_modified`, `_class`, ...) are ignored; `_class` values, when
    present, must match. A review whose `modified` precedes its `created` is refused: the
    pipeline orders versions by `modified`, so such a version would sort before its own creation.
    """
    review = _object(item, "review")
    _check_class(review, "", REVIEW_CLASS)
    mapped: dict[str, Any] = {
        "id": _id(review.get("id", _MISSING), "id"),
        "title": _optional_string(review.get("title", _MISSING), "title"),
        "content": _optional_string(review.get("content", _MISSING), "content"),
        "rating": _rating(review.get("rating", _MISSING)),
        "created": parse_timestamp(review.get("created", _MISSING), "created"),
        "modified": parse_timestamp(review.get("modified", _MISSING), "modified"),
    }
    if mapped["modified"] < mapped["created"]:
        raise ReviewMappingError(
            "modified", f'"{review["modified"]}" is before created "{review["created"]}"'
        )
    user = _object(review.get("user", _MISSING), "user")
    _check_class(user, "user", USER_CLASS)
    mapped["user"] = {
        name: _string(user.get(name, _MISSING), f"user.{name}") for name in USER_FIELDS
    }
    course = _object(review.get("course", _MISSING), "course")
    _check_class(course, "course", COURSE_CLASS)
    mapped["course"] = {
        "id": _id(course.get("id", _MISSING), "course.id"),
        "title": _string(course.get("title", _MISSING), "course.title"),
        "url": _string(course.get("url", _MISSING), "course.url"),
    }
    return mapped


def review_to_json(review: Mapping[str, Any]) -> dict[str, Any]:
    """The Udemy result item of a `Review` dict: the inverse of `json_to_review`.

    The rating becomes a JSON number with one decimal (4.5, 5.0) as Udemy sends it.
    """
    user = review["user"]
    course = review["course"]
    return {
        "_class": REVIEW_CLASS,
        "id": review["id"],
        "title": review["title"],
        "content": review["content"],
        "rating": float(review["rating"]),
        "created": format_timestamp(review["created"]),
        "modified": format_timestamp(review["modified"]),
        "user": {
            "_class": USER_CLASS,
            "title": user["title"],
            "name": user["name"],
            "display_name": user["display_name"],
        },
        "course": {
            "_class": COURSE_CLASS,
            "id": course["id"],
            "title": course["title"],
            "url": course["url"],
        },
    }
