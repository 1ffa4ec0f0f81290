"""Supervisor, catalogue sensors and the health rules, with fake runtimes and a mocked Connect."""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from pydantic import Field

from orchestration.assets.backfill import courses
from orchestration.jobs import restart_worker_job
from orchestration.resources import (
    ConnectResource,
    ReviewSourceResource,
    WorkerRuntimeResource,
    WorkerStatus,
)
from orchestration.resources.supervision import (
    CRASH_LOOP_RESTARTS,
    DEAD,
    HELD,
    OK,
    RESTARTING,
    RESTORING,
    SLOW,
    STALLED,
    assess_worker,
)
from orchestration.sensors import (
    RUN_KEY_TAG,
    course_catalogue,
    supervise_connect,
    worker_supervisor,
)
from orchestration.topology import WORKERS, table_key, topic_key
from streaming.sink.connect import ConnectClient

FRAUD_FILTER = WORKERS[0]


def health(**overrides: Any) -> dict[str, Any]:
    body = {
        "worker": "fraud-filter",
        "incarnation": "4242",
        "status": "ok",
        "records_in": 100,
        "records_out": {"udemy-reviews-valid": 95, "udemy-reviews-fraud": 5},
        "dead_letters": 0,
        "transactions": 7,
        "last_commit_time": 1_700_000_000.0,
        "consumer_lag": 0,
    }
    return {**body, **overrides}


class ScriptedRuntime(WorkerRuntimeResource):
    """A runtime whose processes are in a fixed state (the same for every instance, unless
    `per_instance` overrides them as JSON by name); hold calls are appended to `holds_file`
    (Dagster evaluates a copy of the resource, so the calls are recorded outside it)."""

    health_json: str = ""
    pid: int = 4242
    alive: bool = True
    record_json: str = ""
    supervised: bool | None = None
    per_instance: str = "{}"
    holds_file: str = ""

    def status(self, name: str) -> WorkerStatus:
        fields = {
            "health": json.loads(self.health_json) if self.health_json else None,
            "pid": self.pid,
            "alive": self.alive,
            "record": json.loads(self.record_json) if self.record_json else None,
            "supervised": self.supervised,
            **json.loads(self.per_instance).get(name, {}),
        }
        return WorkerStatus(
            name,
            fields["pid"],
            fields["alive"],
            fields["health"],
            fields["record"],
            fields["supervised"],
        )

    def start(self, name: str) -> WorkerStatus:
        return self.status(name)

    def stop(self, name: str) -> None:
        return None

    def hold(self, name: str, reason: str) -> None:
        with Path(self.holds_file).open("a") as out:
            out.write(f"{name}: {reason}\n")

    @property
    def holds(self) -> list[str]:
        path = Path(self.holds_file)
        return path.read_text().splitlines() if path.exists() else []


def runtime(
    body: dict[str, Any] | None,
    alive: bool = True,
    record: dict[str, Any] | None = None,
    supervised: bool | None = None,
    holds_file: str = "",
    **per_instance: dict[str, Any],
) -> ScriptedRuntime:
    return ScriptedRuntime(
        health_json=json.dumps(body) if body else "",
        alive=alive,
        record_json=json.dumps(record) if record else "",
        supervised=supervised,
        per_instance=json.dumps(per_instance),
        holds_file=holds_file,
    )


def crash(at: float, pid: int = 4000, requested: bool = False) -> dict[str, Any]:
    return {
        "time": at,
        "pid": pid,
        "exit": "exited with status 1",
        "uptime_s": 2.0,
        "requested": requested,
        "backoff_s": 1.0,
    }


def evaluate(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None = None,
) -> dg.SensorResult:
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))


def check_results(result: dg.SensorResult) -> dict[tuple[dg.AssetKey, str], bool]:
    return {
        (e.asset_key, e.check_name): e.passed
        for e in result.asset_events
        if isinstance(e, dg.AssetCheckEvaluation)
    }


