"""The PostgreSQL sink on the real stack: the committed connector configs, re-pointed at
temporary topics, a dedicated PostgreSQL schema and a temporary dead-letter topic, deployed
under unique names and removed afterwards (connectors, consumer groups, topics, subjects)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastapi import FastAPI
from fastapi.testclient import TestClient

from streaming.api.read import STAT_COLUMNS, get_engine, router
from streaming.cli import main
from streaming.core.avro_codec import confluent_frame
from streaming.db_roles import SINK_ROLES, pgpass_line
from streaming.kafka_acl import revoke
from streaming.serde import Registry
from streaming.settings import Settings
from streaming.sink.connect import ConnectClient, ConnectError, render_login
from streaming.sink.render import (
    CONNECTION_KEYS,
    load_connector,
    render_connector,
    secret_reference,
)
from streaming.sink.tables import KAFKA_COORDINATES, IncompatibleTable, check_tables, table_key
from tests.integration.kafka_helpers import (
    AvroEncoder,
    delete_topics,
    grant_topics,
    make_topics,
    read_all,
    review,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 90
POLL_S = 0.2
DAY_MS = 86_400_000
REVIEW_COLUMNS = (
    "__connect_topic, __connect_partition, __connect_offset, id, modified, title, content, "
    "rating, created, user_title, user_name, user_display_name, course_id, course_title, "
    "course_url"
)


@pytest.fixture(scope="module")
def connect(settings: Settings) -> Iterator[ConnectClient]:
    with ConnectClient(settings.connect_url, auth=settings.connect_auth()) as client:
        try:
            client.list()
        except ConnectError as exc:
            pytest.fail(f"Kafka Connect is not up ({exc}); run `make up` or use `make test`")
        yield client


@pytest.fixture(scope="module")
def db(settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(settings.database_url)
    yield engine
    engine.dispose()


@dataclass
class Sink:
    """Test connectors `sinktest-<tag>-<declared name>`: the declared config, on a temporary
    topic, writing the declared table inside a dedicated schema."""

    settings: Settings
    connect: ConnectClient
    db: sa.Engine
    tag: str
    schema: str
    topics: dict[str, str]
    deployed: list[str] = field(default_factory=list)
    encoders: dict[str, AvroEncoder] = field(default_factory=dict)

    def name(self, connector: str) -> str:
        return f"sinktest-{self.tag}-{connector}"

    def table(self, connector: str) -> str:
        committed = load_connector(connector)["collection.name.format"]  # public.<table>
        return f"{self.schema}.{committed.rpartition('.')[2]}"

    def config(self, connector: str, **overrides: str) -> dict[str, str]:
        """As deployed, logged in as the sink's own role (`Settings.sink_login`)."""
        url, password_file = self.settings.sink_login(connector)
        return render_connector(
            connector,
            url,
            topic=self.topics[connector],
            table=self.table(connector),
            overrides={"errors.deadletterqueue.topic.name": self.topics["dlq"], **overrides},
            password_file=password_file,
        )

    def deploy(self, connector: str, **overrides: str) -> str:
        name = self.name(connector)
        self.deployed.append(name)
        self.connect.deploy(name, self.config(connector, **overrides))
        self.connect.wait_for(name, lambda s: s.running, TIMEOUT_S)
        return name

    def encode(self, connector: str, record: dict[str, Any]) -> bytes:
        if connector not in self.encoders:
            schema = "review.avsc" if connector == "udemy-reviews" else "course_statistic.avsc"
            registry = Registry(self.settings.schema_registry_url)
            topic = self.topics[connector]
            self.encoders[connector] = AvroEncoder(registry, f"{topic}-value", schema)
        return self.encoders[connector].encode(record)

    def rows(self, connector: str, columns: str, order: str) -> list[tuple]:
        """The table's rows, or none while the sink has not created it."""
        table = self.table(connector)
        with self.db.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                return []
            return [
                tuple(r)
                for r in conn.execute(sa.text(f"SELECT {columns} FROM {table} ORDER BY {order}"))
            ]

    def stats_rows(self, connector: str) -> list[tuple]:
        return self.rows(connector, ", ".join(n for n, _ in STAT_COLUMNS), "course_id")

    def review_rows(self) -> list[tuple]:
        return self.rows("udemy-reviews", REVIEW_COLUMNS, "__connect_partition, __connect_offset")

    def redeliver(self, connector: str) -> None:
        """Make Connect deliver every record of the connector's topic again: stop it, forget
        its offsets, resume (it reads from the earliest offset, as a new connector would)."""
        name = self.name(connector)
        self.connect.stop(name)
        self.connect.wait_for(name, lambda s: s.state == "STOPPED" and not s.tasks, TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:  # refused while the stopped tasks' consumers are still leaving the group
                # forget the stopped connector's committed offsets (KIP-875): once resumed, it
                # reads its topics again from `auto.offset.reset` (earliest here)
                self.connect._request("DELETE", f"/connectors/{quote(name, safe='')}/offsets")
                break
            except ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_S)
        self.connect.resume(name)
        self.connect.wait_for(name, lambda s: s.running, TIMEOUT_S)


