"""Shared test set-up: the stack's addresses from .stack/env (written by `make up`)."""

from __future__ import annotations

import os
from pathlib import Path

from streaming.config import read_env_file

STACK_ENV = Path(__file__).resolve().parents[1] / ".stack" / "env"


def _load_stack_env() -> None:
    """Export .stack/env into the test process unless the caller set a variable already."""
    for key, value in read_env_file(STACK_ENV).items():
        os.environ.setdefault(key, value)


_load_stack_env()


def pytest_collection_modifyitems(items: list) -> None:
    """Tests marked `last` run after every other (they inspect what the whole run left behind,
    such as the logs); the order of the rest is kept."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
