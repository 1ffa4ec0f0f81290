"""The review-source client: walks, retries and checkpoints, against the real app (in process)
or scripted answers. Sleeps are recorded, never slept."""

import base64
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from streaming.source.catalogue import Catalogue
from streaming.source.client import (
    DEFAULT_REVIEW_FIELDS,
    Checkpoint,
    RetryPolicy,
    Review,
    SourceError,
    UdemyClient,
    WalkState,
)
from streaming.source.generator import Course, SampleSpec, generate
from streaming.source.server import create_app


def iter_reviews(
    source: UdemyClient,
    course_id: int,
    *,
    concurrency: int = 1,
    checkpoint: Checkpoint | None = None,
) -> Iterator[Review]:
    """Every review of a course once (`iter_pages`' results); with `checkpoint`, resumes an
    unfinished walk and records progress after each page has been handed over in full."""
    state = checkpoint.load(course_id, source.page_size) if checkpoint else None
    for page in source.iter_pages(course_id, state=state, concurrency=concurrency):
        yield from page.results
        state = page.state
        if checkpoint:
            checkpoint.save(state)
    if checkpoint is not None and state is not None:
        checkpoint.save(replace(state, complete=True))


NOW = datetime(2026, 5, 1, tzinfo=UTC)
AUTH = ("client", "secret")
BASE_URL = "http://localhost/api-2.0"

LOCAL = "http://localhost"  # a trusted Host (ALLOWED_HOSTS); TestClient's own is not


class AppTransport(httpx.BaseTransport):
    """Passes requests to the FastAPI app; `after(n)` runs once the n-th answer is ready,
    which is where tests add reviews "while the walk runs"."""

    def __init__(self, catalogue: Catalogue, after: Callable[[int], None] | None = None) -> None:
        self.catalogue = catalogue
        self._api = TestClient(
            create_app(catalogue, client_id=AUTH[0], client_secret=AUTH[1]), base_url=LOCAL
        )
        self._after = after
        self.pages: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._api.request(request.method, str(request.url), headers=request.headers)
        self.pages.append(int(request.url.params.get("page", "1")))
        if self._after is not None:
            self._after(len(self.pages))
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


