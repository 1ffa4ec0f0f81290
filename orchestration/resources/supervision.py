"""Health judgements shared by the supervisor sensors and the health asset checks.

Pure functions over what a runtime and Connect report, so the rules are tested without
processes. Who restarts what: a process that exits is restarted by its process supervisor
(stack.procs), so a dead process whose supervisor runs is "restarting", not a case for a
restart run. A run is for what no supervisor fixes: a live but stalled worker (it says so, it
made no progress between two evaluations although it has lag, or its health endpoint stays
silent) and a dead worker with no supervisor at all. A worker that crashes again and again is
held (a crash loop), so a person looks at it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from orchestration.resources.worker_runtime import WorkerStatus
from orchestration.topology import SinkSpec, WorkerSpec, table_key, topic_key
from stack import procs
from streaming.sink.connect import ConnectorState, describe

OK, DEAD, STALLED, RESTORING, WAITING = "ok", "dead", "stalled", "restoring", "waiting"
RESTARTING, HELD, CRASH_LOOP, SLOW = "restarting", "held", "crash loop", "slow"
NEEDS_RUN = frozenset({DEAD, STALLED})
"""The states a restart run is for; the others are the supervisor's or a person's business."""
TRANSIENT = frozenset({RESTARTING, RESTORING, SLOW, WAITING})
"""Not yet healthy, on its way there (a worker waiting for a service resumes when it is back,
and a restart would not bring it sooner): the check fails as a warning."""
CONNECTOR_CHECK = "sink_connector_running"
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 300.0
STARTUP_GRACE_S = 60.0
"""How long a freshly started process may take to answer its health endpoint."""


@dataclass(frozen=True)
class WorkerAssessment:
    state: str
    reason: str
    snapshot: dict[str, Any]
    """What the next evaluation compares progress with (the process: its pid when silent, its
    incarnation when it answers; records_in, transactions, lag)."""


def _restarting(record: Mapping[str, Any]) -> str:
    last = (record.get("restarts") or [{}])[-1]
    if record.get("state") == "backoff":
        return (
            f"its supervisor restarts it after a back-off of {record.get('backoff_s', 0)} s "
            f"(it {last.get('exit', 'exited')})"
        )
    return "its supervisor is starting it"


def _silent(status: WorkerStatus, previous: Mapping[str, Any]) -> WorkerAssessment:
    """A live process whose health endpoint did not answer: stalled only when the previous
    evaluation of the same process found it silent too (one slow answer on a busy machine, a
    GIL held for a moment, is not a stall: Kubernetes' liveness probes have a failure
    threshold for the same reason)."""
    snapshot = {"pid": status.pid, "silent": True}
    if previous.get("silent") and previous.get("pid") == status.pid:
        return WorkerAssessment(
            STALLED, "alive, but its health endpoint did not answer twice in a row", snapshot
        )
    return WorkerAssessment(SLOW, "alive, its health endpoint did not answer once", snapshot)


def assess_worker(
    status: WorkerStatus, previous: Mapping[str, Any] | None, now: float | None = None
) -> WorkerAssessment:
    """Judge one worker process from its status and the snapshot of the previous evaluation.

    Progress is records_in or committed transactions (the aggregator also works through its
    repartition topic, which records_in does not count); lag is the consumer lag it reports.
    """
    now = time.time() if now is None else now
    record = status.record or {}
    health = status.health
    if status.supervised and record.get("state") == HELD:
        return WorkerAssessment(HELD, f"restarts held: {record.get('held_reason', 'held')}", {})
    if status.process_alive is False or (health is None and not status.process_alive):
        if status.supervised:
            return WorkerAssessment(RESTARTING, _restarting(record), {})
        if status.process_alive is False:
            return WorkerAssessment(DEAD, f"its process (pid {status.pid}) is gone", {})
        return WorkerAssessment(DEAD, "its health endpoint does not answer", {})
    if health is None:
        up_s = now - float(record.get("started") or 0)
        if status.supervised and up_s < STARTUP_GRACE_S:
            reason = f"started {up_s:.0f} s ago, its health endpoint does not answer yet"
            return WorkerAssessment(RESTARTING, reason, {})
        if status.supervised:
            return _silent(status, previous or {})
        return WorkerAssessment(DEAD, "its health endpoint does not answer", {})
    snapshot = {
        "incarnation": health.get("incarnation"),
        "records_in": health.get("records_in", 0),
        "transactions": health.get("transactions", 0),
        "lag": health.get("consumer_lag") or 0,
    }
    if health.get("status") == STALLED:
        return WorkerAssessment(STALLED, f"it reports itself stalled: {why(health)}", snapshot)
    if health.get("status") == WAITING:
        return WorkerAssessment(WAITING, why(health), snapshot)
    if health.get("status") == RESTORING:  # progress that records_in does not show
        return WorkerAssessment(
            RESTORING, "restoring the state of newly assigned partitions", snapshot
        )
    if (
        previous
        and previous.get("incarnation") == snapshot["incarnation"]
        and previous.get("records_in") == snapshot["records_in"]
        and previous.get("transactions") == snapshot["transactions"]
        and previous.get("lag", 0) > 0
        and snapshot["lag"] > 0
    ):
        reason = f"no progress between two evaluations with a consumer lag of {snapshot['lag']}"
        return WorkerAssessment(STALLED, reason, snapshot)
    return WorkerAssessment(OK, "healthy", snapshot)


def why(health: Mapping[str, Any]) -> str:
    return str(health.get("reason") or "no reason given")


def crashes(record: Mapping[str, Any] | None, after: float, now: float) -> int:
    """The latest streak of consecutive quick crashes in the crash-loop window
    (`procs.quick_crash_streak`: a process killed after running a while is no loop), counting
    only those after `after` (the restart a previous hold was decided on, so a release starts
    afresh)."""
    later = [r for r in (record or {}).get("restarts", []) if float(r.get("time", 0)) > after]
    return procs.quick_crash_streak({"restarts": later}, CRASH_LOOP_WINDOW_S, now)


def crash_loop_reason(name: str, count: int) -> str:
    return (
        f"crash loop: {count} restarts in {CRASH_LOOP_WINDOW_S / 60:.0f} min, each within "
        f"{procs.STABLE_AFTER_S:.0f} s of its start, restarts stopped; "
        f"`python3 -m stack.procs release {name}` then restart"
    )


def worker_check_name(worker: WorkerSpec) -> str:
    return f"{worker.name.replace('-', '_')}_healthy"


def worker_metadata(status: WorkerStatus, assessment: WorkerAssessment) -> dict[str, Any]:
    """One process's health, as observation metadata."""
    health = status.health or {}
    record = status.record or {}
    metadata: dict[str, Any] = {
        "worker": status.name,
        "state": assessment.state,
        "reason": assessment.reason,
        "pid": status.pid if status.pid is not None else -1,
        "supervisor": str(record.get("state", "none")) if status.supervised else "none",
    }
    for field in ("records_in", "dead_letters", "transactions", "consumer_lag", "uptime_s"):
        if health.get(field) is not None:
            metadata[field] = health[field]
    if health.get("records_out"):
        metadata["records_out"] = dg.MetadataValue.json(health["records_out"])
    if health.get("last_commit_time"):
        metadata["last_commit_time"] = dg.MetadataValue.timestamp(health["last_commit_time"])
    return metadata


