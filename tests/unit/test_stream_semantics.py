"""The stream semantics of the aggregator's two stages, against the from-scratch reference.

The two pure stages are driven exactly as the worker drives them, over several partitions, in
any interleaving the broker allows:

- `udemy-reviews` has 3 partitions, and a record lands on whichever its producer chose (no key,
  another key encoding, another partitioner: versions of one review on several partitions); its
  position is (partition, index in it). The fraud filter reads each input partition in order,
  in any interleaving of the partitions, and routes each record by its review id (id % P) to
  valid[p] or fraud[p] by verdict: the review stage of partition p (one `VersionsState`) reads
  the two in an arbitrary merge.
- The review stage's changes go, in production order, to the course partition of their course
  (course id % Q). Course partition q (one `CourseState`) reads the change streams of the P
  review partitions in an arbitrary merge, each in its own order, in batches.
- Each course partition publishes the statistics of the courses a batch changed (the compacted
  long-term-stats / recent-stats), all recent records after a restore or a window move.
- A crash rebuilds every stage from the changelog entries it emitted so far (the in-flight
  changes stay in their topic) and the run carries on.

Whatever the interleaving, every course's state and its latest published records must equal
`compute_from_scratch` over the same records.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.core import source_position
from streaming.core.aggregation import CourseState, VersionsState
from streaming.core.stats import CourseStatistic, ReviewVersion, compute_from_scratch
from streaming.core.window import MS_PER_DAY

AS_OF = 20_000
T = 1_728_000_000_000  # as_of_time of every statistics record
COURSES = [1, 2, 3, 4, 5]  # with Q = 2..4 course partitions, they spread over all of them
TITLES = ["", "A", "B", "Kafka", "Été", "\uffff", "😀"]  # UTF-8 byte order = code point order
DAYS = [AS_OF - 400, AS_OF - 90, AS_OF - 89, AS_OF - 30, AS_OF, AS_OF + 1, AS_OF + 40]
CREATED = st.builds(
    lambda day, ms: day * MS_PER_DAY + ms,
    st.sampled_from(DAYS),
    st.sampled_from([0, 1, MS_PER_DAY - 1]),
)


@dataclass(frozen=True)
class Record:
    """One record of udemy-reviews: what the review stage reads of it, and its verdict."""

    review_id: int
    modified: int
    created: int
    halves: int
    valid: bool
    course_id: int
    title: str
    lands: int = 0
    """The partition of udemy-reviews its producer put it on."""


INPUT_PARTITIONS = 3
fresh = st.builds(
    Record,
    st.integers(0, 7),  # review id
    st.integers(0, 5),  # modified: few values, so ties and stale re-sends are common
    CREATED,
    st.integers(1, 10),
    st.booleans(),
    st.sampled_from(COURSES),
    st.sampled_from(TITLES),
    st.integers(0, INPUT_PARTITIONS - 1),
)
EDITS = ("same", "rerate", "flip", "move", "title", "later", "tie", "stale", "created")
edits = st.tuples(st.integers(1, 6), st.sampled_from(EDITS), st.integers(0, 9))
"""(n, how, value): a new record made from the record n places back: an exact duplicate
("same"), or with one thing changed."""


def edited(base: Record, how: str, value: int) -> Record:
    later = base.modified + value % 2  # an edit at the same modified or a later one
    return Record(
        base.review_id,
        {"later": base.modified + 1, "tie": base.modified, "stale": base.modified - 1}.get(
            how, base.modified if how == "same" else later
        ),
        (DAYS[value % len(DAYS)] * MS_PER_DAY + value) if how == "created" else base.created,
        1 + value if how == "rerate" else base.halves,
        not base.valid if how == "flip" else base.valid,
        COURSES[value % len(COURSES)] if how == "move" else base.course_id,
        TITLES[value % len(TITLES)] if how == "title" else base.title,
        base.lands if value < 5 else value % INPUT_PARTITIONS,  # often elsewhere than before
    )


@st.composite
def histories(draw: st.DrawFn, max_size: int = 30) -> list[Record]:
    """Records in production order: new reviews, re-ratings, verdict flips, moves between
    courses (and back), title changes and ties, equal-modified versions, stale re-sends (an
    older modified produced later) and exact duplicates of earlier records as new records."""
    records: list[Record] = []
    for spec in draw(st.lists(st.one_of(fresh, edits), max_size=max_size)):
        if isinstance(spec, Record):
            records.append(spec)
        elif records:
            n, how, value = spec
            records.append(edited(records[max(len(records) - n, 0)], how, value))
    return records


@dataclass
class Pipeline:
    """P review partitions and Q course partitions of the two stages, and their topics."""

    p: int
    q: int
    as_of_day: int = AS_OF
    records: list[tuple[int, ReviewVersion, str]] = field(default_factory=list)
    """(review id, version, title) of every record produced: the reference's input."""

    def __post_init__(self) -> None:
        self.input: dict[int, deque] = {i: deque() for i in range(INPUT_PARTITIONS)}
        self.inputs = {(p, v): deque() for p in range(self.p) for v in (True, False)}
        self.changes = {(p, q): deque() for p in range(self.p) for q in range(self.q)}
        self.versions = [VersionsState() for _ in range(self.p)]
        self.courses = [CourseState(self.as_of_day) for _ in range(self.q)]
        self.versions_log: list[list[tuple[bytes, bytes]]] = [[] for _ in range(self.p)]
        self.courses_log: list[list[tuple[bytes, bytes | None]]] = [[] for _ in range(self.q)]
        self.published: dict[int, list[CourseStatistic]] = {}
        self.positions = [0] * INPUT_PARTITIONS
        self.version_snaps: dict[int, tuple[bytes, int]] = {}
        self.course_snaps: dict[int, tuple[bytes, int]] = {}
        """Per partition: the latest snapshot and the changelog length it reflects."""

    # -- the topics ------------------------------------------------------------------------
    def produce(self, records: list[Record]) -> None:
        """Append to udemy-reviews, each on the partition its producer chose."""
        for r in records:
            offset = self.positions[r.lands]
            self.positions[r.lands] += 1
            position = source_position.order(r.lands, offset)
            version = ReviewVersion(r.modified, r.created, r.halves, r.valid, r.course_id, position)
            self.records.append((r.review_id, version, r.title))
            self.input[r.lands].append((r.review_id, version, r.title))

    def filter(self, partition: int) -> None:
        """The fraud filter: the next record of an input partition to valid or fraud, on the
        partition of its review id (it keys the copy by the id)."""
        review_id, version, title = self.input[partition].popleft()
        self.inputs[(review_id % self.p, version.valid)].append((review_id, version, title))

    def actions(self) -> list[tuple]:
        """What the broker may deliver next."""
        out: list[tuple] = [("filter", i) for i, topic in self.input.items() if topic]
        out += [("review", p, v) for (p, v), topic in self.inputs.items() if topic]
        out += [("course", q) for q in range(self.q) if self.sources(q)]
        return out

    def sources(self, q: int) -> list[int]:
        return [p for p in range(self.p) if self.changes[(p, q)]]

    # -- the stages, as the worker runs them ------------------------------------------------
    def review(self, p: int, valid: bool) -> None:
        review_id, version, title = self.inputs[(p, valid)].popleft()
        routed, entry = self.versions[p].apply(review_id, version, title.encode())
        for course_id, change in routed:  # packed, keyed by course
            self.changes[(p, course_id % self.q)].append((course_id, change))
        if entry is not None:  # keyed by review id, as the worker writes it
            self.versions_log[p].append((str(review_id).encode(), entry))

    def course(self, q: int, picks: list[int]) -> None:
        """Apply one batch: the next change of review partition `p` for each p of `picks`."""
        batch = [self.changes[(p, q)].popleft() for p in picks]
        state = self.courses[q]
        changed, entries, errors = state.apply(batch)
        assert errors == {}, f"course partition {q}: {errors}"
        assert all(course_id % self.q == q for course_id in changed)
        self.courses_log[q] += entries.items()
        for course_id in changed:
            self.published[course_id] = list(state.statistics(course_id, T))

    def publish_recent(self, q: int, course_ids: list[int]) -> None:
        for course_id in course_ids:
            self.published[course_id][1] = self.courses[q].statistics(course_id, T)[1]

    def snapshot(self) -> None:
        """Every stage's state as bytes, with the changelog length it reflects (as the worker
        writes one after a commit)."""
        for p, state in enumerate(self.versions):
            self.version_snaps[p] = (state.to_snapshot(), len(self.versions_log[p]))
        for q, state in enumerate(self.courses):
            self.course_snaps[q] = (state.to_snapshot(), len(self.courses_log[q]))

    def crash(self) -> None:
        """Every stage rebuilt from its changelog so far, from its latest snapshot and the
        changelog after it where there is one; the restored course partitions re-publish
        their recent records (as `StatsAggregator.state_restored`)."""
        for p in range(self.p):
            fresh, tail = VersionsState(), self.versions_log[p]
            if p in self.version_snaps:
                data, n = self.version_snaps[p]
                fresh, tail = VersionsState.from_snapshot(data), tail[n:]
            assert fresh.restore(tail) == 0
            assert fresh.as_dict() == self.versions[p].as_dict()
            self.versions[p] = fresh
        for q in range(self.q):
            fresh, ctail = CourseState(self.as_of_day), self.courses_log[q]
            if q in self.course_snaps:
                data, n = self.course_snaps[q]
                fresh, ctail = CourseState.from_snapshot(data, self.as_of_day), ctail[n:]
            assert fresh.restore(ctail) == 0
            live = self.courses[q]
            assert fresh.courses.keys() == live.courses.keys()
            for course_id in live.courses:
                assert fresh.statistics(course_id, T) == live.statistics(course_id, T)
            self.courses[q] = fresh
            self.publish_recent(q, list(fresh.courses))

    def advance(self, day: int) -> None:
        self.as_of_day = day
        for q, state in enumerate(self.courses):
            self.publish_recent(q, state.advance(day))

    def run(
        self,
        schedule: list[int],
        crashes: frozenset[int] = frozenset(),
        snapshots: frozenset[int] = frozenset(),
    ) -> int:
        """Deliver everything in the interleaving `schedule` chooses (each choice picks one of
        the deliveries the broker allows; once it runs out, the first), snapshotting and then
        crashing before those steps (and after the last, if named); how many steps it took."""
        choices = itertools.chain(schedule, itertools.repeat(0))
        step = 0
        while actions := self.actions():
            if step in snapshots:
                self.snapshot()
            if step in crashes:
                self.crash()
            action = actions[next(choices) % len(actions)]
            if action[0] == "filter":
                self.filter(action[1])
            elif action[0] == "review":
                self.review(action[1], action[2])
            else:
                q = action[1]
                picks: list[int] = []
                pending = {p: len(self.changes[(p, q)]) for p in self.sources(q)}
                for _ in range(1 + next(choices) % 3):  # a batch of 1..3 changes
                    options = [p for p, n in pending.items() if n]
                    if not options:
                        break
                    p = options[next(choices) % len(options)]
                    pending[p] -= 1
                    picks.append(p)
                self.course(q, picks)
            step += 1
        if step in crashes:
            self.crash()
        return step

    def drain(self, order: list[tuple] | None = None) -> None:
        """Deliver everything in a fixed order: the given actions first (each one record or
        one change), after the fraud filter routed every input record (partition by
        partition), then review topics before course partitions."""
        for i, topic in self.input.items():
            while topic:
                self.filter(i)
        for action in order or []:
            if action[0] == "filter":
                self.filter(action[1])
            elif action[0] == "review":
                self.review(action[1], action[2])
            else:
                self.course(action[1], [action[2]])
        while actions := self.actions():
            action = actions[0]
            if action[0] == "filter":
                self.filter(action[1])
            elif action[0] == "review":
                self.review(action[1], action[2])
            else:
                self.course(action[1], self.sources(action[1])[:1])

    # -- the comparison -------------------------------------------------------------------
    def statistics(self) -> dict[int, tuple[CourseStatistic, CourseStatistic]]:
        out = {}
        for q, state in enumerate(self.courses):
            for course_id in state.courses:
                assert course_id % self.q == q
                out[course_id] = state.statistics(course_id, T)
        return out

    def check(self) -> dict[int, tuple[CourseStatistic, CourseStatistic]]:
        expected = compute_from_scratch(self.records, self.as_of_day, as_of_time=T)
        assert self.statistics() == expected
        assert {cid: tuple(records) for cid, records in self.published.items()} == expected
        return expected


