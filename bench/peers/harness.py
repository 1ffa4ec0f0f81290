"""Run a peer engine (Kafka Streams, Quix Streams) as a process and time it from the outside.

Every peer prints one line `FIRST <epoch_ms>` to stdout when it handles its first input record.
The harness times from that moment until a completion condition holds, observed on the broker:

- fraud: the peer's consumer group has committed the whole input (under exactly-once the
  outputs of those records are committed in the same transactions);
- aggregate: the peer's output topic (read_committed) holds, for every course, a statistic whose
  (`count_reviews`, `sum_rating`) equals the expected pair (the reference's for an engine with
  our semantics, the append-only one for an engine that never retracts).

Observing from outside costs at most one poll interval (50 ms) on runs of several seconds.
After `done` the timing ends, but an aggregate peer runs on until it has *settled* (its output
quiet for QUIET_S and its group committed all its input), so the late title and
last_review_time updates are in its output before it is stopped and its mismatches counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.common import Expected, Mismatches
from streaming.core.avro_codec import load_schema, split_confluent
from streaming.settings import Settings, schemas_dir

POLL_S = 0.05
QUIET_S = 2.0
SETTLE_TIMEOUT_S = 120


@dataclass
class PeerRun:
    seconds: float
    records: int
    mismatches: Mismatches | None = None

    @property
    def rps(self) -> float:
        return self.records / self.seconds


class _Stdout(threading.Thread):
    """Echoes the peer's output to a log file and catches its FIRST line."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.log = proc, log
        self.first_ms: int | None = None

    def run(self) -> None:
        with self.log.open("w") as out:
            for line in self.proc.stdout:  # type: ignore[union-attr]  # started with stdout=PIPE
                out.write(line)
                out.flush()
                if self.first_ms is None and line.startswith("FIRST "):
                    self.first_ms = int(line.split()[1])


def committed_total(admin: AdminClient, group: str, topics: Sequence[str]) -> int:
    """Sum of the group's committed offsets on the given topics (0 before its first commit)."""
    req = ConsumerGroupTopicPartitions(group)
    try:
        res = admin.list_consumer_group_offsets([req])[group].result(10)
    except KafkaException:
        return 0
    return sum(tp.offset for tp in res.topic_partitions if tp.topic in topics and tp.offset > 0)


def input_committed(
    settings: Settings, group: str, topics: Sequence[str], records: int
) -> Callable[[], bool]:
    """Fraud completion: the group committed all `records` input offsets."""
    admin = AdminClient(settings.kafka_config())
    return lambda: committed_total(admin, group, topics) >= records


class StatsWatcher:
    """Aggregate completion: every course's latest (count_reviews, sum_rating) reached its
    expected pair; `quiet` tells how long no statistic has arrived."""

    def __init__(self, settings: Settings, topic: str, expected: Expected) -> None:
        from fastavro import schemaless_reader

        self._read = schemaless_reader
        self._schema = load_schema(schemas_dir() / "course_statistic.avsc")
        self.expected = expected
        self.latest: dict[int, tuple[int, float]] = {}
        self.last_arrival = time.monotonic()
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}",
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        self.consumer.subscribe([topic])

    def __call__(self) -> bool:
        import io

        for msg in self.consumer.consume(10_000, timeout=POLL_S):
            if msg.error() or msg.value() is None:
                continue
            self.last_arrival = time.monotonic()
            _, body = split_confluent(msg.value())  # type: ignore[arg-type]  # not None: checked above
            rec = cast("dict[str, Any]", self._read(io.BytesIO(body), self._schema, self._schema))
            self.latest[rec["course_id"]] = (rec["count_reviews"], rec["sum_rating"])
        return all(_reached(self.latest.get(c), pair) for c, pair in self.expected.items())

    def quiet(self, seconds: float = QUIET_S) -> bool:
        """Whether no statistic arrived in the last `seconds` (reading what is there first)."""
        self()
        return time.monotonic() - self.last_arrival >= seconds

    def close(self) -> None:
        self.consumer.close()


def _reached(got: tuple[int, float] | None, want: tuple[int, float]) -> bool:
    return got is not None and got[0] == want[0] and abs(got[1] - want[1]) < 1e-6


def settled(watcher: StatsWatcher, committed: Callable[[], bool]) -> Callable[[], bool]:
    """An aggregate peer has settled: its output quiet for QUIET_S and its input committed."""
    return lambda: watcher.quiet() and committed()


def run_peer(
    cmd: Sequence[str],
    done: Callable[[], bool],
    records: int,
    log: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
    settle: Callable[[], bool] | None = None,
) -> PeerRun:
    """Start `cmd`, wait for FIRST and then for `done()` (the timing ends there), then for
    `settle()` if given, stop the peer, return the timing."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    reader = _Stdout(proc, log)
    reader.start()
    try:
        _wait(proc, done, log, timeout_s, "finishing")
        end_ms = time.time() * 1000
        if reader.first_ms is None:
            raise RuntimeError(f"peer finished without printing its FIRST line; see {log}")
        if settle is not None:
            _wait(proc, settle, log, SETTLE_TIMEOUT_S, "settling")
        return PeerRun(seconds=(end_ms - reader.first_ms) / 1000, records=records)
    finally:
        stop(proc)


def _wait(
    proc: subprocess.Popen, until: Callable[[], bool], log: Path, timeout_s: float, what: str
) -> None:
    """Poll `until()` while the peer lives, for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not until():
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before {what}; see {log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer still not done {what} after {timeout_s:.0f} s; see {log}")
        time.sleep(POLL_S)  # the observation interval, not a readiness wait


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the peer's process group, SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def end_offsets(settings: Settings, topic: str, partitions: int) -> int:
    """Total records in a topic (high watermarks), for sanity checks on peer input."""
    c = Consumer(settings.kafka_config(**{"group.id": "bench-peek"}))
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        c.close()
