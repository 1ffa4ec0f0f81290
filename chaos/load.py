"""The chaos run's load: new reviews and real edits at a steady rate, through both ingest paths.

`make chaos` must prove the pipeline under faults with edits, not just appends: a review whose
rating changes, whose fraud verdict flips, that moves to another course, a version tied on
`modified` with the current one, a stale re-send, a course renamed. This module writes such
records at a fixed rate (a schedule of send times, so a slow answer does not lower the rate)
through `POST /reviews` (a pool of connections; a refusal is recorded, never retried) and
straight into `udemy-reviews` (an idempotent producer keyed like the Java clients), and writes
every acknowledged record to an answers file: the ledger the check holds the topic to.

It is part of the independent checker, so it imports nothing from `streaming/` or
`orchestration/`: it builds the Avro records itself from `schemas/review.avsc`, predicts what
the API maps a JSON review to, and takes the fraud rule from `chaos.oracle`.

Edits target reviews whose current version (as the load believes it: the last acknowledged one
that supersedes) is settled, never one with a version in flight, so the order of a review's
versions in the topic is the order they were made; and, when the Udemy-compatible source
answers, the newest reviews of a few sample courses. The belief can be wrong (a refused POST
that was stored after all, the backfill re-sending a sample review): the check reads the kinds
from the topic, so only the labels in the answers file would be off.

    .venv/bin/python -m chaos.load --rate 40 --duration 20 --out /tmp/answers.jsonl --seed 1
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from chaos.oracle import is_fraud, java_text
from streaming import pipeline
from streaming.access import login_env
from streaming.settings import KafkaSettings, kafka_security, load, registry_auth, registry_verify

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "review.avsc"
TOPIC = pipeline.INPUT.name
SUBJECT = f"{TOPIC}-value"
MS_PER_DAY = 86_400_000
CREATED_SPAN_MS = 120 * MS_PER_DAY
"""`created` of a new review lies in the last 120 days: some fall outside the 90-day window."""
FLIP_TRIES = 50
"""Content variations tried for a verdict flip (valid -> fraud succeeds 92% of the time)."""
SAMPLE_SHARE = 0.2
"""Share of edits aimed at sample reviews, when the source gave some."""
SAMPLE_COURSE_SHARE = 0.1
"""Share of new reviews written for a sample course rather than one of the load's own."""
DRAIN_S = 60.0
"""How long `run` waits at the end for POSTs in flight and deliveries pending."""

NEW, RERATING, FLIP, MOVE = "new", "re-rating", "verdict flip", "move"
EQUAL, STALE, TITLE = "equal modified", "stale re-send", "title change"
KINDS = (NEW, RERATING, FLIP, MOVE, EQUAL, STALE, TITLE)
DEFAULT_WEIGHTS: dict[str, float] = {
    NEW: 0.50,
    RERATING: 0.10,
    FLIP: 0.08,
    MOVE: 0.08,
    EQUAL: 0.08,
    STALE: 0.08,
    TITLE: 0.08,
}
RATINGS = tuple(f"{halves / 2:.1f}" for halves in range(1, 11))

Review = dict[str, Any]
"""A Review record as fastavro writes it: created/modified as int epoch milliseconds."""

_FIRST = ("Ana", "Björn", "Chen", "Dmitri", "Eve", "Fatima", "Gustavo", "Hana", "Ifeoma", "Jules")
_LAST = ("Smith", "Petrov", "García", "Nakamura", "Okafor", "Müller", "Rossi", "Dubois", "Kim")
_TITLES = (None, "", "", "Great course", "Too fast", "Loved it", "Solid intro", "Meh")
_CONTENTS = (
    None,
    "",
    "",
    "Clear explanations and good exercises.",
    "The audio could be better, the content is great.",
    "Exactly what I needed for work.",
    "Trop rapide pour moi, mais très complet.",
    "Outdated in places; still useful.",
    "Best Kafka course I have taken ✓",
)
_TOPICS = ("Kafka Streams", "Event Sourcing", "Schema Registry", "Exactly-Once", "Connect")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