# -- health rules -----------------------------------------------------------------------------


def test_no_answer_or_a_gone_process_is_dead() -> None:
    assert assess_worker(WorkerStatus("w", 1, True, None), None).state == DEAD
    assert assess_worker(WorkerStatus("w", 1, False, health()), None).state == DEAD
    assert assess_worker(WorkerStatus("w", None, None, health()), None).state == OK


def test_stalled_when_it_says_so_or_makes_no_progress_with_lag() -> None:
    assert assess_worker(WorkerStatus("w", 1, True, health(status="stalled")), None).state == (
        STALLED
    )
    lagging = WorkerStatus("w", 1, True, health(consumer_lag=500))
    first = assess_worker(lagging, None)
    assert first.state == OK
    assert assess_worker(lagging, first.snapshot).state == STALLED
    moved = WorkerStatus("w", 1, True, health(consumer_lag=500, records_in=101))
    assert assess_worker(moved, first.snapshot).state == OK
    committed = WorkerStatus("w", 1, True, health(consumer_lag=500, transactions=8))
    assert assess_worker(committed, first.snapshot).state == OK  # e.g. repartition work
    idle = WorkerStatus("w", 1, True, health())
    assert assess_worker(idle, assess_worker(idle, None).snapshot).state == OK  # no lag
    restarted = WorkerStatus("w", 1, True, health(consumer_lag=500, incarnation="99"))
    assert assess_worker(restarted, first.snapshot).state == OK  # a new process: new baseline


def test_a_worker_restoring_its_state_is_not_yet_healthy_nor_stalled() -> None:
    """State restore blocks the loop for minutes with lag and no records in: it is progress."""
    restoring = WorkerStatus("w", 1, True, health(consumer_lag=500, status="restoring"))
    first = assess_worker(restoring, None)
    assert first.state == RESTORING
    assert assess_worker(restoring, first.snapshot).state == RESTORING


def test_a_supervised_process_that_is_down_is_restarting_not_dead() -> None:
    backoff = {"state": "backoff", "backoff_s": 2.0, "restarts": [crash(1.0)]}
    down = WorkerStatus("w", None, None, None, backoff, supervised=True)
    assessment = assess_worker(down, None)
    assert assessment.state == RESTARTING and "back-off of 2.0 s" in assessment.reason
    gone = WorkerStatus("w", 7, False, None, {"state": "running"}, supervised=True)
    assert assess_worker(gone, None).state == RESTARTING
    now = time.time()
    starting = WorkerStatus("w", 7, True, None, {"state": "running", "started": now}, True)
    assert assess_worker(starting, None, now + 5).state == RESTARTING
    silent_once = assess_worker(starting, None, now + 600)
    assert silent_once.state == SLOW  # one slow answer on a busy machine is not a stall
    assert assess_worker(starting, silent_once.snapshot, now + 615).state == STALLED
    other = WorkerStatus("w", 8, True, None, {"state": "running", "started": now}, True)
    assert assess_worker(other, silent_once.snapshot, now + 615).state == SLOW  # a new process
    answered = assess_worker(
        WorkerStatus("w", 7, True, health(incarnation="7")), silent_once.snapshot
    )
    assert answered.state == OK
    assert assess_worker(starting, answered.snapshot, now + 630).state == SLOW  # streak reset
    held = WorkerStatus("w", None, None, None, {"state": "held", "held_reason": "why"}, True)
    assert assess_worker(held, None).state == HELD
    unsupervised = WorkerStatus("w", None, None, None, {"state": "running"}, supervised=False)
    assert assess_worker(unsupervised, None).state == DEAD


# -- worker supervisors ---------------------------------------------------------------------

HEALTH_CHECK = (topic_key("udemy-reviews-valid"), "fraud_filter_healthy")


