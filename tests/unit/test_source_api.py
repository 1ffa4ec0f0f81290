"""The local Udemy-compatible review API, through FastAPI's TestClient (no sockets)."""

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from streaming.core.review_mapping import parse_timestamp
from streaming.source.catalogue import Catalogue
from streaming.source.generator import SampleSpec, generate
from streaming.source.server import DEFAULT_REVIEW_FIELDS, FIELDS_PARAM, create_app

NOW = datetime(2026, 5, 1, tzinfo=UTC)
AUTH = ("client", "secret")
BASE = "/api-2.0"

LOCAL = "http://localhost"  # a trusted Host (ALLOWED_HOSTS); TestClient's own is not


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue(generate(SampleSpec(courses=4, reviews=1_000), now=NOW))


@pytest.fixture(scope="module")
def api(catalogue: Catalogue) -> TestClient:
    return TestClient(
        create_app(catalogue, client_id=AUTH[0], client_secret=AUTH[1]), base_url=LOCAL
    )


def reviews_url(course_id: int) -> str:
    return f"{BASE}/courses/{course_id}/reviews/"


def get(api: TestClient, url: str, **params: Any) -> Any:
    response = api.get(url, params=params, auth=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_envelope_and_absolute_links(api: TestClient, catalogue: Catalogue) -> None:
    course = catalogue.courses[0]
    count = catalogue.review_count(course.id)
    first = get(api, reviews_url(course.id), page_size=100)
    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == count and len(first["results"]) == 100
    assert first["previous"] is None
    assert first["next"] == f"http://localhost{reviews_url(course.id)}?page_size=100&page=2"
    second = api.get(first["next"], auth=AUTH).json()
    assert second["previous"] == f"http://localhost{reviews_url(course.id)}?page_size=100"
    third = api.get(second["next"], auth=AUTH).json()
    assert third["previous"] == first["next"]


def test_pages_cover_the_course_once_newest_first(api: TestClient, catalogue: Catalogue) -> None:
    course = catalogue.courses[1]
    count = catalogue.review_count(course.id)
    items, url = [], f"{reviews_url(course.id)}?page_size=7"
    while url:
        page = api.get(url, auth=AUTH).json()
        items += page["results"]
        url = page["next"]
    assert len(items) == count == len({item["id"] for item in items})
    keys = [(parse_timestamp(item["created"], "c"), item["id"]) for item in items]
    assert keys == sorted(keys, reverse=True)


def test_last_page_exact_multiple_has_no_next(catalogue: Catalogue) -> None:
    sample = generate(SampleSpec(courses=1, reviews=40), now=NOW)
    api = TestClient(
        create_app(Catalogue(sample), client_id=AUTH[0], client_secret=AUTH[1]), base_url=LOCAL
    )
    url = reviews_url(sample.courses[0].id)
    last = get(api, url, page=4, page_size=10)
    assert last["next"] is None and len(last["results"]) == 10
    assert get(api, url, page="last", page_size=10) == last
    assert api.get(url, params={"page": 5, "page_size": 10}, auth=AUTH).status_code == 404


def test_default_page_size_and_fields(api: TestClient, catalogue: Catalogue) -> None:
    page = get(api, reviews_url(catalogue.courses[0].id))
    assert len(page["results"]) == 12
    assert all(tuple(item) == DEFAULT_REVIEW_FIELDS for item in page["results"])
    assert all(item["_class"] == "course_review" for item in page["results"])


def test_fields_param_selects_and_orders(api: TestClient, catalogue: Catalogue) -> None:
    url = reviews_url(catalogue.courses[0].id)
    design = "title,content,rating,created,modified,user_modified,user,course"
    page = get(api, url, **{FIELDS_PARAM: design})
    item = page["results"][0]
    assert list(item) == [
        "_class",
        "id",
        "title",
        "content",
        "rating",
        "created",
        "modified",
        "user_modified",
        "user",
        "course",
    ]
    assert item["course"] == {"_class": "course", **vars(catalogue.courses[0])}
    assert item["user_modified"] == item["modified"]
    only = get(api, url, **{FIELDS_PARAM: "rating,no_such_field"})["results"][0]
    assert list(only) == ["_class", "id", "rating"]
    everything = get(api, url, **{FIELDS_PARAM: "@all"})["results"][0]
    assert "course" in everything and "user_modified" in everything


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"page_size": 101}, 400, "page_size must be between 1 and 100, got 101."),
        ({"page_size": 0}, 400, "page_size must be between 1 and 100, got 0."),
        ({"page_size": "ten"}, 400, "page_size must be an integer, got 'ten'."),
        ({"page": 10_000}, 404, "Invalid page."),
        ({"page": 0}, 404, "Invalid page."),
        ({"page": "two"}, 404, "Invalid page."),
    ],
)
def test_bad_paging(
    api: TestClient, catalogue: Catalogue, params: dict, status: int, detail: str
) -> None:
    response = api.get(reviews_url(catalogue.courses[0].id), params=params, auth=AUTH)
    assert (response.status_code, response.json()) == (status, {"detail": detail})


