"""The Kafka Streams peer (issue 9): the original fraud app and aggregator, and a KTable
aggregator with our semantics, timed by the harness.

`bench/peers/kstreams/` holds the original simplesteph topologies in Java on Kafka Streams 4.4.0
(the broker's version) with the same fraud rule, exactly-once v2 and one stream thread, and
`KTableAggregateApp`: the exact aggregation (current versions, retraction, titles) as a Kafka
Streams engineer would write it in the DSL. This module builds their jar, runs each app on
fresh output topics and a fresh application id, checks what it wrote (the aggregators: their
mismatches with the from-scratch reference), and deletes every topic it made (Streams' internal
ones included), its consumer group, its schema subjects and its state directory.

    .venv/bin/python -m bench.peers.kstreams --records 200000 --runs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
)
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient

from bench.common import (
    EditHeavyInput,
    Expected,
    count_mismatches,
    in_child,
    produce_edit_heavy,
    produce_reviews,
)
from bench.peers.harness import PeerRun, StatsWatcher, input_committed, run_peer, settled
from streaming.core.avro_codec import CONFLUENT_HEADER_SIZE
from streaming.core.fraud import HashFraudModel
from streaming.core.review_bytes import pack
from streaming.serde import Registry
from streaming.settings import KafkaSettings, Settings, load, registry_client_config, schemas_dir
from streaming.topic_reader import read_batches

PROJECT = Path(__file__).resolve().parent / "kstreams"
JAR = PROJECT / "target" / "kstreams-peer.jar"
JVM_OPTIONS = ["-Xmx1g"]
INPUT_SUBJECT = "udemy-reviews-value"
"""The subject `bench.common.produce_reviews` registers review.avsc under and writes with."""


def build() -> Path:
    """The peer's jar, rebuilt with Maven when missing or older than its pom or sources."""
    sources = [PROJECT / "pom.xml", *(p for p in (PROJECT / "src").rglob("*") if p.is_file())]
    if JAR.exists() and JAR.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return JAR
    cmd = ["mvn", "-q", "-f", str(PROJECT / "pom.xml"), "package", "-DskipTests"]
    print(f"building the Kafka Streams peer: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    return JAR


@dataclass(frozen=True)
class _App:
    """One run's names: everything under `bench-ks-<tag>-<app>` so cleanup finds it all."""

    app_id: str
    log_dir: Path

    @property
    def state_dir(self) -> Path:
        return self.log_dir / f"{self.app_id}-state"

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.app_id}.log"

    def topic(self, name: str) -> str:
        return f"{self.app_id}-out-{name}"

    def command(self, settings: Settings, app: str, **options: object) -> list[str]:
        """The java command line; options become `--name value` (underscores -> dashes)."""
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else "java"
        cmd = [java, *JVM_OPTIONS, "-jar", str(build()), app]
        login = load(KafkaSettings).client_properties  # the cluster's login, for Java
        options = {
            "bootstrap": settings.kafka_bootstrap_servers,
            **({"client_properties": login} if login else {}),
            "application_id": self.app_id,
            "state_dir": self.state_dir,
            **options,
        }
        for name, value in options.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        return cmd


@contextmanager
def _fresh_app(settings: Settings, app: str, log_dir: Path) -> Iterator[_App]:
    """A new application id; afterwards its topics, group, subjects and state are deleted."""
    log_dir.mkdir(parents=True, exist_ok=True)
    run = _App(f"bench-ks-{uuid.uuid4().hex[:8]}-{app}", log_dir)
    try:
        yield run
    finally:
        _delete(settings, run.app_id)
        shutil.rmtree(run.state_dir, ignore_errors=True)


def _create_topics(settings: Settings, topics: list[str], partitions: int) -> None:
    """Output topics with infinite retention: the aggregator's records carry review creation
    times (years old) as timestamps, which time-based retention would delete."""
    admin = AdminClient(settings.kafka_config())
    new = [NewTopic(t, partitions, config={"retention.ms": "-1"}) for t in topics]
    for fut in admin.create_topics(new).values():
        fut.result(30)


