"""Client for the Udemy REST API 2.0 review endpoints (the real one or the local server).

A course walk fetches `GET /courses/{id}/reviews/?page=N` from page 1 until `next` is null or a
page is empty; it never trusts `count` for termination, which is how the original Java client
looped forever when the count was an exact multiple of the page size. Pages are addressed by
number (the absolute `next` URL only says whether more exist), so up to `concurrency` pages are
fetched ahead on a thread pool over one pooled `httpx.Client`.

Pages are newest first, so reviews created during a walk push older ones onto later pages. The
walk drops repeats by (id, modified); a page fetched ahead whose `count` shows that reviews
arrived after the page before it was fetched is fetched again, so nothing slips between pages;
and when the main pass ends, one catch-up pass from page 1 collects the reviews created since
the walk began (it stops at the review that was newest then). Edits of reviews the walk has
passed, and reviews back-dated into pages already walked, are not seen: the next walk (or
`POST /reviews`) carries them.

Requests are retried with exponential backoff and jitter on transport errors and 5xx, wait as
long as `Retry-After` says on 429, and raise `SourceError` for other 4xx. A `Checkpoint` keeps a
small JSON file per course so an interrupted backfill resumes at the page where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from streaming.core.review_mapping import ReviewMappingError, parse_timestamp
from streaming.settings import SourceSettings, client_secret, load

REVIEW_FIELDS_PARAM = "fields[course_review]"
DEFAULT_REVIEW_FIELDS = "title,content,rating,created,modified,user_modified,user,course"
"""The fields a backfill needs, as the design asks for them (`_class` and `id` always come)."""
MAX_PAGE_SIZE = 100

Review = dict[str, Any]

_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport failures worth retrying (a wrong URL scheme or proxy setting is not one)."""


class SourceError(Exception):
    """A request to the review source failed for good: a non-retryable answer (4xx other than
    429), retries used up, or a body that is not the JSON expected."""

    def __init__(self, url: str, status: int | None, detail: str) -> None:
        where = f"HTTP {status} from {url}" if status is not None else url
        super().__init__(f"{where}: {detail}")
        self.url = url
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays double from `backoff_s` up to `max_backoff_s`, each drawn
    uniformly from its upper half (jitter, so parallel fetches do not retry in lockstep)."""

    attempts: int = 6
    """Tries per request on transport errors and 5xx (so attempts - 1 retries)."""
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    rate_limited_attempts: int = 60
    """429 answers tolerated per request; each waits `Retry-After` (or the backoff)."""
    max_retry_after_s: float = 600.0
    """Cap on one `Retry-After` wait, so a wrong header cannot stall a backfill for a day."""


@dataclass(frozen=True)
class WalkState:
    """Where a course walk stands; what a `Checkpoint` stores.

    `next_page` is the first page not yet handed over; `head` is the (created ms, id) of the
    newest review when the walk began, where the catch-up pass stops.
    """

    course_id: int
    page_size: int
    next_page: int = 1
    head: tuple[int, int] | None = None
    reviews: int = 0
    complete: bool = False


@dataclass(frozen=True)
class ReviewPage:
    """One fetched page. `results` holds only the reviews this walk had not seen yet;
    `state` is the walk's position once this page is processed (save it after processing)."""

    course_id: int
    page: int
    count: int
    has_next: bool
    results: list[Review]
    state: WalkState = field(repr=False)


class Checkpoint:
    """Per-course walk progress in `directory/course-<id>.json`, written atomically.

    The file records the page size, pages done and the page to resume at, so a restarted
    backfill refetches at most the page it was on. A resumed walk hands some reviews over again
    (pages shift as reviews arrive, and its catch-up pass has not seen the first pages);
    downstream counts a review once at its current version, so repeats are harmless.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, course_id: int) -> Path:
        return self.directory / f"course-{course_id}.json"

    def load(self, course_id: int, page_size: int) -> WalkState:
        """The state to continue from: a fresh walk when there is no file or the last walk
        completed; the resume page is recomputed when the page size changed."""
        path = self.path(course_id)
        if not path.exists():
            return WalkState(course_id, page_size)
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["complete"]:
            return WalkState(course_id, page_size)
        done_items = (saved["next_page"] - 1) * saved["page_size"]
        head = saved["head"]
        return WalkState(
            course_id,
            page_size,
            next_page=done_items // page_size + 1,
            head=(head[0], head[1]) if head else None,
            reviews=saved["reviews"],
        )

    def save(self, state: WalkState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = asdict(state) | {"pages_done": state.next_page - 1}
        path = self.path(state.course_id)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(temporary, path)


def _sort_key(item: Mapping[str, Any]) -> tuple[int, int] | None:
    """(created ms, id): the API's newest-first order; None for an item too broken to place."""
    try:
        return parse_timestamp(item.get("created"), "created"), int(item["id"])
    except (ReviewMappingError, KeyError, TypeError, ValueError):
        return None


