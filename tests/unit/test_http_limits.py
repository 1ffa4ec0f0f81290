"""Every HTTP server of ours refuses an over-large request head, for real: each is started
in-process on an ephemeral loopback port (a pre-bound listening socket, so a request waits in
its backlog instead of racing the start) and sent raw requests over a socket."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress

import pytest
import uvicorn
from fastapi import FastAPI

from streaming.api import app as pipeline_api
from streaming.api import ingest
from streaming.api.serving import HTTP_PROTOCOL
from streaming.settings import MAX_REQUEST_HEAD_BYTES
from streaming.source import server as source_api
from streaming.source.catalogue import Catalogue
from streaming.source.generator import SampleSpec, generate
from streaming.workers.health import HealthServer
from streaming.workers.metrics import WorkerMetrics

Server = Callable[[], AbstractContextManager[tuple[int, str]]]


@contextmanager
def uvicorn_serving(app: FastAPI) -> Iterator[int]:
    """`app` under uvicorn as `reviews api` and `reviews source-api` run it; its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(app, http=HTTP_PROTOCOL, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def pipeline_api_server() -> Iterator[tuple[int, str]]:
    app = pipeline_api.create_app(writer_token="a-writer-token-of-32-characters!")
    app.state.kafka = ingest.KafkaLink()  # what the lifespan (Kafka) would set
    with uvicorn_serving(app) as port:
        yield port, "/docs"


@contextmanager
def source_api_server() -> Iterator[tuple[int, str]]:
    catalogue = Catalogue(generate(SampleSpec(courses=2, reviews=10)))
    app = source_api.create_app(catalogue, client_id="client", client_secret="secret")
    with uvicorn_serving(app) as port:
        yield port, f"{source_api.BASE_PATH}/health"


@contextmanager
def worker_health_server() -> Iterator[tuple[int, str]]:
    health = HealthServer(WorkerMetrics("worker", "0"), 0, host="127.0.0.1").start()
    try:
        yield health.port, "/health"
    finally:
        health.stop()


SERVERS = [pipeline_api_server, source_api_server, worker_health_server]


def status(port: int, path: str, headers: bytes) -> int:
    """The status a GET of `path` with `headers` is answered with (a refusal may come while
    the request is still being sent: the server stops reading)."""
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        with suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(request + headers + b"\r\n")
        answer = conn.makefile("rb").readline()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert match, answer
    return int(match[1])


def header(name: str, size: int) -> bytes:
    return f"{name}: ".encode() + b"a" * size + b"\r\n"


@pytest.mark.parametrize("server", SERVERS)
def test_a_request_head_over_the_limit_is_refused_with_431(server: Server) -> None:
    with server() as (port, path):
        assert status(port, path, header("X-Small", 1_000)) == 200
        assert status(port, path, header("X-Big", MAX_REQUEST_HEAD_BYTES)) == 431
        many = b"".join(header(f"X-{i}", 900) for i in range(MAX_REQUEST_HEAD_BYTES // 900 + 5))
        assert status(port, path, many) == 431
        assert status(port, path, header("X-Huge", 8 * 2**20)) == 431  # not held whole
        assert status(port, path, header("X-Small", 1_000)) == 200  # and still serving
