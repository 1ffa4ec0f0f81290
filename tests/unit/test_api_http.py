"""The pipeline API's HTTP surface without Kafka: its app, through FastAPI's TestClient, with the
lifespan (which starts the producer) not run and the state it sets given by hand."""

from __future__ import annotations

import logging

import pytest
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
