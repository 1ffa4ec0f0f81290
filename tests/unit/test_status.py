"""`reviews status` as text (from fabricated answers), and the CLI's --version and --help."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from streaming import status
from streaming.cli import COMMAND_ENV, build_parser
from streaming.settings import Settings
from streaming.status import Probe, Report, render

NOW = 1_800_000_000.0


def report(**changes: object) -> Report:
    r = Report(
        services=[Probe("kafka", True, "127.0.0.1:9092", "1 brokers")],
        instances=[
            (
                "aggregator-0",
                {
                    "status": "restoring",
                    "consumer_lag": 12,
                    "records_in": 5000,
                    "last_commit_time": NOW - 3,
                    "assigned_partitions": ["a[0]", "a[1]"],
                    "restore_progress": {"versions": {"records": 10, "of": 40}},
                    "as_of_day": 20_400,
                },
                "http://127.0.0.1:8101/health",
            ),
            ("aggregator-1", None, "http://127.0.0.1:8102/health"),
        ],
        connectors=[("recent-stats", "recent-stats             RUNNING    task 0 RUNNING")],
        reconciliation={
            "timestamp": NOW - 600,
            "run_id": "r1",
            "metadata": {"mismatches": 0, "courses": 40, "as_of_day": "2025-11-09"},
        },
    )
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def test_one_screen_with_every_part() -> None:
    text = render(report(), now=NOW)
    assert "kafka              ok" in text
    assert "aggregator-0" in text and "restoring" in text
    assert "lag 12" in text and "last commit 3 s ago" in text and "partitions 2" in text
    assert "restoring versions 10/40" in text and "as-of day 2025-11-08" in text
    assert "aggregator-1         DOWN" in text
    assert "recent-stats" in text
    assert "reconciliation: AGREE over 40 courses, as of 2025-11-09, 10 min ago (run r1)" in text
    assert text.endswith("status: UNHEALTHY")  # an instance is down


def test_a_disagreement_and_a_failed_task_are_said_plainly() -> None:
    r = report(
        instances=[],
        connectors=[("long-term-stats", "long-term-stats          RUNNING    task 0 FAILED")],
        reconciliation={"timestamp": NOW, "run_id": "r2", "metadata": {"mismatches": 28}},
    )
    text = render(r, now=NOW)
    assert "DISAGREE: 28 differences" in text
    assert not r.healthy


def test_healthy_when_every_part_is() -> None:
    r = report(instances=[("fraud-filter-0", {"status": "ok"}, "u")])
    assert r.healthy and render(r, now=NOW).endswith("status: healthy")
    assert "not run yet" in render(report(reconciliation=None), now=NOW)


def test_version_and_environment_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert capsys.readouterr().out.startswith("reviews ")
    for command in COMMAND_ENV:
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "environment:" in capsys.readouterr().out, command


def test_a_bad_setting_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streaming.cli import main

    monkeypatch.setenv("CONNECT_USER", "connect")
    monkeypatch.setenv("CONNECT_PASSWORD_FILE", "/nonexistent/connect-password")
    assert main(["connectors", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reviews connectors: CONNECT_PASSWORD_FILE: cannot read")
    assert "Traceback" not in err


@pytest.mark.parametrize("status", ["stalled", "waiting"])
def test_a_worker_that_cannot_commit_is_unhealthy_and_says_why(status: str) -> None:
    why = "no commit for 41 s with 12 records to read (last abort: MSG_SIZE_TOO_LARGE)"
    health = {"status": status, "reason": why, "consumer_lag": 12}
    r = report(instances=[("fraud-filter-0", health, "u")])
    text = render(r, now=NOW)
    assert f"fraud-filter-0       {status}" in text and f"why: {why}" in text
    assert not r.healthy


class _Refusing:
    """An engine whose connect raises an SQLAlchemyError that carries no driver error."""

    def connect(self) -> None:
        raise sa.exc.ArgumentError("no such dialect option")

    def dispose(self) -> None:
        pass


def test_a_database_error_without_a_driver_error_is_a_down_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sa, "create_engine", lambda *a, **k: _Refusing())
    probe = status._postgres_probe(Settings())
    assert probe == Probe("postgres", False, probe.where, "no such dialect option")
