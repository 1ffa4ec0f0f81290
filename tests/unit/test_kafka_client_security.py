"""KAFKA_SECURITY_CONFIG for Kafka Connect's Java clients (stack/kafka_client_security.py)."""

from __future__ import annotations

import pytest

from stack.kafka_client_security import connect_lines, java_properties, parse


def test_sasl_scram_over_tls_becomes_the_java_settings() -> None:
    raw = (
        "security.protocol=SASL_SSL; sasl.mechanisms=SCRAM-SHA-512; sasl.username=app;"
        'sasl.password=pa"ss; ssl.ca.location=/etc/ca.pem;'
        "ssl.endpoint.identification.algorithm=none"
    )
    props = java_properties(parse(raw))
    assert props == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "ssl.endpoint.identification.algorithm": "",
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": "/etc/ca.pem",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="app" password="pa\\"ss";',
    }


def test_every_client_of_connect_gets_them() -> None:
    lines = connect_lines("security.protocol=SSL")
    assert lines == [
        "security.protocol=SSL",
        "producer.security.protocol=SSL",
        "consumer.security.protocol=SSL",
        "admin.security.protocol=SSL",
    ]
    assert connect_lines("") == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("ssl.key.password=hunter2secret", "no Java client equivalent known for ssl.key.password"),
        ("sasl.username=u;sasl.password=hunter2secret", "need a mechanism"),
        ("hunter2secret", "entry 1: expected key=value"),
    ],
)
def test_what_has_no_equivalent_is_refused_without_its_value(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        java_properties(parse(raw))
    assert "hunter2secret" not in str(refused.value)
