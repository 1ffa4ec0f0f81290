"""Reproduces, or fails to, Kafka's skipped transaction markers after a hard restart of the one
node: the finding behind `stack/txn_reaper.py`, re-checked on whatever Kafka the stack runs.

The hazard: a transaction coordinator that finds no leader for a partition while it sends a
transaction's markers takes the partition for deleted ("likely deleted already" in the broker's
log), drops its markers and completes the transaction anyway. Right after a SIGKILL and an
immediate restart of a one-node cluster, every partition is leaderless until the node is
unfenced, and the coordinator is just then completing the transactions it had prepared. The
partitions keep an open transaction that nobody will end: read_committed readers stop there.

Each round: transactional producers commit small transactions across every partition of a
scratch topic as fast as they can; the broker is SIGKILLed (its supervisor restarts it at once,
as the stack's restart policy does); once it answers again, the broker's new log lines are
searched for skipped markers. A round's producers are abandoned at the kill (each round has new
transactional ids), so no later commit of theirs closes what the kill left open. After the
last round, once find-hanging's bound has passed, Kafka's own `kafka-transactions find-hanging`
names the hanging transactions; for each it prints `describe-producers` and `DumpLogSegments`
evidence, then aborts it. The stack's reaper is paused (SIGSTOP) for the run, so it cannot
abort the evidence, and resumed at the end. Knows nothing of the pipeline.

    set -a; . .stack/env; set +a; .venv/bin/python -m chaos.txn_markers --rounds 8
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stack import procs
from stack.txn_reaper import MIN_OPEN_MINUTES, TOOL, Hanging, Reaper, run_tool
from streaming.settings import KafkaSettings, kafka_security, load

ROOT = Path(__file__).resolve().parents[1]
STACK = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
JAVA = str(Path(os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")) / "bin/java")
KAFKA_LOG = STACK / "logs" / "kafka.log"
SKIPPED = "likely deleted already"
TOPIC = f"txn-markers-repro-{os.getpid()}"
"""A scratch topic of its own per run, deleted at the end."""


def log(msg: str) -> None:
    print(f"[txn-markers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def java_tool(main_class: str, *args: str) -> list[str]:
    return [JAVA, "-Xmx256m", "-cp", str(STACK / "dist/libs/*"), main_class, *args]


def tool_login(bootstrap: str) -> list[str]:
    """`--bootstrap-server`, then the environment's login for the Kafka tools."""
    props = load(KafkaSettings).client_properties
    return ["--bootstrap-server", bootstrap, *(["--command-config", props] if props else [])]


@dataclass
class Round:
    commits: int = 0
    skipped_lines: tuple[str, ...] = ()
    back_after_s: float = 0.0


def commit_loop(
    bootstrap: str, txn_id: str, partitions: int, stop: threading.Event, out: Round
) -> None:
    """Small transactions over every partition until stopped or the broker goes away."""
    producer = Producer(
        {
            **kafka_security(load(KafkaSettings)),
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "linger.ms": 0,
            # the coordinator aborts what a round abandoned before find-hanging looks: only
            # transactions it no longer knows of are left open then
            "transaction.timeout.ms": 60_000,
            "log_level": 0,  # the kill makes every client log its refused connections
        }
    )
    try:
        producer.init_transactions(30)
        while not stop.is_set():
            producer.begin_transaction()
            for p in range(partitions):
                producer.produce(TOPIC, value=b"x", partition=p)
            producer.commit_transaction(10)
            out.commits += 1
    except KafkaException:
        return  # the broker was killed: this producer is abandoned with the round


def quiet(bootstrap: str) -> dict[str, Any]:
    """A client config that does not log each refused connection while the broker is down."""
    return {**kafka_security(load(KafkaSettings)), "bootstrap.servers": bootstrap, "log_level": 0}


def broker_answers(bootstrap: str) -> bool:
    try:
        AdminClient(quiet(bootstrap)).list_topics(TOPIC, timeout=2)
        return True
    except KafkaException:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `check` holds; an error naming `what` after `timeout_s`."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)  # polling a real readiness check
    return time.monotonic() - t0


