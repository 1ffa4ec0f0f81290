"""Bad input on the real stack: nothing a client or a producer sends breaks the pipeline.

- `POST /reviews` fuzzed from its own OpenAPI spec (schemathesis), served by uvicorn over real
  HTTP with a real Kafka producer (into a temporary topic: the fuzzer's reviews stay out of the
  pipeline's data): never a 5xx, every rejection says which field and why, and every 201 is in
  Kafka at the place it named. Hand-written cases next to it for what a generator rarely hits.
- Text full of SQL, quotes, control characters, emoji and RTL marks, posted through the API into
  `udemy-reviews`, comes back verbatim from Kafka, from the sink's `reviews` table and from the
  read API.
- Poison records straight into the input topics of the workers the stack runs: each ends in
  `reviews-dead-letter` (and, on `udemy-reviews`, in Connect's `connect-dead-letter`) with its
  cause and coordinates in headers, while a review produced right behind it still comes through.
- A record near the topics' size limit, through workers and a sink connector started from the
  committed code and configs on temporary topics declared like the real ones.
- The registry refuses incompatible schemas for every subject (409).

Unique review and course ids (large, random) keep the shared topics' data undisturbed.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg2.errors
import pytest
import schemathesis
import sqlalchemy as sa
import uvicorn
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from stack import procs
from streaming import pipeline
from streaming.admin import SCHEMAS_DIR, load_topic_specs
from streaming.api.app import create_app
from streaming.api.auth import bearer
from streaming.api.ingest import MAX_BODY_BYTES
from streaming.api.read import get_engine, router
from streaming.core import source_position
from streaming.core.avro_codec import confluent_frame
from streaming.core.fraud import HashFraudModel
from streaming.core.review_mapping import ReviewMappingError, json_to_review, parse_timestamp
from streaming.serde import Registry, decode, local_schema
from streaming.settings import Settings
from streaming.sink.connect import ConnectClient
from tests.integration import test_sink as sink_tests
from tests.integration.kafka_helpers import (
    delete_topics,
    encode_review,
    free_port,
    make_topics,
    read_all,
    review,
    worker_process,
)
from tests.integration.test_fraud_filter import worker_env
from tests.integration.test_read_api import SINK_DDL, schema_engine, stat
from tests.integration.test_sink import REVIEW_COLUMNS, Sink
from tests.integration.test_stats_aggregator import env_for

pytestmark = pytest.mark.integration
# the sink tests' fixtures: temporary connectors of the committed configs, removed afterwards
connect, db, sink = sink_tests.connect, sink_tests.db, sink_tests.sink

REVIEW = local_schema("review.avsc")
STAT = local_schema("course_statistic.avsc")
PACE_S = 30.0
"""How long a review produced right behind poison may take to come out the other end. Measured
(README): POST -> PostgreSQL p99 0.4 s, the workers commit every 100 ms; the shared 2-core
machine runs 5-10x slower under load. 30 s is what the supervisor allows a silent loop before it
calls the worker stalled: a worker that chokes on poison, or crashes and is restarted, misses it."""
POLL_S = 0.2
UNKNOWN_SCHEMA_ID = 2**31 - 2
TOKEN = "bad-input-writer-token-0123"
WRITER = bearer(TOKEN)
FUZZ_EXAMPLES = 150
READ_FUZZ_EXAMPLES = 40

LOCAL = "http://localhost"  # a trusted Host (ALLOWED_HOSTS); TestClient's own is not


def unique_id() -> int:
    """A review or course id of our own: the sample's and the other tests' stay below 2**31."""
    return random.randrange(2**55, 2**62)


def sink_rows(engine: sa.Engine, query: sa.TextClause, params: dict[str, Any]) -> list[tuple]:
    """Rows of a sink table; none while the sink has not created the table (a fresh stack)."""
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query, params)]
    except sa.exc.ProgrammingError as exc:
        if isinstance(exc.orig, psycopg2.errors.UndefinedTable):
            return []
        raise


def eventually(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float) -> Any:
    """Poll `fetch` until `done(result)`; the last result either way (the caller asserts)."""
    deadline = time.monotonic() + timeout_s
    while not done(got := fetch()) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return got


# -- the API served over real HTTP, into a temporary topic -------------------------------------
@dataclass
class ServedApi:
    url: str
    topic: str


def serve(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    """uvicorn in a thread on a free port, running the app's lifespan (its Kafka producer)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="api-under-test")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)  # poll interval
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def api(
    settings: Settings, admin: AdminClient, registry: SchemaRegistryClient
) -> Iterator[ServedApi]:
    topic = make_topics(admin, "badinput", ["reviews"])["reviews"]
    server, thread, url = serve(create_app(settings, topic=topic, writer_token=TOKEN))
    yield ServedApi(url, topic)
    server.should_exit = True
    thread.join(30)
    delete_topics(admin, [topic])
    registry.delete_subject(f"{topic}-value")
    registry.delete_subject(f"{topic}-value", permanent=True)


