"""The chaos run's independent check: what the pipeline published against `chaos.oracle`.

It reads, over real connections and with nothing of `streaming/` or `orchestration/` (only the
oracle, the bookkeeping of `chaos.ledger` and the `.avsc` files): every committed record of
`udemy-reviews` (the oracle's input), the latest `long-term-stats` and `recent-stats` record per
course, the sink's PostgreSQL tables, the read API, and the fraud filter's outputs. Then:

- statistics: the oracle's expectation for the as-of day against each of the four views;
- routing: every input record of the run's window (by its position, which each output names in
  its headers) in exactly one of valid / fraud / dead-letter,
  once, and in the one the oracle's fraud rule names;
- acknowledgements: every record the load saw acknowledged (a POST answered 2xx, or a direct
  write delivered) in `udemy-reviews`, as a multiset of (key, decoded record), so two
  acknowledged edits of one review are two records, not a duplicate.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import httpx
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from fastavro import parse_schema, schemaless_reader

from chaos.ledger import lost_and_duplicated
from chaos.oracle import (
    DEAD,
    FRAUD,
    VALID,
    CourseExpectation,
    Oracle,
    as_java_reads,
    compare,
    edit_kinds,
    without_logical_types,
)
from streaming.settings import KafkaSettings, kafka_security, load, registry_auth, registry_verify

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
Raw = tuple[int, int, bytes | None, bytes | None]
"""A record as read: partition, offset, key, value."""
Record = tuple[bytes | None, bytes | None]
Routed = tuple[tuple[int, int] | None, bytes | None, bytes | None]
"""An output record: the (partition, offset) in udemy-reviews its headers name, key, value."""


class RegistrySchemas:
    """Writer schemas by id from a Confluent-compatible registry (GET /schemas/ids/{id}), cached;
    None for an id the registry does not know (404)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._auth = registry_auth()  # SCHEMA_REGISTRY_USER's, when the registry asks for a login
        self._verify = registry_verify()  # SCHEMA_REGISTRY_CA_FILE's CA for an https:// URL
        self._cache: dict[int, Any] = {}

    def __call__(self, schema_id: int) -> Any:
        if schema_id not in self._cache:
            r = httpx.get(
                f"{self.url}/schemas/ids/{schema_id}",
                auth=self._auth,
                verify=self._verify,
                timeout=30,
            )
            if r.status_code == 404:
                self._cache[schema_id] = None
            else:
                r.raise_for_status()
                self._cache[schema_id] = json.loads(r.json()["schema"])
        return self._cache[schema_id]


def operator_login() -> dict[str, str]:
    """The login of the environment (`.stack/env`: the operator's), as librdkafka settings."""
    return kafka_security(load(KafkaSettings))


def read_topic(
    bootstrap: str,
    topic: str,
    start: Mapping[int, int] | None = None,
    keep: Callable[[Message], bool] = lambda _m: True,
    timeout_s: float = 300,
) -> list[Raw]:
    """Every committed record of `topic` from `start` (default: the beginning) to its end now,
    those `keep` accepts."""
    c = Consumer(
        {
            **operator_login(),
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-check",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",  # aborted transactions are not data
            "enable.partition.eof": True,
        }
    )
    try:
        parts = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
        begin = {p: (start or {}).get(p, 0) for p in parts}
        c.assign([TopicPartition(topic, p, max(begin[p], 0)) for p in parts])
        out: list[Raw] = []
        pending = set(parts)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for m in c.consume(10_000, timeout=1.0):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise RuntimeError(f"reading {topic}: {err}")
                if keep(m):
                    out.append((m.partition(), m.offset(), m.key(), m.value()))  # type: ignore[arg-type]  # a consumed record's is set
        if pending:
            raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to the end")
        return out
    finally:
        c.close()


