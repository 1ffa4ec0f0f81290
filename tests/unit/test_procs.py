"""stack/procs.py, the one process manager: a supervised process is restarted when it dies, with
a back-off; each restart is recorded; hold stops restarts; stop ends both within the timeout."""

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack import procs

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(300)"]
DEAF = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(300)",
]


WARM = [
    sys.executable,
    "-c",
    "import os, sys, time\n"
    "fd = os.environ.get('PROC_GO_FD')\n"
    "if fd is not None and not os.read(int(fd), 1):\n"
    "    sys.exit(0)\n"
    "print('running', os.getpid(), flush=True); time.sleep(300)",
]


def until(what: str, cond: Callable[[], object], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # poll interval


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for name in ("demo", "deaf"):
        procs.stop(tmp_path, name, timeout_s=1)


def test_backoff_doubles_for_quick_crashes_and_resets_after_a_stable_run() -> None:
    assert procs.next_backoff(0.0, 0.1) == procs.BACKOFF_START_S
    assert procs.next_backoff(0.5, 1.0) == 1.0
    assert procs.next_backoff(16.0, 1.0) == procs.BACKOFF_MAX_S
    assert procs.next_backoff(30.0, procs.STABLE_AFTER_S) == 0.0, "a first crash: at once"
    assert procs.next_backoff(0.0, procs.STABLE_AFTER_S + 100) == 0.0


def test_restarts_within_counts_crashes_only() -> None:
    now = 1000.0
    record = {
        "restarts": [
            {"time": 100.0},
            {"time": 900.0},
            {"time": 950.0, "requested": True},
            {"time": 990.0},
        ]
    }
    assert procs.restarts_within(record, 300, now) == 2


def test_a_crash_loop_is_a_streak_of_quick_crashes() -> None:
    now = 1000.0
    quick = [{"time": 900.0 + i, "uptime_s": 1.0} for i in range(5)]
    assert procs.quick_crash_streak({"restarts": quick}, 300, now) == 5
    lasted = [*quick[:2], {"time": 950.0, "uptime_s": 60.0}, *quick[2:]]
    assert procs.quick_crash_streak({"restarts": lasted}, 300, now) == 3
    killed_when_healthy = [{"time": 900.0 + i, "uptime_s": 15.0} for i in range(9)]
    assert procs.quick_crash_streak({"restarts": killed_when_healthy}, 300, now) == 0
    assert procs.quick_crash_streak({"restarts": quick}, 50, now) == 0, "outside the window"


def test_a_killed_process_is_restarted_and_the_restart_recorded(state: Path) -> None:
    procs.start(state, "demo", SLEEPER)
    first = procs.read_pid(state, "demo")
    assert procs.alive(first) and os.getpgid(first) == first, "it leads its own group"
    os.kill(first, signal.SIGKILL)
    until("a new process", lambda: procs.read_pid(state, "demo") not in (None, first))
    assert procs.alive(procs.read_pid(state, "demo"))
    record = procs.read_record(state, "demo")
    assert [r["exit"] for r in record["restarts"]] == ["killed by SIGKILL"]
    assert record["restarts"][0]["backoff_s"] == procs.BACKOFF_START_S
    until(
        "the log of two runs",
        lambda: (state / "logs/demo.log").read_text().count("starting demo") == 2,
    )


def test_a_warm_spare_takes_over_a_killed_process_and_a_new_spare_waits(state: Path) -> None:
    procs.start(state, "demo", WARM, warm=True)
    first = procs.read_pid(state, "demo")
    until("a spare", lambda: procs.read_record(state, "demo").get("spare_pid"))
    spare = procs.read_record(state, "demo")["spare_pid"]
    assert procs.alive(spare) and spare != first
    log = state / "logs/demo.log"
    until("the first one running", lambda: f"running {first}" in log.read_text())
    assert f"running {spare}" not in log.read_text(), "a spare waits for its turn"
    os.kill(first, signal.SIGKILL)
    until("the spare in its place", lambda: procs.read_pid(state, "demo") == spare)
    until("the spare running", lambda: f"running {spare}" in log.read_text())
    until("a new spare", lambda: procs.read_record(state, "demo").get("spare_pid") != spare)
    last = procs.read_record(state, "demo")["spare_pid"]
    current = procs.read_pid(state, "demo")
    assert procs.restart(state, "demo")  # requested: a deploy, new code; the spare is old
    until("a new process", lambda: procs.read_pid(state, "demo") not in (None, current))
    assert procs.read_pid(state, "demo") != last and not procs.alive(last)
    last = procs.read_record(state, "demo")["spare_pid"]
    assert procs.stop(state, "demo", timeout_s=5)
    until("both gone", lambda: not procs.alive(spare) and not procs.alive(last))
    assert f"running {last}" not in log.read_text(), "a spare told nothing exits unstarted"


def test_a_requested_restart_is_immediate_and_not_a_crash(state: Path) -> None:
    procs.start(state, "demo", SLEEPER)
    first = procs.read_pid(state, "demo")
    assert procs.restart(state, "demo")
    until("a new process", lambda: procs.read_pid(state, "demo") not in (None, first))
    record = procs.read_record(state, "demo")
    assert record["restarts"][-1]["requested"] is True
    assert procs.restarts_within(record, 300, time.time()) == 0


def test_hold_stops_restarts_and_release_resumes_them(state: Path) -> None:
    procs.start(state, "demo", SLEEPER)
    procs.hold(state, "demo", "crash loop")
    first = procs.read_pid(state, "demo")
    os.kill(first, signal.SIGKILL)
    until("held", lambda: procs.read_record(state, "demo").get("state") == "held")
    assert procs.read_record(state, "demo")["held_reason"] == "crash loop"
    assert procs.read_pid(state, "demo") is None
    procs.release(state, "demo")
    until("running again", lambda: procs.alive(procs.read_pid(state, "demo")))


def test_stop_kills_a_process_that_ignores_term_after_its_timeout(state: Path) -> None:
    procs.start(state, "deaf", DEAF, stop_timeout_s=0.5)
    until("started", lambda: "up" in (state / "logs/deaf.log").read_text().splitlines())
    pid = procs.read_pid(state, "deaf")
    t0 = time.monotonic()
    assert procs.stop(state, "deaf", timeout_s=0.5)
    assert time.monotonic() - t0 < 5, "the per-process timeout, not 30 s"
    assert not procs.alive(pid)
    assert procs.read_record(state, "deaf")["state"] == "stopped"
    assert not (state / "run/deaf.pid").exists()


def test_a_program_that_cannot_start_backs_off_instead_of_killing_the_supervisor(
    state: Path,
) -> None:
    with pytest.raises(RuntimeError):  # start waits for a pid file that never comes
        procs.start(state, "demo", [str(state / "no-such-program")])
    record = procs.read_record(state, "demo")
    assert record["restarts"] and record["restarts"][0]["exit"].startswith("could not start")
    assert procs.alive(procs.read_pid(state, "demo", supervisor=True))
