"""Helpers for integration tests: topics, sample reviews, reading topics to the end, workers."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from fastavro import schemaless_writer

from streaming.core.avro_codec import confluent_frame
from streaming.kafka_acl import create
from streaming.serde import Registry, local_schema
from streaming.settings import Settings
from streaming.topic_reader import read_records

ROOT = Path(__file__).resolve().parents[2]


def make_topics(admin: AdminClient, prefix: str, names: list[str], partitions: int = 4) -> dict:
    """Fresh topics named `<prefix>-<name>-<random>`; returns name -> topic."""
    tag = uuid.uuid4().hex[:8]
    topics = {n: f"{prefix}-{n}-{tag}" for n in names}
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics.values()])
    for fut in futures.values():
        fut.result(30)
    return topics


TOPIC_USE = ("READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")


def grant_topics(
    admin: AdminClient, principal: str, topics: list[str], group: str | None = None
) -> list[AclBinding]:
    """Let `principal` (a service's Kafka user) use a test's own topics, and with `group` that
    consumer group and its transactional ids (`<group>-*`), as a deployment would declare for
    its own (streaming/access.py); `streaming.kafka_acl.revoke` takes them back."""
    wanted = [(ResourceType.TOPIC, t, "LITERAL", TOPIC_USE) for t in topics]
    if group is not None:
        wanted += [
            (ResourceType.GROUP, group, "PREFIXED", ("READ", "DESCRIBE")),
            (ResourceType.TRANSACTIONAL_ID, f"{group}-", "PREFIXED", ("WRITE", "DESCRIBE")),
        ]
    grants = [
        AclBinding(
            kind,
            name,
            ResourcePatternType[pattern],
            f"User:{principal}",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for kind, name, pattern, ops in wanted
        for op in ops
    ]
    create(admin, grants)
    return grants


def delete_topics(admin: AdminClient, topics: list[str]) -> None:
    for fut in admin.delete_topics(topics).values():
        fut.result(30)


def review(i: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "id": i,
        "title": None,
        "content": "" if i % 4 else f"review {i}: très bien 👍",
        "rating": ("5.0", "4.5", "4.0", "3.0", "1.5")[i % 5],
        "created": 1_600_000_000_000 + i * 1000,
        "modified": 1_600_000_000_000 + i * 1000,
        "user": {"title": "A B", "name": "A", "display_name": "A B"},
        "course": {"id": 100 + i % 7, "title": f"Course {i % 7}", "url": f"/course-{i % 7}/"},
    }
    base.update(overrides)
    return base


def encode_review(schema_id: int, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, local_schema("review.avsc"), record)
    return confluent_frame(schema_id, buf.getvalue())


class AvroEncoder:
    """Encode dicts of one schema to Confluent-framed Avro under a fixed schema id."""

    def __init__(self, registry: Registry, subject: str, schema_file: str) -> None:
        self.schema = local_schema(schema_file)
        self.schema_id = registry.register(subject, schema_file)

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, self.schema, record)
        return confluent_frame(self.schema_id, buf.getvalue())


def producer(settings: Settings) -> Producer:
    return Producer(
        settings.kafka_config(
            **{"partitioner": "murmur2_random", "linger.ms": 5, "enable.idempotence": True}
        )
    )


def produce_all(p: Producer, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    for key, value in items:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    c = Consumer(settings.kafka_config(**{"group.id": f"probe-{uuid.uuid4().hex}"}))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def read_all(settings: Settings, topic: str, timeout_s: float = 30) -> list[Message]:
    """Every committed record of a topic, from the beginning to its end."""
    return list(read_records(settings, topic, timeout_s=timeout_s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def worker_process(module: str, env: dict[str, str], log_path: Path) -> Iterator[WorkerProc]:
    proc = WorkerProc(module, env, log_path)
    try:
        yield proc
    finally:
        proc.stop()


class WorkerProc:
    """A stream worker in a child process, with its health endpoint on a free port."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        self.port = free_port()
        env = {**self.env, "HEALTH_PORT": str(self.port)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=env, stdout=log, stderr=log, cwd=ROOT
        )

    def health(self) -> dict[str, Any] | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def wait_healthy(self, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            h = self.health()
            if h is not None:
                return h
            time.sleep(0.2)  # poll interval
        raise TimeoutError(f"{self.module} not healthy in {timeout_s}s\n{self.log_tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
