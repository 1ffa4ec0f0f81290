"""Histories of real edits for the integration tests, and an independent pandas reference.

A history is the records of `udemy-reviews` in production order: new reviews, re-ratings,
verdict flips, moves between courses (and back), versions with equal `modified`, stale re-sends,
exact re-sends and title changes (with ties), created over 200 days so the 90-day window
matters. `expected_stats` computes every course's statistics from scratch with pandas, by the
contract and nothing of the stream's code: current version = greatest (modified, position in
udemy-reviews), title = greatest (modified, title) over every record of the course.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

from streaming.core.review_bytes import murmur2, to_positive
from streaming.core.window import MS_PER_DAY

RATINGS = ["5.0"] * 6 + ["4.5", "4.0", "3.5", "3.0", "2.0", "1.5", "1.0", "0.5"]
FIELDS = [
    "course_id",
    "course_title",
    "count_reviews",
    "sum_rating",
    "count_five_stars",
    "count_four_stars",
    "count_three_stars",
    "count_two_stars",
    "count_one_star",
    "count_zero_star",
    "last_review_time",
]


def partition_of(review_id: int, partitions: int = 4) -> int:
    """Kafka's default partitioner on the review id key (what every producer of ours uses)."""
    return to_positive(murmur2(str(review_id).encode())) % partitions


def courses_on_distinct_partitions(base: int, n: int, partitions: int = 4) -> list[int]:
    """n course ids from `base` on, cycling through every partition of the changes topic, so
    moves cross partitions (and some stay on one)."""
    by_partition: dict[int, list[int]] = {p: [] for p in range(partitions)}
    course = base
    while min(len(v) for v in by_partition.values()) < (n + partitions - 1) // partitions:
        by_partition[partition_of(course, partitions)].append(course)
        course += 1
    out = [c for group in zip(*by_partition.values(), strict=False) for c in group]
    return out[:n]


def history(
    n_reviews: int, now_ms: int, courses: list[int], first_id: int, seed: int = 1
) -> list[dict[str, Any]]:
    """Every record of udemy-reviews in order; each is a Review dict plus `_fraud` (the verdict
    the aggregator-only tests route it by; the whole pipeline's rule ignores it)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []

    def title(course: int) -> str:
        return f"Course {course}" + rng.choice(["", " (2nd edition)", " — Ünïcode", " Z"])

    latest: dict[int, dict[str, Any]] = {}
    for i in range(n_reviews):
        course = rng.choice(courses)
        created = now_ms - rng.randrange(200 * MS_PER_DAY)
        rec = {
            "id": first_id + i,
            "title": None,
            "content": "",
            "rating": rng.choice(RATINGS),
            "created": created,
            "modified": created,
            "user": {"title": "U", "name": "U", "display_name": "U"},
            "course": {"id": course, "title": title(course), "url": f"/c{course}/"},
            "_fraud": rng.random() < 0.1,
        }
        out.append(rec)
        latest[rec["id"]] = rec
    ids = list(latest)
    for _ in range(n_reviews):
        base = latest[rng.choice(ids)]
        kind = rng.choice(["rerate", "flip", "move", "tie", "stale", "resend", "retitle"])
        edit = {**base, "course": dict(base["course"])}
        if kind == "stale":  # an older version arriving late: must change nothing
            edit["modified"] = base["modified"] - rng.randrange(1, 10**6)
            edit["rating"] = rng.choice(RATINGS)
            edit["_fraud"] = rng.random() < 0.5
        elif kind != "resend" and kind != "tie":
            edit["modified"] = base["modified"] + rng.randrange(1, 10**8)
        if kind in ("rerate", "tie"):
            edit["rating"] = rng.choice(RATINGS)
        if kind in ("flip", "tie"):
            edit["_fraud"] = not base["_fraud"]
        if kind == "move" or (kind == "tie" and rng.random() < 0.5):
            course = rng.choice(courses)
            edit["course"] = {"id": course, "title": title(course), "url": f"/c{course}/"}
        if kind == "retitle":
            edit["course"]["title"] = title(edit["course"]["id"])
        out.append(edit)
        if kind != "stale":
            latest[edit["id"]] = edit
    return out


def with_positions(records: list[dict[str, Any]], partitions: int = 4) -> list[tuple[int, int]]:
    """(partition, offset) each record gets in udemy-reviews when produced in order alone."""
    next_offset = [0] * partitions
    out = []
    for rec in records:
        p = partition_of(rec["id"], partitions)
        out.append((p, next_offset[p]))
        next_offset[p] += 1
    return out


def expected_stats(
    records: list[dict[str, Any]],
    positions: list[tuple[int, int]],
    as_of_day: int,
    fraud: list[bool] | None = None,
) -> pd.DataFrame:
    """Independent computation: (recent, course_id) -> the CourseStatistic fields."""
    df = pd.DataFrame(
        [
            {
                "id": r["id"],
                "partition": pos[0],
                "offset": pos[1],
                "course_id": r["course"]["id"],
                "course_title": r["course"]["title"],
                "valid": not (fraud[n] if fraud is not None else r["_fraud"]),
                "halves": int(float(r["rating"]) * 2),
                "created": r["created"],
                "modified": r["modified"],
            }
            for n, (r, pos) in enumerate(zip(records, positions, strict=True))
        ]
    )
    # a review is its value's id; its current version the greatest (modified, partition, offset)
    current = df.sort_values(["modified", "partition", "offset"]).groupby("id").tail(1)
    counted = current[current.valid].copy()
    counted["day"] = counted.created // MS_PER_DAY
    titles = df.sort_values(["modified", "course_title"]).groupby("course_id").course_title.last()
    rows = []
    for recent in (False, True):
        part = counted[counted.day.between(as_of_day - 89, as_of_day)] if recent else counted
        for course_id in df.course_id.unique():
            c = part[part.course_id == course_id]
            stars = c.halves // 2
            rows.append(
                {
                    "recent": recent,
                    "course_id": int(course_id),
                    "course_title": titles[course_id],
                    "count_reviews": len(c),
                    "sum_rating": c.halves.sum() / 2,
                    "count_five_stars": int((stars == 5).sum()),
                    "count_four_stars": int((stars == 4).sum()),
                    "count_three_stars": int((stars == 3).sum()),
                    "count_two_stars": int((stars == 2).sum()),
                    "count_one_star": int((stars == 1).sum()),
                    "count_zero_star": int((stars == 0).sum()),
                    "last_review_time": int(c.created.max()) if len(c) else 0,
                }
            )
    return (
        pd.DataFrame(rows, columns=["recent", *FIELDS])
        .set_index(["recent", "course_id"])
        .sort_index()
    )


def review_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The Review record itself (without the test's own keys)."""
    return {k: v for k, v in rec.items() if not k.startswith("_")}
