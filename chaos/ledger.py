"""The chaos run's bookkeeping, pure: what went in, what came out, how long recovery took.

Records are compared as a multiset of (key, value bytes): the fraud filter copies each input
record unchanged into exactly one of valid, fraud or the dead-letter topic, so under
exactly-once the outputs of an input window are that window, record for record. A record
missing from the outputs is lost; one more often there than in the input is duplicated.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Record = tuple[bytes | None, bytes | None]


def lost_and_duplicated(inputs: Counter[Record], outputs: Counter[Record]) -> tuple[int, int]:
    """Input records absent from the outputs, and output records beyond their input count."""
    return sum((inputs - outputs).values()), sum((outputs - inputs).values())


def acked_lost_and_duplicated(acked: Iterable[int], keys: Counter[int]) -> tuple[int, int]:
    """Acknowledged POSTs (review ids) absent from the input topic, and those written twice."""
    acked = set(acked)
    lost = sum(1 for review_id in acked if keys[review_id] == 0)
    duplicated = sum(keys[review_id] - 1 for review_id in acked if keys[review_id] > 1)
    return lost, duplicated


@dataclass
class Outcome:
    """Everything the summary line reports."""

    kills: int = 0
    broker_restarts: int = 0
    connect_restarts: int = 0
    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatches: int | None = None
    recoveries_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """What went wrong beyond the figures (a worker that never came back, a failed step)."""

    @property
    def clean(self) -> bool:
        return (
            not self.failures and self.lost == 0 and self.duplicated == 0 and self.mismatches == 0
        )

    def summary(self) -> str:
        rec = self.recoveries_s
        reconciliation = (
            "not run"
            if self.mismatches is None
            else "exact"
            if self.mismatches == 0
            else f"{self.mismatches} mismatches"
        )
        return (
            f"chaos: kills={self.kills} broker_restarts={self.broker_restarts} "
            f"connect_restarts={self.connect_restarts} acked={self.acked} lost={self.lost} "
            f"duplicated={self.duplicated} reconciliation={reconciliation} "
            f"recovery_p50_s={statistics.median(rec) if rec else float('nan'):.1f} "
            f"recovery_max_s={max(rec) if rec else float('nan'):.1f}"
        )


def parse_answers(lines: Iterable[str]) -> tuple[list[int], Mapping[str, int]]:
    """The load generator's answer log: review ids answered 201, and the count per other status."""
    acked: list[int] = []
    others: Counter[str] = Counter()
    for line in lines:
        key, value = line.split()
        if key == "!":
            others[value] += 1
        else:
            acked.append(int(key))
    return acked, others