def rejection_explains_itself(ctx: Any, response: Any, case: Any) -> None:
    """A schemathesis check: every 4xx names what is wrong. 422: `detail` is a list of
    {loc, msg}, loc naming where (body/path/query and the field); others: a non-empty sentence."""
    if not 400 <= response.status_code < 500:
        return
    detail = response.json()["detail"]
    if response.status_code == 422:
        assert isinstance(detail, list) and detail, detail
        for error in detail:
            assert error["loc"][0] in ("body", "path", "query"), error
            assert len(error["loc"]) >= 2 or error["loc"] == ["body"], error
            assert isinstance(error["msg"], str) and error["msg"].strip(), error
    else:
        assert isinstance(detail, str) and len(detail) > 10, detail


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    rejection_explains_itself,
]
# the spec is read offline: building the app does not start its Kafka producer
SPEC = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
MODES = st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def past_unstated_rules(case: schemathesis.Case) -> None:
    """Two rules JSON Schema cannot state stop most schema-valid bodies at their first 422:
    `modified` not before `created`, and ids written as integers (JSON Schema counts 6225498.0
    as one; the API refuses it, as a float id past 2**53 is silently another id). Bring those
    bodies in line so the fuzzer reaches everything behind them."""
    body = case.body
    if not isinstance(body, dict):
        return
    for holder in (body, body.get("course")):
        if isinstance(holder, dict) and isinstance(holder.get("id"), float):
            holder["id"] = int(holder["id"])
    try:
        if parse_timestamp(body["modified"], "") < parse_timestamp(body["created"], ""):
            body["created"], body["modified"] = body["modified"], body["created"]
    except (KeyError, ReviewMappingError):
        pass