def decode_statistics(records: Iterable[Raw], schemas: Callable[[int], Any]) -> dict[int, dict]:
    """The latest CourseStatistic per course id of a compacted stats topic (last by offset)."""
    latest: dict[int, tuple[int, dict]] = {}
    parsed: dict[int, Any] = {}
    for _p, offset, _key, value in records:
        if value is None:  # a tombstone: the course has no record
            continue
        (schema_id,) = struct.unpack(">I", value[1:5])
        if schema_id not in parsed:
            parsed[schema_id] = parse_schema(schemas(schema_id))
        stat = cast(
            "dict[str, Any]", schemaless_reader(BytesIO(value[5:]), parsed[schema_id], None)
        )
        course = int(stat["course_id"])
        if course not in latest or latest[course][0] < offset:
            latest[course] = (offset, stat)
    return {c: s for c, (_o, s) in latest.items()}


def table_rows(database_url: str, table: str) -> dict[int, dict]:
    """A sink table's rows by course id."""
    engine = sa.create_engine(database_url)
    try:
        if not sa.inspect(engine).has_table(table, schema="public"):
            return {}  # the sink creates it with its first record
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM public.{table}")).mappings().all()
        return {int(r["course_id"]): dict(r) for r in rows}
    finally:
        engine.dispose()


def api_stats(api_url: str, courses: Iterable[int]) -> tuple[dict[int, dict], dict[int, dict]]:
    """The read API's all-time and recent statistics per course (timestamps parsed)."""
    all_time: dict[int, dict] = {}
    recent: dict[int, dict] = {}
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for course in courses:
            r = client.get(f"/courses/{course}/stats")
            if r.status_code == 404:
                continue
            r.raise_for_status()
            body = r.json()
            for kind, out in (("all_time", all_time), ("recent", recent)):
                if body.get(kind) is not None:
                    out[course] = {k: _parsed(k, v) for k, v in body[kind].items()}
    return all_time, recent


def _parsed(name: str, value: Any) -> Any:
    if name == "last_review_time" and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if name.startswith("window_") and isinstance(value, str):
        return datetime.fromisoformat(value).date()
    return value


def routing(
    window: Iterable[Raw], oracle: Oracle, outputs: Mapping[str, list[Routed]]
) -> dict[str, int]:
    """Each input record of the window, known by its position in udemy-reviews (which every
    output names in its headers), in exactly one of the outputs, once: lost, duplicated; and
    misrouted: in another topic than its verdict names, with other bytes than it had, or (a
    valid or fraud copy) not keyed by its review id, whatever key it came with."""
    inputs = {(p, o): v for p, o, _k, v in window}
    seen: Counter[tuple[int, int]] = Counter()
    misrouted = 0
    for verdict, out in outputs.items():
        for pos, key, value in out:
            if pos not in inputs:
                continue  # an output of a record before the window
            seen[pos] += 1
            wrong = value != inputs[pos] or oracle.verdicts.get(pos) != verdict
            if verdict in (VALID, FRAUD):
                wrong = wrong or key != str(oracle.review_ids.get(pos)).encode()
            misrouted += wrong
    lost, duplicated = lost_and_duplicated(Counter(inputs.keys()), seen)
    return {"lost": lost, "duplicated": duplicated, "misrouted": misrouted}


def _headers(m: Message) -> dict[str, bytes | None]:
    """A consumed record's headers by name (a list of (str, bytes) pairs; the stub: or a dict)."""
    return dict(m.headers() or [])  # type: ignore[arg-type]  # consumed headers are bytes


def source_position(m: Message) -> tuple[int, int] | None:
    """The input position an output names: the fraud filter's `source.position` header
    (int32 partition, int64 offset, big-endian) or a dead letter's `dlq.source.*` headers."""
    headers = _headers(m)
    if "dlq.source.partition" in headers:  # a dead letter keeps the input's own headers too
        try:
            return int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])  # type: ignore[arg-type]  # None: TypeError
        except (KeyError, TypeError, ValueError):
            return None
    value = headers.get("source.position")
    if value is not None and len(value) == 12:
        partition, offset = struct.unpack(">iq", value)
        return partition, offset
    return None


