"""The pipeline's PostgreSQL roles, declared once: who logs in as what, and may do what.

One injection anywhere must not be `COPY ... PROGRAM` or a dropped table elsewhere, so every
service logs in as a role of its own with only what it needs, and the superuser only bootstraps
(`reviews db-roles`, `streaming.db_bootstrap`, applies this declaration idempotently):

    reviews_api            SELECT on the statistics tables (the read API)
    sink_<table>           creates and owns its own table in `public` (one per JDBC sink)
    reviews_batch          owns the batch and reconciliation schemas (dbt, the verdicts step,
                           the reconciliation), creates scratch schemas, SELECTs the stream tables
    dagster                owns Dagster's own database

A sink creates its table on its first record, so the readers of a table not created yet get
SELECT through default privileges of its owner in its schema (and a plain GRANT once it
exists). Pure data and SQL text, no I/O: a password never enters the SQL rendered here (the
bootstrap binds each role's SCRAM verifier as a parameter).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from streaming.pipeline import LONG_TERM, RECENT, SINKS, SinkSpec
from streaming.sql import quote

STREAM_SCHEMA = "public"
"""Where the sinks write their tables (their `collection.name.format`)."""
READ_API = "reviews_api"
BATCH = "reviews_batch"
DAGSTER = "dagster"
DAGSTER_DATABASE = "dagster"
Login = Literal["libpq", "connect"]
"""How a role's service reads its password: libpq's password file (the Python services), or
Kafka Connect's directory config provider (the sinks)."""


def sink_role(sink: SinkSpec) -> str:
    """The role sink `sink` writes its table as."""
    return f"sink_{sink.table}"


def _table(name: str) -> str:
    return f"{STREAM_SCHEMA}.{name}"


@dataclass(frozen=True)
class Role:
    """A login role and everything it may do; anything not named here it may not."""

    name: str
    purpose: str
    login: Login = "libpq"
    reads: tuple[str, ...] = ()
    """Tables (`schema.table`) it may SELECT."""
    owns_tables: tuple[str, ...] = ()
    """Tables it creates (in a schema of `creates_in`) and owns: only it writes them."""
    creates_in: tuple[str, ...] = ()
    """Schemas it may create tables in."""
    owns_schemas: tuple[str, ...] = ()
    """Schemas it owns, with every table in them."""
    creates_schemas: bool = False
    """CREATE on the pipeline's database: schemas of its own (scratch ones included)."""
    temporary: bool = False
    """TEMPORARY on the pipeline's database: session-private tables (dbt's incremental and
    partitioned models stage their rows in one)."""
    owns_database: str | None = None
    """A database of its own, with everything in it; it connects to that one only."""


SINK_ROLES = tuple(
    Role(
        sink_role(s),
        f"the JDBC sink {s.connector}: writes {_table(s.table)}",
        login="connect",
        owns_tables=(_table(s.table),),
        creates_in=(STREAM_SCHEMA,),
    )
    for s in SINKS
)
STATISTICS = tuple(_table(s.table) for s in SINKS if s.topic in (LONG_TERM.name, RECENT.name))
"""The tables the read API serves."""
ROLES: tuple[Role, ...] = (
    Role(READ_API, "the read API: reads the statistics tables", reads=STATISTICS),
    *SINK_ROLES,
    Role(
        BATCH,
        "dbt, the verdicts step and the reconciliation: the batch side over the raw table",
        reads=tuple(_table(s.table) for s in SINKS),
        owns_schemas=("batch", "reconciliation"),
        creates_schemas=True,
        temporary=True,
    ),
    Role(
        DAGSTER, "Dagster's storage (runs, event logs, schedules)", owns_database=DAGSTER_DATABASE
    ),
)


@dataclass(frozen=True)
class Service:
    """A process that logs in through libpq: one password file (PGPASSFILE) holding the
    passwords of its roles, and none other."""

    name: str
    roles: tuple[str, ...]


SERVICES: tuple[Service, ...] = (
    Service("api", (READ_API,)),
    Service("dagster", (DAGSTER, BATCH)),  # its storage, and the assets it runs
)


def role(name: str) -> Role:
    for r in ROLES:
        if r.name == name:
            return r
    raise KeyError(f"no role {name!r} (declared: {', '.join(r.name for r in ROLES)})")