def test_post_reviews_fuzzed_from_its_openapi_spec(api: ServedApi, settings: Settings) -> None:
    """Schema-valid and schema-invalid bodies alike: no 5xx, a reason for every refusal, and
    exactly the reviews answered 201 are in Kafka, where the answers said."""
    operation = SPEC["/reviews"]["POST"]
    accepted: set[tuple[int, int]] = set()

    @fuzzing(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        mode = data.draw(MODES)
        case = data.draw(operation.as_strategy(mode))
        if mode is GenerationMode.POSITIVE:
            past_unstated_rules(case)
        response = case.call(base_url=api.url, headers=WRITER)
        case.validate_response(response, checks=CHECKS)
        if response.status_code == 201:
            where = response.json()
            assert where["topic"] == api.topic
            accepted.add((where["partition"], where["offset"]))

    fuzz()
    assert accepted, "the fuzzer never produced an acceptable review"
    stored = {(m.partition(), m.offset()) for m in read_all(settings, api.topic)}
    assert stored == accepted


def test_read_api_fuzzed_from_its_openapi_spec(api: ServedApi) -> None:
    """The statistics endpoints, over the sink's real tables: no 5xx, reasons for 404/422."""
    operations = [SPEC["/courses/{course_id}/stats"]["GET"], SPEC["/courses"]["GET"]]

    @fuzzing(max_examples=READ_FUZZ_EXAMPLES, deadline=None)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        operation = data.draw(st.sampled_from(operations))
        case = data.draw(operation.as_strategy(data.draw(MODES)))
        case.validate_response(case.call(base_url=api.url), checks=CHECKS)

    fuzz()


ITEM: dict[str, Any] = {
    "_class": "course_review",
    "id": 6225498,
    "title": "",
    "content": "",
    "rating": 4.0,
    "created": "2017-03-30T20:13:54Z",
    "modified": "2017-03-31T21:23:04Z",
    "user": {"_class": "user", "title": "R D S", "name": "R D", "display_name": "R D S"},
    "course": {"_class": "course", "id": 1075642, "title": "Kafka", "url": "/kafka/"},
}
TEXT_FIELDS = (
    "title",
    "content",
    "user.title",
    "user.name",
    "user.display_name",
    "course.title",
    "course.url",
)


def with_value(path: str, value: object) -> dict[str, Any]:
    item = json.loads(json.dumps(ITEM))
    *parents, leaf = path.split(".")
    target = item
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    return item


def body(item: dict[str, Any]) -> bytes:
    return json.dumps(item, ensure_ascii=False).encode()


def raw_rating(token: str) -> bytes:
    """The example with its rating written as a raw JSON token (NaN, 1e400: not Python floats)."""
    return body(ITEM).replace(b'"rating": 4.0', b'"rating": ' + token.encode())


JSON = {"content-type": "application/json", **WRITER}


UNREADABLE: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    # not JSON, or JSON that orjson (RFC 8259) refuses: 400 with the parser's reason
    "empty": (b"", JSON, 400, "zero-length"),
    "byte order mark": (b"\xef\xbb\xbf" + body(ITEM), JSON, 400, "byte order mark"),
    "invalid UTF-8": (b'{"id": \xff}', JSON, 400, "not valid UTF-8"),
    "two documents": (body(ITEM) + b"{}", JSON, 400, "unexpected content after document"),
    "nested arrays": (b"[" * 5000 + b"]" * 5000, JSON, 400, "depth limit"),
    "nested objects": (b'{"a":' * 2000 + b"1" + b"}" * 2000, JSON, 400, "depth limit"),
    "NaN": (raw_rating("NaN"), JSON, 400, "not valid JSON"),
    "Infinity": (raw_rating("Infinity"), JSON, 400, "not valid JSON"),
    "-Infinity": (raw_rating("-Infinity"), JSON, 400, "not valid JSON"),
    "1e400": (raw_rating("1e400"), JSON, 400, "infinity"),
    "lone high surrogate": (
        body(ITEM).replace(b'"title": ""', b'"title": "\\ud800"'),
        JSON,
        400,
        "surrogate",
    ),
    "lone low surrogate": (
        body(ITEM).replace(b'"title": ""', b'"title": "\\udc00x"'),
        JSON,
        400,
        "surrogate",
    ),
    # declared as something else: 415, whatever the bytes
    "text/plain": (body(ITEM), {"content-type": "text/plain"}, 415, "text/plain"),
    "form": (body(ITEM), {"content-type": "application/x-www-form-urlencoded"}, 415, "form"),
    "multipart": (body(ITEM), {"content-type": "multipart/form-data; boundary=x"}, 415, "multi"),
    "xml": (body(ITEM), {"content-type": "application/xml"}, 415, "must be application/json"),
    "no content type": (body(ITEM), {}, 415, "must be application/json"),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_bodies_are_refused_with_the_reason(api: ServedApi, case: str) -> None:
    content, headers, status, reason = UNREADABLE[case]
    answer = httpx.post(
        f"{api.url}/reviews", content=content, headers={**WRITER, **headers}, timeout=30
    )
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["detail"]


@pytest.mark.parametrize(
    ("item", "field", "msg"),
    [
        # beyond Avro's long (a signed 64-bit integer)
        (with_value("id", 2**63), "id", "not a positive 64-bit integer"),
        (with_value("id", 2**64 - 1), "id", "not a positive 64-bit integer"),
        (with_value("id", 2**64), "id", "expected an integer"),
        (with_value("id", -(2**63) - 1), "id", "expected an integer"),
        (with_value("id", 10**30), "id", "expected an integer"),
        (with_value("course.id", 2**63), "course", "not a positive 64-bit integer"),
        # ratings out of range or not numbers
        *(
            (with_value("rating", r), "rating", "half step")
            for r in (0, -0.0, 5.5, 6, -1, 4.25, 1e308, "10", "NaN", "Infinity")
        ),
        (with_value("rating", "five"), "rating", "not a number"),
        # U+0000, which PostgreSQL text cannot hold (regression: the reviews sink failed on it)
        *((with_value(f, "a\x00b"), f.split(".")[0], "U+0000") for f in TEXT_FIELDS),
        # timestamps whose UTC instant leaves years 1..9999 (regression: the read API's 500)
        (
            with_value("modified", "9999-12-31T23:59:59-01:00"),
            "modified",
            "outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z",
        ),
        (
            {**ITEM, "created": "0001-01-01T00:00:00+00:01", "modified": "0001-01-02T00:00:00Z"},
            "created",
            "outside",
        ),
    ],
)
def test_invalid_values_name_the_field(
    api: ServedApi, item: dict[str, Any], field: str, msg: str
) -> None:
    answer = httpx.post(f"{api.url}/reviews", content=body(item), headers=JSON, timeout=30)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"][1] == field and msg in error["msg"], error


def test_oversized_bodies_are_refused_even_without_a_length(api: ServedApi) -> None:
    """Chunked, so no Content-Length to refuse up front: the body is cut off while read."""
    big = body(with_value("content", "x" * MAX_BODY_BYTES))

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    answer = httpx.post(f"{api.url}/reviews", content=chunks(), headers=JSON, timeout=30)
    assert answer.status_code == 413
    assert f"over {MAX_BODY_BYTES} bytes" in answer.json()["detail"]


def test_escaped_surrogate_pairs_are_one_character(api: ServedApi, settings: Settings) -> None:
    """A pair of escapes is one astral character (😀)."""
    escaped = body(ITEM).replace(b'"title": ""', b'"title": "\\ud83d\\ude00 \\u00e9"')
    answer = httpx.post(f"{api.url}/reviews", content=escaped, headers=JSON, timeout=30)
    assert answer.status_code == 201, answer.text
    where = answer.json()
    (msg,) = [
        m
        for m in read_all(settings, api.topic)
        if (m.partition(), m.offset()) == (where["partition"], where["offset"])
    ]
    assert decode(Registry(settings.schema_registry_url), msg.value(), REVIEW)["title"] == "😀 é"


# -- text served verbatim, end to end on the running pipeline -----------------------------------
NASTY = {
    "sql": "'); DROP TABLE reviews;-- \" OR '1'='1'; --",
    "quotes": 'it\'s "quoted" `back` \u2018curly\u2019 \u201cdouble\u201d'
    " \\ back\\slash \\\\n %s %% $1 ?",
    "control": "".join(map(chr, range(1, 32))) + "\x7f\x80\x9f",
    "emoji": "👍🏽 👩\u200d👩\u200d👧\u200d👦 🇫🇷 😀",
    "combining": "e\u0301 a\u0308 Z\u0324\u0354\u0367\u0311\u0313",
    "rtl": "مرحبا \u202eevil\u202c שלום",
    "other": "\ufeffBOM \u2028 \u2029 \uffff \U0001d54f \U0010fffd",
}
ALL_NASTY = "".join(NASTY.values())


def valid_review_id(record: Callable[[int], dict[str, Any]]) -> int:
    """A fresh id whose review the fraud rule lets through, so the statistics count it."""
    model = HashFraudModel()
    while model.is_fraud(record(review_id := unique_id())):
        pass
    return review_id


def test_nasty_text_is_stored_and_served_verbatim(settings: Settings) -> None:
    course_id = unique_id()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    course_title = NASTY["sql"] + NASTY["combining"] + NASTY["rtl"] + NASTY["other"]

    def item(review_id: int) -> dict[str, Any]:
        return {
            **ITEM,
            "id": review_id,
            "title": NASTY["sql"] + NASTY["quotes"],
            "content": ALL_NASTY,
            "created": now,
            "modified": now,
            "user": {"title": NASTY["rtl"], "name": NASTY["emoji"], "display_name": ALL_NASTY},
            "course": {"id": course_id, "title": course_title, "url": NASTY["quotes"]},
        }

    review_id = valid_review_id(lambda i: json_to_review(item(i)))
    posted = item(review_id)
    expected = json_to_review(posted)
    with TestClient(
        create_app(settings, writer_token=TOKEN), base_url=LOCAL
    ) as client:  # udemy-reviews
        answer = client.post("/reviews", content=body(posted), headers=JSON)
        assert answer.status_code == 201, answer.text
        where = answer.json()
        assert where["topic"] == "udemy-reviews"

        msg = read_at(settings, where["topic"], where["partition"], where["offset"])
        got = decode(Registry(settings.schema_registry_url), msg.value(), REVIEW)
        for name in ("title", "content", "user"):
            assert got[name] == expected[name], name
        assert got["course"] == expected["course"]

        engine = sa.create_engine(settings.database_url)
        query = sa.text(
            "SELECT title, content, user_title, user_name, user_display_name, course_title,"
            " course_url FROM public.reviews WHERE id = :id"
        )

        def stored() -> list[tuple]:
            return sink_rows(engine, query, {"id": review_id})

        user, course = posted["user"], posted["course"]
        row = (posted["title"], ALL_NASTY, user["title"], user["name"], ALL_NASTY)
        row += (course["title"], course["url"])
        assert eventually(stored, lambda rows: bool(rows), PACE_S) == [row]
        engine.dispose()

        def served() -> httpx.Response:
            return client.get(f"/courses/{course_id}/stats")

        def both_windows(a: httpx.Response) -> bool:  # two sink connectors, either first
            body = a.json() if a.status_code == 200 else {}
            return body.get("all_time") is not None and body.get("recent") is not None

        answer = eventually(served, both_windows, PACE_S)
        assert answer.status_code == 200, answer.text
        stats = answer.json()
        assert stats["all_time"]["course_title"] == course_title
        assert stats["all_time"]["count_reviews"] == 1
        assert stats["recent"]["course_title"] == course_title


def read_at(settings: Settings, topic: str, partition: int, offset: int) -> Message:
    c = Consumer(settings.kafka_config(**{"group.id": f"t-{uuid.uuid4().hex}"}))
    c.assign([TopicPartition(topic, partition, offset)])
    try:
        (msg,) = c.consume(1, timeout=10)
    finally:
        c.close()
    return msg


# -- poison into the topics the running workers read --------------------------------------------
@dataclass
class Delivered:
    """Where each produced record landed (from the delivery reports)."""

    at: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def produce(
        self,
        p: Producer,
        topic: str,
        name: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        def report(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            self.at[name] = (msg.topic(), msg.partition(), msg.offset())

        p.produce(topic, value, key, headers=headers, on_delivery=report)


def poisons(good: bytes) -> dict[str, bytes]:
    """Records no worker can read, built from a valid framed review `good`."""
    return {
        "garbage": b"<html><body>503 Service Unavailable</body></html>",
        "short": b"\x00\x01",
        "wrong magic byte": b"\x01" + good[1:],
        "unknown schema id": confluent_frame(UNKNOWN_SCHEMA_ID, good[5:]),
        "truncated Avro": good[:-4],
    }


FOREIGN_HEADERS = [
    ("source.position", b"[]"),  # Connect's default header converter: an untyped empty array
    ("trace", b'{"span": [1, "a"]}'),  # ... a map of mixed values
    ("raw", b"\x00\xff\xfe"),
]
"""Headers another producer may set on a review: nothing of ours reads them, nothing fails on
them (the Debezium sink failed its task on the first, over and over, until its headers came as
bytes: `header.converter` in streaming/sink/connectors)."""

WORKER_REASONS = {
    "garbage": "magic byte 60, expected 0",
    "short": "shorter than the 5-byte Confluent header",
    "wrong magic byte": "magic byte 1, expected 0",
    "unknown schema id": f"unknown schema id {UNKNOWN_SCHEMA_ID}",
    "truncated Avro": "malformed Avro body",
}
LIVE_INPUTS = ("udemy-reviews", "udemy-reviews-valid", "udemy-reviews-fraud")


def end_offsets_now(settings: Settings, topic: str) -> dict[int, int]:
    c = Consumer(settings.kafka_config(**{"group.id": f"probe-{uuid.uuid4().hex}"}))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def consume_since(
    settings: Settings,
    topic: str,
    since: dict[int, int],
    done: Callable[[list[Message]], bool],
    timeout_s: float,
) -> list[Message]:
    """Committed records of `topic` from the offsets `since`, until `done(records)` or timeout."""
    c = Consumer(
        settings.kafka_config(
            **{"group.id": f"t-{uuid.uuid4().hex}", "isolation.level": "read_committed"}
        )
    )
    c.assign([TopicPartition(topic, p, o) for p, o in since.items()])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(out) and time.monotonic() < deadline:
            out += [m for m in c.consume(1000, timeout=POLL_S) if m.error() is None]
    finally:
        c.close()
    return out


def by_source(messages: list[Message], key: bytes, prefix: str) -> dict[tuple, Message]:
    """Dead letters with `key` by the source coordinates their headers name (`<prefix>topic`,
    `partition`, `offset`: ours `dlq.source.`, Connect's `__connect.errors.`)."""
    found = {}
    for m in messages:
        if m.key() == key:
            h = dict(m.headers())
            at = (h[f"{prefix}topic"].decode(), int(h[f"{prefix}partition"]))
            found[(*at, int(h[f"{prefix}offset"]))] = m
    return found


def health(url: str) -> dict[str, Any]:
    return httpx.get(url, timeout=5).json()


STACK = Path(os.environ.get("STACK_DIR", Path(__file__).resolve().parents[2] / ".stack"))


def restarts(worker: str) -> dict[str, Any]:
    """Each instance's latest restarts as its supervisor recorded them (why a pid changed)."""
    spec = pipeline.FRAUD_FILTER if worker == "fraud" else pipeline.AGGREGATOR
    return {
        name: (procs.read_record(STACK, name) or {}).get("restarts", [])[-3:]
        for name in spec.instance_names()
    }


COUNTERS = ("dead_letters", "records_in", "transactions")
FRAUD_FILTER_N = pipeline.FRAUD_FILTER.instance_count()
AGGREGATOR_N = pipeline.AGGREGATOR.instance_count()


def test_poison_in_every_live_input_is_dead_lettered_and_the_workers_keep_their_pace(
    settings: Settings, connect: ConnectClient
) -> None:
    urls = {  # every instance: the poison's partition may be any instance's
        "fraud": [pipeline.FRAUD_FILTER.health_url(i) for i in range(FRAUD_FILTER_N)],
        "aggregator": [pipeline.AGGREGATOR.health_url(i) for i in range(AGGREGATOR_N)],
    }

    def healths() -> dict[str, dict[str, Any]]:
        """Per worker: the instances' incarnations and status, and their counters summed."""
        out = {}
        for name, worker_urls in urls.items():
            docs = [health(u) for u in worker_urls]
            out[name] = {
                "incarnations": [d["incarnation"] for d in docs],
                "status": "ok" if all(d["status"] == "ok" for d in docs) else "not ok",
                **{
                    k: sum(d[k] for d in docs)
                    for k in ("dead_letters", "records_in", "transactions")
                },
            }
        return out

    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    course_id = unique_id()
    now_ms = int(time.time() * 1000)

    def record(review_id: int) -> dict[str, Any]:
        course = {"id": course_id, "title": f"Poison course {course_id}", "url": "/poison/"}
        return review(review_id, created=now_ms, modified=now_ms, course=course)

    review_id = valid_review_id(record)
    key, good = str(review_id).encode(), encode_review(schema_id, record(review_id))
    bad = poisons(good)
    watched = (*LIVE_INPUTS, "reviews-dead-letter", "connect-dead-letter")
    since = {topic: end_offsets_now(settings, topic) for topic in watched}
    before = healths()
    assert before["fraud"]["status"] == before["aggregator"]["status"] == "ok", before

    p = Producer(settings.kafka_config(**{"partitioner": "murmur2_random", "acks": "all"}))
    sent = Delivered()
    for topic in (*LIVE_INPUTS[1:], LIVE_INPUTS[0]):  # the review's path, behind the poison
        for kind, value in bad.items():
            sent.produce(p, topic, f"{topic}/{kind}", key, value)
    sent.produce(p, "udemy-reviews", "review", key, good, FOREIGN_HEADERS)
    assert p.flush(30) == 0
    t0 = time.monotonic()

    # the review comes through each stage: valid, then the statistics table of its course
    _, partition, _ = sent.at["review"]
    valid = consume_since(
        settings,
        "udemy-reviews-valid",
        since["udemy-reviews-valid"],
        lambda ms: any(m.key() == key and m.value() == good for m in ms),
        PACE_S,
    )
    assert any(m.key() == key and m.value() == good for m in valid), "the review did not pass"
    assert all(m.partition() == partition for m in valid if m.key() == key)
    engine = sa.create_engine(settings.database_url)

    def stats_row() -> list[tuple]:
        q = sa.text("SELECT count_reviews FROM public.long_term_stats WHERE course_id = :c")
        return sink_rows(engine, q, {"c": course_id})

    assert eventually(stats_row, lambda rows: rows == [(1,)], PACE_S - (time.monotonic() - t0))
    paced_s = time.monotonic() - t0

    # every poison in the workers' dead-letter topic: cause and source coordinates in headers
    poisoned = {at: name for name, at in sent.at.items() if name != "review"}
    dead = by_source(
        consume_since(
            settings,
            "reviews-dead-letter",
            since["reviews-dead-letter"],
            lambda ms: set(poisoned) <= set(by_source(ms, key, "dlq.source.")),
            PACE_S,
        ),
        key,
        "dlq.source.",
    )
    assert set(dead) == set(poisoned), "every poison dead-lettered once, nothing else"
    for at, name in poisoned.items():
        topic, kind = name.split("/")
        headers = dict(dead[at].headers())
        assert dead[at].value() == bad[kind], f"{name}: the original bytes are kept"
        assert WORKER_REASONS[kind] in headers["dlq.error"].decode(), (name, headers)
        worker = "fraud-filter" if topic == "udemy-reviews" else "stats-aggregator"
        assert headers["dlq.worker"].decode().startswith(worker), (name, headers)

    # Connect reads udemy-reviews too: its poison in Connect's dead-letter topic, tasks running
    on_input = {at for at, name in poisoned.items() if name.startswith("udemy-reviews/")}
    connect_dead = by_source(
        consume_since(
            settings,
            "connect-dead-letter",
            since["connect-dead-letter"],
            lambda ms: on_input <= set(by_source(ms, key, "__connect.errors.")),
            PACE_S,
        ),
        key,
        "__connect.errors.",
    )
    assert set(connect_dead) == on_input  # at least once: a record may come twice, not missing
    for at in on_input:
        headers = dict(connect_dead[at].headers())
        assert connect_dead[at].value() == bad[poisoned[at].split("/")[1]]
        assert headers["__connect.errors.stage"] == b"VALUE_CONVERTER"
        assert headers["__connect.errors.exception.class.name"], headers

    def written() -> int:
        q = sa.text("SELECT count(*) FROM public.reviews WHERE id = :id")
        return sum(n for (n,) in sink_rows(engine, q, {"id": review_id}))

    assert eventually(written, lambda n: n == 1, PACE_S) == 1, "the sink wrote the review"
    engine.dispose()
    status = connect.status("udemy-reviews")
    assert status.running, status

    # both workers alive (the same processes), looping, committing, counting the dead letters
    after = healths()
    for name, dead_letters in (("fraud", len(bad)), ("aggregator", 2 * len(bad))):
        b, a = before[name], after[name]
        assert a["status"] == "ok" and a["incarnations"] == b["incarnations"], (
            b,
            a,
            restarts(name),
        )
        assert a["dead_letters"] >= b["dead_letters"] + dead_letters, (b, a)
        assert a["records_in"] > b["records_in"] and a["transactions"] > b["transactions"]
    assert paced_s < PACE_S


# -- a huge record, through workers and a sink connector of the committed code and configs ------
def declared_topics(admin: AdminClient, declared: dict[str, str], partitions: int) -> dict:
    """Temporary topics `bad-<name>-<tag>`, each with the config of the declared topic it
    stands for (streaming/pipeline.py), the dead-letter topics' larger max.message.bytes
    included."""
    specs = {spec.name: spec for spec in load_topic_specs()}
    tag = uuid.uuid4().hex[:8]
    topics = {name: f"bad-{name}-{tag}" for name in declared}
    new = [NewTopic(topics[n], partitions, 1, config=specs[d].config) for n, d in declared.items()]
    for fut in admin.create_topics(new).values():
        fut.result(30)
    return topics


def set_config(admin: AdminClient, topic: str, config: dict[str, str]) -> None:
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
    ]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(30)


def max_message_bytes(admin: AdminClient, topic: str) -> int:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return int(admin.describe_configs([resource])[resource].result(30)["max.message.bytes"].value)


FRAUD_FILTER = "streaming.workers.fraud_filter"
AGGREGATOR = "streaming.workers.stats_aggregator"


def test_a_huge_record_is_dead_lettered_whole_while_the_pipeline_keeps_its_pace(
    settings: Settings,
    admin: AdminClient,
    registry: SchemaRegistryClient,
    sink: Sink,
    tmp_path: Path,
) -> None:
    """Regression: a record near the input topic's limit killed the fraud filter (its producer
    refused a record over librdkafka's 1,000,000 bytes, and the dead letter, record plus headers,
    was over the dead-letter topic's limit anyway: the restarted worker would fail again on it),
    and Connect dropped it from its dead-letter topic (over its producer's 1 MiB request limit).

    Also: a review whose course title holds U+0000 (written around the API) is a dead letter
    (the fraud filter's, or the aggregator's when written straight to its input), never a
    statistics record the sink would fail on forever; so is one with U+0000 in its content,
    which no sink could store either."""
    names = {
        "valid": "udemy-reviews-valid",
        "fraud": "udemy-reviews-fraud",
        "fraud-dlq": "reviews-dead-letter",
        "long": "long-term-stats",
        "recent": "recent-stats",
        "changes": "stats-aggregator-course-changes-repartition",
        "versions": "stats-aggregator-review-versions-changelog",
        "courses": "stats-aggregator-course-stats-changelog",
        "agg-dlq": "reviews-dead-letter",
    }
    t = declared_topics(admin, names, partitions=2)
    source = sink.topics["udemy-reviews"]  # the fraud filter's input, read by the connector too
    set_config(admin, source, load_topic_specs()[0].config)
    (connect_dlq,) = [s for s in load_topic_specs() if s.name == "connect-dead-letter"]
    set_config(admin, sink.topics["dlq"], connect_dlq.config)
    try:
        sink.deploy("udemy-reviews")
        group = f"bad-{uuid.uuid4().hex[:8]}"
        fraud_env = worker_env(
            {"in": source, "valid": t["valid"], "fraud": t["fraud"], "dlq": t["fraud-dlq"]},
            f"{group}-fraud-filter",
        )
        agg_env = env_for({**t, "dlq": t["agg-dlq"]}, f"{group}-aggregator")
        with (
            worker_process("streaming.workers.fraud_filter", fraud_env, tmp_path / "ff.log") as ff,
            worker_process(
                "streaming.workers.stats_aggregator", agg_env, tmp_path / "agg.log"
            ) as ag,
        ):
            ff.wait_healthy()
            ag.wait_healthy()
            huge_chain(settings, admin, sink, t, ff, ag)
    finally:
        delete_topics(admin, list(t.values()))
        for topic in (t["long"], t["recent"]):  # the aggregator registered their schemas
            registry.delete_subject(f"{topic}-value")
            registry.delete_subject(f"{topic}-value", permanent=True)


def huge_chain(
    settings: Settings, admin: AdminClient, reviews_sink: Sink, t: dict[str, str], ff: Any, ag: Any
) -> None:
    """Poison and a review behind it through the fraud filter, the aggregator and the sink."""
    source = reviews_sink.topics["udemy-reviews"]
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    course_id = unique_id()
    now_ms = int(time.time() * 1000)

    def record(review_id: int, title: str = "Big course") -> dict[str, Any]:
        course = {"id": course_id, "title": title, "url": "/big/"}
        return review(review_id, created=now_ms, modified=now_ms, course=course)

    review_id = valid_review_id(record)
    key, good = str(review_id).encode(), encode_review(schema_id, record(review_id))
    limit = max_message_bytes(admin, source)
    huge = confluent_frame(schema_id, b"\xff" * (limit - 1024))  # within 1 KiB of the limit
    nul_title = encode_review(schema_id, record(review_id, "Big\x00course"))
    # what no PostgreSQL sink can store: a created in year ~296,675, a text holding U+0000 (in
    # the content: another course, so the stat below holds); both are no review
    far_id, nul_id = unique_id(), unique_id()
    far = encode_review(schema_id, {**record(far_id), "created": 9_300_000_000_000_000})
    nul_content = encode_review(
        schema_id, review(nul_id, created=now_ms, modified=now_ms, content="a\x00b")
    )

    p = Producer(
        settings.kafka_config(**{"partitioner": "murmur2_random", "message.max.bytes": 2 * limit})
    )
    sent = Delivered()
    sent.produce(p, t["valid"], "valid/huge", key, huge)
    # as the fraud filter would route it: with its position in the input
    position = [(source_position.HEADER, source_position.encode(0, 0))]
    sent.produce(p, t["valid"], "valid/nul title", key, nul_title, position)
    sent.produce(p, source, "in/huge", key, huge)
    sent.produce(p, source, "in/far", str(far_id).encode(), far)
    sent.produce(p, source, "in/nul content", str(nul_id).encode(), nul_content)
    sent.produce(p, source, "review", key, good)
    assert p.flush(30) == 0
    t0 = time.monotonic()

    def latest_stat(ms: list[Message]) -> dict[str, Any] | None:
        registry = Registry(settings.schema_registry_url)
        stats = [
            decode(registry, m.value(), STAT) for m in ms if m.key() == str(course_id).encode()
        ]
        return stats[-1] if stats else None

    long = consume_since(
        settings, t["long"], {0: 0, 1: 0}, lambda ms: latest_stat(ms) is not None, PACE_S
    )
    stat = latest_stat(long)
    assert stat is not None, ag.log_tail()
    assert (stat["count_reviews"], stat["course_title"]) == (1, "Big course")
    paced_s = time.monotonic() - t0
    assert paced_s < PACE_S

    def dead_letters(topic: str, n: int) -> dict[str, tuple[bytes, dict[str, bytes]]]:
        found = consume_since(settings, topic, {0: 0, 1: 0}, lambda ms: len(ms) >= n, PACE_S)
        by_source = {}
        for m in found:
            h = dict(m.headers())
            at = (h["dlq.source.topic"].decode(), int(h["dlq.source.partition"]))
            by_source[(*at, int(h["dlq.source.offset"]))] = (m.value(), h)
        names = {v: k for k, v in sent.at.items()}  # what the test wrote there itself
        return {names.get(at, f"{at[0]}@{at[2]}"): v for at, v in by_source.items()}

    fraud_dead = dead_letters(t["fraud-dlq"], 2)
    assert sorted(fraud_dead) == ["in/huge", "in/nul content"]
    value, headers = fraud_dead["in/huge"]
    assert value == huge, "kept whole: the dead-letter topic takes twice the input's limit"
    assert b"malformed Avro body" in headers["dlq.error"] and "dlq.value.truncated" not in headers
    assert headers["dlq.kind"] == b"undecodable"
    value, headers = fraud_dead["in/nul content"]
    assert value == nul_content and headers["dlq.kind"] == b"text"
    assert b"content contains U+0000" in headers["dlq.error"]

    agg_dead = dead_letters(t["agg-dlq"], 3)
    assert {"valid/huge", "valid/nul title"} < set(agg_dead) and len(agg_dead) == 3
    [(far_copy, far_headers)] = [v for k, v in agg_dead.items() if not k.startswith("valid/")]
    assert far_copy == far and b"outside 0001-01-01" in far_headers["dlq.error"]
    assert far_headers["dlq.kind"] == b"timestamp"
    assert agg_dead["valid/huge"][0] == huge
    assert agg_dead["valid/nul title"][0] == nul_title
    assert b"course.title contains U+0000" in agg_dead["valid/nul title"][1]["dlq.error"]
    assert agg_dead["valid/nul title"][1]["dlq.kind"] == b"text"

    dlq = reviews_sink.topics["dlq"]
    connect_dead = consume_since(settings, dlq, {0: 0, 1: 0}, lambda ms: len(ms) >= 3, PACE_S)
    by_key = {m.key(): m for m in connect_dead}
    assert {(m.key(), m.value()) for m in connect_dead} == {
        (key, huge),
        (str(far_id).encode(), far),
        (str(nul_id).encode(), nul_content),
    }, "Connect kept each whole"
    assert dict(by_key[key].headers())["__connect.errors.stage"] == b"VALUE_CONVERTER"
    for rejected, why in ((far_id, b"outside 0001-01-01"), (nul_id, b"U+0000")):
        headers = dict(by_key[str(rejected).encode()].headers())
        assert headers["__connect.errors.stage"] == b"TRANSFORMATION", headers
        assert why in headers["__connect.errors.exception.message"], headers
    rows = eventually(reviews_sink.review_rows, bool, PACE_S)
    ids = [row[REVIEW_COLUMNS.split(", ").index("id")] for row in rows]
    assert ids == [review_id], "the sink wrote the review behind it"
    assert reviews_sink.connect.status(reviews_sink.name("udemy-reviews")).running

    for worker, n in ((ff, 2), (ag, 3)):
        h = worker.health()
        assert worker.proc.poll() is None and h["status"] == "ok", worker.log_tail()
        assert h["dead_letters"] == n and h["dead_letter_max_bytes"] >= 2 * limit - 1024


# -- the read API over rows the sink can hold but Python cannot ---------------------------------
def test_timestamps_beyond_python_are_served_clamped_not_a_500(settings: Settings) -> None:
    """Regression: a stats row with last_review_time in year 10000 (PostgreSQL holds it, a
    producer around the API can write it) made GET /courses/{id}/stats, and every page of
    /courses holding the course, answer 500."""
    schema = f"badinput_{uuid.uuid4().hex[:8]}"
    admin_engine = sa.create_engine(settings.database_url)
    with admin_engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = schema_engine(settings, schema)
    try:
        with engine.begin() as conn:
            for table in ("long_term_stats", "recent_stats"):
                conn.execute(sa.text(SINK_DDL.format(table=table)))
            row = stat(77, 1, 5.0)
            conn.execute(sa.table("long_term_stats", *map(sa.column, row)).insert(), [row])
            conn.execute(
                sa.text(
                    "UPDATE long_term_stats SET last_review_time = '10000-01-01 00:59:59',"
                    " as_of_time = '0001-12-31 23:00:00 BC' WHERE course_id = 77"
                )
            )
        app = FastAPI()
        app.include_router(router)
        app.dependency_overrides[get_engine] = lambda: engine
        client = TestClient(app)
        answer = client.get("/courses/77/stats")
        assert answer.status_code == 200, answer.text
        all_time = answer.json()["all_time"]
        assert all_time["last_review_time"] == "9999-12-31T23:59:59.999999Z"
        assert all_time["as_of_time"] == "0001-01-01T00:00:00Z"
        page = client.get("/courses")
        assert page.status_code == 200 and page.json()["count"] == 1
    finally:
        engine.dispose()
        with admin_engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin_engine.dispose()


# -- the registry refuses incompatible schemas, for every subject -------------------------------
def incompatible(schema_file: str) -> dict[str, Schema]:
    """Changes BACKWARD compatibility forbids (readers of the new schema could not read data
    written with the old one). A required field without a default, on the reviews subject, is
    in test_stack.py; here a field changing type and the record renamed, for every subject."""
    base = json.loads((SCHEMAS_DIR / schema_file).read_text())
    retyped = json.loads(json.dumps(base))
    next(f for f in retyped["fields"] if f["type"] == "long")["type"] = "string"
    renamed = {**base, "name": base["name"] + "Renamed"}
    return {
        "a long field becomes a string": Schema(json.dumps(retyped), "AVRO"),
        "the record is renamed": Schema(json.dumps(renamed), "AVRO"),
    }


@pytest.mark.parametrize(
    ("subject", "schema_file"),
    [
        ("udemy-reviews-value", "review.avsc"),
        ("long-term-stats-value", "course_statistic.avsc"),
        ("recent-stats-value", "course_statistic.avsc"),
    ],
)
def test_incompatible_schemas_are_refused_for_every_subject(
    registry: SchemaRegistryClient, subject: str, schema_file: str
) -> None:
    before = registry.get_versions(subject)
    for change, schema in incompatible(schema_file).items():
        assert registry.test_compatibility(subject, schema) is False, change
        with pytest.raises(SchemaRegistryError) as refused:
            registry.register_schema(subject, schema)
        assert refused.value.http_status_code == 409, change
    assert registry.get_versions(subject) == before
