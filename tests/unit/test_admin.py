"""Topic declarations and settings parsing, without a broker."""

from __future__ import annotations

import pytest

from streaming.admin import SCHEMAS_DIR, TopicLayoutError, check_partition_counts, load_topic_specs
from streaming.settings import Settings


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
    # the review stage's inputs and its changelog share one count (state partition p reads
    # valid[p] and fraud[p]); only the input and the dead letters may grow in place
    changelog = specs["stats-aggregator-review-versions-changelog"]
    assert specs["udemy-reviews-valid"].partitions == changelog.partitions
    assert specs["udemy-reviews-fraud"].partitions == changelog.partitions
    growable = {name for name, spec in specs.items() if spec.may_grow}
    assert growable == {"udemy-reviews", "reviews-dead-letter", "connect-dead-letter"}
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


def test_a_topic_that_holds_state_is_never_re_partitioned_in_place() -> None:
    specs = load_topic_specs()
    declared = {s.name: s.partitions for s in specs}
    check_partition_counts(declared, specs)  # as declared: fine
    check_partition_counts({**declared, "udemy-reviews": 3}, specs)  # the input grows: fine
    check_partition_counts({**declared, "udemy-reviews": 12}, specs)  # it grew: fine
    for topic in ("stats-aggregator-review-versions-changelog", "udemy-reviews-valid"):
        for count in (3, 8):
            with pytest.raises(TopicLayoutError, match=f"{topic} has {count} partitions") as err:
                check_partition_counts({**declared, topic: count}, specs)
            assert "reviews rebuild-stream" in str(err.value)
