"""Small helpers for the SQL the pipeline writes itself (the verdicts, the reconciliation's
tables, the orchestrator's reads): identifiers quoted and checked, schemas created safely, tables
swapped in atomically. The batch models themselves are dbt's (dbt_like_sql/)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, text

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote(identifier: str) -> str:
    """A PostgreSQL identifier, quoted; only plain names are accepted (no injection by config)."""
    if not _IDENTIFIER.fullmatch(identifier):
        raise ValueError(f"{identifier!r} is not a plain SQL identifier")
    return f'"{identifier}"'


def ensure_schema(engine: Engine, schema: str) -> None:
    """Create the schema if missing. Parallel steps would race on CREATE SCHEMA IF NOT EXISTS
    (a unique-violation error in PostgreSQL), so creations take an advisory lock first."""
    with engine.begin() as conn:
        conn.execute(text("select pg_advisory_xact_lock(hashtext(:schema))"), {"schema": schema})
        conn.execute(text(f"create schema if not exists {quote(schema)}"))


def swap_in(conn: Connection, schema: str, name: str) -> None:
    """Replace `schema.name` by the table built as `schema.name__new` (in the caller's
    transaction: PostgreSQL DDL is transactional, so readers see the old table or the new)."""
    conn.execute(text(f"drop table if exists {quote(schema)}.{quote(name)}"))
    conn.execute(
        text(f"alter table {quote(schema)}.{quote(name + '__new')} rename to {quote(name)}")
    )


def replace_table(
    engine: Engine, schema: str, name: str, columns: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Replace `schema.name` by a table of `columns` (SQL column definitions) holding `rows`
    (dicts keyed by column name), built aside and swapped in atomically (`swap_in`)."""
    scratch = f"{quote(schema)}.{quote(name + '__new')}"
    ensure_schema(engine, schema)
    with engine.begin() as conn:
        conn.execute(text(f"drop table if exists {scratch}"))
        conn.execute(text(f"create table {scratch} ({columns})"))
        if rows:
            names = list(rows[0])
            listed = ", ".join(quote(column) for column in names)
            values = ", ".join(f":{column}" for column in names)
            conn.execute(text(f"insert into {scratch} ({listed}) values ({values})"), list(rows))
        swap_in(conn, schema, name)