class Script(httpx.MockTransport):
    """Answers requests in order from a list; records the requests."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer


def page_body(results: list[dict], next_url: str | None, count: int = 1) -> httpx.Response:
    return httpx.Response(
        200, json={"count": count, "next": next_url, "previous": None, "results": results}
    )


def client(transport: httpx.BaseTransport, sleeps: list[float] | None = None, **options: Any):
    return UdemyClient(
        BASE_URL,
        *AUTH,
        transport=transport,
        sleep=(sleeps if sleeps is not None else []).append,
        **options,
    )


def catalogue_of(reviews: int, courses: int = 1) -> Catalogue:
    return Catalogue(generate(SampleSpec(courses=courses, reviews=reviews), now=NOW))


def all_ids(catalogue: Catalogue, course: Course) -> list[int]:
    count = catalogue.review_count(course.id)
    return [item["id"] for item in catalogue.page(course.id, 0, count, ("id",))[1]]


_new_ids = itertools.count(90_000_000)


def add_new_review(catalogue: Catalogue, course: Course) -> int:
    review_id = next(_new_ids)
    created = (NOW + timedelta(seconds=review_id - 90_000_000)).strftime("%Y-%m-%dT%H:%M:%SZ")
    catalogue.add_review(
        {
            "id": review_id,
            "title": "",
            "content": "",
            "rating": 4.5,
            "created": created,
            "modified": created,
            "user": {"title": "Ana Silva", "name": "Ana", "display_name": "Ana Silva"},
            "course": course.to_json(),
        }
    )
    return review_id


def test_exact_multiple_of_page_size_ends() -> None:
    catalogue = catalogue_of(40)
    course = catalogue.courses[0]
    transport = AppTransport(catalogue)
    ids = [item["id"] for item in iter_reviews(client(transport, page_size=10), course.id)]
    assert ids == all_ids(catalogue, course)
    assert transport.pages == [1, 2, 3, 4, 1]  # main pass, then one catch-up page


def test_stops_on_an_empty_page_even_if_next_is_set() -> None:
    item = {"id": 1, "modified": "2020-01-01T00:00:00Z", "created": "2020-01-01T00:00:00Z"}
    more = f"{BASE_URL}/courses/5/reviews/?page=9"
    script = Script(
        page_body([item], more),
        page_body([dict(item, id=2)], more),
        page_body([], more),
        page_body([item], None),  # catch-up page 1: reaches the walk's head at once
    )
    reviews = list(iter_reviews(client(script, page_size=1), 5))
    assert [r["id"] for r in reviews] == [1, 2]
    assert [r.url.params["page"] for r in script.requests] == ["1", "2", "3", "1"]


def test_empty_course() -> None:
    catalogue = catalogue_of(1, courses=2)
    transport = AppTransport(catalogue)
    assert list(iter_reviews(client(transport), catalogue.courses[1].id)) == []
    assert transport.pages == [1]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_reviews_added_mid_walk_no_gaps_no_duplicates(concurrency: int) -> None:
    catalogue = catalogue_of(250)
    course = catalogue.courses[0]

    def arrivals(served: int) -> None:
        if served in (2, 5, 7):
            for _ in range(3):
                add_new_review(catalogue, course)

    transport = AppTransport(catalogue, after=arrivals)
    walk = iter_reviews(client(transport, page_size=20), course.id, concurrency=concurrency)
    ids = [item["id"] for item in walk]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(all_ids(catalogue, course))
    assert catalogue.review_count(course.id) == 259


class OutOfOrder(AppTransport):
    """Serves page 3 before page 2 and adds reviews in between: page 3's window is then stale."""

    def __init__(self, catalogue: Catalogue, course: Course) -> None:
        super().__init__(catalogue)
        self.course = course
        self.page_three_served = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        page = request.url.params["page"]
        if page == "2" and not self.page_three_served.is_set():
            assert self.page_three_served.wait(timeout=10)
        response = super().handle_request(request)
        if page == "3" and not self.page_three_served.is_set():
            for _ in range(5):
                add_new_review(self.catalogue, self.course)
            self.page_three_served.set()
        return response


def test_page_fetched_ahead_is_fetched_again_when_reviews_arrived_in_between() -> None:
    catalogue = catalogue_of(100)
    course = catalogue.courses[0]
    transport = OutOfOrder(catalogue, course)
    walk = iter_reviews(client(transport, page_size=20), course.id, concurrency=2)
    ids = [item["id"] for item in walk]
    assert sorted(ids) == sorted(all_ids(catalogue, course))
    assert len(ids) == len(set(ids)) == 105
    assert transport.pages[:3] == [1, 3, 2] and transport.pages.count(3) == 2


@pytest.mark.parametrize("concurrency", [1, 3])
def test_walk_ends_under_endless_arrivals(concurrency: int) -> None:
    catalogue = catalogue_of(120)
    course = catalogue.courses[0]
    before = set(all_ids(catalogue, course))
    transport = AppTransport(catalogue, after=lambda served: add_new_review(catalogue, course))
    walk = iter_reviews(client(transport, page_size=10), course.id, concurrency=concurrency)
    ids = [item["id"] for item in walk]
    assert len(ids) == len(set(ids))
    assert before <= set(ids)


def test_new_version_near_the_top_is_collected_by_the_catch_up() -> None:
    catalogue = catalogue_of(60)
    course = catalogue.courses[0]
    newest = catalogue.page(course.id, 0, 1, ("id", "created"))[1][0]

    def edit_newest(served: int) -> None:
        if served == 3:
            catalogue.add_review(
                {
                    "id": newest["id"],
                    "rating": 1.0,
                    "created": newest["created"],
                    "modified": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "user": {"title": "A", "name": "A", "display_name": "A"},
                    "course": course.to_json(),
                }
            )

    walk = client(AppTransport(catalogue, after=edit_newest), page_size=20)
    versions = [(item["id"], item["rating"]) for item in iter_reviews(walk, course.id)]
    assert (newest["id"], 1.0) in versions
    assert len(versions) == 61


