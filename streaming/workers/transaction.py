"""The open transaction of a stream worker (Quix Streams calls it `Checkpoint`; not to be confused
with the source API's `streaming.source.client.Checkpoint`): it counts what went into it, knows
when it is due, commits and aborts.

A commit sends the consumed positions with the consumer's group metadata (KIP-447) and commits;
librdkafka documents both calls as safe to repeat after a retriable error, so they are retried
(carrying on after one would leave the transaction open and its outputs invisible). An error
that requires an abort, or a fatal one, is raised for the loop to abort or exit. A new
transaction begins at once after a commit or an abort, so there is always one open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaException, Producer, TopicPartition

from streaming.workers.logs import log_event

log = logging.getLogger("transaction")
RETRY_FOR_S = 60.0
"""How long a retriable commit error is retried before the loop aborts instead."""
CALL_TIMEOUT_S = 30.0


class Transaction:
    """The loop's one open transaction: records in it, when it is due, commit and abort."""

    def __init__(
        self, producer: Producer, every_records: int, interval_s: float, min_age_s: float = 0.0
    ) -> None:
        """Due at `every_records` records or `interval_s` seconds, or once the input is
        drained and the transaction is `min_age_s` old (at most `interval_s`)."""
        self.producer = producer
        self.every_records = every_records
        self.interval_s = interval_s
        self.min_age_s = min(min_age_s, interval_s)
        self.records = 0
        self.started = time.monotonic()
        self.retries = 0

    def begin(self) -> None:
        self.producer.begin_transaction()
        self.records = 0
        self.started = time.monotonic()

    def add(self, n: int) -> None:
        """`n` more records (consumed or produced) belong to the open transaction."""
        self.records += n

    def due(self, drained: bool) -> bool:
        """Something to commit, and enough records or time since the transaction began; or
        nothing more to read (`drained`) and the minimum age reached: a record waits for no
        timer at low rates, while at high rates transactions grow to their interval."""
        if not self.records:
            return False
        age = time.monotonic() - self.started
        return (
            self.records >= self.every_records
            or age >= self.interval_s
            or (drained and age >= self.min_age_s)
        )

    def time_left(self) -> float:
        """Seconds until the open transaction, its input drained, is due (0: it is): how
        long to wait for more input to join it."""
        return max(0.0, self.min_age_s - (time.monotonic() - self.started))

    def commit(self, positions: list[TopicPartition], group_metadata: object) -> None:
        """Send the consumed `positions` with the group's metadata (KIP-447), commit, begin."""
        if positions:
            self._retry(
                lambda: self.producer.send_offsets_to_transaction(
                    positions, group_metadata, CALL_TIMEOUT_S
                )
            )
        self._retry(lambda: self.producer.commit_transaction(CALL_TIMEOUT_S))
        self.begin()

    def abort(self) -> None:
        """Abort and begin the next: its outputs are void, the caller rewinds its inputs."""
        self.producer.abort_transaction(CALL_TIMEOUT_S)
        self.begin()

    def _retry(self, call: Callable[[], None]) -> None:
        """`call`, repeated on retriable errors for up to RETRY_FOR_S (see the module doc)."""
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if (
                    err.fatal()
                    or not err.retriable()
                    or err.txn_requires_abort()
                    or time.monotonic() > deadline
                ):
                    raise
                self.retries += 1
                log_event(log, "retriable commit error, retrying", logging.WARNING, error=str(err))
