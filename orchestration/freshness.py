"""Freshness SLAs as asset checks: is each table as new as it should be?

- The stream's statistics tables: their latest update (the newest `as_of_time`, when the
  aggregator emitted the row) is no older than the newest input record minus STREAM_SLACK_S.
  Measured against the input, not the wall clock: when the sample ends and nothing new
  arrives, the tables are as fresh as they can be, and a wall-clock rule would fail them.
  No input at all passes.
- The batch models: built within BATCH_MAX_AGE_S (the nightly schedule's promise).

The decisions are pure (`stream_freshness`, `batch_freshness`); the `freshness` sensor
evaluates them every minute and the same checks can be run from the UI.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_SLACK_S = 60.0
BATCH_MAX_AGE_S = 86_400.0
STREAM_CHECK = "fresh_with_its_input"
BATCH_CHECK = "fresh_within_a_day"


@dataclass(frozen=True)
class Freshness:
    passed: bool
    description: str
    lag_s: float | None = None
    """How far behind its reference the table is (seconds; None: nothing to compare)."""


def stream_freshness(
    latest_update_s: float | None, newest_input_s: float | None, slack_s: float = STREAM_SLACK_S
) -> Freshness:
    """A stream table against the newest input record (epoch seconds each)."""
    if newest_input_s is None:
        return Freshness(True, "no input yet: nothing to be fresh with")
    if latest_update_s is None:
        return Freshness(False, "input arrived but the table has never been updated")
    lag = max(newest_input_s - latest_update_s, 0.0)
    if lag <= slack_s:
        return Freshness(True, f"updated within {lag:.0f} s of the newest input", lag)
    return Freshness(
        False,
        f"last updated {lag:.0f} s before the newest input (allowed: {slack_s:.0f} s)",
        lag,
    )


def batch_freshness(
    built_at_s: float | None, now_s: float, max_age_s: float = BATCH_MAX_AGE_S
) -> Freshness:
    """A batch model against the wall clock: built within `max_age_s`."""
    if built_at_s is None:
        return Freshness(False, "never built")
    age = max(now_s - built_at_s, 0.0)
    if age <= max_age_s:
        return Freshness(True, f"built {age / 3600:.1f} h ago", age)
    return Freshness(
        False, f"built {age / 3600:.1f} h ago (allowed: {max_age_s / 3600:.0f} h)", age
    )
