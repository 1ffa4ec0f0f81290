"""The chaos load (`chaos/load.py`) without services: each kind is what it claims, the records
are what the API and the wire carry, the answers file reads back.

Only the load must stay independent of `streaming/`; these tests import it to check that the
load predicts the API's mapping and the fraud filter's verdicts.
"""

from __future__ import annotations

import io
import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastavro import parse_schema, schemaless_reader

from chaos.load import (
    COMPRESSED_TEXT,
    CREATED_SPAN_MS,
    EQUAL,
    FLIP,
    INVALID_STYLES,
    KINDS,
    MOVE,
    NEAR_LIMIT_TEXT,
    NEW,
    NON_CANONICAL_STYLES,
    RATINGS,
    RERATING,
    STALE,
    STYLES,
    TITLE,
    TOPIC,
    Generator,
    Load,
    Planned,
    ReviewCodec,
    cli_base_id,
    fetch_sample,
    filler,
    invalid_value,
    non_canonical,
    parse_answers,
    producer_style,
    style_key,
    to_json,
    writer_token,
)
from chaos.oracle import DeadLetter, Oracle, ReviewDecoder, problem, without_logical_types
from streaming.core.fraud import HashFraudModel
from streaming.core.review_mapping import json_to_review

NOW = 1_790_000_000_000
BASE = 5_000_000_000


class Clock:
    """A wall clock the test moves: 20 ms per call, like a load at 50 records/s."""

    def __init__(self, start: int = NOW) -> None:
        self.t = start

    def __call__(self) -> int:
        self.t += 20
        return self.t


@pytest.fixture(scope="module")
def codec() -> ReviewCodec:
    return ReviewCodec()


def settled_run(
    codec: ReviewCodec, n: int, seed: int = 7, **kw: Any
) -> list[tuple[Planned, dict | None, int]]:
    """n records, each acknowledged at once: (planned, the current version it edited, now)."""
    clock = Clock()
    gen = Generator(seed, BASE, codec, now_ms=clock, **kw)
    out = []
    for _ in range(n):
        planned = gen.next()
        before = gen.current.get(planned.record["id"])
        out.append((planned, before, clock.t))
        gen.settle(planned, acked=True)
    return out


def test_every_kind_is_what_it_claims(codec: ReviewCodec) -> None:
    run = settled_run(codec, 3000)
    kinds = Counter(p.kind for p, _, _ in run)
    assert set(kinds) == set(KINDS), kinds
    seen: set[int] = set()
    for planned, before, now in run:
        r = planned.record
        assert r["created"] <= r["modified"] <= now + 60_000
        assert r["created"] >= NOW - CREATED_SPAN_MS
        assert r["rating"] in RATINGS
        if planned.kind == NEW:
            assert before is None and r["id"] not in seen and r["id"] >= BASE
            seen.add(r["id"])
            continue
        assert before is not None and r["id"] in seen
        assert r["created"] == before["created"]
        if planned.kind == RERATING:
            assert r["rating"] != before["rating"] and r["modified"] > before["modified"]
        elif planned.kind == FLIP:
            assert codec.is_fraud(r) != codec.is_fraud(before)
            assert r["modified"] > before["modified"]
        elif planned.kind == MOVE:
            assert r["course"]["id"] != before["course"]["id"]
            assert r["modified"] > before["modified"]
        elif planned.kind == EQUAL:
            assert r["modified"] == before["modified"]
            assert (r["rating"], r["content"]) != (before["rating"], before["content"])
        elif planned.kind == STALE:
            assert before["created"] <= r["modified"] < before["modified"]
        elif planned.kind == TITLE:
            assert r["course"]["id"] == before["course"]["id"]
            assert r["course"]["title"] != before["course"]["title"]
            assert r["modified"] > before["modified"]


def test_title_change_names_a_title_the_course_never_had(codec: ReviewCodec) -> None:
    titles: dict[int, set[str]] = {}
    for planned, _, _ in settled_run(codec, 3000):
        course = planned.record["course"]
        if planned.kind == TITLE:
            assert course["title"] not in titles.get(course["id"], set())
        titles.setdefault(course["id"], set()).add(course["title"])


