"""Reading a topic to its end: committed records only, stopping at transaction markers."""

import uuid

import pytest
from confluent_kafka import Producer

from streaming.settings import Settings
from streaming.topic_reader import read_batches, read_records

pytestmark = pytest.mark.integration


def test_committed_records_only_and_the_read_ends_after_a_trailing_marker(
    settings: Settings, temp_topic: str
) -> None:
    p = Producer(settings.kafka_config(**{"transactional.id": f"t-reader-{uuid.uuid4().hex}"}))
    p.init_transactions(30)
    for keys, commit in ((b"abc", True), (b"xy", False), (b"d", True)):
        p.begin_transaction()
        for k in keys:
            p.produce(temp_topic, bytes([k]), bytes([k]))
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)
    # the topic now ends with a commit marker, after an aborted transaction and its marker
    assert [m.key() for m in read_records(settings, temp_topic, timeout_s=30)] == [
        b"a",
        b"b",
        b"c",
        b"d",
    ]
    assert [m.value() for m in read_records(settings, temp_topic, {0: 2}, timeout_s=30)] == [
        b"c",
        b"d",
    ]


def test_an_empty_topic_reads_as_nothing(settings: Settings, temp_topic: str) -> None:
    assert list(read_batches(settings, temp_topic, timeout_s=30)) == []
