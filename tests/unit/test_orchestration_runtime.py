"""LocalProcessRuntime with a stand-in worker under the real stack.procs supervisor: pid files,
records and logs in a scratch state directory; start, crash and supervisor restart, requested
restart, stop, hold."""

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestration.resources import LocalProcessRuntime, WorkerStatus
from orchestration.resources.supervision import HELD, OK, assess_worker
from stack import procs
from streaming.settings import REPO_ROOT

NAME = "fake-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(runtime: LocalProcessRuntime, until: Callable[[WorkerStatus], bool]) -> WorkerStatus:
    """The first status satisfying `until`, polling with a deadline."""
    deadline = time.monotonic() + 20
    while not until(status := runtime.status(NAME)):
        assert time.monotonic() < deadline, f"condition not reached; last status {status}"
        time.sleep(0.05)  # interval between status polls
    return status


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalProcessRuntime]:
    (tmp_path / "env").write_text("# as stack.sh writes it\nFAKE_MARKER=from-the-env-file\n")
    rt = LocalProcessRuntime(
        root=str(REPO_ROOT),
        state_dir=str(tmp_path),
        modules={NAME: "tests.unit.orchestration_fake_worker"},
        health_urls={NAME: f"http://127.0.0.1:{free_port()}/health"},
        instances={NAME: "1"},
        ready_timeout_s=30,
        stop_timeout_s=10,
    )
    yield rt
    rt.stop(NAME)


def test_start_runs_the_worker_under_a_supervisor_and_waits_for_health(
    runtime: LocalProcessRuntime, tmp_path: Path
) -> None:
    status = runtime.start(NAME)
    pid = int((tmp_path / "run" / f"{NAME}.pid").read_text())
    assert status.pid == pid and status.process_alive and status.supervised
    assert status.health is not None and status.health["test_pid"] == pid
    assert status.health["marker"] == "from-the-env-file"
    assert status.health["instance"] == "1", "an instance process gets its WORKER_INSTANCE"
    assert status.record is not None and status.record["state"] == "running"
    assert os.getpgid(pid) == pid, "the worker leads its own process group, as with setsid"
    assert f"starting {NAME}" in (tmp_path / "logs" / f"{NAME}.log").read_text()
    assert runtime.start(NAME).pid == pid, "a running worker is not started twice"
    assert assess_worker(runtime.status(NAME), None).state == OK


def test_a_killed_worker_is_restarted_by_its_supervisor(runtime: LocalProcessRuntime) -> None:
    pid = runtime.start(NAME).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status = poll(
        runtime,
        lambda s: s.pid not in (None, pid) and (s.health or {}).get("test_pid") == s.pid,
    )
    [crash] = (status.record or {})["restarts"]
    assert crash["pid"] == pid and crash["exit"] == "killed by SIGKILL"
    assert not crash["requested"]
    assert procs.restarts_within(status.record or {}, 300, time.time()) == 1


def test_restart_and_stop(runtime: LocalProcessRuntime, tmp_path: Path) -> None:
    first = runtime.start(NAME).pid
    restarted = runtime.restart(NAME)
    assert restarted.pid != first and (restarted.health or {})["test_pid"] == restarted.pid
    assert (restarted.record or {})["restarts"][-1]["requested"], "recorded as requested"
    runtime.stop(NAME)
    status = runtime.status(NAME)
    assert status.pid is None and status.health is None and not status.supervised
    assert (status.record or {})["state"] == "stopped"
    assert not (tmp_path / "run" / f"{NAME}.pid").exists()
    assert runtime.restart(NAME).supervised, "restart starts a worker with no supervisor"


def test_a_held_worker_is_not_restarted(runtime: LocalProcessRuntime) -> None:
    pid = runtime.start(NAME).pid
    assert pid is not None
    runtime.hold(NAME, "crash loop (test)")
    os.kill(pid, signal.SIGKILL)
    status = poll(
        runtime, lambda s: (s.record or {}).get("state") == "held" and not s.process_alive
    )
    assert status.supervised, "a held supervisor stays, waiting for a release"
    assessment = assess_worker(status, None)
    assert assessment.state == HELD and "crash loop (test)" in assessment.reason
    with pytest.raises(RuntimeError, match="release"):
        runtime.start(NAME)


def test_an_unknown_worker_is_refused(runtime: LocalProcessRuntime) -> None:
    with pytest.raises(KeyError, match="unknown worker"):
        runtime.status("nope")
