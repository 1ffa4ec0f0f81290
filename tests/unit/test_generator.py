"""The sample generator: deterministic, realistic in shape, and consistent with the mapping."""

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streaming.core.review_mapping import json_to_review, parse_timestamp, review_to_json
from streaming.source.generator import (
    DEFAULT_SPEC,
    HALF_STAR_CUTOFF,
    KAFKA_COURSE,
    REVIEW_FIELDS,
    Sample,
    SampleSpec,
    default_now,
    generate,
)

NOW = datetime(2026, 5, 1, tzinfo=UTC)
CUTOFF_MS = int(HALF_STAR_CUTOFF.timestamp() * 1000)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return generate(now=NOW)


@pytest.fixture(scope="module")
def versions(sample: Sample) -> list[dict]:
    return list(sample.versions())


@pytest.fixture(scope="module")
def current(sample: Sample) -> list[dict]:
    return list(sample.reviews())


def test_same_seed_same_output() -> None:
    spec = SampleSpec(seed=7, courses=5, reviews=3_000)
    first, second = generate(spec, now=NOW), generate(spec, now=NOW)
    assert list(first.versions()) == list(second.versions())
    assert first.courses == second.courses


def test_other_seed_other_output() -> None:
    first = generate(SampleSpec(seed=1, courses=3, reviews=500), now=NOW)
    second = generate(SampleSpec(seed=2, courses=3, reviews=500), now=NOW)
    assert list(first.reviews()) != list(second.reviews())


def test_bundled_sample_size_and_popularity(sample: Sample) -> None:
    sizes = Counter(sample.course_index.tolist())
    assert len(sample) == DEFAULT_SPEC.reviews == 30_000
    assert 24 <= len(sample.courses) <= 60
    assert sizes.most_common(1)[0][1] >= 5_000
    assert sample.courses[0] == type(sample.courses[0])(*KAFKA_COURSE)
    assert len({course.id for course in sample.courses}) == len(sample.courses)
    assert len({course.url for course in sample.courses}) == len(sample.courses)


def test_review_ids_unique_and_growing_with_creation(sample: Sample) -> None:
    assert len(np.unique(sample.ids)) == len(sample)
    assert np.all(np.diff(sample.ids) > 0)
    assert np.all(np.diff(sample.created_s) >= 0)


def test_rating_distribution(current: list[dict]) -> None:
    shares = Counter(item["rating"] for item in current)
    total = len(current)
    for rating, expected in [(5.0, 0.75), (4.5, 0.11), (4.0, 0.09), (3.5, 0.02), (3.0, 0.015)]:
        assert shares[rating] / total == pytest.approx(expected, abs=0.01)
    low = sum(shares[r] for r in (0.5, 1.0, 1.5, 2.0, 2.5)) / total
    assert low == pytest.approx(0.015, abs=0.005)
    assert all(shares[r] > 0 for r in (1.0, 1.5, 2.0, 2.5))
    assert all(isinstance(item["rating"], float) for item in current)


def test_half_star_only_before_march_2018(versions: list[dict]) -> None:
    half_stars = [item for item in versions if item["rating"] == 0.5]
    assert half_stars, "the sample should keep some 0.5 ratings from before March 2018"
    assert all(parse_timestamp(item["modified"], "m") < CUTOFF_MS for item in half_stars)


def test_edits_present_and_replayable(sample: Sample, versions: list[dict]) -> None:
    current = {item["id"]: item for item in sample.reviews()}
    edited = [item for item in current.values() if item["modified"] != item["created"]]
    assert 0.08 < len(edited) / len(current) < 0.16
    # one version per review plus one per earlier version
    assert len(versions) == len(sample.ids) + len(sample.earlier_row) > len(current)
    replayed: dict[int, dict] = {}
    history: defaultdict[int, list[dict]] = defaultdict(list)
    for item in versions:
        replayed[item["id"]] = item
        history[item["id"]].append(item)
    assert replayed == current
    rating_changed = [h for h in history.values() if len({v["rating"] for v in h}) > 1]
    three_versions = [h for h in history.values() if len(h) >= 3]
    assert len(rating_changed) > 0.25 * len(edited)
    assert three_versions
    for versions_of_one in history.values():
        modified = [parse_timestamp(v["modified"], "m") for v in versions_of_one]
        assert modified == sorted(modified)
        assert parse_timestamp(versions_of_one[0]["modified"], "m") == parse_timestamp(
            versions_of_one[0]["created"], "c"
        )


def test_versions_in_time_order(versions: list[dict]) -> None:
    keys = [(parse_timestamp(v["modified"], "m"), v["id"]) for v in versions]
    assert keys == sorted(keys)


def test_dates_up_to_now_and_recent_days_present(sample: Sample, current: list[dict]) -> None:
    created = [parse_timestamp(item["created"], "c") for item in current]
    now_ms = int(NOW.timestamp() * 1000)
    assert max(created) < now_ms
    assert max(parse_timestamp(item["modified"], "m") for item in current) < now_ms
    assert min(created) < int(datetime(2017, 1, 1, tzinfo=UTC).timestamp() * 1000)
    recent_start = int((NOW - timedelta(days=90)).timestamp() * 1000)
    recent = [item for item, ms in zip(current, created, strict=True) if ms >= recent_start]
    assert 0.02 < len(recent) / len(current) < 0.2
    assert {item["course"]["id"] for item in recent} >= {sample.courses[0].id}


def test_default_now_is_today_midnight_utc() -> None:
    now = default_now()
    assert now.tzinfo is not None and (now.hour, now.minute, now.second) == (0, 0, 0)
    assert datetime.now(UTC) - now < timedelta(days=1)


def test_text_mostly_empty_some_long_and_non_ascii(current: list[dict]) -> None:
    contents = [item["content"] for item in current]
    assert sum(1 for c in contents if c == "") / len(contents) > 0.6
    assert sum(1 for item in current if item["title"] == "") / len(current) > 0.9
    assert max(len(c) for c in contents) > 500
    joined = "".join(set(contents))
    assert any(ch in joined for ch in "éçñü")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in joined)
    assert any(ord(ch) > 0xFFFF for ch in joined)


def test_items_are_valid_and_round_trip_through_the_mapping(versions: list[dict]) -> None:
    for item in versions:
        assert list(item) == list(REVIEW_FIELDS)
        expected = {key: value for key, value in item.items() if key != "user_modified"}
        assert review_to_json(json_to_review(item)) == expected


def test_items_honour_fields(sample: Sample) -> None:
    items = sample.items(np.arange(3), ("_class", "id", "rating", "course"))
    assert [list(item) for item in items] == [["_class", "id", "rating", "course"]] * 3


def test_sizes_without_reviews_or_with_one_course() -> None:
    empty = generate(SampleSpec(courses=3, reviews=0), now=NOW)
    assert len(empty) == 0 and list(empty.versions()) == []
    single = generate(SampleSpec(courses=1, reviews=200), now=NOW)
    assert len(list(single.reviews(single.courses[0].id))) == 200
    many_courses = generate(SampleSpec(courses=120, reviews=1_000), now=NOW)
    assert len({course.title for course in many_courses.courses}) == 120


def test_invalid_spec_refused() -> None:
    with pytest.raises(ValueError):
        SampleSpec(courses=0)
    with pytest.raises(ValueError):
        SampleSpec(edited_share=1.5)
    with pytest.raises(ValueError):
        generate(SampleSpec(reviews=10), now=datetime(2026, 5, 1))
