"""Quix Streams peer (issue 9): the fraud filter and the aggregator as Quix apps, exactly-once.

The apps (`bench/peers/quix/app.py`) run in their own venv, `bench/peers/quix/.venv`, because
quixstreams pins a different confluent-kafka than ours; `build()` makes it from the pinned
`requirements.txt`. Each run gets fresh output topics and a fresh consumer group (prefix
`bench-qx-`), is timed by `harness.run_peer`, is checked against our own results on the same
input (fail loudly; the aggregator against the append-only expectation, as it never retracts,
and its mismatches with the exact reference are counted as a figure), and deletes its topics,
Quix's repartition/changelog topics and its group.

    make up && .venv/bin/python -m bench.peers.quix [--records 200000] [--runs 1]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, cast

from confluent_kafka.admin import AdminClient, NewTopic
from fastavro import schemaless_reader

from bench.common import (
    Expected,
    count_mismatches,
    in_child,
    produce_edit_heavy,
    produce_reviews,
)
from bench.peers import harness
from bench.peers.harness import PeerRun
from streaming.core.avro_codec import split_confluent
from streaming.core.fraud import HashFraudModel
from streaming.core.review_bytes import pack
from streaming.serde import Registry, local_schema
from streaming.settings import Settings, schemas_dir
from streaming.topic_reader import read_records

HERE = Path(__file__).resolve().parent / "quix"
APP = HERE / "app.py"
REQUIREMENTS = HERE / "requirements.txt"
VENV = HERE / ".venv"
STAMP = VENV / "requirements.sha256"
"""Hash of the requirements the venv was built from: a change rebuilds it."""
COMMIT_INTERVAL_S = 0.1
"""Our workers' COMMIT_INTERVAL_MS (and Kafka Streams' exactly-once default), not Quix's 5 s:
the runs are timed until the last commit, and at 5 s a run's end moves by up to 5 s per stage
(the same 200k-record fraud run took 5.7 s or 9.7 s), while 0.1 s measured no slower for Quix."""


def build() -> Path:
    """The peer venv's python, (re)built when missing or when requirements.txt changed."""
    python = VENV / "bin" / "python"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return python
    print(f"quix peer: building {VENV} from {REQUIREMENTS.name} ...", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    # our venv is Python 3.11, so its interpreter makes a 3.11 venv
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(REQUIREMENTS)],
        check=True,
    )
    subprocess.run([str(python), "-m", "pip", "check"], check=True)
    STAMP.write_text(want + "\n")
    print("quix peer: venv ready", flush=True)
    return python


_fraud_keys: dict[str, frozenset[bytes]] = {}


def expected_fraud_keys(settings: Settings, topic: str) -> frozenset[bytes]:
    """Keys (review ids) of the input records our own rule calls fraud, once per input topic."""
    if topic not in _fraud_keys:
        model = HashFraudModel()
        keys, bodies = [], []
        for msg in read_records(settings, topic):
            keys.append(msg.key())
            bodies.append(split_confluent(msg.value())[1])  # type: ignore[arg-type]  # no tombstones
        verdicts = model.is_fraud_batch(*pack(bodies))
        _fraud_keys[topic] = frozenset(k for k, f in zip(keys, verdicts, strict=True) if f)  # type: ignore[misc]  # keyed
    return _fraud_keys[topic]


def create_topics(admin: AdminClient, topics: list[str], partitions: int) -> None:
    for fut in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
        fut.result(30)


def cleanup(admin: AdminClient, group: str, topics: list[str]) -> None:
    """Delete the run's topics, Quix's internal ones (named after the group) and the group."""
    internal = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith((f"repartition__{group}--", f"changelog__{group}--"))
    ]
    for fut in admin.delete_topics([*topics, *internal]).values():
        fut.result(30)
    for fut in admin.delete_consumer_groups([group]).values():
        fut.result(30)


def app_cmd(
    python: Path,
    settings: Settings,
    mode: str,
    group: str,
    state: str,
    commit_interval: float,
) -> list[str]:
    return [
        str(python),
        str(APP),
        mode,
        "--bootstrap",
        settings.kafka_bootstrap_servers,
        "--group",
        group,
        "--review-schema",
        str(schemas_dir() / "review.avsc"),
        "--state-dir",
        state,
        "--commit-interval",
        str(commit_interval),
    ]


def fraud(
    settings: Settings,
    input_topic: str,
    partitions: int,
    records: int,
    log_dir: Path,
    commit_interval: float = COMMIT_INTERVAL_S,
) -> PeerRun:
    """Time the Quix fraud filter over `records` input records; check every verdict is ours."""
    python = build()
    admin = AdminClient(settings.kafka_config())
    tag = uuid.uuid4().hex[:8]
    group = f"bench-qx-fraud-{tag}"
    valid, fraud_topic = f"bench-qx-valid-{tag}", f"bench-qx-fraud-{tag}"
    create_topics(admin, [valid, fraud_topic], partitions)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-qx-state-") as state:
            cmd = app_cmd(python, settings, "fraud", group, state, commit_interval)
            run = harness.run_peer(
                [*cmd, "--input", input_topic, "--valid", valid, "--fraud", fraud_topic],
                done=harness.input_committed(settings, group, [input_topic], records),
                records=records,
                log=log_dir / f"quix-fraud-{tag}.log",
            )
        valid_keys = [m.key() for m in read_records(settings, valid)]
        fraud_keys = [m.key() for m in read_records(settings, fraud_topic)]
        if len(valid_keys) + len(fraud_keys) != records:
            raise AssertionError(
                f"quix fraud: {len(valid_keys):,} valid + {len(fraud_keys):,} fraud records, "
                f"expected {records:,} in all"
            )
        want = expected_fraud_keys(settings, input_topic)
        if len(set(fraud_keys)) != len(fraud_keys) or set(fraud_keys) != want:
            raise AssertionError(
                f"quix fraud: {len(fraud_keys):,} fraud records "
                f"({len(set(fraud_keys) ^ want):,} verdicts differ), our rule says {len(want):,}"
            )
        return run
    finally:
        cleanup(admin, group, [valid, fraud_topic])