def test_ids_and_courses_follow_the_seed(codec: ReviewCodec) -> None:
    a = [(p.kind, p.record) for p, _, _ in settled_run(codec, 500, seed=3)]
    b = [(p.kind, p.record) for p, _, _ in settled_run(codec, 500, seed=3)]
    c = [(p.kind, p.record) for p, _, _ in settled_run(codec, 500, seed=4)]
    assert a == b
    assert a != c
    new_ids = [r["id"] for kind, r in a if kind == NEW]
    assert new_ids == list(range(BASE, BASE + len(new_ids)))
    courses = {r["course"]["id"] for _, r in a}
    assert courses <= set(range(BASE, BASE + 40))
    other = {
        p.record["course"]["id"] for p, _, _ in settled_run(codec, 200, course_base=900, courses=5)
    }
    assert other <= set(range(900, 905))


def test_cli_runs_start_apart_from_chaos_runs_and_from_each_other() -> None:
    first, later = cli_base_id(1_796_221_717), cli_base_id(1_796_221_718)
    assert 6_000_000_000 <= first < later < 7_000_000_000
    assert later - first == 1_000  # room for a second of writes at up to 1,000 records/s


def test_weights_pick_the_mix(codec: ReviewCodec) -> None:
    kinds = Counter(p.kind for p, _, _ in settled_run(codec, 400, weights={STALE: 0, TITLE: 0}))
    assert kinds[STALE] == kinds[TITLE] == 0
    with pytest.raises(ValueError, match="unknown kinds"):
        Generator(1, BASE, codec, weights={"rename": 1.0})


def test_a_review_in_flight_is_never_edited(codec: ReviewCodec) -> None:
    gen = Generator(5, BASE, codec, now_ms=Clock())
    flying: list[Planned] = []
    for i in range(2000):
        planned = gen.next()
        assert planned.record["id"] not in {p.record["id"] for p in flying}
        flying.append(planned)
        if i % 3 == 0:  # settle the oldest, acknowledged or refused
            gen.settle(flying.pop(0), acked=i % 2 == 0)


def test_a_refused_version_leaves_the_belief_alone(codec: ReviewCodec) -> None:
    gen = Generator(5, BASE, codec, now_ms=Clock(), weights={NEW: 1.0})
    first = gen.next()
    gen.settle(first, acked=True)
    gen.weights = [1.0 if k == RERATING else 0.0 for k in gen.kinds]
    edit = gen.next()
    assert edit.kind == RERATING
    gen.settle(edit, acked=False)
    assert gen.current[first.record["id"]] == first.record
    refused_new = Generator(5, BASE, codec, now_ms=Clock(), weights={NEW: 1.0})
    lost = refused_new.next()
    refused_new.settle(lost, acked=False)
    assert lost.record["id"] not in refused_new.current


def test_sample_reviews_are_edited_and_their_courses_keep_their_titles(
    codec: ReviewCodec,
) -> None:
    clock = Clock()
    gen = Generator(11, BASE, codec, now_ms=clock)
    sample = [
        {
            "id": 100 + i,
            "title": "",
            "content": "",
            "rating": "5.0",
            "created": NOW - 10 * 86_400_000,
            "modified": NOW - 86_400_000,
            "user": {"title": "U", "name": "U", "display_name": "U"},
            "course": {"id": 42, "title": "Sample course", "url": "/sample/"},
        }
        for i in range(20)
    ]
    future = {**sample[0], "id": 99, "modified": NOW + 10**9}
    assert gen.add_sample([*sample, future]) == 20
    kinds: Counter[str] = Counter()
    for _ in range(2000):
        planned = gen.next()
        r = planned.record
        if r["id"] < BASE:
            kinds[planned.kind] += 1
            if planned.kind == TITLE:  # only once it has moved to a course of the load's
                assert r["course"]["id"] in gen.own_course_set
        if r["course"]["id"] == 42:
            assert r["course"]["title"] == "Sample course"
        gen.settle(planned, acked=True)
    assert kinds[RERATING] and kinds[MOVE] and kinds[EQUAL]