QUIET = logging.getLogger("chaos.load.kafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def source_secret() -> str:
    """The source API's secret: UDEMY_CLIENT_SECRET, or UDEMY_CLIENT_SECRET_FILE's content
    (read here, not through the pipeline's code: the load stays independent of it)."""
    if os.environ.get("UDEMY_CLIENT_SECRET"):
        return os.environ["UDEMY_CLIENT_SECRET"]
    path = os.environ.get("UDEMY_CLIENT_SECRET_FILE")
    return Path(path).read_text().strip() if path else "local-secret"


def writer_token() -> str:
    """The pipeline API's writer token, from the file PIPELINE_API_TOKEN_FILE names (read here,
    not through the pipeline's code: the load stays independent of it). OSError naming the
    variable, never the value, when there is none."""
    path = os.environ.get("PIPELINE_API_TOKEN_FILE")
    if not path:
        raise OSError(
            "PIPELINE_API_TOKEN_FILE (the API's writer token file) is not set: . .stack/env"
        )
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise OSError(f"cannot read PIPELINE_API_TOKEN_FILE {path}: {exc.strerror}") from None


def wall_ms() -> int:
    """The wall clock in epoch milliseconds (what `modified` of a fresh version says)."""
    return time.time_ns() // 1_000_000


# -- records: Avro, wire format, fraud verdict, JSON --------------------------------------------


class ReviewCodec:
    """Review records to Avro bodies, Confluent frames and fraud verdicts.

    The verdict hashes the single-object encoding (C3 01, CRC-64-AVRO fingerprint of the
    schema's canonical form, body) of exactly the body written, so the load predicts the
    verdict the fraud filter will reach.
    """

    def __init__(self, schema_path: Path = SCHEMA_PATH) -> None:
        self.text = schema_path.read_text(encoding="utf-8")
        self.schema = parse_schema(json.loads(self.text))
        canonical = to_parsing_canonical_form(self.schema)
        # fastavro's CRC-64-AVRO hex is already the spec's little-endian byte order
        self.prefix = b"\xc3\x01" + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))

    def body(self, review: Review) -> bytes:
        """The Avro binary body (no framing)."""
        out = io.BytesIO()
        schemaless_writer(out, self.schema, review)
        return out.getvalue()

    def frame(self, schema_id: int, review: Review) -> bytes:
        """Confluent wire format: magic 0, 4-byte big-endian schema id, body."""
        return b"\x00" + schema_id.to_bytes(4, "big") + self.body(review)

    def is_fraud(self, review: Review) -> bool:
        """The default fraud rule on this record's bytes."""
        return is_fraud(self.prefix + self.body(review))