def aggregate(
    settings: Settings,
    valid_topic: str,
    partitions: int,
    records: int,
    expected: Expected,
    log_dir: Path,
    commit_interval: float = COMMIT_INTERVAL_S,
    reference: dict | None = None,
) -> PeerRun:
    """Time the Quix aggregator (valid topic only, append-only; `records`: the topic's) until
    every course's (count, sum) is `expected`; check its output, count its mismatches with
    `reference` (if given)."""
    python = build()
    admin = AdminClient(settings.kafka_config())
    tag = uuid.uuid4().hex[:8]
    group = f"bench-qx-agg-{tag}"
    output = f"bench-qx-stats-{tag}"
    create_topics(admin, [output], partitions)
    schema_id = Registry(settings.schema_registry_url).register(
        f"{output}-value", "course_statistic.avsc"
    )
    watcher = harness.StatsWatcher(settings, output, expected)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-qx-state-") as state:
            cmd = app_cmd(python, settings, "aggregate", group, state, commit_interval)
            run = harness.run_peer(
                [
                    *cmd,
                    "--input",
                    valid_topic,
                    "--output",
                    output,
                    "--stat-schema",
                    str(schemas_dir() / "course_statistic.avsc"),
                    "--schema-id",
                    str(schema_id),
                ],
                done=watcher,
                records=records,
                log=log_dir / f"quix-aggregate-{tag}.log",
                settle=harness.settled(
                    watcher, harness.input_committed(settings, group, [valid_topic], records)
                ),
            )
        check_statistics(settings, output, records, expected)
        if reference is not None:
            run.mismatches = count_mismatches(settings, output, reference)
        return run
    finally:
        watcher.close()
        cleanup(admin, group, [output])


def check_statistics(settings: Settings, topic: str, records: int, expected: Expected) -> None:
    """One statistic per input record (each counted once), the last of each course complete."""
    schema = local_schema("course_statistic.avsc")
    emitted, latest = 0, dict[int, int]()
    for msg in read_records(settings, topic):
        body = split_confluent(msg.value())[1]  # type: ignore[arg-type]  # no tombstones
        rec = cast("dict[str, Any]", schemaless_reader(io.BytesIO(body), schema, schema))
        emitted += 1
        latest[rec["course_id"]] = rec["count_reviews"]
    counts = {c: pair[0] for c, pair in expected.items()}
    wrong = sorted(c for c in counts.keys() | latest.keys() if latest.get(c) != counts.get(c))
    if emitted != records or wrong:
        raise AssertionError(
            f"quix aggregate: {emitted:,} statistics for {records:,} reviews; "
            f"courses with a wrong final count: {wrong}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=COMMIT_INTERVAL_S,
        help="seconds between Quix commits (Quix's own default is 5)",
    )
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    settings = Settings.from_env()
    build()
    admin = AdminClient(settings.kafka_config())
    tag = uuid.uuid4().hex[:8]
    source, valid, flagged = (f"bench-qx-{n}-{tag}" for n in ("in", "agg-valid", "agg-fraud"))
    create_topics(admin, [source, valid, flagged], args.partitions)
    try:
        print(f"producing {args.records:,} reviews into {source}, the edit-heavy input ...")
        produce_reviews(settings, source, args.records)
        data = in_child(produce_edit_heavy, settings, valid, flagged, args.records)
        fraud_rps, agg_rps = [], []
        for run in range(args.runs):
            f = fraud(
                settings, source, args.partitions, args.records, args.log_dir, args.commit_interval
            )
            a = aggregate(
                settings,
                valid,
                args.partitions,
                data.valid_records,
                data.append_only,
                args.log_dir,
                args.commit_interval,
                data.reference,
            )
            fraud_rps.append(f.rps)
            agg_rps.append(a.rps)
            print(
                f"run {run + 1}: quix fraud {f.rps:,.0f} records/s ({f.seconds:.1f} s), "
                f"quix aggregate {a.rps:,.0f} records/s ({a.seconds:.1f} s, "
                f"mismatches {a.mismatches})",
                flush=True,
            )
    finally:
        for fut in admin.delete_topics([source, valid, flagged]).values():
            fut.result(30)
    print(
        f"median of {args.runs}: quix fraud {statistics.median(fraud_rps):,.0f} records/s, "
        f"quix aggregate {statistics.median(agg_rps):,.0f} records/s "
        f"({args.records:,} records, {args.partitions} partitions; logs in {args.log_dir})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
