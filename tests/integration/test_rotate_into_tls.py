"""Two checks that each restart the whole stack, sharing the restarts (they run after everything
else):

1. `STACK_TLS=1 make rotate-secrets` on the running plain stack: every generated secret gets a
   new value, the old ones stop working everywhere (Kafka, PostgreSQL, the registry, the Dagster
   proxy, the writer token) and the new ones work; the stack comes back with TLS on.
2. TLS, once end to end: Kafka's client listener is SASL_SSL, the registry's and Dagster's fronts
   HTTPS only, every client verifies them by the local CA (`reviews status` probes them all), a
   cleartext or unverifying client is refused, and a review posted to the API is counted by
   the statistics the read API serves: the API, both workers and Connect's sink over TLS.

Then the stack as it was (plain): `make down && make up`; only `make down` when `make test`
stops the stack after the suite anyway (STACK_DOWN_AFTER=1).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from streaming.core.review_mapping import json_to_review
from streaming.settings import (
    Settings,
    dagster_verify,
    read_env_file,
    registry_client_config,
    registry_verify,
)
from tests.integration.test_bad_input import ITEM, unique_id, valid_review_id

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "stack" / "stack.sh"
SECRETS = ROOT / ".stack" / "secrets"


def stack(*args: str, tls: bool, timeout: int = 840) -> None:
    env = {**os.environ, "STACK_APPS": os.environ.get("STACK_APPS", str(ROOT / "services.conf"))}
    env["STACK_TLS"] = "1" if tls else "0"
    done = subprocess.run(
        [str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]


def generated(with_tls: bool) -> dict[str, str]:
    """Every secret file of the running stack (derived files included) -> its content. The TLS
    files count only when the running stack uses them (a plain stack may keep an earlier TLS
    run's, which rotation removes)."""
    return {
        str(p.relative_to(SECRETS)): p.read_text()
        for p in sorted(SECRETS.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and (with_tls or p.parent.name != "tls")
    }


@dataclass(frozen=True)
class Rotated:
    before: dict[str, str]
    after: dict[str, str]
    env: dict[str, str]  # the rotated stack's .stack/env over the suite's environment


@pytest.fixture(scope="module")
def rotated_into_tls() -> Iterator[Rotated]:
    before = generated(with_tls=False)
    try:
        stack("rotate", tls=True)
        env = {**os.environ, **read_env_file(ROOT / ".stack" / "env")}
        yield Rotated(before, generated(with_tls=True), env)
    finally:
        stack("down", tls=True)
        if os.environ.get("STACK_DOWN_AFTER") != "1":  # `make test` stops the stack it started
            stack("up", tls=False)


def kafka_login_works(env: dict[str, str], password: str) -> bool:
    config = Settings.from_env(env).kafka_config(log_level=0)
    config["sasl.password"] = password
    try:
        AdminClient(config).list_topics(timeout=10)
    except KafkaException:
        return False
    return True


def postgres_login_works(env: dict[str, str], password: str) -> bool:
    url = sa.make_url(Settings.from_env(env).database_url).set(password=password)
    engine = sa.create_engine(url, connect_args={"passfile": os.devnull, "connect_timeout": 5})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def status(url: str, verify: ssl.SSLContext | bool, **kwargs: object) -> int:
    return httpx.get(url, timeout=10, verify=verify, **kwargs).status_code  # type: ignore[arg-type]  # httpx's own keyword arguments


@pytest.mark.last(phase=2)
@pytest.mark.timeout(1800)
def test_every_generated_secret_is_replaced_and_the_old_ones_stop_working(
    rotated_into_tls: Rotated,
) -> None:
    before, after, env = rotated_into_tls.before, rotated_into_tls.after, rotated_into_tls.env
    assert set(before) <= set(after), "every secret is made anew"
    unchanged = [name for name in before if before[name] == after[name]]
    assert unchanged == [], f"not rotated: {unchanged}"
    stack_env = {**env, "STACK_TLS": "1"}
    assert subprocess.run([str(STACK), "status"], env=stack_env).returncode == 0

    def old(name: str) -> str:
        return before[name].strip()

    def new(name: str) -> str:
        return after[name].strip()

    assert not kafka_login_works(env, old("kafka/operator"))
    assert kafka_login_works(env, new("kafka/operator"))
    assert not postgres_login_works(env, old("postgres-password"))
    assert postgres_login_works(env, new("postgres-password"))
    registry, verify = env["SCHEMA_REGISTRY_URL"] + "/subjects", registry_verify(env)
    user = env["SCHEMA_REGISTRY_USER"]
    assert status(registry, verify, auth=(user, old("registry-writer-password"))) == 401
    assert status(registry, verify, auth=(user, new("registry-writer-password"))) == 200
    dagster, verify = env["DAGSTER_URL"] + "/server_info", dagster_verify(env)
    dagster_user = env["DAGSTER_USER"]
    assert status(dagster, verify, auth=(dagster_user, old("dagster-password"))) == 401
    assert status(dagster, verify, auth=(dagster_user, new("dagster-password"))) == 200
    reviews = env["PIPELINE_API_URL"] + "/reviews"
    refused = httpx.post(
        reviews, json={}, headers={"Authorization": f"Bearer {old('pipeline-api-token')}"}
    )
    assert refused.status_code == 401
    token = new("pipeline-api-token")
    checked = httpx.post(reviews, json={}, headers={"Authorization": f"Bearer {token}"})
    assert checked.status_code == 422  # let in, then the empty body refused on its merits


def counted(api_url: str, course_id: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.get(f"{api_url}/courses/{course_id}/stats", timeout=10)
        all_time = answer.json().get("all_time") if answer.status_code == 200 else None
        if all_time is not None and all_time["count_reviews"] == 1:  # each table in its time
            return 1
        time.sleep(0.5)  # the stream's latency: poll interval, not a wait for readiness
    return 0


@pytest.mark.last(phase=2)
@pytest.mark.timeout(1800)
def test_the_stack_over_tls_end_to_end(rotated_into_tls: Rotated) -> None:
    env = rotated_into_tls.env
    ca = env["STACK_CA_FILE"]
    assert "security.protocol=SASL_SSL" in env["KAFKA_SECURITY_CONFIG"]
    settings = Settings.from_env(env)
    AdminClient(settings.kafka_config()).list_topics(timeout=15)  # the CA-verified login
    cleartext = settings.kafka_config(log_level=0)
    cleartext["security.protocol"] = "SASL_PLAINTEXT"
    cleartext.pop("ssl.ca.location")
    with pytest.raises(KafkaException):
        AdminClient(cleartext).list_topics(timeout=5)

    # the registry's and Dagster's fronts: HTTPS verified by the local CA, nothing else
    registry_url, dagster_url = env["SCHEMA_REGISTRY_URL"], env["DAGSTER_URL"]
    assert registry_url.startswith("https://") and dagster_url.startswith("https://")
    assert env["SCHEMA_REGISTRY_CA_FILE"] == ca and env["DAGSTER_CA_FILE"] == ca
    registry = SchemaRegistryClient(registry_client_config(registry_url, env))
    assert "udemy-reviews-value" in registry.get_subjects()
    for url in (f"{registry_url}/subjects", f"{dagster_url}/server_info"):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, timeout=10)  # the system's trust store does not know the local CA
        cleartext_answer = httpx.get(url.replace("https://", "http://", 1), timeout=10)
        assert cleartext_answer.status_code == 400  # nginx: plain HTTP to an HTTPS port
    reviews_status = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "reviews"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reviews_status.returncode == 0, reviews_status.stdout + reviews_status.stderr

    course_id = unique_id()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def item(review_id: int) -> dict:
        course = {**ITEM["course"], "id": course_id}
        return {**ITEM, "id": review_id, "created": now, "modified": now, "course": course}

    posted = item(valid_review_id(lambda i: json_to_review(item(i))))
    token = Path(env["PIPELINE_API_TOKEN_FILE"]).read_text().strip()
    answer = httpx.post(
        f"{env['PIPELINE_API_URL']}/reviews",
        json=posted,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    assert counted(env["PIPELINE_API_URL"], course_id) == 1, "counted through the sink"