def _delete(settings: Settings, app_id: str) -> None:
    """Every topic named `<app_id>-...` (ours and Streams' internal ones), the group, the
    subjects. The group and subjects are only warned about: they hold nothing a later run
    reads, and an exception here would hide the one that ended the run."""
    admin = AdminClient(settings.kafka_config())
    prefix = f"{app_id}-"
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if topics:
        for fut in admin.delete_topics(topics).values():
            fut.result(30)
    try:
        admin.delete_consumer_groups([app_id])[app_id].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
            print(f"warning: consumer group {app_id} not deleted: {exc}", file=sys.stderr)
    registry = SchemaRegistryClient(registry_client_config(settings.schema_registry_url))
    for subject in (s for s in registry.get_subjects() if s.startswith(prefix)):
        try:
            registry.delete_subject(subject)
            registry.delete_subject(subject, permanent=True)
        except Exception as exc:  # any registry error: the subject is only a leftover
            print(f"warning: subject {subject} not deleted: {exc}", file=sys.stderr)


def _scan(settings: Settings, topic: str, on_batch: Callable[[list[Message]], None]) -> None:
    """Hand every committed record of `topic`, from the start to its end, to `on_batch`."""
    for batch in read_batches(settings, topic):
        on_batch(batch)


def _check_fraud(
    settings: Settings, input_topic: str, valid: str, fraud: str, partitions: int, records: int
) -> None:
    """Valid + fraud hold the whole input once, and fraud holds exactly the reviews our rule
    (`HashFraudModel`, run over the input's own bytes) calls fraud; RuntimeError otherwise."""
    model = HashFraudModel()
    expected: list[bytes] = []

    def judge(msgs: list[Message]) -> None:
        bodies = [m.value()[CONFLUENT_HEADER_SIZE:] for m in msgs]  # type: ignore[index]  # no tombstones
        verdicts = model.is_fraud_batch(*pack(bodies))
        expected.extend(m.key() for m, bad in zip(msgs, verdicts, strict=True) if bad)  # type: ignore[misc]  # keyed

    _scan(settings, input_topic, judge)
    valid_count = 0

    def count(msgs: list[Message]) -> None:
        nonlocal valid_count
        valid_count += len(msgs)

    _scan(settings, valid, count)
    flagged: list[bytes] = []
    _scan(settings, fraud, lambda msgs: flagged.extend(m.key() for m in msgs))  # type: ignore[misc]  # keyed
    if valid_count + len(flagged) != records:
        raise RuntimeError(
            f"Kafka Streams fraud app wrote {valid_count:,} valid + {len(flagged):,} fraud "
            f"records for {records:,} input records"
        )
    if sorted(flagged) != sorted(expected):
        raise RuntimeError(
            f"Kafka Streams fraud app flagged {len(flagged):,} reviews, our rule "
            f"{len(expected):,} ({len(set(flagged) ^ set(expected)):,} differ)"
        )


def fraud(
    settings: Settings, input_topic: str, partitions: int, records: int, log_dir: Path
) -> PeerRun:
    """Time the fraud app over `records` input records, then check its outputs."""
    with _fresh_app(settings, "fraud", log_dir) as app:
        valid, flagged = app.topic("valid"), app.topic("fraud")
        _create_topics(settings, [valid, flagged], partitions)
        cmd = app.command(
            settings,
            "fraud",
            input=input_topic,
            valid=valid,
            fraud=flagged,
            review_schema=schemas_dir() / "review.avsc",
            review_schema_id=Registry(settings.schema_registry_url).register(
                INPUT_SUBJECT, "review.avsc"
            ),
        )
        done = input_committed(settings, app.app_id, [input_topic], records)
        result = run_peer(cmd, done, records, app.log)
        _check_fraud(settings, input_topic, valid, flagged, partitions, records)
        return result


