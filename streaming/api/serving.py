"""What every HTTP API of ours gets around its routes: `/metrics` and a trusted-host check.

- `GET /metrics`: request counts and latency histograms per route and status class
  (prometheus-fastapi-instrumentator), plus whatever the app counts itself, in Prometheus'
  text format. An API served by several processes (uvicorn workers) shares one
  PROMETHEUS_MULTIPROC_DIR, so any of them answers a scrape with the sum of all
  (`multiprocess_dir`).
- A request whose Host header is not one of ALLOWED_HOSTS gets 400 before any route runs:
  a web page that re-points its own name at 127.0.0.1 (DNS rebinding) cannot read or write
  through the browser (`streaming.config.TrustedHosts`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from streaming.config import TrustedHosts

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class TrustedHostGuard:
    """ASGI middleware: 400 for a Host header that is not trusted."""

    def __init__(self, app: ASGIApp, trusted: TrustedHosts) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.trusted.allows(
            Headers(scope=scope).get("host")
        ):
            response = PlainTextResponse("untrusted Host header (ALLOWED_HOSTS)", status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def serve_http_extras(app: FastAPI, trusted: TrustedHosts | None = None) -> CollectorRegistry:
    """Add `/metrics` and the trusted-host check to `app`; the registry is the app's own (an
    app created twice in one process, as tests do, must not register its metrics twice)."""
    registry = CollectorRegistry(auto_describe=True)
    Instrumentator(
        excluded_handlers=["/metrics"],
        should_group_status_codes=False,
        registry=registry,
    ).instrument(app).expose(app, include_in_schema=False)
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
