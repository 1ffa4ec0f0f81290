"""A local, Udemy-compatible review API: the subset of REST API 2.0 the backfill uses.

Mounted under `/api-2.0`, so `UDEMY_API_URL=http://127.0.0.1:PORT/api-2.0` stands in for
`https://www.udemy.com/api-2.0`. Behaviour follows Udemy (Django REST framework underneath):
`{count, next, previous, results}` pages with absolute `next`/`previous` URLs, page beyond the
end -> 404 "Invalid page.", `fields[course_review]` selects fields, HTTP Basic auth with the
client id and secret, and 429 with `Retry-After` when the optional rate limit is exceeded.
Over-large `page_size` is refused with 400 rather than silently capped, so a client asking for
more than it can get finds out.

Pages are built from the catalogue's columns and serialised with orjson: a benchmark pulls a
million reviews through this server next to Kafka on a 2-core machine.

Run it with `python -m streaming.source.server` (see `main` for the environment it reads).
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi_offline import FastAPIOffline

from streaming.api.serving import HTTP_PROTOCOL, serve_http_extras
from streaming.settings import SourceSettings, bind_host, client_secret, exit_on_bad_settings, load
from streaming.source.catalogue import Catalogue
from streaming.source.generator import DEFAULT_SPEC, REVIEW_FIELDS, generate

BASE_PATH = "/api-2.0"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 12
FIELDS_PARAM = "fields[course_review]"
DEFAULT_REVIEW_FIELDS: tuple[str, ...] = tuple(
    name for name in REVIEW_FIELDS if name not in ("user_modified", "course")
)
"""Fields served when the request has no `fields[course_review]` (the course is left out)."""

DEFAULT_CLIENT_SECRET = "local-secret"
# Query parameters are read from the request rather than declared: FastAPI's per-request
# parameter analysis cost a third of a page's serving time. They are documented here instead.
_PAGING_PARAMETERS = (
    {
        "name": "page",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": '1-based page number, or "last"; past the end -> 404 "Invalid page."',
    },
    {
        "name": "page_size",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        "description": f"items per page, default {DEFAULT_PAGE_SIZE}; over {MAX_PAGE_SIZE} -> 400",
    },
)
_FIELDS_PARAMETER = {
    "name": FIELDS_PARAM,
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "comma-separated course_review fields, @default or @all; default "
    + ",".join(DEFAULT_REVIEW_FIELDS),
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Basic realm="api"'}
_LAST_PAGE = "last"

log = logging.getLogger(__name__)


def parse_review_fields(raw: str | None) -> tuple[str, ...]:
    """The `course_review` fields a `fields[course_review]` value asks for, in output order.

    `_class` and `id` are always served; `@default` and `@all` expand to those lists; unknown
    names are ignored rather than refused, so a client asking for more than this server knows
    (Udemy has many more review fields) still gets what there is.
    """
    if raw is None:
        return DEFAULT_REVIEW_FIELDS
    wanted = {"_class", "id"}
    for name in (part.strip() for part in raw.split(",")):
        if name == "@all":
            wanted.update(REVIEW_FIELDS)
        elif name == "@default":
            wanted.update(DEFAULT_REVIEW_FIELDS)
        else:
            wanted.add(name)
    return tuple(field for field in REVIEW_FIELDS if field in wanted)


class TokenBucket:
    """`rate` requests a second on average, bursts of up to `burst`; thread-safe."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, reason, _WWW_AUTHENTICATE)


