"""What every stream worker needs around its loop: JSON logs, metrics, a health endpoint, signals.

A supervisor (Dagster's sensors here, Kubernetes probes elsewhere) reads `GET /health` for
liveness and progress: records in/out per topic, dead letters, consumer lag, last commit time.
It answers 503 when the worker cannot commit (its loop has not turned for `stall_after_s`, it
aborts transaction after transaction, it has input and no commit for 30 s, or it waits for a
service), so a wedged worker shows as unhealthy even though its process is alive. `GET /metrics`
on the same port serves the same counters, per topic and partition, in Prometheus' format
(`streaming.workers.prometheus`).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from streaming.config import MAX_REQUEST_HEAD_BYTES, TrustedHosts, bind_host
from streaming.core.aggregation import StateLayoutError
from streaming.pipeline import WorkerSpec
from streaming.settings import LoopSettings, load


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
    logging.basicConfig(level=level or load(LoopSettings).log_level, handlers=[handler])
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a message with structured fields (they become top-level JSON keys)."""
    logger.log(level, msg, extra={"fields": fields})


COMMIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Commit latency buckets: a healthy commit takes milliseconds; seconds mean a slow broker."""


@dataclass
class LatencyHistogram:
    """Counts per bucket (upper bounds `bounds`, plus +Inf) and their sum: what a Prometheus
    histogram exposes, kept without a client library in the loop (one bisect per commit)."""

    bounds: tuple[float, ...] = COMMIT_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total_s: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of observations <= le) per bucket, +Inf last."""
        out, running = [], 0
        for le, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((le, running))
        return out


@dataclass
class PartitionStats:
    """One partition as librdkafka's statistics last saw it (every statistics.interval.ms)."""

    lag: int = 0
    fetched: int = 0
    """Records the consumer received (librdkafka `rxmsgs`; again after a rewind)."""
    produced: int = 0
    """Records the producer sent to it (librdkafka `txmsgs`)."""


COMMIT_STALL_S = 30.0
"""A worker with records to read and no commit for this long is stalled, whatever its loop does
(e.g. aborting every transaction on an output the broker refuses)."""
ABORT_STREAK = 5
"""This many aborted transactions in a row, and the worker is stalled without waiting."""


def assess(
    now: float,
    last_loop: float,
    restoring_since: float | None,
    progress_since: float,
    lag: int | None,
    aborts_in_a_row: int,
    last_abort: str | None,
    waiting_for: str | None,
    stall_after_s: float,
    restore_limit_s: float = 600,
    commit_stall_s: float = COMMIT_STALL_S,
) -> tuple[str, str | None]:
    """A worker's status and, unless ok, why: restoring (rebuilding state: progress that commits
    do not show, up to `restore_limit_s`); waiting (a service its records need is unreachable:
    it cannot commit, but a restart would not help); stalled (its loop has not turned, or it
    aborts transaction after transaction, or it has input to read and has not committed for
    `commit_stall_s`). Monotonic times; `progress_since` is the last commit or the end of
    the last restore (or the start)."""
    if restoring_since is not None and now - restoring_since <= restore_limit_s:
        return "restoring", "rebuilding the state of newly assigned partitions"
    idle_loop = now - max(last_loop, restoring_since or 0)
    if idle_loop > stall_after_s:
        return "stalled", f"the loop has not turned for {idle_loop:.0f} s"
    if waiting_for is not None:
        return "waiting", f"waiting for a service the records need: {waiting_for}"
    if aborts_in_a_row >= ABORT_STREAK:
        return "stalled", f"{aborts_in_a_row} transactions aborted in a row (last: {last_abort})"
    since = now - progress_since
    if lag and since > commit_stall_s:
        why = f"no commit for {since:.0f} s with {lag} records to read"
        return "stalled", why + (f" (last abort: {last_abort})" if last_abort else "")
    return "ok", None


