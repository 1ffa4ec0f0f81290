"""Kafka refuses whoever is not let in, on the running stack: an anonymous client, a wrong
password, and every principal of streaming/access.py outside its grants (writing, reading,
joining a group, deleting, creating, granting itself more). What each may do is the
declaration's; the whole suite exercises the grants themselves (the pipeline runs on them)."""

from __future__ import annotations

import os
import uuid

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from streaming.access import PRINCIPALS, Principal, allows, login_env
from streaming.pipeline import TOPICS
from streaming.settings import KafkaSettings, Settings, kafka_security, load

REFUSED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


def login(settings: Settings, name: str, **overrides: object) -> dict[str, object]:
    """A client config that logs in as principal `name` (its password file of `make up`)."""
    env = {**os.environ, **login_env(name, os.environ)}
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **kafka_security(load(KafkaSettings, env)),
        **overrides,
    }


def produce_error(config: dict[str, object], topic: str) -> KafkaError | None:
    """What the broker answers a one-record produce (None: written)."""
    errors: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": 15_000, "log_level": 0})
    producer.produce(topic, value=b"x", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(20)
    assert errors, "no delivery report"
    return errors[0]


def fetch_error(config: dict[str, object], topic: str) -> KafkaError | None:
    """The first error a read of partition 0 meets (None: records or the end)."""
    consumer = Consumer(
        {**config, "group.id": f"test-access-{uuid.uuid4().hex[:8]}", "log_level": 0}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(20):
            msg = consumer.poll(1.0)
            if msg is not None:
                return msg.error()
        return None
    finally:
        consumer.close()


def test_an_anonymous_client_sees_nothing(settings: Settings) -> None:
    anonymous = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, "log_level": 0})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=5)


def test_a_wrong_password_is_refused(settings: Settings) -> None:
    config = login(settings, "producer")
    config["sasl.password"] = "not-the-password"
    with pytest.raises(KafkaException):
        AdminClient({**config, "log_level": 0}).list_topics(timeout=5)


@pytest.mark.parametrize("who", PRINCIPALS, ids=lambda p: p.name)
def test_each_principal_sees_only_the_topics_it_is_granted(
    settings: Settings, who: Principal
) -> None:
    visible = set(AdminClient(login(settings, who.name)).list_topics(timeout=15).topics)
    declared = {t.name for t in TOPICS}
    granted = {t for t in declared if allows(who, "TOPIC", t, "DESCRIBE")}
    assert visible & declared == granted


@pytest.mark.parametrize("who", PRINCIPALS, ids=lambda p: p.name)
def test_each_principal_is_refused_outside_its_grants(settings: Settings, who: Principal) -> None:
    config = login(settings, who.name)
    no_write = [t.name for t in TOPICS if not allows(who, "TOPIC", t.name, "WRITE")]
    no_read = [t.name for t in TOPICS if not allows(who, "TOPIC", t.name, "READ")]
    # one topic of each kind it may not touch: the broker refuses it, whatever the client does
    error = produce_error(config, no_write[0])
    assert error is not None and error.code() in REFUSED, error
    if no_read:
        error = fetch_error(config, no_read[0])
        assert error is not None and error.code() in REFUSED, error
    admin = AdminClient(config)
    name = f"test-access-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KafkaException) as created:
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(15)
    assert created.value.args[0].code() in REFUSED
    with pytest.raises(KafkaException) as deleted:
        admin.delete_topics([no_write[0]])[no_write[0]].result(15)
    assert deleted.value.args[0].code() in REFUSED
    more = AclBinding(
        ResourceType.TOPIC,
        "*",
        ResourcePatternType.LITERAL,
        f"User:{who.name}",
        "*",
        AclOperation.ALL,
        AclPermissionType.ALLOW,
    )
    with pytest.raises(KafkaException) as granted:
        admin.create_acls([more])[more].result(15)
    assert granted.value.args[0].code() in REFUSED


def test_a_producer_cannot_read_or_move_a_workers_offsets(settings: Settings) -> None:
    admin = AdminClient(login(settings, "producer"))
    request = [ConsumerGroupTopicPartitions("fraud-filter")]
    with pytest.raises(KafkaException) as refused:
        admin.list_consumer_group_offsets(request)["fraud-filter"].result(15)
    assert refused.value.args[0].code() in REFUSED
    with pytest.raises(KafkaException) as deleted:
        admin.delete_consumer_groups(["fraud-filter"])["fraud-filter"].result(15)
    assert deleted.value.args[0].code() in REFUSED