def test_a_healthy_worker_gets_no_restart_but_its_health_is_reported() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    result = evaluate(sensor, instance, {"worker_runtime": runtime(health())})
    assert result.run_requests == []
    assert check_results(result) == {HEALTH_CHECK: True}
    observed = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    assert {(e.asset_key, e.metadata["worker"].value) for e in observed} == {
        (topic_key(topic), name)
        for topic in ("udemy-reviews-valid", "udemy-reviews-fraud")
        for name in ("fraud-filter-0", "fraud-filter-1")
    }
    assert observed[0].metadata["records_in"].value == 100
    later = evaluate(
        sensor, instance, {"worker_runtime": runtime(health(records_in=400))}, result.cursor
    )
    assert later.run_requests == []
    rate = next(e for e in later.asset_events if isinstance(e, dg.AssetObservation))
    assert rate.metadata["records_in_per_s"].value > 0


def test_the_check_fails_when_one_instance_is_unhealthy_with_metadata_per_instance() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    why = "no commit for 41 s with 12 records to read (last abort: MSG_SIZE_TOO_LARGE)"
    stalled = runtime(
        health(), **{"fraud-filter-1": {"health": health(status="stalled", reason=why)}}
    )
    result = evaluate(sensor, dg.DagsterInstance.ephemeral(), {"worker_runtime": stalled})
    [check] = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["fraud-filter-0"].value["state"] == OK
    assert check.metadata["fraud-filter-1"].value["state"] == STALLED
    assert f"fraud-filter-1: it reports itself stalled: {why}" in check.metadata["reason"].value
    [request] = result.run_requests
    assert request.run_config["ops"]["restart_worker"]["config"]["worker"] == "fraud-filter-1"


def test_no_run_while_the_process_supervisor_restarts_a_crashed_worker() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    backoff = {"state": "backoff", "pid": None, "backoff_s": 1.0, "restarts": [crash(time.time())]}
    down = runtime(None, alive=False, record=backoff, supervised=True)
    result = evaluate(sensor, dg.DagsterInstance.ephemeral(), {"worker_runtime": down})
    assert result.run_requests == []
    [check] = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["fraud-filter-0"].value["state"] == RESTARTING


def test_a_worker_without_a_supervisor_gets_exactly_one_restart_per_incident() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    dead = {"worker_runtime": runtime(None, supervised=False)}
    first = evaluate(sensor, instance, dead)
    requests = {
        r.run_config["ops"]["restart_worker"]["config"]["worker"]: r.run_key
        for r in first.run_requests
    }
    assert sorted(requests) == ["fraud-filter-0", "fraud-filter-1"]
    assert check_results(first) == {HEALTH_CHECK: False}
    again = evaluate(sensor, instance, dead, cursor=first.cursor)
    assert sorted(r.run_key for r in again.run_requests) == sorted(requests.values())

    healthy = evaluate(sensor, instance, {"worker_runtime": runtime(health())}, again.cursor)
    assert healthy.run_requests == []
    relapse = evaluate(sensor, instance, dead, cursor=healthy.cursor)
    assert not {r.run_key for r in relapse.run_requests} & set(requests.values())


def test_an_incident_whose_restart_finished_without_effect_gets_a_new_restart() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    dead = {"worker_runtime": runtime(None, supervised=False)}
    first = evaluate(sensor, instance, dead)
    request = first.run_requests[0]
    restart_worker_job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=dead,
        tags={RUN_KEY_TAG: request.run_key},
    )
    second = evaluate(sensor, instance, dead, cursor=first.cursor)
    assert request.run_key not in {r.run_key for r in second.run_requests}
    assert len(second.run_requests) == 2


