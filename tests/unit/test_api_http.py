"""The pipeline API's HTTP surface without Kafka: its app, through FastAPI's TestClient, with the
lifespan (which starts the producer) not run and the state it sets given by hand."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from confluent_kafka import KafkaError
from fastapi.testclient import TestClient

from streaming.api import ingest
from streaming.api.app import create_app

TOKEN = "a-writer-token-of-32-characters!"
LOCAL = "http://localhost"  # a trusted Host (ALLOWED_HOSTS); TestClient's own is not


@pytest.fixture
def api() -> TestClient:
    app = create_app(writer_token=TOKEN)
    app.state.writer_token = TOKEN
    app.state.kafka = ingest.KafkaLink()
    return TestClient(app, base_url=LOCAL)  # not entered as a context: no lifespan, no Kafka


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer \xe9\xe9",
        b"Bearer \xff\xfe\x00",
        b"Basic \xe9\xe9",
        b"Basic " + b"\xe9" * 40,
        b"Bearer",
        b"Bearer ",
        b"\xe9",
        TOKEN.encode(),
        b"Bearer " + TOKEN.encode() + b"\xe9",
    ],
)
def test_a_malformed_authorization_header_is_a_401_with_the_reason(
    api: TestClient, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    response = api.post("/reviews", headers={"Authorization": header}, json={})
    assert response.status_code == 401
    assert "Authorization: Bearer <token>" in response.json()["detail"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_health_says_ok_and_nothing_about_the_process(api: TestClient) -> None:
    api.app.state.kafka.on_stats(json.dumps({"brokers": {"b0": {"nodeid": 0, "state": "UP"}}}))
    response = api.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_health_of_a_kafka_down_gives_our_reason_not_the_broker_s_text(api: TestClient) -> None:
    link: ingest.KafkaLink = api.app.state.kafka
    link.on_error(
        KafkaError(KafkaError._ALL_BROKERS_DOWN, "kafka-0.internal:9092/0: Connect refused")
    )
    link.on_stats(json.dumps({"brokers": {"b0": {"nodeid": 0, "state": "DOWN"}}}))
    response = api.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "kafka": "no Kafka broker reachable"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_nothing_from_another_host(api: TestClient, page: str) -> None:
    response = api.get(page)
    assert response.status_code == 200
    html = response.text
    assert "https://" not in html and "http://" not in html and "//cdn" not in html
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets), html
    for asset in assets:
        assert api.get(asset).status_code == 200, asset
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_a_client_gone_before_its_body_stores_nothing_and_logs_no_error(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A load generator stopping mid-request: the body never arrives. Nothing is produced (the
    app has no producer here: reaching it would raise), no traceback is logged."""
    head = [
        (b"host", b"localhost"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {TOKEN}".encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/reviews",
        "raw_path": b"/reviews",
        "query_string": b"",
        "headers": head,
        "client": ("127.0.0.1", 5000),
        "server": ("localhost", 80),
    }
    events = iter([{"type": "http.request", "body": b'{"id": 1', "more_body": True}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(events, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO):
        asyncio.run(api.app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("disconnected before its body" in r.getMessage() for r in caplog.records)
