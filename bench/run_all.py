"""`make bench`: every benchmark on the real stack, side by side with the peers, in one run.

Writes `bench/results/latest.json` (every figure, the goals, the machine and the versions) and
`bench/results/report.md`. Throughputs are medians over `--runs`; within a run the engines take
turns on the same input topic (ours, Kafka Streams, Quix Streams), so machine noise hits all
of them alike and the ratios are the figures to trust. The aggregate step runs on the
edit-heavy input (`bench.common.edit_heavy_records`) and counts every engine's mismatches with
the from-scratch reference.

    make bench                      (stack up, tools installed, then this)
    .venv/bin/python bench/run_all.py [--records 1000000] [--runs 3] [--only fraud,aggregate]

Steps: produce_limit (Kafka's own ProducerPerformance), fraud, aggregate, aggregate_keyless
(ours on the input a keyless producer leaves), e2e (ours, then the Kafka Streams pipeline, same
load), e2e_sustained (5 min on a preloaded stack), backfill, reconcile, recovery, restore.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import aggregate_throughput, e2e_latency, fraud_throughput
from bench.common import EDIT_SEED, RESULTS, in_child, produce_edit_heavy, produce_reviews
from bench.peers import kstreams, kstreams_e2e, quix
from bench.peers.harness import PeerRun
from streaming import kafka_acl
from streaming.pipeline import LONG_TERM_SINK
from streaming.settings import KafkaSettings, Settings, load

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
STACK = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
LOGS = STACK / "logs" / "bench"
QUIX_RUNS = 1
"""Quix Streams runs once per step, not --runs times: its 1M aggregation alone takes ~3.5 min."""

# figure -> (comparison, bound): the goals of the benchmark issue, on our 2-core machine
GOALS: dict[str, tuple[str, float]] = {
    "fraud_eos_rps": (">=", 100_000),
    "fraud_vs_passthrough": (">=", 0.95),
    "fraud_vs_kstreams": (">=", 1.1),
    "aggregate_eos_rps": (">=", 50_000),
    "aggregate_vs_kstreams_ktable": (">=", 1.5),
    "aggregate_vs_kstreams": (">=", 1.2),
    "aggregate_vs_quix": (">=", 5),
    "aggregator_state_bytes_per_review": ("<=", 100),
    "aggregator_rss_mb_per_1m_reviews": ("<=", 150),
    "aggregate_mismatches": ("<=", 0),
    "aggregate_keyless_mismatches": ("<=", 0),
    "aggregate_keyless_vs_keyed": (">=", 0.9),
    "e2e_p50_ms_at_1k": ("<", 80),
    "e2e_p99_ms_at_1k": ("<", 300),
    "e2e_p99_ms_at_100": ("<", 250),
    "e2e_vs_kstreams_p99": ("<=", 0.5),
    "e2e_sustained_p99_ms_at_1k": ("<", 500),
    "e2e_sustained_last_vs_first_p99": ("<=", 1.0),
    "backfill_1m_s": ("<", 60),
    "recovery_s": ("<", 5),
    "recovery_max_s": ("<", 10),
    "reconcile_1m_s": ("<", 30),
}


ACHIEVED_SHARE = 0.95
"""A load rate counts only when the generator achieved this share of it."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def create(admin: AdminClient, *topics: str) -> None:
    for fut in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        fut.result(30)


def delete(admin: AdminClient, *topics: str) -> None:
    for fut in admin.delete_topics(list(topics)).values():
        fut.result(30)


