"""Sensors: the course catalogue, stream observations, and the supervisors of workers and sink.

A worker process that exits is restarted by its process supervisor (stack.procs), not here: a
worker's sensor evaluates each of its instances and launches a restart run only for what no
process supervisor fixes (a live but stalled instance, an instance with no supervisor). It holds
an instance that crashes again and again (a crash loop) and fails its check loudly, and records
every restart the supervisors made as an observation, so the UI shows the history.

Each unhealthy episode that needs a run is an incident with its own run key, kept in the sensor
cursor until the instance or connector is healthy again, so one incident launches one restart
however many evaluations see it; if that restart run has finished and the problem is still
there, the next evaluation opens a new incident (and a new restart). Health is reported on every
evaluation (observations and check results), healthy or not.
"""

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import dagster as dg

from orchestration.assets.backfill import courses
from orchestration.assets.stream import observe_tables, observe_topics
from orchestration.checks import batch_model_freshness, batch_model_keys, stream_table_freshness
from orchestration.jobs import restart_connector_job, restart_worker_job
from orchestration.resources import (
    ConnectResource,
    KafkaResource,
    PostgresResource,
    ReviewSourceResource,
    SchemaRegistryResource,
    SchemasResource,
    WorkerRuntimeResource,
)
from orchestration.resources.supervision import (
    CRASH_LOOP,
    CRASH_LOOP_RESTARTS,
    NEEDS_RUN,
    OK,
    WorkerAssessment,
    assess_worker,
    connector_events,
    crash_loop_reason,
    crashes,
    restart_observations,
    worker_check,
    worker_observations,
)
from orchestration.topology import SINKS, STATS_TABLES, WORKERS, WorkerSpec
from streaming.sink.connect import ConnectError, describe

RUN_KEY_TAG = "dagster/run_key"
"""The tag a run request's run key is stored under (Dagster's own constant is private)."""
SUPERVISOR_INTERVAL_S = 15
CONNECT_INTERVAL_S = 30


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
    """Records in per second since the previous evaluation of the same process (the same
    incarnation: a silent one has none)."""
    incarnation = snapshot.get("incarnation")
    if (
        incarnation is None
        or incarnation != last.get("incarnation")
        or now <= last.get("time", now)
    ):
        return {}
    return {
        "records_in_per_s": round(
            (snapshot["records_in"] - last["records_in"]) / (now - last["time"]), 1
        )
    }


def _restart_request(
    context: dg.SensorEvaluationContext,
    worker: WorkerSpec,
    name: str,
    assessment: WorkerAssessment,
    previous: str | None,
) -> tuple[dg.RunRequest, str]:
    """The restart run of the instance's open incident (or a new one), and the incident."""
    prefix = f"restart-{name}"
    incident = _incident(context, prefix, previous, assessment.state)
    request = dg.RunRequest(
        run_key=f"{prefix}-{incident}",
        run_config={
            "ops": {"restart_worker": {"config": {"worker": name, "reason": assessment.reason}}}
        },
        tags={"worker": worker.name, "instance": name, "incident": incident},
    )
    return request, incident


def worker_supervisor(worker: WorkerSpec) -> dg.SensorDefinition:
    name = f"supervise_{worker.name.replace('-', '_')}"

    @dg.sensor(
        name=name,
        job=restart_worker_job,
        minimum_interval_seconds=SUPERVISOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Reports the health of each {worker.name} instance; restarts an instance "
        "that is stalled (says so, no progress with lag across two evaluations, or a silent "
        "health endpoint) or has no process supervisor; holds one in a crash loop; records "
        "the supervisors' restarts.",
    )
    def supervise(
        context: dg.SensorEvaluationContext, worker_runtime: WorkerRuntimeResource
    ) -> dg.SensorResult:
        previous = _cursor(context).get("instances", {})
        now = time.time()
        cursor: dict[str, Any] = {}
        events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
        requests: list[dg.RunRequest] = []
        assessed = []
        for instance in worker.instance_names():
            state = previous.get(instance, {})
            status = worker_runtime.status(instance)
            last = state.get("last") or {}
            assessment = assess_worker(status, last, now)
            restarts = (status.record or {}).get("restarts", [])
            seen = float(state.get("seen_restart", 0))
            new = [r for r in restarts if float(r.get("time", 0)) > seen]
            events += restart_observations(worker, instance, new)
            entry: dict[str, Any] = {
                "last": {**assessment.snapshot, "time": now},
                "incident": None,
                "seen_restart": max([seen, *(float(r["time"]) for r in new)]),
                "held_after": float(state.get("held_after", 0)),
            }
            count = crashes(status.record, entry["held_after"], now)
            if count >= CRASH_LOOP_RESTARTS:
                reason = crash_loop_reason(instance, count)
                worker_runtime.hold(instance, reason)
                context.log.error(f"{instance}: {reason}")
                assessment = WorkerAssessment(CRASH_LOOP, reason, assessment.snapshot)
                entry["held_after"] = max(float(r.get("time", 0)) for r in restarts)
            elif assessment.state in NEEDS_RUN:
                request, entry["incident"] = _restart_request(
                    context, worker, instance, assessment, state.get("incident")
                )
                requests.append(request)
                context.log.warning(f"{instance} is {assessment.state}: {assessment.reason}")
            elif assessment.state != OK:
                context.log.info(f"{instance} is {assessment.state}: {assessment.reason}")
            extra = _rate(assessment.snapshot, last, now)
            events += worker_observations(worker, status, assessment, extra)
            assessed.append((status, assessment))
            cursor[instance] = entry
        events.append(worker_check(worker, assessed))
        return dg.SensorResult(
            run_requests=requests, asset_events=events, cursor=json.dumps({"instances": cursor})
        )

    return supervise


@dg.sensor(
    job=restart_connector_job,
    minimum_interval_seconds=CONNECT_INTERVAL_S,
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
    schemas: SchemasResource,
) -> dg.SensorResult:
    now = time.time()
    cursor = _cursor(context)
    topic_events, topics = observe_topics(kafka, schema_registry, cursor.get("topics", {}), now)
    table_events, tables = observe_tables(
        postgres.engine(), schemas.stream_schema, cursor.get("tables", {}), now
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
    known = set(context.instance.get_dynamic_partitions(courses.name))  # type: ignore[arg-type]  # named
    new = sorted({str(c) for c in review_source.course_ids()} - known, key=int)
    if not new:
        return dg.SkipReason(f"no new course ({len(known)} known)")
    context.log.info(f"{len(new)} new course(s)")
    return dg.SensorResult(dynamic_partitions_requests=[courses.build_add_request(new)])


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the freshness checks: each statistics table against the newest "
    "input record, each batch model against a day.",
)
def freshness(
    context: dg.SensorEvaluationContext,
    kafka: KafkaResource,
    postgres: PostgresResource,
    schemas: SchemasResource,
) -> dg.SensorResult:
    now = time.time()
    events = [
        stream_table_freshness(table, kafka, postgres, schemas) for table in sorted(STATS_TABLES)
    ]
    events += [batch_model_freshness(key, context.instance, now) for key in batch_model_keys()]
    return dg.SensorResult(asset_events=events)


all_sensors = [
    *(worker_supervisor(w) for w in WORKERS),
    supervise_connect,
    observe_stream,
    course_catalogue,
    freshness,
]
