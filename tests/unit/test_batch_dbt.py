"""How the batch's dbt project is run: the connection from DATABASE_URL, dbt offline, the
project's settings equal to the stream's."""

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestration.resources import OfflineDbtCliResource
from streaming.batch.dbt import OFFLINE_ENV, PROJECT_DIR, dbt_env, dbt_executable, libpq_env
from streaming.core.window import RECENT_DAYS
from streaming.settings import SettingsError


def test_the_connection_comes_from_database_url() -> None:
    assert libpq_env("postgresql+psycopg2://postgres@127.0.0.1:5433/reviews") == {
        "PGHOST": "127.0.0.1",
        "PGPORT": "5433",
        "PGUSER": "postgres",
        "PGDATABASE": "reviews",
    }
    env = dbt_env("postgresql://app@db.internal/stats", base={"PGPORT": "1", "PATH": "/bin"})
    assert env["PGHOST"] == "db.internal" and env["PGDATABASE"] == "stats"
    assert env["PGPORT"] == "1", "no port in the URL: libpq's own (or the profile's) default"
    assert env["DBT_PROFILES_DIR"] == str(PROJECT_DIR)
    assert {k: env[k] for k in OFFLINE_ENV} == OFFLINE_ENV


@pytest.mark.parametrize("url", ["postgresql://app:s3cret@db/stats", "not a url"])
def test_a_password_or_a_malformed_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        libpq_env(url)
    assert "s3cret" not in str(caught.value)


def test_the_window_length_is_the_streams() -> None:
    project = yaml.safe_load((PROJECT_DIR / "dbt_project.yml").read_text())
    assert project["vars"]["recent_days"] == RECENT_DAYS
    assert project["flags"]["send_anonymous_usage_stats"] is False
    assert project["flags"]["version_check"] is False
    profile = yaml.safe_load((PROJECT_DIR / "profiles.yml").read_text())
    assert profile["reviews"]["outputs"]["local"]["password"] == "", "the password is libpq's"


def test_the_dagster_resource_knows_its_dbt_version_without_running_dbt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> bytes:
        raise AssertionError(f"ran {args}: `dbt --version` asks PyPI for the latest release")

    resource = OfflineDbtCliResource(project_dir=str(PROJECT_DIR), dbt_executable=dbt_executable())
    monkeypatch.setattr(subprocess, "check_output", no_subprocess)
    assert resource._cli_version.major == 1


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A proxy that records every connection made through it (and answers nothing)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(200))
                except TimeoutError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    stop.set()
    thread.join()
    server.close()


def _parse(tmp_path: Path, proxy_url: str, **env: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DBT_")}
    proxies = {
        name: proxy_url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    result = subprocess.run(
        [dbt_executable(), "parse", "--target-path", str(tmp_path / "target")],
        cwd=PROJECT_DIR,
        env={**base, **proxies, "NO_PROXY": "", "DBT_LOG_PATH": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_plain_dbt_reaches_for_no_network_from_the_project(
    tmp_path: Path, proxy: tuple[str, list[bytes]]
) -> None:
    url, seen = proxy
    _parse(tmp_path, url)
    assert seen == [], "the project's flags keep dbt offline"
    _parse(tmp_path, url, DBT_SEND_ANONYMOUS_USAGE_STATS="true")
    assert seen, "with usage statistics on, dbt does try (the proxy would have seen it)"


@pytest.mark.parametrize(
    "argv", [["build", "--select", "recent_stats"], ["--version"], ["run", "--help"]]
)
def test_reviews_dbt_hands_every_argument_to_dbt(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streaming import cli
    from streaming.batch import dbt

    calls: list[tuple[list[str], str]] = []
    monkeypatch.setattr(dbt, "run_dbt", lambda args, url: calls.append((list(args), url)) or 0)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/stats")
    assert cli.main(["dbt", *argv]) == 0
    assert calls == [(argv, "postgresql://app@db/stats")]


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["--stream-schema", "public; drop table x"], {}, "not a plain SQL identifier"),
        ([], {"FRAUD_MODEL": "nowhere:model"}, "bad FRAUD_MODEL spec"),
    ],
)
def test_reviews_verdicts_refuses_bad_input_in_one_line(
    argv: list[str],
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streaming import cli

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["verdicts", *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
