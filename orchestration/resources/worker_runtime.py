"""The stream workers' runtime: the interface the supervisor sensors and the restart job talk
to (`WorkerRuntimeResource`, `WorkerStatus`) and the local one, processes under stack.procs
supervisors (`LocalProcessRuntime`). The judgements over what it reports are beside it, in
`supervision.py`."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
import httpx
from pydantic import Field

from orchestration.topology import WORKERS
from stack import procs
from streaming.access import worker_login_env
from streaming.settings import REPO_ROOT, Settings, read_env_file


@dataclass(frozen=True)
class WorkerStatus:
    """What a runtime knows of one worker process (one instance of a worker).

    `process_alive` is None when the runtime knows no process (no pid file, or a remote
    runtime that cannot see processes); `health` is the worker's `GET /health` document
    (answered 200 or 503), None when it did not answer. `record` is its process supervisor's
    record (state, restarts: see stack.procs), None when there is none; `supervised` says
    whether that supervisor runs (None: the runtime cannot tell).
    """

    name: str
    pid: int | None
    process_alive: bool | None
    health: dict[str, Any] | None
    record: dict[str, Any] | None = None
    supervised: bool | None = None


class WorkerRuntimeResource(dg.ConfigurableResource, ABC):
    """Starts, stops, restarts, holds and inspects the stream worker processes by name.

    The supervisor sensors and the restart job only talk to this interface. LocalProcessRuntime
    runs workers as local processes under stack.procs supervisors; a Kubernetes runtime (a
    Deployment per worker, restart = rollout restart, status from the pod and its /health) or a
    systemd one (a unit per worker) would be other implementations with the same methods.
    """

    @abstractmethod
    def start(self, name: str) -> WorkerStatus:
        """Start the worker unless it runs; return once it answers its health endpoint."""

    @abstractmethod
    def stop(self, name: str) -> None:
        """Stop the worker gracefully (it commits its open transaction), forcibly if it hangs."""

    @abstractmethod
    def status(self, name: str) -> WorkerStatus: ...

    @abstractmethod
    def hold(self, name: str, reason: str) -> None:
        """Stop restarting the worker once it exits (a crash loop); `reason` is recorded."""

    def restart(self, name: str) -> WorkerStatus:
        self.stop(name)
        return self.start(name)


def _fetch_health(url: str) -> dict[str, Any] | None:
    """A worker's health document, whether it answered 200 (ok) or 503 (stalled)."""
    try:
        body = httpx.get(url, timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def instance_modules() -> dict[str, str]:
    """Process name -> module, for every instance of every worker (as stack.sh names them)."""
    return {name: w.module for w in WORKERS for name in w.instance_names()}


def instance_health_urls() -> dict[str, str]:
    """Process name -> health URL (instance i on the base port + i, env overrides honoured)."""
    return {name: w.health_url(i) for w in WORKERS for i, name in enumerate(w.instance_names())}


def instance_numbers() -> dict[str, str]:
    """Process name -> WORKER_INSTANCE, for workers that run several instances."""
    return {
        name: str(i)
        for w in WORKERS
        if w.instance_count() > 1
        for i, name in enumerate(w.instance_names())
    }


class LocalProcessRuntime(WorkerRuntimeResource):
    """Worker processes under stack.procs supervisors, as stack/stack.sh runs them.

    A process is `<python> -m <module>` under its supervisor, detached from the Dagster run that
    started it; the supervisor restarts it when it exits (with a back-off) and records each
    restart. Pid files, records and logs are under `<state_dir>` (run/, logs/), so `make status`
    and `make down` see the same processes whoever started them. The environment is this
    process's plus `<state_dir>/env` (as stack.sh gives it), the worker's own Kafka login
    (`streaming.access.login_env`), WORKER_INSTANCE for an instance of a worker that runs
    several, and HEALTH_PORT is the port of its health URL.
    """

    root: str = str(REPO_ROOT)
    python: str = ".venv/bin/python"
    state_dir: str = ".stack"
    modules: dict[str, str] = Field(default_factory=instance_modules)
    health_urls: dict[str, str] = Field(default_factory=instance_health_urls)
    instances: dict[str, str] = Field(default_factory=instance_numbers)
    """Process name -> its WORKER_INSTANCE; a process not listed gets none."""
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalProcessRuntime:
        """The stack's processes as stack/stack.sh runs them: the same state directory
        (STACK_DIR), process names and health URLs (instance i of a worker on its base health
        port + i), this repository's Python."""
        return cls(state_dir=settings.pipeline.stack_dir)

    @property
    def _state(self) -> Path:
        return Path(self.root, self.state_dir)

    def _known(self, name: str) -> None:
        if name not in self.modules or name not in self.health_urls:
            raise KeyError(f"unknown worker {name!r} (known: {sorted(self.modules)})")

    def status(self, name: str) -> WorkerStatus:
        self._known(name)
        pid = procs.read_pid(self._state, name)
        return WorkerStatus(
            name,
            pid,
            None if pid is None else procs.alive(pid),
            _fetch_health(self.health_urls[name]),
            procs.read_record(self._state, name) or None,
            procs.alive(procs.read_pid(self._state, name, supervisor=True)),
        )

    def start(self, name: str) -> WorkerStatus:
        self._known(name)
        supervised = procs.alive(procs.read_pid(self._state, name, supervisor=True))
        before = None if supervised else self._incarnation(name)  # a start of no supervisor's
        port = urlparse(self.health_urls[name]).port
        env = {**os.environ, **read_env_file(self._state / "env"), "HEALTH_PORT": str(port)}
        env.update(worker_login_env(self.modules[name], env))  # its own Kafka principal
        if name in self.instances:
            env["WORKER_INSTANCE"] = self.instances[name]
        procs.start(
            self._state,
            name,
            [str(Path(self.root, self.python)), "-m", self.modules[name]],
            env=env,
            cwd=self.root,
            stop_timeout_s=self.stop_timeout_s,
        )
        return self._wait_healthy(name, stale=before)

    def restart(self, name: str) -> WorkerStatus:
        """A requested restart through the supervisor; a start when no supervisor runs."""
        self._known(name)
        before, incarnation = procs.read_pid(self._state, name), self._incarnation(name)
        if not procs.restart(self._state, name):
            return self.start(name)
        return self._wait_healthy(name, replacing=before, stale=incarnation)

    def _incarnation(self, name: str) -> str | None:
        """Which start of the worker answers its health port now (None: none answers)."""
        return (_fetch_health(self.health_urls[name]) or {}).get("incarnation")

    def _wait_healthy(
        self, name: str, replacing: int | None = None, stale: str | None = None
    ) -> WorkerStatus:
        """Poll until the process in the pid file (not `replacing`) is alive and a start of the
        worker other than `stale` (the one answering before) answers its health ok: the new
        process, as only one can hold the port (/health shows no pid)."""
        deadline = time.monotonic() + self.ready_timeout_s
        log = self._state / "logs" / f"{name}.log"
        while True:
            status = self.status(name)
            health = status.health or {}
            if (
                status.process_alive
                and status.pid != replacing
                and health.get("incarnation") not in (None, stale)
                and health.get("status") == "ok"
            ):
                return status
            record = status.record or {}
            if record.get("state") == "held":
                raise RuntimeError(
                    f"{name}'s restarts are held ({record.get('held_reason', 'held')}): "
                    f"`python3 -m stack.procs release {name}` first (log: {log})"
                )
            if not status.supervised:
                raise RuntimeError(f"{name}'s supervisor is not running (log: {log})")
            if time.monotonic() >= deadline:
                crashes = [r.get("exit") for r in record.get("restarts", [])[-3:]]
                raise TimeoutError(
                    f"{name} not healthy after {self.ready_timeout_s:.0f}s "
                    f"(state {record.get('state')}, last exits {crashes}; log: {log})"
                )
            time.sleep(0.2)  # interval between readiness polls

    def stop(self, name: str) -> None:
        self._known(name)
        procs.stop(self._state, name, self.stop_timeout_s)

    def hold(self, name: str, reason: str) -> None:
        self._known(name)
        procs.hold(self._state, name, reason)
