"""`make run`'s last line says what the reconciliation found, plainly."""

from __future__ import annotations

from orchestration.sample_run import verdict_line

PAGE = "http://127.0.0.1:3000/assets/reconciliation/stream_vs_batch"


def test_agreement() -> None:
    line = verdict_line({"mismatches": 0, "courses": 40, "as_of_day": "2026-12-03"}, PAGE)
    assert "AGREE on all 40 courses" in line and PAGE in line


def test_a_disagreement_says_how_many_courses_and_where() -> None:
    meta = {"mismatches": 31, "courses_differing": 28, "courses": 40, "agreement_pct": 30.0}
    line = verdict_line(meta, PAGE)
    assert "DISAGREE: 28 of 40 courses differ" in line
    assert "31 differences" in line and "reconciliation.mismatches" in line and PAGE in line
    assert "ran on the sample" not in line
