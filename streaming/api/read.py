"""Statistics read API: `GET /courses/{course_id}/stats` and the paged `GET /courses`.

It reads the tables the PostgreSQL sink (Kafka Connect) upserts, `long_term_stats` and
`recent_stats` (in `public`, found through the connection's search_path), one row per course
each, so it serves what the sink has committed and never talks to Kafka. The sink writes
timestamps as UTC `timestamp` columns; they are returned as ISO 8601 UTC. Include `router` in
the app; the engine comes from DATABASE_URL, once per process (`get_engine`, a dependency tests
override).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import cache
from typing import Annotated, Any, Literal, cast

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from streaming import pipeline
from streaming.core.avro_codec import REPO_SCHEMAS_DIR
from streaming.settings import Settings

router = APIRouter(tags=["statistics"])

_SQL_TYPES: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "long": sa.BigInteger,
    "string": sa.Text,
    "double": sa.Float,
    "timestamp-millis": sa.DateTime,
    "date": sa.Date,
}
"""The column type the sink (Connect's JDBC sink) makes of an Avro type or logical type."""


def _stat_columns(schema_file: str) -> tuple[tuple[str, sa.types.TypeEngine[Any]], ...]:
    """The statistic's fields in its `.avsc` (null of a union dropped), as the sink's columns."""
    fields = json.loads((REPO_SCHEMAS_DIR / schema_file).read_text(encoding="utf-8"))["fields"]
    columns = []
    for f in fields:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        (avro_type,) = [t for t in types if t != "null"]
        key = avro_type if isinstance(avro_type, str) else avro_type.get("logicalType")
        columns.append((f["name"], _SQL_TYPES[key]()))
    return tuple(columns)


STAT_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = _stat_columns(
    pipeline.LONG_TERM.value_schema or ""
)
"""The CourseStatistic fields, which the sink turns into columns of the same names."""

_metadata = sa.MetaData()
LONG_TERM = sa.Table(
    pipeline.LONG_TERM_SINK.table, _metadata, *(sa.Column(n, t) for n, t in STAT_COLUMNS)
)
RECENT = sa.Table(
    pipeline.RECENT_SINK.table, _metadata, *(sa.Column(n, t) for n, t in STAT_COLUMNS)
)
UNDEFINED_TABLE = "42P01"
FIRST_SERVABLE = datetime(1, 1, 1)
LAST_SERVABLE = datetime(9999, 12, 31, 23, 59, 59, 999999)
MAX_PAGE = 10**9  # keeps OFFSET within bigint whatever the page size


class CourseStatistic(BaseModel):
    """One `CourseStatistic` record as the sink stored it (all-time or 90-day window)."""

    course_id: int
    course_title: str
    average_rating: float = Field(description="sum_rating / count_reviews, 0 without reviews")
    count_reviews: int
    count_five_stars: int = Field(description="5.0")
    count_four_stars: int = Field(description="4.0 and 4.5")
    count_three_stars: int = Field(description="3.0 and 3.5")
    count_two_stars: int = Field(description="2.0 and 2.5")
    count_one_star: int = Field(description="1.0 and 1.5")
    count_zero_star: int = Field(description="0.5")
    last_review_time: datetime = Field(description="Latest creation time among counted reviews")
    sum_rating: float
    window_start_day: date | None = Field(None, description="Recent stats: first UTC day")
    window_end_day: date | None = Field(None, description="Recent stats: the as-of UTC day")
    as_of_time: datetime | None = Field(None, description="When the aggregator emitted it")


class CourseStats(BaseModel):
    course_id: int
    all_time: CourseStatistic | None = Field(description="Over every current valid review")
    recent: CourseStatistic | None = Field(description="Over the last 90 UTC days")
    updated_at: datetime | None = Field(
        description="When these statistics were computed: the latest as_of_time of the two"
    )


class CoursePage(BaseModel):
    """A page of courses, in the envelope of the Udemy API 2.0."""

    count: int = Field(description="Courses in all pages")
    next: str | None = Field(description="URL of the next page, if any")
    previous: str | None = Field(description="URL of the previous page, if any")
    results: list[CourseStats]


@cache
def get_engine() -> Engine:
    """One pool per process. Pre-ping: connections survive a PostgreSQL restart; a short
    connect timeout: an unreachable database answers 503 quickly instead of hanging requests."""
    return sa.create_engine(
        Settings.from_env().database_url, pool_pre_ping=True, connect_args={"connect_timeout": 3}
    )


EngineDep = Annotated[Engine, Depends(get_engine)]


class NoTables(Exception):
    """The sink has not created its tables yet (no statistics were ever written)."""


def _served(table: sa.Table, name: str) -> sa.ColumnElement[Any]:
    """A column as selected for serving. PostgreSQL holds timestamps beyond Python's datetime
    (years 0 and below, 10000 and above); such a value, which only a producer that bypassed
    ingestion can write, would fail the whole answer (and every page of /courses holding it),
    so it is clamped to the servable range instead."""
    column = table.c[name]
    if isinstance(column.type, sa.DateTime):
        return sa.func.least(sa.func.greatest(column, FIRST_SERVABLE), LAST_SERVABLE)
    return column


@contextmanager
def _reading(engine: Engine) -> Iterator[Connection]:
    """A connection; database trouble becomes 503, a missing sink table NoTables."""
    try:
        with engine.connect() as conn:
            yield conn
    except sa.exc.ProgrammingError as exc:
        code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
        if code == UNDEFINED_TABLE:
            raise NoTables from exc
        raise
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        raise HTTPException(503, "the statistics database is unavailable") from exc


def _statistic(row: sa.RowMapping, prefix: str = "") -> CourseStatistic | None:
    values = {name: row[prefix + name] for name, _ in STAT_COLUMNS}
    if values["course_id"] is None:
        return None
    for name in ("last_review_time", "as_of_time"):
        moment = values[name]
        if moment is not None and moment.tzinfo is None:  # UTC `timestamp` columns
            values[name] = moment.replace(tzinfo=UTC)
    return CourseStatistic(**values)


def _course(
    course_id: int, all_time: CourseStatistic | None, recent: CourseStatistic | None
) -> CourseStats:
    times = [s.as_of_time for s in (all_time, recent) if s is not None and s.as_of_time]
    return CourseStats(
        course_id=course_id,
        all_time=all_time,
        recent=recent,
        updated_at=max(times, default=None),
    )


@router.get(
    "/courses/{course_id}/stats",
    response_model=CourseStats,
    responses={404: {"description": "No statistics for this course"}, 503: {}},
)
def course_stats(course_id: int, engine: EngineDep) -> CourseStats:
    """All-time and 90-day statistics of one course, as last written by the sink."""
    query = sa.union_all(
        *(
            sa.select(
                sa.literal(kind).label("kind"),
                *(_served(table, n).label(n) for n, _ in STAT_COLUMNS),
            ).where(table.c.course_id == course_id)
            for kind, table in (("all_time", LONG_TERM), ("recent", RECENT))
        )
    )
    try:
        with _reading(engine) as conn:
            rows = {row["kind"]: row for row in conn.execute(query).mappings()}
    except NoTables:
        raise HTTPException(404, "no statistics yet: the sink has not written any") from None
    if not rows:
        raise HTTPException(404, f"no statistics for course {course_id}")
    found = {kind: _statistic(row) for kind, row in rows.items()}
    return _course(course_id, found.get("all_time"), found.get("recent"))


Sort = Literal["rating", "-rating", "reviews", "-reviews"]


@router.get("/courses", response_model=CoursePage, responses={503: {}})
def list_courses(
    request: Request,
    engine: EngineDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    sort: Annotated[
        Sort, Query(description="By all-time average rating or review count; '-' descending")
    ] = "-reviews",
) -> CoursePage:
    """Courses with statistics, a page at a time; ties in the sort order go by course id."""
    joined = LONG_TERM.outerjoin(RECENT, LONG_TERM.c.course_id == RECENT.c.course_id, full=True)
    course_id = sa.func.coalesce(LONG_TERM.c.course_id, RECENT.c.course_id)
    key = LONG_TERM.c.average_rating if sort.endswith("rating") else LONG_TERM.c.count_reviews
    order = key.desc() if sort.startswith("-") else key.asc()
    query = (
        sa.select(
            *(_served(LONG_TERM, n).label(f"l_{n}") for n, _ in STAT_COLUMNS),
            *(_served(RECENT, n).label(f"r_{n}") for n, _ in STAT_COLUMNS),
        )
        .select_from(joined)
        .order_by(order.nulls_last(), course_id)
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    try:
        with _reading(engine) as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(joined)).scalar_one()
            rows = list(conn.execute(query).mappings()) if count > (page - 1) * page_size else []
    except NoTables:
        count, rows = 0, []
    results = []
    for row in rows:
        all_time, recent = _statistic(row, "l_"), _statistic(row, "r_")
        either = cast("CourseStatistic", all_time or recent)  # the join has one side at least
        results.append(_course(either.course_id, all_time, recent))
    more = page * page_size < count
    return CoursePage(
        count=count,
        next=str(request.url.include_query_params(page=page + 1)) if more else None,
        previous=str(request.url.include_query_params(page=page - 1)) if page > 1 else None,
        results=results,
    )