def produce_limit(settings: Settings, runs: int, records: int) -> dict:
    """Kafka's ProducerPerformance (acks=all, 250-byte records): the broker's ceiling here."""
    java = Path(os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64"), "bin", "java")
    admin = AdminClient(settings.kafka_config())
    props = load(KafkaSettings).client_properties  # the cluster's login, for Java
    login = ["--command-config", props] if props else []
    rates = []
    for run in range(runs):
        topic = f"bench-perf-{uuid.uuid4().hex[:8]}"
        create(admin, topic)
        try:
            out = subprocess.run(
                [
                    *(str(java), "-Xmx512m", "-cp", str(ROOT / ".stack/dist/libs/*")),
                    f"-Dlog4j2.configurationFile={ROOT / 'stack/conf/log4j2.properties'}",
                    "org.apache.kafka.tools.ProducerPerformance",
                    *("--topic", topic, "--num-records", str(records), "--record-size", "250"),
                    *("--throughput", "-1", "--producer-props"),
                    f"bootstrap.servers={settings.kafka_bootstrap_servers}",
                    *("acks=all", "linger.ms=5", "batch.size=1000000", "compression.type=none"),
                    *login,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            delete(admin, topic)
        found = re.findall(r"records sent, ([\d.]+) records/sec", out)
        if not found:
            raise RuntimeError(f"ProducerPerformance printed no summary:\n{out[-2000:]}")
        rates.append(float(found[-1]))
        log(f"produce limit run {run + 1}: {rates[-1]:,.0f} records/s")
    return {"broker_produce_limit_rps": round(median(rates))}


ANONYMOUS_BENCH = [
    (ResourceType.TOPIC, ("READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
    (ResourceType.GROUP, ("READ", "DESCRIBE")),
    (ResourceType.TRANSACTIONAL_ID, ("WRITE", "DESCRIBE")),
]
"""What an unauthenticated client of the PLAINTEXT listener may do while the SASL cost is
measured: the benchmarks' own topics, groups and transactional ids (`bench-*`), nothing else."""


def anonymous_bench_acls() -> list[AclBinding]:
    return [
        AclBinding(
            kind,
            "bench-",
            ResourcePatternType.PREFIXED,
            "User:ANONYMOUS",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for kind, ops in ANONYMOUS_BENCH
        for op in ops
    ]


def plaintext(settings: Settings) -> Settings | None:
    """The settings of the PLAINTEXT listener (KAFKA_PLAINTEXT_BOOTSTRAP_SERVERS, which
    `make up` with KAFKA_PLAINTEXT_PORT sets): no login. None when there is none."""
    address = os.environ.get("KAFKA_PLAINTEXT_BOOTSTRAP_SERVERS")
    if not address:
        return None
    return settings.replace(kafka_bootstrap_servers=address, kafka_extra={})


def fraud(settings: Settings, runs: int, records: int) -> dict:
    """Pass-through, our filter, Kafka Streams and Quix on one input topic, taking turns."""
    admin = AdminClient(settings.kafka_config())
    source = f"bench-fraud-in-{uuid.uuid4().hex[:8]}"
    create(admin, source)
    rates: dict[str, list[float]] = {"passthrough": [], "ours": [], "kstreams": [], "quix": []}
    grants = anonymous_bench_acls() if plaintext(settings) else []
    kafka_acl.create(admin, grants)
    try:
        log(f"producing {records:,} reviews into {source}")
        produce_reviews(settings, source, records)
        engines: dict[str, Callable[[], float]] = {
            "passthrough": lambda: fraud_throughput.run_once(
                fraud_throughput.TimedPassThrough, settings, admin, source, records, PARTITIONS
            ),
            "ours": lambda: fraud_throughput.run_once(
                fraud_throughput.TimedFilter, settings, admin, source, records, PARTITIONS
            ),
            "kstreams": lambda: kstreams.fraud(settings, source, PARTITIONS, records, LOGS).rps,
            "quix": lambda: quix.fraud(settings, source, PARTITIONS, records, LOGS).rps,
        }
        plain = plaintext(settings)
        if plain is not None:  # the same filter, no SASL login: what authentication costs
            rates["ours_plaintext"] = []
            engines["ours_plaintext"] = lambda: fraud_throughput.run_once(
                fraud_throughput.TimedFilter, plain, admin, source, records, PARTITIONS
            )
        for run in range(runs):
            for name, engine in engines.items():
                if name != "quix" or run < QUIX_RUNS:
                    rates[name].append(engine())
            log(
                f"fraud run {run + 1}: "
                + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items())
            )
    finally:
        delete(admin, source)
        kafka_acl.revoke(admin, grants)
    m = {k: median(v) for k, v in rates.items()}
    sasl_cost = {}
    if "ours_plaintext" in m:
        sasl_cost = {
            "fraud_plaintext_eos_rps": round(m["ours_plaintext"]),
            "fraud_sasl_vs_plaintext": round(m["ours"] / m["ours_plaintext"], 3),
        }
    return {
        **sasl_cost,
        "passthrough_eos_rps": round(m["passthrough"]),
        "fraud_eos_rps": round(m["ours"]),
        "fraud_vs_passthrough": round(m["ours"] / m["passthrough"], 3),
        "kstreams_fraud_rps": round(m["kstreams"]),
        "fraud_vs_kstreams": round(m["ours"] / m["kstreams"], 2),
        "quix_fraud_rps": round(m["quix"]),
        "fraud_vs_quix": round(m["ours"] / m["quix"], 2),
    }


def aggregate(settings: Settings, runs: int, records: int) -> dict:
    """Ours, the original Kafka Streams topology, the KTable one and Quix on the edit-heavy
    input, taking turns. Ours and the KTable peer read both topics and must match the reference;
    the original and Quix read the valid topic and never retract: their mismatches are a
    figure. Each engine's rate counts the input records it consumed."""
    admin = AdminClient(settings.kafka_config())
    tag = uuid.uuid4().hex[:8]
    valid, flagged = f"bench-agg-valid-{tag}", f"bench-agg-fraud-{tag}"
    create(admin, valid, flagged)
    rates: dict[str, list[float]] = {"ours": [], "kstreams": [], "ktable": [], "quix": []}
    wrong: dict[str, list[int]] = {k: [] for k in rates}
    ours: list[aggregate_throughput.OurRun] = []
    try:
        log(f"producing {records:,} edit-heavy records into {valid}, {flagged}")
        data = in_child(produce_edit_heavy, settings, valid, flagged, records)
        log(
            f"input: {data.valid_records:,} valid + {data.fraud_records:,} fraud records, "
            f"{data.edit_fraction:.1%} edits"
        )
        engines: dict[str, Callable[[], PeerRun]] = {
            "kstreams": lambda: kstreams.aggregate(
                settings,
                valid,
                PARTITIONS,
                data.valid_records,
                data.append_only,
                LOGS,
                data.reference,
            ),
            "ktable": lambda: kstreams.aggregate_ktable(
                settings, valid, flagged, PARTITIONS, data, LOGS
            ),
            "quix": lambda: quix.aggregate(
                settings,
                valid,
                PARTITIONS,
                data.valid_records,
                data.append_only,
                LOGS,
                reference=data.reference,
            ),
        }
        for run in range(runs):
            ours.append(
                aggregate_throughput.run_once(settings, admin, valid, flagged, data, PARTITIONS)
            )
            log(f"aggregate run {run + 1}: ours {aggregate_throughput.describe(ours[-1])}")
            rates["ours"].append(ours[-1].rps)
            wrong["ours"].append(ours[-1].mismatches.wrong)
            for name, engine in engines.items():
                if name != "quix" or run < QUIX_RUNS:
                    r = engine()
                    rates[name].append(r.rps)
                    wrong[name].append(r.mismatches.wrong if r.mismatches else -1)
                    log(
                        f"aggregate run {run + 1}: {name} {r.rps:,.0f}/s, mismatches {r.mismatches}"
                    )
    finally:
        delete(admin, valid, flagged)
    return _aggregate_figures(rates, wrong, ours, data.edit_fraction)


def _aggregate_figures(
    rates: dict[str, list[float]],
    mismatches: dict[str, list[int]],
    ours: list[aggregate_throughput.OurRun],
    edits: float,
) -> dict:
    """The step's figures: medians of the rates (ratios of the medians), the worst run's
    mismatches, our memory and state size."""
    m = {k: median(v) for k, v in rates.items()}
    wrong = {k: max(v) for k, v in mismatches.items()}
    figures = {
        "aggregate_eos_rps": round(m["ours"]),
        "kstreams_aggregate_rps": round(m["kstreams"]),
        "kstreams_ktable_aggregate_rps": round(m["ktable"]),
        "quix_aggregate_rps": round(m["quix"]),
        "aggregate_vs_kstreams": round(m["ours"] / m["kstreams"], 2),
        "aggregate_vs_kstreams_ktable": round(m["ours"] / m["ktable"], 2),
        "aggregate_vs_quix": round(m["ours"] / m["quix"], 2),
        "aggregate_mismatches": wrong["ours"],
        "kstreams_aggregate_mismatches": wrong["kstreams"],
        "kstreams_ktable_mismatches": wrong["ktable"],
        "quix_aggregate_mismatches": wrong["quix"],
        "aggregator_rss_mb_per_1m_reviews": round(
            median([aggregate_throughput.rss_per_1m(r) for r in ours])
        ),
        # the first run's: the later ones reuse the kernels the first loaded
        "aggregator_rss_fixed_mb": round(max(r.rss_fixed_mb for r in ours)),
        "aggregate_edit_fraction": edits,
    }
    sizes = [r.state_bytes_per_review for r in ours if r.state_bytes_per_review is not None]
    if sizes:  # absent while the state classes have no nbytes()
        figures["aggregator_state_bytes_per_review"] = round(median(sizes))
    return figures


E2E_RATES = ((100, "100"), (1000, "1k"))
"""The e2e step's steady rates (reviews/s) and their figures' suffixes."""


def e2e(settings: Settings, runs: int, records: int) -> dict:
    """POST answered -> PostgreSQL row, 20 s at each of E2E_RATES: ours, then the Kafka Streams
    pipeline (`bench/peers/kstreams_e2e.py`) on the same load while ours is stopped; medians of
    the runs, with the time to each hop (`e2e_<hop>_p50_ms_at_<rate>`). A rate the load
    generator did not achieve (95 %) is not measured: its latencies would be a lighter load's."""
    api = os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    kstreams.build()
    warm_up(settings, api, "ours")
    ours = {
        rate: [e2e_latency.measure(settings, api, rate, 20, 64) for _ in range(runs)]
        for rate, _ in E2E_RATES
    }
    with kstreams_e2e.ours_paused(STACK), kstreams_e2e.running(settings, api, LOGS) as peer:
        warm_up(settings, api, "kstreams", peer.table, peer.hops)
        theirs = {
            rate: [
                e2e_latency.measure(settings, api, rate, 20, 64, peer.table, peer.hops)
                for _ in range(runs)
            ]
            for rate, _ in E2E_RATES
        }
    kstreams_e2e.wait_until_through(settings, api, LONG_TERM_SINK.table)  # ours back
    out: dict[str, float] = {}
    for rate, suffix in E2E_RATES:
        out.update(_e2e_figures("e2e", ours[rate], rate, suffix))
        out.update(_e2e_figures("kstreams_e2e", theirs[rate], rate, suffix))
    if {"e2e_p99_ms_at_1k", "kstreams_e2e_p99_ms_at_1k"} <= out.keys():
        out["e2e_vs_kstreams_p99"] = round(
            out["e2e_p99_ms_at_1k"] / out["kstreams_e2e_p99_ms_at_1k"], 2
        )
    return out


SUSTAINED_S = 300
PRELOAD_REVIEWS, PRELOAD_COURSES = 1_000_000, 200_000


def e2e_sustained(settings: Settings, runs: int, records: int) -> dict:
    """1,000 reviews/s for SUSTAINED_S on a stack that already holds 1M reviews over 200k
    courses (preloaded once): the p99 over the whole step, and of its first and last minute."""
    api = os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    took = e2e_latency.preload(settings, PRELOAD_REVIEWS, PRELOAD_COURSES)
    log(f"preload: {PRELOAD_REVIEWS:,} reviews over {PRELOAD_COURSES:,} courses ({took:.0f} s)")
    res = [e2e_latency.measure(settings, api, 1000, SUSTAINED_S, 64) for _ in range(runs)]
    out = _e2e_figures("e2e_sustained", res, 1000, "1k")
    if "e2e_sustained_p99_ms_at_1k" in out:
        first = median([r["p99_ms_by_minute"][0] for r in res])
        last = median([r["p99_ms_by_minute"][-1] for r in res])
        out["e2e_sustained_first_minute_p99_ms"] = round(first)
        out["e2e_sustained_last_minute_p99_ms"] = round(last)
        out["e2e_sustained_last_vs_first_p99"] = round(last / first, 2)
    return out


WARM_UP_S = 30


def warm_up(settings: Settings, api: str, name: str, *where: Any) -> None:
    """WARM_UP_S at 100/s, not counted: a pipeline just started (JIT, caches, connections, a
    restore's tail, the stack's own start-up work) answers in seconds, not in what it does."""
    res = e2e_latency.measure(settings, api, 100, WARM_UP_S, 64, *where)
    log(f"{name} warm-up, not counted: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms")


def _e2e_figures(name: str, res: list[dict], rate: int, suffix: str) -> dict[str, float]:
    """One engine's figures at one rate: medians of its runs, or only the rate it achieved
    when that is under ACHIEVED_SHARE of the offered one."""
    for r in res:
        log(f"{name} {rate}/s: {json.dumps(r)}")
    achieved = round(median([r["achieved_rps"] for r in res]))
    out: dict[str, float] = {f"{name}_achieved_rps_at_{suffix}": achieved}
    if achieved < ACHIEVED_SHARE * rate:
        log(f"{name} {rate}/s: not measured (the load achieved {achieved}/s)")
        return out
    for p in ("p50_ms", "p99_ms"):
        out[f"{name}_{p}_at_{suffix}"] = round(median([r[p] for r in res]))
    for hop in res[0]["breakdown"]:
        for p in ("p50_ms", "p99_ms"):
            values = [r["breakdown"][hop][p] for r in res if r["breakdown"][hop][p] is not None]
            if values:
                out[f"{name}_{hop}_{p}_at_{suffix}"] = round(median(values))
    return out


def script(name: str, result: str, keep: dict[str, str]) -> Callable[[Settings, int, int], dict]:
    """A benchmark run as its own script (`--reviews N --runs R`) that saves
    results/<result>.json; `keep` maps the figures taken from it to their names in the report."""

    def run(settings: Settings, runs: int, records: int) -> dict:
        path = ROOT / "bench" / f"{name}.py"
        cmd = [sys.executable, str(path), "--reviews", str(records), "--runs", str(runs)]
        subprocess.run(cmd, check=True)
        figures = json.loads((RESULTS / f"{result}.json").read_text())["figures"]
        return {out: figures[key] for key, out in keep.items()}

    return run


def recovery(settings: Settings, runs: int, records: int) -> dict:
    """bench/recovery.py on the running stack: at least 10 SIGKILLs of aggregator instance 0
    with its partner running and 1k reviews/s flowing, then a rebalance."""
    cmd = [sys.executable, "-m", "bench.recovery", "--kills", str(max(10, runs))]
    subprocess.run(cmd, check=True, cwd=ROOT)
    figures = json.loads((RESULTS / "recovery.json").read_text())["figures"]
    keep = ("recovery_s", "recovery_max_s", "recovery_correct_stat_s", "rebalance_s")
    return {key: figures[key] for key in keep}


def aggregate_keyless(settings: Settings, runs: int, records: int) -> dict:
    """Ours on the edit-heavy input as a keyless producer leaves it: each record on a random
    partition of the system of record, so a review's versions sit apart and ties go to the
    greater partition; the fraud filter keys the copies by the review id as it makes them (no
    extra hop), so what this measures is the aggregator on versions that met from several
    partitions. Must match the reference on every course."""
    admin = AdminClient(settings.kafka_config())
    tag = uuid.uuid4().hex[:8]
    valid, flagged = f"bench-aggk-valid-{tag}", f"bench-aggk-fraud-{tag}"
    create(admin, valid, flagged)
    try:
        log(f"producing {records:,} keyless edit-heavy records into {valid}, {flagged}")
        data = in_child(produce_edit_heavy, settings, valid, flagged, records, EDIT_SEED, True)
        ours = []
        for run in range(runs):
            ours.append(
                aggregate_throughput.run_once(settings, admin, valid, flagged, data, PARTITIONS)
            )
            log(f"aggregate keyless run {run + 1}: {aggregate_throughput.describe(ours[-1])}")
    finally:
        delete(admin, valid, flagged)
    return {
        "aggregate_keyless_eos_rps": round(median([r.rps for r in ours])),
        "aggregate_keyless_mismatches": max(r.mismatches.wrong for r in ours),
    }


STEPS: dict[str, Callable[[Settings, int, int], dict]] = {
    "produce_limit": lambda s, runs, records: produce_limit(s, runs, records * 3),
    "fraud": fraud,
    "aggregate": aggregate,
    "aggregate_keyless": aggregate_keyless,
    "e2e": e2e,
    "e2e_sustained": e2e_sustained,
    "backfill": script(
        "backfill_throughput",
        "backfill",
        {"backfill_1m_s": "backfill_1m_s", "source_walk_1m_s": "backfill_source_walk_1m_s"},
    ),
    "reconcile": script(
        "reconcile_throughput",
        "reconcile",
        {"reconcile_1m_s": "reconcile_1m_s", "mismatches": "reconcile_mismatches"},
    ),
    "recovery": recovery,
    "restore": script(
        "restore",
        "restore",
        {"restore_cold_1m_s": "restore_cold_1m_s", "restore_warm_1m_s": "restore_warm_1m_s"},
    ),
}


def pinned(path: Path, pattern: str) -> str:
    """A peer's version as its build file pins it."""
    found = re.search(pattern, path.read_text(), re.MULTILINE)
    return found.group(1) if found else "unknown"


COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
}


def verdict(key: str, value: float) -> str:
    op, bound = GOALS[key]
    return f"{op} {bound:,}: {'met' if COMPARE[op](value, bound) else 'MISSED'}"


def peer_settings() -> list[str]:
    """How the peers ran, for the report."""
    return [
        "Peers: Kafka Streams (the original topology `aggregate`, and `aggregate-ktable`, our "
        "semantics as a KTable aggregation) with exactly-once v2, "
        "1 stream thread, commit interval 100 ms, transactional state stores (KIP-892, "
        "`enable.transactional.statestores=true`), the record cache and RocksDB as shipped, "
        f"JVM {' '.join(kstreams.JVM_OPTIONS)}; Quix Streams exactly-once, commit interval "
        f"{quix.COMMIT_INTERVAL_S * 1000:.0f} ms. The original topology and Quix read the valid "
        "topic and never retract (edits are counted again, flips and moves not undone): their "
        "mismatches are a figure, not a failure. Ours and `aggregate-ktable` must match the "
        "from-scratch reference on every course.",
    ]


def report(doc: dict) -> str:
    figures = doc["figures"]
    lines = [
        "# Benchmark report",
        "",
        f"Measured {doc['measured_at']} on {doc['machine']['cores']} cores "
        f"({doc['machine']['platform']}), everything (Kafka, Connect, registry, PostgreSQL, "
        "Dagster, the workers) on the same machine. Medians of "
        f"{doc['runs']} runs of {doc['records']:,} records; reproduce with `{doc['command']}`.",
        "",
        "| figure | value | goal |",
        "|---|---:|---|",
        *(
            f"| `{k}` | {v:,} | {verdict(k, v) if k in GOALS else ''} |"
            for k, v in figures.items()
            if isinstance(v, int | float)
        ),
        "",
        *peer_settings(),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".",
    ]
    if doc["failed"]:
        lines += ["", "Steps that failed: " + "; ".join(doc["failed"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated steps")
    args = parser.parse_args()
    steps = args.only.split(",")
    unknown = set(steps) - STEPS.keys()
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; known: {', '.join(STEPS)}")
    settings = Settings.from_env()
    LOGS.mkdir(parents=True, exist_ok=True)
    if {"fraud", "aggregate"} & set(steps):
        log("building the peers (Kafka Streams jar, Quix venv) if needed")
        kstreams.build()
        quix.build()
    figures: dict[str, float] = {}
    failed: list[str] = []
    t0 = time.monotonic()
    for step in steps:
        log(f"step {step}")
        started = time.monotonic()
        try:
            figures.update(STEPS[step](settings, args.runs, args.records))
        except Exception as exc:  # one broken step must not lose the others' figures
            failed.append(f"{step}: {exc}")
            log(f"step {step} FAILED: {exc}")
        log(f"step {step} took {time.monotonic() - started:.0f} s")
    if {"aggregate_eos_rps", "aggregate_keyless_eos_rps"} <= figures.keys():
        # what versions meeting from several partitions cost, measured in the same run
        keyless = figures["aggregate_keyless_eos_rps"] / figures["aggregate_eos_rps"]
        figures["aggregate_keyless_vs_keyed"] = round(keyless, 2)
    extra = " ".join(sys.argv[1:])
    doc = {
        "figures": figures,
        "goals": {k: f"{op} {bound}" for k, (op, bound) in GOALS.items()},
        "failed": failed,
        "runs": args.runs,
        "records": args.records,
        "command": "make bench" + (f' BENCH_ARGS="{extra}"' if extra else ""),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - t0),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "kafka (broker, Connect, tools)": pinned(
                ROOT / "stack/pom.xml", r"<kafka.version>([^<]+)<"
            ),
            **{pkg: version(pkg) for pkg in ("confluent-kafka", "fastavro", "numba")},
            "kafka-streams": pinned(kstreams.PROJECT / "pom.xml", r"<kafka.version>([^<]+)<"),
            "quixstreams": pinned(quix.REQUIREMENTS, r"^quixstreams==(\S+)"),
        },
    }
    print(report(doc))
    if set(steps) == STEPS.keys():
        (RESULTS / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
        (RESULTS / "report.md").write_text(report(doc))
        log(f"written {RESULTS / 'latest.json'} and {RESULTS / 'report.md'} in {doc['seconds']} s")
    else:
        log(f"a partial run ({args.only}): latest.json and report.md left as they were")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