partition_counts = st.tuples(st.integers(1, 3), st.integers(2, 4))
schedules = st.lists(st.integers(0, 12), max_size=140)
"""Interleavings: each choice picks one of the (at most 3 + 6 + 4) deliveries the broker
allows."""


@settings(max_examples=250, deadline=None)
@given(histories(), partition_counts, schedules)
def test_any_interleaving_equals_from_scratch(
    records: list[Record], counts: tuple[int, int], schedule: list[int]
) -> None:
    pipeline = Pipeline(*counts)
    pipeline.produce(records)
    pipeline.run(schedule)
    pipeline.check()


@settings(max_examples=200, deadline=None)
@given(
    histories(),
    partition_counts,
    schedules,
    st.frozensets(st.integers(0, 80), min_size=1, max_size=3),
)
def test_a_crash_and_restore_anywhere_gives_the_same_result(
    records: list[Record], counts: tuple[int, int], schedule: list[int], crashes: frozenset[int]
) -> None:
    pipeline = Pipeline(*counts)
    pipeline.produce(records)
    pipeline.run(schedule, crashes)
    pipeline.check()


@settings(max_examples=300, deadline=None)
@given(
    histories(max_size=40),
    partition_counts,
    schedules,
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=3),
)
def test_a_restore_from_a_snapshot_and_the_changelog_after_it_gives_the_same_result(
    records: list[Record],
    counts: tuple[int, int],
    schedule: list[int],
    snapshot_then_crash: list[tuple[float, float]],
) -> None:
    """A snapshot anywhere in the run, a crash anywhere after it (the tail after the snapshot
    retracts and re-counts what the snapshot counted): the same statistics as from scratch."""
    dry = Pipeline(*counts)
    dry.produce(records)
    steps = dry.run(schedule)
    snapshots = frozenset(int(a * steps) for a, _ in snapshot_then_crash)
    crashes = frozenset(int(a * steps + b * (steps - a * steps)) for a, b in snapshot_then_crash)
    pipeline = Pipeline(*counts)
    pipeline.produce(records)
    pipeline.run(schedule, crashes, snapshots)
    pipeline.check()


