"""The chaos run's oracle: the pipeline's semantics re-implemented from the product brief, alone.

The chaos run reads every record of `udemy-reviews` back, feeds it here, and compares what this
module expects with the statistics the stream published. It is only a proof if it cannot share
a bug with the stream, so it imports nothing from `streaming/` or `orchestration/`: the standard
library, fastavro, and the `.avsc` files of `schemas/`. It is plain Python, written for clarity:
nothing in it is quadratic; a million records take about a minute and 0.4 GB (0.3 GB without
the history `edit_kinds` reads).

The rules (docs/semantics.md, schemas/course_statistic.avsc):

- A value is Confluent-framed (magic 0, 4-byte big-endian schema id, Avro body). Its strings
  are read as Java reads them: invalid UTF-8 becomes U+FFFD, an encoded surrogate (ED A0..BF
  xx) one U+FFFD for its three bytes, a sequence cut short by the end of the string one U+FFFD.
- The validity rule: a record is no review, counted nowhere and naming no course, when it is
  *undecodable* (shorter than 5 bytes, another magic byte, an unknown schema id, a body that
  is not exactly one record of its writer schema (by the Avro spec, below) readable as a
  Review), a *tombstone* (null value), has U+0000 in any text field (*text*), a rating that is
  no half step in 0.5 .. 5.0 ("5", "4.50" are read as numbers and accepted: *rating*), or a
  `created` or `modified` outside years 1 .. 9999 (*timestamp*). The first three never leave
  the fraud filter (its dead letters); the last two are routed by their verdict and refused by
  the aggregator. A refused version never supersedes another.
- Fraud: `to_positive(murmur2(C3 01 + fingerprint + body)) % 100 < 5`, Kafka's murmur2, the
  8-byte little-endian CRC-64-AVRO fingerprint of review.avsc's Parsing Canonical Form, and the
  body the encoding of the *decoded* review (the original app hashed `review.toByteBuffer()`):
  every readable record is resolved into the Review schema, its strings decoded as above, and
  re-encoded; that encoding is hashed, whatever bytes arrived.
- A review is identified by its value's `id`, never by the record's key (producers may send
  none, or another encoding). Its current version: the greatest (modified, partition, offset) in
  udemy-reviews, wherever its versions landed. It counts, in the course it names, only if it is
  valid.
- A course exists from the first readable record naming it (any version, valid or fraud,
  current or stale): it then has an all-time record and a recent record, with zero statistics
  when nothing counts there (only fraud reviews, or all of them moved away). A course named by
  no readable record has neither.
- Its title: the course.title of its record with the greatest modified, ties to the greater
  title by code point, over every readable record ever ingested for it.
- All-time statistics over its counted reviews; recent ones on as-of day D over those created
  on UTC days D-89 .. D (window_start_day, window_end_day), every course included (a course
  whose reviews left the window has a zero record). average_rating = sum / count, 0.0 when
  empty; last_review_time = the greatest `created` of the counted reviews (of the window, for
  recent), 0 when there are none. as_of_time (emission time) is not a property of the data and
  is not compared.

Choices where the brief is silent, taken from the stream's behaviour:
- Timestamps are read as plain longs (logical types are dropped from the schemas before
  decoding); the validity rule bounds them.
- A body must be Avro by the spec, checked before fastavro decodes it (`walk`): a union
  branch or enum index outside 0 .. n-1 (fastavro reads -1 as the last branch), a varint
  longer than 10 bytes (fastavro reads it, Java's decoder does not) or beyond 64 bits (Java
  and the stream wrap it silently), a field the Review drops cut short (fastavro skips it
  unchecked) make it malformed. The stream checks bodies written with the Review schema the
  same way, but reads those of another schema with fastavro alone.
- The key is not read: versions are grouped by the review id in the value, on any partitions.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import math
import re
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
MS_PER_DAY = 86_400_000
WINDOW_DAYS = 90
FRAUD_PERCENT = 5
VALID, FRAUD, DEAD = "valid", "fraud", "dead-letter"

Position = tuple[int, int]
"""(partition, offset) of a record in udemy-reviews."""

Statistic = dict[str, Any]
"""The fields of a CourseStatistic record this oracle predicts (all but as_of_time)."""

# -- Kafka's murmur2 --------------------------------------------------------------------------

MURMUR2_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`, as the signed 32-bit int Java returns (ints kept masked)."""
    length = len(data)
    whole = length - length % 4
    h = (MURMUR2_SEED ^ length) & _MASK
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[whole:]
    if tail:
        for i in reversed(range(len(tail))):  # Java's switch falls through 3, 2, 1
            h ^= tail[i] << (8 * i)
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(x: int) -> int:
    """Kafka's `Utils.toPositive`: clear the sign bit (MIN_VALUE maps to 0, unlike abs)."""
    return x & 0x7FFFFFFF


