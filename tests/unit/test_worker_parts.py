"""The stream workers' parts that need no broker: the source-position header, the transaction's
commit and retry rules (against a fake producer), the co-partitioning check, the filtering of
consumer error events, and the consistency of the pipeline's declaration."""

from __future__ import annotations

import logging
import re
from concurrent.futures import Future
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import pipeline
from streaming.core import source_position
from streaming.sink.render import CONNECTORS_DIR, declared_connectors, load_connector
from streaming.workers import transaction as transaction_module
from streaming.workers.clients import records as records_of
from streaming.workers.clients import take
from streaming.workers.metrics import WorkerMetrics
from streaming.workers.state import ChangelogStore
from streaming.workers.stats_aggregator import _purged
from streaming.workers.stores import check_copartitioned
from streaming.workers.transaction import CALL_TIMEOUT_S, Transaction

ROOT = Path(__file__).resolve().parents[2]
HEADER = source_position.HEADER


# -- source position -------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))
def test_position_round_trip(partition: int, offset: int) -> None:
    value = source_position.encode(partition, offset)
    assert len(value) == 12
    assert source_position.decode(value) == (partition, offset)


def test_positions_order_like_offsets_within_a_partition() -> None:
    """Big-endian: the bytes of a later offset sort after (readable in any tool)."""
    assert source_position.encode(1, 255) < source_position.encode(1, 256)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "expected 12 bytes"),
        (b"", "expected 12 bytes"),
        (bytes(11), "expected 12 bytes"),
        (bytes(13), "expected 12 bytes"),
        (b"\xff" * 4 + bytes(8), "negative"),
        (bytes(4) + b"\xff" * 8, "negative"),
    ],
)
def test_decode_refuses_what_is_not_a_position(value: bytes | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        source_position.decode(value)
    assert HEADER in str(info.value)


def test_find_takes_the_last_position_header() -> None:
    headers = [
        ("trace", b"x"),
        (HEADER, source_position.encode(0, 5)),
        ("other", None),
        (HEADER, source_position.encode(2, 9)),
    ]
    assert source_position.find(headers) == (2, 9)
    assert source_position.find(headers[:3]) == (0, 5)


@pytest.mark.parametrize("headers", [None, [], [("trace", b"x")], [("Source.Position", bytes(12))]])
def test_find_without_the_header_names_it(headers) -> None:
    with pytest.raises(ValueError, match=re.escape(f"no {HEADER} header")):
        source_position.find(headers)


def test_find_refuses_a_malformed_header() -> None:
    with pytest.raises(ValueError, match="expected 12 bytes"):
        source_position.find([(HEADER, b"forged")])


def test_replace_drops_a_claimed_position_and_keeps_the_rest() -> None:
    forged = source_position.encode(9, 999)
    headers = [("a", b"1"), (HEADER, forged), ("b", None), (HEADER, b"junk")]
    out = source_position.replace(headers, 3, 42)
    assert out == [("a", b"1"), ("b", None), (HEADER, source_position.encode(3, 42))]
    assert source_position.find(out) == (3, 42)
    assert headers[1] == (HEADER, forged), "the input is not modified"
    for empty in (None, []):
        assert source_position.replace(empty, 0, 0) == [(HEADER, source_position.encode(0, 0))]


# -- transaction -----------------------------------------------------------------------------------
def kafka_error(
    *,
    retriable: bool = False,
    fatal: bool = False,
    abort: bool = False,
    code: int = KafkaError._TIMED_OUT,
) -> KafkaException:
    return KafkaException(
        KafkaError(code, "test", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


class FakeProducer:
    """The transactional calls of a Producer; `failures[name]` raise first, in order."""

    def __init__(self, **failures: list[Exception]) -> None:
        self.failures = {name: list(errs) for name, errs in failures.items()}
        self.calls: list[tuple] = []

    def _call(self, name: str, *args: object) -> None:
        self.calls.append((name, *args))
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def send_offsets_to_transaction(self, positions, metadata, timeout) -> None:
        self._call("send_offsets_to_transaction", positions, metadata, timeout)

    def commit_transaction(self, timeout) -> None:
        self._call("commit_transaction", timeout)

    def abort_transaction(self, timeout) -> None:
        self._call("abort_transaction", timeout)

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


POSITIONS = [TopicPartition("udemy-reviews-valid", 0, 17), TopicPartition("changes", 1, 3)]
METADATA = object()


def test_commit_sends_offsets_then_commits_then_begins() -> None:
    producer = FakeProducer()
    cp = Transaction(producer, every_records=10, interval_s=60)  # type: ignore[arg-type]  # a fake producer
    cp.begin()
    cp.add(4)
    cp.commit(POSITIONS, METADATA)
    assert producer.calls == [
        ("begin_transaction",),
        ("send_offsets_to_transaction", POSITIONS, METADATA, CALL_TIMEOUT_S),
        ("commit_transaction", CALL_TIMEOUT_S),
        ("begin_transaction",),
    ]
    assert (cp.records, cp.retries) == (0, 0)


@pytest.mark.parametrize(
    ("records", "age", "drained", "due"),
    [
        (0, 5.0, True, False),  # nothing to commit, however old
        (3, 0.005, True, False),  # drained but younger than the floor: more may join
        (3, 0.01, True, True),  # drained at the floor: commit, no timer
        (3, 0.05, False, False),  # more to read: the transaction grows
        (3, 0.1, False, True),  # ... up to its interval
        (10, 0.0, False, True),  # ... or its record count
    ],
)
def test_a_transaction_is_due_when_drained_at_its_floor_or_full(
    monkeypatch, records: int, age: float, drained: bool, due: bool
) -> None:
    now = [0.0]  # ages exact in floating point
    monkeypatch.setattr(transaction_module.time, "monotonic", lambda: now[0])
    cp = Transaction(FakeProducer(), 10, 0.1, min_age_s=0.01)  # type: ignore[arg-type]  # a fake producer
    cp.begin()
    cp.add(records)
    now[0] += age
    assert cp.due(drained) is due
    assert cp.time_left() == pytest.approx(max(0.0, 0.01 - age))


def test_the_floor_is_never_above_the_interval() -> None:
    cp = Transaction(FakeProducer(), 10, 0.1, min_age_s=5)  # type: ignore[arg-type]  # a fake producer
    assert cp.min_age_s == 0.1


def test_commit_without_positions_skips_send_offsets() -> None:
    producer = FakeProducer()
    cp = Transaction(producer, 10, 60)  # type: ignore[arg-type]  # a fake producer
    cp.add(1)
    cp.commit([], METADATA)
    assert producer.names() == ["commit_transaction", "begin_transaction"]


@pytest.mark.parametrize("method", ["commit_transaction", "send_offsets_to_transaction"])
def test_commit_retries_retriable_errors(method: str) -> None:
    producer = FakeProducer(**{method: [kafka_error(retriable=True)] * 2})
    cp = Transaction(producer, 10, 60)  # type: ignore[arg-type]  # a fake producer
    cp.add(3)
    cp.commit(POSITIONS, METADATA)
    assert producer.names() == [
        *["send_offsets_to_transaction"] * (3 if method == "send_offsets_to_transaction" else 1),
        *["commit_transaction"] * (3 if method == "commit_transaction" else 1),
        "begin_transaction",
    ]
    assert cp.retries == 2
    assert cp.records == 0


@pytest.mark.parametrize("method", ["commit_transaction", "send_offsets_to_transaction"])
@pytest.mark.parametrize(
    "error",
    [
        kafka_error(abort=True),
        kafka_error(abort=True, retriable=True),  # an abort is needed, whatever else it says
        kafka_error(fatal=True),
        kafka_error(retriable=False),
    ],
    ids=["abort", "abort-retriable", "fatal", "not-retriable"],
)
def test_commit_raises_what_needs_an_abort_or_is_fatal(method: str, error: KafkaException) -> None:
    producer = FakeProducer(**{method: [error]})
    cp = Transaction(producer, 10, 60)  # type: ignore[arg-type]  # a fake producer
    cp.add(3)
    with pytest.raises(KafkaException) as info:
        cp.commit(POSITIONS, METADATA)
    assert info.value.args[0] is error.args[0]
    assert producer.names().count(method) == 1, "not retried"
    assert "begin_transaction" not in producer.names(), "the transaction is left to abort"
    assert cp.records == 3


def test_retriable_errors_are_retried_for_a_bounded_time(monkeypatch) -> None:
    clock = iter(range(0, 10_000, 7))  # each call to the clock: 7 s later
    monkeypatch.setattr(transaction_module.time, "monotonic", lambda: float(next(clock)))
    producer = FakeProducer(commit_transaction=[kafka_error(retriable=True)] * 1_000)
    cp = Transaction(producer, 10, 60)  # type: ignore[arg-type]  # a fake producer
    cp.add(1)
    with pytest.raises(KafkaException):
        cp.commit([], METADATA)
    tries = producer.names().count("commit_transaction")
    assert 1 < tries <= transaction_module.RETRY_FOR_S / 7 + 2
    assert "begin_transaction" not in producer.names()


def test_other_exceptions_pass_through_unretried() -> None:
    producer = FakeProducer(commit_transaction=[RuntimeError("boom")])
    cp = Transaction(producer, 10, 60)  # type: ignore[arg-type]  # a fake producer
    with pytest.raises(RuntimeError, match="boom"):
        cp.commit([], METADATA)
    assert producer.names() == ["commit_transaction"]


def test_abort_aborts_and_begins_the_next_transaction() -> None:
    producer = FakeProducer()
    cp = Transaction(producer, 10, 60)  # type: ignore[arg-type]  # a fake producer
    cp.add(5)
    cp.abort()
    assert producer.calls == [("abort_transaction", CALL_TIMEOUT_S), ("begin_transaction",)]
    assert cp.records == 0


def test_due_by_records_and_by_interval(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(transaction_module.time, "monotonic", lambda: now[0])
    cp = Transaction(FakeProducer(), every_records=100, interval_s=0.5)  # type: ignore[arg-type]  # a fake producer
    cp.begin()
    assert not cp.due(False), "nothing to commit"
    now[0] += 10
    assert not cp.due(False), "nothing to commit, however long it has been"
    cp.add(1)
    assert cp.due(False), "a record in a transaction older than the interval: at once"
    cp.begin()
    cp.add(99)
    assert not cp.due(False)
    now[0] += 0.49
    assert not cp.due(False)
    now[0] += 0.01
    assert cp.due(False), "by interval"
    cp.begin()
    assert cp.records == 0
    cp.add(60)
    assert not cp.due(False)
    now[0] += 0.2
    cp.add(40)
    assert cp.due(False), "by records"
    cp.commit([], METADATA)
    assert not cp.due(False)


# -- co-partitioning -------------------------------------------------------------------------
VALID, FRAUD, CHANGES = (
    pipeline.VALID.name,
    pipeline.FRAUD.name,
    pipeline.CHANGES.name,
)


def stores() -> list[ChangelogStore]:
    return [
        ChangelogStore("review-versions", "versions-changelog", (VALID, FRAUD), dict, dict),
        ChangelogStore("course-stats", "courses-changelog", (CHANGES,), dict, dict),
    ]


def tps(*pairs: tuple[str, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic, p in pairs]


@pytest.mark.parametrize(
    "assigned",
    [
        [],
        [(VALID, 0), (FRAUD, 0)],
        [(VALID, 0), (FRAUD, 0), (VALID, 3), (FRAUD, 3), (CHANGES, 1)],
        [(CHANGES, 2)],
        [("some-other-topic", 5)],
    ],
)
def test_copartitioned_assignments_pass(assigned) -> None:
    check_copartitioned(stores(), tps(*assigned))


@pytest.mark.parametrize(
    ("assigned", "missing"),
    [
        ([(VALID, 0), (FRAUD, 0), (VALID, 1)], (FRAUD, 1)),
        ([(FRAUD, 2), (CHANGES, 2)], (VALID, 2)),
    ],
)
def test_a_split_assignment_is_refused(assigned, missing) -> None:
    with pytest.raises(RuntimeError, match="review-versions") as info:
        check_copartitioned(stores(), tps(*assigned))
    assert repr(missing) in str(info.value)
    assert "equal partition counts" in str(info.value)


# -- consumer error events -------------------------------------------------------------------
class FakeMessage:
    def __init__(self, error: KafkaError | None = None, topic: str = "t") -> None:
        self._error = error
        self._topic = topic

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic


def records(msgs: list[FakeMessage]) -> tuple[list[FakeMessage], WorkerMetrics]:
    metrics = WorkerMetrics("w", "0")
    return records_of(metrics, msgs), metrics  # type: ignore[arg-type]  # fake messages


def test_records_without_errors_pass_as_they_are() -> None:
    msgs = [FakeMessage(), FakeMessage()]
    out, metrics = records(msgs)
    assert out == msgs
    assert metrics.consumer_errors == 0


def test_error_events_are_counted_and_never_processed() -> None:
    transient = KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True)
    eof = KafkaError(KafkaError._PARTITION_EOF, "end")
    a, b, c = FakeMessage(), FakeMessage(), FakeMessage()
    out, metrics = records([FakeMessage(transient), a, b, FakeMessage(eof), c])
    assert out == [a, b, c]
    assert metrics.consumer_errors == 2
    out, metrics = records([FakeMessage(transient)])
    assert (out, metrics.consumer_errors) == ([], 1)


def test_a_fatal_error_event_is_raised() -> None:
    fatal = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    with pytest.raises(KafkaException) as info:
        records([FakeMessage(), FakeMessage(fatal)])
    assert info.value.args[0] is fatal


# -- the declaration -------------------------------------------------------------------------
TOPICS = {t.name: t for t in pipeline.TOPICS}


def test_topic_names_are_unique() -> None:
    assert len(TOPICS) == len(pipeline.TOPICS)


@pytest.mark.parametrize("sink", pipeline.SINKS, ids=lambda s: s.connector)
def test_every_sink_has_its_connector_file_on_its_declared_topic(sink) -> None:
    assert (CONNECTORS_DIR / f"{sink.connector}.json").is_file()
    assert CONNECTORS_DIR == ROOT / "streaming" / "sink" / "connectors"
    config = load_connector(sink.connector)
    assert config["topics"] == sink.topic
    assert config["collection.name.format"] == f"public.{sink.table}"
    assert sink.topic in TOPICS


def test_every_connector_file_is_a_declared_sink() -> None:
    assert declared_connectors() == sorted(s.connector for s in pipeline.SINKS)


@pytest.mark.parametrize("worker", pipeline.WORKERS, ids=lambda w: w.name)
def test_every_port_names_a_declared_topic_and_every_stage_a_port(worker) -> None:
    for port, topic in worker.ports.items():
        assert topic in TOPICS, f"{worker.name}.{port} -> {topic}"
    for stage in worker.stages:
        for port in (*stage.inputs, *stage.outputs):
            assert port in worker.ports, f"{worker.name}: stage {stage.name} port {port}"
        if stage.store is not None:
            assert stage.store.changelog in worker.ports


@pytest.mark.parametrize(
    ("worker", "stage"),
    [(w, s) for w in pipeline.WORKERS for s in w.stages if s.store is not None],
    ids=lambda x: x.name,
)
def test_a_store_and_its_inputs_have_equal_partition_counts(worker, stage) -> None:
    topics = [TOPICS[worker.ports[p]] for p in (*stage.inputs, stage.store.changelog)]
    assert len({t.partitions for t in topics}) == 1, [(t.name, t.partitions) for t in topics]
    changelog = TOPICS[worker.ports[stage.store.changelog]]
    assert changelog.internal
    assert changelog.config.get("cleanup.policy") == "compact"


def test_services_conf_runs_every_worker() -> None:
    services = (ROOT / "services.conf").read_text()
    for worker in pipeline.WORKERS:
        assert re.search(
            rf"^app {re.escape(worker.name)} .*-m {re.escape(worker.module)}\b",
            services,
            re.MULTILINE,
        ), worker.module
        assert f"instances=${{{worker.instances_env}}}" in services
        assert f"health-port {worker.name})" in services
        assert (ROOT / (worker.module.replace(".", "/") + ".py")).is_file()


def test_health_ports_do_not_collide() -> None:
    ports = [w.health_port + i for w in pipeline.WORKERS for i in range(10)]
    assert len(ports) == len(set(ports))


# -- taking a batch ---------------------------------------------------------------------------
class FakeConsumer:
    """Holds `queued` records; `arriving` come one per `poll`, as the network would deliver."""

    def __init__(self, queued: list[int], arriving: list[list[int]] | None = None) -> None:
        self.queued, self.arriving = list(queued), list(arriving or [])
        self.waits: list[float] = []

    def consume(self, n: int, timeout: float) -> list[int]:
        assert timeout == 0, "take never blocks in consume: it would wait out the timeout"
        taken, self.queued = self.queued[:n], self.queued[n:]
        return taken

    def poll(self, timeout: float) -> int | None:
        self.waits.append(timeout)
        if not self.arriving:
            return None
        first, *rest = self.arriving.pop(0)
        self.queued += rest
        return first


def take_from(consumer: FakeConsumer, batch: int, wait_s: float) -> list[int]:
    return take(consumer, batch, wait_s)  # type: ignore[arg-type, return-value]  # fakes


def test_take_returns_what_is_held_without_waiting() -> None:
    consumer = FakeConsumer([1, 2, 3], arriving=[[4]])
    assert take_from(consumer, 2, 0.1) == [1, 2], "a full batch"
    assert take_from(consumer, 2, 0.1) == [3], "what is there, not a wait for a full batch"
    assert consumer.waits == [], "records were held: no wait"


def test_take_waits_for_the_first_record_and_takes_what_came_with_it() -> None:
    consumer = FakeConsumer([], arriving=[[7, 8, 9]])
    assert take_from(consumer, 5, 0.1) == [7, 8, 9]
    assert consumer.waits == [0.1]
    assert take_from(consumer, 5, 0.1) == [] and consumer.waits == [0.1, 0.1], "idle: waited"
    assert take_from(FakeConsumer([], [[1, 2]]), 1, 0.1) == [1], "a batch of one is one"


def test_take_without_time_to_wait_never_waits() -> None:
    consumer = FakeConsumer([], arriving=[[1]])
    assert take_from(consumer, 5, 0) == []
    assert consumer.waits == [], "a transaction that is due commits instead of waiting"


def test_a_purge_is_not_waited_for_and_its_failure_only_logged(caplog) -> None:
    """The aggregator fires its repartition purge and goes on; the answer comes on the admin
    client's thread: a failure is a warning (a later purge covers it), success says nothing."""
    ok: Future = Future()
    ok.set_result(None)
    failed: Future = Future()
    failed.set_exception(KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT)))
    with caplog.at_level(logging.WARNING, logger="stats_aggregator"):
        _purged(0, ok)
        _purged(3, failed)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "purge failed"
    ]
