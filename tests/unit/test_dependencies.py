"""Dependencies point one way, and the pipeline's names are typed once.

Imports (every `import` and `from` statement, at any depth: a function-level import counts):

    orchestration/  ->  streaming/ (workers, APIs, CLI)  ->  streaming/core/ (pure)
          |
          +-------->  stack/ (the dev stack's scripts: import nothing of the pipeline)

- `streaming/` imports neither `stack`, `orchestration`, nor the chaos run, benchmarks or tests;
- `stack/` imports nothing of the pipeline (`streaming`, `orchestration`, `chaos`, `bench`);
- `streaming/core/` is pure: no Kafka client, Dagster, HTTP, web or SQL library, and no
  `streaming.*` module outside core (`streaming.settings` included: core reads no settings,
  nor the environment; its callers pass what it needs);
- `orchestration/` may import the rest, but not the chaos run, benchmarks or tests.

Names: every topic, sink connector and sink table is declared in `streaming/pipeline.py`; a
Python source that needs one reads it from there (`pipeline.INPUT.name`,
`pipeline.LONG_TERM_SINK.table`, `orchestration.topology.RECENT_TABLE`, ...) instead of typing
it again. Scanned: the string literals of every Python file of the repository outside the
declared exceptions (`NAMES_MAY_BE_TYPED`); flagged: a literal equal to a declared name, and a
table name written into SQL (`from long_term_stats`, `{schema}.reviews`). Not Python, so not
scanned: the dbt models' own names (`dbt_like_sql/`, SQL) and the connector templates
(`streaming/sink/connectors/*.json`, which `streaming.sink.render` fills from the declaration).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming import pipeline

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {".venv", ".stack", "node_modules", "__pycache__", ".git"}

PIPELINE_PACKAGES = ("streaming", "orchestration", "chaos", "bench", "tests")
CORE_MAY_NOT_IMPORT = (
    "confluent_kafka",
    "dagster",
    "dagster_dbt",
    "dagster_postgres",
    "dagster_graphql",
    "httpx",
    "httpx2",
    "fastapi",
    "fastapi_offline",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg2",
    "pydantic_settings",
    "prometheus_client",
)

RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "streaming",
        ("stack", "orchestration", "chaos", "bench", "tests"),
        "the workers and APIs depend on neither the dev stack nor the orchestrator",
    ),
    ("stack", PIPELINE_PACKAGES, "the stack's scripts import nothing of the pipeline"),
    ("orchestration", ("chaos", "bench", "tests"), "production imports no test harness"),
    ("streaming.core", CORE_MAY_NOT_IMPORT, "core is pure: no I/O library"),
)
"""(importing package, packages it may not import, why)."""

NAMES_MAY_BE_TYPED: dict[str, str] = {
    "streaming/pipeline.py": "the declaration itself",
    "chaos/oracle.py": "the chaos run's oracle: an independent implementation, on purpose",
    "chaos/check.py": "the oracle's reader: judges the pipeline by its own names, on purpose",
    "bench/peers/": "the benchmark's peers (Kafka Streams, Quix): independent on purpose",
    "tests/": "tests pin the declared names: renaming a topic or table must fail a test that "
    "names it (the connectors, ACLs, topic configs and the stack are checked by name)",
}
"""Files (or folders, ending in /) that may type a declared name, and why."""

AMBIGUOUS_NAMES = {"reviews"}
"""Declared names that are ordinary words too (the sink's `reviews` table; also the CLI's name,
JSON fields, a sort key): flagged only where they name a table (a call's argument, SQL)."""


def python_files(*tops: str) -> Iterator[Path]:
    for top in tops:
        for folder, dirs, files in os.walk(ROOT / top):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            yield from (Path(folder, f) for f in sorted(files) if f.endswith(".py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(
    source: str, module: str, is_package: bool = False
) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in `source`, at any depth; a relative
    import resolved against `module`; `from a import b` yields `a.b` (b may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package[: len(package) - node.level + 1]
                base = ".".join([*kept, *([base] if base else [])])
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def wrong_way_imports(files: Iterator[Path]) -> list[str]:
    found = []
    for path in files:
        importer = module_name(path)
        imports = imported_modules(path.read_text(), importer, path.name == "__init__.py")
        for imported, line in imports:
            for package, forbidden, why in RULES:
                if not within(importer, package):
                    continue
                bad = any(within(imported, f) for f in forbidden) or (
                    package == "streaming.core"
                    and within(imported, "streaming")
                    and not within(imported, "streaming.core")
                )
                if bad:
                    where = path.relative_to(ROOT)
                    found.append(f"{where}:{line}: imports {imported} ({why})")
    return found


def test_dependencies_point_one_way() -> None:
    assert wrong_way_imports(python_files("streaming", "orchestration", "stack")) == []


def test_core_reads_no_environment() -> None:
    found = []
    for path in python_files("streaming/core"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: os.{node.attr}")
    assert found == []


@pytest.mark.parametrize(
    ("path", "source", "imported"),
    [
        ("streaming/workers/x.py", "def f():\n    from stack import procs\n", "stack"),
        ("streaming/api/x.py", "import orchestration.topology\n", "orchestration.topology"),
        ("streaming/core/x.py", "from streaming.settings import load\n", "streaming.settings"),
        ("streaming/core/x.py", "from .. import pipeline\n", "streaming.pipeline"),
        ("streaming/core/x.py", "class A:\n    import confluent_kafka\n", "confluent_kafka"),
        ("stack/x.py", "from streaming.pipeline import INPUT\n", "streaming.pipeline"),
    ],
)
def test_a_wrong_way_import_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, source: str, imported: str
) -> None:
    file = tmp_path / path
    file.parent.mkdir(parents=True)
    file.write_text(source)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert [imported in f for f in wrong_way_imports(iter([file]))] == [True]


# -- names -------------------------------------------------------------------------------------


def declared_names() -> tuple[set[str], set[str]]:
    """(every declared topic, connector and table name; the table names)."""
    tables = {s.table for s in pipeline.SINKS}
    return {t.name for t in pipeline.TOPICS} | {
        s.connector for s in pipeline.SINKS
    } | tables, tables


def sql_table(tables: set[str]) -> re.Pattern[str]:
    """A table named in SQL text: after a keyword that takes one, or schema-qualified."""
    names = "|".join(re.escape(t) for t in sorted(tables, key=len, reverse=True))
    return re.compile(
        rf"(\b(from|join|into|update|table|like)\s+([\w\"{{}}]+\.)?\"?|(^|[\w\"}}])\.\"?)({names})\b",
        re.IGNORECASE,
    )


def typed_names(source: str) -> Iterator[tuple[int, str]]:
    """(line, name) of every declared name typed in a Python source (docstrings aside)."""
    names, tables = declared_names()
    in_sql = sql_table(tables)
    tree = ast.parse(source)
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    call_args = {
        id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call) for arg in node.args
    }
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in prose:
            continue
        text = node.value
        if text in names and (text not in AMBIGUOUS_NAMES or id(node) in call_args):
            yield node.lineno, text
        for match in in_sql.finditer(text):
            yield node.lineno, match.group(5)


def exempt(relative: str) -> bool:
    return any(
        relative == key or (key.endswith("/") and relative.startswith(key))
        for key in NAMES_MAY_BE_TYPED
    )


def test_names_are_typed_only_in_the_declaration() -> None:
    found = []
    for path in python_files("."):
        relative = path.relative_to(ROOT).as_posix()
        if not exempt(relative):
            found += [f"{relative}:{n}: {name!r}" for n, name in typed_names(path.read_text())]
    assert found == [], "read these from streaming.pipeline (or declare the exception here)"


def test_every_exception_still_exists() -> None:
    for key in NAMES_MAY_BE_TYPED:
        assert (ROOT / key).exists(), key


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ('TOPIC = "udemy-reviews-valid"\n', "udemy-reviews-valid"),
        ('tables = {"recent": "recent_stats"}\n', "recent_stats"),
        ("key = table_key('reviews')\n", "reviews"),
        ('q = "select course_id from long_term_stats"\n', "long_term_stats"),
        ('q = f"create table x (like {schema}.reviews including all)"\n', "reviews"),
        ('q = f"select * from {schema}.\\"recent_stats\\""\n', "recent_stats"),
    ],
)
def test_a_typed_name_is_found(source: str, name: str) -> None:
    assert [n for _, n in typed_names(source)] == [name]


@pytest.mark.parametrize(
    "source",
    [
        '"""Reads udemy-reviews into long_term_stats."""\n',
        'parser = ArgumentParser(prog="reviews")\n',
        'metadata = {"reviews": 3}\n',
        'Sort = Literal["rating", "reviews"]\n',
        "x = pipeline.LONG_TERM_SINK.table\n",
    ],
)
def test_what_is_not_a_typed_name(source: str) -> None:
    assert list(typed_names(source)) == []


def test_the_read_api_serves_the_statistic_schema_fields() -> None:
    """The read API's columns come from `course_statistic.avsc`; its answer model (typed by
    hand for the OpenAPI descriptions) must list the same fields in the same order."""
    from streaming.api.read import STAT_COLUMNS, CourseStatistic

    schema = json.loads((ROOT / "schemas" / (pipeline.LONG_TERM.value_schema or "")).read_text())
    fields = [f["name"] for f in schema["fields"]]
    assert [name for name, _ in STAT_COLUMNS] == fields
    assert list(CourseStatistic.model_fields) == fields