def iso(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and "Z": parses back to the same millisecond."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def parse_iso(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 timestamp with an offset (the source's "...Z")."""
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(milliseconds=1)


def to_json(review: Review) -> dict[str, Any]:
    """The Udemy result item the API maps back to exactly `review` (rating as a number)."""
    return {
        **review,
        "rating": float(review["rating"]),
        "created": iso(review["created"]),
        "modified": iso(review["modified"]),
        "user": dict(review["user"]),
        "course": dict(review["course"]),
    }


def from_json(item: Mapping[str, Any]) -> Review:
    """The Review record of a source item that carries its course (KeyError/ValueError if not)."""
    user, course = item["user"], item["course"]
    return {
        "id": int(item["id"]),
        "title": item.get("title"),
        "content": item.get("content"),
        "rating": f"{float(item['rating']):.1f}",
        "created": parse_iso(item["created"]),
        "modified": parse_iso(item["modified"]),
        "user": {k: str(user[k]) for k in ("title", "name", "display_name")},
        "course": {"id": int(course["id"]), "title": course["title"], "url": course["url"]},
    }


# -- the generator: what to write next, and what it believes is current ------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One record to write, and the kind of version the generator meant it to be."""

    kind: str
    record: Review

    @property
    def key(self) -> str:
        """The Kafka key: the review id in decimal, as the API and the Java clients write it."""
        return str(self.record["id"])


class _Pool:
    """A set with O(1) add, remove and random choice: the reviews open to an edit."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.where: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: int) -> None:
        if item not in self.where:
            self.where[item] = len(self.items)
            self.items.append(item)

    def remove(self, item: int) -> None:
        i = self.where.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.where[last] = i

    def choice(self, rng: random.Random) -> int:
        return self.items[rng.randrange(len(self.items))]


class Generator:
    """Records of each kind, deterministic from the seed (given the clock and the settlements).

    Review ids are `base_id`, `base_id + 1`, ...; the load's own courses `course_base + i` for
    i < `courses`. `next` takes the edited review out of play until `settle` says how its
    version ended, so no review has two versions in flight.
    """

    def __init__(
        self,
        seed: int,
        base_id: int,
        codec: ReviewCodec,
        *,
        weights: Mapping[str, float] | None = None,
        courses: int = 40,
        course_base: int | None = None,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.rng = random.Random(seed)
        self.base_id = base_id
        self.codec = codec
        self.now_ms = now_ms
        chosen = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(chosen) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; kinds are {KINDS}")
        self.kinds = list(chosen)
        self.weights = [chosen[k] for k in self.kinds]
        first = base_id if course_base is None else course_base
        self.own_courses = [first + i for i in range(courses)]
        self.own_course_set = set(self.own_courses)
        self.sample_courses: list[int] = []
        self.titles: dict[int, str] = {}
        self.title_at: dict[int, int] = {}
        self.urls: dict[int, str] = {}
        self.editions: Counter[int] = Counter()
        for i, course in enumerate(self.own_courses):
            self.titles[course] = f"Chaos {_TOPICS[i % len(_TOPICS)]} {i}"
            self.title_at[course] = -1
            self.urls[course] = f"/chaos-{course}/"
        self.created = 0
        self.current: dict[int, Review] = {}
        self.sample_ids: set[int] = set()
        self.own = _Pool()
        self.sample = _Pool()
        self.in_flight: set[int] = set()

    def add_sample(self, reviews: Iterable[Review]) -> int:
        """Make sample reviews editable (each as its current version); returns how many.

        Reviews in the load's id range or with `modified` in the future are left out.
        """
        now = self.now_ms()
        added = 0
        for r in reviews:
            rid, course = r["id"], r["course"]["id"]
            if rid >= self.base_id or r["modified"] > now or rid in self.current:
                continue
            self.current[rid] = r
            self.sample_ids.add(rid)
            self.sample.add(rid)
            if course not in self.urls:
                self.sample_courses.append(course)
                self.urls[course] = r["course"]["url"]
            self._note_course(r)
            added += 1
        return added

    def next(self) -> Planned:
        """The next record; an edit with no review fit for it becomes a new review."""
        kind = self.rng.choices(self.kinds, self.weights)[0]
        planned = self._edit(kind) if kind != NEW else None
        if planned is None:
            planned = self._new()
        rid = planned.record["id"]
        self.in_flight.add(rid)
        self._pool(rid).remove(rid)
        return planned

    def settle(self, planned: Planned, acked: bool) -> None:
        """Take in how a version ended: acknowledged ones that supersede become current."""
        record = planned.record
        rid = record["id"]
        self.in_flight.discard(rid)
        if acked:
            self._note_course(record)
            if planned.kind != STALE:
                self.current[rid] = record
        if rid in self.current:
            self._pool(rid).add(rid)

    # -- helpers -------------------------------------------------------------------------------

    def _pool(self, rid: int) -> _Pool:
        return self.sample if rid in self.sample_ids else self.own

    def _note_course(self, record: Review) -> None:
        """A course's title is that of its record with the greatest modified (ties: greater
        title), over every record written for it."""
        course = record["course"]
        cid, title, at = course["id"], course["title"], record["modified"]
        if (at, title) > (self.title_at.get(cid, -1), self.titles.get(cid, "")):
            self.titles[cid], self.title_at[cid] = title, at

    def _course(self, cid: int) -> dict[str, Any]:
        return {"id": cid, "title": self.titles[cid], "url": self.urls[cid]}

    def _user(self) -> dict[str, str]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        return {"title": f"{first} {last}", "name": first, "display_name": f"{first} {last}"}

    def _other_rating(self, rating: str) -> str:
        return self.rng.choice([r for r in RATINGS if r != rating])

    def _new(self) -> Planned:
        rid = self.base_id + self.created
        self.created += 1
        sample = self.sample_courses and self.rng.random() < SAMPLE_COURSE_SHARE
        cid = self.rng.choice(self.sample_courses if sample else self.own_courses)
        now = self.now_ms()
        created = now - self.rng.randrange(CREATED_SPAN_MS)
        modified = created if self.rng.random() < 0.6 else self.rng.randint(created, now)
        record = {
            "id": rid,
            "title": self.rng.choice(_TITLES),
            "content": self.rng.choice(_CONTENTS),
            "rating": self.rng.choice(RATINGS),
            "created": created,
            "modified": modified,
            "user": self._user(),
            "course": self._course(cid),
        }
        return Planned(NEW, record)

    def _target(self, kind: str) -> Review | None:
        """A settled current version fit for `kind` (a few random picks), or None."""
        for _ in range(8):
            use_sample = bool(self.sample) and self.rng.random() < SAMPLE_SHARE
            pool = self.sample if use_sample else self.own
            if not pool:
                continue
            current = self.current[pool.choice(self.rng)]
            if kind == STALE and current["modified"] <= current["created"]:
                continue
            if kind == TITLE and current["course"]["id"] not in self.own_course_set:
                continue  # renaming a sample course would outlive the run in the catalogue
            return current
        return None

    def _edit(self, kind: str) -> Planned | None:
        current = self._target(kind)
        if current is None:
            return None
        build = {
            RERATING: self._rerating,
            FLIP: self._flip,
            MOVE: self._move,
            EQUAL: self._equal,
            STALE: self._stale,
            TITLE: self._title,
        }[kind]
        return build(current)

    def _copy(self, current: Review, modified: int) -> Review:
        return {
            **current,
            "modified": modified,
            "user": dict(current["user"]),
            "course": dict(current["course"]),
        }

    def _later(self, current: Review) -> Review:
        """A copy with a later `modified`: now, or 1 ms after the current one if that is later."""
        return self._copy(current, max(self.now_ms(), current["modified"] + 1))

    def _rerating(self, current: Review) -> Planned:
        record = self._later(current)
        record["rating"] = self._other_rating(current["rating"])
        return Planned(RERATING, record)

    def _flip(self, current: Review) -> Planned:
        """Vary the content until the verdict differs; after FLIP_TRIES, settle for a
        re-rating rather than claim a flip that is none."""
        verdict = self.codec.is_fraud(current)
        record = self._later(current)
        for _ in range(FLIP_TRIES):
            text = self.rng.choice(_CONTENTS[3:])
            record["content"] = f"{text} (edit {self.rng.randrange(1_000_000)})"
            if self.codec.is_fraud(record) != verdict:
                return Planned(FLIP, record)
        record["rating"] = self._other_rating(current["rating"])
        return Planned(RERATING, record)

    def _move(self, current: Review) -> Planned:
        here = current["course"]["id"]
        record = self._later(current)
        record["course"] = self._course(self.rng.choice([c for c in self.own_courses if c != here]))
        return Planned(MOVE, record)

    def _equal(self, current: Review) -> Planned:
        record = self._copy(current, current["modified"])
        record["rating"] = self._other_rating(current["rating"])
        return Planned(EQUAL, record)

    def _stale(self, current: Review) -> Planned:
        older = self.rng.randint(current["created"], current["modified"] - 1)
        record = self._copy(current, older)
        record["rating"] = self._other_rating(current["rating"])
        return Planned(STALE, record)

    def _title(self, current: Review) -> Planned:
        cid = current["course"]["id"]
        self.editions[cid] += 1  # one number per rename made, so every new title is new
        record = self._later(current)
        base = self.titles[cid].split(" (edition ")[0]
        record["course"]["title"] = f"{base} (edition {self.editions[cid] + 1})"
        return Planned(TITLE, record)


# -- the sample, the registry ------------------------------------------------------------------


def fetch_sample(
    client: httpx.Client, url: str, courses: int = 3, per_course: int = 50
) -> list[Review]:
    """The newest reviews of the first few courses of the Udemy-compatible source."""
    base = url.rstrip("/")
    listing = client.get(f"{base}/courses/", params={"page_size": courses})
    listing.raise_for_status()
    out: list[Review] = []
    for course in listing.json()["results"][:courses]:
        page = client.get(
            f"{base}/courses/{course['id']}/reviews/",
            params={
                "page_size": per_course,
                "fields[course_review]": "title,content,rating,created,modified,user,course",
            },
        )
        page.raise_for_status()
        for item in page.json()["results"]:
            try:
                out.append(from_json({"course": course, **item}))
            except (KeyError, TypeError, ValueError):
                continue  # a review the load cannot mirror exactly is simply not edited
    return out


def schema_id(registry_url: str, schema_text: str, attempts: int = 3) -> int:
    """The registry's id of the Review schema under `udemy-reviews-value` (registered if new).

    A few attempts: a registry hiccup at the start should not waste a chaos run.
    """
    url = f"{registry_url.rstrip('/')}/subjects/{SUBJECT}"
    payload = {"schema": schema_text}
    auth = registry_auth()  # SCHEMA_REGISTRY_USER's, when the registry asks for a login
    verify = registry_verify()  # SCHEMA_REGISTRY_CA_FILE's CA for an https:// URL
    for attempt in range(attempts):
        try:
            r = httpx.post(url, json=payload, auth=auth, verify=verify, timeout=10)
            if r.status_code == 404:
                r = httpx.post(
                    f"{url}/versions", json=payload, auth=auth, verify=verify, timeout=10
                )
            r.raise_for_status()
            return int(r.json()["id"])
        except httpx.HTTPError:
            if attempt == attempts - 1:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


# -- the load ----------------------------------------------------------------------------------

INVALID_STYLES = ("undecodable", "tombstone", "text", "rating", "timestamp")
"""Records that are no review, one style per kind of the validity rule (keyed by the id)."""
NON_CANONICAL_STYLES = ("bad-utf8", "padded")
"""Valid reviews in bytes other than Avro's own encoding: invalid UTF-8 in the content (Java
reads U+FFFD), the id's varint one byte longer than needed."""
STYLES = (
    ("id", 0.43),
    ("none", 0.20),
    ("long", 0.15),
    ("other", 0.11),
    ("near-limit", 0.02),
    ("compressed", 0.02),
    *((style, 0.01) for style in INVALID_STYLES + NON_CANONICAL_STYLES),
)
"""How the direct writes are sent: as ours are (keyed by the id), as the original Java producer
did (no key), with the id as an 8-byte long, with a key that is not the id; near the input's
record limit (incompressible text, keyed by the id); 3 MB of text sent zstd-compressed; and
about 1 % each of every kind of record that is no review and of two non-canonical encodings."""
BAD_RATINGS = ("4.7", "", "NaN", " 4.5", "4.5e0", "0", "5.5", "0.25")
BAD_TIMES_MS = (253_402_300_800_000, -62_135_596_800_001, 9_300_000_000_000_000)
"""Year 10000 (PostgreSQL holds it, Python does not), just before year 1, year 296,675."""
INVALID_UTF8 = (
    b"\xed\xa0\x80\xed\xbf\xbf",  # two encoded surrogates: Java replaces each whole
    b"\xff\xfe\xfd\xfc\xfb\xfa",
    b"\xe2\x82ABCD",  # a sequence cut short by a letter
    b"A\xf0\x9f\x98BC",
    b"\xc0\xafxyzw",  # an overlong '/'
)
"""Six bytes each, in place of MARK's six."""
MARK = "\u20ac\u20ac"  # six UTF-8 bytes the bad-utf8 style overwrites
INPUT_LIMIT_BYTES = 1_048_588
"""The input's max.message.bytes (Kafka's default, as `reviews bootstrap` leaves it)."""
NEAR_LIMIT_TEXT = INPUT_LIMIT_BYTES - 1_200  # the rest of the review, the framing
COMPRESSED_TEXT = 3_000_000