@pytest.mark.parametrize("course", ["1", "abc", "-5"])
def test_unknown_course_404(api: TestClient, course: str) -> None:
    response = api.get(f"{BASE}/courses/{course}/reviews/", auth=AUTH)
    assert (response.status_code, response.json()) == (404, {"detail": "Not found."})


def test_empty_course_has_an_empty_first_page() -> None:
    sample = generate(SampleSpec(courses=2, reviews=1), now=NOW)
    api = TestClient(
        create_app(Catalogue(sample), client_id=AUTH[0], client_secret=AUTH[1]), base_url=LOCAL
    )
    url = reviews_url(sample.courses[1].id)
    page = get(api, url)
    assert page == {"count": 0, "next": None, "previous": None, "results": []}
    assert api.get(url, params={"page": 2}, auth=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("auth", "detail"),
    [
        (None, "Authentication credentials were not provided."),
        (("client", "wrong"), "Invalid username/password."),
        (("other", "secret"), "Invalid username/password."),
    ],
)
def test_basic_auth_required(
    api: TestClient, catalogue: Catalogue, auth: tuple | None, detail: str
) -> None:
    for url in (reviews_url(catalogue.courses[0].id), f"{BASE}/courses/"):
        response = api.get(url, auth=auth)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="api"'
        assert response.json() == {"detail": detail}


