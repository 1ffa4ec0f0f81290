"""Least privilege in PostgreSQL on the running stack: every service logs in as its own role
(streaming/db_roles.py, applied by `reviews db-roles`), none a superuser; the read API's role
cannot write, create or run a program; a sink's role cannot write another sink's table; Connect
may read the sinks' passwords only.

The services' connection settings are taken from the running processes themselves (their
environment, their command line), so an app started without its own role is caught too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from stack import procs
from streaming.db_roles import READ_API, SINK_ROLES, STATISTICS, sink_role
from streaming.pipeline import SINKS, SinkSpec
from streaming.settings import Settings

pytestmark = pytest.mark.integration

STACK = Path(__file__).resolve().parents[2] / ".stack"
INSUFFICIENT_PRIVILEGE = "42501"
LIBPQ_APPS = ("pipeline-api", "dagster-code-server", "dagster-webserver", "dagster-daemon")


def process_env(app: str) -> dict[str, str]:
    """The environment app `app` runs with (its process's, read from /proc)."""
    pid = procs.read_pid(STACK, app)
    assert pid is not None, f"{app} runs (make up)"
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.fixture
def login() -> Iterator[list[sa.Engine]]:
    """Engines made by the test, disposed afterwards."""
    made: list[sa.Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def engine_for(
    made: list[sa.Engine], url: str | sa.URL, *, passfile: str | None = None, password: str = ""
) -> sa.Engine:
    """An engine logging in as `url`'s user, with a libpq password file or the password."""
    args = {"passfile": passfile} if passfile else {"password": password}
    engine = sa.create_engine(url, connect_args={**args, "connect_timeout": 5})
    made.append(engine)
    return engine


def superuser(engine: sa.Engine) -> tuple[str, str, bool]:
    with engine.connect() as conn:
        user, setting = conn.execute(
            sa.text("select current_user, current_setting('is_superuser')")
        ).one()
        flag = conn.execute(sa.text("select rolsuper from pg_roles where rolname = current_user"))
        return user, setting, flag.scalar_one()


def refused(engine: sa.Engine, statement: str) -> bool:
    """The statement fails for want of privilege (nothing else)."""
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    except sa.exc.DBAPIError as exc:
        return getattr(exc.orig, "pgcode", None) == INSUFFICIENT_PRIVILEGE
    return False


def sink_engine(made: list[sa.Engine], settings: Settings, connector: str) -> sa.Engine:
    url, password_file = settings.sink_login(connector)
    assert password_file, "make up sets DATABASE_SINK_SECRETS_DIR"
    return engine_for(made, url, password=Path(password_file).read_text().strip())


@pytest.mark.parametrize("app", LIBPQ_APPS)
def test_no_app_logs_in_as_a_superuser(app: str, login: list[sa.Engine]) -> None:
    env = process_env(app)
    engine = engine_for(login, env["DATABASE_URL"], passfile=env["PGPASSFILE"])
    user, setting, flag = superuser(engine)
    assert (setting, flag) == ("off", False), f"{app} logs in as {user}"
    if app.startswith("dagster"):  # and its storage, as dagster.yaml says (PGUSER)
        storage = sa.make_url(env["DATABASE_URL"]).set(username=env["PGUSER"], database="dagster")
        user, setting, flag = superuser(engine_for(login, storage, passfile=env["PGPASSFILE"]))
        assert (user, setting, flag) == ("dagster", "off", False)


def test_the_read_api_logs_in_as_its_own_role(login: list[sa.Engine]) -> None:
    env = process_env("pipeline-api")
    engine = engine_for(login, env["DATABASE_URL"], passfile=env["PGPASSFILE"])
    assert superuser(engine)[0] == READ_API


@pytest.mark.parametrize("sink", SINKS, ids=lambda s: s.connector)
def test_no_sink_logs_in_as_a_superuser(
    sink: SinkSpec, settings: Settings, login: list[sa.Engine]
) -> None:
    assert superuser(sink_engine(login, settings, sink.connector)) == (
        sink_role(sink),
        "off",
        False,
    )


def test_the_registry_logs_in_as_its_own_role(settings: Settings, login: list[sa.Engine]) -> None:
    pid = procs.read_pid(STACK, "registry")
    assert pid is not None, "the registry runs"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "-Dapicurio.datasource.username=registry" in argv
    url = sa.make_url(settings.database_url).set(username="registry", database="registry")
    password = (STACK / "secrets" / "registry-db-password").read_text().strip()
    assert superuser(engine_for(login, url, password=password)) == ("registry", "off", False)


def test_the_read_api_role_can_read_but_not_write(login: list[sa.Engine]) -> None:
    env = process_env("pipeline-api")
    api = engine_for(login, env["DATABASE_URL"], passfile=env["PGPASSFILE"])
    for table in STATISTICS:
        with api.connect() as conn:
            conn.execute(sa.text(f"select count(*) from {table}")).scalar_one()
        assert refused(api, f"insert into {table} select * from {table} where false"), table
        assert refused(api, f"update {table} set course_id = course_id where false"), table
        assert refused(api, f"delete from {table} where false"), table
        assert refused(api, f"truncate {table}"), table
    assert refused(api, "select count(*) from public.reviews"), "only the statistics"
    assert refused(api, "create table public.api_was_here (x int)")
    assert refused(api, "create temporary table api_was_here (x int)")
    assert refused(api, "create schema api_was_here")
    assert refused(api, "copy (select 1) to program 'id'")


def test_a_sink_cannot_write_another_sinks_table(
    settings: Settings, login: list[sa.Engine]
) -> None:
    for sink in SINKS:
        engine = sink_engine(login, settings, sink.connector)
        for other in SINKS:
            if other == sink:
                continue
            table = f"public.{other.table}"
            assert refused(engine, f"insert into {table} select * from {table} where false")
            assert refused(engine, f"delete from {table} where false"), (sink.connector, table)
            assert refused(engine, f"alter table {table} add column was_here int")
        assert refused(engine, "copy (select 1) to program 'id'")


def test_connect_may_read_only_what_it_needs(settings: Settings) -> None:
    """The sinks' passwords and the registry reader's (its converter's login), nothing else."""
    properties = (STACK / "connect" / "connect-distributed.properties").read_text()
    allowed = [
        line.split("=", 1)[1]
        for line in properties.splitlines()
        if line.startswith("config.providers.dir.param.allowed.paths=")
    ]
    assert allowed == [settings.database.sink_secrets_dir]
    needed = [*(r.name for r in SINK_ROLES), "registry-reader-password"]
    assert sorted(os.listdir(allowed[0])) == sorted(needed)
