"""Health judgements shared by the supervisor sensors and the health asset checks.

Pure functions over what a runtime and Connect report, so the rules are tested without
processes: a worker is dead when its health endpoint does not answer or its process is gone,
stalled when it says so (its loop has not turned for a while) or when it made no progress
between two evaluations although it has lag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from orchestration.resources import WorkerStatus
from orchestration.topology import SinkSpec, WorkerSpec, table_key, topic_key
from streaming.sink.connect import ConnectorState, describe

OK, DEAD, STALLED, RESTORING = "ok", "dead", "stalled", "restoring"
CONNECTOR_CHECK = "sink_connector_running"


@dataclass(frozen=True)
class WorkerAssessment:
    state: str
    reason: str
    snapshot: dict[str, Any]
    """What the next evaluation compares progress with (pid, records_in, transactions, lag)."""


def assess_worker(status: WorkerStatus, previous: Mapping[str, Any] | None) -> WorkerAssessment:
    """Judge one worker from its status and the snapshot of the previous evaluation.

    Progress is records_in or committed transactions (the aggregator also works through its
    repartition topic, which records_in does not count); lag is the consumer lag it reports.
    """
    health = status.health
    if health is None:
        return WorkerAssessment(DEAD, "its health endpoint does not answer", {})
    if status.process_alive is False:
        return WorkerAssessment(DEAD, f"its process (pid {status.pid}) is gone", {})
    snapshot = {
        "pid": health.get("pid"),
        "records_in": health.get("records_in", 0),
        "transactions": health.get("transactions", 0),
        "lag": health.get("consumer_lag") or 0,
    }
    if health.get("status") == STALLED:
        return WorkerAssessment(STALLED, "it reports its loop stalled", snapshot)
    if health.get("status") == RESTORING:  # progress that records_in does not show
        return WorkerAssessment(OK, "restoring the state of newly assigned partitions", snapshot)
    if (
        previous
        and previous.get("pid") == snapshot["pid"]
        and previous.get("records_in") == snapshot["records_in"]
        and previous.get("transactions") == snapshot["transactions"]
        and previous.get("lag", 0) > 0
        and snapshot["lag"] > 0
    ):
        reason = f"no progress between two evaluations with a consumer lag of {snapshot['lag']}"
        return WorkerAssessment(STALLED, reason, snapshot)
    return WorkerAssessment(OK, "healthy", snapshot)


def worker_check_name(worker: WorkerSpec) -> str:
    return f"{worker.name.replace('-', '_')}_healthy"


def worker_metadata(status: WorkerStatus, assessment: WorkerAssessment) -> dict[str, Any]:
    health = status.health or {}
    metadata: dict[str, Any] = {
        "worker": status.name,
        "state": assessment.state,
        "reason": assessment.reason,
        "pid": status.pid if status.pid is not None else -1,
    }
    for field in ("records_in", "dead_letters", "transactions", "consumer_lag", "uptime_s"):
        if health.get(field) is not None:
            metadata[field] = health[field]
    if health.get("records_out"):
        metadata["records_out"] = dg.MetadataValue.json(health["records_out"])
    if health.get("last_commit_time"):
        metadata["last_commit_time"] = dg.MetadataValue.timestamp(health["last_commit_time"])
    return metadata


def worker_events(
    worker: WorkerSpec,
    status: WorkerStatus,
    assessment: WorkerAssessment,
    extra: Mapping[str, Any] | None = None,
) -> list[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """The worker's health on the topics it writes, and its check on the first of them."""
    metadata = {**worker_metadata(status, assessment), **(extra or {})}
    events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = [
        dg.AssetObservation(asset_key=topic_key(topic), metadata=metadata)
        for topic in worker.outputs
    ]
    events.append(
        dg.AssetCheckEvaluation(
            asset_key=topic_key(worker.outputs[0]),
            check_name=worker_check_name(worker),
            passed=assessment.state == OK,
            metadata=metadata,
        )
    )
    return events


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
