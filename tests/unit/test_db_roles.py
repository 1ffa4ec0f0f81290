"""The PostgreSQL roles as declared (streaming/db_roles.py): each has what its service needs
and no more, none is a superuser, the grants render as expected; the password files
`reviews db-roles` writes, and the logins the sinks are deployed with."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from streaming.db_bootstrap import password_file, scram_verifier, write_pgpass_files
from streaming.db_roles import (
    BATCH,
    DAGSTER,
    READ_API,
    ROLES,
    SERVICES,
    SINK_ROLES,
    Role,
    database_sql,
    grant_sql,
    owner_of,
    pgpass_line,
    role,
    role_sql,
)
from streaming.pipeline import SINKS
from streaming.settings import DatabaseSettings, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
WRITES = re.compile(r"\b(insert|update|delete|truncate|create|owner|all)\b")


def test_no_role_is_a_superuser_or_may_make_roles_or_databases() -> None:
    for r in ROLES:
        attributes = role_sql(r)[1]
        for word in ("nosuperuser", "nocreatedb", "nocreaterole", "noreplication", "nobypassrls"):
            assert f" {word} " in attributes, (r.name, word)
        assert "password :verifier" in attributes, "the verifier is bound, never in the text"


def test_the_read_api_may_only_select_the_statistics_tables() -> None:
    api = role(READ_API)
    assert api.reads == ("public.long_term_stats", "public.recent_stats")
    assert not (api.owns_tables or api.creates_in or api.owns_schemas or api.owns_database)
    assert not api.creates_schemas
    statements = list(grant_sql(api, "reviews"))
    assert statements == [
        'grant usage on schema "public" to "reviews_api"',
        'alter default privileges for role "sink_long_term_stats" in schema "public" '
        'grant select on tables to "reviews_api"',
        "do $$ begin if to_regclass('public.long_term_stats') is not null then "
        'grant select on public.long_term_stats to "reviews_api"; end if; end $$',
        'alter default privileges for role "sink_recent_stats" in schema "public" '
        'grant select on tables to "reviews_api"',
        "do $$ begin if to_regclass('public.recent_stats') is not null then "
        'grant select on public.recent_stats to "reviews_api"; end if; end $$',
    ]
    for statement in statements:
        assert not WRITES.search(statement.replace("alter default privileges", "")), statement


def test_each_sink_owns_its_own_table_only() -> None:
    assert [r.owns_tables for r in SINK_ROLES] == [(f"public.{s.table}",) for s in SINKS]
    for r in SINK_ROLES:
        assert r.login == "connect" and r.creates_in == ("public",)
        assert not (r.reads or r.owns_schemas or r.creates_schemas or r.owns_database)
    for s in SINKS:
        owner = owner_of(f"public.{s.table}")
        assert owner is not None and owner.name == f"sink_{s.table}"


def test_the_batch_reads_the_stream_tables_and_owns_its_schemas() -> None:
    batch = role(BATCH)
    assert set(batch.reads) == {f"public.{s.table}" for s in SINKS}
    assert batch.owns_schemas == ("batch", "reconciliation") and batch.creates_schemas
    assert not (batch.owns_tables or batch.creates_in or batch.owns_database)
    statements = list(grant_sql(batch, "reviews"))
    assert 'create schema if not exists "batch" authorization "reviews_batch"' in statements
    assert 'grant create on database "reviews" to "reviews_batch"' in statements
    assert not any("insert" in s or "update" in s or "delete" in s for s in statements)


def test_dagster_owns_its_database_and_nothing_in_the_pipelines() -> None:
    dagster = role(DAGSTER)
    assert dagster.owns_database == "dagster"
    assert list(grant_sql(dagster, "reviews")) == []
    connect = database_sql("reviews")[-1]
    assert '"dagster"' not in connect
    assert all(f'"{r.name}"' in connect for r in ROLES if r.name != DAGSTER)
    assert 'revoke all on database "reviews" from public' in database_sql("reviews")


def test_a_table_no_role_creates_cannot_be_read() -> None:
    reader = Role("someone", "reads a table no one writes", reads=("public.elsewhere",))
    with pytest.raises(ValueError, match=r"public\.elsewhere, which no declared role creates"):
        list(grant_sql(reader, "reviews"))


def test_each_service_holds_declared_libpq_roles_only() -> None:
    declared = {r.name: r for r in ROLES}
    for service in SERVICES:
        assert all(declared[n].login == "libpq" for n in service.roles), service.name
    in_services = {n for s in SERVICES for n in s.roles}
    assert in_services == {r.name for r in ROLES if r.login == "libpq"}
    assert {s.name: s.roles for s in SERVICES}["api"] == (READ_API,)


def test_services_conf_names_declared_roles_and_password_files() -> None:
    conf = (ROOT / "services.conf").read_text()
    users = set(re.findall(r"://(\w+)@", conf)) | set(re.findall(r"PGUSER=(\w+)\n", conf))
    assert users == {READ_API, BATCH, DAGSTER}
    assert set(re.findall(r"/(\w+)\.pgpass", conf)) == {s.name for s in SERVICES}
    assert "init .venv/bin/reviews db-roles\ninit .venv/bin/reviews bootstrap" in conf


def test_pgpass_lines_escape_what_libpq_wants_escaped() -> None:
    assert pgpass_line("reviews_api", r"a:b\c") == r"*:*:*:reviews_api:a\:b\\c"


def test_a_scram_verifier_has_postgres_format_and_depends_on_the_salt() -> None:
    one = scram_verifier("secret", b"0123456789abcdef")
    assert re.fullmatch(
        r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+", one
    )
    assert one == scram_verifier("secret", b"0123456789abcdef")
    assert one != scram_verifier("secret", b"fedcba9876543210")
    assert "secret" not in one


def test_password_files_go_where_their_service_reads_them(tmp_path: Path) -> None:
    settings = DatabaseSettings(roles_dir=str(tmp_path / "r"), sink_secrets_dir=str(tmp_path / "c"))
    assert password_file(role(READ_API), settings) == tmp_path / "r" / READ_API
    assert password_file(SINK_ROLES[0], settings) == tmp_path / "c" / SINK_ROLES[0].name
    with pytest.raises(SettingsError, match="DATABASE_SINK_SECRETS_DIR"):
        password_file(SINK_ROLES[0], DatabaseSettings(roles_dir=str(tmp_path)))


def test_each_service_password_file_is_private_and_holds_its_roles_only(tmp_path: Path) -> None:
    passwords = {r.name: f"pw-{r.name}" for r in ROLES}
    written = write_pgpass_files(tmp_path, passwords)
    assert [p.name for p in written] == [f"{s.name}.pgpass" for s in SERVICES]
    for service, path in zip(SERVICES, written, strict=True):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = path.read_text().splitlines()
        assert lines == [f"*:*:*:{n}:pw-{n}" for n in service.roles]


def test_a_declared_sink_logs_in_as_its_own_role(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql+psycopg2://postgres@db:5433/reviews",
        "DATABASE_PASSWORD_FILE": "/secrets/postgres-password",
    }
    url, password = Settings.from_env(
        {**env, "DATABASE_SINK_SECRETS_DIR": str(tmp_path)}
    ).sink_login("udemy-reviews")
    assert url == "postgresql+psycopg2://sink_reviews@db:5433/reviews"
    assert password == str(tmp_path / "sink_reviews")
    assert Settings.from_env(env).sink_login("udemy-reviews") == (
        env["DATABASE_URL"],
        env["DATABASE_PASSWORD_FILE"],
    ), "without a secrets directory: DATABASE_URL's user, as before"
    with pytest.raises(SettingsError, match="no sink"):
        Settings.from_env({**env, "DATABASE_SINK_SECRETS_DIR": str(tmp_path)}).sink_login("other")
