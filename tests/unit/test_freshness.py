"""Freshness SLAs: the stream's tables against their input, the batch models against a day."""

from __future__ import annotations

from orchestration.checks import freshness_checks
from orchestration.freshness import (
    BATCH_CHECK,
    STREAM_CHECK,
    batch_freshness,
    stream_freshness,
)

T = 1_800_000_000.0


def test_no_input_is_fresh_and_a_table_never_written_after_input_is_not() -> None:
    assert stream_freshness(None, None).passed
    assert stream_freshness(T - 9_999, None).passed  # the sample ended long ago: still fresh
    assert not stream_freshness(None, T).passed


def test_the_stream_may_trail_its_input_by_the_slack() -> None:
    assert stream_freshness(T - 60, T).passed
    late = stream_freshness(T - 61, T)
    assert not late.passed and late.lag_s == 61 and "allowed: 60 s" in late.description
    assert stream_freshness(T + 5, T).lag_s == 0  # updated after the newest input


def test_a_batch_model_is_fresh_for_a_day() -> None:
    assert not batch_freshness(None, T).passed
    assert batch_freshness(T - 86_400, T).passed
    assert not batch_freshness(T - 86_401, T).passed


def test_every_freshness_check_says_fresh_in_its_name() -> None:
    names = {spec.name for check in freshness_checks for spec in check.check_specs}
    assert names == {STREAM_CHECK, BATCH_CHECK} and all("fresh" in n for n in names)
    keys = {spec.asset_key.to_user_string() for c in freshness_checks for spec in c.check_specs}
    assert {"postgres/long_term_stats", "postgres/recent_stats", "batch/review_verdicts"} <= keys
