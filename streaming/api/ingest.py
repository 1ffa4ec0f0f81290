"""`POST /reviews`: one review in the Udemy result shape into `udemy-reviews`, acknowledged.

Writing needs the writer token (`Authorization: Bearer`, `streaming.api.auth`): 401 without
it, before the body is read. The answer is sent only after the broker acknowledged the record
(acks=all, idempotent producer): 201 with where it landed. Invalid input gets 400 (not JSON) or
422 (which field, and why: the same mapping the backfill uses); an oversized body 413; a body
not declared as JSON 415 (a form, text/plain or untyped POST is what a cross-site page can send
without asking); Kafka unavailable or slow 503 with Retry-After — never a silent drop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.requests import ClientDisconnect

from streaming.api import auth
from streaming.core.review_mapping import LONG_MAX, ReviewMappingError, json_to_review
from streaming.ingest.producer import ReviewProducer

MAX_BODY_BYTES = 64 * 1024
ACK_TIMEOUT_S = 10.0
RETRY_AFTER_S = 5

_NAMED = {"type": "object", "required": ["title", "name", "display_name"]}
REVIEW_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "rating", "created", "modified", "user", "course"],
    "properties": {
        "_class": {"type": "string", "enum": ["course_review"]},
        "id": {"type": "integer", "minimum": 1, "maximum": LONG_MAX, "description": "review id"},
        "title": {"type": ["string", "null"]},
        "content": {"type": ["string", "null"]},
        "rating": {
            "type": "number",
            "enum": [x / 2 for x in range(1, 11)],
            "description": "0.5 .. 5.0 in half steps",
        },
        "created": {"type": "string", "format": "date-time"},
        "modified": {"type": "string", "format": "date-time", "description": ">= created"},
        "user": {
            **_NAMED,
            "properties": {
                "_class": {"type": "string", "enum": ["user"]},
                **{k: {"type": "string"} for k in ("title", "name", "display_name")},
            },
        },
        "course": {
            "type": "object",
            "required": ["id", "title", "url"],
            "properties": {
                "_class": {"type": "string", "enum": ["course"]},
                "id": {"type": "integer", "minimum": 1, "maximum": LONG_MAX},
                "title": {"type": "string"},
                "url": {"type": "string"},
            },
        },
    },
    "example": {
        "_class": "course_review",
        "id": 6225498,
        "title": "",
        "content": "",
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
            "title": "Apache Kafka Series - Learn Apache Kafka for Beginners",
            "url": "/apache-kafka-series-kafka-from-beginner-to-intermediate/",
        },
    },
}


STATS_INTERVAL_MS = 1000
"""How often the API's producer reports its brokers' states (`KafkaLink`)."""
STALE_STATS_S = 5.0
"""No report for this long: the producer's poll thread is not serving it."""


log = logging.getLogger(__name__)