def input_position(m: Message) -> tuple[int, int] | None:
    """Where in udemy-reviews a dead letter's record was: the fraud filter's carry its own
    input coordinates, the aggregator's the fraud filter's `source.position` header."""
    headers = _headers(m)
    if headers.get("dlq.source.topic") == b"udemy-reviews":
        return source_position(m)
    value = headers.get("source.position")
    if value is not None and len(value) == 12:
        partition, offset = struct.unpack(">iq", value)
        return partition, offset
    return None


def read_refusals(bootstrap: str, start: Mapping[int, int]) -> dict[tuple[int, int], str]:
    """{input position: kind} of the stream's dead letters that name a kind of the validity
    rule (`dlq.kind`), from `start` of the dead-letter topic."""
    out: dict[tuple[int, int], str] = {}

    def note(m: Message) -> bool:
        kind = _headers(m).get("dlq.kind")
        position = input_position(m) if kind is not None else None
        if kind is not None and position is not None:
            out[position] = kind.decode()
        return False

    read_topic(bootstrap, "reviews-dead-letter", start, note)
    return out


def refusal_problems(
    window: set[tuple[int, int]],
    expected: Mapping[tuple[int, int], str],
    stream: Mapping[tuple[int, int], str],
) -> list[str]:
    """Records of the window the oracle and the stream refuse differently (or only one of
    them), in words: 'refusals: ...' lines, the first few by position."""
    want = {p: k for p, k in expected.items() if p in window}
    got = {p: k for p, k in stream.items() if p in window}
    differ = sorted(p for p in want.keys() | got.keys() if want.get(p) != got.get(p))
    return [
        f"refusals: input {p} refused by the oracle as {want.get(p)}, by the stream as {got.get(p)}"
        for p in differ[:20]
    ] + ([f"refusals: {len(differ) - 20} more differ"] if len(differ) > 20 else [])


def read_routed(
    bootstrap: str, topic: str, start: Mapping[int, int], keep: Callable[[Message], bool]
) -> list[Routed]:
    """The fraud filter's outputs in `topic` from `start`, each with the input position it
    names."""
    positions: dict[tuple[int, int], tuple[int, int] | None] = {}

    def note(m: Message) -> bool:
        if keep(m):
            positions[(m.partition(), m.offset())] = source_position(m)  # type: ignore[index]  # a consumed record's is set
            return True
        return False

    return [(positions[(p, o)], k, v) for p, o, k, v in read_topic(bootstrap, topic, start, note)]


def decoded_inputs(window: Iterable[Raw], schemas: Callable[[int], Any]) -> Counter[str]:
    """(key, record) of each readable input record, as canonical JSON (created/modified millis)."""
    reader = parse_schema(without_logical_types(json.loads((SCHEMAS / "review.avsc").read_text())))
    out: Counter[str] = Counter()
    writers: dict[int, Any] = {}
    for _p, _o, key, value in window:
        if value is None or len(value) < 5 or value[0] != 0:
            continue
        schema_id = struct.unpack(">I", value[1:5])[0]
        if schema_id not in writers:
            found = schemas(schema_id)
            writers[schema_id] = found and parse_schema(without_logical_types(found))
        if writers[schema_id] is None:
            continue
        try:
            record = schemaless_reader(
                BytesIO(value[5:]),
                writers[schema_id],
                reader,
                handle_unicode_errors="surrogateescape",
            )
        except Exception:  # a malformed body is a dead letter: never acknowledged as written
            continue
        out[canonical(key, as_java_reads(record))] += 1
    return out


def canonical(key: bytes | str | None, record: Mapping[str, Any]) -> str:
    """One (key, record) as a comparable string; a key as hex (keys are any bytes: an 8-byte
    long is no text), as the load writes them."""
    k = key.hex() if isinstance(key, bytes) else key
    return json.dumps([k, record], sort_keys=True, separators=(",", ":"))


