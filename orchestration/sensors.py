"""Sensors: the course catalogue, stream observations, and the supervisors of workers and sink.

Supervisors run by default. Each unhealthy episode is an incident with its own run key, kept in
the sensor cursor until the worker or connector is healthy again, so one incident launches one
restart however many evaluations see it; if that restart run has finished and the problem is
still there, the next evaluation opens a new incident (and a new restart). Health is reported on
every evaluation (observations and check results), healthy or not.
"""

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.storage.tags import RUN_KEY_TAG

from orchestration.assets.backfill import courses
from orchestration.assets.stream import observe_tables, observe_topics
from orchestration.jobs import restart_connector_job, restart_worker_job
from orchestration.resources import (
    ConnectResource,
    KafkaResource,
    PostgresResource,
    ReviewSourceResource,
    SchemaRegistryResource,
    SqlModelsResource,
    WorkerRuntimeResource,
)
from orchestration.supervision import OK, assess_worker, connector_events, worker_events
from orchestration.topology import SINKS, WORKERS, WorkerSpec
from streaming.sink.connect import ConnectError, describe

SUPERVISOR_INTERVAL_S = 30


def _cursor(context: dg.SensorEvaluationContext) -> dict[str, Any]:
    return json.loads(context.cursor) if context.cursor else {}


def _incident(
    context: dg.SensorEvaluationContext, prefix: str, previous: str | None, kind: str
) -> str:
    """The open incident, or a new one when there is none or its restart run is over."""
    if previous is not None:
        runs = context.instance.get_runs(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: f"{prefix}-{previous}"}), limit=1
        )
        if not runs or not runs[0].is_finished:
            return previous
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _rate(snapshot: Mapping[str, Any], last: Mapping[str, Any], now: float) -> dict[str, float]:
    """Records in per second since the previous evaluation of the same process."""
    if not snapshot or snapshot.get("pid") != last.get("pid") or now <= last.get("time", now):
        return {}
    return {
        "records_in_per_s": round(
            (snapshot["records_in"] - last["records_in"]) / (now - last["time"]), 1
        )
    }


def worker_supervisor(worker: WorkerSpec) -> dg.SensorDefinition:
    name = f"supervise_{worker.name.replace('-', '_')}"

    @dg.sensor(
        name=name,
        job=restart_worker_job,
        minimum_interval_seconds=SUPERVISOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Restarts {worker.name} when its health endpoint does not answer, its "
        "process is gone, or it is stalled (says so, or no progress with lag across two "
        "evaluations).",
    )
    def supervise(
        context: dg.SensorEvaluationContext, worker_runtime: WorkerRuntimeResource
    ) -> dg.SensorResult:
        state = _cursor(context)
        now = time.time()
        status = worker_runtime.status(worker.name)
        last = state.get("last") or {}
        assessment = assess_worker(status, last)
        events = worker_events(worker, status, assessment, _rate(assessment.snapshot, last, now))
        cursor = {"last": {**assessment.snapshot, "time": now}, "incident": None}
        if assessment.state == OK:
            return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor))
        prefix = f"restart-{worker.name}"
        incident = _incident(context, prefix, state.get("incident"), assessment.state)
        context.log.warning(f"{worker.name} is {assessment.state}: {assessment.reason}")
        request = dg.RunRequest(
            run_key=f"{prefix}-{incident}",
            run_config={
                "ops": {
                    "restart_worker": {
                        "config": {"worker": worker.name, "reason": assessment.reason}
                    }
                }
            },
            tags={"worker": worker.name, "incident": incident},
        )
        cursor["incident"] = incident
        return dg.SensorResult(
            run_requests=[request], asset_events=events, cursor=json.dumps(cursor)
        )

    return supervise


@dg.sensor(
    job=restart_connector_job,
    minimum_interval_seconds=SUPERVISOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Restarts the failed parts of any FAILED connector or task; reports the sink "
    "connectors' states on their tables.",
)
def supervise_connect(
    context: dg.SensorEvaluationContext, connect: ConnectResource
) -> dg.SensorResult:
    incidents: Mapping[str, str | None] = _cursor(context).get("incidents", {})
    try:
        states = connect.statuses()
    except ConnectError as exc:
        events = [e for sink in SINKS for e in connector_events(sink, None, str(exc))]
        return dg.SensorResult(asset_events=events, cursor=json.dumps({"incidents": incidents}))
    events = [
        e
        for sink in SINKS
        for e in connector_events(sink, states.get(sink.connector), "connector not deployed")
    ]
    requests, open_incidents = [], {}
    for name, state in sorted(states.items()):
        if not state.failed:
            continue
        prefix = f"restart-connector-{name}"
        incident = _incident(context, prefix, incidents.get(name), "failed")
        open_incidents[name] = incident
        reason = describe(state)
        context.log.warning(f"connector {name}: {reason}")
        requests.append(
            dg.RunRequest(
                run_key=f"{prefix}-{incident}",
                run_config={
                    "ops": {"restart_connector": {"config": {"connector": name, "reason": reason}}}
                },
                tags={"connector": name, "incident": incident},
            )
        )
    return dg.SensorResult(
        run_requests=requests,
        asset_events=events,
        cursor=json.dumps({"incidents": open_incidents}),
    )


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Observes the topics (end offsets, throughput, lag per stage) and the sink "
    "tables (rows, last update).",
)
def observe_stream(
    context: dg.SensorEvaluationContext,
    kafka: KafkaResource,
    schema_registry: SchemaRegistryResource,
    postgres: PostgresResource,
    sql_models: SqlModelsResource,
) -> dg.SensorResult:
    now = time.time()
    cursor = _cursor(context)
    topic_events, topics = observe_topics(kafka, schema_registry, cursor.get("topics", {}), now)
    table_events, tables = observe_tables(
        postgres.engine(), sql_models.stream_schema, cursor.get("tables", {}), now
    )
    return dg.SensorResult(
        asset_events=topic_events + table_events,
        cursor=json.dumps({"topics": topics, "tables": tables}),
    )


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds every course the review source lists to the `courses` partitions.",
)
def course_catalogue(
    context: dg.SensorEvaluationContext, review_source: ReviewSourceResource
) -> dg.SensorResult | dg.SkipReason:
    known = set(context.instance.get_dynamic_partitions(courses.name))
    new = sorted({str(c) for c in review_source.course_ids()} - known, key=int)
    if not new:
        return dg.SkipReason(f"no new course ({len(known)} known)")
    context.log.info(f"{len(new)} new course(s)")
    return dg.SensorResult(dynamic_partitions_requests=[courses.build_add_request(new)])


all_sensors = [
    *(worker_supervisor(w) for w in WORKERS),
    supervise_connect,
    observe_stream,
    course_catalogue,
]