def test_retry_after_on_429_then_success() -> None:
    sleeps: list[float] = []
    script = Script(
        httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "throttled"}),
        page_body([], None),
    )
    page = client(script, sleeps).fetch_page(5, 1)
    assert page.results == [] and sleeps == [7.0]
    assert len(script.requests) == 2


def test_retry_after_http_date_and_missing_header() -> None:
    sleeps: list[float] = []
    wall = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(wall + timedelta(seconds=3), usegmt=True)
    script = Script(
        httpx.Response(429, headers={"Retry-After": later}),
        httpx.Response(429),
        page_body([], None),
    )
    source = client(
        script,
        sleeps,
        wall_clock=wall.timestamp,
        retry=RetryPolicy(backoff_s=2.0),
    )
    source.fetch_page(5, 1)
    assert sleeps[0] == pytest.approx(3.0)
    assert 2.0 <= sleeps[1] <= 4.0  # second 429 in a row: backoff 2 * 2**1, upper half


def test_too_many_429_gives_up() -> None:
    script = Script(*[httpx.Response(429, headers={"Retry-After": "1"}) for _ in range(3)])
    with pytest.raises(SourceError) as caught:
        client(script, retry=RetryPolicy(rate_limited_attempts=2)).fetch_page(5, 1)
    assert caught.value.status == 429 and len(script.requests) == 3


def test_5xx_and_connect_errors_retried_with_backoff() -> None:
    sleeps: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    script = Script(
        httpx.Response(503, json={"detail": "maintenance"}),
        refuse,
        httpx.Response(500, text="oops"),
        page_body([{"id": 1}], None),
    )
    page = client(script, sleeps, retry=RetryPolicy(backoff_s=0.5)).fetch_page(5, 1)
    assert page.results == [{"id": 1}]
    assert len(sleeps) == 3
    for attempt, slept in enumerate(sleeps, start=1):
        ceiling = 0.5 * 2 ** (attempt - 1)
        assert ceiling / 2 <= slept <= ceiling


def test_retries_exhausted_raise_source_error() -> None:
    sleeps: list[float] = []
    script = Script(*[httpx.Response(502, json={"detail": "bad gateway"}) for _ in range(3)])
    with pytest.raises(SourceError) as caught:
        client(script, sleeps, retry=RetryPolicy(attempts=3)).fetch_page(5, 2)
    error = caught.value
    assert error.status == 502 and "bad gateway (after 3 attempts)" in str(error)
    assert error.url.startswith(f"{BASE_URL}/courses/5/reviews/?page=2")
    assert len(sleeps) == 2


def test_4xx_not_retried() -> None:
    sleeps: list[float] = []
    script = Script(httpx.Response(403, json={"detail": "You do not have permission."}))
    with pytest.raises(SourceError) as caught:
        client(script, sleeps).fetch_page(5, 1)
    assert (caught.value.status, caught.value.detail) == (403, "You do not have permission.")
    assert "HTTP 403 from http://localhost/api-2.0/courses/5/reviews/" in str(caught.value)
    assert len(script.requests) == 1 and sleeps == []


def test_unknown_course_and_bad_credentials() -> None:
    catalogue = catalogue_of(10)
    with pytest.raises(SourceError) as caught:
        list(iter_reviews(client(AppTransport(catalogue)), 12345))
    assert (caught.value.status, caught.value.detail) == (404, "Not found.")
    wrong = UdemyClient(BASE_URL, "client", "nope", transport=AppTransport(catalogue))
    with pytest.raises(SourceError) as caught:
        wrong.fetch_page(catalogue.courses[0].id, 1)
    assert (caught.value.status, caught.value.detail) == (401, "Invalid username/password.")


def test_invalid_json_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="invalid JSON"):
        client(Script(httpx.Response(200, text="<html>"))).fetch_page(5, 1)
    with pytest.raises(SourceError, match="not a"):
        client(Script(httpx.Response(200, json={"results": []}))).fetch_page(5, 1)


