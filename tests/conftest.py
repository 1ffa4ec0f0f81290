"""Shared test set-up: the stack's addresses from .stack/env (written by `make up`)."""

from __future__ import annotations

import os
from pathlib import Path

STACK_ENV = Path(__file__).resolve().parents[1] / ".stack" / "env"


def _load_stack_env() -> None:
    """Export .stack/env into the test process unless the caller set a variable already."""
    if not STACK_ENV.exists():
        return
    for raw in STACK_ENV.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            os.environ.setdefault(key, value)


_load_stack_env()


def pytest_collection_modifyitems(items: list) -> None:
    """Tests marked `last` run after every other (they inspect what the whole run left behind,
    such as the logs); the order of the rest is kept."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