@settings(max_examples=150, deadline=None)
@given(
    histories(max_size=25),
    partition_counts,
    schedules,
    st.lists(st.integers(-150, 150), min_size=1, max_size=6),
    st.integers(0, 25),
    st.integers(0, 40),
)
def test_moving_the_window_either_way_equals_from_scratch(
    records: list[Record],
    counts: tuple[int, int],
    schedule: list[int],
    steps: list[int],
    half: int,
    crash: int,
) -> None:
    pipeline = Pipeline(*counts)
    pipeline.produce(records[:half])
    pipeline.run(schedule)
    for step in steps:
        pipeline.advance(pipeline.as_of_day + step)
        pipeline.check()
    # More records arrive at the moved day, with a restore at that day.
    pipeline.produce(records[half:])
    pipeline.run(schedule[::-1], frozenset({crash}))
    pipeline.check()
    pipeline.advance(AS_OF)
    pipeline.check()


# -- the three bugs the KTable rewrite fixes ---------------------------------------------------
@pytest.mark.parametrize("first", [0, 1])
def test_a_review_moved_to_another_course_partition_leaves_its_old_course(first: int) -> None:
    pipeline = Pipeline(1, 2)  # course 1 -> partition 1, course 2 -> partition 0
    pipeline.produce(
        [Record(7, 10, AS_OF * MS_PER_DAY, 10, True, 1, "one"), Record(7, 11, 0, 4, True, 2, "two")]
    )
    # Both versions through the review stage, then either course partition first.
    pipeline.drain(
        [("review", 0, True), ("review", 0, True), ("course", first, 0), ("course", 1 - first, 0)]
    )
    expected = pipeline.check()
    assert expected[1][0]["count_reviews"] == 0
    assert expected[2][0]["count_reviews"] == 1
    assert pipeline.published[1][0]["count_reviews"] == 0


