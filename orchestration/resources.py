"""Dagster resources: the pipeline's services, configured from the operating contract's variables.

Each resource is a thin typed handle over a client the `streaming` package has, so assets and
sensors never build connections themselves and tests swap a resource for a fake. The code
location binds them `pinned`: what they reach (addresses, executables, modules, directories)
is the deployment's, never a run config's.
"""

from __future__ import annotations

import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
import httpx
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from dagster_dbt import DbtCliResource
from dbt.version import __version__ as dbt_core_version
from packaging import version
from pydantic import Field
from sqlalchemy import Engine, create_engine

from orchestration.topology import SINKS, WORKERS
from stack import procs
from streaming.access import worker_login_env
from streaming.config import REPO_ROOT, Settings, read_env_file, registry_client_config
from streaming.ingest.backfill import BackfillResult, backfill_course
from streaming.ingest.producer import ReviewProducer
from streaming.refused import Headers
from streaming.sink.connect import ConnectClient, ConnectError, ConnectorState
from streaming.source.client import RetryPolicy, UdemyClient, client_secret_from_env
from streaming.topic_reader import read_records


def pinned(resource: dg.ConfigurableResource) -> dg.ResourceDefinition:
    """`resource` exactly as the deployment configures it, its EnvVars read in the process
    that uses it, under an empty run-config schema: Dagster refuses a run config that sets any
    of its fields, so whoever can launch a run cannot point it at another URL, executable,
    module or directory (a Python of their own, say, run by the worker runtime)."""

    @dg.resource(config_schema={}, description=type(resource).__doc__)
    def _pinned(_context: dg.InitResourceContext) -> Iterator[Any]:
        with resource.process_config_and_initialize_cm() as ready:
            yield ready

    return _pinned


Offsets = dict[tuple[str, int], int]
"""(topic, partition) -> offset."""

NO_OFFSET = -1
"""What `committed_offsets` reports for a partition the group never committed."""


