"""A small Kafka Connect REST client: what the CLI and the orchestration use to run the sink.

Connect refuses requests while its workers rebalance (for example right after another connector
was created or deleted): 409, or 500 "...because a rebalance is expected". Those are retried for
a while instead of failing a deploy. Every other error becomes a ConnectError carrying the HTTP
status and Connect's own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from streaming.settings import Settings
from streaming.sink.render import CONNECTORS_DIR, render_connector

DeployResult = Literal["created", "updated", "unchanged"]
POLL_INTERVAL_S = 0.25


class ConnectError(RuntimeError):
    """A Connect request failed; `status` is None when Connect could not be reached at all."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskState:
    id: int
    state: str
    worker_id: str
    trace: str | None = None


@dataclass(frozen=True)
class ConnectorState:
    """A connector's state and its tasks' (RUNNING, PAUSED, FAILED, UNASSIGNED, RESTARTING...)."""

    name: str
    state: str
    worker_id: str
    tasks: tuple[TaskState, ...]
    trace: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ConnectorState:
        connector = body["connector"]
        tasks = tuple(
            TaskState(t["id"], t["state"], t.get("worker_id", ""), t.get("trace"))
            for t in sorted(body.get("tasks", []), key=lambda t: t["id"])
        )
        return cls(
            body["name"],
            connector["state"],
            connector.get("worker_id", ""),
            tasks,
            connector.get("trace"),
        )

    @property
    def failed(self) -> bool:
        return self.state == "FAILED" or any(t.state == "FAILED" for t in self.tasks)

    @property
    def running(self) -> bool:
        """The connector and every task run (a connector without tasks is not yet running)."""
        return (
            self.state == "RUNNING"
            and bool(self.tasks)
            and all(t.state == "RUNNING" for t in self.tasks)
        )


def trace_summary(trace: str | None) -> str:
    """First line of a Java stack trace plus its root cause: enough for one status line."""
    if not trace:
        return ""
    lines = trace.strip().splitlines()
    causes = [line.strip() for line in lines if line.startswith("Caused by:")]
    return lines[0] + (f" | {causes[-1]}" if causes else "")


class ConnectClient:
    """Connector operations against one Connect cluster (any worker; Connect forwards)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        retry_conflicts_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        """`auth`: the REST user and password (HTTP Basic), when Connect wants them."""
        self.base_url = base_url.rstrip("/")
        self.retry_conflicts_s = retry_conflicts_s
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, transport=transport, auth=auth
        )

    @classmethod
    def from_env(cls, **options: Any) -> ConnectClient:
        """CONNECT_URL, with CONNECT_USER / CONNECT_PASSWORD_FILE's credentials."""
        settings = Settings.from_env()
        return cls(settings.connect_url, auth=settings.connect_auth(), **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConnectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        deadline = time.monotonic() + self.retry_conflicts_s
        while True:
            try:
                resp = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                raise ConnectError(
                    f"{method} {path}: Kafka Connect at {self.base_url} is unreachable: {exc}"
                ) from exc
            if _rebalancing(resp) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
                continue
            if resp.is_error:
                raise ConnectError(
                    f"{method} {path}: HTTP {resp.status_code}: {_message(resp)}", resp.status_code
                )
            return resp

    def list(self) -> list[str]:
        return sorted(self._request("GET", "/connectors").json())

    def deploy(self, name: str, config: Mapping[str, str]) -> DeployResult:
        """Create or update a connector (PUT .../config), never duplicating it.

        An identical config is not written again: Connect would restart the connector's tasks
        for nothing, which `make up` would otherwise do on every run.
        """
        desired = {**config, "name": name}
        try:
            current = self._request("GET", f"/connectors/{_q(name)}/config").json()
        except ConnectError as exc:
            if exc.status != 404:
                raise
            current = None
        if current == desired:
            return "unchanged"
        resp = self._request("PUT", f"/connectors/{_q(name)}/config", json=desired)
        return "created" if resp.status_code == 201 else "updated"

    def status(self, name: str) -> ConnectorState:
        return ConnectorState.from_json(
            self._request("GET", f"/connectors/{_q(name)}/status").json()
        )

    def restart_failed(self, name: str) -> ConnectorState:
        """Restart the connector if it failed and each failed task; returns what was planned
        (restarted parts show RESTARTING)."""
        resp = self._request(
            "POST",
            f"/connectors/{_q(name)}/restart",
            params={"includeTasks": "true", "onlyFailed": "true"},
        )
        return ConnectorState.from_json(resp.json())

    def pause(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_q(name)}/pause")

    def resume(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_q(name)}/resume")

    def stop(self, name: str) -> None:
        """Shut the tasks down (their consumers leave the group), keeping config and offsets;
        unlike a pause, nothing of the connector keeps running. `resume` starts it again."""
        self._request("PUT", f"/connectors/{_q(name)}/stop")

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/connectors/{_q(name)}")

    def wait_for(
        self, name: str, condition: Callable[[ConnectorState], bool], timeout_s: float = 60
    ) -> ConnectorState:
        """Poll the status until `condition` holds; TimeoutError with the last state otherwise.

        A connector that was just created has no status for a moment (404): that counts as not
        yet, not as an error.
        """
        deadline = time.monotonic() + timeout_s
        last: ConnectorState | None = None
        while True:
            try:
                last = self.status(name)
                if condition(last):
                    return last
            except ConnectError as exc:
                if exc.status != 404:
                    raise
            if time.monotonic() >= deadline:
                raise TimeoutError(f"connector {name} after {timeout_s:.0f}s: {describe(last)}")
            time.sleep(POLL_INTERVAL_S)


def render_login(name: str, settings: Settings, directory: Path = CONNECTORS_DIR) -> dict[str, str]:
    """Connector `name`'s config to deploy: a declared sink logs in as its own role
    (`Settings.sink_login`), a connector of another directory as DATABASE_URL's user."""
    if directory == CONNECTORS_DIR:
        url, password_file = settings.sink_login(name)
    else:
        url, password_file = settings.database_url, settings.database.password_file
    return render_connector(name, url, directory=directory, password_file=password_file)


def describe(state: ConnectorState | None) -> str:
    """One line: connector state, task states, the first failure's trace summary."""
    if state is None:
        return "no status"
    tasks = ", ".join(f"task {t.id} {t.state}" for t in state.tasks) or "no tasks"
    trace = state.trace or next((t.trace for t in state.tasks if t.trace), None)
    return f"{state.state}; {tasks}" + (f"; {trace_summary(trace)}" if trace else "")


def _q(name: str) -> str:
    return quote(name, safe="")


def _rebalancing(resp: httpx.Response) -> bool:
    return resp.status_code == 409 or (resp.status_code == 500 and "rebalance" in _message(resp))


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:500] or resp.reason_phrase
