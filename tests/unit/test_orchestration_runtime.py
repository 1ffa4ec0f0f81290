"""LocalProcessRuntime with a stand-in worker: stack.sh's pid and log files, start/stop/restart."""

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration.resources import LocalProcessRuntime
from orchestration.supervision import DEAD, OK, assess_worker
from streaming.config import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalProcessRuntime]:
    (tmp_path / "env").write_text("# as stack.sh writes it\nFAKE_MARKER=from-the-env-file\n")
    rt = LocalProcessRuntime(
        root=str(REPO_ROOT),
        state_dir=str(tmp_path),
        modules={"fake": "tests.unit.orchestration_fake_worker"},
        health_urls={"fake": f"http://127.0.0.1:{free_port()}/health"},
        ready_timeout_s=30,
        stop_timeout_s=10,
    )
    yield rt
    rt.stop("fake")


def test_start_writes_the_pid_file_and_log_and_waits_for_health(
    runtime: LocalProcessRuntime, tmp_path: Path
) -> None:
    status = runtime.start("fake")
    pid = int((tmp_path / "run" / "fake.pid").read_text())
    assert status.pid == pid and status.process_alive
    assert status.health is not None and status.health["pid"] == pid
    assert status.health["marker"] == "from-the-env-file"
    assert os.getpgid(pid) == pid, "the worker leads its own process group, as with setsid"
    assert "starting fake" in (tmp_path / "logs" / "fake.log").read_text()
    assert runtime.start("fake").pid == pid, "a running worker is not started twice"
    assert assess_worker(runtime.status("fake"), None).state == OK


def test_stop_and_restart(runtime: LocalProcessRuntime, tmp_path: Path) -> None:
    first = runtime.start("fake").pid
    second = runtime.restart("fake").pid
    assert second != first
    assert runtime.status("fake").health["pid"] == second
    runtime.stop("fake")
    status = runtime.status("fake")
    assert status.pid is None and status.health is None
    assert not (tmp_path / "run" / "fake.pid").exists()


def test_a_killed_worker_is_dead(runtime: LocalProcessRuntime) -> None:
    pid = runtime.start("fake").pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (status := runtime.status("fake")).process_alive and time.monotonic() < deadline:
        time.sleep(0.05)  # interval between polls of the process's exit
    assert status.process_alive is False
    assert assess_worker(status, None).state == DEAD
    assert runtime.start("fake").pid != pid, "start replaces a dead worker"


def test_an_unknown_worker_is_refused(runtime: LocalProcessRuntime) -> None:
    with pytest.raises(KeyError, match="unknown worker"):
        runtime.status("nope")
