"""The pipeline's HTTP API (FastAPI): ingestion and statistics; OpenAPI at /docs.

Run: `reviews api` (or `python -m streaming.api.app`); PIPELINE_API_PORT [8000],
PIPELINE_API_WORKERS [2], PIPELINE_API_TOKEN_FILE (required: the writer token of POST /reviews,
`streaming.api.auth`), BIND_HOST [127.0.0.1], ALLOWED_HOSTS, plus the Kafka and registry
settings of streaming.settings (DATABASE_URL for the read side).

`GET /health` is 200 `ok` only while the producer can write (a broker connection up, no fatal
error), else 503 with the reason (ours, never the broker's text or the pid: it is public);
`GET /metrics` is Prometheus' (`streaming.api.serving`).
"""

from __future__ import annotations

import atexit
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from streaming.api import auth, ingest, read
from streaming.api.serving import HTTP_PROTOCOL, multiprocess_dir, serve_http_extras
from streaming.ingest.producer import REVIEWS_TOPIC, ReviewProducer
from streaming.settings import Settings, bind_host, exit_on_bad_settings, registry_client_config


def create_app(
    settings: Settings | None = None,
    *,
    ack_timeout_s: float | None = None,
    topic: str = REVIEWS_TOPIC,
    writer_token: str | None = None,
) -> FastAPI:
    """The API; `topic` re-points ingestion (tests fuzz it against a temporary topic).
    `writer_token` None: read at start-up from PIPELINE_API_TOKEN_FILE, which must be set."""
    settings = settings or Settings.from_env()
    timeout_s = ack_timeout_s or ingest.ACK_TIMEOUT_S

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.writer_token = writer_token or auth.server_token()  # refuses to start without
        link = app.state.kafka = ingest.KafkaLink()
        # a short delivery timeout: a POST while Kafka is down answers 503, not after minutes
        producer = ReviewProducer(
            settings,
            topic,
            **{"linger.ms": 1, "message.timeout.ms": int(timeout_s * 1000)},
            **link.producer_config(),
        )
        app.state.producer = ingest.AckingProducer(producer, timeout_s)
        yield
        app.state.producer.close()
        del app.state.producer  # the last reference: librdkafka's client goes with it

    app = FastAPIOffline(  # Swagger UI and ReDoc from the package, not a CDN
        title="Course reviews pipeline API",
        version="1",
        description="Ingest reviews into Kafka and read the per-course rating statistics.",
        lifespan=lifespan,
    )
    app.include_router(ingest.router)
    app.include_router(read.router)

    serve_http_extras(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        problem = app.state.kafka.problem()
        if problem is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "degraded", "kafka": problem}, 503)

    return app


def main() -> None:
    """Serve on 127.0.0.1:PIPELINE_API_PORT with PIPELINE_API_WORKERS processes [2]: one
    process tops out at a few hundred acknowledged POSTs a second (the JSON, the validation
    and the delivery wait are Python), so ingestion scales out by processes."""
    # in this process, so a bad setting is one clear line, not a traceback per worker
    with exit_on_bad_settings("pipeline-api"):
        settings = Settings.from_env()
        registry_client_config(settings.schema_registry_url)
    port, workers = settings.api.port, settings.api.workers
    metrics_dir = multiprocess_dir("pipeline-api")  # before the workers start: they inherit it
    atexit.register(shutil.rmtree, metrics_dir, True)
    uvicorn.run(
        "streaming.api.app:create_app",
        factory=True,
        host=bind_host(),
        port=port,
        workers=workers,
        access_log=False,
        http=HTTP_PROTOCOL,
    )


if __name__ == "__main__":
    main()
