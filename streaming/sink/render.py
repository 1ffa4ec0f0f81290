"""Connector configs: the committed JSON of `connectors/`, the sink's topic, table and dead-letter
topic from the pipeline's declaration, and the connection from DATABASE_URL.

The Python side reaches PostgreSQL through a SQLAlchemy URL and the sink (Java) through JDBC;
deriving the JDBC settings from the one DATABASE_URL keeps both on the same database and keeps
credentials out of the repository. No password ever enters a connector config: DATABASE_URL
must not hold one (the Python clients take it from libpq's PGPASSFILE), and the sink's is a
reference, `${dir:DIR:NAME}`, that Connect's DirectoryConfigProvider resolves to the content
of the password file when it starts a task; Connect's config topic and REST answers hold only
the reference. The caller picks the login: a declared sink's own role (`Settings.sink_login`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlalchemy.engine import make_url

from streaming.pipeline import (
    CONNECT_DEAD_LETTER,
    DEFAULT_MAX_MESSAGE_BYTES,
    SINKS,
    TOPICS,
    max_message_bytes,
)
from streaming.settings import schemas_dir

CONNECTORS_DIR = Path(__file__).with_name("connectors")
CONNECTION_KEYS = ("connection.url", "connection.username", "connection.password")
SECRET_PROVIDER = "dir"
"""The name Connect's worker config gives its DirectoryConfigProvider (`config.providers`)."""


def secret_reference(password_file: str) -> str:
    """The config-provider reference Connect resolves to the content of `password_file`."""
    path = Path(password_file).resolve()
    return f"${{{SECRET_PROVIDER}:{path.parent}:{path.name}}}"


def jdbc_connection(database_url: str, password_file: str | None = None) -> dict[str, str]:
    """`connection.url`/`.username`/`.password` for the JDBC sink from a SQLAlchemy URL.

    `postgresql+psycopg2://user@host:port/db?sslmode=require` becomes
    `jdbc:postgresql://host:port/db?sslmode=require` plus the user; query parameters pass
    through, as pgjdbc knows libpq's `ssl*` names. The password is the reference to
    `password_file` (DATABASE_PASSWORD_FILE); a URL that holds one is refused.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"DATABASE_URL: expected a postgresql URL, got {url.drivername!r}")
    if url.password is not None:
        raise ValueError(
            "DATABASE_URL holds a password, which would be stored in Connect's config topic: "
            "put it in a file of mode 0600, set DATABASE_PASSWORD_FILE to it (the sink reads "
            "it through Connect's config provider) and PGPASSFILE for the Python clients"
        )
    if not url.host or not url.database:
        raise ValueError("DATABASE_URL: the JDBC sink needs a host and a database name")
    host = f"[{url.host}]" if ":" in url.host else url.host  # an IPv6 literal
    port = f":{url.port}" if url.port else ""
    query = urlencode(dict(url.query), doseq=True)
    jdbc = f"jdbc:postgresql://{host}{port}/{quote(url.database, safe='')}"
    out = {"connection.url": f"{jdbc}?{query}" if query else jdbc}
    if url.username:
        out["connection.username"] = url.username
    if password_file:
        out["connection.password"] = secret_reference(password_file)
    return out


def declared_connectors(directory: Path = CONNECTORS_DIR) -> list[str]:
    """Names of the connectors kept as configuration (one `<name>.json` each)."""
    return sorted(path.stem for path in directory.glob("*.json"))


def load_connector(name: str, directory: Path = CONNECTORS_DIR) -> dict[str, str]:
    """A connector's committed config; refuses non-string values (Connect stores strings, and
    deploy compares configs to skip no-op updates) and committed credentials. The project's own
    connectors (`connectors/`) get their topic, table and dead-letter topic from the declared
    sinks; a file in another directory (`--config-dir`) is taken as it is."""
    path = directory / f"{name}.json"
    if not path.is_file():
        known = ", ".join(declared_connectors(directory)) or "none"
        raise ValueError(f"no connector config {path} (declared: {known})")
    config = json.loads(path.read_text())
    bad = sorted(k for k, v in config.items() if not isinstance(v, str))
    if bad:
        raise ValueError(f"{path}: values must be JSON strings, not: {', '.join(bad)}")
    committed = sorted(set(CONNECTION_KEYS) & config.keys())
    if committed:
        raise ValueError(f"{path}: {', '.join(committed)} come from DATABASE_URL at deploy time")
    if directory != CONNECTORS_DIR:  # a user's own connector: the file says everything
        return config
    declared = sorted(set(DECLARED_KEYS) & config.keys())
    if declared:
        raise ValueError(f"{path}: {', '.join(declared)} come from streaming/pipeline.py")
    config = {**declared_settings(name), **config}
    if PROJECT in config.get("transforms", "").split(","):
        config[PROJECT_FIELDS] = reader_fields(name)
    return config


PROJECT = "project"
"""The alias of the ProjectToReader transform (stack/maven/connect-extensions) in a config."""
PROJECT_FIELDS = f"transforms.{PROJECT}.fields"


def field_tree(schema: Mapping) -> str:
    """An Avro record's field tree as ProjectToReader reads it: "id,user{name,title},..."."""
    out = []
    for f in schema["fields"]:
        kind = f["type"]
        out.append(
            f"{f['name']}{{{field_tree(kind)}}}"
            if isinstance(kind, dict) and kind.get("type") == "record"
            else f["name"]
        )
    return ",".join(out)