@pytest.fixture
def sink(
    settings: Settings,
    admin: AdminClient,
    registry: SchemaRegistryClient,
    connect: ConnectClient,
    db: sa.Engine,
) -> Iterator[Sink]:
    tag = uuid.uuid4().hex[:8]
    topics = make_topics(
        admin, "sinktest", ["long-term-stats", "recent-stats", "udemy-reviews", "dlq"], 2
    )
    grants = grant_topics(admin, "connect", list(topics.values()))  # Connect reads and writes them
    schema = f"sinktest_{tag}"
    sink_roles = ", ".join(f'"{r.name}"' for r in SINK_ROLES)
    with db.begin() as conn:  # where the sinks' roles create their tables, as in `public`
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {sink_roles}'))
    env = Sink(settings, connect, db, tag, schema, topics)
    yield env
    for name in env.deployed:  # stopped first, so no task consumer rejoins a deleted group
        try:
            connect.stop(name)
        except ConnectError as exc:
            if exc.status == 404:  # its deploy failed
                continue
            raise
        connect.wait_for(name, lambda s: s.state == "STOPPED" and not s.tasks, TIMEOUT_S)
        connect.delete(name)
    delete_groups(admin, [f"connect-{name}" for name in env.deployed])
    delete_topics(admin, list(topics.values()))
    revoke(admin, grants)
    for subject in registry.get_subjects():
        if any(subject == f"{t}-value" for t in topics.values()):
            registry.delete_subject(subject)
            registry.delete_subject(subject, permanent=True)
    with db.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def delete_groups(admin: AdminClient, groups: list[str]) -> None:
    """Delete the connectors' consumer groups, waiting for members still leaving."""
    deadline = time.monotonic() + TIMEOUT_S
    pending = set(groups)
    while pending:
        for group, fut in admin.delete_consumer_groups(sorted(pending)).items():
            try:
                fut.result(30)
                pending.discard(group)
            except KafkaException as exc:
                if exc.args[0].name() == "GROUP_ID_NOT_FOUND":
                    pending.discard(group)
                elif time.monotonic() > deadline:
                    raise
        if pending:
            time.sleep(POLL_S)


def eventually(fetch: Callable[[], Any], expected: Any, timeout_s: float = TIMEOUT_S) -> None:
    """Poll `fetch` until it returns `expected`; on timeout, assert (pytest shows the diff)."""
    deadline = time.monotonic() + timeout_s
    while (got := fetch()) != expected and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert got == expected


def wait_consumed(
    sink: Sink, admin: AdminClient, connector: str, dead_keys: frozenset[bytes] = frozenset()
) -> None:
    """Wait until the connector committed offsets past every record it writes: Connect commits
    only what the sink task wrote, so after this the table reflects all of them.

    Dead-lettered records (`dead_keys`) are left out: the JDBC sink commits the offsets of the
    records it was handed, so a dead letter after the last written record of a partition stays
    uncommitted until a good record follows it.
    """
    topic = sink.topics[connector]
    wanted: dict[int, int] = {}
    for msg in read_all(sink.settings, topic):
        if msg.key() not in dead_keys:
            wanted[msg.partition()] = max(wanted.get(msg.partition(), 0), msg.offset() + 1)
    group = f"connect-{sink.name(connector)}"

    def committed() -> dict[str, dict[int, int]]:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        offsets = {tp.partition: tp.offset for tp in result[group].result(30).topic_partitions}
        return {topic: {p: min(offsets.get(p, -1), end) for p, end in wanted.items()}}

    eventually(committed, {topic: wanted})


def produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes]]) -> list[tuple]:
    """Produce in order; each record's (topic, partition, offset), as the sink keys its row."""
    p = Producer(settings.kafka_config(**{"partitioner": "murmur2_random"}))
    reports: dict[int, tuple[Any, Any]] = {}

    def delivered(index: int) -> Callable[[Any, Any], None]:
        return lambda err, msg: reports.__setitem__(index, (err, msg))

    for index, (key, value) in enumerate(items):
        p.produce(topic, value, key, on_delivery=delivered(index))
    assert p.flush(30) == 0
    assert all(err is None for err, _ in reports.values()), reports
    return [(m.topic(), m.partition(), m.offset()) for _, m in map(reports.get, range(len(items)))]


def produce_transaction(
    settings: Settings, topic: str, items: list[tuple[bytes, bytes]], *, commit: bool = True
) -> None:
    """As the stats aggregator writes: inside a Kafka transaction, committed or aborted."""
    p = Producer(
        settings.kafka_config(
            **{"transactional.id": f"sinktest-{uuid.uuid4().hex}", "partitioner": "murmur2_random"}
        )
    )
    p.init_transactions(30)
    p.begin_transaction()
    for key, value in items:
        p.produce(topic, value, key)
    if commit:
        p.commit_transaction(30)
    else:
        p.flush(30)
        p.abort_transaction(30)


def statistic(course_id: int, reviews: int, as_of: int, **overrides: Any) -> dict[str, Any]:
    record = {
        "course_id": course_id,
        "course_title": f"Kafka — cours {course_id} 👍",
        "average_rating": 4.25 if reviews else 0.0,
        "count_reviews": reviews,
        "count_five_stars": reviews // 2,
        "count_four_stars": reviews - reviews // 2,
        "count_three_stars": 0,
        "count_two_stars": 0,
        "count_one_star": 0,
        "count_zero_star": 0,
        "last_review_time": 1_763_000_000_123 + reviews,
        "sum_rating": 4.25 * reviews,
        "window_start_day": None,
        "window_end_day": None,
        "as_of_time": as_of,
    }
    record.update(overrides)
    return record


def utc(ms: int | None) -> datetime | None:
    """A timestamp-millis as the sink stores it: a UTC `timestamp` (no zone)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def day(epoch_day: int | None) -> date | None:
    return None if epoch_day is None else date(1970, 1, 1) + timedelta(days=epoch_day)


def stat_row(record: dict[str, Any]) -> tuple:
    row = dict(record)
    for name in ("last_review_time", "as_of_time"):
        row[name] = utc(row[name])
    for name in ("window_start_day", "window_end_day"):
        row[name] = day(row[name])
    return tuple(row[n] for n, _ in STAT_COLUMNS)


def review_row(r: dict[str, Any], coordinates: tuple) -> tuple:
    """A review record's row: its Kafka coordinates (the key), then its flattened fields."""
    u, c = r["user"], r["course"]
    own = (r["id"], utc(r["modified"]), r["title"], r["content"], r["rating"], utc(r["created"]))
    fields = (*own, u["title"], u["name"], u["display_name"], c["id"], c["title"], c["url"])
    return (*coordinates, *fields)


def keyed(records: list[dict[str, Any]], sink: Sink, connector: str, key: str) -> list:
    return [(str(r[key]).encode(), sink.encode(connector, r)) for r in records]