def producer_style(rng: random.Random) -> tuple[str, int]:
    """A style and the text size it forces (0: the record's own)."""
    style = rng.choices([s for s, _ in STYLES], [w for _, w in STYLES])[0]
    size = {"near-limit": NEAR_LIMIT_TEXT, "compressed": COMPRESSED_TEXT}.get(style, 0)
    return style, size


def style_key(style: str, review_id: int, rng: random.Random) -> bytes | None:
    if style == "none":
        return None
    if style == "long":
        return review_id.to_bytes(8, "big", signed=True)
    if style == "other":
        return f"user-{rng.randrange(10_000)}".encode()
    return str(review_id).encode()


def invalid_value(
    style: str, record: Review, codec: ReviewCodec, schema_id: int, rng: random.Random
) -> bytes | None:
    """A value Kafka accepts that is no review, of the validity rule's kind `style`."""
    if style == "tombstone":
        return None
    if style == "text":
        return codec.frame(schema_id, {**record, "content": "before\x00after"})
    if style == "rating":
        return codec.frame(schema_id, {**record, "rating": rng.choice(BAD_RATINGS)})
    if style == "timestamp":
        return codec.frame(schema_id, {**record, "modified": rng.choice(BAD_TIMES_MS)})
    good = codec.frame(schema_id, record)
    return rng.choice(
        (b"\x01" + good[1:], good[:-3], b"\x00" + (2**31 - 7).to_bytes(4, "big") + good[5:])
    )