def _run_aggregator(
    settings: Settings,
    app: _App,
    mode: str,
    inputs: dict[str, str],
    partitions: int,
    records: int,
    expected: Expected,
    reference: dict | None,
) -> PeerRun:
    """Run an aggregator app on `inputs` (option -> topic) until every course reached
    `expected`, let it settle, count its mismatches with `reference` (if given)."""
    long_term, recent = app.topic("long-term-stats"), app.topic("recent-stats")
    _create_topics(settings, [long_term, recent], partitions)
    registry = Registry(settings.schema_registry_url)
    cmd = app.command(
        settings,
        mode,
        **inputs,
        long_term=long_term,
        recent=recent,
        review_schema=schemas_dir() / "review.avsc",
        review_schema_id=registry.register(INPUT_SUBJECT, "review.avsc"),
        stat_schema=schemas_dir() / "course_statistic.avsc",
        long_term_schema_id=registry.register(f"{long_term}-value", "course_statistic.avsc"),
        recent_schema_id=registry.register(f"{recent}-value", "course_statistic.avsc"),
    )
    watcher = StatsWatcher(settings, long_term, expected)
    committed = input_committed(settings, app.app_id, list(inputs.values()), records)
    try:
        run = run_peer(cmd, watcher, records, app.log, settle=settled(watcher, committed))
    finally:
        watcher.close()
    if reference is not None:
        run.mismatches = count_mismatches(settings, long_term, reference)
    return run


def aggregate(
    settings: Settings,
    valid_topic: str,
    partitions: int,
    records: int,
    expected: Expected,
    log_dir: Path,
    reference: dict | None = None,
) -> PeerRun:
    """Time the original aggregator (valid topic only, append-only) until every course's
    all-time (count, sum) reaches `expected`; `records`: the valid topic's."""
    with _fresh_app(settings, "aggregate", log_dir) as app:
        return _run_aggregator(
            settings,
            app,
            "aggregate",
            {"input": valid_topic},
            partitions,
            records,
            expected,
            reference,
        )


def aggregate_ktable(
    settings: Settings,
    valid_topic: str,
    fraud_topic: str,
    partitions: int,
    data: EditHeavyInput,
    log_dir: Path,
) -> PeerRun:
    """Time the KTable aggregator (both topics, our semantics) until every course's all-time
    (count, sum) is the reference's; its mismatches with the reference."""
    with _fresh_app(settings, "ktable", log_dir) as app:
        return _run_aggregator(
            settings,
            app,
            "aggregate-ktable",
            {"valid": valid_topic, "fraud": fraud_topic},
            partitions,
            data.records,
            data.exact,
            data.reference,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-ks", help="peer logs"
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    build()
    tag = uuid.uuid4().hex[:8]
    source, valid, flagged = (f"bench-ks-{tag}-{n}" for n in ("reviews", "valid", "fraud"))
    admin = AdminClient(settings.kafka_config())
    for fut in admin.create_topics(
        [NewTopic(t, args.partitions) for t in (source, valid, flagged)]
    ).values():
        fut.result(30)
    try:
        print(
            f"producing {args.records:,} reviews into {source} and the edit-heavy input ...",
            flush=True,
        )
        produce_reviews(settings, source, args.records)
        data = in_child(produce_edit_heavy, settings, valid, flagged, args.records)
        rates: dict[str, list[float]] = {"fraud": [], "aggregate": [], "ktable": []}
        for run in range(args.runs):
            f = fraud(settings, source, args.partitions, args.records, args.log_dir)
            a = aggregate(
                settings,
                valid,
                args.partitions,
                data.valid_records,
                data.append_only,
                args.log_dir,
                data.reference,
            )
            k = aggregate_ktable(settings, valid, flagged, args.partitions, data, args.log_dir)
            for name, r in (("fraud", f), ("aggregate", a), ("ktable", k)):
                rates[name].append(r.rps)
            print(
                f"run {run + 1}: fraud {f.rps:,.0f} records/s ({f.seconds:.2f} s), "
                f"aggregate {a.rps:,.0f} records/s ({a.seconds:.2f} s, mismatches "
                f"{a.mismatches}), aggregate-ktable {k.rps:,.0f} records/s ({k.seconds:.2f} s, "
                f"mismatches {k.mismatches})",
                flush=True,
            )
    finally:
        for fut in admin.delete_topics([source, valid, flagged]).values():
            fut.result(30)
    print(
        f"Kafka Streams, {args.records:,} records, median of {args.runs}: "
        + ", ".join(f"{k} {statistics.median(v):,.0f} records/s" for k, v in rates.items())
        + f"; logs in {args.log_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
