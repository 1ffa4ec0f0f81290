"""The Kafka Streams pipeline of the latency run: the same load, through Kafka Streams, into rows.

`make bench`'s e2e step measures ours, then this pipeline on the same load, one after the other:
the Kafka Streams fraud app (adding the input position header ours adds) and the KTable
aggregator (our semantics: retractions, titles), both exactly-once v2 with Streams' default
100 ms commit interval, read the live `udemy-reviews` from its end (as a new deployment would),
and a JDBC sink connector with our long-term sink's own configuration writes the aggregator's
long-term statistics into a table of a schema of its own. While it runs, our stream workers are
held and stopped (the supervisor restarts them after), so each pipeline has the machine to
itself and both see the same POSTs through the same API.

Everything it makes is named after one run tag and removed afterwards: the Streams apps' topics,
groups and subjects (`kstreams._fresh_app`), the connector and its group, its ACL grants, the
schema.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from bench.common import remove_connector
from bench.peers.kstreams import INPUT_SUBJECT, _App, _create_topics, _fresh_app
from stack import procs
from streaming.api.auth import client_token_file
from streaming.kafka_acl import create, revoke
from streaming.pipeline import INPUT, LONG_TERM_SINK, PARTITIONS, WORKERS
from streaming.serde import Registry
from streaming.settings import Settings, schemas_dir
from streaming.sink.connect import ConnectClient
from streaming.sink.render import render_connector

READY_TIMEOUT_S = 180
"""How long the peer's first row, or ours after a pause, may take (JVM start, first rebalance)."""


@dataclass(frozen=True)
class PeerPipeline:
    """Where the running peer lands: its rows' table and the topics of its hops."""

    table: str
    hops: dict[str, tuple[str, ...]]