class KafkaResource(dg.ConfigurableResource):
    """Kafka admin reads the orchestrator needs: end offsets, group offsets, gap probes.

    Extra librdkafka settings (SASL/TLS) come from KAFKA_SECURITY_CONFIG at use time, as for
    every service of the pipeline, so secrets never appear in Dagster's run config.
    """

    bootstrap_servers: str
    timeout_s: float = 30.0

    def settings(self, schema_registry_url: str) -> Settings:
        """The `streaming` settings for code that takes them (the backfill producer)."""
        return Settings(
            kafka_bootstrap_servers=self.bootstrap_servers,
            schema_registry_url=schema_registry_url,
            kafka_extra=Settings.from_env().kafka_extra,
        )

    def config(self, **overrides: object) -> dict[str, object]:
        """librdkafka settings: bootstrap servers, security extras, then overrides."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **Settings.from_env().kafka_extra,
            **overrides,
        }

    def admin(self) -> AdminClient:
        return AdminClient(self.config())

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        metadata = self.admin().list_topics(timeout=self.timeout_s).topics
        out = []
        for topic in topics:
            if topic not in metadata:
                raise LookupError(f"topic {topic!r} does not exist")
            out += [TopicPartition(topic, p) for p in sorted(metadata[topic].partitions)]
        return out

    def end_offsets(self, topics: Iterable[str]) -> Offsets:
        """Last stable offsets: what a read_committed consumer can reach now."""
        admin = self.admin()  # referenced until the futures resolve (its thread serves them)
        request = {tp: OffsetSpec.latest() for tp in self.partitions(topics)}
        futures = admin.list_offsets(
            request,
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self.timeout_s,
        )
        return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}

    def committed_offsets(self, group_id: str, topics: Iterable[str]) -> Offsets:
        """The group's committed offsets (NO_OFFSET where it has none, or no such group)."""
        partitions = self.partitions(topics)
        request = [ConsumerGroupTopicPartitions(group_id, partitions)]
        admin = self.admin()  # referenced until the future resolves (its thread serves it)
        futures = admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)
        result = futures[group_id].result()
        return {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else NO_OFFSET
            for tp in result.topic_partitions
        }

    def newest_timestamp(self, topic: str) -> float | None:
        """Epoch seconds of the newest record of `topic` (its Kafka timestamp), None when it
        has none: each partition read from just before its end (a transaction's marker takes
        the last offset, so two back) to the end."""
        ends = self.end_offsets([topic])
        live = {p: end for (_, p), end in ends.items() if end > 0}
        if not live:
            return None
        consumer = self._probe_consumer()
        newest: float | None = None
        try:
            consumer.assign([TopicPartition(topic, p, max(end - 2, 0)) for p, end in live.items()])
            pending, deadline = set(live), time.monotonic() + self.timeout_s
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                if error is None:
                    stamp = msg.timestamp()[1] / 1000
                    newest = stamp if newest is None else max(newest, stamp)
                if error is not None or msg.offset() >= live[msg.partition()] - 1:
                    pending.discard(msg.partition())
            if pending:
                raise TimeoutError(f"no answer reading the end of {topic} {sorted(pending)}")
            return newest
        finally:
            consumer.close()

    def records(self, topic: str) -> Iterator[tuple[Headers, bytes | None]]:
        """(headers, value) of every committed record of `topic` now (dead letters, to count
        refusals): each partition from its beginning to its end."""
        settings = self.settings(schema_registry_url="")
        for msg in read_records(settings, topic, timeout_s=self.timeout_s * 10):
            yield msg.headers(), msg.value()

    def _probe_consumer(self) -> Consumer:
        """A read_committed consumer of its own group that commits nothing: for reads at
        chosen offsets that must not disturb any group."""
        return Consumer(
            self.config(
                **{
                    "group.id": f"orchestration-probe-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                }
            )
        )

    def has_records(self, topic: str, partition: int, start: int, end: int) -> bool:
        """Whether a read_committed consumer finds a record at an offset in [start, end).

        A group that read everything of a transactional topic may have committed below the end
        offset: transaction markers take offsets but are never delivered (Connect commits the
        last record's offset + 1). Reading the gap tells markers from unread records.
        """
        if start >= end:
            return False
        consumer = self._probe_consumer()
        try:
            consumer.assign([TopicPartition(topic, partition, max(start, 0))])
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                error = msg.error()
                if error is None:
                    return msg.offset() < end
                if error.code() == KafkaError._PARTITION_EOF:
                    return False
                raise KafkaException(error)
            raise TimeoutError(f"no answer reading {topic}[{partition}] from offset {start}")
        finally:
            consumer.close()


class SchemaRegistryResource(dg.ConfigurableResource):
    """The Confluent-compatible schema registry (Apicurio's ccompat API locally)."""

    url: str

    def latest_versions(self, subjects: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Subject -> (version, schema id) of its latest schema; unregistered subjects left out."""
        client = SchemaRegistryClient(registry_client_config(self.url))
        out = {}
        for subject in subjects:
            try:
                latest = client.get_latest_version(subject)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    continue
                raise
            out[subject] = (latest.version, latest.schema_id)
        return out


@cache
def _engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True)


class PostgresResource(dg.ConfigurableResource):
    """The pipeline's PostgreSQL database (stream tables, batch and reconciliation schemas)."""

    database_url: str

    def engine(self) -> Engine:
        """One pooled engine per URL and process (sensors evaluate every few seconds)."""
        return _engine(self.database_url)


class SchemasResource(dg.ConfigurableResource):
    """Which PostgreSQL schemas the batch and the reconciliation read and write.

    `stream_schema` holds the tables the sink connectors write (`reviews`, `long_term_stats`,
    `recent_stats`); the dbt models go to `batch_schema`, the reconciliation's rebuild and its
    `mismatches` to `reconciliation_schema`. Tests and benchmarks point them at scratch schemas.
    """

    stream_schema: str = "public"
    batch_schema: str = "batch"
    reconciliation_schema: str = "reconciliation"


class OfflineDbtCliResource(DbtCliResource):
    """dagster-dbt's dbt CLI resource, minus its `dbt --version` call: that command always asks
    PyPI for the latest release (dbt ignores DBT_VERSION_CHECK there), which hangs or fails
    without internet. The version is the installed dbt-core's (this project runs dbt Core)."""

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(dbt_core_version)


class ReviewSourceResource(dg.ConfigurableResource):
    """The Udemy-compatible review API (the real one or the project's local server)."""

    api_url: str
    client_id: str
    client_secret: str | None = None
    """None: UDEMY_CLIENT_SECRET or UDEMY_CLIENT_SECRET_FILE's content, read when used (a
    secret is not a config value Dagster stores and shows)."""

    def client(self, **options: Any) -> UdemyClient:
        secret = self.client_secret or client_secret_from_env()
        return UdemyClient(self.api_url, self.client_id, secret, **options)

    def course_ids(self) -> list[int]:
        """Every course the source lists; retries are few, a sensor tick must stay short."""
        with self.client(retry=RetryPolicy(attempts=2, rate_limited_attempts=2)) as client:
            return [int(course["id"]) for course in client.iter_courses()]

    def backfill(self, settings: Settings, course_ids: Iterable[int]) -> Iterator[BackfillResult]:
        """Produce every review of each course into the input topic, one course after another
        over one producer; a result once the broker acknowledged all of a course's records."""
        producer = ReviewProducer(settings)
        with self.client() as client:
            for course_id in course_ids:
                yield backfill_course(course_id, source_client=client, producer=producer)


class ConnectResource(dg.ConfigurableResource):
    """Kafka Connect's REST API, through the project's client."""

    url: str
    retry_conflicts_s: float = 10.0
    """How long to retry while Connect rebalances; short, a sensor tick must stay short."""

    def client(self) -> ConnectClient:
        """With CONNECT_USER / CONNECT_PASSWORD_FILE's credentials (`Settings.connect_auth`)."""
        auth = Settings.from_env().connect_auth()
        return ConnectClient(self.url, retry_conflicts_s=self.retry_conflicts_s, auth=auth)

    def statuses(self) -> dict[str, ConnectorState]:
        """The pipeline's sink connectors' states, by name; one not deployed is absent.

        Only the declared sinks: other connectors on a shared Connect cluster (tests, other
        teams) are not ours to judge or restart, and may vanish between a list and a status.
        """
        out: dict[str, ConnectorState] = {}
        with self.client() as client:
            for sink in SINKS:
                try:
                    out[sink.connector] = client.status(sink.connector)
                except ConnectError as exc:
                    if exc.status != 404:
                        raise
        return out

    def restart_failed(self, name: str) -> ConnectorState:
        """Restart the connector if it failed, and its failed tasks."""
        with self.client() as client:
            return client.restart_failed(name)


@dataclass(frozen=True)
class WorkerStatus:
    """What a runtime knows of one worker process (one instance of a worker).

    `process_alive` is None when the runtime knows no process (no pid file, or a remote
    runtime that cannot see processes); `health` is the worker's `GET /health` document
    (answered 200 or 503), None when it did not answer. `record` is its process supervisor's
    record (state, restarts: see stack.procs), None when there is none; `supervised` says
    whether that supervisor runs (None: the runtime cannot tell).
    """

    name: str
    pid: int | None
    process_alive: bool | None
    health: dict[str, Any] | None
    record: dict[str, Any] | None = None
    supervised: bool | None = None


class WorkerRuntimeResource(dg.ConfigurableResource, ABC):
    """Starts, stops, restarts, holds and inspects the stream worker processes by name.

    The supervisor sensors and the restart job only talk to this interface. LocalProcessRuntime
    runs workers as local processes under stack.procs supervisors; a Kubernetes runtime (a
    Deployment per worker, restart = rollout restart, status from the pod and its /health) or a
    systemd one (a unit per worker) would be other implementations with the same methods.
    """

    @abstractmethod
    def start(self, name: str) -> WorkerStatus:
        """Start the worker unless it runs; return once it answers its health endpoint."""

    @abstractmethod
    def stop(self, name: str) -> None:
        """Stop the worker gracefully (it commits its open transaction), forcibly if it hangs."""

    @abstractmethod
    def status(self, name: str) -> WorkerStatus: ...

    @abstractmethod
    def hold(self, name: str, reason: str) -> None:
        """Stop restarting the worker once it exits (a crash loop); `reason` is recorded."""

    def restart(self, name: str) -> WorkerStatus:
        self.stop(name)
        return self.start(name)


def _fetch_health(url: str) -> dict[str, Any] | None:
    """A worker's health document, whether it answered 200 (ok) or 503 (stalled)."""
    try:
        body = httpx.get(url, timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def instance_modules() -> dict[str, str]:
    """Process name -> module, for every instance of every worker (as stack.sh names them)."""
    return {name: w.module for w in WORKERS for name in w.instance_names()}


def instance_health_urls() -> dict[str, str]:
    """Process name -> health URL (instance i on the base port + i, env overrides honoured)."""
    return {name: w.health_url(i) for w in WORKERS for i, name in enumerate(w.instance_names())}


def instance_numbers() -> dict[str, str]:
    """Process name -> WORKER_INSTANCE, for workers that run several instances."""
    return {
        name: str(i)
        for w in WORKERS
        if w.instance_count() > 1
        for i, name in enumerate(w.instance_names())
    }


class LocalProcessRuntime(WorkerRuntimeResource):
    """Worker processes under stack.procs supervisors, as stack/stack.sh runs them.

    A process is `<python> -m <module>` under its supervisor, detached from the Dagster run that
    started it; the supervisor restarts it when it exits (with a back-off) and records each
    restart. Pid files, records and logs are under `<state_dir>` (run/, logs/), so `make status`
    and `make down` see the same processes whoever started them. The environment is this
    process's plus `<state_dir>/env` (as stack.sh gives it), the worker's own Kafka login
    (`streaming.access.login_env`), WORKER_INSTANCE for an instance of a worker that runs
    several, and HEALTH_PORT is the port of its health URL.
    """

    root: str = str(REPO_ROOT)
    python: str = ".venv/bin/python"
    state_dir: str = ".stack"
    modules: dict[str, str] = Field(default_factory=instance_modules)
    health_urls: dict[str, str] = Field(default_factory=instance_health_urls)
    instances: dict[str, str] = Field(default_factory=instance_numbers)
    """Process name -> its WORKER_INSTANCE; a process not listed gets none."""
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0

    @property
    def _state(self) -> Path:
        return Path(self.root, self.state_dir)

    def _known(self, name: str) -> None:
        if name not in self.modules or name not in self.health_urls:
            raise KeyError(f"unknown worker {name!r} (known: {sorted(self.modules)})")

    def status(self, name: str) -> WorkerStatus:
        self._known(name)
        pid = procs.read_pid(self._state, name)
        return WorkerStatus(
            name,
            pid,
            None if pid is None else procs.alive(pid),
            _fetch_health(self.health_urls[name]),
            procs.read_record(self._state, name) or None,
            procs.alive(procs.read_pid(self._state, name, supervisor=True)),
        )

    def start(self, name: str) -> WorkerStatus:
        self._known(name)
        supervised = procs.alive(procs.read_pid(self._state, name, supervisor=True))
        before = None if supervised else self._incarnation(name)  # a start of no supervisor's
        port = urlparse(self.health_urls[name]).port
        env = {**os.environ, **read_env_file(self._state / "env"), "HEALTH_PORT": str(port)}
        env.update(worker_login_env(self.modules[name], env))  # its own Kafka principal
        if name in self.instances:
            env["WORKER_INSTANCE"] = self.instances[name]
        procs.start(
            self._state,
            name,
            [str(Path(self.root, self.python)), "-m", self.modules[name]],
            env=env,
            cwd=self.root,
            stop_timeout_s=self.stop_timeout_s,
        )
        return self._wait_healthy(name, stale=before)

    def restart(self, name: str) -> WorkerStatus:
        """A requested restart through the supervisor; a start when no supervisor runs."""
        self._known(name)
        before, incarnation = procs.read_pid(self._state, name), self._incarnation(name)
        if not procs.restart(self._state, name):
            return self.start(name)
        return self._wait_healthy(name, replacing=before, stale=incarnation)

    def _incarnation(self, name: str) -> str | None:
        """Which start of the worker answers its health port now (None: none answers)."""
        return (_fetch_health(self.health_urls[name]) or {}).get("incarnation")

    def _wait_healthy(
        self, name: str, replacing: int | None = None, stale: str | None = None
    ) -> WorkerStatus:
        """Poll until the process in the pid file (not `replacing`) is alive and a start of the
        worker other than `stale` (the one answering before) answers its health ok: the new
        process, as only one can hold the port (/health shows no pid)."""
        deadline = time.monotonic() + self.ready_timeout_s
        log = self._state / "logs" / f"{name}.log"
        while True:
            status = self.status(name)
            health = status.health or {}
            if (
                status.process_alive
                and status.pid != replacing
                and health.get("incarnation") not in (None, stale)
                and health.get("status") == "ok"
            ):
                return status
            record = status.record or {}
            if record.get("state") == "held":
                raise RuntimeError(
                    f"{name}'s restarts are held ({record.get('held_reason', 'held')}): "
                    f"`python3 -m stack.procs release {name}` first (log: {log})"
                )
            if not status.supervised:
                raise RuntimeError(f"{name}'s supervisor is not running (log: {log})")
            if time.monotonic() >= deadline:
                crashes = [r.get("exit") for r in record.get("restarts", [])[-3:]]
                raise TimeoutError(
                    f"{name} not healthy after {self.ready_timeout_s:.0f}s "
                    f"(state {record.get('state')}, last exits {crashes}; log: {log})"
                )
            time.sleep(0.2)  # interval between readiness polls

    def stop(self, name: str) -> None:
        self._known(name)
        procs.stop(self._state, name, self.stop_timeout_s)

    def hold(self, name: str, reason: str) -> None:
        self._known(name)
        procs.hold(self._state, name, reason)