def one_round(bootstrap: str, n: int, producers: int, partitions: int, warmup_s: float) -> Round:
    out, stop = Round(), threading.Event()
    threads = [
        threading.Thread(
            target=commit_loop,
            args=(bootstrap, f"txn-markers-{os.getpid()}-{n}-{i}", partitions, stop, out),
            daemon=True,
        )
        for i in range(producers)
    ]
    for t in threads:
        t.start()
    time.sleep(warmup_s)  # the producers commit for this long before the kill
    pid = procs.read_pid(STACK, "kafka")
    if pid is None:
        raise RuntimeError("no running Kafka broker to kill")
    log_from = KAFKA_LOG.stat().st_size
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    stop.set()
    wait_for("a new broker process", lambda: procs.read_pid(STACK, "kafka") not in (None, pid), 60)
    wait_for("the broker answering", lambda: broker_answers(bootstrap), 300)
    out.back_after_s = time.monotonic() - killed
    for t in threads:
        t.join(30)
    time.sleep(5)  # the coordinator's marker sends after the restart land in the log
    with KAFKA_LOG.open(errors="replace") as f:
        f.seek(log_from)
        out.skipped_lines = tuple(line.rstrip() for line in f if SKIPPED in line)
    return out


@contextmanager
def reaper_paused() -> Iterator[None]:
    pid = procs.read_pid(STACK, "kafka-txn-reaper")
    if pid is not None:
        procs.signal_group(pid, signal.SIGSTOP)
        log(f"the stack's reaper (pid {pid}) paused for the run")
    try:
        yield
    finally:
        if pid is not None:
            procs.signal_group(pid, signal.SIGCONT)
            log("the stack's reaper resumed")


SKIPPED_FOR = re.compile(r"send transaction markers for (\S+?),")
BATCH_FIELDS = re.compile(
    r"(baseOffset|lastOffset|producerId|producerEpoch|isControl|CreateTime|endTxnMarker): (\S+)"
)


def skipped_txn_ids(lines: tuple[str, ...]) -> set[str]:
    """The transactional ids whose markers the broker's log says it skipped."""
    return {m.group(1) for line in lines if (m := SKIPPED_FOR.search(line))}


def coordinator_view(bootstrap: str) -> dict[int, tuple[str, str]]:
    """Producer id -> (transactional id, state), as `kafka-transactions list` shows them."""
    out = run_tool(java_tool(TOOL, *tool_login(bootstrap), "list")).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return {int(r[2]): (r[0], r[3]) for r in rows if len(r) >= 4 and r[2].isdigit()}


def producer_row(bootstrap: str, txn: Hanging) -> list[str]:
    """describe-producers of the partition: its header and the hanging producer's row."""
    args = ["describe-producers", "--topic", txn.topic, "--partition", str(txn.partition)]
    out = run_tool(java_tool(TOOL, *tool_login(bootstrap), *args)).stdout.splitlines()
    rows = [ln for ln in out[1:] if ln.split()[:1] == [str(txn.producer_id)]]
    return [" ".join(ln.split()) for ln in out[:1] + rows]


def log_dir() -> Path:
    props = (STACK / "kafka" / "server.properties").read_text()
    found = re.search(r"^log\.dirs?=(.+)$", props, re.M)
    if not found:
        raise RuntimeError("no log.dirs in the broker's server.properties")
    return Path(found.group(1).split(",")[0].strip())


def batches_from(txn: Hanging) -> list[str]:
    """DumpLogSegments: the producer's batches in the partition from its open transaction on
    (data batches, and control batches with their marker)."""
    segments = sorted((log_dir() / f"{txn.topic}-{txn.partition}").glob("*.log"))
    out = run_tool(
        java_tool(
            "org.apache.kafka.tools.DumpLogSegments",
            "--deep-iteration",
            "--files",
            ",".join(str(s) for s in segments),
        )
    ).stdout
    return producer_batches(out, txn.producer_id, txn.start_offset)