class KafkaLink:
    """Whether the API's producer can write: what `/health` says of Kafka.

    Fed by the producer's callbacks (served by its poll thread): the statistics list every
    broker connection's state, a fatal error (an idempotent producer fenced, say) ends it
    for good. Not ok when no broker connection is up, after a fatal error, or when the
    statistics stopped coming (the poll thread is gone). `/health` is public: it says which
    of these in words of ours; the broker's error text (addresses, versions) goes to the log."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.last_stats: float | None = None
        self.brokers_up = 0
        self.fatal = False

    def on_stats(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {}).values()
        self.brokers_up = sum(
            1 for b in brokers if b.get("nodeid", -1) >= 0 and b.get("state") == "UP"
        )
        self.last_stats = self.clock()

    def on_error(self, err: KafkaError) -> None:
        log.warning("Kafka producer error: %s (fatal: %s)", err.str(), err.fatal())
        self.fatal |= err.fatal()

    def problem(self) -> str | None:
        """None when writes can go through; otherwise why not, for /health."""
        if self.fatal:
            return "the producer failed fatally (the API's log says why)"
        now = self.clock()
        seen = self.last_stats if self.last_stats is not None else self.started
        if now - seen > STALE_STATS_S:
            return f"no producer statistics for {now - seen:.0f} s (its poll thread stopped)"
        if self.last_stats is None:
            return "connecting to Kafka"
        if not self.brokers_up:
            return "no Kafka broker reachable"
        return None

    def producer_config(self) -> dict[str, Any]:
        """The producer settings that feed this link."""
        return {
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": self.on_stats,
            "error_cb": self.on_error,
        }


class AckingProducer:
    """A ReviewProducer whose deliveries resolve asyncio futures; polled by a daemon thread."""

    def __init__(self, producer: ReviewProducer, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self.producer = producer
        self.ack_timeout_s = ack_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="kafka-poll")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def send(self, review: dict[str, Any]) -> Message:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is not None:
                    done.set_exception(KafkaException(err))
                else:
                    done.set_result(msg)

            loop.call_soon_threadsafe(settle)

        self.producer.produce(review, on_delivery=on_delivery)
        return await asyncio.wait_for(done, self.ack_timeout_s + 1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.producer.flush(self.ack_timeout_s)


def _json_media_type(content_type: str | None) -> bool:
    """application/json or application/*+json; no Content-Type is not JSON."""
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"Kafka unavailable, nothing was stored: {reason}; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


router = APIRouter()
_BEARER = HTTPBearer(
    auto_error=False, description="The writer token (in the file PIPELINE_API_TOKEN_FILE names)"
)


async def require_writer(request: Request, _: Any = Depends(_BEARER)) -> None:  # noqa: B008
    """401 unless the request carries the writer token; `_BEARER` documents the scheme. Async:
    a constant-time compare needs no thread, and FastAPI runs a sync dependency in its thread
    pool (a hand-off and a wake-up per request)."""
    if not auth.authorized(request.headers.get("authorization"), request.app.state.writer_token):
        raise HTTPException(
            401,
            "writing reviews needs the writer token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.post(
    "/reviews",
    status_code=201,
    summary="Ingest one new or edited review",
    description=__doc__,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": REVIEW_JSON_SCHEMA}},
        }
    },
    dependencies=[Depends(require_writer)],
    responses={
        201: {"description": "Stored in Kafka (acknowledged by the broker)"},
        401: {"description": "No writer token, or a wrong one"},
        400: {"description": "The body is not JSON"},
        413: {"description": f"The body is larger than {MAX_BODY_BYTES} bytes"},
        415: {"description": "The Content-Type is not JSON"},
        422: {"description": "A field is missing or invalid: `detail[].loc` and `msg` say which"},
        503: {"description": "Kafka unavailable: nothing stored, retry after Retry-After"},
    },
)
async def post_review(request: Request) -> JSONResponse:
    content_type = request.headers.get("content-type")
    if not _json_media_type(content_type):
        return JSONResponse(
            {"detail": f"Content-Type must be application/json, got {content_type!r}"},
            status_code=415,
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return JSONResponse({"detail": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"detail": f"body over {MAX_BODY_BYTES} bytes"}, 413)
    except ClientDisconnect:  # gone before its body arrived: nothing stored, nobody to answer
        log.info("client disconnected before its body arrived; nothing stored")
        return JSONResponse({"detail": "client disconnected before its body arrived"}, 400)
    try:
        item = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return JSONResponse({"detail": f"body is not valid JSON: {exc}"}, status_code=400)
    try:
        review = json_to_review(item)
    except ReviewMappingError as exc:
        loc = ["body", *[p for p in exc.path.split(".") if p]]
        detail = [{"loc": loc, "msg": exc.reason, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)
    producer: AckingProducer = request.app.state.producer
    try:
        msg = await producer.send(review)
    except BufferError:
        return _unavailable("the producer queue is full")
    except TimeoutError:
        return _unavailable(f"no acknowledgement within {producer.ack_timeout_s:.0f} s")
    except KafkaException as exc:
        return _unavailable(str(exc.args[0]))
    return JSONResponse(
        {
            "id": review["id"],
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
        },
        status_code=201,
    )
