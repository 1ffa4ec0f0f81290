"""Udemy JSON -> Review mapping: the exact record, the inverse, and every rejection's wording."""

import copy
import io
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from streaming.core.avro_codec import load_schema
from streaming.core.ratings import RATINGS
from streaming.core.review_mapping import (
    ReviewMappingError,
    format_timestamp,
    json_to_review,
    parse_timestamp,
    review_to_json,
)
from streaming.settings import schemas_dir

REVIEW_SCHEMA = load_schema(schemas_dir() / "review.avsc")
MISSING = object()

EXAMPLE: dict[str, Any] = {
    "_class": "course_review",
    "id": 6225498,
    "title": "",
    "content": "",
    "rating": 4.0,
    "created": "2017-03-30T20:13:54Z",
    "modified": "2017-03-31T21:23:04Z",
    "user": {
        "_class": "user",
        "title": "Renato Dias Santana",
        "name": "Renato Dias",
        "display_name": "Renato Dias Santana",
    },
    "course": {
        "_class": "course",
        "id": 1075642,
        "title": "Apache Kafka Series - Learn Apache Kafka for Beginners",
        "url": "/apache-kafka-series-kafka-from-beginner-to-intermediate/",
    },
}


def with_value(path: str, value: object) -> dict[str, Any]:
    """EXAMPLE with the field at dotted `path` set to `value` (or removed for MISSING)."""
    item = copy.deepcopy(EXAMPLE)
    *parents, leaf = path.split(".")
    target = item
    for parent in parents:
        target = target[parent]
    if value is MISSING:
        del target[leaf]
    else:
        target[leaf] = value
    return item


def test_maps_the_design_example_exactly() -> None:
    assert json_to_review(EXAMPLE) == {
        "id": 6225498,
        "title": "",
        "content": "",
        "rating": "4.0",
        "created": 1490904834000,
        "modified": 1490995384000,
        "user": {
            "title": "Renato Dias Santana",
            "name": "Renato Dias",
            "display_name": "Renato Dias Santana",
        },
        "course": {
            "id": 1075642,
            "title": "Apache Kafka Series - Learn Apache Kafka for Beginners",
            "url": "/apache-kafka-series-kafka-from-beginner-to-intermediate/",
        },
    }


def test_record_encodes_with_the_avro_schema() -> None:
    review = json_to_review(EXAMPLE)
    buffer = io.BytesIO()
    schemaless_writer(buffer, REVIEW_SCHEMA, review)
    buffer.seek(0)
    decoded = schemaless_reader(buffer, REVIEW_SCHEMA, None, return_record_name=False)
    assert decoded["id"] == review["id"] and decoded["rating"] == "4.0"


def test_title_comes_from_title_not_content() -> None:
    item = with_value("title", "Great")
    item["content"] = "Long text"
    review = json_to_review(item)
    assert (review["title"], review["content"]) == ("Great", "Long text")


@pytest.mark.parametrize(("given_value", "mapped"), [("", ""), (None, None), (MISSING, None)])
def test_text_kept_as_given(given_value: object, mapped: object) -> None:
    review = json_to_review(with_value("title", given_value))
    assert review["title"] == mapped
    assert json_to_review(with_value("content", given_value))["content"] == mapped


@pytest.mark.parametrize(
    ("rating", "expected"),
    [(5, "5.0"), (5.0, "5.0"), (4.5, "4.5"), ("4.5", "4.5"), ("5", "5.0"), (0.5, "0.5")],
)
def test_rating_normalised(rating: object, expected: str) -> None:
    assert json_to_review(with_value("rating", rating))["rating"] == expected


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("2017-03-30T20:13:54Z", 1490904834000),
        ("2017-03-30T20:13:54.123Z", 1490904834123),
        ("2017-03-30T20:13:54.123456Z", 1490904834123),
        ("2017-03-30T22:13:54+02:00", 1490904834000),
        ("2017-03-30T15:13:54.5-05:00", 1490904834500),
        ("2017-03-30T20:13:54+00:00", 1490904834000),
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_timestamps(text: str, millis: int) -> None:
    assert parse_timestamp(text, "created") == millis


def test_timestamps_at_the_servable_bounds_are_kept() -> None:
    assert parse_timestamp("0001-01-01T00:00:00Z", "created") == -62_135_596_800_000
    assert parse_timestamp("9999-12-31T23:59:59.999Z", "modified") == 253_402_300_799_999


def test_control_characters_other_than_nul_are_kept() -> None:
    text = "".join(map(chr, range(1, 32))) + "\x7f\u2028\ufeff"
    assert json_to_review(with_value("content", text))["content"] == text


def test_format_timestamp_writes_udemy_form() -> None:
    assert format_timestamp(1490904834000) == "2017-03-30T20:13:54Z"
    assert format_timestamp(1490904834007) == "2017-03-30T20:13:54.007Z"


def test_extra_fields_ignored() -> None:
    item = with_value("user_modified", "2017-03-31T21:23:04Z")
    item["helpful"] = 3
    assert json_to_review(item) == json_to_review(EXAMPLE)


def test_inverse_of_the_example() -> None:
    assert review_to_json(json_to_review(EXAMPLE)) == EXAMPLE