@pytest.mark.parametrize("later_valid", [True, False])
@pytest.mark.parametrize("valid_topic_first", [True, False])
def test_a_verdict_flip_at_equal_modified_takes_the_later_position(
    later_valid: bool, valid_topic_first: bool
) -> None:
    pipeline = Pipeline(1, 2)
    created = AS_OF * MS_PER_DAY
    pipeline.produce(
        [
            Record(3, 50, created, 8, not later_valid, 4, "T"),
            Record(3, 50, created, 8, later_valid, 4, "T"),
        ]
    )
    pipeline.drain([("review", 0, valid_topic_first), ("review", 0, not valid_topic_first)])
    expected = pipeline.check()
    assert expected[4][0]["count_reviews"] == (1 if later_valid else 0)


@pytest.mark.parametrize("filter_order", list(itertools.permutations(range(INPUT_PARTITIONS))))
def test_versions_on_several_input_partitions_count_once_ties_to_the_greater_partition(
    filter_order: tuple[int, ...],
) -> None:
    """A producer with no key (or another key) put one review's versions on three partitions:
    the fraud filter meets them on one review partition, whatever order it reads the input
    partitions in; at equal `modified` the greater (partition, offset) is current."""
    created = AS_OF * MS_PER_DAY
    pipeline = Pipeline(2, 2)
    pipeline.produce(
        [
            Record(5, 30, created, 10, True, 1, "T", lands=2),  # the current one: partition 2
            Record(5, 30, created, 2, True, 1, "T", lands=0),  # a tie, on a lower partition
            Record(5, 29, created, 4, True, 2, "T", lands=1),  # older, another course
            Record(5, 30, created, 6, True, 2, "T", lands=1),  # a tie on partition 1
        ]
    )
    for i in filter_order:
        while pipeline.input[i]:
            pipeline.filter(i)
    pipeline.drain()
    expected = pipeline.check()
    assert expected[1][0]["count_reviews"] == 1 and expected[1][0]["sum_rating"] == 5.0
    assert expected[2][0]["count_reviews"] == 0