def test_fetch_sample_reads_the_sources_pages() -> None:
    course = {"_class": "course", "id": 7, "title": "Kafka", "url": "/kafka/"}
    item = {
        "_class": "course_review",
        "id": 3,
        "title": None,
        "content": "ok",
        "rating": 4.5,
        "created": "2026-11-30T00:45:44Z",
        "modified": "2026-11-30T00:45:45Z",
        "user": {"_class": "user", "title": "A B", "name": "A", "display_name": "A B"},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/courses/"):
            return httpx.Response(200, json={"results": [course]})
        assert request.url.path == "/api-2.0/courses/7/reviews/"
        assert "course" in request.url.params["fields[course_review]"]
        return httpx.Response(200, json={"results": [item, {"id": 4, "rating": "x"}]})

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        (review,) = fetch_sample(client, "http://source/api-2.0")
    assert review["rating"] == "4.5" and review["title"] is None
    assert review["modified"] - review["created"] == 1000
    assert review["course"] == {"id": 7, "title": "Kafka", "url": "/kafka/"}


def test_post_body_maps_to_exactly_the_record(codec: ReviewCodec) -> None:
    """The API's own mapping of what the load POSTs gives the record the load believes in."""
    for planned, _, _ in settled_run(codec, 300):
        body = json.loads(json.dumps(to_json(planned.record), ensure_ascii=False))
        assert json_to_review(body) == planned.record


def test_wire_encoding_round_trips(codec: ReviewCodec) -> None:
    reader = parse_schema(without_logical_types(json.loads(codec.text)))
    for planned, _, _ in settled_run(codec, 200):
        value = codec.frame(513, planned.record)
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") == 513
        decoded = schemaless_reader(io.BytesIO(value[5:]), reader, reader)
        assert decoded == planned.record


def test_the_fraud_rule_is_the_stream_s(codec: ReviewCodec) -> None:
    model = HashFraudModel()
    records = [p.record for p, _, _ in settled_run(codec, 2000)]
    verdicts = [codec.is_fraud(r) for r in records]
    assert verdicts == [model.is_fraud(r) for r in records]
    assert 0 < sum(verdicts) < len(records)


def test_parse_answers() -> None:
    record = {"id": 1, "rating": "4.0"}
    lines = [
        json.dumps({"path": "post", "kind": NEW, "key": "1", "record": record}),
        "",
        json.dumps({"path": "post", "kind": MOVE, "key": "2", "refused": "503"}),
        json.dumps({"path": "direct", "kind": NEW, "key": "3", "refused": "_MSG_TIMED_OUT"}),
        json.dumps({"path": "post", "kind": FLIP, "key": "4", "refused": "503"}),
        '{"path": "direct", "ki',
    ]
    acked, refused = parse_answers(lines)
    assert acked == [{"path": "post", "kind": NEW, "key": "1", "record": record}]
    assert refused == Counter({"post 503": 2, "direct _MSG_TIMED_OUT": 1})
    with pytest.raises(ValueError, match="line 2"):
        parse_answers([lines[0], "not json", lines[2]])


class FakeProducer:
    """Delivers on poll; every fifth record fails, as a broker outage would."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable, bytes, bytes]] = []
        self.written: list[tuple[bytes, bytes]] = []
        self.count = 0

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable) -> None:
        assert topic == TOPIC
        self.queue.append((on_delivery, key, value))

    def poll(self, timeout: float) -> int:
        served, self.queue = self.queue, []
        for callback, key, value in served:
            self.count += 1
            failed = self.count % 5 == 0
            if not failed:
                self.written.append((key, value))
            callback(FakeError() if failed else None, None)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0

    def purge(self) -> None:
        self.queue.clear()


class FakeError:
    def name(self) -> str:
        return "_MSG_TIMED_OUT"


class OfflineLoad(Load):
    """The load with a fake API (every third POST 503), a fake producer and no registry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fake = FakeProducer()
        self.posted: list[dict] = []
        self.post_lock = threading.Lock()

    def make_producer(self, compression: str = "none") -> FakeProducer:
        return self.fake  # one fake for both codecs: what is written is what counts

    def make_client(self) -> httpx.Client:
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.headers["content-type"] == "application/json"
            assert request.headers["authorization"] == "Bearer secret"
            with self.post_lock:
                self.posted.append(json.loads(request.content))
                refuse = len(self.posted) % 3 == 0
            return httpx.Response(503 if refuse else 201)

        return httpx.Client(transport=httpx.MockTransport(answer))

    def lookup_schema_id(self) -> int:
        return 77


def test_offline_run_writes_a_faithful_ledger(tmp_path: Path, codec: ReviewCodec) -> None:
    out = tmp_path / "answers.jsonl"
    load = OfflineLoad(
        "http://api", "kafka", "http://registry", 400, 1, BASE, out, token="secret", sample_url=""
    )
    load.run(0.5)
    acked, refused = parse_answers(out.read_text(encoding="utf-8").splitlines())
    assert 150 <= load.sent <= 201
    assert len(acked) == load.acked and refused == load.refused
    assert load.acked + sum(refused.values()) == load.sent
    assert set(refused) == {"post 503", "direct _MSG_TIMED_OUT"}
    by_path = Counter(a["path"] for a in acked)
    assert by_path == load.acked_by_path and by_path["post"] and by_path["direct"]
    assert Counter(a["kind"] for a in acked if "record" in a) == load.by_kind
    decoder = ReviewDecoder({77: codec.text}.get)
    direct = Counter(
        (None if k is None else k.hex(), as_read(decoder, v)) for k, v in load.fake.written
    )
    assert direct == Counter(
        (a["key"], json.dumps(a["record"], sort_keys=True) if "record" in a else "no review")
        for a in acked
        if a["path"] == "direct"
    )
    keys = Counter(direct_key_style(a) for a in acked if a["path"] == "direct" and "record" in a)
    assert keys["id"] and keys["none"] and keys["other"], keys  # the shared topic's producers
    posted = Counter(json.dumps(json_to_review(p), sort_keys=True) for p in load.posted)
    for a in acked:
        if a["path"] == "post":
            assert a["key"] == str(a["record"]["id"]).encode().hex()
            assert posted[json.dumps(a["record"], sort_keys=True)] > 0


def as_read(decoder: ReviewDecoder, value: bytes | None) -> str:
    """A written value as the oracle reads it: the review as JSON, or "no review"."""
    try:
        review = decoder.read(*decoder.split(value))
    except DeadLetter:
        return "no review"
    return "no review" if problem(review) else json.dumps(review, sort_keys=True)


@pytest.mark.parametrize("style", INVALID_STYLES)
def test_each_invalid_style_is_a_record_of_its_kind(codec: ReviewCodec, style: str) -> None:
    oracle = Oracle({77: codec.text}.get)
    rng = random.Random(style)
    record = Generator(1, BASE, codec).next().record
    for offset in range(30):
        oracle.add(0, offset, None, invalid_value(style, record, codec, 77, rng))
    assert set(oracle.refusals.values()) == {style}
    assert len(oracle.refusals) == 30


@pytest.mark.parametrize("style", NON_CANONICAL_STYLES)
def test_each_non_canonical_style_is_a_valid_review_read_as_answered(
    codec: ReviewCodec, style: str
) -> None:
    decoder = ReviewDecoder({77: codec.text}.get)
    rng = random.Random(style)
    record = Generator(1, BASE, codec).next().record
    for _ in range(30):
        value, answered = non_canonical(style, record, codec, 77, rng)
        assert value != codec.frame(77, answered), "bytes Avro's writers never produce"
        assert as_read(decoder, value) == json.dumps(answered, sort_keys=True)


def direct_key_style(answer: dict) -> str:
    rid = answer["record"]["id"]
    if answer["key"] is None:
        return "none"
    if answer["key"] == str(rid).encode().hex():
        return "id"
    if answer["key"] == rid.to_bytes(8, "big", signed=True).hex():
        return "long"
    return "other"


def test_the_styles_of_the_shared_topics_producers() -> None:
    rng = random.Random(3)
    drawn = Counter(producer_style(rng)[0] for _ in range(20_000))
    assert set(drawn) == {s for s, _ in STYLES}
    assert 0.01 < drawn["near-limit"] / 20_000 < 0.03
    assert style_key("none", 5, rng) is None
    assert style_key("long", 5, rng) == b"\0" * 7 + b"\5"
    assert style_key("id", 5, rng) == b"5"
    assert len(filler(NEAR_LIMIT_TEXT, "near-limit")) == NEAR_LIMIT_TEXT
    assert len(filler(COMPRESSED_TEXT, "compressed")) == COMPRESSED_TEXT


def test_a_stop_event_ends_the_run_early(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    load = OfflineLoad(
        "http://api", "kafka", "http://r", 50, 1, BASE, tmp_path / "a.jsonl", sample_url=""
    )
    load.run(60, stop_event=stop)
    assert load.sent == 0


def test_the_writer_token_comes_from_its_file_and_errors_name_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("a-writer-token-of-32-characters!\n")
    monkeypatch.setenv("PIPELINE_API_TOKEN_FILE", str(path))
    assert writer_token() == "a-writer-token-of-32-characters!"
    path.unlink()
    with pytest.raises(OSError, match="PIPELINE_API_TOKEN_FILE"):
        writer_token()
    monkeypatch.delenv("PIPELINE_API_TOKEN_FILE")
    with pytest.raises(OSError, match="PIPELINE_API_TOKEN_FILE"):
        writer_token()
