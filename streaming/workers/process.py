"""A stream worker as a process: signals, the warm-spare handshake, glibc tuning, `run_worker`.

`run_worker(spec, build)` is every worker's `main`: tune malloc if the worker asks, take the
warm-spare turn (`spare_turn`), read the settings, build the worker, keep standby copies while
a spare, then `serve` it with its health endpoint until SIGTERM. Exit codes tell the supervisor
what to do: 0 stopped, 1 restart me (a fatal Kafka error, a service unreachable), 2 a person must
act (a bad setting, a state layout a restart cannot fix). Nothing here knows the pipeline's
topics; the stack's process supervisor (`stack.procs`) is spoken to only through the GO_FD_ENV
protocol, never imported: the product does not depend on the dev stack.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import KafkaException

from streaming.core.aggregation import StateLayoutError
from streaming.pipeline import WorkerSpec
from streaming.settings import LoopSettings, Settings, load
from streaming.workers.health import HealthServer
from streaming.workers.logs import log_event, setup_logging
from streaming.workers.metrics import WorkerMetrics

GO_FD_ENV = "PROC_GO_FD"
"""Set by a process supervisor that keeps this process as a warm spare (`stack.procs --warm`):
the file descriptor to read one byte from before starting (end of file: exit). A protocol
between two sides that share no code: `stack/procs.py` defines the same name."""
M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the mmap threshold."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial threshold, kept fixed."""
REBUILD_HINT = (
    "rebuild the stream's state from udemy-reviews: stop the stream workers, run "
    "`reviews rebuild-stream`, start them again (docs/operations.md)"
)


class Worker(Protocol):
    """What `serve` and `run_worker` need of a worker (`streaming.workers.eos.EosWorker`)."""

    name: str
    metrics: WorkerMetrics

    def run(self) -> None: ...

    def stand_by(self, wait_for_go: Callable[[], None]) -> None: ...


class StopFlag:
    """Set by SIGTERM/SIGINT so the loop finishes its transaction and exits cleanly."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self._stop.set()

    def __bool__(self) -> bool:
        return self._stop.is_set()

    def set(self) -> None:
        self._stop.set()


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


def spare_turn(warm_up: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """As a warm spare: run `warm_up` (start-up work done ahead) and return the wait for the
    supervisor's go (one byte on the descriptor GO_FD_ENV names; the process exits quietly if
    it never comes: end of file). None when this process is no spare."""
    fd = os.environ.pop(GO_FD_ENV, None)
    if fd is None:
        return None
    setup_logging()  # a spare logs what it does ahead (standby copies)
    if warm_up is not None:
        warm_up()

    def wait_for_go() -> None:
        try:
            go = os.read(int(fd), 1)
        finally:
            os.close(int(fd))
        if not go:
            sys.exit(0)

    return wait_for_go


def health_port(spec: WorkerSpec) -> int:
    """HEALTH_PORT, else the worker's declared base port + WORKER_INSTANCE (instances are
    numbered 0..N-1; a non-numeric id, as tests use, counts as 0)."""
    s = load(LoopSettings)
    offset = int(s.worker_instance) if s.worker_instance.isdigit() else 0
    return s.health_port or spec.instance_port(offset)


def fix_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at 128 KiB instead of letting it rise (to 32 MiB) the first
    time a large block is freed. A state store's numpy columns double as they grow: with a
    risen threshold each new column comes from the heap and the old one leaves a hole there
    that is never returned (measured: RSS grew by 2.5x the state's bytes; by 1x with this).
    Above the fixed threshold every column is its own mapping, released when freed.
    False (nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def run_worker(
    spec: WorkerSpec,
    build: Callable[[Settings, StopFlag], Worker | None],
    warm_up: Callable[[], None] | None = None,
    fixed_mmap_threshold: bool = False,
) -> int:
    """A worker's `main`: the exit code. `build` makes the worker from the settings (None: told
    to stop while waiting for a service); a warm spare builds it ahead too, then keeps standby
    copies of its state until its go. `fixed_mmap_threshold`: its state grows in columns
    (`fix_mmap_threshold`)."""
    if fixed_mmap_threshold:
        fix_mmap_threshold()  # the state's columns are released to the OS when they grow
    wait_for_go = spare_turn(warm_up)  # a warm spare: its imports are done
    try:
        settings = Settings.from_env()
        worker = build(settings, StopFlag())
    except ValueError as exc:  # a SettingsError, a bad FRAUD_MODEL: a person fixes it
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:  # gone again within milliseconds: the supervisor retries
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return 1
    if worker is None:
        return 0  # told to stop while waiting
    if wait_for_go is not None:  # a spare keeps standby copies of the state until its turn
        worker.stand_by(wait_for_go)
    return serve(worker, health_port(spec))


def serve(worker: Worker, health_port: int) -> int:
    """Run a worker with its health endpoint; exit code 1 on a fatal Kafka error or an
    unreachable service (restart me), 2 on a state a restart cannot fix."""
    setup_logging()
    log = logging.getLogger(worker.name)
    health = HealthServer(worker.metrics, health_port).start()
    log_event(log, "health endpoint", url=f"http://{health.host}:{health.port}/health")
    try:
        worker.run()
    except KafkaException as exc:
        log_event(
            log,
            "fatal Kafka error, exiting for the supervisor to restart",
            logging.ERROR,
            error=str(exc.args[0]),
        )
        return 1
    except ConnectionError as exc:  # e.g. RegistryUnavailable: not the data's fault
        log_event(
            log,
            "a service is unreachable, exiting for the supervisor to restart",
            logging.ERROR,
            error=str(exc),
        )
        return 1
    except StateLayoutError as exc:  # a restart cannot fix it; a person runs the command
        log_event(log, "state refused", logging.ERROR, error=str(exc), fix=REBUILD_HINT)
        print(f"{worker.name}: {exc}; {REBUILD_HINT}", file=sys.stderr)
        return 2
    finally:
        health.stop()
    return 0


class Backoff:
    """Waits between tries of an unreachable service: `start_s`, doubling up to `max_s`, from
    the start again after `reset` (the service answered)."""

    def __init__(self, start_s: float = 0.5, max_s: float = 5.0) -> None:
        self.start_s, self.max_s = start_s, max_s
        self.reset()

    def reset(self) -> None:
        self._wait = self.start_s

    def next(self) -> float:
        wait, self._wait = self._wait, min(2 * self._wait, self.max_s)
        return wait


def until_reachable(
    what: str,
    call: Callable[[], Any],
    stop: StopFlag,
    max_wait_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Call `call` until it no longer raises ConnectionError (a service restarting, say),
    with a `Backoff` up to `max_wait_s` between tries, logging each; False if told to stop.
    A worker that exited instead would be restarted into the same wall, and a few such quick
    exits make a crash loop, which stops the restarts for good."""
    log = logging.getLogger("runtime")
    backoff = Backoff(max_s=max_wait_s)
    while not stop:
        try:
            call()
            return True
        except ConnectionError as exc:
            wait = backoff.next()
            log_event(log, f"waiting for {what}", logging.WARNING, error=str(exc), retry_in_s=wait)
            sleep(wait)  # back-off between tries of an unreachable service
    return False
