"""The pipeline's shape, declared once: topics, stream workers and their stages, stores, sinks.

Everything that needs a topic name, a consumer group, a health port or the lineage reads it from
here: the workers (their ports, overridable per environment for tests), `reviews bootstrap` (the
topics and their configs), the connectors, the Dagster assets and sensors, the chaos run and the
benchmarks. Pure data, no I/O and no Dagster: `orchestration/topology.py` turns it into asset keys.

Reads as the data flow, as a Kafka Streams topology would:

    udemy-reviews -> fraud filter -> udemy-reviews-valid | udemy-reviews-fraud | dead letters
    valid + fraud (key: review id) -> current versions (store: review versions)
        -> changes, re-keyed by course -> course statistics (store: course stats)
        -> long-term-stats, recent-stats

Instances: a worker runs instances 0..N-1; instance i serves its health on `health_port + i`
(the base port overridable by `<PREFIX>_HEALTH_PORT`), and `<PREFIX>_HEALTH_URL` in `.stack/env`
(services.conf) names instance 0.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from streaming.settings import worker_settings

PARTITIONS = 4
"""Every topic's declared count. The review stage's state partition p reads valid[p] and
fraud[p] and writes changelog[p], so those (keyed by the review id) share one count; the input
may have any count and may grow (a review is its value's id, not its partition)."""

_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
_COMPACTED = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "3600000",
}
_DEAD_LETTERS = _FOREVER
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""Kafka's default max.message.bytes: the input's when its topic does not say otherwise."""
RECORD_HEADROOM_BYTES = 65_536
"""What a stage may add to the largest input record: the position header (29 bytes), a key
(the review id, at most 20), record and batch framing; with a wide margin."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = PARTITIONS
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)
    value_schema: str | None = None
    description: str = ""
    internal: bool = False
    """Written and read by one worker only (repartition and changelog topics)."""
    dead_letter: bool = False
    may_grow: bool = False
    """Partitions may be added in place: nothing downstream depends on where a key lands here.
    Every other topic holds state by partition (a changelog, a store's input, a compacted
    latest-per-key), so `reviews bootstrap` refuses to re-partition it."""
    compatibility: str = "BACKWARD"
    """The registry's compatibility level for `<name>-value`: BACKWARD where we are the only
    writer (readers upgrade first); the input's is FULL_TRANSITIVE (see INPUT)."""


INPUT = TopicSpec(
    "udemy-reviews",
    config=_FOREVER,
    may_grow=True,  # a review is its value's id: the fraud filter re-keys every copy by it
    value_schema="review.avsc",
    # other producers evolve the schema and our reader (review.avsc, the first version) must
    # read every record they write: FORWARD. TRANSITIVE: against every version, not the last
    # alone. FULL: a consumer that reads with a later version reads the whole history too (the
    # topic is the system of record, replayed whole by `reviews rebuild-stream`)
    compatibility="FULL_TRANSITIVE",
    description="Every version of every review, as ingested (key: review id); the system of record",
)
VALID = TopicSpec(
    "udemy-reviews-valid",
    config=_FOREVER,
    value_schema="review.avsc",
    description="Reviews the fraud filter accepts, bytes unchanged, source position in a header",
)
FRAUD = TopicSpec(
    "udemy-reviews-fraud",
    config=_FOREVER,
    value_schema="review.avsc",
    description="Reviews the fraud filter rejects, bytes unchanged, source position in a header",
)
LONG_TERM = TopicSpec(
    "long-term-stats",
    config=_COMPACTED,
    value_schema="course_statistic.avsc",
    description="All-time statistics per course (key: course id); latest value wins",
)
RECENT = TopicSpec(
    "recent-stats",
    config=_COMPACTED,
    value_schema="course_statistic.avsc",
    description="90-day statistics per course (key: course id); latest value wins",
)
DEAD_LETTER = TopicSpec(
    "reviews-dead-letter",
    config=_DEAD_LETTERS,
    dead_letter=True,
    may_grow=True,
    description="Records a stream worker could not process: original key and bytes, error headers",
)
CONNECT_DEAD_LETTER = TopicSpec(
    "connect-dead-letter",
    config=_DEAD_LETTERS,
    dead_letter=True,
    may_grow=True,
    description="Records the PostgreSQL sink could not decode: their bytes, Connect error headers",
)
VERSIONS_CHANGELOG = TopicSpec(
    "stats-aggregator-review-versions-changelog",
    config=_COMPACTED,
    internal=True,
    description="Current version of every review (key: review id), partition p = valid/fraud p",
)
CHANGES = TopicSpec(
    "stats-aggregator-course-changes-repartition",
    # Infinite retention: the aggregator deletes records once consumed and committed.
    config=_FOREVER,
    internal=True,
    description="Retractions and additions of review versions, re-keyed by course id",
)
COURSES_CHANGELOG = TopicSpec(
    "stats-aggregator-course-stats-changelog",
    config=_COMPACTED,
    internal=True,
    description="Counted reviews and the title of every course, partition q = changes partition q",
)

