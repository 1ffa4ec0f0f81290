"""A stream worker's counters, typed: what the loop updates and /health and /metrics read.

One dataclass (`WorkerMetrics`) is the whole of a worker's self-report: the loop's counters,
what its stores say of their restores and snapshots, and its stages' own figures
(`StageFigures`). `snapshot` is the /health JSON (a field that is None is left out, as a key
that was never set); `streaming.workers.prometheus` renders the same figures for scrapes.
`assess` is the one decision of a worker's status. Updates are single assignments from the
loop's thread (GIL-atomic), so readers need no lock.
"""

from __future__ import annotations

import bisect
import json
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypedDict

COMMIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Commit latency buckets: a healthy commit takes milliseconds; seconds mean a slow broker."""
COMMIT_STALL_S = 30.0
"""A worker with records to read and no commit for this long is stalled, whatever its loop does
(e.g. aborting every transaction on an output the broker refuses)."""
ABORT_STREAK = 5
"""This many aborted transactions in a row, and the worker is stalled without waiting."""


@dataclass
class LatencyHistogram:
    """Counts per bucket (upper bounds `bounds`, plus +Inf) and their sum: what a Prometheus
    histogram exposes, kept without a client library in the loop (one bisect per commit)."""

    bounds: tuple[float, ...] = COMMIT_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total_s: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of observations <= le) per bucket, +Inf last."""
        out, running = [], 0
        for le, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((le, running))
        return out


@dataclass
class PartitionStats:
    """One partition as librdkafka's statistics last saw it (every statistics.interval.ms)."""

    lag: int = 0
    fetched: int = 0
    """Records the consumer received (librdkafka `rxmsgs`; again after a rewind)."""
    produced: int = 0
    """Records the producer sent to it (librdkafka `txmsgs`)."""


class RestoreProgress(TypedDict):
    """A store's restore in progress: changelog records read so far, of how many."""

    records: int
    of: int


class RestoredFrom(TypedDict):
    """A partition's last restore: where it started (kept, snapshot, changelog), records read."""

    source: str
    records: int


@dataclass
class StageFigures:
    """What a worker's stages report beyond the loop (the aggregator's window and state)."""

    as_of_day: int
    """The epoch day the recent window ends on."""
    changes_out: int = 0
    changes_applied: int = 0
    state_reviews: int | None = None
    state_bytes: int | None = None


def assess(
    now: float,
    last_loop: float,
    restoring_since: float | None,
    progress_since: float,
    lag: int | None,
    aborts_in_a_row: int,
    last_abort: str | None,
    waiting_for: str | None,
    stall_after_s: float,
    restore_limit_s: float = 600,
    commit_stall_s: float = COMMIT_STALL_S,
) -> tuple[str, str | None]:
    """A worker's status and, unless ok, why: restoring (rebuilding state: progress that commits
    do not show, up to `restore_limit_s`); waiting (a service its records need is unreachable:
    it cannot commit, but a restart would not help); stalled (its loop has not turned, or it
    aborts transaction after transaction, or it has input to read and has not committed for
    `commit_stall_s`). Monotonic times; `progress_since` is the last commit or the end of
    the last restore (or the start)."""
    if restoring_since is not None and now - restoring_since <= restore_limit_s:
        return "restoring", "rebuilding the state of newly assigned partitions"
    idle_loop = now - max(last_loop, restoring_since or 0)
    if idle_loop > stall_after_s:
        return "stalled", f"the loop has not turned for {idle_loop:.0f} s"
    if waiting_for is not None:
        return "waiting", f"waiting for a service the records need: {waiting_for}"
    if aborts_in_a_row >= ABORT_STREAK:
        return "stalled", f"{aborts_in_a_row} transactions aborted in a row (last: {last_abort})"
    since = now - progress_since
    if lag and since > commit_stall_s:
        why = f"no commit for {since:.0f} s with {lag} records to read"
        return "stalled", why + (f" (last abort: {last_abort})" if last_abort else "")
    return "ok", None


