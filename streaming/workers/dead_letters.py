"""Dead letters: records that cannot go on, sent in the open transaction with why and where from.

Two ways in, one place: a worker's transform refuses a record (`DeadLetters.send`: no review, a
header no stage wrote), or the broker refuses a record's outputs for good and the loop finds it
by going through the batch one record per transaction (`streaming.workers.refusals`; here the
careful pass's decisions: `on_refused`, `divert_refused`). A dead letter carries its reason and
source coordinates in `dlq.*` headers and is cut to fit the dead-letter topic, which the broker
would otherwise refuse too, stalling the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from streaming.settings import Settings
from streaming.workers import refusals
from streaming.workers.clients import MAX_PRODUCE_BYTES
from streaming.workers.logs import log_event
from streaming.workers.metrics import WorkerMetrics
from streaming.workers.refusals import Refusals

log = logging.getLogger("dead_letters")
DEFAULT_TOPIC_MAX_BYTES = 1_000_000
"""Assumed max.message.bytes of a dead-letter topic whose config cannot be read."""
RECORD_SLACK_BYTES = 1024
"""Record batch and record framing around a record's key, value and headers."""
Position = tuple[str, int, int]
"""(topic, partition, offset) of a consumed record."""


def position_of(msg: Message) -> Position:
    return msg.topic(), msg.partition(), msg.offset()  # type: ignore[return-value]  # a consumed record's is set


class DeadLetters:
    """The worker's dead-letter topic, and the careful pass over a batch the broker refused."""

    def __init__(
        self,
        producer: Producer,
        settings: Settings,
        metrics: WorkerMetrics,
        topic: str,
        worker_id: str,
        divertible: Callable[[str], bool],
    ) -> None:
        self.producer, self.settings, self.metrics = producer, settings, metrics
        self.topic, self.worker_id, self.divertible = topic, worker_id, divertible
        self.refusals = Refusals()
        self.careful_record: Position | None = None
        """The one record of the open transaction while going through a refused batch."""
        self._topic_max_bytes: dict[str, int] = {}

    def send(self, msg: Message, reason: str, kind: str | None = None) -> None:
        """Dead-letter `msg` in the open transaction, logged and counted; `kind` is the validity
        rule's when the record is no review (`validity.KINDS`)."""
        self.produce(self.topic, msg, reason, kind)
        self.metrics.dead_letters += 1
        log_event(
            log,
            "dead letter",
            logging.WARNING,
            reason=reason,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
        )

    def produce(self, topic: str, msg: Message, reason: str, kind: str | None = None) -> None:
        """Send a record that cannot go on to `topic` in the open transaction, cut to fit."""
        headers = dead_letter_headers(msg, reason, self.worker_id, kind)
        limit = min(self.topic_max_bytes(topic), MAX_PRODUCE_BYTES)  # the client's limit too
        value, headers = fit_dead_letter(msg.key(), msg.value(), headers, limit)
        self.producer.produce(topic, value, msg.key(), headers=headers)  # type: ignore[arg-type]  # invariant list (stub)

    def topic_max_bytes(self, topic: str) -> int:
        """A topic's max.message.bytes, read once (the broker refuses a larger record, which
        would abort the transaction, rewind, and fail again on every retry: a stalled worker)."""
        if topic not in self._topic_max_bytes:
            limit = DEFAULT_TOPIC_MAX_BYTES
            admin = AdminClient(self.settings.kafka_config())
            resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
            try:
                config = admin.describe_configs([resource])[resource].result(30)
                limit = int(config["max.message.bytes"].value)
            except (KafkaException, KeyError, ValueError) as exc:
                log_event(
                    log, "topic config unreadable", logging.WARNING, topic=topic, error=str(exc)
                )
            self._topic_max_bytes[topic] = limit
            self.metrics.dead_letter_max_bytes = limit
        return self._topic_max_bytes[topic]

    # -- the careful pass ----------------------------------------------------------------------
    @property
    def careful(self) -> bool:
        """Going through a refused batch one record per transaction."""
        return self.refusals.careful

    def divert_refused(self, msgs: list[Message]) -> list[Message]:
        """Send the records whose outputs the broker refused to the dead letters, with its
        reason; the others, to process."""
        if not self.refusals.blamed:
            return msgs
        kept = []
        for m in msgs:
            why = self.refusals.take(*position_of(m))
            if why is None:
                kept.append(m)
            else:
                self.send(m, why)
        return kept

    def record_passed(self) -> None:
        """The careful pass's record committed in a transaction of its own."""
        record, self.careful_record = self.careful_record, None
        if record is not None:
            self.refusals.passed(*record)

    def caught_up(self, consumed: list[TopicPartition]) -> None:
        """The positions read so far: the careful pass ends past the refused batch."""
        self.refusals.caught_up({(t.topic, t.partition): t.offset for t in consumed})

    def on_refused(self, err: KafkaError, consumed: Callable[[], list[TopicPartition]]) -> None:
        """The broker refused an output for good: blame the careful pass's record, or suspect
        the whole batch (`consumed`: the positions read); the caller then aborts."""
        why, record = refusals.reason(err), self.careful_record
        if record is not None and not refusals.refused(err):
            # only the failed transaction's echo (_STATE, e.g. the sequence gap a refused
            # batch leaves until the abort bumps the epoch): this record is not to blame
            message = "transaction failed: aborting, the record again"
            log_event(log, message, logging.WARNING, error=str(err), record=record)
        elif record is not None and not self.divertible(record[0]):
            message = "an internal record's output refused: stalled"
            log_event(log, message, logging.ERROR, error=why, record=record)
        elif record is not None:
            if not self.refusals.blame(*record, why):
                message = "its dead letter was refused too: stalled"
                log_event(log, message, logging.ERROR, error=why, record=record)
        else:
            positions = [(tp.topic, tp.partition, tp.offset) for tp in consumed()]
            self.refusals.suspect([p for p in positions if p[2] >= 0])
        message = "an output refused: aborting to find its record"
        log_event(log, message, logging.WARNING, error=why, record=record)
        self.careful_record = None


