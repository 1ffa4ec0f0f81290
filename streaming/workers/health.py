"""A stream worker's health endpoint: `GET /health` (JSON) and `GET /metrics` (Prometheus).

A supervisor (Dagster's sensors here, Kubernetes probes elsewhere) reads `GET /health` for
liveness and progress: records in/out per topic, dead letters, consumer lag, last commit time.
It answers 503 when the worker cannot commit (its loop has not turned for `stall_after_s`, it
aborts transaction after transaction, it has input and no commit for 30 s, or it waits for a
service: `streaming.workers.metrics.assess`), so a wedged worker shows as unhealthy even though
its process is alive. `GET /metrics` on the same port serves the same counters, per topic and
partition, in Prometheus' format (`streaming.workers.prometheus`). Dependencies point one way:
metrics <- prometheus <- health.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Any

from streaming.settings import MAX_REQUEST_HEAD_BYTES, TrustedHosts, bind_host
from streaming.workers.metrics import WorkerMetrics
from streaming.workers.prometheus import exposition

NOT_SERVING = frozenset({"stalled", "waiting"})
"""The statuses /health answers 503 for: the worker cannot commit."""


class _HeadLimit:
    """A request's input while its headers are read: http.client's parser reads them line by
    line, up to 100 lines of 64 KiB; past `limit` bytes in all this raises the HTTPException
    that BaseHTTPRequestHandler answers with 431."""

    def __init__(self, raw: BufferedIOBase, limit: int) -> None:
        self.raw, self.left = raw, limit

    def readline(self, size: int = -1) -> bytes:
        line = self.raw.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise http.client.HTTPException(f"headers over {MAX_REQUEST_HEAD_BYTES} bytes")
        return line


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


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
        self.metrics = metrics
        self.stall_after_s = stall_after_s
        self.host = host or bind_host()
        handler = _handler(self, trusted or TrustedHosts.from_env())
        server = _IPv6HTTPServer if ":" in self.host else ThreadingHTTPServer
        self._server = server((self.host, port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(outer: HealthServer, trusted: TrustedHosts) -> type[BaseHTTPRequestHandler]:
    """The request handler of `outer` (read at request time: a test may change its limits)."""

    class Handler(BaseHTTPRequestHandler):
        raw_requestline: bytes  # set by handle_one_request (typeshed does not declare it)

        def parse_request(self) -> bool:
            """The standard parsing, the headers capped at MAX_REQUEST_HEAD_BYTES."""
            stream, limit = self.rfile, MAX_REQUEST_HEAD_BYTES - len(self.raw_requestline)
            self.rfile = _HeadLimit(stream, limit)  # type: ignore[assignment]  # only .readline()
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

    return Handler
