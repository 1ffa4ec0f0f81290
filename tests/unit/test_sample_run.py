"""`make run` says how to log in to the UI, and its last line what the reconciliation found."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.sample_run import login_line, verdict_line
from streaming.settings import PipelineSettings, SettingsError, dagster_auth, load

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


def test_the_login_line_names_the_user_and_the_password_file_not_the_password(
    tmp_path: Path,
) -> None:
    password = tmp_path / "dagster-password"
    password.write_text("s3cret\n")
    env = {"DAGSTER_USER": "dagster", "DAGSTER_PASSWORD_FILE": str(password)}
    line = login_line(load(PipelineSettings, env))
    assert "'dagster'" in line and str(password) in line and "s3cret" not in line
    assert dagster_auth(env) == ("dagster", "s3cret")
    assert dagster_auth({}) is None
    with pytest.raises(SettingsError, match="DAGSTER_PASSWORD_FILE"):
        dagster_auth({"DAGSTER_USER": "dagster"})