def basic_credentials(header: str | None) -> tuple[bytes, bytes]:
    """(user, password) of an `Authorization: Basic` header value, as bytes (compared as such:
    whatever the client's encoding); 401 with DRF's reasons for anything else, since a client
    may send any bytes (a header value arrives as latin-1 text) and that is its error, not ours."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        raise _unauthorized("Authentication credentials were not provided.")
    if not token.strip():
        raise _unauthorized("Invalid basic header. No credentials provided.")
    try:  # ValueError: not base64, or not ASCII at all (binascii.Error is one)
        user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
    except ValueError:
        raise _unauthorized(
            "Invalid basic header. Credentials not correctly base64 encoded."
        ) from None
    if not sep:
        raise _unauthorized("Invalid basic header. Credentials must be user:password.")
    return user, password


def _basic_auth(client_id: str, client_secret: str) -> Callable[[Request], Awaitable[None]]:
    """The auth dependency; async (like all handlers here) so FastAPI runs it on the event loop
    instead of hopping to its thread pool."""
    expected = (client_id.encode(), client_secret.encode())

    async def authenticate(request: Request) -> None:
        user, password = basic_credentials(request.headers.get("authorization"))
        valid = secrets.compare_digest(user, expected[0])
        valid &= secrets.compare_digest(password, expected[1])
        if not valid:
            raise _unauthorized("Invalid username/password.")

    return authenticate


def _throttle(bucket: TokenBucket) -> Callable[[], Awaitable[None]]:
    async def throttle() -> None:
        wait = bucket.acquire()
        if wait:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(
                429,
                f"Request was throttled. Expected available in {seconds} seconds.",
                {"Retry-After": str(seconds)},
            )

    return throttle


def _page_number(raw: str | None, count: int, page_size: int) -> int:
    """The 1-based page asked for; 404 "Invalid page." like DRF when it does not exist.

    Page 1 of an empty list exists (an empty page), as in Django's paginator.
    """
    pages = max(1, math.ceil(count / page_size))
    if raw is None:
        return 1
    if raw == _LAST_PAGE:
        return pages
    try:
        page = int(raw)
    except ValueError:
        page = 0
    if not 1 <= page <= pages:
        raise HTTPException(404, "Invalid page.")
    return page


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise HTTPException(400, f"page_size must be an integer, got {raw!r}.") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise HTTPException(400, f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {size}.")
    return size


def _envelope(request: Request, count: int, page: int, page_size: int, results: list) -> Response:
    """A DRF page. Absolute next/previous URLs keep the request's other query parameters; they
    are spliced as strings because rebuilding URL objects cost more than the page itself."""
    url = request.url
    others = urlencode([item for item in request.query_params.multi_items() if item[0] != "page"])
    base = f"{url.scheme}://{url.netloc}{url.path}?{others}{'&' if others else ''}"
    next_url = f"{base}page={page + 1}" if page * page_size < count else None
    if page == 1:
        previous_url = None
    elif page == 2:
        previous_url = base.rstrip("?&")
    else:
        previous_url = f"{base}page={page - 1}"
    body = {"count": count, "next": next_url, "previous": previous_url, "results": results}
    return Response(orjson.dumps(body), media_type="application/json")


def create_app(
    catalogue: Catalogue,
    *,
    client_id: str,
    client_secret: str,
    rate_limit_per_s: float | None = None,
    rate_limit_burst: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The review API over `catalogue`.

    `rate_limit_per_s` (None = unlimited) and `rate_limit_burst` (default: one second's worth,
    at least 1) configure a token bucket shared by all API calls; `clock` is injectable so
    tests control refills.
    """
    guards: list[Any] = [Depends(_basic_auth(client_id, client_secret))]
    if rate_limit_per_s is not None:
        burst = rate_limit_burst if rate_limit_burst is not None else max(1.0, rate_limit_per_s)
        guards.append(Depends(_throttle(TokenBucket(rate_limit_per_s, burst, clock))))
    app = FastAPIOffline(  # Swagger UI and ReDoc from the package, not a CDN
        title="Local Udemy-compatible review API",
        description=__doc__,
        docs_url=f"{BASE_PATH}/docs",
        openapi_url=f"{BASE_PATH}/openapi.json",
    )
    api = APIRouter(prefix=BASE_PATH, dependencies=guards)

    @app.get(f"{BASE_PATH}/health")
    async def health() -> dict[str, Any]:
        """Readiness: no authentication, no rate limit."""
        return {
            "status": "ok",
            "courses": len(catalogue.courses),
            "reviews": catalogue.total_reviews,
        }

    @api.get("/courses/", openapi_extra={"parameters": list(_PAGING_PARAMETERS)})
    async def courses(request: Request) -> Response:
        """The courses of the catalogue, paged."""
        query = request.query_params
        size = _page_size(query.get("page_size"))
        count = len(catalogue.courses)
        number = _page_number(query.get("page"), count, size)
        offset = (number - 1) * size
        results = [course.to_json() for course in catalogue.courses[offset : offset + size]]
        return _envelope(request, count, number, size, results)

    @api.get(
        "/courses/{course_id}/reviews/",
        openapi_extra={"parameters": [*_PAGING_PARAMETERS, _FIELDS_PARAMETER]},
    )
    async def reviews(request: Request, course_id: str) -> Response:
        """A course's reviews, newest first (created desc, id desc)."""
        query = request.query_params
        size = _page_size(query.get("page_size"))
        selected = parse_review_fields(query.get(FIELDS_PARAM))
        known = course_id.isdecimal() and catalogue.course(int(course_id)) is not None
        if not known:
            raise HTTPException(404, "Not found.")
        count = catalogue.review_count(int(course_id))
        number = _page_number(query.get("page"), count, size)
        count, results = catalogue.page(int(course_id), (number - 1) * size, size, selected)
        return _envelope(request, count, number, size, results)

    app.include_router(api)
    serve_http_extras(app)
    return app


def main() -> None:
    """Serve the sample on BIND_HOST [127.0.0.1] (`python -m streaming.source.server`), with
    Prometheus' `/metrics` and the trusted-host check (`streaming.api.serving`).

    Environment: UDEMY_API_PORT (8010), UDEMY_CLIENT_ID / UDEMY_CLIENT_SECRET or
    UDEMY_CLIENT_SECRET_FILE ("local-client" /
    "local-secret"), SAMPLE_SEED and SAMPLE_SIZE (reviews; default: the bundled sample),
    UDEMY_RATE_LIMIT (requests a second; default unlimited).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with exit_on_bad_settings("source-api"):  # one line and exit 2, not a traceback
        source, secret = load(SourceSettings), client_secret()
    spec = replace(
        DEFAULT_SPEC,
        seed=DEFAULT_SPEC.seed if source.sample_seed is None else source.sample_seed,
        reviews=DEFAULT_SPEC.reviews if source.sample_size is None else source.sample_size,
    )
    port = source.api_port
    started = time.perf_counter()
    catalogue = Catalogue(generate(spec))
    log.info(
        "generated %d reviews of %d courses (seed %d) in %.1f s; serving http://%s:%d%s",
        catalogue.total_reviews,
        len(catalogue.courses),
        spec.seed,
        time.perf_counter() - started,
        bind_host(),
        port,
        BASE_PATH,
    )
    app = create_app(
        catalogue,
        client_id=source.client_id,
        client_secret=secret,
        rate_limit_per_s=source.rate_limit,
    )
    # No access log: one line per page would cost more than serving it in a backfill.
    uvicorn.run(
        app, host=bind_host(), port=port, access_log=False, log_level="info", http=HTTP_PROTOCOL
    )


if __name__ == "__main__":
    main()