def test_rows_are_exact_and_redelivery_changes_nothing(
    sink: Sink, settings: Settings, admin: AdminClient
) -> None:
    for connector in ("long-term-stats", "recent-stats", "udemy-reviews"):
        sink.deploy(connector)

    as_of = 1_764_000_000_000
    window = {"window_start_day": 20_330, "window_end_day": 20_419}
    long_term = [statistic(101, 1, as_of), statistic(102, 3, as_of), statistic(101, 2, as_of + 5)]
    recent = [statistic(101, 1, as_of, **window), statistic(102, 0, as_of + 5, **window)]
    aborted = [statistic(103, 9, as_of)]
    edited = review(7, title="Great", content="Très bien 👍", rating="4.5")
    tied = review(10, content="first text")
    reviews = [
        edited,
        review(8),
        review(9, title=None, content=None),
        dict(edited, modified=edited["modified"] + DAY_MS, rating="2.0", content="Changed"),
        review(8),  # the same version sent again: a record of its own, a row of its own
        dict(tied, content="second text, same modified", rating="1.0"),
        tied,  # equal `modified` three times: every record kept, the offsets order them
    ]

    poison = [(b"66", b"not avro at all"), (b"67", confluent_frame(2**31 - 1, b"\x02"))]
    dead_keys = frozenset(key for key, _ in poison)  # not Avro; an unknown schema id

    def send_statistics() -> None:
        produce_transaction(
            settings,
            sink.topics["long-term-stats"],
            keyed(aborted, sink, "long-term-stats", "course_id"),
            commit=False,
        )
        for connector, records in (("long-term-stats", long_term), ("recent-stats", recent)):
            produce_transaction(
                settings, sink.topics[connector], keyed(records, sink, connector, "course_id")
            )

    send_statistics()
    located = produce(
        settings, sink.topics["udemy-reviews"], keyed(reviews, sink, "udemy-reviews", "id") + poison
    )
    expected_long = [stat_row(long_term[2]), stat_row(long_term[1])]
    expected_recent = [stat_row(r) for r in recent]
    rows = map(review_row, reviews, located[: len(reviews)])
    expected_reviews = sorted(rows, key=lambda row: row[1:3])
    assert len(expected_reviews) == len(reviews) == 7, "one row per record"
    assert len({row[1] for row in expected_reviews if row[3] == 10}) == 1, "one partition per id"
    eventually(lambda: sink.stats_rows("long-term-stats"), expected_long)
    eventually(lambda: sink.stats_rows("recent-stats"), expected_recent)
    eventually(sink.review_rows, expected_reviews)

    dead = read_all(settings, sink.topics["dlq"])
    assert {m.key() for m in dead} == dead_keys and len(dead) == 2
    for msg in dead:
        headers = dict(msg.headers())
        assert headers["__connect.errors.topic"] == sink.topics["udemy-reviews"].encode()
        assert headers["__connect.errors.stage"] == b"VALUE_CONVERTER"

    send_statistics()  # the same statistics again: each overwrites its course's row
    sink.redeliver("udemy-reviews")  # every review record again: each overwrites its own row
    for connector in ("long-term-stats", "recent-stats"):
        wait_consumed(sink, admin, connector)
    wait_consumed(sink, admin, "udemy-reviews", dead_keys)
    assert sink.stats_rows("long-term-stats") == expected_long
    assert sink.stats_rows("recent-stats") == expected_recent
    assert sink.review_rows() == expected_reviews

    # the read API over the tables exactly as the sink created them
    engine = sa.create_engine(
        settings.database_url, connect_args={"options": f"-csearch_path={sink.schema}"}
    )
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[get_engine] = lambda: engine
    body = TestClient(app).get("/courses/101/stats").json()
    engine.dispose()
    assert body["all_time"]["count_reviews"] == 2
    assert body["all_time"]["course_title"] == "Kafka — cours 101 👍"
    assert body["recent"]["window_start_day"] == "2025-08-30"
    assert body["updated_at"] == "2025-11-24T16:00:00.005000Z"