def is_fraud(single_object: bytes) -> bool:
    """The default fraud rule on a review's Avro single-object encoding."""
    return to_positive(murmur2(single_object)) % 100 < FRAUD_PERCENT


# -- schemas and decoding ---------------------------------------------------------------------


def without_logical_types(schema: Any) -> Any:
    """A copy of a JSON schema without `logicalType`: timestamps decode as the longs they are
    (fastavro would build datetimes, and fail beyond year 9999); the binary form is the same."""
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(v) for v in schema]
    return schema


def load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


UNDECODABLE, TOMBSTONE, TEXT, RATING, TIMESTAMP = (
    "undecodable", "tombstone", "text", "rating", "timestamp"
)  # fmt: skip
REFUSAL_KINDS = (UNDECODABLE, TOMBSTONE, TEXT, RATING, TIMESTAMP)
ROUTED_KINDS = (RATING, TIMESTAMP)
"""Kinds of invalid record the fraud filter still routes (the aggregator refuses them)."""
FIRST_MS, LAST_MS = -62_135_596_800_000, 253_402_300_799_999
"""0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z."""
TEXT_FIELDS = (
    ("title",), ("content",), ("rating",), ("user", "title"), ("user", "name"),
    ("user", "display_name"), ("course", "title"), ("course", "url"),
)  # fmt: skip


class DeadLetter(ValueError):
    """A record that is no review (the validity rule): counted nowhere, naming no course."""

    def __init__(self, reason: str, kind: str = UNDECODABLE) -> None:
        super().__init__(reason)
        self.kind = kind


def _java_replacement(err: UnicodeDecodeError) -> tuple[str, int]:
    """Python's decoder finds each malformed sequence; Java's replaces the same ones, but for
    an encoded surrogate (ED A0..BF), which it takes as one sequence with its continuation."""
    data, start = err.object, err.start
    if data[start] == 0xED and start + 1 < len(data) and 0xA0 <= data[start + 1] <= 0xBF:
        end = start + 2
        if end < len(data) and data[end] & 0xC0 == 0x80:
            end += 1
        return "\ufffd", end
    return "\ufffd", err.end


codecs.register_error("chaos-oracle-java", _java_replacement)  # type: ignore[arg-type]  # decoding only


def java_text(data: bytes) -> str:
    """Java's `new String(data, UTF_8)`."""
    return data.decode("utf-8", "chaos-oracle-java")


def java_string(value: str) -> str:
    """A string fastavro read with `surrogateescape` as Java reads its bytes."""
    return java_text(value.encode("utf-8", "surrogateescape"))


def as_java_reads(review: Any) -> Any:
    """Every string of a decoded review as Java reads it."""
    if isinstance(review, str):
        return java_string(review)
    if isinstance(review, dict):
        return {k: as_java_reads(v) for k, v in review.items()}
    return review


def problem(review: Mapping[str, Any]) -> DeadLetter | None:
    """The validity rule's text, rating and timestamp checks on a decoded review."""
    for path in TEXT_FIELDS:
        value: Any = review
        for name in path:
            value = value[name]
        if value is not None and "\x00" in value:
            return DeadLetter(f"{'.'.join(path)} contains U+0000", TEXT)
    try:
        rating_halves(review["rating"])
    except DeadLetter as exc:
        return exc
    if not all(FIRST_MS <= millis(review[f]) <= LAST_MS for f in ("created", "modified")):
        return DeadLetter("created or modified outside years 1 .. 9999", TIMESTAMP)
    return None