def worker_observations(
    worker: WorkerSpec,
    status: WorkerStatus,
    assessment: WorkerAssessment,
    extra: Mapping[str, Any] | None = None,
) -> list[dg.AssetObservation]:
    """One process's health on each topic the worker writes."""
    metadata = {**worker_metadata(status, assessment), **(extra or {})}
    return [dg.AssetObservation(asset_key=topic_key(t), metadata=metadata) for t in worker.outputs]


def restart_observations(
    worker: WorkerSpec, name: str, restarts: Sequence[Mapping[str, Any]]
) -> list[dg.AssetObservation]:
    """Each restart its supervisor recorded, on the worker's first output topic."""
    return [
        dg.AssetObservation(
            asset_key=topic_key(worker.outputs[0]),
            description=f"{name} restarted ({r.get('exit')})",
            metadata={
                "instance": name,
                "event": "requested restart" if r.get("requested") else "crash",
                "time": dg.MetadataValue.timestamp(float(r.get("time", 0))),
                "exit": str(r.get("exit", "")),
                "uptime_s": float(r.get("uptime_s", 0)),
                "backoff_s": float(r.get("backoff_s", 0)),
                "pid": int(r.get("pid") or -1),
            },
        )
        for r in restarts
    ]


@dataclass(frozen=True)
class WorkerHealth:
    """The health check's verdict over every instance of a worker."""

    passed: bool
    severity: dg.AssetCheckSeverity
    metadata: dict[str, Any]


