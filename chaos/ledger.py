"""The chaos run's bookkeeping, pure: what the faults did, what the check found, the summary.

Records are compared as a multiset of (key, value bytes): the fraud filter copies each input
record unchanged into exactly one of valid, fraud or the dead-letter topic, so under
exactly-once the outputs of an input window are that window, record for record. A record
missing from the outputs is lost; one more often there than in the input is duplicated.

A run proves something only if it exercised what it claims: `Floors` are the least it must have
done (acknowledged POSTs, edits of each kind, kills during a restore), below which it fails as
vacuous, whatever else it found.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from chaos.oracle import EDIT_KINDS as ORACLE_KINDS
from chaos.oracle import REFUSAL_KINDS

Record = tuple[bytes | None, bytes | None]
EDIT_KINDS = tuple(kind for kind in ORACLE_KINDS if kind != "new")
"""The kinds of edit a run must exercise (the oracle counts them from the topic)."""
RESTARTED = ("postgres", "registry", "connect", "daemon")
SUMMARY_NAMES = {"postgres": "pg", "registry": "registry", "connect": "connect", "daemon": "daemon"}


K = TypeVar("K", bound=Hashable)


def lost_and_duplicated(inputs: Counter[K], outputs: Counter[K]) -> tuple[int, int]:
    """Input records absent from the outputs, and output records beyond their input count."""
    return sum((inputs - outputs).values()), sum((outputs - inputs).values())


@dataclass(frozen=True)
class Floors:
    """The least a run must exercise to count (the issue's: 5,000 acknowledged POSTs, 200
    edits of each kind, 2 kills during a restore, 5 kills of each instance; and records that
    are no review, 20 of each kind of the validity rule)."""

    acked_posts: int = 5_000
    edits_each: int = 200
    kills_restoring: int = 2
    kills_each: int = 5
    refused_each: int = 20

    @classmethod
    def smoke(cls) -> Floors:
        """A quick look at the machinery: it never passes as clean."""
        return cls(acked_posts=0, edits_each=0, kills_restoring=0, kills_each=0, refused_each=0)


class CheckVerdict(Protocol):
    """What `chaos.check.run_check` returns (kept structural: this module does no I/O)."""

    routing: dict[str, int]
    acked_missing: int
    refused: dict[str, int]
    edits: dict[str, int]
    problems: list[str]

    @property
    def stats_exact(self) -> bool: ...


@dataclass
class Outcome:
    """Everything the summary line reports."""

    floors: Floors = field(default_factory=Floors)
    kills: Counter[str] = field(default_factory=Counter)
    kills_restoring: int = 0
    stops: int = 0
    broker_kills: int = 0
    hanging_aborted: int = 0
    """Transactions the stack's reaper found hanging and aborted during the run."""
    restarts: Counter[str] = field(default_factory=Counter)
    clock_jumps: int = 0
    clock_offset_s: float = 0.0
    acked: int = 0
    acked_posts: int = 0
    edits: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    acked_missing: int = 0
    stats_exact: bool | None = None
    mismatches: int | None = None
    refused: dict[str, int] = field(default_factory=dict)
    """Records of the window that are no review, by kind (the oracle's count)."""
    refusal_kinds_differing: int | None = None
    """Kinds whose refusals the reconciliation found differing between batch and stream."""
    recoveries: dict[str, list[float]] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    """What the independent check found wrong, in words."""
    failures: list[str] = field(default_factory=list)
    """What went wrong beyond the figures (a worker that never came back, a failed step)."""

    def record_kill(self, instance: str, restoring: bool) -> None:
        self.kills[instance] += 1
        self.kills_restoring += restoring

    def recovered(self, kind: str, seconds: float) -> None:
        self.recoveries.setdefault(kind, []).append(seconds)

    def take(self, verdict: CheckVerdict) -> None:
        """The independent check's results."""
        self.lost = verdict.routing.get("lost", 0)
        self.duplicated = verdict.routing.get("duplicated", 0)
        self.misrouted = verdict.routing.get("misrouted", 0)
        self.acked_missing = verdict.acked_missing
        self.edits = dict(verdict.edits)
        self.refused = dict(verdict.refused)
        self.stats_exact = verdict.stats_exact
        self.findings = list(verdict.problems)

    def vacuous(self) -> list[str]:
        """What the run did not exercise enough (empty: it counts)."""
        f, out = self.floors, []
        if self.acked_posts < f.acked_posts:
            out.append(f"only {self.acked_posts} acknowledged POSTs (floor {f.acked_posts})")
        for kind in EDIT_KINDS:
            if self.edits.get(kind, 0) < f.edits_each:
                out.append(f"only {self.edits.get(kind, 0)} edits '{kind}' (floor {f.edits_each})")
        for kind in REFUSAL_KINDS:
            if self.refused.get(kind, 0) < f.refused_each:
                n = self.refused.get(kind, 0)
                out.append(f"only {n} records refused as '{kind}' (floor {f.refused_each})")
        if self.kills_restoring < f.kills_restoring:
            out.append(f"only {self.kills_restoring} kills during a restore")
        few = {i: n for i, n in self.kills.items() if n < f.kills_each}
        if few or not self.kills:
            out.append(f"instances killed fewer than {f.kills_each} times: {few or 'all'}")
        return out

    def problems(self) -> list[str]:
        return [*self.failures, *self.findings, *self.vacuous()]

    @property
    def clean(self) -> bool:
        return (
            self.floors != Floors.smoke()
            and not self.problems()
            and self.lost == self.duplicated == self.misrouted == self.acked_missing == 0
            and self.stats_exact is True
            and self.mismatches == 0
            and self.refusal_kinds_differing == 0
        )

    def summary(self) -> str:
        kills = self.recoveries.get("kill", [])
        restarts = ",".join(f"{SUMMARY_NAMES[s]}:{self.restarts[s]}" for s in RESTARTED)
        by_kind = ",".join(
            f"{kind}:{statistics.median(v):.1f}/{max(v):.1f}"
            for kind, v in sorted(self.recoveries.items())
        )
        fields: list[tuple[str, Any]] = [
            ("kills", sum(self.kills.values())),
            ("kills_restoring", self.kills_restoring),
            ("stops", self.stops),
            ("broker_kills", self.broker_kills),
            ("hanging_txns_aborted", self.hanging_aborted),
            ("restarts", restarts),
            ("clock_jumps", self.clock_jumps),
            ("acked", self.acked),
            ("acked_posts", self.acked_posts),
            ("edits", sum(self.edits.get(k, 0) for k in EDIT_KINDS)),
            ("lost", self.lost + self.acked_missing),
            ("duplicated", self.duplicated),
            ("misrouted", self.misrouted),
            ("stats", _stats_word(self.stats_exact)),
            ("refused", ",".join(f"{k}:{self.refused.get(k, 0)}" for k in REFUSAL_KINDS)),
            ("reconciliation", _reconciliation_word(self.mismatches, self.refusal_kinds_differing)),
            ("recovery_p50_s", f"{statistics.median(kills):.1f}" if kills else "nan"),
            ("recovery_max_s", f"{max(kills):.1f}" if kills else "nan"),
            ("recovery_by_fault_p50/max_s", by_kind or "none"),
            ("vacuous", "yes" if self.vacuous() else "no"),
        ]
        return "chaos: " + " ".join(f"{k}={v}" for k, v in fields)


def _stats_word(exact: bool | None) -> str:
    return "not-checked" if exact is None else "exact" if exact else "differ"


def _reconciliation_word(mismatches: int | None, refusal_kinds: int | None = 0) -> str:
    if mismatches is None:
        return "not-run"
    if refusal_kinds:
        return f"{mismatches}-mismatches-{refusal_kinds}-refusal-kinds-differ"
    return "exact" if mismatches == 0 else f"{mismatches}-mismatches"


def reaper_aborts(lines: list[str]) -> int:
    """Transactions the stack's reaper (stack/txn_reaper.py) logged as aborted."""
    return sum('"msg": "hanging transaction aborted"' in line for line in lines)