def non_canonical(
    style: str, record: Review, codec: ReviewCodec, schema_id: int, rng: random.Random
) -> tuple[bytes, Review]:
    """A valid review in bytes Avro's writers never produce, and the review Java reads."""
    if style == "padded":
        value = codec.frame(schema_id, record)
        end = next(i for i in range(5, len(value)) if value[i] < 0x80)  # the id's last byte
        return value[:end] + bytes([value[end] | 0x80, 0]) + value[end + 1 :], record
    content = f"{record.get('content') or ''} {MARK}"
    value = codec.frame(schema_id, {**record, "content": content})
    bad = rng.choice(INVALID_UTF8)
    at = value.rindex(MARK.encode())
    value = value[:at] + bad + value[at + 6 :]
    return value, {**record, "content": java_text(content.encode()[:-6] + bad)}


def filler(size: int, style: str) -> str:
    """Text of `size` characters: random hex near the limit (no codec shrinks it much),
    a repeated phrase when compressed."""
    if style == "near-limit":
        return os.urandom(size // 2).hex()
    return ("kafka streams " * (size // 14 + 1))[:size]


class DirectProducer(Protocol):
    """What the load needs of a confluent_kafka Producer (a fake in tests)."""

    def produce(
        self, topic: str, value: bytes | None, key: bytes | None, *, on_delivery: Callable
    ) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def purge(self) -> None: ...


def producer_login() -> dict[str, str]:
    """The login of another system that writes the input directly: the `producer` principal
    (`streaming.access`), whose password file `make up` keeps in KAFKA_CREDENTIALS_DIR."""
    env = {**os.environ, **login_env("producer", os.environ)}
    return kafka_security(load(KafkaSettings, env))


class Load:
    """Writes the load for `run`'s duration and records every outcome in `out_path`.

    `rate` records/s in all, a share `post_share` through the API on `connections` concurrent
    connections, the rest straight to Kafka; `weights` (kind -> weight, merged over
    DEFAULT_WEIGHTS) mixes the kinds. `sample_url` is the Udemy-compatible source whose
    reviews are edited too: None reads UDEMY_API_URL, "" edits none. Live counters: `sent`,
    `acked`, `acked_by_path`, `by_kind` (acknowledged, by kind), `refused` ("<path> <reason>").
    """

    def __init__(
        self,
        api_url: str,
        bootstrap: str,
        registry_url: str,
        rate: float,
        seed: int,
        base_id: int,
        out_path: str | Path,
        token: str | None = None,
        weights: Mapping[str, float] | None = None,
        *,
        post_share: float = 0.6,
        connections: int = 12,
        courses: int = 40,
        sample_url: str | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.api_url = api_url.rstrip("/")
        self.bootstrap = bootstrap
        self.registry_url = registry_url
        self.rate = rate
        self.out_path = Path(out_path)
        self.post_share = post_share
        self.connections = connections
        self.sample_url = os.environ.get("UDEMY_API_URL", "") if sample_url is None else sample_url
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.codec = ReviewCodec()
        self.generator = Generator(seed, base_id, self.codec, weights=weights, courses=courses)
        self.paths = random.Random(f"paths-{seed}")
        self.styles = random.Random(f"styles-{seed}")
        self.by_style: Counter[str] = Counter()
        """Direct writes acknowledged, by producer style (`STYLES`)."""
        self.sent = 0
        self.acked = 0
        self.acked_by_path: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.sample_reviews = 0
        self.elapsed_s = 0.0
        self._lock = threading.Lock()
        self._posts: dict[Future, Planned] = {}
        self._out: io.TextIOBase | None = None

    # -- overridable connections (tests give fakes) --------------------------------------------

    def make_producer(self, compression: str = "none") -> DirectProducer:
        return Producer(
            {
                **producer_login(),
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",  # where Java clients put a key
                "linger.ms": 5,
                "compression.type": compression,
                "message.max.bytes": 8_388_608,  # the broker's topic limit is what counts
            },
            logger=QUIET,  # a broker down is a planned fault: each refusal is in the answers
        )

    def make_client(self) -> httpx.Client:
        limits = httpx.Limits(
            max_connections=self.connections, max_keepalive_connections=self.connections
        )
        return httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0), limits=limits)

    def lookup_schema_id(self) -> int:
        return schema_id(self.registry_url, self.codec.text)

    def load_sample(self) -> None:
        """Add the source's newest reviews to the editable ones; without them the load goes on."""
        if not self.sample_url:
            return
        auth = (os.environ.get("UDEMY_CLIENT_ID", "local-client"), source_secret())
        try:
            with httpx.Client(auth=auth, timeout=10) as client:
                reviews = fetch_sample(client, self.sample_url)
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            print(f"load: no sample edits ({type(exc).__name__}: {exc})", file=sys.stderr)
            return
        self.sample_reviews = self.generator.add_sample(reviews)

    # -- the run -------------------------------------------------------------------------------

    def run(self, duration_s: float, stop_event: threading.Event | None = None) -> None:
        """Send on schedule for `duration_s` (or until `stop_event`), then drain; blocking."""
        stop = stop_event or threading.Event()
        self._schema_id = self.lookup_schema_id()
        self.load_sample()
        self._producer = self.make_producer()
        self._zstd = self.make_producer(compression="zstd")
        started = time.monotonic()
        with (
            self.out_path.open("w", encoding="utf-8", buffering=1) as out,
            self.make_client() as self._client,
            ThreadPoolExecutor(self.connections, thread_name_prefix="load-post") as self._pool,
        ):
            self._out = out
            slot = 0
            while not stop.is_set() and slot / self.rate < duration_s:
                if self._wait_until(started + slot / self.rate, stop):
                    self._send(self._plan())
                    slot += 1
            self.elapsed_s = time.monotonic() - started
            self._drain()
        self._out = None  # POSTs still running were awaited as the pool closed

    def _wait_until(self, due: float, stop: threading.Event) -> bool:
        """Serve delivery reports until `due`; False when stopped first."""
        while (wait_s := due - time.monotonic()) > 0:
            if stop.is_set():
                return False
            self._producer.poll(min(wait_s, 0.1))
        return not stop.is_set()

    def _plan(self) -> Planned:
        with self._lock:
            self.sent += 1
            return self.generator.next()

    def _send(self, planned: Planned) -> None:
        if self.paths.random() < self.post_share:
            future = self._pool.submit(self._post, planned)
            with self._lock:
                self._posts[future] = planned
            future.add_done_callback(self._forget)
        else:
            self._send_direct(planned)

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._posts.pop(future, None)

    def _post(self, planned: Planned) -> None:
        """One POST, no retry: anything but 2xx is a refusal, named by status or exception."""
        body = json.dumps(to_json(planned.record), ensure_ascii=False).encode()
        try:
            r = self._client.post(f"{self.api_url}/reviews", content=body, headers=self.headers)
        except Exception as exc:  # whatever went wrong, the load records it and goes on
            self._settle("post", planned, type(exc).__name__)
            return
        self._settle("post", planned, None if 200 <= r.status_code < 300 else str(r.status_code))

    def _send_direct(self, planned: Planned) -> None:
        """As one of the producers that share udemy-reviews would send it (`producer_style`):
        keyed by the id, with no key, an 8-byte long key or a key that is not the id; a few
        near the input's record limit, or large and zstd-compressed."""
        style, size = producer_style(self.styles)
        if size:
            planned = Planned(planned.kind, {**planned.record, "content": filler(size, style)})
        key = style_key(style, planned.record["id"], self.styles)
        invalid = style if style in INVALID_STYLES else None

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self._settle("direct", planned, None if err is None else err.name(), key, invalid)
            if err is None:
                with self._lock:
                    self.by_style[style] += 1

        value: bytes | None
        if invalid is not None:
            value = invalid_value(style, planned.record, self.codec, self._schema_id, self.styles)
        elif style in NON_CANONICAL_STYLES:
            value, record = non_canonical(
                style, planned.record, self.codec, self._schema_id, self.styles
            )
            planned = Planned(planned.kind, record)
        else:
            value = self.codec.frame(self._schema_id, planned.record)
        producer = self._zstd if style == "compressed" else self._producer
        try:
            producer.produce(TOPIC, value, key, on_delivery=delivered)
        except BufferError:
            self._settle("direct", planned, "BufferError", key)
        except KafkaException as exc:
            self._settle("direct", planned, exc.args[0].name(), key)

    def _settle(
        self,
        path: str,
        planned: Planned,
        refused: str | None,
        key: bytes | None = b"",
        invalid: str | None = None,
    ) -> None:
        """Record one outcome: counters, the generator's belief, a line of the answers file
        (the key as hex: keys are any bytes; null for none). A record that is no review
        (`invalid`, its kind) changes no belief and is answered without a record."""
        sent_key = planned.key.encode() if key == b"" else key
        line: dict[str, Any] = {
            "path": path,
            "kind": planned.kind,
            "key": None if sent_key is None else sent_key.hex(),
        }
        with self._lock:
            self.generator.settle(planned, acked=refused is None and invalid is None)
            if refused is None and invalid is not None:
                self.acked += 1
                self.acked_by_path[path] += 1
                line["invalid"] = invalid
            elif refused is None:
                self.acked += 1
                self.acked_by_path[path] += 1
                self.by_kind[planned.kind] += 1
                line["record"] = planned.record
            else:
                self.refused[f"{path} {refused}"] += 1
                line["refused"] = refused
            if self._out is not None:
                self._out.write(json.dumps(line, ensure_ascii=False) + "\n")

    def _drain(self) -> None:
        """Wait for POSTs and deliveries; what is still pending after DRAIN_S is refused."""
        deadline = time.monotonic() + DRAIN_S
        with self._lock:
            posts = dict(self._posts)
        wait(posts, timeout=DRAIN_S)
        for future, planned in posts.items():
            if future.cancel():
                self._settle("post", planned, "not sent")
        for producer in (self._producer, self._zstd):
            if producer.flush(max(1.0, deadline - time.monotonic())):
                producer.purge()  # their delivery reports now say _PURGE_QUEUE
                producer.flush(5)

    def summary(self) -> str:
        """One line: the rate achieved and what was acknowledged or refused."""
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"load from id {self.generator.base_id}: {self.sent} sent in {self.elapsed_s:.1f} s "
            f"({rate:.1f}/s), "
            f"{self.acked} acked {dict(self.acked_by_path)}, refused {dict(self.refused)}, "
            f"kinds {dict(self.by_kind)}, direct writes by producer {dict(self.by_style)}, "
            f"{self.sample_reviews} sample reviews editable"
        )


# -- the ledger's side -------------------------------------------------------------------------


def parse_answers(lines: Iterable[str]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The acknowledged answers (path, kind, key, record) and refusals by "<path> <reason>".

    Blank lines are skipped; so is a cut-off last line (a load killed mid-write), while a bad
    line anywhere else raises ValueError naming it.
    """
    acked: list[dict[str, Any]] = []
    refused: Counter[str] = Counter()
    items = [line for line in lines if line.strip()]
    for number, line in enumerate(items, 1):
        try:
            answer = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(items):
                break
            raise ValueError(f"answers line {number} is not JSON: {exc}") from None
        if "refused" in answer:
            refused[f"{answer['path']} {answer['refused']}"] += 1
        else:
            acked.append(answer)
    return acked, refused


def cli_base_id(now_s: float | None = None) -> int:
    """A first review id for a CLI run: 6e9 + 1,000 per second of the clock (mod 1e6 s).

    Apart from `chaos.run`'s 5e9 .. 6e9 (which derives it from the seed, so a CLI run with the
    same seed would edit that run's reviews), and a later run starts above an earlier one's
    ids as long as it writes fewer than 1,000 records a second.
    """
    seconds = int(time.time() if now_s is None else now_s)
    return 6_000_000_000 + (seconds % 1_000_000) * 1_000


def main(argv: list[str] | None = None) -> int:
    """Run the load against the stack in the environment (`.stack/env`) and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40, help="records per second")
    parser.add_argument("--duration", type=float, default=20, help="seconds")
    parser.add_argument("--out", type=Path, required=True, help="answers file (JSON lines)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--base-id", type=int, default=None, help="first review id (default: from the clock)"
    )
    parser.add_argument("--post-share", type=float, default=0.6)
    parser.add_argument("--no-sample", action="store_true", help="edit no sample reviews")
    args = parser.parse_args(argv)
    try:
        token = writer_token()
    except OSError as exc:
        parser.error(str(exc))
    base_id = args.base_id if args.base_id is not None else cli_base_id()
    load = Load(
        api_url=os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000"),
        bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        registry_url=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"),
        rate=args.rate,
        seed=args.seed,
        base_id=base_id,
        out_path=args.out,
        token=token,
        post_share=args.post_share,
        sample_url="" if args.no_sample else None,
    )
    load.run(args.duration)
    print(load.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
