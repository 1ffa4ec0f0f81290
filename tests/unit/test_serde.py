"""The registry edge: an unreachable registry is a clear error, not a transport traceback."""

from __future__ import annotations

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.serde import Registry, RegistryUnavailable


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
    registry._client = _Answers(status)  # type: ignore[assignment]
    with pytest.raises(RegistryUnavailable, match="cannot serve now"):
        registry.register("t-value", "review.avsc")
    with pytest.raises(RegistryUnavailable):
        registry.writer_schema(7)


@pytest.mark.parametrize("status", [404, 409, 422])
def test_a_registry_4xx_stays_the_registrys_answer(status: int) -> None:
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")
    registry._client = _Answers(status)  # type: ignore[assignment]
    with pytest.raises(SchemaRegistryError):
        registry.register("t-value", "review.avsc")
