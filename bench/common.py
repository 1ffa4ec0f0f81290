"""Shared benchmark plumbing: input data on the real broker, and results with their context.

Two inputs: `produce_reviews` (n distinct reviews, one topic) and the edit-heavy aggregate
input (`edit_heavy_records`: a valid and a fraud topic as the fraud filter leaves them, about a
fifth of the records edits of earlier reviews), with the from-scratch reference of the latter
(`edit_heavy_reference`) and `count_mismatches`, which compares an engine's long-term statistics
with it.
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import re
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streaming.core.avro_codec import confluent_frame, split_confluent
from streaming.core.ratings import BUCKET_FIELDS, rating_halves
from streaming.core.source_position import HEADER, encode, order, unorder
from streaming.core.stats import CourseStatistic, ReviewVersion, compute_from_scratch
from streaming.core.window import epoch_day
from streaming.serde import Registry, local_schema
from streaming.settings import Settings, schemas_dir
from streaming.sink.connect import ConnectClient
from streaming.topic_reader import read_records

RESULTS = Path(__file__).resolve().parent / "results"
COURSES = 40
PARTITIONS = 4
"""The system of record's partitions a keyless producer spreads the edit-heavy input over."""
_T0 = 1_700_000_000_000
_STEP_MS = 997


def review(i: int) -> dict:
    """A realistic review: mostly empty text, skewed ratings, a few dozen courses."""
    course = i % COURSES
    return {
        "id": 10_000_000 + i,
        "title": None,
        "content": "" if i % 5 else f"Clear explanations, good pace. Review #{i} — très bien",
        "rating": ("5.0", "5.0", "5.0", "4.5", "5.0", "4.0", "5.0", "3.5")[i % 8],
        "created": _T0 + i * _STEP_MS,
        "modified": _T0 + i * _STEP_MS,
        "user": {"title": f"Student {i}", "name": "Student", "display_name": f"Student {i}"},
        "course": {"id": 1_000_000 + course, "title": f"Course {course}", "url": f"/c-{course}/"},
    }


def _producer(settings: Settings) -> Producer:
    return Producer(
        settings.kafka_config(
            **{
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 2_000_000,
                "enable.idempotence": True,
            }
        )
    )


def _produce_all(settings: Settings, records: Iterable[tuple[str, dict, int | None]]) -> None:
    """(topic, review, position) records, Avro review.avsc with the Confluent header, keyed by
    review id (Java-compatible partitioning), with the fraud filter's source-position header
    where a position is given."""
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    schema = local_schema("review.avsc")
    p = _producer(settings)
    buf = io.BytesIO()
    for topic, r, position in records:
        buf.seek(0)
        buf.truncate()
        schemaless_writer(buf, schema, r)
        value = confluent_frame(schema_id, buf.getvalue())
        headers = None if position is None else [(HEADER, encode(*unorder(position)))]
        while True:
            try:
                p.produce(topic, value, str(r["id"]).encode(), headers=headers)  # type: ignore[arg-type]  # invariant list (stub)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120) != 0:
        raise RuntimeError("benchmark input not fully delivered")


def produce_reviews(settings: Settings, topic: str, n: int) -> None:
    """n distinct Avro reviews, keyed by review id, Java-compatible partitioning, without
    headers: the fraud filter's input as the pipeline API writes it."""
    _produce_all(settings, ((topic, review(i), None) for i in range(n)))