stored = st.characters(exclude_characters="\x00")  # what PostgreSQL text can hold
texts = st.none() | st.text(stored, max_size=30)
names = st.text(stored, max_size=20)
reviews = st.builds(
    lambda review_id, title, content, halves, created, delay, user, course: {
        "id": review_id,
        "title": title,
        "content": content,
        "rating": RATINGS[halves - 1],
        "created": created,
        "modified": created + delay,
        "user": dict(zip(("title", "name", "display_name"), user, strict=True)),
        "course": {"id": course[0], "title": course[1], "url": course[2]},
    },
    st.integers(1, 2**63 - 1),
    texts,
    texts,
    st.integers(1, 10),
    st.integers(-(10**12), 10**13),
    st.integers(0, 10**10),
    st.tuples(names, names, names),
    st.tuples(st.integers(1, 2**63 - 1), names, names),
)


@given(reviews)
def test_round_trip_review_json_review(review: dict[str, Any]) -> None:
    assert json_to_review(review_to_json(review)) == review


REJECTIONS = [
    (["not", "an", "object"], "review: expected an object, got array"),
    (None, "review: expected an object, got null"),
    (with_value("_class", "course"), "_class: expected 'course_review', got 'course'"),
    (with_value("id", MISSING), "id: missing"),
    (with_value("id", "6225498"), "id: expected an integer, got string"),
    (with_value("id", 6225498.0), "id: expected an integer, got number"),
    (with_value("id", True), "id: expected an integer, got boolean"),
    (with_value("id", 0), "id: 0 is not a positive 64-bit integer"),
    (with_value("id", 2**63), f"id: {2**63} is not a positive 64-bit integer"),
    (with_value("title", 5), "title: expected a string or null, got number"),
    (with_value("content", ["a"]), "content: expected a string or null, got array"),
    (with_value("rating", MISSING), "rating: missing"),
    (with_value("rating", None), "rating: expected a number, got null"),
    (with_value("rating", True), "rating: expected a number, got boolean"),
    (with_value("rating", {"v": 5}), "rating: expected a number, got object"),
    (with_value("rating", 6.0), "rating: 6.0 is not a half step between 0.5 and 5.0"),
    (with_value("rating", 0), "rating: 0 is not a half step between 0.5 and 5.0"),
    (with_value("rating", 4.25), "rating: 4.25 is not a half step between 0.5 and 5.0"),
    (with_value("rating", "4.25"), 'rating: "4.25" is not a half step between 0.5 and 5.0'),
    (with_value("rating", 10**400), "is not a half step between 0.5 and 5.0"),
    (with_value("rating", "great"), 'rating: "great" is not a number'),
    (with_value("rating", float("nan")), "rating: nan is not a finite number"),
    (with_value("created", MISSING), "created: missing"),
    (with_value("created", 1490904834000), "created: expected an ISO-8601 string, got number"),
    (
        with_value("created", "30/03/2017"),
        'created: "30/03/2017" is not an ISO-8601 timestamp such as "2017-03-30T20:13:54Z"',
    ),
    (
        with_value("created", "2017-03-30T24:13:54Z"),
        'created: "2017-03-30T24:13:54Z" is not an ISO-8601 timestamp',
    ),
    (
        with_value("modified", "2017-03-31T21:23:04"),
        'modified: "2017-03-31T21:23:04" has no UTC offset (add "Z" or "+00:00")',
    ),
    (
        with_value("modified", "2017-03-29T00:00:00Z"),
        'modified: "2017-03-29T00:00:00Z" is before created "2017-03-30T20:13:54Z"',
    ),
    (with_value("user", MISSING), "user: missing"),
    (with_value("user", "Renato"), "user: expected an object, got string"),
    (with_value("user._class", "course"), "user._class: expected 'user', got 'course'"),
    (with_value("user.title", MISSING), "user.title: missing"),
    (with_value("user.name", None), "user.name: expected a string, got null"),
    (with_value("user.display_name", 1), "user.display_name: expected a string, got number"),
    (with_value("course", MISSING), "course: missing"),
    (with_value("course", 1075642), "course: expected an object, got number"),
    (with_value("course._class", "user"), "course._class: expected 'course', got 'user'"),
    (with_value("course.id", MISSING), "course.id: missing"),
    (with_value("course.id", "1075642"), "course.id: expected an integer, got string"),
    (with_value("course.id", -1), "course.id: -1 is not a positive 64-bit integer"),
    (with_value("course.title", MISSING), "course.title: missing"),
    (with_value("course.url", None), "course.url: expected a string, got null"),
    # PostgreSQL text cannot hold U+0000: refused here, the sink would fail on it every retry
    *(
        (with_value(path, "a\x00b"), f"{path}: contains U+0000 (NUL)")
        for path in (
            "title",
            "content",
            "user.title",
            "user.name",
            "user.display_name",
            "course.title",
            "course.url",
        )
    ),
    # in range as written, outside years 1..9999 in UTC: stats the read API could not serve
    (
        with_value("created", "0001-01-01T00:00:00+01:00"),
        'created: "0001-01-01T00:00:00+01:00" is outside 0001-01-01T00:00:00Z .. '
        "9999-12-31T23:59:59.999Z in UTC",
    ),
    (
        with_value("modified", "9999-12-31T23:59:59-01:00"),
        'modified: "9999-12-31T23:59:59-01:00" is outside 0001-01-01T00:00:00Z',
    ),
]


@pytest.mark.parametrize(("item", "message"), REJECTIONS)
def test_rejections_name_the_field_and_reason(item: object, message: str) -> None:
    with pytest.raises(ReviewMappingError) as caught:
        json_to_review(item)
    assert message in str(caught.value)
    assert str(caught.value).startswith(caught.value.path + ": ")
    assert isinstance(caught.value, ValueError)