class UdemyClient:
    """Review-source client: one connection pool, safe to share between threads.

    `sleep`, `rng` and `wall_clock` are injectable so tests run retries without waiting.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        page_size: int = MAX_PAGE_SIZE,
        fields: str = DEFAULT_REVIEW_FIELDS,
        timeout_s: float = 30.0,
        max_connections: int = 8,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.fields = fields
        self.retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._http = httpx.Client(
            auth=(client_id, client_secret),
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"Accept": "application/json"},
            follow_redirects=True,
            transport=transport,
        )

    @classmethod
    def from_env(cls, **options: Any) -> UdemyClient:
        """From UDEMY_API_URL, UDEMY_CLIENT_ID and the secret (`settings.client_secret`)."""
        source = load(SourceSettings)
        return cls(
            source.api_url,
            source.client_id,
            client_secret(),
            **options,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> UdemyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_json(self, url: str, params: Mapping[str, str | int] | None = None) -> Any:
        """GET a JSON document, retrying per `self.retry`; SourceError when it cannot."""
        request = self._http.build_request("GET", url, params=params)
        failures = throttled = 0
        while True:
            try:
                response = self._http.send(request)
            except _RETRYABLE_ERRORS as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    detail = f"{type(exc).__name__}: {exc} (after {failures} attempts)"
                    raise SourceError(str(request.url), None, detail) from exc
                self._sleep(self._backoff(failures))
                continue
            status = response.status_code
            if status < 300:
                try:
                    return orjson.loads(response.content)
                except orjson.JSONDecodeError as exc:
                    raise SourceError(str(request.url), status, f"invalid JSON: {exc}") from exc
            if status == 429:
                throttled += 1
                if throttled > self.retry.rate_limited_attempts:
                    raise SourceError(str(request.url), status, _detail(response))
                wait = self._retry_after(response)
                self._sleep(self._backoff(throttled) if wait is None else wait)
                continue
            if status >= 500:
                failures += 1
                if failures >= self.retry.attempts:
                    detail = f"{_detail(response)} (after {failures} attempts)"
                    raise SourceError(str(request.url), status, detail)
                wait = self._retry_after(response)
                self._sleep(self._backoff(failures) if wait is None else wait)
                continue
            raise SourceError(str(request.url), status, _detail(response))

    def reviews_url(self, course_id: int) -> str:
        return f"{self.base_url}/courses/{course_id}/reviews/"

    def fetch_page(self, course_id: int, page: int, *, page_size: int | None = None) -> ReviewPage:
        """One page of a course's reviews, as served (no de-duplication)."""
        size = page_size or self.page_size
        params: dict[str, str | int] = {
            "page": page,
            "page_size": size,
            REVIEW_FIELDS_PARAM: self.fields,
        }
        body = self.get_json(self.reviews_url(course_id), params)
        try:
            count, results, has_next = int(body["count"]), list(body["results"]), bool(body["next"])
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"not a {{count, next, previous, results}} page: {exc!r}"
            raise SourceError(self.reviews_url(course_id), 200, detail) from exc
        state = WalkState(course_id, size, next_page=page + 1)
        return ReviewPage(course_id, page, count, has_next, results, state)

    def iter_courses(self, *, page_size: int = MAX_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Every course the source lists (`GET /courses/`), page by page."""
        page = 1
        while True:
            body = self.get_json(
                f"{self.base_url}/courses/", {"page": page, "page_size": page_size}
            )
            yield from body["results"]
            if not body["next"] or not body["results"]:
                return
            page += 1

    def iter_pages(
        self, course_id: int, *, state: WalkState | None = None, concurrency: int = 1
    ) -> Iterator[ReviewPage]:
        """Walk a course from `state` (default: page 1), yielding pages of unseen reviews.

        Up to `concurrency` pages are in flight while the caller processes the current one.
        After the main pass, catch-up pages (numbered from 1 again, `state` unchanged) bring
        the reviews created during the walk (and new versions of reviews near the top): the
        walk returns every review that existed when it began or was created before its
        catch-up pass began. One pass, so a course that never stops receiving reviews still
        ends its walk.
        """
        state = state or WalkState(course_id, self.page_size)
        seen: set[tuple[Any, Any]] = set()

        def fresh(results: list[Review]) -> list[Review]:
            out = []
            for item in results:
                key = (item.get("id"), item.get("modified"))
                if key not in seen:
                    seen.add(key)
                    out.append(item)
            return out

        for page in self._main_pass(course_id, state, concurrency):
            if state.head is None and page.page == 1 and page.results:
                state = replace(state, head=_sort_key(page.results[0]))
            results = fresh(page.results)
            state = replace(state, next_page=page.page + 1, reviews=state.reviews + len(results))
            yield replace(page, results=results, state=state)
        if state.head is not None:
            for page in self._catch_up_pass(course_id, state.page_size, state.head):
                results = fresh(page.results)
                state = replace(state, reviews=state.reviews + len(results))
                yield replace(page, results=results, state=state)

    def _main_pass(
        self, course_id: int, state: WalkState, concurrency: int
    ) -> Iterator[ReviewPage]:
        """Pages from `state.next_page` in order until `next` is null or a page is empty.

        The following pages (up to `concurrency`, within the page count last reported, or one
        past it when `next` says there is more) are requested before a page is yielded, so they
        download while the caller works. A page fetched ahead reports a smaller `count` than
        the page before it when reviews arrived in between; its window then missed the reviews
        pushed across the boundary, so it is fetched again. A 404 past page 1 means the list
        shrank under the walk (or a resumed walk is past the end): the walk is over.
        """
        width = max(1, concurrency)
        size = state.page_size
        pending: deque[tuple[int, Future[ReviewPage]]] = deque()
        with ThreadPoolExecutor(width, thread_name_prefix="udemy-page") as pool:

            def submit(number: int) -> None:
                pending.append(
                    (number, pool.submit(self.fetch_page, course_id, number, page_size=size))
                )

            submit(state.next_page)
            last_known = submitted = state.next_page
            previous_count = 0
            try:
                while pending:
                    number, future = pending.popleft()
                    try:
                        page = future.result()
                        if page.count < previous_count:
                            page = self.fetch_page(course_id, number, page_size=size)
                    except SourceError as exc:
                        if exc.status == 404 and number > 1:
                            return
                        raise
                    previous_count = page.count
                    done = not page.has_next or not page.results
                    if not done:
                        last_known = max(last_known, -(-page.count // size))
                        while len(pending) < width and (submitted < last_known or not pending):
                            submitted += 1
                            submit(submitted)
                    yield page
                    if done:
                        return
            finally:
                for _, future in pending:
                    future.cancel()

    def _catch_up_pass(
        self, course_id: int, page_size: int, head: tuple[int, int]
    ) -> Iterator[ReviewPage]:
        """Pages from 1 until one reaches a review at or before `head` (or the list ends)."""
        number = 1
        while True:
            page = self.fetch_page(course_id, number, page_size=page_size)
            if not page.results:
                return
            yield page
            reached = any((_sort_key(item) or head) <= head for item in page.results)
            if reached or not page.has_next:
                return
            number += 1

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _retry_after(self, response: httpx.Response) -> float | None:
        """Seconds a `Retry-After` header asks for (delay-seconds or HTTP-date), capped."""
        value = response.headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - self._wall_clock()
            except (TypeError, ValueError):
                return None
        return min(max(seconds, 0.0), self.retry.max_retry_after_s)


def _detail(response: httpx.Response) -> str:
    """The error a response carries: DRF's {"detail": ...} when present, else the body start."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return response.text[:300]
