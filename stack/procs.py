"""Process management for the local stack: the one implementation `stack.sh` and the Dagster
runtime share (standard library only; it knows nothing of the pipeline).

A process runs under a small supervisor, as under a Kubernetes restart policy or systemd's
`Restart=always`: the supervisor is its parent, so it sees the exit at once and starts it again
after a back-off (0.5 s, doubling per crash up to 30 s; back to 0.5 s once a run lasted 10 s).
Each restart is recorded in `<state>/run/<name>.json` (state, pid, the last restarts with their
exit status), which sensors read; a hold file (`<name>.hold`, with its reason) stops restarts, so
an orchestrator that sees a crash loop can stop it.

Files, under a state directory (stack.sh's `.stack`):
  run/<name>.pid        the process's pid (it leads its own session: signals reach its group)
  run/<name>.sup.pid    its supervisor's pid
  run/<name>.json       the supervisor's record
  run/<name>.hold       present: do not restart (its text says why)
  logs/<name>.log       the process's output, appended

A warm spare (`--warm`): the supervisor starts the next incarnation as soon as the current one
runs, with GO_FD_ENV naming a pipe it waits on after its start-up work (imports); when the
current one exits, the spare is told to go (one byte) and a new spare starts, so a restart
costs no start-up. A requested restart (HUP) discards the spare: it loaded the old code. A
spare whose pipe closes without a byte exits. The process opts in: one that ignores the
variable simply runs twice, so only processes that read it get `--warm`.

Signals to the supervisor: TERM stops the process (TERM, then KILL after the stop timeout) and
the supervisor; HUP restarts the process now (a requested restart, recorded as such).

CLI (stack.sh): python3 -m stack.procs start|stop|restart|hold|release|status|wait ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0
"""A run this long resets the back-off: the crash was not part of a loop."""
KEEP_RESTARTS = 50
DEFAULT_STOP_TIMEOUT_S = 30.0
GO_FD_ENV = "PROC_GO_FD"
"""Set in a warm spare's environment: the file descriptor to read one byte from before it
starts (end of file: exit). A protocol, not shared code: the processes that opt in
(`streaming.workers.process`) define the same name, as this module imports nothing of theirs."""


# ---------------------------------------------------------------- files
def run_dir(state: Path) -> Path:
    return state / "run"


def _file(state: Path, name: str, suffix: str) -> Path:
    return run_dir(state) / f"{name}{suffix}"


def read_pid(state: Path, name: str, supervisor: bool = False) -> int | None:
    try:
        return int(_file(state, name, ".sup.pid" if supervisor else ".pid").read_text().strip())
    except (OSError, ValueError):
        return None


def read_record(state: Path, name: str) -> dict[str, Any]:
    """The supervisor's record ({} when there is none or it is being replaced)."""
    try:
        data = json.loads(_file(state, name, ".json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def alive(pid: int | None) -> bool:
    """The process exists and has not exited (a zombie awaiting its parent's wait has)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return stat != "Z"
    return True


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group `pid` leads, else the process itself."""
    with contextlib.suppress(ProcessLookupError):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            os.kill(pid, sig)


def wait_exit(pid: int, timeout_s: float, is_alive: Callable[[int], bool] = alive) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # interval between exit polls
    return True


def terminate(pid: int, timeout_s: float, is_alive: Callable[[int], bool] = alive) -> bool:
    """TERM the group, KILL it after `timeout_s`; whether it had to be killed."""
    signal_group(pid, signal.SIGTERM)
    if wait_exit(pid, timeout_s, is_alive):
        return False
    signal_group(pid, signal.SIGKILL)
    wait_exit(pid, 10.0, is_alive)
    return True


# ---------------------------------------------------------------- restart policy (pure)
def next_backoff(previous_s: float, uptime_s: float) -> float:
    """The delay before restarting a process that ran `uptime_s` after a delay of `previous_s`:
    none after a run of STABLE_AFTER_S (a first crash: back at once, as systemd and Kubernetes
    restart), then BACKOFF_START_S, doubling per quick crash up to BACKOFF_MAX_S."""
    if uptime_s >= STABLE_AFTER_S:
        return 0.0
    if previous_s <= 0:
        return BACKOFF_START_S
    return min(previous_s * 2, BACKOFF_MAX_S)


def restarts_within(record: Mapping[str, Any], window_s: float, now: float) -> int:
    """How many unrequested restarts (crashes) the record holds in the last `window_s`."""
    return sum(
        1
        for r in record.get("restarts", [])
        if not r.get("requested") and now - float(r.get("time", 0)) <= window_s
    )


def quick_crash_streak(record: Mapping[str, Any], window_s: float, now: float) -> int:
    """The latest run of consecutive quick crashes (each after less than STABLE_AFTER_S up) in
    the last `window_s`: a crash loop, where restarting does not help. A run that lasted, or a
    requested restart, ends the streak, so a healthy process killed now and then is no loop."""
    streak = 0
    for r in reversed(record.get("restarts", [])):
        if r.get("requested") or now - float(r.get("time", 0)) > window_s:
            break
        if float(r.get("uptime_s", 0)) >= STABLE_AFTER_S:
            break
        streak += 1
    return streak


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


# ---------------------------------------------------------------- the supervisor
class Supervisor:
    """Runs one process and restarts it when it exits, until told to stop or held."""

    def __init__(
        self,
        state: Path,
        name: str,
        cmd: Sequence[str],
        stop_timeout_s: float,
        warm: bool = False,
    ) -> None:
        self.state, self.name, self.cmd = state, name, list(cmd)
        self.stop_timeout_s = stop_timeout_s
        self.warm = warm
        self.child: subprocess.Popen[bytes] | None = None
        self.spare: tuple[subprocess.Popen[bytes], int] | None = None
        """With `warm`: the next incarnation, started ahead and waiting (its go pipe)."""
        self.stopping = False
        self.restart_now = False
        old = read_record(state, name)
        self.record: dict[str, Any] = {
            "name": name,
            "state": "starting",
            "pid": None,
            "supervisor_pid": os.getpid(),
            "started": None,
            "backoff_s": 0.0,
            "restarts": old.get("restarts", [])[-KEEP_RESTARTS:],
        }

    def save(self, **changes: Any) -> None:
        self.record.update(changes)
        _write_atomic(_file(self.state, self.name, ".json"), json.dumps(self.record))

    def _popen(self, what: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        log = self.state / "logs" / f"{self.name}.log"
        env = dict(os.environ)
        if pass_fds:
            env[GO_FD_ENV] = str(pass_fds[0])
        with log.open("ab") as out:
            stamp = time.strftime("%FT%TZ", time.gmtime())
            out.write(f"=== {stamp} {what} {self.name}\n".encode())
            out.flush()
            return subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
                env=env,
            )

    def spawn(self) -> None:
        """Start the next incarnation: the warm spare if one waits (told to go), else a new
        process; then, with `warm`, the spare after it."""
        spare, self.spare = self.spare, None
        if spare is not None and spare[0].poll() is None:
            self.child = spare[0]
            with contextlib.suppress(OSError):
                os.write(spare[1], b"g")
            os.close(spare[1])
        else:
            if spare is not None:
                os.close(spare[1])
            self.child = self._popen("starting")
        _write_atomic(_file(self.state, self.name, ".pid"), f"{self.child.pid}\n")
        self.save(state="running", pid=self.child.pid, started=time.time())
        if self.warm:
            read_end, write_end = os.pipe()
            try:
                self.spare = (self._popen("starting a warm spare of", (read_end,)), write_end)
            finally:
                os.close(read_end)
            self.save(spare_pid=self.spare[0].pid)

    def on_term(self, *_: object) -> None:
        self.stopping = True

    def on_hup(self, *_: object) -> None:
        self.restart_now = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGHUP, self.on_hup)
        _write_atomic(_file(self.state, self.name, ".sup.pid"), f"{os.getpid()}\n")
        backoff = 0.0
        while not self.stopping:
            try:
                self.spawn()
            except OSError as exc:  # not even started (a missing program): a crash all the same
                self.child, self.record["started"] = None, time.time()
                requested, exit_text, pid = False, f"could not start: {exc}", None
            else:
                assert self.child is not None
                requested = self._wait_child()
                if self.stopping:
                    break
                if requested:  # an operator's restart (a deploy, say): new code, no spare
                    self._discard_spare()
                exit_text, pid = describe_exit(self.child.returncode), self.child.pid
            if self.stopping:
                break
            uptime = time.time() - float(self.record["started"])
            backoff = 0.0 if requested else next_backoff(backoff, uptime)
            self.record["restarts"] = [
                *self.record["restarts"][-(KEEP_RESTARTS - 1) :],
                {
                    "time": time.time(),
                    "pid": pid,
                    "exit": exit_text,
                    "uptime_s": round(uptime, 1),
                    "requested": requested,
                    "backoff_s": backoff,
                },
            ]
            _file(self.state, self.name, ".pid").unlink(missing_ok=True)
            if not self._pause(backoff):
                break
        self._shutdown()
        return 0

    def _wait_child(self) -> bool:
        """Wait for the child to exit; True when it exited because a restart was requested."""
        assert self.child is not None
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.wait(timeout=0.1)  # wakes on exit, on our signals within 0.1 s
                return False
            if self.stopping:
                return False
            if self.restart_now:
                self.restart_now = False
                terminate(self.child.pid, self.stop_timeout_s, lambda _p: self.child.poll() is None)  # type: ignore[union-attr]  # asserted above
                return True

    def _pause(self, backoff: float) -> bool:
        """Back off before the next start; False when stopping or held instead."""
        hold = _file(self.state, self.name, ".hold")
        deadline = time.monotonic() + backoff
        self.save(state="backoff", pid=None, backoff_s=backoff)
        while not self.stopping:
            if hold.exists():
                reason = hold.read_text().strip() or "held"
                self.save(state="held", held_reason=reason)
                while hold.exists() and not self.stopping:
                    time.sleep(0.2)  # interval between hold polls
                deadline = time.monotonic()
                self.record.pop("held_reason", None)
                continue
            if time.monotonic() >= deadline or self.restart_now:
                self.restart_now = False
                return True
            time.sleep(0.05)  # back-off granularity
        return False

    def _discard_spare(self) -> None:
        """End the spare: closing its pipe unblocks it and it exits without starting."""
        if self.spare is None:
            return
        os.close(self.spare[1])
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.spare[0].wait(self.stop_timeout_s)
        if self.spare[0].poll() is None:
            terminate(self.spare[0].pid, self.stop_timeout_s)
        self.spare = None

    def _shutdown(self) -> None:
        self._discard_spare()
        if self.child is not None and self.child.poll() is None:
            terminate(self.child.pid, self.stop_timeout_s, lambda _p: self.child.poll() is None)  # type: ignore[union-attr]  # checked above
        _file(self.state, self.name, ".pid").unlink(missing_ok=True)
        _file(self.state, self.name, ".sup.pid").unlink(missing_ok=True)
        self.save(state="stopped", pid=None)


# ---------------------------------------------------------------- operations
def start(
    state: Path,
    name: str,
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    warm: bool = False,
) -> int:
    """Start `cmd` under a detached supervisor unless one runs; the supervisor's pid. With
    `warm`, the supervisor keeps the next incarnation started ahead (see GO_FD_ENV)."""
    running = read_pid(state, name, supervisor=True)
    if alive(running):
        assert running is not None
        return running
    (state / "logs").mkdir(parents=True, exist_ok=True)
    run_dir(state).mkdir(parents=True, exist_ok=True)
    _file(state, name, ".hold").unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    sup_env = dict(os.environ if env is None else env)
    sup_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, sup_env.get("PYTHONPATH")) if p)
    args = [sys.executable, "-m", "stack.procs", "supervise", "--state", str(state)]
    args += ["--stop-timeout", str(stop_timeout_s), *(["--warm"] if warm else []), name, "--", *cmd]
    sup = subprocess.Popen(
        args,
        cwd=cwd,
        env=sup_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(state / "logs" / f"{name}.supervisor.log").open("ab"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while read_pid(state, name, supervisor=True) != sup.pid or read_pid(state, name) is None:
        if sup.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the supervisor of {name} did not start (exit {sup.poll()})")
        time.sleep(0.02)  # the supervisor writes its pid files within milliseconds
    return sup.pid


def stop(state: Path, name: str, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
    """Stop the supervisor and its process (or a bare process from a pid file); whether
    anything ran. The supervisor gives the process its own stop timeout."""
    sup = read_pid(state, name, supervisor=True)
    pid = read_pid(state, name)
    ran = alive(sup) or alive(pid)
    if alive(sup):
        assert sup is not None
        os.kill(sup, signal.SIGTERM)
        if not wait_exit(sup, timeout_s + 15):
            os.kill(sup, signal.SIGKILL)
    if alive(pid):
        assert pid is not None
        terminate(pid, timeout_s)
    for suffix in (".pid", ".sup.pid"):
        _file(state, name, suffix).unlink(missing_ok=True)
    return ran


def restart(state: Path, name: str) -> bool:
    """Ask the supervisor to restart the process now; False when no supervisor runs."""
    sup = read_pid(state, name, supervisor=True)
    if not alive(sup):
        return False
    assert sup is not None
    os.kill(sup, signal.SIGHUP)
    return True


def hold(state: Path, name: str, reason: str) -> None:
    """Stop restarting the process once it exits (a crash loop); the reason is recorded."""
    run_dir(state).mkdir(parents=True, exist_ok=True)
    _file(state, name, ".hold").write_text(reason + "\n")


def release(state: Path, name: str) -> None:
    _file(state, name, ".hold").unlink(missing_ok=True)


def ready(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a readiness address answers: http(s) 2xx, tcp://HOST:PORT accepts, "-" always."""
    if url == "-":
        return True
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://") :].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except (OSError, ValueError):
            return False
        return True
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(state: Path, name: str, url: str, timeout_s: float) -> None:
    """Poll until the process is up and `url` answers; raise with the log's tail otherwise."""
    deadline = time.monotonic() + timeout_s
    log = state / "logs" / f"{name}.log"
    while not (alive(read_pid(state, name)) and ready(url)):
        record = read_record(state, name)
        if record.get("state") == "held" or not alive(read_pid(state, name, supervisor=True)):
            raise RuntimeError(f"{name} is not running ({record.get('state')}; log: {log})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after {timeout_s:.0f} s (log: {log})")
        time.sleep(0.2)  # interval between readiness polls


def status_word(state: Path, name: str, url: str) -> str:
    """healthy, or what it is instead: backoff, held, starting, DOWN."""
    record = read_record(state, name)
    pid = read_pid(state, name)
    if alive(pid) and ready(url):
        return "healthy"
    if alive(read_pid(state, name, supervisor=True)):
        word = str(record.get("state", "starting"))
        return "starting" if word == "running" else word
    return "DOWN"


# ---------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stack.procs", description=__doc__)
    parser.add_argument("--state", type=Path, default=Path(os.environ.get("STACK_DIR", ".stack")))
    sub = parser.add_subparsers(dest="op", required=True)
    for op in ("supervise", "start"):
        p = sub.add_parser(op)
        p.add_argument("--state", type=Path, dest="state_", default=None)
        p.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S)
        p.add_argument(
            "--warm", action="store_true", help=f"keep a warm spare (the process reads {GO_FD_ENV})"
        )
        p.add_argument("name")
        p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("stop")
    p.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S)
    p.add_argument("name")
    for op in ("restart", "release", "pid"):
        sub.add_parser(op).add_argument("name")
    p = sub.add_parser("hold")
    p.add_argument("name")
    p.add_argument("reason", nargs="?", default="held by an operator")
    for op in ("wait", "status"):
        p = sub.add_parser(op)
        p.add_argument("--timeout", type=float, default=180.0)
        p.add_argument("name")
        p.add_argument("url")
    args = parser.parse_args(argv)
    state: Path = getattr(args, "state_", None) or args.state
    cmd = [c for c in getattr(args, "cmd", [])]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    try:
        if args.op == "supervise":
            return Supervisor(state, args.name, cmd, args.stop_timeout, args.warm).run()
        if args.op == "start":
            start(state, args.name, cmd, stop_timeout_s=args.stop_timeout, warm=args.warm)
        elif args.op == "stop":
            stop(state, args.name, args.timeout)
        elif args.op == "restart":
            return 0 if restart(state, args.name) else 1
        elif args.op == "hold":
            hold(state, args.name, args.reason)
        elif args.op == "release":
            release(state, args.name)
        elif args.op == "pid":
            pid = read_pid(state, args.name)
            print(pid if alive(pid) else "")
        elif args.op == "wait":
            wait_ready(state, args.name, args.url, args.timeout)
        elif args.op == "status":
            print(status_word(state, args.name, args.url))
    except (RuntimeError, TimeoutError) as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
