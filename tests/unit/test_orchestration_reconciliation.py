"""Reconciliation logic without services: the comparison rules and the wait on every stage."""

from collections.abc import Iterable

import dagster as dg
import pytest
from pydantic import Field

from orchestration.assets.reconciliation import Mismatch, cell, compare, wait_for_stages
from orchestration.resources import KafkaResource
from orchestration.topology import STAGES, GroupStage

ROW = {
    "course_title": "Apache Kafka Series | Learn Apache Kafka for Beginners",
    "average_rating": 4.5,
    "count_reviews": 2,
    "count_five_stars": 1,
    "count_four_stars": 1,
    "count_three_stars": 0,
    "count_two_stars": 0,
    "count_one_star": 0,
    "count_zero_star": 0,
    "sum_rating": 9.0,
    "last_review_ms": 1_700_000_000_123,
    "window_end_day": None,
}
AS_OF_DAY = 20_000  # 2024-10-04
RECENT = {**ROW, "window_end_day": AS_OF_DAY}


def test_equal_statistics_agree_and_averages_have_a_tolerance() -> None:
    assert compare("long_term", {1: ROW}, {1: dict(ROW)}, 1e-9) == []
    close = {**ROW, "average_rating": 4.5 + 1e-12}
    assert compare("long_term", {1: ROW}, {1: close}, 1e-9) == []
    far = {**ROW, "average_rating": 4.5 + 1e-6}
    assert [m.field for m in compare("long_term", {1: ROW}, {1: far}, 1e-9)] == ["average_rating"]


@pytest.mark.parametrize(
    "field",
    ["count_reviews", "count_five_stars", "count_zero_star", "sum_rating", "last_review_ms"],
)
def test_any_count_bucket_sum_or_time_difference_is_a_mismatch(field: str) -> None:
    tampered = {**ROW, field: ROW[field] + 1}
    assert compare("recent", {7: ROW}, {7: tampered}, 1e-9) == [
        Mismatch("recent", 7, field, str(ROW[field]), str(tampered[field]))
    ]


def test_a_course_title_is_compared_exactly() -> None:
    renamed = {**ROW, "course_title": ROW["course_title"] + " "}
    assert compare("long_term", {3: ROW}, {3: renamed}, 1e-9) == [
        Mismatch("long_term", 3, "course_title", ROW["course_title"], renamed["course_title"])
    ]


def test_a_course_on_one_side_only_is_a_mismatch() -> None:
    assert compare("recent", {1: ROW, 2: ROW}, {1: ROW, 3: ROW}, 1e-9) == [
        Mismatch("recent", 2, "row", "present", "missing", "the course is missing from the stream"),
        Mismatch("recent", 3, "row", "missing", "present", "the course is missing from the batch"),
    ]


def test_a_recent_window_not_ending_on_the_as_of_day_is_one_mismatch() -> None:
    """Yesterday's window with today's counts is still wrong; its counts, for another window,
    are not compared (they would only repeat the one mismatch)."""
    stale = {**RECENT, "window_end_day": AS_OF_DAY - 1, "count_reviews": 1}
    unset = {**RECENT, "window_end_day": None}
    batch = {1: RECENT, 2: RECENT, 3: RECENT}
    got = compare("recent", batch, {1: RECENT, 2: stale, 3: unset}, 1e-9, AS_OF_DAY)
    assert [(m.course_id, m.field, m.batch, m.stream) for m in got] == [
        (2, "window_end_day", "2024-10-04", "2024-10-03"),
        (3, "window_end_day", "2024-10-04", "none"),
    ]
    assert got[0].reason == (
        "the stream's row has a window ending on 2024-10-03, not one ending on the as-of day "
        "2024-10-04: not moved with the clock (other fields not compared)"
    )
    assert "the stream's row has no window" in got[1].reason
    assert compare("recent", {1: RECENT}, {1: RECENT}, 1e-9, AS_OF_DAY) == []


def test_report_cells_hold_any_title() -> None:
    assert cell("a | b\\c\nd") == "a \\| b\\\\c d"


class ScriptedKafka(KafkaResource):
    """Topics at offset 10 on one partition; groups at what `committed` says (default: 10).

    `markers` lists topics whose gap below the end holds only transaction markers.
    """

    committed: dict[str, int] = Field(default_factory=dict)
    markers: list[str] = Field(default_factory=list)

    def end_offsets(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        return {(t, 0): 10 for t in topics}

    def committed_offsets(self, group_id: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        return {(t, 0): self.committed.get(group_id, 10) for t in topics}

    def has_records(self, topic: str, partition: int, start: int, end: int) -> bool:
        return topic not in self.markers


def test_every_stage_is_waited_on_upstream_first() -> None:
    kafka = ScriptedKafka(bootstrap_servers="unused:9092")
    progress = wait_for_stages(kafka, {("udemy-reviews", 0): 10}, timeout_s=5)
    assert [p.stage for p in progress] == list(STAGES)
    assert all(p.lag_at_cut == 0 for p in progress)


def test_a_gap_of_markers_only_counts_as_caught_up() -> None:
    kafka = ScriptedKafka(
        bootstrap_servers="unused:9092", committed={"g": 9}, markers=["long-term-stats"]
    )
    stage = GroupStage("sink", "g", ("long-term-stats",))
    [progress] = wait_for_stages(kafka, {("udemy-reviews", 0): 10}, 5, [stage])
    assert progress.lag_at_cut == 1


def test_a_stage_behind_the_cut_fails_after_the_timeout() -> None:
    kafka = ScriptedKafka(bootstrap_servers="unused:9092", committed={"fraud-filter": 3})
    with pytest.raises(dg.Failure, match=r"fraud filter .* udemy-reviews\[0\] at 3 of 10"):
        wait_for_stages(kafka, {("udemy-reviews", 0): 10}, timeout_s=0.2)