@dataclass
class WorkerMetrics:
    """Counters the loop updates and the health endpoint reads (GIL-atomic updates suffice)."""

    worker: str
    instance: str
    incarnation: str = field(default_factory=lambda: secrets.token_hex(8))
    """Which start of the instance this is, new with every process: how a supervisor tells a
    restart from /health, which is public and so shows no pid."""
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
    progress_since: float = field(default_factory=time.monotonic)
    """Monotonic time of the last commit, or of the end of the last restore (or the start)."""
    aborts: Counter[str] = field(default_factory=Counter)
    """Aborted transactions by reason (the broker's error name, `fenced`, `service`)."""
    aborts_in_a_row: int = 0
    last_abort: str | None = None
    consumer_lag: int | None = None
    consumer_errors: int = 0
    assigned: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    partitions: dict[tuple[str, int], PartitionStats] = field(default_factory=dict)
    commit_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def committed(self) -> None:
        self.last_commit_time = time.time()
        self.progress_since = time.monotonic()
        self.aborts_in_a_row = 0

    def aborted(self, reason: str) -> None:
        self.aborts[reason] += 1
        self.aborts_in_a_row += 1
        self.last_abort = reason

    def snapshot(self, stall_after_s: float, restore_limit_s: float = 600) -> dict[str, Any]:
        """Counters and status (`assess`): ok, restoring, waiting or stalled, with the reason."""
        status, reason = assess(
            time.monotonic(),
            self.last_loop_time,
            self.restoring_since,
            self.progress_since,
            self.consumer_lag,
            self.aborts_in_a_row,
            self.last_abort,
            self.extra.get("waiting_for"),
            stall_after_s,
            restore_limit_s,
        )
        return {
            "worker": self.worker,
            "instance": self.instance,
            "incarnation": self.incarnation,
            "status": status,
            "reason": reason,
            "uptime_s": round(time.time() - self.started_at, 1),
            "records_in": self.records_in,
            "records_out": dict(self.records_out),
            "dead_letters": self.dead_letters,
            "transactions": self.transactions,
            "aborts": dict(self.aborts),
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
        lag, active = 0, set()
        for name, topic in stats.get("topics", {}).items():
            for pid, part in topic.get("partitions", {}).items():
                if pid == "-1" or part.get("fetch_state") != "active":
                    continue
                position, end = part.get("next_offset", -1), part.get("ls_offset", -1)
                if position >= 0 and end >= 0:
                    behind = max(end - position, 0) + part.get("fetchq_cnt", 0)
                else:
                    behind = max(part.get("consumer_lag", 0), 0)
                lag += behind
                active.add((name, int(pid)))
                seen = self.partitions.setdefault((name, int(pid)), PartitionStats())
                seen.lag, seen.fetched = behind, part.get("rxmsgs", 0)
        for key in self.partitions.keys() - active:  # not fetched here (any more)
            self.partitions[key].lag = 0
        self.consumer_lag = lag

    def on_producer_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback of the worker's producer: records sent per partition."""
        for name, topic in json.loads(stats_json).get("topics", {}).items():
            for pid, part in topic.get("partitions", {}).items():
                if pid != "-1" and part.get("txmsgs", 0):
                    seen = self.partitions.setdefault((name, int(pid)), PartitionStats())
                    seen.produced = part["txmsgs"]


class _HeadLimit:
    """A request's input while its headers are read: http.client's parser reads them line by
    line, up to 100 lines of 64 KiB; past `limit` bytes in all this raises the HTTPException
    that BaseHTTPRequestHandler answers with 431."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw, self.left = raw, limit

    def readline(self, size: int = -1) -> bytes:
        line = self.raw.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise http.client.HTTPException(f"headers over {MAX_REQUEST_HEAD_BYTES} bytes")
        return line


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


NOT_SERVING = frozenset({"stalled", "waiting"})
"""The statuses /health answers 503 for: the worker cannot commit."""


class HealthServer:
    """`GET /health` (200 ok or restoring / 503 stalled or waiting, with the reason) with the
    metrics snapshot as JSON, and `GET /metrics` in Prometheus' text format, served from a
    thread on BIND_HOST [127.0.0.1]. A request whose Host header is not one of ALLOWED_HOSTS
    gets 400 (DNS rebinding)."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        port: int,
        stall_after_s: float = 30.0,
        host: str | None = None,
        trusted: TrustedHosts | None = None,
    ) -> None:
        from streaming.workers.prometheus import exposition

        outer = self
        trusted = trusted or TrustedHosts.from_env()

        class Handler(BaseHTTPRequestHandler):
            def parse_request(self) -> bool:
                """The standard parsing, the headers capped at MAX_REQUEST_HEAD_BYTES."""
                stream, limit = self.rfile, MAX_REQUEST_HEAD_BYTES - len(self.raw_requestline)
                self.rfile = _HeadLimit(stream, limit)  # type: ignore[assignment]
                try:
                    return super().parse_request()
                finally:
                    self.rfile = stream

            def do_GET(self) -> None:
                if not trusted.allows(self.headers.get("Host")):
                    self.send_error(400, "untrusted Host header")
                    return
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == "/metrics":
                    content_type, data = exposition(outer.metrics, outer.stall_after_s)
                    self._send(200, content_type, data)
                elif path in ("/health", ""):
                    body = outer.metrics.snapshot(outer.stall_after_s)
                    status = 503 if body["status"] in NOT_SERVING else 200
                    self._send(status, "application/json", json.dumps(body).encode())
                else:
                    self.send_error(404, "try /health or /metrics")

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # health polls are not worth a log line each

        self.metrics = metrics
        self.stall_after_s = stall_after_s
        self.host = host or bind_host()
        server = _IPv6HTTPServer if ":" in self.host else ThreadingHTTPServer
        self._server = server((self.host, port), Handler)
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


def health_port(spec: WorkerSpec) -> int:
    """HEALTH_PORT, else the worker's declared base port + WORKER_INSTANCE (instances are
    numbered 0..N-1; a non-numeric id, as tests use, counts as 0)."""
    s = load(LoopSettings)
    offset = int(s.worker_instance) if s.worker_instance.isdigit() else 0
    return s.health_port or spec.instance_port(offset)


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


REBUILD_HINT = (
    "rebuild the stream's state from udemy-reviews: stop the stream workers, run "
    "`reviews rebuild-stream`, start them again (docs/operations.md)"
)


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