_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?", re.ASCII)


def rating_halves(rating: str) -> int:
    """Rating * 2 as an int (exact sums): "4.5" -> 9. DeadLetter unless a half step 0.5..5.0."""
    if not _NUMBER.fullmatch(rating):
        raise DeadLetter(f"rating {rating!r} is not a number", RATING)
    halves = Decimal(rating) * 2
    if halves != halves.to_integral_value() or not 1 <= halves <= 10:
        raise DeadLetter(f"rating {rating!r} is not a half step in 0.5 .. 5.0", RATING)
    return int(halves)


def millis(value: int | datetime) -> int:
    """Epoch milliseconds of a timestamp-millis value, whichever form a reader gave it."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return int(value)


def epoch_day_of(value: int | date) -> int:
    """Epoch day of an Avro `date` value, an int or a date."""
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days
    return int(value)


def varint(body: bytes, pos: int) -> tuple[int, int]:
    """(zig-zag value, next position) of the Avro varint at `pos`. DeadLetter for one longer
    than 10 bytes or beyond 64 bits: fastavro reads those, Avro's Java decoder does not."""
    n = 0
    for i in range(pos, min(pos + 10, len(body))):
        n |= (body[i] & 0x7F) << (7 * (i - pos))
        if body[i] < 0x80:
            if n >> 64:
                raise DeadLetter("malformed Avro body: a long beyond 64 bits")
            return (n >> 1) ^ -(n & 1), i + 1
    raise DeadLetter("malformed Avro body: a varint longer than 10 bytes or cut short")


def skip(body: bytes, pos: int, size: int) -> int:
    """Position `size` bytes on; DeadLetter when they are not there."""
    if size < 0 or pos + size > len(body):
        raise DeadLetter(f"malformed Avro body: {size} bytes wanted at byte {pos}")
    return pos + size


def index(body: bytes, pos: int, count: int, what: str) -> tuple[int, int]:
    """A union branch or enum symbol index, 0 .. count-1 (fastavro takes -1 as the last)."""
    value, pos = varint(body, pos)
    if not 0 <= value < count:
        raise DeadLetter(f"malformed Avro body: {what} index {value} of {count}")
    return value, pos


_FIXED_SIZES = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def walk(schema: Any, body: bytes, pos: int, names: Mapping[str, Any]) -> int:
    """Position after the value of a parsed `schema` at `pos`, read by the Avro spec alone:
    fastavro then decodes bodies this accepted, and never sees the ones it reads too freely."""
    if isinstance(schema, list):
        branch, pos = index(body, pos, len(schema), "union branch")
        return walk(schema[branch], body, pos, names)
    if isinstance(schema, str) and schema in names:
        schema = names[schema]
    kind = schema["type"] if isinstance(schema, dict) else schema
    if isinstance(kind, dict | list):  # {"type": {...}}: a wrapped schema
        return walk(kind, body, pos, names)
    if kind in _FIXED_SIZES:
        return skip(body, pos, _FIXED_SIZES[kind])
    if kind in ("int", "long"):
        return varint(body, pos)[1]
    if kind in ("string", "bytes"):
        length, pos = varint(body, pos)
        return skip(body, pos, length)
    if kind == "fixed":
        return skip(body, pos, schema["size"])
    if kind == "enum":
        return index(body, pos, len(schema["symbols"]), "enum symbol")[1]
    if kind in ("record", "error"):
        for field in schema["fields"]:
            pos = walk(field["type"], body, pos, names)
        return pos
    if kind in ("array", "map"):
        return walk_blocks(schema, body, pos, names)
    raise DeadLetter(f"writer schema type {kind!r} is not Avro")


def walk_blocks(schema: dict, body: bytes, pos: int, names: Mapping[str, Any]) -> int:
    """Position after an array or map: blocks of items (a negative count carries its size)."""
    while True:
        count, pos = varint(body, pos)
        if count == 0:
            return pos
        if count < 0:
            count = -count
            pos = varint(body, pos)[1]
        for _ in range(count):
            if schema["type"] == "map":
                pos = walk("string", body, pos, names)
            pos = walk(schema.get("items", schema.get("values")), body, pos, names)