EDIT_SEED = 7
EDIT_FRACTION = 0.2
FRAUD_FRACTION = 0.05
EDIT_KINDS: dict[str, float] = {
    "rerate": 0.30,  # a later modified, another rating
    "flip": 0.15,  # a later modified, the other topic than the review's current one
    "move": 0.20,  # a later modified, another course
    "same_modified": 0.10,  # the current modified, another rating: the later position wins
    "stale": 0.15,  # an earlier modified than the current one: loses, offers its title only
    "rename": 0.10,  # a later modified, the course's title changed
}
"""The mix of the edits (fractions of them), drawn with a seeded random: deterministic."""
_RATINGS = ("5.0", "4.5", "4.0", "3.5", "3.0", "2.5", "2.0", "1.5", "1.0", "0.5")


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of the edit-heavy input: the Review as ingested, the fraud filter's verdict
    (its topic), its index in the simulated system of record and what it is ("new" or an edit
    kind of EDIT_KINDS)."""

    review: dict
    valid: bool
    position: int
    kind: str


class _Reviews:
    """The current version of every review generated so far, columnar (what an edit needs)."""

    def __init__(self) -> None:
        self.modified = array("q")
        self.rating = array("b")  # index into _RATINGS
        self.course = array("b")
        self.valid = bytearray()

    def add(self, modified: int, rating: str, course: int, valid: bool) -> None:
        self.modified.append(modified)
        self.rating.append(_RATINGS.index(rating))
        self.course.append(course)
        self.valid.append(valid)


def _course(course: int, titles: list[str]) -> dict:
    return {"id": 1_000_000 + course, "title": titles[course], "url": f"/c-{course}/"}


def _edit(
    rng: random.Random, reviews: _Reviews, titles: list[str], i: int
) -> tuple[dict, bool, str]:
    """An edit, at position i, of a random earlier review: (Review, valid, kind)."""
    kind = rng.choices(list(EDIT_KINDS), weights=list(EDIT_KINDS.values()))[0]
    k = rng.randrange(len(reviews.valid))
    modified, course = _T0 + i * _STEP_MS, reviews.course[k]
    rating, valid = _RATINGS[reviews.rating[k]], bool(reviews.valid[k])
    if kind in ("rerate", "same_modified"):
        rating = rng.choice([r for r in _RATINGS if r != rating])
        if kind == "same_modified":
            modified = reviews.modified[k]
    elif kind == "flip":
        valid = not valid
    elif kind == "move":
        course = rng.choice([c for c in range(COURSES) if c != course])
    elif kind == "rename":
        edition = re.search(r"\(edition (\d+)\)$", titles[course])
        titles[course] = f"Course {course} (edition {int(edition[1]) + 1 if edition else 2})"
    r = {**review(k), "rating": rating, "modified": modified, "course": _course(course, titles)}
    if kind == "stale":
        r["modified"] = reviews.modified[k] - rng.randint(1, 3_600_000)
        r["rating"] = rng.choice(_RATINGS)
        r["course"]["title"] = f"Course {course}"  # a version from before any rename
        return r, rng.random() >= FRAUD_FRACTION, kind
    reviews.modified[k], reviews.course[k] = modified, course
    reviews.rating[k], reviews.valid[k] = _RATINGS.index(rating), valid
    return r, valid, kind


def edit_heavy_records(
    n: int, seed: int = EDIT_SEED, keyless: bool = False
) -> Iterator[InputRecord]:
    """The edit-heavy aggregate input, deterministic for (n, seed), in system-of-record order.

    Positions in the system of record (`source_position.order`): one partition's offsets (all
    versions of a review on one partition, as keyed producers write them), or with `keyless`
    each record on a random one of PARTITIONS partitions (a producer that sends no key), so one
    review's versions sit apart and equal-`modified` ties go to the greater partition.

    About 80 % new reviews (`review(k)` for the k-th one, carrying its course's current title;
    FRAUD_FRACTION of them fraud), about 20 % edits of an earlier review (EDIT_KINDS). An edit's
    modified is the record's own time (`review`'s clock at its position), so it is later than
    every earlier version of the review; 40 courses, as `review`."""
    rng = random.Random(seed)
    lands, offsets = random.Random(f"keyless-{seed}"), [0] * PARTITIONS
    reviews, titles = _Reviews(), [f"Course {c}" for c in range(COURSES)]

    def position(i: int) -> int:
        if not keyless:
            return i
        p = lands.randrange(PARTITIONS)
        offsets[p] += 1
        return order(p, offsets[p] - 1)

    for i in range(n):
        if i == 0 or rng.random() >= EDIT_FRACTION:
            k = len(reviews.valid)
            r = {**review(k)}
            r["course"] = _course(k % COURSES, titles)
            valid = rng.random() >= FRAUD_FRACTION
            reviews.add(r["modified"], r["rating"], k % COURSES, valid)
            yield InputRecord(r, valid, position(i), "new")
        else:
            r, valid, kind = _edit(rng, reviews, titles, i)
            yield InputRecord(r, valid, position(i), kind)


def as_version(record: InputRecord) -> tuple[int, ReviewVersion, str]:
    """(review id, version, course title): one record as `compute_from_scratch` takes it."""
    r = record.review
    version = ReviewVersion(
        r["modified"],
        r["created"],
        rating_halves(r["rating"]),
        record.valid,
        r["course"]["id"],
        record.position,
    )
    return r["id"], version, r["course"]["title"]


Expected = dict[int, tuple[int, float]]
"""Per course id: the (count_reviews, sum_rating) its final long-term statistic must show."""


@dataclass
class EditHeavyInput:
    """What the edit-heavy input holds and what its statistics must be."""

    valid_records: int
    fraud_records: int
    edit_fraction: float
    reference: dict[int, CourseStatistic]
    """The all-time statistic per course by the reference ("exact" semantics)."""
    append_only: Expected
    """Every valid-topic record counted once in its own course, nothing retracted: what the
    original Kafka Streams topology and the Quix app compute."""

    @property
    def records(self) -> int:
        return self.valid_records + self.fraud_records

    @property
    def exact(self) -> Expected:
        return {c: (s["count_reviews"], s["sum_rating"]) for c, s in self.reference.items()}


def edit_heavy_reference(
    records: Iterable[InputRecord], as_of_day: int | None = None
) -> EditHeavyInput:
    """The reference and the append-only expectation of the records (`compute_from_scratch`)."""
    versions: list[tuple[int, ReviewVersion, str]] = []
    counts = {"valid": 0, "fraud": 0, "edits": 0}
    append: dict[int, list] = {}
    for rec in records:
        versions.append(as_version(rec))
        counts["valid" if rec.valid else "fraud"] += 1
        counts["edits"] += rec.kind != "new"
        if rec.valid:
            totals = append.setdefault(rec.review["course"]["id"], [0, 0.0])
            totals[0] += 1
            totals[1] += rating_halves(rec.review["rating"]) / 2
    day = epoch_day(int(time.time() * 1000)) if as_of_day is None else as_of_day
    reference = {c: pair[0] for c, pair in compute_from_scratch(versions, day).items()}
    n = counts["valid"] + counts["fraud"]
    return EditHeavyInput(
        counts["valid"],
        counts["fraud"],
        round(counts["edits"] / n, 4) if n else 0.0,
        reference,
        {c: (t[0], t[1]) for c, t in append.items()},
    )


def produce_edit_heavy(
    settings: Settings,
    valid: str,
    fraud: str,
    n: int,
    seed: int = EDIT_SEED,
    keyless: bool = False,
) -> EditHeavyInput:
    """Produce the edit-heavy input into `valid` and `fraud`, as the fraud filter leaves them
    (keyed by the review id, each record's position in the system of record in its header);
    its reference. Run it in a child process (`in_child`) where RSS is measured afterwards.
    The records are generated twice (deterministic), not kept: 1M reviews as dicts would take
    gigabytes."""
    records = edit_heavy_records(n, seed, keyless)
    _produce_all(settings, ((valid if r.valid else fraud, r.review, r.position) for r in records))
    return edit_heavy_reference(edit_heavy_records(n, seed, keyless))


def in_child(fn: Any, *args: Any) -> Any:
    """fn(*args) in a spawned child process, its result returned: the producer's buffers would
    otherwise inflate this process's RSS, and an aggregator's state would reuse them, hiding
    its memory."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


COMPARED = ("count_reviews", "sum_rating", *BUCKET_FIELDS, "last_review_time", "course_title")


@dataclass
class Mismatches:
    """Courses whose latest long-term statistic differs from the reference, of all courses."""

    wrong: int
    courses: int
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.wrong} of {self.courses} courses" + (
            f" (e.g. {'; '.join(self.examples)})" if self.examples else ""
        )