def acknowledged_missing(acked: Iterable[Mapping[str, Any]], inputs: Counter[str]) -> int:
    """Acknowledged records (the load's answers) not in the input topic, as a multiset; a
    record that is no review is answered without one (the routing check covers it)."""
    want = Counter(canonical(a["key"], a["record"]) for a in acked if "record" in a)
    return sum((want - inputs).values())


@dataclass
class Verdict:
    """What the check found; `problems` lists every mismatch in words."""

    courses: int = 0
    inputs: int = 0
    routing: dict[str, int] = field(default_factory=dict)
    acked_missing: int = 0
    edits: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def stats_exact(self) -> bool:
        return not any(p.startswith("stats ") for p in self.problems)


def check_statistics(
    expected: Mapping[int, CourseExpectation],
    views: Mapping[str, tuple[Mapping[int, Mapping], Mapping[int, Mapping]]],
    as_of_day: int,
) -> list[str]:
    """The oracle against each view (topics, tables, API): 'stats <view>: <mismatch>' lines."""
    out = []
    for view, (all_time, recent) in views.items():
        out += [f"stats {view}: {m}" for m in compare(expected, all_time, recent, as_of_day)]
    return out


def run_check(
    *,
    bootstrap: str,
    registry_url: str,
    database_url: str,
    api_url: str,
    start: Mapping[str, Mapping[int, int]],
    acked: list[Mapping[str, Any]],
    as_of_day: int,
    log: Callable[[str], None] = print,
) -> Verdict:
    """Read everything back and judge it (see the module docstring)."""
    schemas = RegistrySchemas(registry_url)
    verdict = Verdict()
    everything = read_topic(bootstrap, "udemy-reviews")
    oracle = Oracle(schemas)
    for p, o, k, v in everything:
        oracle.add(p, o, k, v)
    expected = oracle.result(as_of_day)
    verdict.courses, verdict.inputs = len(expected), len(everything)
    log(f"oracle: {len(everything):,} input records, {len(expected):,} courses")
    begin = start["udemy-reviews"]
    window = [r for r in everything if r[1] >= begin.get(r[0], 0)]
    in_window = {(p, o) for p, o, _k, _v in window}
    verdict.edits = edit_kinds(v for v in oracle.history if (v.partition, v.offset) in in_window)

    outputs = {
        VALID: read_routed(bootstrap, "udemy-reviews-valid", start["udemy-reviews-valid"], every),
        FRAUD: read_routed(bootstrap, "udemy-reviews-fraud", start["udemy-reviews-fraud"], every),
        DEAD: read_routed(
            bootstrap, "reviews-dead-letter", start["reviews-dead-letter"], from_input
        ),
    }
    verdict.routing = routing(window, oracle, outputs)
    for name, n in verdict.routing.items():
        if n:
            verdict.problems.append(f"routing: {n} input records {name}")
    stream_refused = read_refusals(bootstrap, start["reviews-dead-letter"])
    verdict.refused = dict(Counter(k for pos, k in oracle.refusals.items() if pos in in_window))
    verdict.problems += refusal_problems(in_window, oracle.refusals, stream_refused)

    views = {
        "topics": (
            decode_statistics(read_topic(bootstrap, "long-term-stats"), schemas),
            decode_statistics(read_topic(bootstrap, "recent-stats"), schemas),
        ),
        "postgres": (
            table_rows(database_url, "long_term_stats"),
            table_rows(database_url, "recent_stats"),
        ),
    }
    views["api"] = api_stats(api_url, sorted(expected))
    verdict.problems += check_statistics(expected, views, as_of_day)

    verdict.acked_missing = acknowledged_missing(acked, decoded_inputs(window, schemas))
    if verdict.acked_missing:
        verdict.problems.append(f"acknowledged: {verdict.acked_missing} records not in the input")
    return verdict


def every(_m: Message) -> bool:
    return True


def from_input(m: Message) -> bool:
    """A dead letter of the input topic (the fraud filter's; the aggregator's have others)."""
    return dict(m.headers() or []).get("dlq.source.topic") == b"udemy-reviews"
