"""What every HTTP API of ours gets around its routes: `/metrics` and a trusted-host check.

- `GET /metrics`: request counts and latency histograms per route and status class
  (prometheus-fastapi-instrumentator), plus whatever the app counts itself, in Prometheus'
  text format. An API served by several processes (uvicorn workers) shares one
  PROMETHEUS_MULTIPROC_DIR, so any of them answers a scrape with the sum of all
  (`multiprocess_dir`).
- A request whose Host header is not one of ALLOWED_HOSTS gets 400 before any route runs:
  a web page that re-points its own name at 127.0.0.1 (DNS rebinding) cannot read or write
  through the browser (`streaming.settings.TrustedHosts`).
- An HTML page (the docs: Swagger UI and ReDoc, whose assets `fastapi_offline` serves from
  the installed package, never a CDN: the page where a writer pastes the token runs no script
  from elsewhere) carries a Content-Security-Policy that allows this origin only (`DocsPolicy`).
- A request whose head (request line and headers) is over MAX_REQUEST_HEAD_BYTES gets 431 and
  the connection closed, from uvicorn's protocol (`HTTP_PROTOCOL`): uvicorn with httptools
  caps nothing by itself, so an 8 MB header reached the app whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streaming.settings import MAX_REQUEST_HEAD_BYTES, TrustedHosts

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HTTP_PROTOCOL = "streaming.api.serving:BoundedHeadProtocol"
"""uvicorn's `http` for our APIs (a name, so uvicorn's worker processes import it)."""
_HEAD_TOO_LARGE = f"request line and headers over {MAX_REQUEST_HEAD_BYTES} bytes".encode()


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over MAX_REQUEST_HEAD_BYTES with
    431. Two counts: the parsed head (URL and headers as httptools hands them over), exact;
    and the raw bytes received while a head is incomplete, checked before the next chunk is
    fed, so that a header still arriving is cut off at one read past the limit instead of
    being buffered by httptools until it ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw_head = 0
        self._parsed_head = 0
        self._in_head = True

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._raw_head > MAX_REQUEST_HEAD_BYTES:
                self._refuse()
                return
            self._raw_head += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._raw_head = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        super().on_message_complete()

    def _count(self, size: int) -> None:
        """Raising in a parser callback makes uvicorn answer 400 (`send_400_response`)."""
        self._parsed_head += size
        if self._parsed_head > MAX_REQUEST_HEAD_BYTES:
            raise ValueError(_HEAD_TOO_LARGE.decode())

    def send_400_response(self, msg: str) -> None:
        if self._parsed_head > MAX_REQUEST_HEAD_BYTES:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (len(_HEAD_TOO_LARGE), _HEAD_TOO_LARGE)
        )
        self.transport.close()


DOCS_POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)
"""What the docs pages may load: this origin's assets and the pages' own inline set-up."""


class DocsPolicy:
    """ASGI middleware: DOCS_POLICY on every HTML answer (the APIs' others are JSON or text)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = Headers(raw=message["headers"])
                if headers.get("content-type", "").startswith("text/html"):
                    message["headers"] = [
                        *message["headers"],
                        (b"content-security-policy", DOCS_POLICY),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_policy)


class TrustedHostGuard:
    """ASGI middleware: 400 for a Host header that is not trusted (or empty), with its reason
    as every refusal of ours gives it (`{"detail": ...}`)."""

    def __init__(self, app: ASGIApp, trusted: TrustedHosts) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.trusted.allows(
            Headers(scope=scope).get("host")
        ):
            response = JSONResponse(
                {"detail": "untrusted Host header (ALLOWED_HOSTS)"}, status_code=400
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def serve_http_extras(app: FastAPI, trusted: TrustedHosts | None = None) -> CollectorRegistry:
    """Add `/metrics`, the trusted-host check and the docs' policy to `app`; the registry is
    the app's own (an app created twice in one process, as tests do, must not register its
    metrics twice)."""
    registry = CollectorRegistry(auto_describe=True)
    Instrumentator(
        excluded_handlers=["/metrics"],
        should_group_status_codes=False,
        registry=registry,
    ).instrument(app).expose(app, include_in_schema=False)
    app.add_middleware(DocsPolicy)
    app.add_middleware(TrustedHostGuard, trusted=trusted or TrustedHosts.from_env())
    return registry


def multiprocess_dir(name: str) -> Path:
    """A fresh PROMETHEUS_MULTIPROC_DIR for an API about to start several processes (set in the
    environment they inherit); an existing setting is kept, emptied of a previous run's files,
    which would otherwise be added to this run's counts."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, mode=0o700)
    else:
        path = tempfile.mkdtemp(prefix=f"{name}-metrics-")
        os.environ[MULTIPROC_ENV] = path
    return Path(path)