def _plain_schema(name: str) -> dict:
    """A schema of `schemas/` without logical types: timestamps read as epoch ms."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return cast("dict", parse_schema(strip(json.loads((schemas_dir() / name).read_text()))))


def latest_statistics(settings: Settings, topic: str) -> dict[int, dict]:
    """The latest committed CourseStatistic per course of a statistics topic, from its start."""
    schema = _plain_schema("course_statistic.avsc")
    latest: dict[int, dict] = {}
    for msg in read_records(settings, topic):
        if msg.value() is None:
            continue
        value = cast(bytes, msg.value())  # not None: checked above
        rec = cast("dict", schemaless_reader(io.BytesIO(split_confluent(value)[1]), schema, schema))
        latest[rec["course_id"]] = rec
    return latest


def _differences(got: dict, want: CourseStatistic) -> list[str]:
    out = [f"{k} {got[k]!r} != {want[k]!r}" for k in COMPARED if got[k] != want[k]]
    if abs(got["average_rating"] - want["average_rating"]) > 1e-9:
        out.append(f"average_rating {got['average_rating']!r} != {want['average_rating']!r}")
    return out


def count_mismatches(
    settings: Settings, topic: str, reference: dict[int, CourseStatistic], examples: int = 3
) -> Mismatches:
    """Compare the latest statistic per course of `topic` (long-term, read_committed) with the
    reference's all-time ones: a course missing, extra or with any compared field different
    counts once."""
    latest = latest_statistics(settings, topic)
    wrong, shown = 0, list[str]()
    for course in sorted(latest.keys() | reference.keys()):
        if course not in latest:
            diffs = ["missing from the output"]
        elif course not in reference:
            diffs = ["not in the reference"]
        else:
            diffs = _differences(latest[course], reference[course])
        if diffs:
            wrong += 1
            if len(shown) < examples:
                shown.append(f"course {course}: {', '.join(diffs[:3])}")
    return Mismatches(wrong, len(latest.keys() | reference.keys()), shown)


def write_result(name: str, figures: dict, command: str) -> Path:
    """bench/results/<name>.json with the figures, the command and the machine they came from."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(
        json.dumps(
            {
                "figures": figures,
                "command": command,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "versions": {pkg: version(pkg) for pkg in ("confluent-kafka", "fastavro", "numba")},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"figures written to {out}; reproduce with: {command}")
    return out


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def remove_connector(connect: ConnectClient, admin: AdminClient, name: str) -> None:
    """A benchmark's own connector gone, with its consumer group: stopped before deletion, so
    no task consumer rejoins the deleted group."""
    connect.stop(name)
    connect.wait_for(name, lambda s: s.state == "STOPPED" and not s.tasks, 60)
    connect.delete(name)
    connect.close()
    admin.delete_consumer_groups([f"connect-{name}"])[f"connect-{name}"].result(30)


def own_course_review(
    review_id: int, created_ms: int, rating: str, course: int | None = None
) -> dict:
    """A review (the Avro record's dict) of a course of its own, unless `course` is given: a
    course's statistics row then appears exactly when this review is through the pipeline."""
    course = review_id if course is None else course
    return {
        "id": review_id,
        "title": None,
        "content": "",
        "rating": rating,
        "created": created_ms,
        "modified": created_ms,
        "user": {"title": "Bench", "name": "Bench", "display_name": f"Bench {review_id}"},
        "course": {"id": course, "title": f"Course {course}", "url": "/bench/"},
    }
