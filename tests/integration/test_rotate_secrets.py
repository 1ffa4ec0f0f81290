"""`make rotate-secrets` on the running stack: every generated secret gets a new value, the old
ones stop working everywhere (Kafka, PostgreSQL, the registry, the Dagster proxy, the writer
token) and the new ones work. Runs after everything else: it restarts the whole stack."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streaming.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / ".stack" / "secrets"


def generated() -> dict[str, str]:
    """Every secret file of the running stack (derived files included) -> its content. A TLS
    certificate of an earlier `KAFKA_TLS=1` run is not the running stack's: rotation removes
    it, and the next `KAFKA_TLS=1 make up` makes a new one."""
    tls = os.environ.get("KAFKA_TLS") == "1"
    return {
        str(p.relative_to(SECRETS)): p.read_text()
        for p in sorted(SECRETS.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and (tls or p.parent.name != "tls")
    }


def kafka_login_works(password: str) -> bool:
    config = Settings.from_env().kafka_config(log_level=0)
    config["sasl.password"] = password
    try:
        AdminClient(config).list_topics(timeout=10)
    except KafkaException:
        return False
    return True


def postgres_login_works(password: str) -> bool:
    url = sa.make_url(Settings.from_env().database_url).set(password=password)
    engine = sa.create_engine(url, connect_args={"passfile": os.devnull, "connect_timeout": 5})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def status(url: str, **kwargs: object) -> int:
    return httpx.get(url, timeout=10, **kwargs).status_code  # type: ignore[arg-type]


@pytest.mark.last(phase=2)
@pytest.mark.timeout(900)
def test_every_generated_secret_is_replaced_and_the_old_ones_stop_working() -> None:
    before = generated()
    old_kafka = before["kafka/operator"].strip()
    old_postgres = before["postgres-password"].strip()
    old_registry = before["registry-writer-password"].strip()
    old_dagster = before["dagster-password"].strip()
    old_token = before["pipeline-api-token"].strip()
    env = {**os.environ, "STACK_APPS": os.environ.get("STACK_APPS", str(ROOT / "services.conf"))}
    done = subprocess.run(
        [str(ROOT / "stack" / "stack.sh"), "rotate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    after = generated()
    assert set(before) <= set(after), "every secret is made anew"
    unchanged = [name for name in before if before[name] == after[name]]
    assert unchanged == [], f"not rotated: {unchanged}"
    assert subprocess.run([str(ROOT / "stack" / "stack.sh"), "status"], env=env).returncode == 0

    assert not kafka_login_works(old_kafka)
    assert kafka_login_works(after["kafka/operator"].strip())
    assert not postgres_login_works(old_postgres)
    assert postgres_login_works(after["postgres-password"].strip())
    registry = os.environ["SCHEMA_REGISTRY_URL"] + "/subjects"
    user = os.environ["SCHEMA_REGISTRY_USER"]
    assert status(registry, auth=(user, old_registry)) == 401
    assert status(registry, auth=(user, after["registry-writer-password"].strip())) == 200
    dagster = os.environ["DAGSTER_URL"] + "/server_info"
    dagster_user = os.environ["DAGSTER_USER"]
    assert status(dagster, auth=(dagster_user, old_dagster)) == 401
    assert status(dagster, auth=(dagster_user, after["dagster-password"].strip())) == 200
    reviews = os.environ["PIPELINE_API_URL"] + "/reviews"
    refused = httpx.post(reviews, json={}, headers={"Authorization": f"Bearer {old_token}"})
    assert refused.status_code == 401
    new_token = after["pipeline-api-token"].strip()
    checked = httpx.post(reviews, json={}, headers={"Authorization": f"Bearer {new_token}"})
    assert checked.status_code == 422  # let in, then the empty body refused on its merits
