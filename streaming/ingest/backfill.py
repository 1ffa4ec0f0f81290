"""Backfill: every review of a course (or of every course) from the review source into Kafka.

Pages are fetched ahead in parallel over pooled connections (`UdemyClient.iter_pages`), mapped
with the same rules as `POST /reviews`, and produced without waiting per record. Delivery errors
are collected and raised at the end; a record the mapping rejects goes to the dead-letter topic
with the reason, so nothing is silently dropped. With a checkpoint, progress is saved only after
the broker acknowledged everything before it, so a restarted backfill resumes where it stopped
(re-sending a page is harmless: statistics count each review version once).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import KafkaError, Message

from streaming.core.review_mapping import ReviewMappingError, json_to_review
from streaming.ingest.producer import ReviewProducer
from streaming.pipeline import DEAD_LETTER
from streaming.source.client import Checkpoint, UdemyClient

log = logging.getLogger(__name__)
DEAD_LETTER_TOPIC = DEAD_LETTER.name
CHECKPOINT_EVERY_PAGES = 50


class BackfillError(RuntimeError):
    """The broker did not acknowledge some records: the backfill is incomplete."""


@dataclass
class BackfillResult:
    course_id: int
    reviews: int = 0
    rejected: int = 0
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> last offset written
    seconds: float = 0.0
    rejections: list[str] = field(default_factory=list)  # the first few reasons


class _Deliveries:
    """Delivery callback state: acknowledged offsets per partition and the errors seen."""

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}
        self.errors: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        partition: int
        offset: int
        partition, offset = msg.partition(), msg.offset()  # type: ignore[assignment]  # a delivered record's are set
        if offset > self.offsets.get(partition, -1):
            self.offsets[partition] = offset


def backfill_course(
    course_id: int,
    *,
    source_client: UdemyClient,
    producer: ReviewProducer,
    checkpoint: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
    concurrency: int = 4,
    dead_letter_topic: str = DEAD_LETTER_TOPIC,
) -> BackfillResult:
    """Stream every review of one course into the producer's topic; raise BackfillError if the
    broker did not acknowledge all of them."""
    started = time.perf_counter()
    result = BackfillResult(course_id)
    deliveries = _Deliveries()
    state = checkpoint.load(course_id, source_client.page_size) if checkpoint else None
    if state is not None and state.complete:
        state = replace(state, next_page=1, complete=False, head=None)
    pages = 0
    for page in source_client.iter_pages(course_id, state=state, concurrency=concurrency):
        for item in page.results:
            try:
                review = json_to_review(item)
            except ReviewMappingError as exc:
                _reject(producer, dead_letter_topic, item, exc, result)
                continue
            while True:
                try:
                    producer.produce(review, on_delivery=deliveries)
                    break
                except BufferError:
                    producer.poll(0.05)
            result.reviews += 1
        producer.poll(0)
        if progress is not None:
            progress(len(page.results))
        pages += 1
        state = page.state
        if checkpoint is not None and pages % CHECKPOINT_EVERY_PAGES == 0:
            _settle(producer, deliveries)
            checkpoint.save(state)
    _settle(producer, deliveries)
    if checkpoint is not None and state is not None:
        checkpoint.save(replace(state, complete=True))
    result.offsets = deliveries.offsets
    result.seconds = time.perf_counter() - started
    return result


def _settle(producer: ReviewProducer, deliveries: _Deliveries) -> None:
    pending = producer.flush(120)
    if pending or deliveries.errors:
        first = deliveries.errors[0] if deliveries.errors else "no acknowledgement in 120 s"
        raise BackfillError(
            f"{len(deliveries.errors) + pending} records not acknowledged by Kafka: {first}"
        )


def _reject(
    producer: ReviewProducer, topic: str, item: Any, exc: ReviewMappingError, result: BackfillResult
) -> None:
    """A source record we cannot map: keep it, with the reason, in the dead-letter topic."""
    result.rejected += 1
    if len(result.rejections) < 10:
        result.rejections.append(str(exc))
    key = str(item.get("id")).encode() if isinstance(item, dict) else None
    headers = [("dlq.error", str(exc).encode()), ("dlq.source", b"backfill")]
    producer.produce_raw(topic, json.dumps(item).encode(), key, headers)
    log.warning("rejected review of course %s: %s", result.course_id, exc)


def backfill_all(
    *,
    source_client: UdemyClient,
    producer: ReviewProducer,
    checkpoint: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
    on_course: Callable[[BackfillResult], None] | None = None,
    concurrency: int = 4,
) -> list[BackfillResult]:
    """Every course of the source, one after another (each walk fetches pages in parallel)."""
    results = []
    for course in source_client.iter_courses():
        result = backfill_course(
            int(course["id"]),
            source_client=source_client,
            producer=producer,
            checkpoint=checkpoint,
            progress=progress,
            concurrency=concurrency,
        )
        results.append(result)
        if on_course is not None:
            on_course(result)
    return results