def test_request_shape_matches_udemy_and_absolute_next_is_not_followed_blindly() -> None:
    udemy_next = "https://www.udemy.com/api-2.0/courses/1075642/reviews/?page=2&page_size=100"
    item = {"id": 7, "created": "2017-03-30T20:13:54Z", "modified": "2017-03-30T20:13:54Z"}
    script = Script(
        page_body([item], udemy_next, 2),
        page_body([dict(item, id=6)], None, 2),
        page_body([item], udemy_next, 2),  # catch-up: the head again, nothing new
    )
    pages = list(client(script).iter_pages(1075642))
    first = script.requests[0]
    assert first.url.path == "/api-2.0/courses/1075642/reviews/"
    assert dict(first.url.params) == {
        "page": "1",
        "page_size": "100",
        "fields[course_review]": DEFAULT_REVIEW_FIELDS,
    }
    token = base64.b64encode(b"client:secret").decode()
    assert first.headers["Authorization"] == f"Basic {token}"
    assert str(script.requests[1].url).startswith(BASE_URL)
    assert [(page.page, len(page.results)) for page in pages] == [(1, 1), (2, 1), (1, 0)]


def test_iter_courses() -> None:
    catalogue = catalogue_of(100, courses=5)
    courses = list(client(AppTransport(catalogue)).iter_courses(page_size=2))
    assert [c["id"] for c in courses] == [c.id for c in catalogue.courses]


def test_checkpoint_resumes_where_the_walk_stopped(tmp_path: Path) -> None:
    catalogue = catalogue_of(95)
    course = catalogue.courses[0]
    checkpoint = Checkpoint(tmp_path)
    first_run = iter_reviews(
        client(AppTransport(catalogue), page_size=10), course.id, checkpoint=checkpoint
    )
    taken = [next(first_run)["id"] for _ in range(31)]  # pages 1-3 handed over, one of page 4
    first_run.close()
    saved = json.loads(checkpoint.path(course.id).read_text())
    assert (saved["next_page"], saved["pages_done"], saved["complete"]) == (4, 3, False)
    assert saved["head"] is not None

    transport = AppTransport(catalogue)
    rest = [
        item["id"]
        for item in iter_reviews(client(transport, page_size=10), course.id, checkpoint=checkpoint)
    ]
    assert transport.pages == [4, 5, 6, 7, 8, 9, 10, 1]
    assert set(taken[:30]) | set(rest) == set(all_ids(catalogue, course))
    # 65 reviews of pages 4-10, then the catch-up hands page 1 over again: this process has
    # not seen it, and repeats are harmless downstream (a review counts once, at its current
    # version).
    assert rest[:65] == all_ids(catalogue, course)[30:] and rest[65:] == taken[:10]
    assert json.loads(checkpoint.path(course.id).read_text())["complete"] is True
    assert checkpoint.load(course.id, 10) == WalkState(course.id, 10)


def test_checkpoint_converts_resume_page_when_page_size_changes(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path)
    checkpoint.save(WalkState(42, 10, next_page=8, head=(1, 2), reviews=70))
    resumed = checkpoint.load(42, 25)
    assert resumed == WalkState(42, 25, next_page=3, head=(1, 2), reviews=70)


def test_resumed_walk_past_the_end_just_catches_up(tmp_path: Path) -> None:
    catalogue = catalogue_of(30)
    course = catalogue.courses[0]
    checkpoint = Checkpoint(tmp_path)
    newest = catalogue.page(course.id, 0, 1, ("id", "created"))[1][0]
    head = (int(datetime.fromisoformat(newest["created"]).timestamp() * 1000), newest["id"])
    checkpoint.save(WalkState(course.id, 10, next_page=9, head=head, reviews=30))
    added = add_new_review(catalogue, course)
    transport = AppTransport(catalogue)
    walk = iter_reviews(client(transport, page_size=10), course.id, checkpoint=checkpoint)
    assert [item["id"] for item in walk] == [added, *all_ids(catalogue, course)[1:10]]
    assert transport.pages == [9, 1]


def test_parallel_fetch_is_in_order_and_complete() -> None:
    catalogue = catalogue_of(500)
    course = catalogue.courses[0]
    transport = AppTransport(catalogue)
    pages = list(client(transport, page_size=25).iter_pages(course.id, concurrency=4))
    assert [page.page for page in pages] == [*range(1, 21), 1]
    ids = [item["id"] for page in pages for item in page.results]
    assert ids == all_ids(catalogue, course)
    assert pages[-2].state.next_page == 21 and pages[-1].state.reviews == 500
