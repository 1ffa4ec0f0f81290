"""Compatibility names for `streaming/workers/` while its restructuring is under way: the
settings model is `streaming.settings` (its `Settings` folded this module's in). Nothing outside
`streaming/workers/` imports this module (a test says so); delete it once they import
`streaming.settings` themselves."""

from __future__ import annotations

from streaming.settings import (
    MAX_REQUEST_HEAD_BYTES,
    REPO_ROOT,
    Settings,
    SettingsError,
    TrustedHosts,
    bind_host,
    clock_from_env,
)

ConfigError = SettingsError
"""The one error type's former name."""

__all__ = [
    "MAX_REQUEST_HEAD_BYTES",
    "REPO_ROOT",
    "ConfigError",
    "Settings",
    "SettingsError",
    "TrustedHosts",
    "bind_host",
    "clock_from_env",
]