TOPICS: tuple[TopicSpec, ...] = (
    INPUT,
    VALID,
    FRAUD,
    LONG_TERM,
    RECENT,
    DEAD_LETTER,
    VERSIONS_CHANGELOG,
    CHANGES,
    COURSES_CHANGELOG,
    CONNECT_DEAD_LETTER,
)


def max_message_bytes(spec: TopicSpec, input_bytes: int) -> int:
    """A topic's max.message.bytes, sized from the input's (`reviews bootstrap` reads it), so
    whatever a stage makes of the largest record the input accepts can be written: every
    derived topic the input's size plus headroom (a copy of a review, a title, a change); the
    dead letters twice that (the whole input record plus error headers; Connect's carry a stack
    trace), or a record near the input's limit would be lost (Connect) or abort a worker's
    transaction on every retry."""
    if spec.name == INPUT.name:
        return input_bytes
    if spec.dead_letter:
        return 2 * input_bytes + RECORD_HEADROOM_BYTES
    return input_bytes + RECORD_HEADROOM_BYTES


@dataclass(frozen=True)
class Store:
    """State partitioned like its inputs: partition p of every input topic reads and writes
    store partition p, restored from changelog partition p."""

    name: str
    changelog: str


@dataclass(frozen=True)
class WorkerStage:
    """One hop of a worker: the topics (by port name) it reads and writes, and its store."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    store: Store | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """A stream worker: its module, consumer group, ports (name -> topic), stages, instances."""

    name: str
    module: str
    group_id: str
    env_prefix: str
    """Ports are overridable per environment as `<env_prefix>_<PORT>_TOPIC` (tests, benchmarks)."""
    ports: Mapping[str, str]
    stages: tuple[WorkerStage, ...]
    health_port: int
    instances: int = 2
    """How many instances run by default (`<env_prefix>_INSTANCES` overrides): two, so a
    crashed instance's partner keeps serving its own partitions while it restarts."""

    @property
    def instances_env(self) -> str:
        return f"{self.env_prefix}_INSTANCES"

    def instance_count(self, env: Mapping[str, str] | None = None) -> int:
        """How many instances run (`streaming.settings.worker_settings` reads the variables:
        `env`, default the process environment)."""
        return worker_settings(self, env).instances

    def instance_names(self, env: Mapping[str, str] | None = None) -> list[str]:
        """The process names: NAME alone, or NAME-0..NAME-<N-1> when there are several."""
        n = self.instance_count(env)
        return [self.name] if n == 1 else [f"{self.name}-{i}" for i in range(n)]

    @property
    def health_port_env(self) -> str:
        return f"{self.env_prefix}_HEALTH_PORT"

    @property
    def group_env(self) -> str:
        return f"{self.env_prefix}_GROUP_ID"

    def port_env(self, port: str) -> str:
        return f"{self.env_prefix}_{port.upper()}_TOPIC"

    def topics(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Port -> topic, each overridable by its environment variable."""
        return worker_settings(self, env).topics

    def health_url(self, instance: int = 0, env: Mapping[str, str] | None = None) -> str:
        return f"http://127.0.0.1:{self.instance_port(instance, env)}/health"

    def instance_port(self, instance: int = 0, env: Mapping[str, str] | None = None) -> int:
        return worker_settings(self, env).health_port + instance

    @property
    def outputs(self) -> tuple[str, ...]:
        """The results the worker publishes for others (no internal topics, no dead letters)."""
        internal = {t.name for t in TOPICS if t.internal} | {DEAD_LETTER.name}
        named = [self.ports[p] for s in self.stages for p in s.outputs]
        return tuple(t for t in dict.fromkeys(named) if t not in internal)


FRAUD_FILTER = WorkerSpec(
    name="fraud-filter",
    module="streaming.workers.fraud_filter",
    group_id="fraud-filter",
    env_prefix="FRAUD_FILTER",
    ports={
        "input": INPUT.name,
        "valid": VALID.name,
        "fraud": FRAUD.name,
        "dead_letter": DEAD_LETTER.name,
    },
    stages=(WorkerStage("fraud filter", ("input",), ("valid", "fraud", "dead_letter")),),
    health_port=8091,
)

AGGREGATOR = WorkerSpec(
    name="aggregator",
    module="streaming.workers.stats_aggregator",
    group_id="stats-aggregator",
    env_prefix="AGGREGATOR",
    ports={
        "valid": VALID.name,
        "fraud": FRAUD.name,
        "changes": CHANGES.name,
        "long_term": LONG_TERM.name,
        "recent": RECENT.name,
        "versions_changelog": VERSIONS_CHANGELOG.name,
        "courses_changelog": COURSES_CHANGELOG.name,
        "dead_letter": DEAD_LETTER.name,
    },
    stages=(
        WorkerStage(
            "current versions",
            ("valid", "fraud"),
            ("changes", "dead_letter"),
            Store("review-versions", "versions_changelog"),
        ),
        WorkerStage(
            "course statistics",
            ("changes",),
            ("long_term", "recent", "dead_letter"),
            Store("course-stats", "courses_changelog"),
        ),
    ),
    health_port=8101,  # fraud-filter instances take 8091..8100
)

WORKERS: tuple[WorkerSpec, ...] = (FRAUD_FILTER, AGGREGATOR)


@dataclass(frozen=True)
class SinkSpec:
    """A JDBC sink connector (`streaming/sink/connectors/<connector>.json`): topic -> table."""

    connector: str
    topic: str
    table: str

    @property
    def group_id(self) -> str:
        return f"connect-{self.connector}"  # Connect's name for a sink's consumer group


REVIEWS_SINK = SinkSpec("udemy-reviews", INPUT.name, "reviews")
LONG_TERM_SINK = SinkSpec("long-term-stats", LONG_TERM.name, "long_term_stats")
RECENT_SINK = SinkSpec("recent-stats", RECENT.name, "recent_stats")
SINKS: tuple[SinkSpec, ...] = (REVIEWS_SINK, LONG_TERM_SINK, RECENT_SINK)


@dataclass(frozen=True)
class GroupStage:
    """A consumer group reading some topics: one hop a record takes from input to table."""

    name: str
    group_id: str
    topics: tuple[str, ...]


def group_stages() -> tuple[GroupStage, ...]:
    """Every hop, upstream first: a stage's target offsets are read once every stage before it
    caught up (the reconciliation's cut)."""
    out = [
        GroupStage(
            s.name if len(w.stages) == 1 else f"{w.name}: {s.name}",
            w.group_id,
            tuple(w.ports[p] for p in s.inputs),
        )
        for w in WORKERS
        for s in w.stages
    ]
    sinks = [GroupStage(f"{s.table} sink", s.group_id, (s.topic,)) for s in SINKS]
    return (out[0], sinks[0], *out[1:], *sinks[1:])


def lineage() -> dict[str, tuple[str, ...]]:
    """Topic -> the topics it is computed from, as the workers and sinks implement it."""
    up: dict[str, list[str]] = {}
    for w in WORKERS:
        for s in w.stages:
            for out in s.outputs:
                sources = up.setdefault(w.ports[out], [])
                sources += [w.ports[i] for i in s.inputs if w.ports[i] not in sources]
            if s.store:
                sources = up.setdefault(w.ports[s.store.changelog], [])
                sources += [w.ports[i] for i in s.inputs if w.ports[i] not in sources]
    up.setdefault(CONNECT_DEAD_LETTER.name, []).extend(s.topic for s in SINKS)
    return {topic: tuple(sources) for topic, sources in up.items()}


def worker(name: str) -> WorkerSpec:
    for w in WORKERS:
        if w.name == name:
            return w
    raise KeyError(f"no worker {name!r} (declared: {', '.join(w.name for w in WORKERS)})")


USAGE = "usage: python -m streaming.pipeline health-url|health-port|instances WORKER [INSTANCE]"


def main(argv: list[str]) -> int:
    """`python -m streaming.pipeline health-url|health-port|instances WORKER [INSTANCE]`, for
    services.conf (environment overrides applied)."""
    if len(argv) not in (2, 3) or argv[0] not in ("health-url", "health-port", "instances"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        spec = worker(argv[1])
        instance = int(argv[2]) if len(argv) == 3 else 0
        if argv[0] == "health-url":
            print(spec.health_url(instance))
        elif argv[0] == "health-port":
            print(spec.instance_port(instance))
        else:
            print(spec.instance_count())
    except (KeyError, ValueError) as exc:  # an unknown worker, a setting that is no number
        print(f"streaming.pipeline: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
