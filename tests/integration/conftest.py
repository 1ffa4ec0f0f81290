"""Integration fixtures: real connections to the stack; a clear failure when it is not up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient

from streaming.admin import wait_for_kafka
from streaming.config import Settings, registry_client_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def admin(settings: Settings) -> AdminClient:
    client = AdminClient(settings.kafka_config())
    try:
        wait_for_kafka(client, timeout_s=15)
    except TimeoutError as exc:
        pytest.fail(f"the stack is not up ({exc}); run `make up` or use `make test`")
    return client


@pytest.fixture(scope="session")
def registry(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient(registry_client_config(settings.schema_registry_url))


@pytest.fixture
def temp_topic(admin: AdminClient) -> Iterator[str]:
    """A fresh single-partition topic, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)
