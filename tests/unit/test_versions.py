"""One Kafka version: the stack's (broker, Connect, tools, our REST extension) and the Kafka
Streams peers' of the benchmarks, so every figure compares clients and broker of one release."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kafka_version(pom: Path) -> str | None:
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    return found.group(1) if found else None


def test_the_stack_declares_kafka_once_and_the_peers_name_the_same() -> None:
    stack = kafka_version(ROOT / "stack/pom.xml")
    assert stack is not None
    modules = sorted((ROOT / "stack/maven").glob("*/pom.xml"))
    assert modules and all(kafka_version(m) is None for m in modules), "declared in a module"
    assert kafka_version(ROOT / "bench/peers/kstreams/pom.xml") == stack
