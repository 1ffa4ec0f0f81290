"""A small dbt-like runner for `dbt_like_sql/`: parse refs, order models, render, materialise.

A model is one `<name>.sql` file holding a SELECT. Its leading `--` comment lines describe it.
Templating, as dbt spells it:
  {{ ref('model') }}              the model's table in the target schema (a dependency)
  {{ source('group', 'table') }}  a table the pipeline provides (mapped by the caller)
  {{ var('name') }}               a value the caller passes (inserted as written)
Refs may also name tables that Python code produces (`external`), so SQL and Python steps share
one graph. A model is materialised as a table in a schema created when missing, built under a
scratch name and swapped in within one transaction: readers see the old table or the new one,
never a half-built one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from streaming.config import REPO_ROOT

MODELS_DIR = REPO_ROOT / "dbt_like_sql"

_TAG = re.compile(
    r"\{\{\s*(?P<fn>ref|source|var)\(\s*'(?P<a>[^']+)'\s*(?:,\s*'(?P<b>[^']+)'\s*)?\)\s*\}\}"
)
_ANY_TAG = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ModelError(ValueError):
    """A model that cannot be parsed, ordered or rendered; the message names it."""


@dataclass(frozen=True)
class SqlModel:
    name: str
    template: str
    description: str
    refs: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]
    vars: tuple[str, ...]


def quote(identifier: str) -> str:
    """A PostgreSQL identifier, quoted; only plain names are accepted (no injection by config)."""
    if not _IDENTIFIER.fullmatch(identifier):
        raise ModelError(f"{identifier!r} is not a plain SQL identifier")
    return f'"{identifier}"'


def parse_model(name: str, template: str) -> SqlModel:
    """Read a model's dependencies and variables from its template."""
    refs: list[str] = []
    sources: list[tuple[str, str]] = []
    variables: list[str] = []
    for tag in _ANY_TAG.finditer(template):
        match = _TAG.fullmatch(tag.group(0))
        if match is None:
            raise ModelError(f"model {name}: cannot read {tag.group(0)!r}")
        fn, a, b = match["fn"], match["a"], match["b"]
        if (fn == "source") != (b is not None):
            raise ModelError(f"model {name}: {fn}() takes {2 if fn == 'source' else 1} arguments")
        target = {"ref": refs, "source": sources, "var": variables}[fn]
        item = (a, b) if fn == "source" else a
        if item not in target:
            target.append(item)
    comments = []
    for line in template.splitlines():
        if not line.startswith("--"):
            break
        comments.append(line[2:].strip())
    return SqlModel(
        name, template, " ".join(comments), tuple(refs), tuple(sources), tuple(variables)
    )


def load_models(directory: str | Path) -> dict[str, SqlModel]:
    """Every `*.sql` file of a directory, by file name without the extension."""
    paths = sorted(Path(directory).glob("*.sql"))
    if not paths:
        raise ModelError(f"no .sql models in {directory}")
    return {p.stem: parse_model(p.stem, p.read_text(encoding="utf-8")) for p in paths}


def topological_order(
    models: Mapping[str, SqlModel], external: Mapping[str, Iterable[str]] | None = None
) -> list[str]:
    """Model and external names, each after everything it refs (ties by name: stable runs).

    `external` maps each table Python code produces to the models it reads.
    """
    external = external or {}
    known = set(models) | set(external)
    graph: dict[str, set[str]] = {name: set(deps) for name, deps in external.items()}
    for model in models.values():
        missing = [ref for ref in model.refs if ref not in known]
        if missing:
            raise ModelError(f"model {model.name} refs unknown model(s) {missing}")
        graph[model.name] = set(model.refs)
    sorter = TopologicalSorter(graph)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise ModelError(f"models ref each other in a cycle: {exc.args[1]}") from exc
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order += ready
        sorter.done(*ready)
    return order


def render(
    model: SqlModel,
    *,
    schema: str,
    sources: Mapping[tuple[str, str], str],
    variables: Mapping[str, object],
) -> str:
    """The model's SELECT with refs pointing into `schema`, sources mapped, vars inserted.

    `sources` maps (group, table) to an already quoted relation name (e.g. '"public"."t"').
    """

    def substitute(match: re.Match[str]) -> str:
        fn, a, b = match["fn"], match["a"], match["b"]
        if fn == "ref":
            return f"{quote(schema)}.{quote(a)}"
        if fn == "source":
            if (a, b) not in sources:
                raise ModelError(f"model {model.name}: no table given for source({a!r}, {b!r})")
            return sources[(a, b)]
        if a not in variables:
            raise ModelError(f"model {model.name}: var({a!r}) has no value")
        return str(variables[a])

    return _TAG.sub(substitute, model.template).strip().rstrip(";")


def ensure_schema(engine: Engine, schema: str) -> None:
    """Create the schema if missing. Parallel steps would race on CREATE SCHEMA IF NOT EXISTS
    (a unique-violation error in PostgreSQL), so creations take an advisory lock first."""
    with engine.begin() as conn:
        conn.execute(text("select pg_advisory_xact_lock(hashtext(:schema))"), {"schema": schema})
        conn.execute(text(f"create schema if not exists {quote(schema)}"))


def replace_table(conn: Connection, schema: str, name: str, select_sql: str) -> int:
    """Create `schema.name` from a SELECT, replacing any previous table atomically.

    Runs inside the caller's transaction (PostgreSQL DDL is transactional); returns rows.
    """
    scratch = f"{name}__new"
    conn.execute(text(f"drop table if exists {quote(schema)}.{quote(scratch)}"))
    conn.execute(text(f"create table {quote(schema)}.{quote(scratch)} as {select_sql}"))
    swap_in(conn, schema, name)
    return int(conn.execute(text(f"select count(*) from {quote(schema)}.{quote(name)}")).scalar())


def swap_in(conn: Connection, schema: str, name: str) -> None:
    """Replace `schema.name` by the table built as `schema.name__new` (same transaction)."""
    conn.execute(text(f"drop table if exists {quote(schema)}.{quote(name)}"))
    conn.execute(
        text(f"alter table {quote(schema)}.{quote(name + '__new')} rename to {quote(name)}")
    )


def materialise(
    engine: Engine,
    model: SqlModel,
    *,
    schema: str,
    sources: Mapping[tuple[str, str], str],
    variables: Mapping[str, object],
) -> tuple[str, int]:
    """Render and build one model as a table; returns (the SQL run, row count)."""
    sql = render(model, schema=schema, sources=sources, variables=variables)
    ensure_schema(engine, schema)
    with engine.begin() as conn:
        rows = replace_table(conn, schema, model.name, sql)
    return sql, rows