def test_a_failed_task_is_detected_and_restarted(
    sink: Sink,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = sink.deploy("long-term-stats")
    topic = sink.topics["long-term-stats"]
    first, second = statistic(201, 4, 1_764_000_000_000), statistic(202, 1, 1_764_000_000_000)
    produce_transaction(settings, topic, keyed([first], sink, "long-term-stats", "course_id"))
    eventually(lambda: sink.stats_rows("long-term-stats"), [stat_row(first)])

    table = sink.table("long-term-stats")
    with sink.db.begin() as conn:  # from now on the sink cannot write: every new row is refused
        conn.execute(
            sa.text(
                f"ALTER TABLE {table} ADD CONSTRAINT refuse_all CHECK (course_id < 0) NOT VALID"
            )
        )
    produce_transaction(settings, topic, keyed([second], sink, "long-term-stats", "course_id"))
    # the failed task's partitions move to the other task, which fails on the same record:
    # wait for the cascade to end, so the restart below catches every failed task
    failed = sink.connect.wait_for(
        name, lambda s: all(t.state == "FAILED" for t in s.tasks), TIMEOUT_S
    )
    assert all("refuse_all" in (t.trace or "") for t in failed.tasks)
    capsys.readouterr()
    assert main(["connectors", "status", name]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "refuse_all" in out

    with sink.db.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT refuse_all"))
    planned = sink.connect.restart_failed(name)
    assert {t.state for t in planned.tasks} == {"RESTARTING"}
    sink.connect.wait_for(name, lambda s: s.running, TIMEOUT_S)
    eventually(lambda: sink.stats_rows("long-term-stats"), [stat_row(first), stat_row(second)])
    assert main(["connectors", "status", name]) == 0

    # again, repaired by `reviews connectors deploy` (what `make up` runs): same config, so
    # nothing is rewritten, but the failed tasks are restarted and waited for
    with sink.db.begin() as conn:
        conn.execute(
            sa.text(f"ALTER TABLE {table} ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        )
    third = statistic(203, 2, 1_764_000_000_000)
    produce_transaction(settings, topic, keyed([third], sink, "long-term-stats", "course_id"))
    sink.connect.wait_for(name, lambda s: all(t.state == "FAILED" for t in s.tasks), TIMEOUT_S)
    with sink.db.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT refuse_all"))
    config = {k: v for k, v in sink.config("long-term-stats").items() if k not in CONNECTION_KEYS}
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    login_as_sink(settings, "long-term-stats", tmp_path, monkeypatch)  # as it was deployed
    capsys.readouterr()
    assert main(["connectors", "deploy", name, "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{name} unchanged" in out and "had failed" in out and f"{name} running" in out
    eventually(lambda: len(sink.stats_rows("long-term-stats")), 3)


def test_pause_resume_and_restart_from_the_cli(
    sink: Sink, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    name = sink.deploy("recent-stats")
    assert main(["connectors", "pause", name]) == 0
    paused = sink.connect.wait_for(
        name, lambda s: s.state == "PAUSED" and all(t.state == "PAUSED" for t in s.tasks), TIMEOUT_S
    )
    capsys.readouterr()
    assert main(["connectors", "status", name]) == 0, "paused is not failed"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(paused.tasks)
    assert all(line.split()[0] == name and "PAUSED" in line for line in lines)

    record = statistic(301, 1, 1_764_000_000_000, window_start_day=1, window_end_day=90)
    produce_transaction(
        settings, sink.topics["recent-stats"], keyed([record], sink, "recent-stats", "course_id")
    )
    assert main(["connectors", "resume", name]) == 0
    sink.connect.wait_for(name, lambda s: s.running, TIMEOUT_S)
    eventually(lambda: sink.stats_rows("recent-stats"), [stat_row(record)])

    capsys.readouterr()
    assert main(["connectors", "restart", name]) == 0, "nothing failed: nothing to restart"
    assert "RESTARTING" not in capsys.readouterr().out
    assert sink.connect.status(name).running


def test_deploy_is_idempotent_from_code_and_cli(
    sink: Sink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = sink.name("recent-stats")
    config = {k: v for k, v in sink.config("recent-stats").items() if k not in CONNECTION_KEYS}
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    sink.deployed.append(name)
    password_file = login_as_sink(sink.settings, "recent-stats", tmp_path, monkeypatch)

    assert main(["connectors", "deploy", "--config-dir", str(tmp_path), "--wait", "90"]) == 0
    assert f"connectors: {name} created" in capsys.readouterr().out
    assert main(["connectors", "deploy", name, "--config-dir", str(tmp_path)]) == 0
    assert f"connectors: {name} unchanged" in capsys.readouterr().out
    assert name in sink.connect.list()

    # the password as a reference Connect resolves: in the config, and in Connect's answers,
    # only the reference; a password in DATABASE_URL is refused, nothing deployed
    stored = sink.connect._request("GET", f"/connectors/{name}/config").json()
    assert stored["connection.password"] == secret_reference(password_file)
    secret = Path(password_file).read_text().strip()
    assert secret not in json.dumps(stored)
    monkeypatch.setenv("DATABASE_URL", url_with_password(sink.settings.database_url))
    assert main(["connectors", "deploy", name, "--config-dir", str(tmp_path)]) == 1
    assert "DATABASE_URL holds a password" in capsys.readouterr().err
    assert sink.connect.wait_for(name, lambda s: s.running, TIMEOUT_S).running

    with pytest.raises(ConnectError) as missing:
        sink.connect.status(f"{name}-missing")
    assert missing.value.status == 404
    assert main(["connectors", "status", f"{name}-missing"]) == 1
    assert "MISSING" in capsys.readouterr().out


def login_as_sink(
    settings: Settings, connector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The environment of a connector of another directory (`--config-dir`), which logs in as
    DATABASE_URL's user with DATABASE_PASSWORD_FILE: the declared sink `connector`'s role, whose
    password Connect may read (the superuser's it may not); its password file."""
    url, password_file = settings.sink_login(connector)
    assert password_file, "make up sets DATABASE_SINK_SECRETS_DIR"
    pgpass = tmp_path / "pgpass"  # for the deploy's own check of the tables, through libpq;
    user = sa.make_url(url).username or ""  # the test's own connections keep their lines
    theirs = Path(os.environ["PGPASSFILE"]).read_text()
    pgpass.write_text(pgpass_line(user, Path(password_file).read_text().strip()) + "\n" + theirs)
    pgpass.chmod(0o600)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", password_file)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    return password_file


def url_with_password(database_url: str) -> str:
    return sa.make_url(database_url).set(password="not-checked").render_as_string(False)


def test_deploy_refuses_a_reviews_table_keyed_by_id_and_modified(
    sink: Sink,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A `reviews` table created by the config before the Kafka-coordinates key cannot take
    the sink's upserts: deploy changes nothing and says what to do; without it, deploy works
    and the sink creates the table keyed by the coordinates."""
    name = sink.name("udemy-reviews")
    table = sink.table("udemy-reviews")
    config = {k: v for k, v in sink.config("udemy-reviews").items() if k not in CONNECTION_KEYS}
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    login_as_sink(settings, "udemy-reviews", tmp_path, monkeypatch)
    with sink.db.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id bigint, modified timestamp(6), title text, "
                "PRIMARY KEY (id, modified))"
            )
        )
    capsys.readouterr()
    assert main(["connectors", "deploy", name, "--config-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{table} has primary key (id, modified)" in err
    assert "upserts on (__connect_topic, __connect_partition, __connect_offset)" in err
    assert "make clean" in err and f"DELETE /connectors/{name}/offsets" in err
    with pytest.raises(IncompatibleTable):  # what the CLI's deploy checks first
        login = Settings.from_env().replace(database_url=settings.database_url)
        check_tables(settings.database_url, {name: render_login(name, login, tmp_path)})
    assert name not in sink.connect.list(), "nothing deployed"

    with sink.db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {table}"))
    sink.deployed.append(name)
    assert main(["connectors", "deploy", name, "--config-dir", str(tmp_path)]) == 0
    [coordinates] = produce(
        settings, sink.topics["udemy-reviews"], keyed([review(11)], sink, "udemy-reviews", "id")
    )
    eventually(sink.review_rows, [review_row(review(11), coordinates)])
    assert table_key(sink.db, table) == KAFKA_COORDINATES
    assert main(["connectors", "deploy", name, "--config-dir", str(tmp_path)]) == 0, "it fits"
