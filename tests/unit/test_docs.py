"""The manual against the code: the contracts page names every declared topic and every field of
every schema, and nothing in the repository points at a document outside it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from streaming.pipeline import TOPICS

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()


def test_every_declared_topic_has_a_row() -> None:
    section = CONTRACTS.split("## Topics", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.MULTILINE))
    assert rows == {t.name for t in TOPICS}


@pytest.mark.parametrize("schema", sorted((ROOT / "schemas").glob("*.avsc")), ids=lambda p: p.name)
def test_every_schema_field_is_described(schema: Path) -> None:
    fields = [f["name"] for f in json.loads(schema.read_text())["fields"]]
    missing = [f for f in fields if f"`{f}`" not in CONTRACTS]
    assert not missing, f"docs/contracts.md does not describe {schema.name}'s {missing}"


def test_nothing_points_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = re.compile(r"DESIGN\.md|\.\./shared|\]\(\.\./\.\./")
    hits = [
        f
        for f in files
        if (ROOT / f).is_file()
        and not f.endswith((".png", ".jar"))
        and f != "tests/unit/test_docs.py"
        and outside.search((ROOT / f).read_text(errors="replace"))
    ]
    assert not hits, f"these point at documents outside the repository: {hits}"
