"""UTC day arithmetic for the recent window.

Days are ints counted from 1970-01-01 (UTC), the representation Avro's `date` logical type uses,
so window bounds go into CourseStatistic records unchanged.
"""

from datetime import date, timedelta

MS_PER_DAY = 86_400_000
RECENT_DAYS = 90
"""The recent window of as-of day D is the UTC days D-89 .. D, both included."""

_EPOCH = date(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()


def epoch_day(ms: int) -> int:
    """The UTC day of a timestamp in epoch milliseconds (floor division, so pre-1970 works too)."""
    return ms // MS_PER_DAY


def window_bounds(as_of_day: int) -> tuple[int, int]:
    """(first day, last day) of the recent window ending on `as_of_day`, both included."""
    return as_of_day - RECENT_DAYS + 1, as_of_day


def day_to_date(day: int) -> date:
    """The calendar date of an epoch day."""
    return _EPOCH + timedelta(days=day)


def date_to_day(value: date) -> int:
    """The epoch day of a date (a datetime counts as its calendar date, whatever its tzinfo)."""
    return value.toordinal() - _EPOCH_ORDINAL
