"""Ingestion on the real stack: POST /reviews -> Kafka, the backfill, Kafka unavailable."""

from __future__ import annotations

import uuid

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from streaming.api import app as api_app
from streaming.api.auth import TOKEN_FILE_ENV, TokenError, bearer
from streaming.core.review_mapping import json_to_review
from streaming.ingest.backfill import backfill_course
from streaming.ingest.producer import ReviewProducer
from streaming.serde import Registry, decode, local_schema
from streaming.source.catalogue import Catalogue
from streaming.source.client import UdemyClient
from streaming.source.generator import DEFAULT_SPEC, SampleSpec, generate
from streaming.source.server import create_app as create_source_app
from tests.integration.kafka_helpers import delete_topics, make_topics, read_all

pytestmark = pytest.mark.integration
REVIEW = local_schema("review.avsc")
ITEM = {
    "_class": "course_review",
    "id": 6225498,
    "title": "",
    "content": "Très bien expliqué 👍 '; drop table reviews; --",
    "rating": 4.0,
    "created": "2017-03-30T20:13:54Z",
    "modified": "2017-03-31T21:23:04Z",
    "user": {
        "_class": "user",
        "title": "Renato Dias Santana",
        "name": "Renato Dias",
        "display_name": "Renato Dias Santana",
    },
    "course": {
        "_class": "course",
        "id": 1075642,
        "title": "Apache Kafka Series",
        "url": "/apache-kafka/",
    },
}

LOCAL = "http://localhost"  # a trusted Host (ALLOWED_HOSTS); TestClient's own is not


TOKEN = "test-writer-token-0123456789"


def writer(settings, **kwargs) -> TestClient:
    """The API with a known writer token, and a client that sends it."""
    app = api_app.create_app(settings, writer_token=TOKEN, **kwargs)
    return TestClient(app, headers=bearer(TOKEN), base_url=LOCAL)


class AppTransport(httpx.BaseTransport):
    """The source app served in-process: httpx requests answered by FastAPI's TestClient."""

    def __init__(self, app) -> None:
        self.api = TestClient(app, base_url=LOCAL)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        a = self.api.request(request.method, str(request.url), headers=request.headers)
        return httpx.Response(a.status_code, headers=a.headers, content=a.content)


def read_at(settings, topic: str, partition: int, offset: int):
    c = Consumer(
        settings.kafka_config(
            **{"group.id": f"t-{uuid.uuid4().hex}", "isolation.level": "read_committed"}
        )
    )
    c.assign([TopicPartition(topic, partition, offset)])
    try:
        msg = c.consume(1, timeout=10)[0]
    finally:
        c.close()
    return msg


def test_post_review_is_in_kafka_when_answered(settings):
    with writer(settings) as client:
        answer = client.post("/reviews", json=ITEM)
    assert answer.status_code == 201, answer.text
    where = answer.json()
    msg = read_at(settings, where["topic"], where["partition"], where["offset"])
    assert msg.key() == b"6225498"
    got = decode(Registry(settings.schema_registry_url), msg.value(), REVIEW)
    expected = json_to_review(ITEM)
    assert got["content"] == expected["content"]
    assert got["rating"] == "4.0"
    assert int(got["modified"].timestamp() * 1000) == expected["modified"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({**ITEM, "rating": 4.2}, 422, "rating"),
        ({**ITEM, "id": -3}, 422, "id"),
        ({**ITEM, "created": "yesterday"}, 422, "created"),
        ({k: v for k, v in ITEM.items() if k != "course"}, 422, "course"),
        ({**ITEM, "user": {"name": "x"}}, 422, "user"),
    ],
)
def test_invalid_reviews_get_the_field_and_the_reason(settings, body, status, field):
    with writer(settings) as client:
        answer = client.post("/reviews", json=body)
    assert answer.status_code == status, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"][1] == field and error["msg"]


def test_not_json_and_oversized_bodies_are_refused(settings):
    with writer(settings) as client:
        json_type = {"content-type": "application/json"}
        assert client.post("/reviews", content=b"{not json", headers=json_type).status_code == 400
        big = {**ITEM, "content": "x" * 70_000}
        assert client.post("/reviews", json=big).status_code == 413


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"],
)
def test_writing_needs_the_writer_token(settings, authorization):
    with TestClient(api_app.create_app(settings, writer_token=TOKEN), base_url=LOCAL) as client:
        headers = {} if authorization is None else {"Authorization": authorization}
        answer = client.post("/reviews", json=ITEM, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert "writer token" in answer.json()["detail"]
        assert client.get("/courses/1075642/stats").status_code in (200, 404)  # public


def test_a_body_without_a_json_content_type_is_refused(settings):
    with writer(settings) as client:
        answer = client.post("/reviews", content=b"{}")
    assert answer.status_code == 415
    assert "application/json" in answer.json()["detail"]


def test_the_api_does_not_start_without_a_writer_token(settings, monkeypatch):
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    with (
        pytest.raises(TokenError, match=TOKEN_FILE_ENV),
        TestClient(api_app.create_app(settings), base_url=LOCAL),
    ):
        pass


def test_kafka_unavailable_is_a_503_with_retry_after(settings):
    nowhere = settings.replace(kafka_bootstrap_servers="127.0.0.1:1")
    with writer(nowhere, ack_timeout_s=2) as client:
        answer = client.post("/reviews", json=ITEM)
        health = client.get("/health")  # the producer's statistics came in meanwhile (1 s)
    assert health.status_code == 503, health.text
    assert health.json()["kafka"].startswith("no Kafka broker reachable")
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    assert "nothing was stored" in answer.json()["detail"]


def test_openapi_documents_post_reviews(settings):
    with writer(settings) as client:
        spec = client.get("/openapi.json").json()
        assert "/reviews" in spec["paths"]
        assert client.get("/docs").status_code == 200


def test_backfill_puts_every_review_of_a_course_in_kafka_once(settings, admin):
    sample = generate(SampleSpec(**{**DEFAULT_SPEC.__dict__, "reviews": 3000, "courses": 3}))
    catalogue = Catalogue(sample)
    course = max(sample.courses, key=lambda c: catalogue.review_count(c.id))
    source = create_source_app(catalogue, client_id="id", client_secret="secret")
    topics = make_topics(admin, "bf", ["reviews", "dlq"])
    try:
        client = UdemyClient(
            "http://localhost/api-2.0", "id", "secret", transport=AppTransport(source)
        )
        producer = ReviewProducer(settings, topic=topics["reviews"])
        result = backfill_course(
            course.id, source_client=client, producer=producer, dead_letter_topic=topics["dlq"]
        )
        expected = {r["id"] for r in sample.reviews(course.id)}
        got = read_all(settings, topics["reviews"])
        assert result.reviews == len(expected) == len(got)
        assert {int(m.key()) for m in got} == expected
        assert sum(result.offsets.values()) + len(result.offsets) == len(got)
    finally:
        delete_topics(admin, list(topics.values()))