def test_a_stalled_worker_is_restarted() -> None:
    sensor = worker_supervisor(WORKERS[1])
    instance = dg.DagsterInstance.ephemeral()
    body = health(worker="stats-aggregator", consumer_lag=9)
    lagging = {"worker_runtime": runtime(body, record={"state": "running"}, supervised=True)}
    first = evaluate(sensor, instance, lagging)
    assert first.run_requests == []
    second = evaluate(sensor, instance, lagging, cursor=first.cursor)
    configs = [r.run_config["ops"]["restart_worker"]["config"] for r in second.run_requests]
    assert [c["worker"] for c in configs] == ["aggregator-0", "aggregator-1"]
    assert all("no progress" in c["reason"] for c in configs)


def test_a_crash_loop_is_held_and_fails_the_check_loudly(tmp_path: Path) -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    now = time.time()
    looping = {
        "state": "backoff",
        "restarts": [crash(now - 10 * i, pid=4000 + i) for i in range(CRASH_LOOP_RESTARTS)],
    }
    rt = runtime(
        health(),
        holds_file=str(tmp_path / "holds"),
        **{
            "fraud-filter-1": {
                "health": None,
                "alive": False,
                "record": looping,
                "supervised": True,
            }
        },
    )
    first = evaluate(sensor, instance, {"worker_runtime": rt})
    assert first.run_requests == []
    assert len(rt.holds) == 1 and rt.holds[0].startswith("fraud-filter-1: crash loop: 5 restarts")
    [check] = [e for e in first.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    reason = check.metadata["reason"].value
    assert (
        "crash loop: 5 restarts in 5 min, each within 10 s of its start, restarts stopped" in reason
    )
    assert "`python3 -m stack.procs release fraud-filter-1` then restart" in reason
    again = evaluate(sensor, instance, {"worker_runtime": rt}, cursor=first.cursor)
    assert len(rt.holds) == 1, "the same crashes are not held twice (a release starts afresh)"
    assert again.run_requests == []


def restart_events(result: dg.SensorResult) -> list[dict[str, Any]]:
    return [
        {k: v.value for k, v in e.metadata.items()}
        for e in result.asset_events
        if isinstance(e, dg.AssetObservation) and "exit" in e.metadata
    ]


def test_each_supervisor_restart_is_observed_once() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    now = time.time()
    one = {"state": "running", "restarts": [crash(now - 60, pid=4001)]}
    first = evaluate(sensor, instance, {"worker_runtime": runtime(health(), record=one)})
    assert [(e["instance"], e["pid"]) for e in restart_events(first)] == [
        ("fraud-filter-0", 4001),
        ("fraud-filter-1", 4001),
    ]
    event = restart_events(first)[0]
    assert event["exit"] == "exited with status 1"
    assert event["uptime_s"] == 2.0 and event["backoff_s"] == 1.0
    observed_on = {
        e.asset_key
        for e in first.asset_events
        if isinstance(e, dg.AssetObservation) and "exit" in e.metadata
    }
    assert observed_on == {topic_key("udemy-reviews-valid")}
    same = evaluate(
        sensor, instance, {"worker_runtime": runtime(health(), record=one)}, first.cursor
    )
    assert restart_events(same) == []
    two = {**one, "restarts": [*one["restarts"], crash(now - 1, pid=4002, requested=True)]}
    later = evaluate(
        sensor, instance, {"worker_runtime": runtime(health(), record=two)}, same.cursor
    )
    assert [e["pid"] for e in restart_events(later)] == [4002, 4002]


# -- Connect supervisor ------------------------------------------------------------------------


def connect_status(name: str, connector: str = "RUNNING", *tasks: str) -> dict[str, Any]:
    return {
        "name": name,
        "connector": {"state": connector, "worker_id": "127.0.0.1:8083"},
        "tasks": [
            {"id": i, "state": s, "worker_id": "127.0.0.1:8083"}
            | (
                {"trace": "org.apache.kafka.connect.errors.ConnectException: boom"}
                if s == "FAILED"
                else {}
            )
            for i, s in enumerate(tasks)
        ],
        "type": "sink",
    }


class MockedConnect(ConnectResource):
    """The real client over scripted HTTP answers (JSON per connector name in `answers`)."""

    answers: str = "{}"
    reachable: bool = True

    def client(self) -> ConnectClient:
        statuses = json.loads(self.answers)

        def handler(request: httpx.Request) -> httpx.Response:
            if not self.reachable:
                raise httpx.ConnectError("connection refused")
            parts = request.url.path.strip("/").split("/")
            if parts == ["connectors"]:
                return httpx.Response(200, json=sorted(statuses))
            if parts[-1] == "status":
                if parts[1] not in statuses:  # as Connect answers for a connector not deployed
                    return httpx.Response(404, json={"error_code": 404, "message": "not found"})
                return httpx.Response(200, json=statuses[parts[1]])
            raise AssertionError(f"unexpected request {request.method} {request.url}")

        return ConnectClient(self.url, transport=httpx.MockTransport(handler))


def mocked_connect(**statuses: dict[str, Any]) -> MockedConnect:
    return MockedConnect(url="http://connect.test", answers=json.dumps(statuses))


def test_a_failed_connector_task_gets_one_restart_and_a_failed_check() -> None:
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "connect": mocked_connect(
            **{
                "udemy-reviews": connect_status("udemy-reviews", "RUNNING", "RUNNING"),
                "long-term-stats": connect_status("long-term-stats", "RUNNING", "RUNNING"),
                "recent-stats": connect_status("recent-stats", "RUNNING", "RUNNING", "FAILED"),
            }
        )
    }
    first = evaluate(supervise_connect, instance, resources)
    [request] = first.run_requests
    config = request.run_config["ops"]["restart_connector"]["config"]
    assert config["connector"] == "recent-stats"
    assert "FAILED" in config["reason"]
    assert check_results(first) == {
        (table_key("reviews"), "sink_connector_running"): True,
        (table_key("long_term_stats"), "sink_connector_running"): True,
        (table_key("recent_stats"), "sink_connector_running"): False,
    }
    again = evaluate(supervise_connect, instance, resources, cursor=first.cursor)
    assert [r.run_key for r in again.run_requests] == [request.run_key]


