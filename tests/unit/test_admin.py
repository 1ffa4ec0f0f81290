"""Topic declarations and settings parsing, without a broker."""

from __future__ import annotations

import pytest

from streaming.admin import SCHEMAS_DIR, load_topic_specs
from streaming.config import Settings


def test_topic_declarations_follow_the_design():
    specs = {s.name: s for s in load_topic_specs()}
    assert set(specs) >= {
        "udemy-reviews",
        "udemy-reviews-valid",
        "udemy-reviews-fraud",
        "long-term-stats",
        "recent-stats",
        "reviews-dead-letter",
    }
    assert specs["long-term-stats"].config["cleanup.policy"] == "compact"
    assert specs["udemy-reviews"].config["retention.ms"] == "-1"
    # valid/fraud keep the input's partitioning so a review id has one partition number everywhere
    assert specs["udemy-reviews-valid"].partitions == specs["udemy-reviews"].partitions
    assert specs["udemy-reviews-fraud"].partitions == specs["udemy-reviews"].partitions
    for spec in specs.values():
        if spec.value_schema:
            assert (SCHEMAS_DIR / spec.value_schema).is_file()


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9094")
    monkeypatch.setenv("KAFKA_SECURITY_CONFIG", "security.protocol=SASL_SSL; sasl.mechanism=PLAIN")
    settings = Settings.from_env()
    assert settings.kafka_config(**{"group.id": "g"}) == {
        "bootstrap.servers": "broker:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "group.id": "g",
    }


def test_bad_security_config_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_CONFIG", "security.protocol")
    with pytest.raises(ValueError, match="KAFKA_SECURITY_CONFIG"):
        Settings.from_env()