def dead_letter_headers(
    msg: Message, reason: str, worker: str, kind: str | None = None
) -> list[tuple[str, bytes]]:
    """Why and where from: enough to find, fix and replay the record; `dlq.kind` (the validity
    rule's kind) when the record is no review, which the reconciliation counts."""
    return [
        ("dlq.error", reason.encode()),
        *([] if kind is None else [("dlq.kind", kind.encode())]),
        ("dlq.source.topic", msg.topic().encode()),  # type: ignore[union-attr]  # a consumed record's is set
        ("dlq.source.partition", str(msg.partition()).encode()),
        ("dlq.source.offset", str(msg.offset()).encode()),
        ("dlq.worker", worker.encode()),
        *(msg.headers() or []),
    ]


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The dead letter as it can be sent to a topic whose max.message.bytes is `limit`.

    Whole when it fits (the usual case: dead-letter topics are declared larger than the inputs).
    Otherwise the record's own headers (after the dlq.* ones) are dropped if they alone are too
    big, and the value is cut; `dlq.value.truncated` / `dlq.headers.dropped` give the original
    sizes, and the source coordinates still lead to the whole record.
    """

    def size(v: bytes | None, hs: list[tuple[str, bytes]]) -> int:
        framing = sum(len(k) + len(h or b"") for k, h in hs)
        return RECORD_SLACK_BYTES + len(key or b"") + len(v or b"") + framing

    if size(value, headers) <= limit:
        return value, headers
    n_own = sum(1 for k, _ in headers if k.startswith("dlq."))
    own, extra = headers[:n_own], headers[n_own:]
    if size(b"", headers) > limit // 2:
        dropped = sum(len(k) + len(h or b"") for k, h in extra)
        headers = [*own, ("dlq.headers.dropped", str(dropped).encode())]
        if size(value, headers) <= limit:
            return value, headers
    original = len(value or b"")
    headers = [*headers, ("dlq.value.truncated", str(original).encode())]
    room = max(limit - size(b"", headers), 0)
    return (value or b"")[:room], headers
