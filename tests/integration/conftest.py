"""Integration fixtures: real connections to the stack; a clear failure when it is not up."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from sqlalchemy import Engine, create_engine, text

from orchestration.resources import SchemasResource
from streaming.admin import wait_for_kafka
from streaming.batch.dbt import PROJECT_DIR
from streaming.settings import Settings, registry_client_config

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


@pytest.fixture
def engine(settings: Settings) -> Engine:
    return create_engine(settings.database_url)


@pytest.fixture
def scratch(engine: Engine) -> Iterator[SchemasResource]:
    """Scratch schemas for the stream tables, the batch models and the reconciliation."""
    base = f"t_{uuid.uuid4().hex[:10]}"
    layout = SchemasResource(
        stream_schema=base,
        batch_schema=f"{base}_batch",
        reconciliation_schema=f"{base}_recon",
    )
    with engine.begin() as conn:
        conn.execute(text(f'create schema "{base}"'))
    yield layout
    with engine.begin() as conn:
        for schema in (base, layout.batch_schema, layout.reconciliation_schema):
            conn.execute(text(f'drop schema if exists "{schema}" cascade'))
    shutil.rmtree(PROJECT_DIR / "target" / f"build-{layout.reconciliation_schema}", True)