def named_types(schema: Any, names: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full name -> definition of every named type in a parsed schema (references by name)."""
    names = {} if names is None else names
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, names)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "error", "enum", "fixed") and "name" in schema:
            names[schema["name"]] = schema
        for key in ("type", "items", "values"):
            if isinstance(schema.get(key), dict | list):
                named_types(schema[key], names)
        for field in schema.get("fields", []):
            named_types(field["type"], names)
    return names


@dataclass(frozen=True, slots=True)
class Writer:
    """A writer schema, parsed, its named types, and whether it is the Review schema itself."""

    parsed: Any
    names: dict[str, Any]
    is_review: bool


@dataclass(frozen=True, slots=True)
class Version:
    """One readable record of udemy-reviews, reduced to what the semantics use."""

    partition: int
    offset: int
    review_id: int
    course_id: int
    course_title: str
    halves: int
    created: int
    modified: int
    fraud: bool
    invalid: str | None = None
    """The validity rule's kind when the record is routed but refused (rating, timestamp)."""

    @property
    def rating(self) -> float:
        return self.halves / 2


class ReviewDecoder:
    """Confluent-framed values to `Version`s (or DeadLetter), with the fraud verdict.

    `writer_schema(schema_id)` gives the registry's schema (a dict or its JSON text), or None
    (or raises LookupError) for an id the registry does not know; each id is asked once.
    """

    def __init__(
        self, writer_schema: Callable[[int], Any], schemas_dir: Path = SCHEMAS_DIR
    ) -> None:
        self.reader = parse_schema(without_logical_types(load_json(schemas_dir / "review.avsc")))
        self.canonical = to_parsing_canonical_form(self.reader)
        # fastavro's CRC-64-AVRO hex is already the little-endian byte order of the spec
        self.prefix = b"\xc3\x01" + bytes.fromhex(fingerprint(self.canonical, "CRC-64-AVRO"))
        self._writer_schema = writer_schema
        self._writers: dict[int, Writer | None] = {}

    def writer(self, schema_id: int) -> Writer | None:
        if schema_id not in self._writers:
            self._writers[schema_id] = self._lookup(schema_id)
        return self._writers[schema_id]

    def _lookup(self, schema_id: int) -> Writer | None:
        try:
            schema = self._writer_schema(schema_id)
        except LookupError:
            return None
        if schema is None:
            return None
        if isinstance(schema, str):
            schema = json.loads(schema)
        parsed = parse_schema(without_logical_types(schema))
        is_review = to_parsing_canonical_form(parsed) == self.canonical
        return Writer(parsed, named_types(parsed), is_review)

    def split(self, value: bytes | None) -> tuple[Writer, bytes]:
        """(writer schema, body) of a framed value; DeadLetter when the framing is wrong."""
        if value is None:
            raise DeadLetter("null value (tombstone)", TOMBSTONE)
        if len(value) < 5:
            raise DeadLetter(f"{len(value)} bytes, shorter than the 5-byte Confluent header")
        if value[0] != 0:
            raise DeadLetter(f"magic byte {value[0]}, expected 0")
        schema_id = int.from_bytes(value[1:5], "big")
        writer = self.writer(schema_id)
        if writer is None:
            raise DeadLetter(f"unknown schema id {schema_id}")
        return writer, value[5:]

    def read(self, writer: Writer, body: bytes) -> dict[str, Any]:
        """The body as a Review, strings as Java reads them; DeadLetter unless it is exactly
        one record of the writer."""
        end = walk(writer.parsed, body, 0, writer.names)
        if end != len(body):
            raise DeadLetter(f"malformed Avro body: {len(body) - end} trailing bytes")
        stream = io.BytesIO(body)
        try:
            review = schemaless_reader(
                stream, writer.parsed, self.reader, handle_unicode_errors="surrogateescape"
            )
        except Exception as exc:  # whatever fastavro raises, the record's bytes are at fault
            raise DeadLetter(f"malformed Avro body: {type(exc).__name__}: {exc}") from None
        if stream.tell() != len(body):
            raise DeadLetter(f"malformed Avro body: {len(body) - stream.tell()} trailing bytes")
        return as_java_reads(review)

    def hashed_body(self, review: dict[str, Any]) -> bytes:
        """The Avro body the fraud rule hashes: the decoded review encoded as a Review."""
        out = io.BytesIO()
        try:
            schemaless_writer(out, self.reader, review)
        except Exception as exc:  # a value the Review schema cannot hold, as the stream says
            raise DeadLetter(f"cannot re-encode as a Review: {type(exc).__name__}: {exc}") from None
        return out.getvalue()

    def decode(self, partition: int, offset: int, value: bytes | None) -> Version:
        """The record at (partition, offset) as a Version (`invalid` set when the aggregator
        refuses it); DeadLetter when the fraud filter does."""
        writer, body = self.split(value)
        review = self.read(writer, body)
        invalid = problem(review)
        if invalid is not None and invalid.kind not in ROUTED_KINDS:
            raise invalid
        course = review["course"]
        return Version(
            partition=partition,
            offset=offset,
            review_id=review["id"],
            course_id=course["id"],
            course_title=sys.intern(course["title"]),  # titles repeat: share one string
            halves=0 if invalid is not None else rating_halves(review["rating"]),
            created=millis(review["created"]),
            modified=millis(review["modified"]),
            fraud=is_fraud(self.prefix + self.hashed_body(review)),
            invalid=None if invalid is None else invalid.kind,
        )


# -- the ledger -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CourseExpectation:
    """What one course's records must say: all-time, recent (on the as-of day), its title."""

    title: str
    all_time: Statistic
    recent: Statistic


STAR_FIELDS = {
    0: "count_zero_star",
    1: "count_one_star",
    2: "count_two_stars",
    3: "count_three_stars",
    4: "count_four_stars",
    5: "count_five_stars",
}
"""Star bucket (halves // 2: 0.5 -> 0, 1.0/1.5 -> 1, ..., 5.0 -> 5) -> its CourseStatistic field."""

COMPARED_FIELDS = tuple(
    field["name"]
    for field in load_json(SCHEMAS_DIR / "course_statistic.avsc")["fields"]
    if field["name"] != "as_of_time"
)
"""The CourseStatistic fields an expectation holds, in the schema's order."""


def window(as_of_day: int) -> tuple[int, int]:
    """First and last UTC day of the recent window of `as_of_day`, both included."""
    return as_of_day - WINDOW_DAYS + 1, as_of_day


def statistic(
    course_id: int,
    title: str,
    counted: list[tuple[int, int]],
    days: tuple[int, int] | tuple[None, None],
) -> Statistic:
    """The CourseStatistic fields over counted (created, halves) pairs."""
    count = len(counted)
    sum_rating = sum(halves for _, halves in counted) / 2
    stars = dict.fromkeys(STAR_FIELDS.values(), 0)
    for _, halves in counted:
        stars[STAR_FIELDS[halves // 2]] += 1
    fields = {
        "course_id": course_id,
        "course_title": title,
        "average_rating": sum_rating / count if count else 0.0,
        "count_reviews": count,
        **stars,
        "last_review_time": max((created for created, _ in counted), default=0),
        "sum_rating": sum_rating,
        "window_start_day": days[0],
        "window_end_day": days[1],
    }
    return {name: fields[name] for name in COMPARED_FIELDS}


def supersedes(incoming: Version, current: Version | None) -> bool:
    """Whether `incoming` is a later version than `current`: greater (modified, partition,
    offset) of udemy-reviews."""
    return current is None or (incoming.modified, incoming.partition, incoming.offset) > (
        current.modified,
        current.partition,
        current.offset,
    )


class Oracle:
    """The expected outcome of a set of udemy-reviews records, fed in any order.

    `verdicts` maps each record's (partition, offset) to "valid", "fraud" or "dead-letter" (the
    fraud filter's route); `dead_letters` lists the dead ones (reasons in `dead_reasons`);
    `refusals` the kind of every record that is no review (`ROUTED_KINDS` routed, then
    refused); `history` keeps every readable version for `edit_kinds` (off with
    keep_history=False, to save memory).
    """

    def __init__(
        self,
        writer_schema: Callable[[int], Any],
        *,
        schemas_dir: Path = SCHEMAS_DIR,
        keep_history: bool = True,
    ) -> None:
        self.decoder = ReviewDecoder(writer_schema, schemas_dir)
        self.keep_history = keep_history
        self.verdicts: dict[Position, str] = {}
        self.dead_letters: list[Position] = []
        self.dead_reasons: dict[Position, str] = {}
        self.refusals: dict[Position, str] = {}
        """The validity rule's kind of every record that is no review, dead-lettered by the
        fraud filter or routed and refused by the aggregator."""
        self.history: list[Version] = []
        self.current: dict[int, Version] = {}
        self.review_ids: dict[Position, int] = {}
        """The review id (the value's `id`) of each readable record."""
        self.titles: dict[int, tuple[int, str]] = {}
        """course id -> (modified, title) of its winning record."""

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> str:
        """Take one record (the key is not part of the semantics); its verdict."""
        position = (partition, offset)
        if position in self.verdicts:
            raise ValueError(f"record {position} added twice")
        try:
            version = self.decoder.decode(partition, offset, value)
        except DeadLetter as exc:
            self.verdicts[position] = DEAD
            self.dead_letters.append(position)
            self.dead_reasons[position] = str(exc)
            self.refusals[position] = exc.kind
            return DEAD
        if version.invalid is not None:  # routed by its verdict, then refused: no version
            self.verdicts[position] = FRAUD if version.fraud else VALID
            self.review_ids[position] = version.review_id
            self.refusals[position] = version.invalid
            return self.verdicts[position]
        self.add_version(version)
        return self.verdicts[position]

    def add_version(self, v: Version) -> None:
        """Take one readable version: its verdict, the current versions, the course titles."""
        self.verdicts[(v.partition, v.offset)] = FRAUD if v.fraud else VALID
        self.review_ids[(v.partition, v.offset)] = v.review_id
        if self.keep_history:
            self.history.append(v)
        current = self.current.get(v.review_id)
        if supersedes(v, current):
            self.current[v.review_id] = v
        best = self.titles.get(v.course_id)
        if best is None or (v.modified, v.course_title) > best:
            self.titles[v.course_id] = (v.modified, v.course_title)

    def counted(self) -> dict[int, list[tuple[int, int]]]:
        """course id -> (created, halves) of its counted reviews, for every existing course."""
        by_course: dict[int, list[tuple[int, int]]] = {course: [] for course in self.titles}
        for v in self.current.values():
            if not v.fraud:
                by_course[v.course_id].append((v.created, v.halves))
        return by_course

    def result(self, as_of_day: int) -> dict[int, CourseExpectation]:
        """Every existing course's expected records, the recent one for `as_of_day`."""
        first, last = window(as_of_day)
        out = {}
        for course, counted in self.counted().items():
            title = self.titles[course][1]
            recent = [r for r in counted if first <= r[0] // MS_PER_DAY <= last]
            out[course] = CourseExpectation(
                title,
                statistic(course, title, counted, (None, None)),
                statistic(course, title, recent, (first, last)),
            )
        return out


def decode_input(
    records: Iterable[tuple[int, int, bytes | None, bytes | None]],
    writer_schema: Callable[[int], Any],
    *,
    keep_history: bool = True,
) -> Oracle:
    """An Oracle fed with (partition, offset, key, value) records of udemy-reviews."""
    oracle = Oracle(writer_schema, keep_history=keep_history)
    for partition, offset, key, value in records:
        oracle.add(partition, offset, key, value)
    return oracle


# -- comparison -------------------------------------------------------------------------------

_FLOAT_FIELDS = {"average_rating", "sum_rating"}
_DAY_FIELDS = {"window_start_day", "window_end_day"}
_NORMALISE: dict[str, Callable[[Any], Any]] = {
    "last_review_time": millis,
    **dict.fromkeys(_DAY_FIELDS, lambda v: None if v is None else epoch_day_of(v)),
}


def field_matches(name: str, expected: Any, actual: Any) -> bool:
    """Floats within 1e-9 relative (never NaN), everything else exactly."""
    if name in _FLOAT_FIELDS:
        return isinstance(actual, int | float) and math.isclose(expected, actual, rel_tol=1e-9)
    return expected == actual


def compare_record(table: str, course: int, expected: Statistic, actual: Mapping) -> list[str]:
    """The mismatched fields of one published record."""
    out = []
    for name in COMPARED_FIELDS:
        if name not in actual:
            out.append(f"{table} course {course}: {name} missing (expected {expected[name]!r})")
            continue
        value = actual[name]
        with contextlib.suppress(TypeError, ValueError):  # else compared and reported as is
            value = _NORMALISE.get(name, lambda v: v)(value)
        if not field_matches(name, expected[name], value):
            out.append(
                f"{table} course {course}: {name} expected {expected[name]!r}, actual {value!r}"
            )
    return out


def compare_table(
    table: str, expected: Mapping[int, Statistic], actual: Mapping[int, Mapping]
) -> list[str]:
    """Mismatches of one statistics table, course by course, missing and extra courses too."""
    out = []
    for course in sorted(expected.keys() | actual.keys()):
        if course not in actual:
            out.append(f"{table} course {course}: expected, missing")
        elif course not in expected:
            out.append(f"{table} course {course}: present, not expected (no readable record)")
        else:
            out.extend(compare_record(table, course, expected[course], actual[course]))
    return out


def compare(
    expected: Mapping[int, CourseExpectation],
    actual_all_time: Mapping[int, Mapping],
    actual_recent: Mapping[int, Mapping],
    as_of_day: int,
) -> list[str]:
    """Human-readable mismatches between the oracle and the published statistics ({course id:
    latest record's fields}), empty when every course agrees. `expected` must be the result for
    `as_of_day` (ValueError otherwise): the recent records' window days are compared too."""
    wrong_day = [c for c, e in expected.items() if e.recent["window_end_day"] != as_of_day]
    if wrong_day:
        raise ValueError(f"expectations of course {wrong_day[0]} are not for day {as_of_day}")
    return compare_table(
        "long-term-stats", {c: e.all_time for c, e in expected.items()}, actual_all_time
    ) + compare_table("recent-stats", {c: e.recent for c, e in expected.items()}, actual_recent)


# -- what the input exercised -----------------------------------------------------------------

EDIT_KINDS = (
    "new",
    "re-rating",
    "verdict flip",
    "move",
    "equal modified",
    "stale re-send",
    "title change",
)


def version_kinds(v: Version, current: Version | None) -> list[str]:
    """What `v` does against its review's current version so far (in offset order).

    Re-rating, verdict flip and move count only for a version that becomes current (a stale
    one changes nothing); a title change counts for any version of the same course, since
    every record offers its course title."""
    if current is None:
        return ["new"]
    kinds = []
    if v.modified < current.modified:
        kinds.append("stale re-send")
    else:
        if v.modified == current.modified:
            kinds.append("equal modified")
        if v.halves != current.halves:
            kinds.append("re-rating")
        if v.fraud != current.fraud:
            kinds.append("verdict flip")
        if v.course_id != current.course_id:
            kinds.append("move")
    if v.course_id == current.course_id and v.course_title != current.course_title:
        kinds.append("title change")
    return kinds


def edit_kinds(history: Iterable[Version]) -> dict[str, int]:
    """How many versions of each kind (EDIT_KINDS) the input holds; a version can be several."""
    counts = dict.fromkeys(EDIT_KINDS, 0)
    current: dict[int, Version] = {}
    for v in sorted(history, key=lambda v: (v.partition, v.offset)):
        before = current.get(v.review_id)
        for kind in version_kinds(v, before):
            counts[kind] += 1
        if supersedes(v, before):
            current[v.review_id] = v
    return counts
