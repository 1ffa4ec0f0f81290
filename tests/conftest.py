"""Shared test set-up: the stack's addresses from .stack/env (written by `make up`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streaming.settings import read_env_file

STACK_ENV = Path(__file__).resolve().parents[1] / ".stack" / "env"


def _load_stack_env() -> None:
    """Export .stack/env into the test process unless the caller set a variable already."""
    for key, value in read_env_file(STACK_ENV).items():
        os.environ.setdefault(key, value)


_load_stack_env()


def _phase(item: pytest.Item) -> int:
    marker = item.get_closest_marker("last")
    return 0 if marker is None else int(marker.kwargs.get("phase", 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `last` run after every other (they inspect what the whole run left behind,
    such as the logs), those marked `last(phase=2)` after them (they restart the stack); the
    order is kept otherwise."""
    items.sort(key=_phase)