def worker_health(assessed: Sequence[tuple[WorkerStatus, WorkerAssessment]]) -> WorkerHealth:
    """Passed when every instance is ok; a warning while the failing ones are only on their
    way back (restarting, restoring), an error otherwise. Metadata per instance."""
    failing = [(s, a) for s, a in assessed if a.state != OK]
    metadata: dict[str, Any] = {
        "instances": len(assessed),
        "healthy": len(assessed) - len(failing),
        "reason": "; ".join(f"{s.name}: {a.reason}" for s, a in failing) or "all healthy",
    }
    for status, assessment in assessed:
        record = status.record or {}
        metadata[status.name] = dg.MetadataValue.json(
            {
                "state": assessment.state,
                "reason": assessment.reason,
                "pid": status.pid,
                "supervisor": record.get("state") if status.supervised else None,
                "crashes_5_min": crashes(record, 0.0, time.time()),
                **{
                    k: (status.health or {}).get(k)
                    for k in ("records_in", "transactions", "consumer_lag", "uptime_s")
                },
            }
        )
    transient = all(a.state in TRANSIENT for _, a in failing)
    severity = dg.AssetCheckSeverity.WARN if transient else dg.AssetCheckSeverity.ERROR
    return WorkerHealth(not failing, severity, metadata)


def worker_check(
    worker: WorkerSpec, assessed: Sequence[tuple[WorkerStatus, WorkerAssessment]]
) -> dg.AssetCheckEvaluation:
    """The worker's health check on its first output topic, over all its instances."""
    verdict = worker_health(assessed)
    return dg.AssetCheckEvaluation(
        asset_key=topic_key(worker.outputs[0]),
        check_name=worker_check_name(worker),
        passed=verdict.passed,
        severity=verdict.severity,
        metadata=verdict.metadata,
    )


def connector_events(
    sink: SinkSpec, state: ConnectorState | None, problem: str | None = None
) -> list[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """A sink connector's state on the table it writes, and whether all of it runs.

    `problem` explains a missing state (Connect unreachable, connector not deployed).
    """
    metadata = connector_metadata(sink, state, problem)
    return [
        dg.AssetObservation(asset_key=table_key(sink.table), metadata=metadata),
        dg.AssetCheckEvaluation(
            asset_key=table_key(sink.table),
            check_name=CONNECTOR_CHECK,
            passed=state is not None and state.running,
            metadata=metadata,
        ),
    ]


def connector_metadata(
    sink: SinkSpec, state: ConnectorState | None, problem: str | None = None
) -> dict[str, Any]:
    if state is None:
        return {"connector": sink.connector, "state": "UNKNOWN", "detail": problem or ""}
    return {
        "connector": sink.connector,
        "state": state.state,
        "tasks": dg.MetadataValue.json({str(t.id): t.state for t in state.tasks}),
        "detail": describe(state),
    }
