"""`reviews rebuild-stream` on the real broker, under names of its own (the environment's
overrides): refused while a worker's group has a member; otherwise the derived topics come back
empty as declared, the workers' committed offsets and snapshots are gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streaming.admin import ensure_topics
from streaming.pipeline import AGGREGATOR, FRAUD_FILTER
from streaming.rebuild import Plan, WorkersRunning, plan, rebuild
from streaming.settings import Settings


@pytest.fixture
def own_plan(admin: AdminClient, tmp_path: Path) -> Iterator[Plan]:
    tag = uuid.uuid4().hex[:8]
    env = {
        **{AGGREGATOR.port_env(p): f"rebuild-{tag}-{p}" for p in AGGREGATOR.ports},
        FRAUD_FILTER.group_env: f"rebuild-{tag}-ff",
        AGGREGATOR.group_env: f"rebuild-{tag}-agg",
    }
    the_plan = plan(tmp_path, env)
    ensure_topics(admin, list(the_plan.topics))
    yield the_plan
    admin.delete_topics([t.name for t in the_plan.topics])


def commit_offset(settings: Settings, group: str, topic: str) -> Consumer:
    consumer = Consumer({**settings.kafka_config(), "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    return consumer


def watermarks(settings: Settings, topic: str) -> tuple[int, int]:
    """Partition 0's, once it has a leader (a topic created just now may not yet)."""
    probe = Consumer({**settings.kafka_config(), "group.id": "rebuild-probe"})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                return probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # polling until the new partition's leader is elected
    finally:
        probe.close()


def test_rebuild_drops_what_the_workers_derived(
    settings: Settings, admin: AdminClient, own_plan: Plan
) -> None:
    valid = own_plan.topics[0].name
    producer = Producer(settings.kafka_config())
    producer.produce(valid, b"old", key=b"1", partition=0)
    assert producer.flush(30) == 0
    commit_offset(settings, own_plan.groups[1], valid).close()
    snap = own_plan.state_dirs[1] / "some-changelog" / "0.snap"
    snap.parent.mkdir(parents=True)
    snap.write_bytes(b"state")
    lines: list[str] = []

    rebuild(settings, own_plan, say=lines.append)

    assert any(line.startswith(f"deleted topic {valid}") for line in lines)
    topics = admin.list_topics(timeout=30).topics
    for spec in own_plan.topics:
        assert len(topics[spec.name].partitions) == spec.partitions, spec.name
    assert watermarks(settings, valid) == (0, 0), "recreated empty"
    groups = {g.group_id for g in admin.list_consumer_groups().result(30).valid}
    assert not set(own_plan.groups) & groups
    assert not own_plan.state_dirs[1].exists()


def test_rebuild_is_refused_while_a_worker_runs(
    settings: Settings, admin: AdminClient, own_plan: Plan
) -> None:
    valid = own_plan.topics[0].name
    member = Consumer({**settings.kafka_config(), "group.id": own_plan.groups[1]})
    member.subscribe([valid])
    try:
        for _ in range(30):  # until the group has its member (joining takes a poll or two)
            member.poll(1.0)
            if member.assignment():
                break
        with pytest.raises(WorkersRunning, match=own_plan.groups[1]):
            rebuild(settings, own_plan, say=lambda _: None)
        assert valid in admin.list_topics(timeout=30).topics, "nothing was deleted"
    finally:
        member.close()
