"""The statistics read API on a real PostgreSQL: rows in a dedicated schema, tables shaped as
the JDBC sink creates them (UTC `timestamp(6)`, `date`, the CourseStatistic column names)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from streaming.api.read import get_engine, router
from streaming.settings import Settings
from tests.integration.kafka_helpers import free_port

pytestmark = pytest.mark.integration

SINK_DDL = """CREATE TABLE {table} (
    course_id bigint NOT NULL PRIMARY KEY, course_title text NOT NULL,
    average_rating double precision NOT NULL, count_reviews bigint NOT NULL,
    count_five_stars bigint NOT NULL, count_four_stars bigint NOT NULL,
    count_three_stars bigint NOT NULL, count_two_stars bigint NOT NULL,
    count_one_star bigint NOT NULL, count_zero_star bigint NOT NULL,
    last_review_time timestamp(6) NOT NULL, sum_rating double precision NOT NULL,
    window_start_day date, window_end_day date, as_of_time timestamp(6))"""

T0 = datetime(2026, 11, 20, 8, 30, 15, 123000)


def stat(course_id: int, reviews: int, average: float, **overrides: Any) -> dict[str, Any]:
    row = {
        "course_id": course_id,
        "course_title": f"Course {course_id}",
        "average_rating": average,
        "count_reviews": reviews,
        "count_five_stars": reviews,
        "count_four_stars": 0,
        "count_three_stars": 0,
        "count_two_stars": 0,
        "count_one_star": 0,
        "count_zero_star": 0,
        "last_review_time": T0,
        "sum_rating": average * reviews,
        "window_start_day": None,
        "window_end_day": None,
        "as_of_time": T0,
    }
    row.update(overrides)
    return row


# (course, all-time reviews, all-time average): ties on both sort keys to check the tie-break
ALL_TIME = [stat(5, 10, 4.5), stat(3, 200, 4.0), stat(8, 10, 3.5), stat(1, 7, 4.5), stat(4, 0, 0)]
RECENT = [
    stat(
        5,
        2,
        5.0,
        window_start_day=date(2026, 8, 23),
        window_end_day=date(2026, 11, 20),
        as_of_time=datetime(2026, 11, 20, 9, 0),
    ),
    stat(3, 1, 4.0, window_start_day=date(2026, 8, 23), window_end_day=date(2026, 11, 20)),
]


@pytest.fixture(scope="module")
def schema(settings: Settings) -> Iterator[str]:
    name = f"readapi_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


def schema_engine(settings: Settings, schema: str) -> sa.Engine:
    """An engine whose unqualified table names resolve in `schema` (as the API's do)."""
    return sa.create_engine(
        settings.database_url, connect_args={"options": f"-csearch_path={schema}"}
    )


def api(engine: sa.Engine) -> TestClient:
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[get_engine] = lambda: engine
    return TestClient(app)


@pytest.fixture(scope="module")
def client(settings: Settings, schema: str) -> Iterator[TestClient]:
    engine = schema_engine(settings, schema)
    with engine.begin() as conn:
        for table, rows in (("long_term_stats", ALL_TIME), ("recent_stats", RECENT)):
            conn.execute(sa.text(SINK_DDL.format(table=table)))
            conn.execute(sa.table(table, *(sa.column(k) for k in rows[0])).insert(), rows)
    yield api(engine)
    engine.dispose()


def test_course_stats_has_both_windows_with_utc_timestamps(client: TestClient) -> None:
    resp = client.get("/courses/5/stats")
    assert resp.status_code == 200
    body = resp.json()
    assert body["course_id"] == 5
    assert body["all_time"] == {
        "course_id": 5,
        "course_title": "Course 5",
        "average_rating": 4.5,
        "count_reviews": 10,
        "count_five_stars": 10,
        "count_four_stars": 0,
        "count_three_stars": 0,
        "count_two_stars": 0,
        "count_one_star": 0,
        "count_zero_star": 0,
        "last_review_time": "2026-11-20T08:30:15.123000Z",
        "sum_rating": 45.0,
        "window_start_day": None,
        "window_end_day": None,
        "as_of_time": "2026-11-20T08:30:15.123000Z",
    }
    assert body["recent"]["count_reviews"] == 2
    assert body["recent"]["window_start_day"] == "2026-08-23"
    assert body["recent"]["window_end_day"] == "2026-11-20"
    assert body["updated_at"] == "2026-11-20T09:00:00Z"  # the later as_of_time of the two
    assert datetime.fromisoformat(body["updated_at"]).tzinfo == UTC


def test_a_course_without_recent_stats_has_recent_null(client: TestClient) -> None:
    body = client.get("/courses/8/stats").json()
    assert body["all_time"]["count_reviews"] == 10
    assert body["recent"] is None


def test_unknown_course_is_a_404_with_a_reason(client: TestClient) -> None:
    resp = client.get("/courses/999999/stats")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "no statistics for course 999999"}
    assert client.get("/courses/abc/stats").status_code == 422


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("-reviews", [3, 5, 8, 1, 4]),
        ("reviews", [4, 1, 5, 8, 3]),
        ("-rating", [1, 5, 3, 8, 4]),
        ("rating", [4, 8, 3, 1, 5]),
    ],
)
def test_courses_sort_with_ties_by_course_id(client: TestClient, sort: str, order: list) -> None:
    body = client.get("/courses", params={"sort": sort, "page_size": 100}).json()
    assert [c["course_id"] for c in body["results"]] == order
    assert body["count"] == 5


