"""No generated secret leaks: not into any log the stack and this test run wrote, not into
Connect's config topic or its REST answers. Runs last, over everything the suite left."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from streaming.access import OPERATOR, PRINCIPALS
from streaming.db_roles import ROLES
from streaming.settings import Settings

STACK = Path(__file__).resolve().parents[2] / ".stack"
GENERATED = (
    "pipeline-api-token",
    "postgres-password",
    "connect-password",
    "udemy-client-secret",
    "registry-db-password",
    *(f"connect/{r.name}" for r in ROLES if r.login == "connect"),
    *(f"postgres-roles/{r.name}" for r in ROLES if r.login == "libpq"),
    "registry-writer-password",
    "registry-reader-password",
    "dagster-password",
    "kafka-broker",
    *(f"kafka/{name}" for name in (OPERATOR, "connect", *(p.name for p in PRINCIPALS))),
)
CONNECT_CONFIG_TOPIC = "_connect-configs"
CHUNK = 1 << 20


def secrets() -> dict[str, bytes]:
    found = {}
    for name in GENERATED:
        path = STACK / "secrets" / name
        assert path.is_file(), f"make up generates {path}"
        found[name] = path.read_bytes().strip()
        assert len(found[name]) >= 16
    return found


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def holds(path: Path, needle: bytes) -> bool:
    """`needle` occurs in the file (read in chunks that overlap by its length)."""
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


@pytest.mark.last
def test_no_generated_secret_in_any_log() -> None:
    logs = [STACK / "logs", STACK / "dagster", STACK / "chaos"]
    checked = 0
    for path in files_under(*logs):
        checked += 1
        for name, value in secrets().items():
            assert not holds(path, value), f"{name} appears in {path}"
    assert checked, "the stack's logs were not found"


@pytest.mark.last
def test_no_generated_secret_in_any_process_environment() -> None:
    """Secrets stay in their files: no process of the stack holds one in its environment (a
    child inherits it, `/proc/<pid>/environ` shows it, a crash dump may print it)."""
    checked = 0
    for pid_file in (STACK / "run").glob("*.pid"):
        environ = Path("/proc", pid_file.read_text().strip(), "environ")
        try:
            content = environ.read_bytes()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # exited meanwhile
        checked += 1
        for name, value in secrets().items():
            assert value not in content, f"{name} is in the environment of {pid_file.stem}"
    assert checked, "no process of the stack was found"


def connect_configs(settings: Settings) -> list[bytes]:
    """Every record of Connect's config topic (connector configs as Connect stores them)."""
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": "secrets-test",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(CONNECT_CONFIG_TOPIC, 0), 30)
        consumer.assign([TopicPartition(CONNECT_CONFIG_TOPIC, 0, low)])
        values: list[bytes] = []
        position = low
        while position < high:
            msg = consumer.poll(10)
            assert msg is not None, "Connect's config topic did not deliver its records"
            if msg.error() is None:
                values.append(msg.value() or b"")
                position = msg.offset() + 1
        return values
    finally:
        consumer.close()


@pytest.mark.last
def test_connect_stores_and_answers_references_not_secrets(settings: Settings) -> None:
    stored = connect_configs(settings)
    assert any(b"connection.password" in v for v in stored), "the sinks' configs are stored"
    answers = httpx.get(
        f"{settings.connect_url}/connectors",
        params={"expand": "info"},
        auth=settings.connect_auth(),
        timeout=10,
    )
    assert answers.status_code == 200, answers.text
    assert "${dir:" in answers.text
    for name, value in secrets().items():
        assert not any(value in v for v in stored), f"{name} is in {CONNECT_CONFIG_TOPIC}"
        assert value.decode() not in answers.text, f"{name} is in Connect's REST answers"
    refused = httpx.get(f"{settings.connect_url}/connectors", timeout=10)
    assert refused.status_code == 401, "Connect's REST API wants credentials"


@pytest.mark.last
def test_postgres_refuses_a_client_without_the_password(settings: Settings) -> None:
    """Without the password file (libpq's `passfile` pointed at nothing) the login fails."""
    engine = sa.create_engine(
        settings.database_url,
        connect_args={"passfile": os.devnull, "connect_timeout": 5},
    )
    with pytest.raises(sa.exc.OperationalError, match="password"), engine.connect():
        pass
    engine.dispose()