def test_the_course_title_does_not_depend_on_the_arrival_order() -> None:
    created = AS_OF * MS_PER_DAY
    records = [
        Record(1, 5, created, 10, True, 3, "B"),
        Record(2, 5, created, 10, True, 3, "A"),  # a tie: the greater title wins
        Record(3, 4, created, 10, True, 3, "Z"),
        Record(4, 6, created, 10, False, 3, "Fraud, latest"),  # fraud records name it too
        Record(1, 7, created, 10, True, 4, "moved away"),
        Record(1, 2, created, 10, True, 3, "stale"),
    ]
    titles = set()
    for order in itertools.permutations(records):
        for p, q in ((1, 2), (3, 2), (2, 3)):
            pipeline = Pipeline(p, q)
            pipeline.produce(list(order))
            pipeline.drain()
            expected = pipeline.check()
            titles.add((expected[3][0]["course_title"], expected[4][0]["course_title"]))
    assert titles == {("Fraud, latest", "moved away")}


def test_title_ties_go_to_the_greater_code_point_sequence() -> None:
    """Titles travel and are compared as UTF-8 bytes: the same order as the text's code points
    (U+1F600 after U+FFFF, unlike UTF-16), whatever the arrival order."""
    created = AS_OF * MS_PER_DAY
    titles = ["\uffff", "😀", "é", "z"]
    for order in itertools.permutations(titles):
        records = [Record(i, 9, created, 10, True, 5, t) for i, t in enumerate(order)]
        for p, q in ((1, 2), (3, 2)):
            pipeline = Pipeline(p, q)
            pipeline.produce(records)
            pipeline.drain()
            assert pipeline.check()[5][0]["course_title"] == "😀"


def test_a_title_repeated_later_still_wins_after_a_restore() -> None:
    """The restore property's minimal counterexample: a later record repeating the current
    title (modified 20) must keep beating a rival at modified 15 after a crash."""
    pipeline = Pipeline(1, 2)
    created = AS_OF * MS_PER_DAY
    pipeline.produce(
        [Record(1, 10, created, 10, True, 1, "A"), Record(2, 20, created, 10, True, 1, "A")]
    )
    pipeline.drain()
    pipeline.crash()
    pipeline.produce([Record(3, 15, created, 10, True, 1, "B")])
    pipeline.drain()
    pipeline.check()