def test_courses_page_like_udemy(client: TestClient) -> None:
    first = client.get("/courses", params={"page_size": 2, "sort": "-reviews"}).json()
    assert first["count"] == 5
    assert [c["course_id"] for c in first["results"]] == [3, 5]
    assert first["previous"] is None
    assert first["next"] == "http://testserver/courses?page_size=2&sort=-reviews&page=2"
    assert first["results"][0]["recent"]["count_reviews"] == 1
    assert first["results"][0]["updated_at"] == "2026-11-20T08:30:15.123000Z"

    seen, url = [], "/courses?page_size=2&sort=-reviews"
    while url:
        page = client.get(url).json()
        seen += [c["course_id"] for c in page["results"]]
        url = page["next"]
    assert seen == [3, 5, 8, 1, 4]
    last = client.get("/courses", params={"page_size": 2, "page": 3}).json()
    assert last["next"] is None
    assert last["previous"] == "http://testserver/courses?page_size=2&page=2"
    beyond = client.get("/courses", params={"page_size": 2, "page": 9}).json()
    assert beyond["results"] == [] and beyond["count"] == 5


@pytest.mark.parametrize(
    "params",
    [{"page": 0}, {"page": "x"}, {"page_size": 0}, {"page_size": 101}, {"sort": "title"}],
)
def test_bad_paging_parameters_are_a_422(client: TestClient, params: dict) -> None:
    resp = client.get("/courses", params=params)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][0] == "query"


def test_before_the_sink_created_its_tables(settings: Settings) -> None:
    name = f"readapi_empty_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(settings.database_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    engine = schema_engine(settings, name)
    try:
        client = api(engine)
        resp = client.get("/courses/5/stats")
        assert resp.status_code == 404
        assert "no statistics yet" in resp.json()["detail"]
        body = client.get("/courses").json()
        assert body == {"count": 0, "next": None, "previous": None, "results": []}
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def test_unreachable_database_is_a_503() -> None:
    engine = sa.create_engine(
        f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/reviews",
        connect_args={"connect_timeout": 2},
    )
    client = api(engine)
    for path in ("/courses/5/stats", "/courses"):
        resp = client.get(path)
        assert resp.status_code == 503
        assert resp.json() == {"detail": "the statistics database is unavailable"}


def test_openapi_documents_the_response_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"CourseStats", "CourseStatistic", "CoursePage"} <= set(schemas)
    assert "last_review_time" in schemas["CourseStatistic"]["properties"]
    assert "404" in spec["paths"]["/courses/{course_id}/stats"]["get"]["responses"]
