"""Records whose outputs the broker refuses for good: found after the abort, then dead-lettered.

The broker refuses some records for good: too large for the topic (`MSG_SIZE_TOO_LARGE`), no key
on a compacted topic (`INVALID_RECORD`), a policy's verdict (`POLICY_VIOLATION`), a timestamp
out of the topic's bounds (`INVALID_TIMESTAMP`). In a transaction one refused output aborts the
whole batch, and the rewound batch would be refused again on every retry: a wedged worker. So
after such an abort the loop goes through the batch again one record per transaction
(*careful*); the record whose own transaction is refused is blamed, and when the loop reads it
again it goes to the dead letters with the broker's reason instead, and the loop goes on. The
fast path is untouched (no per-record delivery callback); the careful pass costs a commit per
record, only over the batch that was refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError

REFUSED = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_RECORD",
        "POLICY_VIOLATION",
        "INVALID_TIMESTAMP",
    }
)
"""Error names (librdkafka's, the broker's codes) that no retry of the same record can change."""

Partition = tuple[str, int]


def refused(err: KafkaError) -> bool:
    """An output the broker (or the client, before sending it) will never accept."""
    return not err.fatal() and err.name() in REFUSED


def failed_transaction(err: KafkaError) -> bool:
    """A produce refused because the open transaction already failed (a record of it was
    refused in the background): the cause shows when each record gets its own transaction."""
    return not err.fatal() and err.code() == KafkaError._STATE


def reason(err: KafkaError) -> str:
    return f"output refused by the broker: {err.name()} ({err.str()})"


@dataclass
class Refusals:
    careful_until: dict[Partition, int] = field(default_factory=dict)
    """Per input partition, the position up to which records go one per transaction."""
    blamed: dict[tuple[str, int, int], str] = field(default_factory=dict)
    """Input records (topic, partition, offset) whose own transaction was refused, and why."""
    diverted: set[tuple[str, int, int]] = field(default_factory=set)
    """Blamed records since sent to the dead letters (in a transaction not yet committed)."""

    @property
    def careful(self) -> bool:
        return bool(self.careful_until)

    def suspect(self, consumed: list[tuple[str, int, int]]) -> None:
        """A batch was refused: every record before these consumed positions goes through
        again one at a time."""
        for topic, partition, end in consumed:
            key = (topic, partition)
            self.careful_until[key] = max(end, self.careful_until.get(key, end))

    def blame(self, topic: str, partition: int, offset: int, why: str) -> bool:
        """This record's own transaction was refused; False when its dead letter was what
        got refused (nothing is left to try: the worker stalls and says so)."""
        position = (topic, partition, offset)
        if position in self.diverted:
            return False
        self.blamed[position] = why
        return True

    def take(self, topic: str, partition: int, offset: int) -> str | None:
        """Why this record goes to the dead letters instead (None: process it)."""
        why = self.blamed.get((topic, partition, offset))
        if why is not None:
            self.diverted.add((topic, partition, offset))
        return why

    def passed(self, topic: str, partition: int, offset: int) -> None:
        """The records up to offset are committed: forget the blamed ones among them."""
        key = (topic, partition)
        for position in [b for b in self.blamed if b[:2] == key and b[2] <= offset]:
            del self.blamed[position]
            self.diverted.discard(position)

    def caught_up(self, positions: dict[Partition, int]) -> None:
        """The consumer's positions now: a partition at or past its careful range (or no
        longer assigned here, or idle since) needs no more care; with none left, batches
        resume."""
        for key, end in list(self.careful_until.items()):
            if key not in positions or positions[key] >= end:
                del self.careful_until[key]