@dataclass
class WorkerMetrics:
    """Counters the loop updates and the health endpoint reads (GIL-atomic updates suffice)."""

    worker: str
    instance: str
    incarnation: str = field(default_factory=lambda: secrets.token_hex(8))
    """Which start of the instance this is, new with every process: how a supervisor tells a
    restart from /health, which is public and so shows no pid."""
    started_at: float = field(default_factory=time.time)
    records_in: int = 0
    records_out: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    transactions: int = 0
    last_commit_time: float | None = None
    first_commit_time: float | None = None
    """This process's first commit (wall clock): with the time of a crash, how long the
    restart took to be back to work."""
    last_loop_time: float = field(default_factory=time.monotonic)
    restoring_since: float | None = None
    progress_since: float = field(default_factory=time.monotonic)
    """Monotonic time of the last commit, or of the end of the last restore (or the start)."""
    aborts: Counter[str] = field(default_factory=Counter)
    """Aborted transactions by reason (the broker's error name, `fenced`, `service`)."""
    aborts_in_a_row: int = 0
    last_abort: str | None = None
    consumer_lag: int | None = None
    consumer_errors: int = 0
    assigned: list[str] = field(default_factory=list)
    partitions: dict[tuple[str, int], PartitionStats] = field(default_factory=dict)
    commit_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # -- on /health once set (None: not yet, or not now) -------------------------------------
    commit_retries: int | None = None
    """Retriable commit errors retried (`Transaction.retries`), from the first commit on."""
    waiting_for: str | None = None
    """The kind of service the records wait for (its text, a URL, is the log's)."""
    service_waits: int | None = None
    """Aborts while a service was unreachable."""
    dead_letter_max_bytes: int | None = None
    snapshots: int | None = None
    """State snapshots taken (from the first snapshot call on)."""
    restore_progress: dict[str, RestoreProgress] | None = None
    """Per store, while a restore runs."""
    restored_from: dict[str, dict[int, RestoredFrom]] | None = None
    """Per store and partition, its last restore."""
    stage: StageFigures | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "commit_retries",
        "waiting_for",
        "service_waits",
        "dead_letter_max_bytes",
        "snapshots",
        "restore_progress",
        "restored_from",
    )
    """The fields /health shows only when they are set."""

    def started(self) -> None:
        """The loop starts now (a warm spare's go): uptime and progress count from here."""
        self.started_at = time.time()
        self.last_loop_time = self.progress_since = time.monotonic()

    def committed(self) -> None:
        self.last_commit_time = time.time()
        self.progress_since = time.monotonic()
        self.aborts_in_a_row = 0

    def transaction_committed(self, seconds: float, retries: int) -> bool:
        """A commit that took `seconds`, after `retries` retries in all; whether the first."""
        self.commit_latency.observe(seconds)
        self.transactions += 1
        self.commit_retries = retries
        self.committed()
        first = self.first_commit_time is None
        if first:
            self.first_commit_time = self.last_commit_time
        return first

    def aborted(self, reason: str) -> None:
        self.aborts[reason] += 1
        self.aborts_in_a_row += 1
        self.last_abort = reason

    def status(self, stall_after_s: float, restore_limit_s: float = 600) -> tuple[str, str | None]:
        """`assess` on these counters, now."""
        return assess(
            time.monotonic(),
            self.last_loop_time,
            self.restoring_since,
            self.progress_since,
            self.consumer_lag,
            self.aborts_in_a_row,
            self.last_abort,
            self.waiting_for,
            stall_after_s,
            restore_limit_s,
        )

    def snapshot(self, stall_after_s: float, restore_limit_s: float = 600) -> dict[str, Any]:
        """Counters and status (`assess`): ok, restoring, waiting or stalled, with the reason."""
        status, reason = self.status(stall_after_s, restore_limit_s)
        return {
            "worker": self.worker,
            "instance": self.instance,
            "incarnation": self.incarnation,
            "status": status,
            "reason": reason,
            "uptime_s": round(time.time() - self.started_at, 1),
            "records_in": self.records_in,
            "records_out": dict(self.records_out),
            "dead_letters": self.dead_letters,
            "transactions": self.transactions,
            "aborts": dict(self.aborts),
            "last_commit_time": self.last_commit_time,
            "first_commit_time": self.first_commit_time,
            "consumer_lag": self.consumer_lag,
            "consumer_errors": self.consumer_errors,
            "assigned_partitions": list(self.assigned),
            **self._set_fields(),
        }

    def _set_fields(self) -> dict[str, Any]:
        """The optional fields and the stage's figures that are set, by name."""
        stage = {} if self.stage is None else asdict(self.stage)
        named = {name: getattr(self, name) for name in self.OPTIONAL}
        return {k: v for k, v in {**named, **stage}.items() if v is not None}

    def on_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback: records not yet handed to the loop, all partitions.

        Per partition: last stable offset - fetch position + prefetched records. Not librdkafka's
        `consumer_lag` (end - committed): on topics written in transactions the commit marker
        after the last record is never "consumed", so that figure stays >= 1 on an idle,
        caught-up worker and would make a supervisor think it stalled.
        """
        stats = json.loads(stats_json)
        lag, active = 0, set()
        for name, topic in stats.get("topics", {}).items():
            for pid, part in topic.get("partitions", {}).items():
                if pid == "-1" or part.get("fetch_state") != "active":
                    continue
                position, end = part.get("next_offset", -1), part.get("ls_offset", -1)
                if position >= 0 and end >= 0:
                    behind = max(end - position, 0) + part.get("fetchq_cnt", 0)
                else:
                    behind = max(part.get("consumer_lag", 0), 0)
                lag += behind
                active.add((name, int(pid)))
                seen = self.partitions.setdefault((name, int(pid)), PartitionStats())
                seen.lag, seen.fetched = behind, part.get("rxmsgs", 0)
        for key in self.partitions.keys() - active:  # not fetched here (any more)
            self.partitions[key].lag = 0
        self.consumer_lag = lag

    def on_producer_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback of the worker's producer: records sent per partition."""
        for name, topic in json.loads(stats_json).get("topics", {}).items():
            for pid, part in topic.get("partitions", {}).items():
                if pid != "-1" and part.get("txmsgs", 0):
                    seen = self.partitions.setdefault((name, int(pid)), PartitionStats())
                    seen.produced = part["txmsgs"]
