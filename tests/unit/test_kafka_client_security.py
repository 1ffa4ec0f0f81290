"""KAFKA_SECURITY_CONFIG and KAFKA_SASL_PASSWORD_FILE for Java clients
(stack/kafka_client_security.py): Kafka Connect's, the tools', the Java peers'."""

from __future__ import annotations

import pytest

from stack.kafka_client_security import connect_lines, java_properties, main, parse


def test_sasl_scram_over_tls_becomes_the_java_settings() -> None:
    raw = (
        "security.protocol=SASL_SSL; sasl.mechanisms=SCRAM-SHA-512; sasl.username=app;"
        "ssl.ca.location=/etc/ca.pem; ssl.endpoint.identification.algorithm=none"
    )
    props = java_properties(parse(raw), 'pa"ss')
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
        ("sasl.username=u;sasl.password=hunter2secret", "must not be a value there"),
        ("hunter2secret", "entry 1: expected key=value"),
    ],
)
def test_what_has_no_equivalent_is_refused_without_its_value(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        java_properties(parse(raw))
    assert "hunter2secret" not in str(refused.value)


def test_a_login_without_a_mechanism_is_refused_without_the_password() -> None:
    with pytest.raises(ValueError, match="need a mechanism") as refused:
        java_properties(parse("sasl.username=u"), "hunter2secret")
    assert "hunter2secret" not in str(refused.value)


def test_the_password_comes_from_its_file(tmp_path, monkeypatch, capsys) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2secret\n")
    monkeypatch.setenv(
        "KAFKA_SECURITY_CONFIG",
        "security.protocol=SASL_PLAINTEXT;sasl.mechanism=SCRAM-SHA-512;sasl.username=operator",
    )
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    assert main(["--properties"]) == 0
    assert 'username="operator" password="hunter2secret";' in capsys.readouterr().out
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    assert main(["--connect"]) == 1
    assert "KAFKA_SASL_PASSWORD_FILE: cannot read" in capsys.readouterr().err