def owner_of(table: str) -> Role | None:
    """The role that creates and owns `table`, None when none is declared."""
    return next((r for r in ROLES if table in r.owns_tables), None)


def role_sql(r: Role) -> list[str]:
    """Create the role when missing, then (again) its attributes: a login and nothing more.
    The password is the bootstrap's bound parameter `:verifier`."""
    create = (
        f"do $$ begin if not exists (select from pg_roles where rolname = '{r.name}') then "
        f"create role {quote(r.name)}; end if; end $$"
    )
    attributes = (
        f"alter role {quote(r.name)} login nosuperuser nocreatedb nocreaterole noreplication "
        "nobypassrls inherit password :verifier"
    )
    return [create, attributes]


def _if_exists(table: str, statement: str) -> str:
    """`statement` run only when `table` exists (a sink creates its table on its first record)."""
    return f"do $$ begin if to_regclass('{table}') is not null then {statement}; end if; end $$"


def _own_everything_in(schema: str | None, owner: str) -> str:
    """ALTER OWNER of every relation (of `schema`, or of every non-system schema) another role
    owns: what an older stack's superuser created. Sequences of a column follow their table."""
    where = f"n.nspname = '{schema}'" if schema else _USER_SCHEMAS
    return (
        "do $$ declare r record; begin for r in select c.oid::regclass as rel from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        f"where {where} and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') "
        f"and c.relowner <> '{owner}'::regrole and not exists (select from pg_depend d "
        "where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i')) "
        f"loop execute format('alter table %s owner to %I', r.rel, '{owner}'); end loop; end $$"
    )


_USER_SCHEMAS = "n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_'"


def database_sql(database: str) -> list[str]:
    """The pipeline's database: only the declared roles connect; only the sinks create in
    `public`."""
    users = [r.name for r in ROLES if r.owns_database is None]
    return [
        f"revoke all on database {quote(database)} from public",
        f"revoke create on schema {STREAM_SCHEMA} from public",
        f"grant connect on database {quote(database)} to {', '.join(map(quote, users))}",
    ]


def grant_sql(r: Role, database: str) -> Iterator[str]:
    """What role `r` may do in the pipeline's database `database`, each statement idempotent."""
    name = quote(r.name)
    if r.creates_schemas:
        yield f"grant create on database {quote(database)} to {name}"
    if r.temporary:
        yield f"grant temporary on database {quote(database)} to {name}"
    for schema in r.creates_in:
        yield f"grant usage, create on schema {quote(schema)} to {name}"
    for table in r.owns_tables:
        yield _if_exists(table, f"alter table {table} owner to {name}")
    for schema in r.owns_schemas:
        yield f"create schema if not exists {quote(schema)} authorization {name}"
        yield f"alter schema {quote(schema)} owner to {name}"
        yield _own_everything_in(schema, r.name)
    yield from _read_sql(r)


def _read_sql(r: Role) -> Iterator[str]:
    """SELECT on each table `r` reads: now if it exists, and through default privileges of the
    role that will create it."""
    for schema in dict.fromkeys(t.split(".")[0] for t in r.reads):
        yield f"grant usage on schema {quote(schema)} to {quote(r.name)}"
    for table in r.reads:
        owner = owner_of(table)
        if owner is None:
            raise ValueError(f"role {r.name} reads {table}, which no declared role creates")
        yield (
            f"alter default privileges for role {quote(owner.name)} in schema "
            f"{quote(table.split('.')[0])} grant select on tables to {quote(r.name)}"
        )
        yield _if_exists(table, f"grant select on {table} to {quote(r.name)}")


def own_database_sql(database: str, owner: str) -> list[str]:
    """Run in `database`: `owner` owns it and everything in it; no one else connects."""
    return [
        f"alter database {quote(database)} owner to {quote(owner)}",
        f"revoke all on database {quote(database)} from public",
        _own_everything_in(None, owner),
    ]


def pgpass_line(user: str, password: str) -> str:
    """A line of libpq's password file for `user` on any host, port and database (each
    service's file holds its own roles only), `:` and `\\` escaped as libpq wants."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:{user}:{escaped}"