def reader_fields(name: str) -> str:
    """The field tree of the value schema of the topic sink `name` reads (the pipeline's reader
    schema, `schemas/`): what its ProjectToReader keeps of every record."""
    sink = next(s for s in SINKS if s.connector == name)
    spec = next(t for t in TOPICS if t.name == sink.topic)
    if spec.value_schema is None:
        raise ValueError(f"{name}: topic {sink.topic} declares no value schema to project to")
    return field_tree(json.loads((schemas_dir() / spec.value_schema).read_text()))


DECLARED_KEYS = (
    "topics",
    "transforms.project.fields",
    "collection.name.format",
    "errors.deadletterqueue.topic.name",
    "producer.override.max.request.size",
)


def declared_settings(name: str) -> dict[str, str]:
    """What the pipeline's declaration says of a sink: its topic, table and dead letters."""
    for sink in SINKS:
        if sink.connector == name:
            return {
                "topics": sink.topic,
                "collection.name.format": f"public.{sink.table}",
                "errors.deadletterqueue.topic.name": CONNECT_DEAD_LETTER.name,
                # the dead-letter producer's limit, as large as the dead-letter topic's: a dead
                # letter is the input record plus a few KiB of headers, and Connect's default
                # 1 MiB request limit silently dropped one near the input's limit (only logged)
                "producer.override.max.request.size": str(
                    max_message_bytes(CONNECT_DEAD_LETTER, DEFAULT_MAX_MESSAGE_BYTES)
                ),
            }
    known = ", ".join(s.connector for s in SINKS)
    raise ValueError(f"connector {name!r} is not a sink of streaming/pipeline.py ({known})")


def render_connector(
    name: str,
    database_url: str,
    *,
    topic: str | None = None,
    table: str | None = None,
    overrides: Mapping[str, str] | None = None,
    directory: Path = CONNECTORS_DIR,
    password_file: str | None = None,
) -> dict[str, str]:
    """The config to deploy: committed settings, the JDBC connection, then overrides.

    `topic` and `table` re-point a connector (tests run the real configs against temporary
    topics and tables); `overrides` replaces any other setting; `password_file` is
    DATABASE_PASSWORD_FILE (`jdbc_connection`).
    """
    config = {
        **load_connector(name, directory),
        **jdbc_connection(database_url, password_file),
    }
    if topic is not None:
        config["topics"] = topic
    if table is not None:
        config["collection.name.format"] = table
    config.update(overrides or {})
    return config
