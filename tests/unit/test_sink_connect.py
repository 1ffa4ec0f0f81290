"""The Connect client's request handling against scripted answers (no Connect needed)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from streaming.sink.connect import ConnectClient, ConnectError, describe, trace_summary

STATUS = {
    "name": "s",
    "connector": {"state": "RUNNING", "worker_id": "w:8083"},
    "tasks": [
        {
            "id": 1,
            "state": "FAILED",
            "worker_id": "w:8083",
            "trace": "org.x.ConnectException: boom\n\tat a.b(C.java:1)\n"
            "Caused by: org.postgresql.util.PSQLException: no\n\tat d",
        },
        {"id": 0, "state": "RUNNING", "worker_id": "w:8083"},
    ],
    "type": "sink",
}


def client(handler: Callable[[httpx.Request], httpx.Response]) -> ConnectClient:
    return ConnectClient(
        "http://connect.test", transport=httpx.MockTransport(handler), retry_conflicts_s=5
    )


def test_deploy_creates_updates_and_skips_an_identical_config() -> None:
    stored: dict[str, dict] = {}
    writes: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.split("/")[2]
        if request.method == "GET":
            if name not in stored:
                return httpx.Response(404, json={"error_code": 404, "message": "not found"})
            return httpx.Response(200, json=stored[name])
        body = json.loads(request.content)
        writes.append(body)
        created = name not in stored
        stored[name] = body
        return httpx.Response(201 if created else 200, json={"name": name, "config": body})

    c = client(handler)
    assert c.deploy("s", {"topics": "t"}) == "created"
    assert c.deploy("s", {"topics": "t"}) == "unchanged"
    assert c.deploy("s", {"topics": "u"}) == "updated"
    assert writes == [{"topics": "t", "name": "s"}, {"topics": "u", "name": "s"}]


def test_requests_refused_during_a_rebalance_are_retried() -> None:
    answers = [
        httpx.Response(409, json={"error_code": 409, "message": "Cannot complete request"}),
        httpx.Response(
            500,
            json={
                "error_code": 500,
                "message": "Request cannot be completed because a rebalance is expected",
            },
        ),
        httpx.Response(200, json=["b", "a"]),
    ]
    assert client(lambda request: answers.pop(0)).list() == ["a", "b"]


def test_errors_carry_the_status_and_connects_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error_code": 400, "message": "Connector configuration is invalid"}
        )

    with pytest.raises(ConnectError, match="HTTP 400: Connector configuration is invalid") as err:
        client(handler).pause("s")
    assert err.value.status == 400


def test_unreachable_connect_is_a_connect_error_without_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ConnectError, match="unreachable: connection refused") as err:
        client(handler).status("s")
    assert err.value.status is None


def test_status_reads_tasks_in_order_and_summarises_the_failure() -> None:
    state = client(lambda request: httpx.Response(200, json=STATUS)).status("s")
    assert [t.id for t in state.tasks] == [0, 1]
    assert state.failed and not state.running
    assert trace_summary(state.tasks[1].trace) == (
        "org.x.ConnectException: boom | Caused by: org.postgresql.util.PSQLException: no"
    )
    assert describe(state) == (
        "RUNNING; task 0 RUNNING, task 1 FAILED; org.x.ConnectException: boom"
        " | Caused by: org.postgresql.util.PSQLException: no"
    )


def test_restart_asks_for_failed_parts_only() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=STATUS)

    client(handler).restart_failed("s")
    assert seen[0].method == "POST"
    assert seen[0].url.path == "/connectors/s/restart"
    assert dict(seen[0].url.params) == {"includeTasks": "true", "onlyFailed": "true"}