def test_running_connectors_get_no_restart_and_missing_ones_fail_their_check() -> None:
    instance = dg.DagsterInstance.ephemeral()
    running = mocked_connect(
        **{"udemy-reviews": connect_status("udemy-reviews", "RUNNING", "RUNNING")}
    )
    result = evaluate(supervise_connect, instance, {"connect": running})
    assert result.run_requests == []
    checks = check_results(result)
    assert checks[(table_key("reviews"), "sink_connector_running")] is True
    assert checks[(table_key("recent_stats"), "sink_connector_running")] is False


def test_unreachable_connect_fails_every_sink_check_without_a_restart() -> None:
    unreachable = MockedConnect(url="http://connect.test", reachable=False)
    result = evaluate(supervise_connect, dg.DagsterInstance.ephemeral(), {"connect": unreachable})
    assert result.run_requests == []
    assert set(check_results(result).values()) == {False}
    detail = next(e for e in result.asset_events if isinstance(e, dg.AssetObservation))
    assert "unreachable" in detail.metadata["detail"].value


# -- course catalogue --------------------------------------------------------------------------


class ListedCourses(ReviewSourceResource):
    listed: list[int] = Field(default_factory=list)

    def course_ids(self) -> list[int]:
        return list(self.listed)


def test_the_catalogue_adds_new_courses_as_partitions() -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(courses.name, ["10"])
    listed = ListedCourses(
        api_url="http://source.test", client_id="i", client_secret="s", listed=[30, 10, 20]
    )
    result = evaluate(course_catalogue, instance, {"review_source": listed})
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == "courses"
    assert list(add.partition_keys) == ["20", "30"]
    instance.add_dynamic_partitions(courses.name, ["20", "30"])
    assert isinstance(
        evaluate(course_catalogue, instance, {"review_source": listed}), dg.SkipReason
    )
