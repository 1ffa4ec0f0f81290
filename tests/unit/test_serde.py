"""The registry edge: an unreachable registry is a clear error, not a transport traceback; its
credentials and CA come from their own settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.serde import (
    UNKNOWN_ID_RECHECK_S,
    Registry,
    RegistryUnavailable,
    ReviewWriters,
    UnknownSchemaError,
)
from streaming.settings import (
    REGISTRY_TIMEOUT_S,
    SettingsError,
    dagster_verify,
    redact_url,
    registry_client_config,
    registry_verify,
)
from tests.unit.certificates import self_signed


def test_an_unreachable_registry_names_its_url():
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")  # nothing listens on port 1
    with pytest.raises(RegistryUnavailable, match=r"127\.0\.0\.1:1/apis/ccompat/v7"):
        registry.register("t-value", "review.avsc")
    with pytest.raises(RegistryUnavailable):
        registry.writer_schema(1)


class _Answers:
    """A registry client whose every request is answered with one HTTP error."""

    def __init__(self, status: int) -> None:
        self.status = status

    def register_schema(self, *_args: object) -> int:
        raise SchemaRegistryError(self.status, 0, "storage: terminating connection")

    get_schema = register_schema


@pytest.mark.parametrize("status", [500, 503])
def test_a_registry_answering_5xx_is_unavailable_not_a_crash(status: int) -> None:
    # Seen in a chaos run: PostgreSQL restarting under Apicurio made it answer 500, and the
    # aggregator exited on the traceback instead of waiting like it does for a refused connection.
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")
    registry._client = _Answers(status)  # type: ignore[assignment]  # a fake registry client
    with pytest.raises(RegistryUnavailable, match="cannot serve now"):
        registry.register("t-value", "review.avsc")
    with pytest.raises(RegistryUnavailable):
        registry.writer_schema(7)


@pytest.mark.parametrize("status", [404, 409, 422])
def test_a_registry_4xx_stays_the_registrys_answer(status: int) -> None:
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")
    registry._client = _Answers(status)  # type: ignore[assignment]  # a fake registry client
    with pytest.raises(SchemaRegistryError):
        registry.register("t-value", "review.avsc")


class _Forgetful:
    """A registry that has no schema of the asked id, and lists `subjects`."""

    def __init__(self, subjects: list[str]) -> None:
        self.subjects = subjects
        self.asked = 0

    def get_schema(self, schema_id: int) -> object:
        self.asked += 1
        raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found")

    def get_subjects(self) -> list[str]:
        return self.subjects


def test_a_404_from_a_registry_without_subjects_is_a_retry_not_a_dead_letter() -> None:
    """Restarting over storage that is not ready, a registry answers 404 for every id: that
    must not convict records (the worker would dead-letter them all)."""
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")
    registry._client = _Forgetful([])  # type: ignore[assignment]  # a fake registry client
    with pytest.raises(RegistryUnavailable, match="lists no subjects"):
        registry.writer_schema(7)
    registry._client = _Forgetful(["udemy-reviews-value"])  # type: ignore[assignment]  # a fake registry client
    with pytest.raises(UnknownSchemaError, match="schema id 7 is not in the registry"):
        registry.writer_schema(7)


def test_an_unknown_id_is_asked_again_after_a_while() -> None:
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")
    answers = _Forgetful(["udemy-reviews-value"])
    registry._client = answers  # type: ignore[assignment]  # a fake registry client
    now = [0.0]
    writers = ReviewWriters(registry, clock=lambda: now[0])
    assert writers(9) is None and writers(9) is None
    assert answers.asked == 1, "believed for a while"
    now[0] += UNKNOWN_ID_RECHECK_S + 1
    assert writers(9) is None
    assert answers.asked == 2, "then asked again"


def test_registry_clients_have_a_timeout_and_credentials_of_their_own(tmp_path) -> None:
    password = tmp_path / "registry-password"
    password.write_text("s3cret\n")
    plain = registry_client_config("http://r:8081", {})
    assert plain == {"url": "http://r:8081", "timeout": REGISTRY_TIMEOUT_S}
    env = {"SCHEMA_REGISTRY_USER": "app", "SCHEMA_REGISTRY_PASSWORD_FILE": str(password)}
    authed = registry_client_config("http://r:8081", env)
    assert authed["basic.auth.user.info"] == "app:s3cret"
    SchemaRegistryClient(authed)  # the client takes every setting (it refuses unknown ones)
    with pytest.raises(ValueError, match="SCHEMA_REGISTRY_PASSWORD_FILE") as missing:
        registry_client_config("http://r:8081", {"SCHEMA_REGISTRY_USER": "app"})
    assert "s3cret" not in str(missing.value)


def test_a_url_with_user_info_is_shown_without_its_password() -> None:
    assert redact_url("http://app:pw@reg.example:8081/x") == "http://app:***@reg.example:8081/x"
    assert redact_url("http://reg.example/x") == "http://reg.example/x"
    registry = Registry("http://app:hunter22@127.0.0.1:1/apis/ccompat/v7")
    with pytest.raises(RegistryUnavailable) as refused:
        registry.register("t-value", "review.avsc")
    assert "hunter22" not in str(refused.value)


def test_an_https_registry_is_verified_by_the_ca_file_named(tmp_path: Path) -> None:
    ca = self_signed(tmp_path, "test CA")[0]
    env = {"SCHEMA_REGISTRY_CA_FILE": str(ca)}
    config = registry_client_config("https://r:8081", env)
    assert config["ssl.ca.location"] == str(ca)
    SchemaRegistryClient(config)
    context = registry_verify(env)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname and len(context.get_ca_certs()) == 1, "that CA only"
    assert registry_verify({}) is True, "unset: the system's trust store"
    assert dagster_verify({"DAGSTER_CA_FILE": str(ca)}) is not True


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "garbage"])
def test_an_unusable_ca_file_is_one_error_naming_its_variable(
    tmp_path: Path, content: str | None
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    with pytest.raises(SettingsError, match=f"SCHEMA_REGISTRY_CA_FILE: cannot use {ca}"):
        registry_client_config("https://r:8081", {"SCHEMA_REGISTRY_CA_FILE": str(ca)})
    with pytest.raises(SettingsError, match="DAGSTER_CA_FILE"):
        dagster_verify({"DAGSTER_CA_FILE": str(ca)})
