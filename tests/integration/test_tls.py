"""Kafka over TLS, once end to end: the stack restarted with KAFKA_TLS=1 (a local CA, the client
listener SASL_SSL), a review posted to the API counted by the statistics the read API serves:
the API, both workers and Connect's sink all talked to Kafka over TLS. Then the stack as it
was. Runs after everything else: it restarts the whole stack twice."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streaming.config import Settings, read_env_file
from streaming.core.review_mapping import json_to_review
from tests.integration.test_bad_input import ITEM, unique_id, valid_review_id

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "stack" / "stack.sh"


def stack(*args: str, tls: bool) -> None:
    env = {**os.environ, "STACK_APPS": os.environ.get("STACK_APPS", str(ROOT / "services.conf"))}
    env["KAFKA_TLS"] = "1" if tls else "0"
    done = subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def counted(api_url: str, course_id: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.get(f"{api_url}/courses/{course_id}/stats", timeout=10)
        all_time = answer.json().get("all_time") if answer.status_code == 200 else None
        if all_time is not None and all_time["count_reviews"] == 1:  # each table in its time
            return 1
        time.sleep(0.5)  # the stream's latency: poll interval, not a wait for readiness
    return 0


@pytest.mark.last(phase=3)
@pytest.mark.timeout(1500)
def test_kafka_over_tls_end_to_end() -> None:
    stack("down", tls=False)
    stack("up", tls=True)
    try:
        env = {**os.environ, **read_env_file(ROOT / ".stack" / "env")}
        assert "security.protocol=SASL_SSL" in env["KAFKA_SECURITY_CONFIG"]
        settings = Settings.from_env(env)
        AdminClient(settings.kafka_config()).list_topics(timeout=15)  # the CA-verified login
        cleartext = settings.kafka_config(log_level=0)
        cleartext["security.protocol"] = "SASL_PLAINTEXT"
        cleartext.pop("ssl.ca.location")
        with pytest.raises(KafkaException):
            AdminClient(cleartext).list_topics(timeout=5)

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
    finally:
        stack("down", tls=True)
        stack("up", tls=False)