def _until(
    what: str, cond: Callable[[], bool], timeout_s: float, every: Callable[[], None]
) -> None:
    """Call `every` and check `cond` each second until it holds; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not in {timeout_s:.0f} s")
        every()
        time.sleep(1)  # the interval between probes


def _probe(api_url: str) -> Callable[[], None]:
    """POST one review of a course of its own (ids far above the load's): what positions a
    pipeline started at the input's end, and shows when it is through."""
    token = client_token_file().read_text().strip()
    client = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"})

    def post() -> None:
        review_id = 9_000_000_000 + uuid.uuid4().int % 10**9
        day = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.post(
            "/reviews",
            json={
                "id": review_id,
                "title": "",
                "content": "",
                "rating": "5.0",
                "created": day,
                "modified": day,
                "user": {"title": "Probe", "name": "Probe", "display_name": "Probe"},
                "course": {"id": review_id, "title": "Probe", "url": "/probe/"},
            },
        ).raise_for_status()

    return post


def _rows(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        if conn.execute(sa.text("select to_regclass(:t)"), {"t": table}).scalar() is None:
            return 0
        return int(conn.execute(sa.text(f"select count(*) from {table}")).scalar_one())


def wait_until_through(settings: Settings, api_url: str, table: str) -> None:
    """Probe POSTs until one of them reaches `table`: the pipeline runs end to end."""
    engine = sa.create_engine(settings.database_url)
    before = _rows(engine, table)
    try:
        _until(
            f"a probe review in {table}",
            lambda: _rows(engine, table) > before,
            READY_TIMEOUT_S,
            _probe(api_url),
        )
    finally:
        engine.dispose()


@contextmanager
def ours_paused(state: Path) -> Iterator[None]:
    """Our stream workers held and stopped (SIGTERM: they commit and leave their groups); the
    supervisors restart them afterwards."""
    names = [name for w in WORKERS for name in w.instance_names()]
    for name in names:
        procs.hold(state, name, "bench e2e: the Kafka Streams pipeline's turn")
    try:
        for name in names:
            pid = procs.read_pid(state, name)
            if pid is not None:
                procs.terminate(pid, 30)
        yield
    finally:
        for name in names:
            procs.release(state, name)


def _grant(admin: AdminClient, principal: str, topics: Sequence[str]) -> list[AclBinding]:
    """Let `principal` read `topics` (the sink's consumer), as its own topics are declared."""
    grants = [
        AclBinding(
            ResourceType.TOPIC,
            topic,
            ResourcePatternType.LITERAL,
            f"User:{principal}",
            "*",
            op,
            AclPermissionType.ALLOW,
        )
        for topic in topics
        for op in (AclOperation.READ, AclOperation.DESCRIBE)
    ]
    create(admin, grants)
    return grants


@contextmanager
def _sink(settings: Settings, topic: str, schema: str) -> Iterator[str]:
    """Our long-term sink's configuration on `topic`, into `schema`.long_term_stats."""
    url, password_file = settings.sink_login(LONG_TERM_SINK.connector)  # the sink's own role
    engine = sa.create_engine(settings.database_url)
    admin = AdminClient(settings.kafka_config())
    connect = ConnectClient(settings.connect_url, auth=settings.connect_auth())
    name, table = f"{schema.replace('_', '-')}-sink", f"{schema}.{LONG_TERM_SINK.table}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"create schema {schema}"))
        role = sa.make_url(url).username
        conn.execute(sa.text(f"grant usage, create on schema {schema} to {role}"))
    grants = _grant(admin, "connect", [topic])
    try:
        config = render_connector(
            LONG_TERM_SINK.connector, url, topic=topic, table=table, password_file=password_file
        )
        connect.deploy(name, config)
        connect.wait_for(name, lambda s: s.running, 120)
        yield table
    finally:
        remove_connector(connect, admin, name)
        revoke(admin, grants)
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop schema {schema} cascade"))
        engine.dispose()


@contextmanager
def _app(cmd: list[str], log: Path) -> Iterator[None]:
    """A peer app's JVM for the duration; stopped with SIGTERM (it commits and leaves)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def running(settings: Settings, api_url: str, log_dir: Path) -> Iterator[PeerPipeline]:
    """The Kafka Streams pipeline, running end to end (a probe went through) on the live input."""
    registry = Registry(settings.schema_registry_url)
    review_id = registry.register(INPUT_SUBJECT, "review.avsc")
    with ExitStack() as stack:
        fraud: _App = stack.enter_context(_fresh_app(settings, "e2e-fraud", log_dir))
        agg: _App = stack.enter_context(_fresh_app(settings, "e2e-ktable", log_dir))
        valid, flagged = fraud.topic("valid"), fraud.topic("fraud")
        long_term, recent = agg.topic("long-term-stats"), agg.topic("recent-stats")
        _create_topics(settings, [valid, flagged, long_term, recent], PARTITIONS)
        common = {"review_schema": schemas_dir() / "review.avsc", "review_schema_id": review_id}
        stack.enter_context(
            _app(
                fraud.command(
                    settings,
                    "fraud",
                    input=INPUT.name,
                    valid=valid,
                    fraud=flagged,
                    position_header="true",
                    key_by_id="true",
                    offset_reset="latest",
                    **common,
                ),
                fraud.log,
            )
        )
        stack.enter_context(
            _app(
                agg.command(
                    settings,
                    "aggregate-ktable",
                    valid=valid,
                    fraud=flagged,
                    long_term=long_term,
                    recent=recent,
                    stat_schema=schemas_dir() / "course_statistic.avsc",
                    long_term_schema_id=registry.register(
                        f"{long_term}-value", "course_statistic.avsc"
                    ),
                    recent_schema_id=registry.register(f"{recent}-value", "course_statistic.avsc"),
                    **common,
                ),
                agg.log,
            )
        )
        schema = f"bench_ks_{agg.app_id.split('-')[2]}"
        table = stack.enter_context(_sink(settings, long_term, schema))
        wait_until_through(settings, api_url, table)
        hops = {"input": (INPUT.name,), "fraud_filter": (valid, flagged)}
        yield PeerPipeline(table, {**hops, "course_stage": (long_term,)})
