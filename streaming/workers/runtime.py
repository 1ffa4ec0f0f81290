"""What every stream worker needs around its loop: JSON logs, metrics, a health endpoint, signals.

A supervisor (Dagster's sensors here, Kubernetes probes elsewhere) reads `GET /health` for
liveness and progress: records in/out per topic, dead letters, consumer lag, last commit time.
It answers 503 when the loop has not turned for `stall_after_s`, so a wedged worker shows as
unhealthy even though its process is alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers parse without a grok pattern."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level or os.environ.get("LOG_LEVEL", "INFO"), handlers=[handler])
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a message with structured fields (they become top-level JSON keys)."""
    logger.log(level, msg, extra={"fields": fields})


@dataclass
class WorkerMetrics:
    """Counters the loop updates and the health endpoint reads (GIL-atomic updates suffice)."""

    worker: str
    instance: str
    started_at: float = field(default_factory=time.time)
    records_in: int = 0
    records_out: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    transactions: int = 0
    last_commit_time: float | None = None
    first_commit_time: float | None = None
    """This process's first commit (wall clock): with the time of a crash, how long the
    restart took to be back to work."""
    last_loop_time: float = field(default_factory=time.monotonic)
    restoring_since: float | None = None
    consumer_lag: int | None = None
    consumer_errors: int = 0
    assigned: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def snapshot(self, stall_after_s: float, restore_limit_s: float = 600) -> dict[str, Any]:
        """Counters and status: ok; restoring (the loop waits while newly assigned partitions
        rebuild their state, which can take minutes: not a stall, up to `restore_limit_s`);
        stalled (the loop has not turned for `stall_after_s`)."""
        now = time.monotonic()
        restoring = self.restoring_since is not None and now - self.restoring_since <= (
            restore_limit_s
        )
        if restoring:
            status = "restoring"
        elif now - max(self.last_loop_time, self.restoring_since or 0) > stall_after_s:
            status = "stalled"
        else:
            status = "ok"
        return {
            "worker": self.worker,
            "instance": self.instance,
            "pid": os.getpid(),
            "status": status,
            "uptime_s": round(time.time() - self.started_at, 1),
            "records_in": self.records_in,
            "records_out": dict(self.records_out),
            "dead_letters": self.dead_letters,
            "transactions": self.transactions,
            "last_commit_time": self.last_commit_time,
            "first_commit_time": self.first_commit_time,
            "consumer_lag": self.consumer_lag,
            "consumer_errors": self.consumer_errors,
            "assigned_partitions": list(self.assigned),
            **self.extra,
        }

    def on_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback: records not yet handed to the loop, all partitions.

        Per partition: last stable offset - fetch position + prefetched records. Not librdkafka's
        `consumer_lag` (end - committed): on topics written in transactions the commit marker
        after the last record is never "consumed", so that figure stays >= 1 on an idle,
        caught-up worker and would make a supervisor think it stalled.
        """
        stats = json.loads(stats_json)
        lag = 0
        for topic in stats.get("topics", {}).values():
            for pid, part in topic.get("partitions", {}).items():
                if pid == "-1" or part.get("fetch_state") != "active":
                    continue
                position, end = part.get("next_offset", -1), part.get("ls_offset", -1)
                if position >= 0 and end >= 0:
                    lag += max(end - position, 0) + part.get("fetchq_cnt", 0)
                else:
                    lag += max(part.get("consumer_lag", 0), 0)
        self.consumer_lag = lag


class HealthServer:
    """`GET /health` (200 ok or restoring / 503 stalled) with the metrics snapshot as JSON,
    served from a thread."""

    def __init__(self, metrics: WorkerMetrics, port: int, stall_after_s: float = 30.0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") not in ("/health", ""):
                    self.send_error(404, "try /health")
                    return
                body = outer.metrics.snapshot(outer.stall_after_s)
                data = json.dumps(body).encode()
                self.send_response(503 if body["status"] == "stalled" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # health polls are not worth a log line each

        self.metrics = metrics
        self.stall_after_s = stall_after_s
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


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


GO_FD_ENV = "PROC_GO_FD"
"""Set by a process supervisor that keeps this process as a warm spare (`stack.procs --warm`)."""


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


def await_turn(warm_up: Callable[[], None] | None = None) -> None:
    """As a warm spare: `spare_turn`, then wait for the go."""
    wait_for_go = spare_turn(warm_up)
    if wait_for_go is not None:
        wait_for_go()


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def int_instance() -> int:
    """WORKER_INSTANCE as the offset of the instance's health port from its worker's declared
    one (instances are numbered 0..N-1; a non-numeric id, as tests use, counts as 0)."""
    raw = os.environ.get("WORKER_INSTANCE", "0")
    return int(raw) if raw.isdigit() else 0


M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the mmap threshold."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial threshold, kept fixed."""


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


def serve(worker: Any, health_port: int) -> int:
    """Run a worker with its health endpoint; exit code 1 on a fatal Kafka error or an
    unreachable service (restart me)."""
    from confluent_kafka import KafkaException

    setup_logging()
    log = logging.getLogger(worker.name)
    health = HealthServer(worker.metrics, health_port).start()
    log_event(log, "health endpoint", url=f"http://127.0.0.1:{health.port}/health")
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
