"""Sink connector configs and the DATABASE_URL -> JDBC conversion, without Connect."""

from __future__ import annotations

import json

import pytest

from streaming.admin import SCHEMAS_DIR, load_topic_specs
from streaming.sink.render import (
    CONNECTION_KEYS,
    declared_connectors,
    jdbc_connection,
    load_connector,
    render_connector,
    secret_reference,
)
from streaming.sink.tables import KAFKA_COORDINATES, expected_key

LOCAL = "postgresql+psycopg2://postgres@127.0.0.1:5433/reviews"
TABLES = {  # schema-qualified: the sink resolves a bare name in any schema that has one
    "long-term-stats": "public.long_term_stats",
    "recent-stats": "public.recent_stats",
    "udemy-reviews": "public.reviews",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            LOCAL,
            {
                "connection.url": "jdbc:postgresql://127.0.0.1:5433/reviews",
                "connection.username": "postgres",
            },
        ),
        (
            "postgresql://app@db.example.com/reviews?sslmode=require",
            {
                "connection.url": "jdbc:postgresql://db.example.com/reviews?sslmode=require",
                "connection.username": "app",
            },
        ),
        (
            "postgresql+psycopg://u@[::1]:6543/my%20db",
            {"connection.url": "jdbc:postgresql://[::1]:6543/my%20db", "connection.username": "u"},
        ),
    ],
)
def test_sqlalchemy_url_becomes_jdbc_settings(url: str, expected: dict[str, str]) -> None:
    assert jdbc_connection(url) == expected


def test_the_password_is_a_reference_to_its_file_never_the_value(tmp_path) -> None:
    secret = tmp_path / "secrets" / "postgres-password"
    connection = jdbc_connection(LOCAL, str(secret))
    assert connection["connection.password"] == f"${{dir:{secret.parent}:postgres-password}}"
    assert secret_reference(str(secret)) == connection["connection.password"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql+pymysql://u:p@h/db", "expected a postgresql URL"),
        ("postgresql:///reviews", "needs a host"),
        ("postgresql://u@h", "needs a host and a database"),
        ("postgresql://app:s3cr%40t@db.example.com/reviews", "DATABASE_URL holds a password"),
        ("postgresql://u:@h/db", "DATABASE_URL holds a password"),
    ],
)
def test_unusable_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        jdbc_connection(url)
    assert "s3cr" not in str(refused.value), "the error must not repeat the password"


def test_the_three_connectors_are_declared() -> None:
    assert declared_connectors() == sorted(TABLES)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_committed_configs_follow_the_contract(name: str) -> None:
    config = load_connector(name)
    assert config["connector.class"] == "io.debezium.connector.jdbc.JdbcSinkConnector"
    assert config["topics"] == name
    assert config["collection.name.format"] == TABLES[name]
    assert config["insert.mode"] == "upsert"
    assert config["primary.key.mode"] == ("kafka" if name == "udemy-reviews" else "record_value")
    assert config["schema.evolution"] == "basic"
    assert config["consumer.override.isolation.level"] == "read_committed"
    assert config["errors.tolerance"] == "all"
    # headers as bytes: Connect's default converter parses a value such as "[]" into an array
    # without an element schema, and the Debezium sink then fails its task on every retry
    assert config["header.converter"] == "org.apache.kafka.connect.converters.ByteArrayConverter"
    assert config["errors.deadletterqueue.context.headers.enable"] == "true"
    assert config["errors.deadletterqueue.topic.replication.factor"] == "1"
    dlq = config["errors.deadletterqueue.topic.name"]
    assert dlq in {spec.name for spec in load_topic_specs()}, "the DLQ topic must be declared"
    assert not set(CONNECTION_KEYS) & config.keys(), "credentials come from DATABASE_URL"


def test_statistics_key_on_the_course_and_reviews_on_each_record() -> None:
    for name in ("long-term-stats", "recent-stats"):
        assert load_connector(name)["primary.key.fields"] == "course_id"
        assert expected_key(load_connector(name)) == ("course_id",)
        assert "transforms" not in load_connector(name)
    reviews = load_connector("udemy-reviews")
    # keyed by the record's Kafka coordinates under Debezium's default column names: a
    # re-delivered record overwrites itself, two versions with equal `modified` are two rows
    assert "primary.key.fields" not in reviews
    assert expected_key(reviews) == ("__connect_topic", "__connect_partition", "__connect_offset")
    # unstorable records fail in the transform stage (dead-lettered), not at the write; every
    # record is read with the reader schema's fields, so a later writer schema changes no table
    assert reviews["transforms"] == "storable,project,flatten"
    assert reviews["transforms.storable.type"] == "dev.reviews.connect.RejectUnstorable"
    assert reviews["transforms.project.type"] == "dev.reviews.connect.ProjectToReader"
    review = json.loads((SCHEMAS_DIR / "review.avsc").read_text())
    top = [f["name"] for f in review["fields"]]
    tree = reviews["transforms.project.fields"]
    assert tree.startswith(",".join(top[:6]) + ",user{") and tree.endswith("course{id,title,url}")
    assert reviews["transforms.flatten.type"] == "org.apache.kafka.connect.transforms.Flatten$Value"
    assert reviews["transforms.flatten.delimiter"] == "_"


def test_render_adds_the_connection_then_the_overrides() -> None:
    config = render_connector(
        "udemy-reviews",
        "postgresql://sink@pg:5432/reviews",
        password_file="/run/secrets/pg",
        topic="test-topic",
        table="test_schema.reviews",
        overrides={"errors.tolerance": "none", "tasks.max": "1"},
    )
    assert config == {
        **load_connector("udemy-reviews"),
        "connection.url": "jdbc:postgresql://pg:5432/reviews",
        "connection.username": "sink",
        "connection.password": "${dir:/run/secrets:pg}",
        "topics": "test-topic",
        "collection.name.format": "test_schema.reviews",
        "errors.tolerance": "none",
        "tasks.max": "1",
    }


def test_configs_with_non_strings_or_credentials_are_refused(tmp_path) -> None:
    (tmp_path / "numbers.json").write_text(json.dumps({"tasks.max": 2, "topics": "t"}))
    (tmp_path / "secret.json").write_text(json.dumps({"connection.password": "x"}))
    with pytest.raises(ValueError, match=r"must be JSON strings, not: tasks\.max"):
        load_connector("numbers", tmp_path)
    with pytest.raises(ValueError, match=r"connection\.password come from DATABASE_URL"):
        load_connector("secret", tmp_path)
    with pytest.raises(ValueError, match="declared: numbers, secret"):
        load_connector("missing", tmp_path)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"insert.mode": "upsert", "primary.key.mode": "kafka"}, KAFKA_COORDINATES),
        (
            {"insert.mode": "upsert", "primary.key.mode": "kafka", "primary.key.fields": "t,p,o"},
            ("t", "p", "o"),
        ),
        (
            {
                "insert.mode": "upsert",
                "primary.key.mode": "record_value",
                "primary.key.fields": "a, b",
            },
            ("a", "b"),
        ),
        ({"insert.mode": "upsert", "primary.key.mode": "record_value"}, None),
        ({"insert.mode": "insert", "primary.key.mode": "kafka"}, None),
        ({"insert.mode": "upsert"}, None),
    ],
)
def test_the_key_a_connector_upserts_on(config: dict[str, str], key: tuple | None) -> None:
    """What a table the connector finds must be keyed by (None: nothing to check)."""
    assert expected_key(config) == key
