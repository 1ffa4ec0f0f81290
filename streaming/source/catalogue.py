"""What the local review API serves: courses and the current version of each review.

Reviews are listed newest first (created desc, id desc), as Udemy lists them. The generated
sample stays in its numpy columns; reviews added while serving (`add_review`, for tests of
reviews arriving mid-walk) live in a small side list, and each course keeps an ordered array of
references into both. Writers replace a course's arrays under a lock and readers take one
snapshot of them, so pages are consistent without readers locking.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from streaming.core.review_mapping import json_to_review, review_to_json
from streaming.source.generator import Course, Sample


@dataclass(frozen=True)
class _CourseView:
    """One course's reviews newest first: refs (>= 0 sample row, < 0 added review ~ref) and the
    negated sort keys, ascending, that `np.searchsorted` needs to place a new review."""

    refs: np.ndarray
    neg_created_ms: np.ndarray
    neg_ids: np.ndarray

    def position(self, created_ms: int, review_id: int) -> int:
        low = int(np.searchsorted(self.neg_created_ms, -created_ms, side="left"))
        high = int(np.searchsorted(self.neg_created_ms, -created_ms, side="right"))
        return low + int(np.searchsorted(self.neg_ids[low:high], -review_id, side="left"))

    def without(self, index: int) -> _CourseView:
        return _CourseView(
            np.delete(self.refs, index),
            np.delete(self.neg_created_ms, index),
            np.delete(self.neg_ids, index),
        )

    def with_ref(self, index: int, ref: int, created_ms: int, review_id: int) -> _CourseView:
        return _CourseView(
            np.insert(self.refs, index, ref),
            np.insert(self.neg_created_ms, index, -created_ms),
            np.insert(self.neg_ids, index, -review_id),
        )


class Catalogue:
    """Courses and their reviews as the API lists them; safe to read while `add_review` runs."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.courses: tuple[Course, ...] = sample.courses
        self._positions = sample.course_positions
        self._lock = threading.Lock()
        self._added: list[dict[str, Any]] = []
        self._added_keys: list[tuple[int, int]] = []  # (course position, created ms)
        self._added_ids: dict[int, int] = {}  # review id -> index in _added
        by_course = np.argsort(sample.course_index, kind="stable")
        bounds = np.searchsorted(sample.course_index[by_course], np.arange(len(self.courses) + 1))
        self._views: list[_CourseView] = []
        for start, end in pairwise(bounds.tolist()):
            rows = by_course[start:end][::-1].astype(np.int64)
            self._views.append(_CourseView(rows, -sample.created_s[rows] * 1000, -sample.ids[rows]))

    def course(self, course_id: int) -> Course | None:
        position = self._positions.get(course_id)
        return None if position is None else self.courses[position]

    def review_count(self, course_id: int) -> int:
        """Number of reviews of a course (KeyError for an unknown course)."""
        return len(self._views[self._positions[course_id]].refs)

    @property
    def total_reviews(self) -> int:
        return sum(len(view.refs) for view in self._views)

    def page(
        self, course_id: int, offset: int, limit: int, fields: Sequence[str]
    ) -> tuple[int, list[dict[str, Any]]]:
        """(count, items) of a course: `limit` items from `offset`, newest first, from one
        consistent snapshot. KeyError for an unknown course."""
        view = self._views[self._positions[course_id]]
        refs = view.refs[offset : offset + limit]
        added = refs < 0
        if not added.any():
            return len(view.refs), self.sample.items(refs, fields)
        items: list[dict[str, Any]] = [{} for _ in refs]
        for index, item in zip(
            np.flatnonzero(~added).tolist(), self.sample.items(refs[~added], fields), strict=True
        ):
            items[index] = item
        for index, ref in zip(np.flatnonzero(added).tolist(), refs[added].tolist(), strict=True):
            items[index] = _project(self._added[~ref], fields)
        return len(view.refs), items

    def add_review(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Serve a new review, or a new version of a known one (same id), from now on.

        `item` is a Udemy result item; it is validated by the pipeline's own mapping (raising
        ReviewMappingError) and stored in canonical form, which is returned. KeyError when its
        course is not in the catalogue.
        """
        review = json_to_review(item)
        course_id = review["course"]["id"]
        if course_id not in self._positions:
            raise KeyError(f"course {course_id} is not in the catalogue")
        stored = review_to_json(review)
        position = self._positions[course_id]
        review_id, created_ms = review["id"], review["created"]
        with self._lock:
            current = self._locate(review_id)
            if current is not None:
                old_position, old_created_ms = current
                old_view = self._views[old_position]
                index = old_view.position(old_created_ms, review_id)
                self._views[old_position] = old_view.without(index)
            self._added.append(stored)
            self._added_keys.append((position, created_ms))
            self._added_ids[review_id] = len(self._added) - 1
            view = self._views[position]
            index = view.position(created_ms, review_id)
            self._views[position] = view.with_ref(index, -len(self._added), created_ms, review_id)
        return review_to_json(review)

    def _locate(self, review_id: int) -> tuple[int, int] | None:
        """(course position, created ms) of the version served now, None for a new id."""
        added = self._added_ids.get(review_id)
        if added is not None:
            return self._added_keys[added]
        ids = self.sample.ids
        row = int(np.searchsorted(ids, review_id))
        if row < len(ids) and ids[row] == review_id:
            return int(self.sample.course_index[row]), int(self.sample.created_s[row]) * 1000
        return None


def _project(item: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """An added review restricted to `fields`; `user_modified` mirrors `modified`."""
    out: dict[str, Any] = {}
    for field in fields:
        value = item["modified"] if field == "user_modified" else item.get(field)
        out[field] = dict(value) if isinstance(value, dict) else value
    return out
