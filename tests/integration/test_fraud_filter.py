"""The fraud filter on the real stack: exactly once under SIGKILL, dead letters, two instances."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from streaming.core import source_position
from streaming.core.fraud import HashFraudModel
from streaming.core.review_bytes import murmur2, to_positive
from streaming.serde import Registry
from tests.integration.kafka_helpers import (
    delete_topics,
    encode_review,
    make_topics,
    produce_all,
    producer,
    read_all,
    review,
    worker_process,
)

pytestmark = pytest.mark.integration
MODULE = "streaming.workers.fraud_filter"


@pytest.fixture
def topics(admin):
    t = make_topics(admin, "ff", ["in", "valid", "fraud", "dlq"])
    yield t
    delete_topics(admin, list(t.values()))


@pytest.fixture(scope="module")
def schema_id(settings) -> int:
    return Registry(settings.schema_registry_url).register("udemy-reviews-value", "review.avsc")


def worker_env(topics: dict[str, str], group: str, instance: str = "0", **extra) -> dict:
    return {
        "FRAUD_FILTER_INPUT_TOPIC": topics["in"],
        "FRAUD_FILTER_VALID_TOPIC": topics["valid"],
        "FRAUD_FILTER_FRAUD_TOPIC": topics["fraud"],
        "FRAUD_FILTER_DEAD_LETTER_TOPIC": topics["dlq"],
        "FRAUD_FILTER_GROUP_ID": group,
        "WORKER_INSTANCE": instance,
        **extra,
    }


def wait_until_routed(settings, topics, expected: int, timeout_s: float = 120) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        out = read_all(settings, topics["valid"]) + read_all(settings, topics["fraud"])
        if len(out) >= expected or time.monotonic() > deadline:
            return out
        time.sleep(0.5)  # poll interval


def assert_exactly_once(settings, topics, sent: dict[bytes, bytes]) -> None:
    valid = read_all(settings, topics["valid"])
    fraud = read_all(settings, topics["fraud"])
    seen = Counter(m.key() for m in valid + fraud)
    doubled = [k for k, n in seen.items() if n > 1]
    lost = set(sent) - set(seen)
    assert not doubled, f"{len(doubled)} records routed twice, e.g. {doubled[:5]}"
    assert not lost, f"{len(lost)} records lost, e.g. {sorted(lost)[:5]}"
    positions = {m.key(): (m.partition(), m.offset()) for m in read_all(settings, topics["in"])}
    for m in valid + fraud:
        assert m.value() == sent[m.key()], "value bytes must pass through unchanged"
        # the position in the input orders equal-modified versions downstream
        assert source_position.find(m.headers()) == positions[m.key()]
        assert m.partition() == positions[m.key()][0], "co-partitioned with the input"
    model = HashFraudModel()
    assert all(model.is_fraud_body(m.value()[5:]) for m in fraud)
    assert not any(model.is_fraud_body(m.value()[5:]) for m in valid)
    assert 0.035 < len(fraud) / len(sent) < 0.065


def test_exactly_once_across_repeated_sigkill(settings, topics, schema_id, tmp_path):
    n = 40_000
    sent = {str(i).encode(): encode_review(schema_id, review(i)) for i in range(n)}
    items = list(sent.items())
    p = producer(settings)
    group = f"ff-{uuid.uuid4().hex[:8]}"
    env = worker_env(topics, group, COMMIT_EVERY_RECORDS="500", COMMIT_INTERVAL_MS="50")

    def feed() -> None:  # input keeps arriving while the worker is killed
        for start in range(0, n, 1000):  # ~10 s of input, spanning the kills
            produce_all(p, topics["in"], items[start : start + 1000])
            time.sleep(0.25)  # pacing of the load generator, not a wait on a service

    feeder = threading.Thread(target=feed)
    feeder.start()
    rng = random.Random(4)
    kills = 0
    with worker_process(MODULE, env, tmp_path / "worker.log") as worker:
        for _ in range(4):
            worker.wait_healthy()
            time.sleep(rng.uniform(0.5, 1.5))  # a random moment mid-stream
            worker.kill()
            kills += 1
            worker.start()
        feeder.join()
        worker.wait_healthy()
        routed = wait_until_routed(settings, topics, n)
        assert len(routed) >= n, worker.log_tail()
    assert kills == 4
    assert_exactly_once(settings, topics, sent)


def test_unreadable_records_go_to_the_dead_letter_topic(settings, topics, schema_id, tmp_path):
    good = encode_review(schema_id, review(1))
    poison = {
        b"p-null": None,
        b"p-short": b"\x00\x01",
        b"p-magic": b"\x07" + good[1:],
        b"p-unknown-id": b"\x00\x7f\xff\xff\xf0" + good[5:],
        b"p-truncated": good[:-4],
        b"p-garbage": bytes(range(256)) * 4,
    }
    items = [(b"1", good), *poison.items(), (b"2", encode_review(schema_id, review(2)))]
    produce_all(producer(settings), topics["in"], items)
    env = worker_env(topics, f"ff-{uuid.uuid4().hex[:8]}")
    with worker_process(MODULE, env, tmp_path / "worker.log") as worker:
        worker.wait_healthy()
        routed = wait_until_routed(settings, topics, 2)
        assert {m.key() for m in routed} == {b"1", b"2"}
        deadline = time.monotonic() + 30
        while (worker.health() or {}).get("dead_letters") != len(poison):
            assert time.monotonic() < deadline, worker.health()
            time.sleep(0.2)  # poll interval
        assert worker.proc.poll() is None, "the worker keeps running"
    dead = {m.key(): m for m in read_all(settings, topics["dlq"])}
    assert set(dead) == set(poison)
    for key, msg in dead.items():
        headers = dict(msg.headers())
        assert msg.value() == poison[key], "the original bytes are kept"
        assert headers["dlq.source.topic"] == topics["in"].encode()
        assert int(headers["dlq.source.offset"]) >= 0
        assert headers["dlq.error"], key
    assert b"unknown schema id" in dict(dead[b"p-unknown-id"].headers())["dlq.error"]
    assert b"malformed Avro body" in dict(dead[b"p-truncated"].headers())["dlq.error"]
    assert b"magic byte 7" in dict(dead[b"p-magic"].headers())["dlq.error"]


def test_two_instances_share_the_partitions(settings, topics, schema_id, tmp_path):
    n = 20_000
    sent = {str(i).encode(): encode_review(schema_id, review(i)) for i in range(n)}
    group = f"ff-{uuid.uuid4().hex[:8]}"
    with (
        worker_process(MODULE, worker_env(topics, group, "a"), tmp_path / "a.log") as a,
        worker_process(MODULE, worker_env(topics, group, "b"), tmp_path / "b.log") as b,
    ):
        a.wait_healthy()
        b.wait_healthy()
        deadline = time.monotonic() + 60
        while not (
            (a.health() or {}).get("assigned_partitions")
            and (b.health() or {}).get("assigned_partitions")
        ):
            assert time.monotonic() < deadline, (a.health(), b.health())
            time.sleep(0.2)  # poll interval: the group is rebalancing
        parts_a = set(a.health()["assigned_partitions"])
        parts_b = set(b.health()["assigned_partitions"])
        assert parts_a and parts_b and not parts_a & parts_b
        assert len(parts_a | parts_b) == 4
        produce_all(producer(settings), topics["in"], list(sent.items()))
        wait_until_routed(settings, topics, n)
        assert a.health()["records_in"] > 0 and b.health()["records_in"] > 0
        assert a.health()["records_in"] + b.health()["records_in"] == n
    assert_exactly_once(settings, topics, sent)


def test_copies_are_keyed_by_the_review_id_whatever_key_the_producer_sent(
    settings, topics, schema_id, tmp_path
):
    """The original Java producer sends no key; others an 8-byte long or another field: the
    copy is keyed by the value's id, on the partition Kafka's murmur2 gives that key, so every
    version of a review meets one partition downstream."""
    sent = {
        None: encode_review(schema_id, review(11)),
        (12).to_bytes(8, "big"): encode_review(schema_id, review(12)),
        b"user-7": encode_review(schema_id, review(13)),
        b"14": encode_review(schema_id, review(14)),
    }
    p = producer(settings)
    for partition, (key, value) in enumerate(sent.items()):  # anywhere, as a foreign writer may
        p.produce(topics["in"], value, key, partition=partition)
    assert p.flush(30) == 0
    env = worker_env(topics, f"ff-{uuid.uuid4().hex[:8]}")
    with worker_process(MODULE, env, tmp_path / "worker.log") as worker:
        worker.wait_healthy()
        routed = wait_until_routed(settings, topics, len(sent))
    assert sorted(m.key() for m in routed) == [b"11", b"12", b"13", b"14"]
    for m in routed:
        assert m.partition() == to_positive(murmur2(m.key())) % 4, m.key()
        assert m.value() in sent.values(), "value bytes unchanged"


def test_a_copy_the_broker_refuses_is_dead_lettered_with_its_reason_and_the_loop_goes_on(
    settings, admin, topics, schema_id, tmp_path
):
    """A real refusal, no fault hook: the routed topics take records of at most 3,000 bytes, and
    one review carries 6,000 bytes of text that no codec shrinks. Its copy aborts the batch; the
    worker goes through the batch one record per transaction, dead-letters that one with the
    broker's reason, and routes every other record once."""
    small_limit = [
        ConfigEntry("max.message.bytes", "3000", incremental_operation=AlterConfigOpType.SET)
    ]
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, topics[t], incremental_configs=small_limit)
        for t in ("valid", "fraud")
    ]
    for fut in admin.incremental_alter_configs(resources).values():
        fut.result(30)
    small = [(str(i).encode(), encode_review(schema_id, review(i))) for i in range(1, 61)]
    # random hex: the copy's lz4 cannot shrink it under the limit
    big = (b"99", encode_review(schema_id, review(99, content=os.urandom(3000).hex())))
    produce_all(producer(settings), topics["in"], [*small[:30], big, *small[30:]])
    env = worker_env(topics, f"ff-{uuid.uuid4().hex[:8]}")
    with worker_process(MODULE, env, tmp_path / "worker.log") as worker:
        worker.wait_healthy()
        routed = wait_until_routed(settings, topics, len(small))
        deadline = time.monotonic() + 60
        while (worker.health() or {}).get("dead_letters") != 1:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)  # poll interval
        health = worker.health()
        assert worker.proc.poll() is None, "the worker keeps running"
        assert health["status"] == "ok", health
        assert health["aborts"].get("MSG_SIZE_TOO_LARGE", 0) >= 1, health
    assert sorted(m.key() for m in routed) == sorted(k for k, _ in small), "each once"
    [dead] = read_all(settings, topics["dlq"])
    assert dead.key() == b"99" and dead.value() == big[1], "the original record, whole"
    error = dict(dead.headers())["dlq.error"]
    assert error.startswith(b"output refused by the broker: MSG_SIZE_TOO_LARGE"), error