def producer_batches(dump: str, producer_id: int, start_offset: int) -> list[str]:
    """The batches of one producer from an offset on, out of DumpLogSegments' deep iteration,
    each with its marker if it is a control batch."""
    found: list[str] = []
    mine = False
    for line in dump.splitlines():
        fields = dict(BATCH_FIELDS.findall(line))
        if "baseOffset" in fields:
            mine = fields.get("producerId") == str(producer_id)
            mine = mine and int(fields["baseOffset"]) >= start_offset
            if mine:
                found.append(" ".join(f"{k}: {v}" for k, v in fields.items()))
        elif mine and "endTxnMarker" in fields:
            found[-1] += f" endTxnMarker: {fields['endTxnMarker']}"
    return found


def report_hanging(bootstrap: str, hanging: list[Hanging], skipped: set[str]) -> int:
    """A line per hanging producer, and the first one's evidence in full; how many of the
    hanging producers had their markers logged as skipped."""
    view = coordinator_view(bootstrap)
    by_producer: dict[int, list[Hanging]] = {}
    for txn in hanging:
        by_producer.setdefault(txn.producer_id, []).append(txn)
    explained = 0
    for pid, txns in sorted(by_producer.items()):
        txn_id, state = view.get(pid, ("(unknown)", "(unknown)"))
        explained += txn_id in skipped
        log(
            f"hanging: producer {pid} epoch {txns[0].producer_epoch} ({txn_id}, coordinator "
            f"state {state}, markers logged as skipped: {'yes' if txn_id in skipped else 'no'})"
            f" open on {len(txns)} partitions of {txns[0].topic}"
        )
    first = hanging[0]
    log(f"evidence for {first.topic}-{first.partition}, producer {first.producer_id}:")
    for line in producer_row(bootstrap, first):
        log(f"  describe-producers | {line}")
    for line in batches_from(first):
        log(f"  DumpLogSegments    | {line}")
    return explained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds of commits per round")
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    admin = AdminClient(quiet(bootstrap))
    admin.create_topics([NewTopic(TOPIC, args.partitions, 1)])[TOPIC].result(30)
    rounds: list[Round] = []
    with reaper_paused():
        for n in range(args.rounds):
            r = one_round(bootstrap, n, args.producers, args.partitions, args.warmup)
            rounds.append(r)
            log(
                f"round {n + 1}/{args.rounds}: {r.commits} commits before the kill, broker back "
                f"after {r.back_after_s:.1f} s, {len(r.skipped_lines)} skipped-marker lines"
            )
            for line in r.skipped_lines[:3]:
                log(f"  {line[:400]}")
        bound_s = MIN_OPEN_MINUTES * 60 + 15
        log(f"waiting {bound_s} s: find-hanging looks at transactions over {MIN_OPEN_MINUTES} min")
        time.sleep(bound_s)  # find-hanging's own age bound, not a wait for a service
        reaper = Reaper(java_tool(TOOL), tool_login(bootstrap)[1:], 1, run_tool)
        hanging = reaper.find()
        skipped = set().union(*(skipped_txn_ids(r.skipped_lines) for r in rounds))
        explained = report_hanging(bootstrap, hanging, skipped) if hanging else 0
        for txn in hanging:
            reaper.abort(txn)
        if hanging:
            log("after kafka-transactions abort:")
            for line in batches_from(hanging[0])[-1:]:
                log(f"  DumpLogSegments    | {line}")
    print(
        f"txn-markers: kafka={kafka_version()} rounds={len(rounds)} "
        f"rounds_with_skipped_markers={sum(bool(r.skipped_lines) for r in rounds)} "
        f"hanging_producers={len({t.producer_id for t in hanging})} "
        f"hanging_partitions={len(hanging)} hanging_with_skipped_markers={explained} "
        f"commits={sum(r.commits for r in rounds)}",
        flush=True,
    )
    admin.delete_topics([TOPIC])[TOPIC].result(30)
    return 1 if hanging else 0  # 1: reproduced


def kafka_version() -> str:
    jars = sorted((STACK / "dist" / "libs").glob("kafka_2.13-*.jar"))
    return jars[0].stem.removeprefix("kafka_2.13-") if jars else "unknown"


if __name__ == "__main__":
    sys.exit(main())