NOT_BASE64 = "Invalid basic header. Credentials not correctly base64 encoded."


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (b"Bearer token", "Authentication credentials were not provided."),
        (b"Basic", "Invalid basic header. No credentials provided."),
        (b"Basic !!!", NOT_BASE64),
        (b"Basic \xe9\xe9", NOT_BASE64),  # not ASCII: once a 500 and a traceback
        (b"Basic \xff\xfe\x00", NOT_BASE64),
        (b"Basic Y2xpZW50", "Invalid basic header. Credentials must be user:password."),
        (b"Basic " + base64.b64encode(b"\xe9\xff:\x80"), "Invalid username/password."),
    ],
)
def test_a_malformed_authorization_header_is_a_401_with_the_reason_and_no_traceback(
    api: TestClient,
    catalogue: Catalogue,
    caplog: pytest.LogCaptureFixture,
    header: bytes,
    detail: str,
) -> None:
    response = api.get(reviews_url(catalogue.courses[0].id), headers={"Authorization": header})
    assert (response.status_code, response.json()) == (401, {"detail": detail})
    assert response.headers["WWW-Authenticate"] == 'Basic realm="api"'
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_health_needs_no_auth(api: TestClient, catalogue: Catalogue) -> None:
    response = api.get(f"{BASE}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "courses": 4, "reviews": catalogue.total_reviews}


def test_course_list_paged(api: TestClient, catalogue: Catalogue) -> None:
    first = get(api, f"{BASE}/courses/", page_size=3)
    assert first["count"] == 4 and first["next"].endswith("page_size=3&page=2")
    assert first["results"][0] == {"_class": "course", **vars(catalogue.courses[0])}
    second = api.get(first["next"], auth=AUTH).json()
    assert [c["id"] for c in first["results"] + second["results"]] == [
        c.id for c in catalogue.courses
    ]


def test_rate_limit_answers_429_with_retry_after(catalogue: Catalogue) -> None:
    clock = FakeClock()
    app = create_app(
        catalogue, client_id=AUTH[0], client_secret=AUTH[1], rate_limit_per_s=0.5, clock=clock
    )
    api = TestClient(app, base_url=LOCAL)
    url = reviews_url(catalogue.courses[0].id)
    assert api.get(url, auth=AUTH).status_code == 200
    throttled = api.get(url, auth=AUTH)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.json() == {"detail": "Request was throttled. Expected available in 2 seconds."}
    assert api.get(f"{BASE}/health").status_code == 200
    clock.now += 1.5
    assert api.get(url, auth=AUTH).headers["Retry-After"] == "1"
    clock.now += 0.5
    assert api.get(url, auth=AUTH).status_code == 200


def test_rate_limit_burst(catalogue: Catalogue) -> None:
    clock = FakeClock()
    app = create_app(
        catalogue,
        client_id=AUTH[0],
        client_secret=AUTH[1],
        rate_limit_per_s=10,
        rate_limit_burst=3,
        clock=clock,
    )
    api = TestClient(app, base_url=LOCAL)
    statuses = [api.get(f"{BASE}/courses/", auth=AUTH).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    clock.now += 0.1
    assert api.get(f"{BASE}/courses/", auth=AUTH).status_code == 200


def new_review(course: Any, review_id: int, created: str, rating: float = 5.0) -> dict:
    return {
        "id": review_id,
        "title": "",
        "content": "Added while serving ✨",
        "rating": rating,
        "created": created,
        "modified": created,
        "user": {"title": "Zoë Kim", "name": "Zoë", "display_name": "Zoë Kim"},
        "course": course.to_json(),
    }


def test_added_review_served_first_and_edit_replaces_it() -> None:
    catalogue = Catalogue(generate(SampleSpec(courses=2, reviews=300), now=NOW))
    api = TestClient(
        create_app(catalogue, client_id=AUTH[0], client_secret=AUTH[1]), base_url=LOCAL
    )
    course = catalogue.courses[0]
    url = reviews_url(course.id)
    before = get(api, url, page_size=5)
    catalogue.add_review(new_review(course, 99_000_001, "2026-05-01T10:00:00Z"))
    after = get(api, url, page_size=5)
    assert after["count"] == before["count"] + 1
    assert [item["id"] for item in after["results"]] == [
        99_000_001,
        *[item["id"] for item in before["results"][:4]],
    ]
    edit = new_review(course, 99_000_001, "2026-05-01T10:00:00Z", rating=3.5)
    edit["modified"] = "2026-05-01T11:00:00Z"
    catalogue.add_review(edit)
    edited = get(api, url, page_size=5)
    assert edited["count"] == after["count"]
    assert edited["results"][0]["rating"] == 3.5
    assert edited["results"][0]["modified"] == "2026-05-01T11:00:00Z"


def test_edit_of_a_generated_review_and_backdated_review() -> None:
    catalogue = Catalogue(generate(SampleSpec(courses=1, reviews=50), now=NOW))
    course = catalogue.courses[0]
    count, items = catalogue.page(course.id, 0, 50, ("id", "created", "rating"))
    target = items[10]
    edit = new_review(course, target["id"], target["created"], rating=1.0)
    edit["modified"] = "2026-05-01T00:00:00Z"
    catalogue.add_review(edit)
    middle = new_review(course, 99_000_002, items[20]["created"])
    catalogue.add_review(middle)
    count_after, items_after = catalogue.page(course.id, 0, 60, ("id", "rating"))
    assert count_after == count + 1
    assert items_after[10] == {"id": target["id"], "rating": 1.0}
    ids = [item["id"] for item in items_after]
    assert ids.count(target["id"]) == 1
    assert ids[20:22] == [99_000_002, items[20]["id"]]  # same created: the greater id first


def test_add_review_validates(catalogue: Catalogue) -> None:
    course = catalogue.courses[0]
    with pytest.raises(ValueError, match=r"rating: 7\.0 is not a half step"):
        catalogue.add_review(new_review(course, 99_000_003, "2026-05-01T10:00:00Z", rating=7.0))
    stranger = new_review(course, 99_000_004, "2026-05-01T10:00:00Z")
    stranger["course"]["id"] = 1
    with pytest.raises(KeyError):
        catalogue.add_review(stranger)
