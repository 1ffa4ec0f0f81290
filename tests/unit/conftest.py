"""Unit tests run without the stack's logins: tests/conftest.py exports `.stack/env` for the
integration tests, and a unit test must not depend on (or leak) the operator's credentials."""

from __future__ import annotations

import pytest

STACK_LOGINS = (
    "KAFKA_SECURITY_CONFIG",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_CREDENTIALS_DIR",
    "KAFKA_CLIENT_PROPERTIES",
    "SCHEMA_REGISTRY_USER",
    "SCHEMA_REGISTRY_PASSWORD_FILE",
    "DAGSTER_USER",
    "DAGSTER_PASSWORD_FILE",
)


@pytest.fixture(autouse=True)
def _no_stack_logins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in STACK_LOGINS:
        monkeypatch.delenv(name, raising=False)
