"""Supervisor, catalogue sensors and the health rules, with fake runtimes and a mocked Connect."""

import json
from typing import Any

import dagster as dg
import httpx
from dagster._core.storage.tags import RUN_KEY_TAG
from pydantic import Field

from orchestration.assets.backfill import courses
from orchestration.jobs import restart_worker_job
from orchestration.resources import (
    ConnectResource,
    ReviewSourceResource,
    WorkerRuntimeResource,
    WorkerStatus,
)
from orchestration.sensors import course_catalogue, supervise_connect, worker_supervisor
from orchestration.supervision import DEAD, OK, STALLED, assess_worker
from orchestration.topology import WORKERS, table_key, topic_key
from streaming.sink.connect import ConnectClient

FRAUD_FILTER = WORKERS[0]


def health(**overrides: Any) -> dict[str, Any]:
    body = {
        "worker": "fraud-filter",
        "pid": 4242,
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
    """A runtime whose worker is in a fixed state; `restarts` counts restart calls."""

    health_json: str = ""
    pid: int = 4242
    alive: bool = True

    def status(self, name: str) -> WorkerStatus:
        body = json.loads(self.health_json) if self.health_json else None
        return WorkerStatus(name, self.pid, self.alive, body)

    def start(self, name: str) -> WorkerStatus:
        return self.status(name)

    def stop(self, name: str) -> None:
        return None


def runtime(body: dict[str, Any] | None, alive: bool = True) -> ScriptedRuntime:
    return ScriptedRuntime(health_json=json.dumps(body) if body else "", alive=alive)


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
    restarted = WorkerStatus("w", 1, True, health(consumer_lag=500, pid=99))
    assert assess_worker(restarted, first.snapshot).state == OK  # a new process: new baseline


def test_a_worker_restoring_its_state_is_not_restarted_for_lack_of_progress() -> None:
    """State restore blocks the loop for minutes with lag and no records in: it is progress."""
    restoring = WorkerStatus("w", 1, True, health(consumer_lag=500, status="restoring"))
    first = assess_worker(restoring, None)
    assert assess_worker(restoring, first.snapshot).state == OK
    assert "restoring" in assess_worker(restoring, first.snapshot).reason


# -- worker supervisors ---------------------------------------------------------------------


def test_a_healthy_worker_gets_no_restart_but_its_health_is_reported() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    result = evaluate(sensor, instance, {"worker_runtime": runtime(health())})
    assert result.run_requests == []
    assert check_results(result) == {
        (topic_key("udemy-reviews-valid"), "fraud_filter_healthy"): True
    }
    observed = [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]
    assert {e.asset_key for e in observed} == {
        topic_key("udemy-reviews-valid"),
        topic_key("udemy-reviews-fraud"),
    }
    assert observed[0].metadata["records_in"].value == 100
    later = evaluate(
        sensor, instance, {"worker_runtime": runtime(health(records_in=400))}, result.cursor
    )
    assert later.run_requests == []
    rate = next(e for e in later.asset_events if isinstance(e, dg.AssetObservation))
    assert rate.metadata["records_in_per_s"].value > 0


def test_a_dead_worker_gets_exactly_one_restart_per_incident() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    dead = {"worker_runtime": runtime(None)}
    first = evaluate(sensor, instance, dead)
    [request] = first.run_requests
    assert request.run_config["ops"]["restart_worker"]["config"]["worker"] == "fraud-filter"
    assert check_results(first) == {
        (topic_key("udemy-reviews-valid"), "fraud_filter_healthy"): False
    }
    again = evaluate(sensor, instance, dead, cursor=first.cursor)
    assert [r.run_key for r in again.run_requests] == [request.run_key]  # same incident

    healthy = evaluate(sensor, instance, {"worker_runtime": runtime(health())}, again.cursor)
    assert healthy.run_requests == []
    relapse = evaluate(sensor, instance, dead, cursor=healthy.cursor)
    [new_request] = relapse.run_requests
    assert new_request.run_key != request.run_key  # a new incident after recovery


def test_an_incident_whose_restart_finished_without_effect_gets_a_new_restart() -> None:
    sensor = worker_supervisor(FRAUD_FILTER)
    instance = dg.DagsterInstance.ephemeral()
    dead = {"worker_runtime": runtime(None)}
    first = evaluate(sensor, instance, dead)
    [request] = first.run_requests
    restart_worker_job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=dead,
        tags={RUN_KEY_TAG: request.run_key},
    )
    second = evaluate(sensor, instance, dead, cursor=first.cursor)
    [retry] = second.run_requests
    assert retry.run_key != request.run_key


def test_a_stalled_worker_is_restarted() -> None:
    sensor = worker_supervisor(WORKERS[1])
    instance = dg.DagsterInstance.ephemeral()
    lagging = {"worker_runtime": runtime(health(worker="stats-aggregator", consumer_lag=9))}
    first = evaluate(sensor, instance, lagging)
    assert first.run_requests == []
    second = evaluate(sensor, instance, lagging, cursor=first.cursor)
    [request] = second.run_requests
    config = request.run_config["ops"]["restart_worker"]["config"]
    assert config["worker"] == "aggregator"
    assert "no progress" in config["reason"]


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
