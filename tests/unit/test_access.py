"""Who may do what on Kafka (streaming/access.py): each component gets what its declaration
uses and nothing more, derived from the pipeline's one declaration."""

from __future__ import annotations

from streaming.access import (
    OPERATOR,
    PRINCIPALS,
    allows,
    governed,
    login_env,
    principal,
    worker_login_env,
)
from streaming.pipeline import AGGREGATOR, FRAUD_FILTER, INPUT, SINKS, TOPICS


def test_only_the_writers_of_the_input_write_it() -> None:
    writers = {p.name for p in PRINCIPALS if allows(p, "TOPIC", INPUT.name, "WRITE")}
    assert writers == {"ingest", "producer", "orchestrator"}


def test_the_producer_principal_writes_the_input_and_nothing_else() -> None:
    producer = principal("producer")
    for topic in TOPICS:
        for op in ("READ", "WRITE", "DELETE", "CREATE", "ALTER_CONFIGS"):
            expected = topic.name == INPUT.name and op == "WRITE"
            assert allows(producer, "TOPIC", topic.name, op) == expected, (topic.name, op)
    assert not allows(producer, "GROUP", "fraud-filter", "READ")


def test_each_worker_reads_its_inputs_and_writes_its_outputs_only() -> None:
    for spec in (FRAUD_FILTER, AGGREGATOR):
        who = principal(spec.name)
        topics = spec.topics({})
        reads = {topics[p] for s in spec.stages for p in s.inputs}
        reads |= {topics[s.store.changelog] for s in spec.stages if s.store}
        writes = {topics[p] for s in spec.stages for p in s.outputs}
        writes |= {topics[s.store.changelog] for s in spec.stages if s.store}
        for topic in TOPICS:
            assert allows(who, "TOPIC", topic.name, "READ") == (topic.name in reads)
            assert allows(who, "TOPIC", topic.name, "WRITE") == (topic.name in writes)
            assert not allows(who, "TOPIC", topic.name, "CREATE")
        assert allows(who, "GROUP", spec.group_id, "READ")
        assert allows(who, "GROUP", f"{spec.group_id}-restore-0a1b", "READ")
        assert allows(who, "TRANSACTIONAL_ID", f"{spec.group_id}-1", "WRITE")
        assert not allows(who, "TRANSACTIONAL_ID", "someone-else-1", "WRITE")
    fraud_filter = principal(FRAUD_FILTER.name)
    assert not allows(fraud_filter, "GROUP", AGGREGATOR.group_id, "READ")
    assert not allows(fraud_filter, "TOPIC", "long-term-stats", "WRITE")


def test_only_the_aggregator_purges_its_repartition_topic() -> None:
    deleters = {
        (p.name, t.name) for p in PRINCIPALS for t in TOPICS if allows(p, "TOPIC", t.name, "DELETE")
    }
    assert deleters == {("aggregator", "stats-aggregator-course-changes-repartition")}


def test_connect_reads_the_sink_topics_and_writes_its_dead_letters() -> None:
    connect = principal("connect")
    for topic in TOPICS:
        assert allows(connect, "TOPIC", topic.name, "READ") == (
            topic.name in {s.topic for s in SINKS}
        )
        assert allows(connect, "TOPIC", topic.name, "WRITE") == (
            topic.name == "connect-dead-letter"
        )
    for sink in SINKS:
        assert allows(connect, "GROUP", sink.group_id, "READ")
        assert allows(connect, "GROUP", sink.group_id, "DELETE")  # its offsets reset
    assert not allows(connect, "GROUP", FRAUD_FILTER.group_id, "READ")


def test_the_orchestrator_observes_everything_and_writes_only_the_input() -> None:
    orchestrator = principal("orchestrator")
    for topic in TOPICS:
        assert allows(orchestrator, "TOPIC", topic.name, "READ")
        assert allows(orchestrator, "TOPIC", topic.name, "WRITE") == (topic.name == INPUT.name)
    assert allows(orchestrator, "GROUP", "fraud-filter", "DESCRIBE")
    assert not allows(orchestrator, "GROUP", "fraud-filter", "READ")  # cannot move its offsets
    assert allows(orchestrator, "GROUP", "orchestration-probe-1", "READ")


def test_nobody_is_the_operator_and_every_grant_is_governed() -> None:
    assert OPERATOR not in {p.name for p in PRINCIPALS}
    ours = governed()
    for p in PRINCIPALS:
        for g in p.grants:
            assert (g.resource, g.name, g.pattern) in ours
            assert "ALL" not in g.operations


def test_login_env_names_the_principal_and_its_file() -> None:
    env = {"KAFKA_CREDENTIALS_DIR": "/s/kafka"}
    assert login_env("producer", env) == {
        "KAFKA_SASL_USERNAME": "producer",
        "KAFKA_SASL_PASSWORD_FILE": "/s/kafka/producer",
    }
    assert login_env("producer", {}) == {}
    assert worker_login_env(AGGREGATOR.module, env)["KAFKA_SASL_USERNAME"] == "aggregator"
    assert worker_login_env("not.a.worker", env) == {}
