"""The dependency pins: what the code imports is declared, the locks hold the declared pins, and
what `make run` installs carries no test tools."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "ruff", "pandas", "uv"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def lock(name: str) -> dict[str, str]:
    return pins((ROOT / name).read_text().splitlines())


def test_every_declared_pin_is_locked_at_its_version() -> None:
    runtime, dev = pins(project()["dependencies"]), pins(project()["optional-dependencies"]["dev"])
    locked, locked_dev = lock("requirements.lock"), lock("requirements-dev.lock")
    assert {k: locked.get(k) for k in runtime} == runtime
    assert {k: locked_dev.get(k) for k in {**runtime, **dev}} == {**runtime, **dev}


def test_the_runtime_lock_has_no_test_tools() -> None:
    assert not DEV_ONLY & lock("requirements.lock").keys()
    assert pins(project()["optional-dependencies"]["dev"]).keys() >= DEV_ONLY


def test_what_the_code_imports_is_declared() -> None:
    """Every third-party top-level import of the shipped packages is a direct dependency, not
    one that arrives only through another package."""
    ours = {"streaming", "orchestration", "stack", "bench", "chaos", "tests"}
    dists = packages_distributions()
    declared = pins(project()["dependencies"]).keys()
    found: set[str] = set()
    for folder in ("streaming", "orchestration", "stack"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(r"^(?:from|import) ([A-Za-z_0-9]+)", path.read_text(), re.M))
    third_party = found - ours - set(sys.stdlib_module_names) - {"__future__"}
    undeclared = {
        name: dists.get(name)
        for name in third_party
        if not {norm(d) for d in dists.get(name, [name])} & declared
    }
    assert not undeclared
    assert {"numpy", "pydantic", "httpx2", "dagster_graphql", "prometheus_client"} <= found
