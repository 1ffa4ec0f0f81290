"""The foundation against the real stack: Kafka, the registry, Connect and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.admin import SCHEMAS_DIR, load_topic_specs
from streaming.serde import Registry, decode, local_schema
from streaming.settings import Settings
from tests.integration.kafka_helpers import AvroEncoder

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

REVIEW = {
    "id": 6225498,
    "title": None,
    "content": "Très bien expliqué 👍",
    "rating": "4.5",
    "created": 1490907234000,
    "modified": 1490994184000,
    "user": {
        "title": "Renato Dias Santana",
        "name": "Renato Dias",
        "display_name": "Renato Dias Santana",
    },
    "course": {
        "id": 1075642,
        "title": "Apache Kafka Series - Learn Apache Kafka for Beginners",
        "url": "/apache-kafka-series-kafka-from-beginner-to-intermediate/",
    },
}


def _consume_all(settings: Settings, topic: str, isolation: str, expect: int) -> list:
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "isolation.level": isolation,
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    got, idle = [], 0
    try:
        while idle < 6 and len(got) < expect + 1:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                continue
            assert msg.error() is None, msg.error()
            got.append(msg)
    finally:
        consumer.close()
    return got


def test_avro_round_trip_through_registry(settings, registry, temp_topic):
    codec_registry = Registry(settings.schema_registry_url)
    encoder = AvroEncoder(codec_registry, f"{temp_topic}-value", "review.avsc")
    value = encoder.encode(REVIEW)
    assert value[0] == 0  # Confluent wire format: magic byte, then the 4-byte schema id
    schema_id = int.from_bytes(value[1:5], "big")
    assert schema_id == encoder.schema_id
    assert json.loads(registry.get_schema(schema_id).schema_str)["name"] == "Review"

    producer = Producer(settings.kafka_config())
    producer.produce(temp_topic, key=str(REVIEW["id"]).encode(), value=value)
    assert producer.flush(30) == 0
    (msg,) = _consume_all(settings, temp_topic, "read_committed", 1)
    # a fresh Registry: the writer schema really comes from the registry, not a local cache
    fresh = Registry(settings.schema_registry_url)
    decoded = decode(fresh, msg.value(), local_schema("review.avsc"))
    assert decoded["id"] == REVIEW["id"]
    assert decoded["content"] == REVIEW["content"]
    assert decoded["course"] == REVIEW["course"]
    assert msg.key() == b"6225498"
    registry.delete_subject(f"{temp_topic}-value", permanent=False)


def test_aborted_transaction_is_invisible_to_read_committed(settings, temp_topic):
    producer = Producer(settings.kafka_config(**{"transactional.id": f"test-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(temp_topic, key=b"k", value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(temp_topic, key=b"k", value=b"committed")
    producer.commit_transaction(30)

    committed = _consume_all(settings, temp_topic, "read_committed", 1)
    assert [m.value() for m in committed] == [b"committed"]
    uncommitted = _consume_all(settings, temp_topic, "read_uncommitted", 2)
    assert [m.value() for m in uncommitted] == [b"aborted", b"committed"]


def test_declared_topics_exist_with_their_configs(admin: AdminClient):
    specs = load_topic_specs()
    metadata = admin.list_topics(timeout=10).topics
    for spec in specs:
        assert spec.name in metadata, spec.name
        assert len(metadata[spec.name].partitions) == spec.partitions
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs]
    configs = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    for topic in ("long-term-stats", "recent-stats"):
        assert configs[topic]["cleanup.policy"].value == "compact"
    for topic in ("udemy-reviews", "udemy-reviews-valid", "udemy-reviews-fraud"):
        assert configs[topic]["retention.ms"].value == "-1"
        assert configs[topic]["cleanup.policy"].value == "delete"


def test_value_schemas_registered_with_their_declared_compatibility(
    registry: SchemaRegistryClient,
):
    for spec in load_topic_specs():
        if spec.value_schema:
            subject = f"{spec.name}-value"
            assert registry.get_latest_version(subject).schema_id > 0
            assert registry.get_compatibility(subject) == spec.compatibility


def test_incompatible_schema_is_refused(registry: SchemaRegistryClient):
    schema = json.loads((SCHEMAS_DIR / "review.avsc").read_text())
    schema["fields"].append({"name": "language", "type": "string"})  # required, no default
    before = registry.get_versions("udemy-reviews-value")
    assert (
        registry.test_compatibility("udemy-reviews-value", Schema(json.dumps(schema), "AVRO"))
        is False
    )
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema("udemy-reviews-value", Schema(json.dumps(schema), "AVRO"))
    assert refused.value.http_status_code == 409
    assert registry.get_versions("udemy-reviews-value") == before

    schema["fields"][-1] = {"name": "language", "type": ["null", "string"], "default": None}
    assert registry.test_compatibility("udemy-reviews-value", Schema(json.dumps(schema), "AVRO"))


def test_connect_lists_the_jdbc_sink_and_the_avro_converter(settings: Settings):
    plugins = httpx.get(
        f"{settings.connect_url}/connector-plugins",
        params={"connectorsOnly": "false"},
        auth=settings.connect_auth(),
        timeout=10,
    )
    plugins.raise_for_status()
    classes = {p["class"] for p in plugins.json()}
    assert "io.debezium.connector.jdbc.JdbcSinkConnector" in classes
    assert "io.apicurio.registry.utils.converter.AvroConverter" in classes


def test_postgres_answers_through_sqlalchemy(settings: Settings):
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select current_database(), 6 * 7")).one() == ("reviews", 42)
    engine.dispose()


def _stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "stack" / "stack.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
    )


def test_a_killed_service_is_restarted_by_its_supervisor_and_status_says_so_meanwhile():
    # precondition: every service healthy (a supervisor may be restarting a worker right now)
    deadline = time.monotonic() + 120
    while (before := _stack("status")).returncode != 0:
        assert time.monotonic() < deadline, before.stdout
        time.sleep(1)  # poll interval
    pid = int((ROOT / ".stack" / "run" / "registry.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    status = _stack("status")
    assert status.returncode == 1
    assert re.search(r"^registry\s+DOWN", status.stdout, re.M), status.stdout
    deadline = time.monotonic() + 180
    while (after := _stack("status")).returncode != 0:  # no `up`: the supervisor restarts it
        assert time.monotonic() < deadline, after.stdout
        time.sleep(1)  # poll interval
    assert re.search(r"^registry\s+healthy", after.stdout, re.M), after.stdout
    record = json.loads((ROOT / ".stack" / "run" / "registry.json").read_text())
    assert record["restarts"][-1]["pid"] == pid
    assert record["restarts"][-1]["exit"] == "killed by SIGKILL"
    up = _stack("up")  # idempotent: nothing to start
    assert up.returncode == 0, up.stderr
    assert "starting" not in up.stderr, up.stderr


def test_the_writer_token_is_a_private_file_and_the_live_api_wants_it():
    """`make up` generated the token (mode 0600) and `.stack/env` (0600), which names the file
    and holds no token; the running API refuses a POST without it, takes one with it."""
    root = Path(__file__).resolve().parents[2]
    token_file = Path(os.environ["PIPELINE_API_TOKEN_FILE"])
    for path in (token_file, root / ".stack" / "env"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    token = token_file.read_text().strip()
    assert token not in (root / ".stack" / "env").read_text()
    assert token not in "".join(os.environ.values())
    url = f"{os.environ['PIPELINE_API_URL']}/reviews"
    review = {
        "id": 9_000_000_000 + uuid.uuid4().int % 10**9,
        "rating": 5,
        "created": "2026-01-01T00:00:00Z",
        "modified": "2026-01-01T00:00:00Z",
        "user": {"title": "T", "name": "T", "display_name": "T"},
        "course": {"id": 9_100_000_001, "title": "Token test", "url": "/t/"},
    }
    refused = httpx.post(url, json=review, timeout=30)
    assert refused.status_code == 401, refused.text
    taken = httpx.post(url, json=review, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert taken.status_code == 201, taken.text


def test_every_long_running_process_of_ours_serves_prometheus_metrics():
    """The APIs count requests per route; each worker instance its records, transactions and
    lag (the stack's health ports); every /health says ok while Kafka is reachable."""
    env = os.environ
    api = env["PIPELINE_API_URL"]
    assert httpx.get(f"{api}/health", timeout=10).json()["status"] == "ok"
    httpx.get(f"{api}/courses", timeout=10)
    text = httpx.get(f"{api}/metrics", timeout=10).text
    assert 'http_requests_total{handler="/courses"' in text
    assert "http_request_duration_seconds_bucket" in text
    source = env["UDEMY_API_URL"].removesuffix("/api-2.0")
    assert "http_requests_total" in httpx.get(f"{source}/metrics", timeout=10).text
    for worker in ("FRAUD_FILTER", "AGGREGATOR"):
        base, n = int(env[f"{worker}_HEALTH_PORT"]), int(env[f"{worker}_INSTANCES"])
        for i in range(n):
            text = httpx.get(f"http://127.0.0.1:{base + i}/metrics", timeout=10).text
            for name in (
                "reviews_worker_records_in_total",
                "reviews_worker_transactions_committed_total",
                "reviews_worker_commit_seconds_bucket",
                "reviews_worker_status",
            ):
                assert f"{name}{{" in text, (worker, i, name)
            assert f'instance="{i}"' in text
    rebound = httpx.get(f"{api}/health", headers={"Host": "rebound.example"}, timeout=10)
    assert rebound.status_code == 400
