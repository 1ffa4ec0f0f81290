"""Bad input, the pure parts: dead letters cut to fit their topic, the size limits the topics
and connectors declare, and which Content-Types POST /reviews reads as JSON."""

from __future__ import annotations

import pytest

from streaming.admin import load_topic_specs
from streaming.api.ingest import _json_media_type
from streaming.sink.render import declared_connectors, load_connector
from streaming.workers.clients import MAX_PRODUCE_BYTES
from streaming.workers.dead_letters import RECORD_SLACK_BYTES, fit_dead_letter

KAFKA_DEFAULT_MAX_BYTES = 1_048_588  # broker message.max.bytes, the default of every topic
DEAD_LETTER_TOPICS = ("reviews-dead-letter", "connect-dead-letter")
INPUT_TOPICS = ("udemy-reviews", "udemy-reviews-valid", "udemy-reviews-fraud")
HEADER_ROOM = 64 * 1024  # error headers: Connect's carry a stack trace of a few KiB
DLQ = [("dlq.error", b"wire format: magic byte 7, expected 0"), ("dlq.source.offset", b"12")]


def record_size(key: bytes, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    own = sum(len(k) + len(v) for k, v in headers)
    return RECORD_SLACK_BYTES + len(key) + len(value or b"") + own


def test_a_dead_letter_that_fits_is_sent_whole() -> None:
    value = b"\x07" * 50_000
    assert fit_dead_letter(b"k", value, DLQ, 1_048_588) == (value, DLQ)


def test_a_dead_letter_too_big_for_its_topic_is_cut_and_says_so() -> None:
    limit = 1_048_588
    value = bytes(range(256)) * 4096  # 1 MiB, as big as the input topic takes
    original = [("trace-id", b"abc")]
    sent, headers = fit_dead_letter(b"key", value, [*DLQ, *original], limit)
    assert sent is not None and value.startswith(sent) and len(sent) < len(value)
    assert dict(headers)["dlq.value.truncated"] == str(len(value)).encode()
    assert headers[:2] == DLQ and ("trace-id", b"abc") in headers, "the headers stay"
    assert record_size(b"key", sent, headers) <= limit


def test_input_headers_too_big_to_keep_are_dropped_not_the_reason() -> None:
    limit = 100_000
    original = [("blob", b"x" * 120_000)]
    sent, headers = fit_dead_letter(b"key", b"v" * 10, [*DLQ, *original], limit)
    assert [name for name, _ in headers][2:] == ["dlq.headers.dropped"]
    assert headers[:2] == DLQ
    assert dict(headers)["dlq.headers.dropped"] == b"120004"
    assert sent == b"v" * 10 and record_size(b"key", sent, headers) <= limit

    sent, headers = fit_dead_letter(b"key", b"v" * limit, [*DLQ, *original], limit)
    assert [name for name, _ in headers][2:] == ["dlq.headers.dropped", "dlq.value.truncated"]
    assert sent is not None and 0 < len(sent) < limit
    assert record_size(b"key", sent, headers) <= limit


def test_a_tombstone_dead_letter_stays_empty() -> None:
    assert fit_dead_letter(b"k", None, DLQ, 1_000_000) == (None, DLQ)


def declared_max_bytes(topic: str) -> int:
    (spec,) = [s for s in load_topic_specs() if s.name == topic]
    return int(spec.config.get("max.message.bytes", KAFKA_DEFAULT_MAX_BYTES))


@pytest.mark.parametrize("dead_letter", DEAD_LETTER_TOPICS)
def test_dead_letter_topics_take_any_input_record_plus_its_error_headers(dead_letter: str) -> None:
    biggest_input = max(declared_max_bytes(t) for t in INPUT_TOPICS)
    assert declared_max_bytes(dead_letter) >= biggest_input + HEADER_ROOM
    assert declared_max_bytes(dead_letter) <= MAX_PRODUCE_BYTES, "the workers' producer too"


@pytest.mark.parametrize("connector", declared_connectors())
def test_connect_can_send_what_its_dead_letter_topic_takes(connector: str) -> None:
    """Connect's producer stops at 1 MiB by default: a dead letter above it is only logged."""
    config = load_connector(connector)
    topic = config["errors.deadletterqueue.topic.name"]
    assert int(config["producer.override.max.request.size"]) == declared_max_bytes(topic)


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        (None, False),  # a page can post cross-site without a type and without asking
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("text/plain; charset=utf-8", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/xml", False),
        ("text/json", False),
        ("", False),
    ],
)
def test_which_content_types_are_read_as_json(content_type: str | None, json: bool) -> None:
    assert _json_media_type(content_type) is json
