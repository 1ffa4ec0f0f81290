"""`make chaos`: faults under load on the real stack, then proof that nothing was lost or doubled.

While the sample backfill and a steady `POST /reviews` load stream in, the fraud filter and the
aggregator are SIGKILLed at random moments (each `--kills` times, each kill once the supervision
has brought the previous process back), the Kafka broker is restarted once and the Connect
worker once. Nothing here restarts a worker: the Dagster supervisor sensors do, as they would in
production. Then the pipeline must catch up, and:

- every POST answered 201 is in `udemy-reviews`, once;
- every input record of the run is in exactly one of valid / fraud / dead-letter, exactly once
  (compared as a multiset of key and value bytes, read_committed);
- the reconciliation job (submitted to Dagster, so it is in the UI) finds batch and stream equal.

Recovery = SIGKILL -> a new worker process healthy; restart -> the service back and the pipeline
committing again. The last line is the summary; exit 0 only when it is clean.

    make chaos        (or, on a running stack: .venv/bin/python -m chaos.run --help)
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import httpx
from confluent_kafka import Consumer, Message, TopicPartition
from dagster_graphql import DagsterGraphQLClient

from chaos.ledger import Outcome, acked_lost_and_duplicated, lost_and_duplicated, parse_answers
from orchestration.sample_run import wait_for
from orchestration.topology import (
    DEAD_LETTER_TOPIC,
    FRAUD_TOPIC,
    INPUT_TOPIC,
    RECONCILIATION_KEY,
    SINKS,
    VALID_TOPIC,
)
from streaming.config import Settings
from streaming.sink.connect import ConnectClient, ConnectError
from streaming.topic_reader import read_records

ROOT = Path(__file__).resolve().parents[1]
LOAD_SCRIPT = ROOT / "bench" / "e2e_load.lua"
RECOVERY_TIMEOUT_S = 240.0
POLL_S = 0.25


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Worker:
    name: str
    health_url: str


def health(url: str) -> dict | None:
    try:
        r = httpx.get(url, timeout=2)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Poll `check` until true; seconds it took. Raises TimeoutError naming `what`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what} not within {timeout_s:.0f} s")
        time.sleep(POLL_S)  # interval between polls of a real condition
    return time.monotonic() - start


class Killer(threading.Thread):
    """SIGKILLs one worker `kills` times at random moments, each once it is back and healthy."""

    def __init__(self, worker: Worker, kills: int, until: float, rng: random.Random, out: Outcome):
        super().__init__(daemon=True, name=f"kill-{worker.name}")
        self.worker, self.kills, self.until, self.rng, self.out = worker, kills, until, rng, out
        self.done = 0
        self.lock = threading.Lock()

    def healthy_pid(self) -> int | None:
        h = health(self.worker.health_url)
        return h.get("pid") if h and h.get("status") == "ok" else None

    def run(self) -> None:
        try:
            while self.done < self.kills or time.monotonic() < self.until:
                time.sleep(self.rng.uniform(3, 12))  # a random moment: the fault, not a wait
                pid = self.healthy_pid()
                if pid is None:  # e.g. restoring after a broker restart: a finding, then kill
                    state = (health(self.worker.health_url) or {}).get("status", "no answer")
                    took = wait_until(
                        f"{self.worker.name} healthy before a kill",
                        lambda: self.healthy_pid() is not None,
                        RECOVERY_TIMEOUT_S,
                    )
                    log(
                        f"{self.worker.name} was {state} when a kill was due; ok after {took:.1f} s"
                    )
                    pid = self.healthy_pid()
                    if pid is None:
                        continue
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                self.done += 1
                with self.lock:
                    self.out.kills += 1
                log(f"SIGKILL {self.worker.name} (pid {pid}), kill {self.done}")
                took = wait_until(
                    f"{self.worker.name} back after SIGKILL",
                    lambda p=pid: self.healthy_pid() not in (None, p),
                    RECOVERY_TIMEOUT_S,
                )
                with self.lock:
                    self.out.recoveries_s.append(took)
                log(f"{self.worker.name} back in {time.monotonic() - killed:.1f} s")
        except (RuntimeError, TimeoutError, ProcessLookupError) as exc:
            with self.lock:
                self.out.failures.append(str(exc))
            log(f"FAILED: {exc}")


def committing_since(worker: Worker, t: float) -> bool:
    """The worker committed a transaction after wall time t (it is moving again)."""
    h = health(worker.health_url)
    return bool(h and (h.get("last_commit_time") or 0) > t)


def connectors_running(connect: ConnectClient) -> bool:
    try:
        return all(connect.status(s.connector).running for s in SINKS)
    except ConnectError:
        return False


def restart_service(service: str, settle: Callable[[float], bool], out: Outcome) -> None:
    """`stack.sh restart SERVICE`, then wait until `settle(wall time of the restart)`."""
    log(f"restarting {service}")
    wall, started = time.time(), time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "stack" / "stack.sh"), "restart", service], capture_output=True, text=True
    )
    if proc.returncode != 0:
        out.failures.append(f"restart of {service} failed: {proc.stderr.strip()[-300:]}")
        return
    try:
        wait_until(f"the pipeline moving after the {service} restart", lambda: settle(wall), 180)
    except TimeoutError as exc:
        out.failures.append(str(exc))
        return
    took = time.monotonic() - started
    out.recoveries_s.append(took)
    log(f"{service} restarted; pipeline moving again {took:.1f} s after the restart began")


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
    }


def read_window(settings: Settings, topic: str, start: dict[int, int]) -> list[Message]:
    """Committed records of `topic` from `start` to its end."""
    return list(read_records(settings, topic, start, timeout_s=120))


def reconcile(out: Outcome, since: float) -> None:
    """Submit the reconciliation job to Dagster and read its mismatch count."""
    url = urlparse(os.environ.get("DAGSTER_URL", "http://127.0.0.1:3000"))
    client = DagsterGraphQLClient(url.hostname or "127.0.0.1", port_number=url.port or 3000)
    run_id = client.submit_job_execution("reconciliation")
    log(f"reconciliation submitted: {url.geturl()}/runs/{run_id}")
    status = wait_for(client, run_id, "reconciliation")
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(RECONCILIATION_KEY)
    mat = event.asset_materialization if event else None
    if mat is None or event.timestamp < since:
        out.failures.append(f"reconciliation run {run_id} ended {status} without a result")
        return
    out.mismatches = int(mat.metadata["mismatches"].value)
    if status != "SUCCESS":
        out.failures.append(f"reconciliation run {run_id} ended {status}")


def ledger(settings: Settings, start: dict[str, dict[int, int]], acked: list[int], out: Outcome):
    """Compare the input window with the outputs, and the acknowledged POSTs with the input."""
    inputs = read_window(settings, INPUT_TOPIC, start[INPUT_TOPIC])
    outputs = [m for t in (VALID_TOPIC, FRAUD_TOPIC) for m in read_window(settings, t, start[t])]
    outputs += [
        m
        for m in read_window(settings, DEAD_LETTER_TOPIC, start[DEAD_LETTER_TOPIC])
        if dict(m.headers() or []).get("dlq.source.topic") == INPUT_TOPIC.encode()
    ]
    lost, duplicated = lost_and_duplicated(
        Counter((m.key(), m.value()) for m in inputs),
        Counter((m.key(), m.value()) for m in outputs),
    )
    keys: Counter[int] = Counter(int(m.key()) for m in inputs if m.key())
    acked_lost, acked_dup = acked_lost_and_duplicated(acked, keys)
    log(
        f"input window {len(inputs):,} records, outputs {len(outputs):,}: lost {lost}, "
        f"duplicated {duplicated}; acknowledged POSTs {len(acked):,}: missing {acked_lost}, "
        f"written twice {acked_dup}"
    )
    out.lost, out.duplicated = lost + acked_lost, duplicated + acked_dup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=240, help="fault phase, seconds")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per worker (at least)")
    parser.add_argument("--post-rate", type=int, default=50, help="POST /reviews per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    settings = Settings.from_env()
    workers = [
        Worker("fraud-filter", os.environ.get("FRAUD_FILTER_HEALTH_URL", "")),
        Worker("aggregator", os.environ.get("AGGREGATOR_HEALTH_URL", "")),
    ]
    api_url = os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    state = ROOT / ".stack" / "chaos"
    state.mkdir(parents=True, exist_ok=True)
    out = Outcome()
    t0 = time.monotonic()
    wall0 = time.time()
    log(f"seed {seed}; fault phase {args.duration:.0f} s; {args.kills} kills per worker")

    check = subprocess.run([str(ROOT / "stack" / "stack.sh"), "status"], capture_output=True)
    if check.returncode != 0:
        print(check.stdout.decode(), file=sys.stderr)
        log("the stack is not healthy: start it with `make up` (make chaos does)")
        return 2

    probe = Consumer(settings.kafka_config(**{"group.id": "chaos-probe"}))
    topics = (INPUT_TOPIC, VALID_TOPIC, FRAUD_TOPIC, DEAD_LETTER_TOPIC)
    start = {t: end_offsets(probe, t) for t in topics}
    probe.close()

    answers = state / "answers"
    count = int(args.post_rate * args.duration)
    base = 5_000_000_000 + rng.randrange(10**9)
    load = subprocess.Popen(
        [
            *("wrk", "-t1", "-c32", f"-d{int(args.duration) + 20}s", "--timeout", "20s"),
            *("-s", str(LOAD_SCRIPT), api_url),
        ],
        env={
            **os.environ,
            "E2E_RATE": str(args.post_rate),
            "E2E_BASE": str(base),
            "E2E_COUNT": str(count),
            "E2E_OUT": str(answers),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    backfill_log = (state / "backfill.log").open("w")
    backfill = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "reviews"), "backfill"],
        stdout=backfill_log,
        stderr=subprocess.STDOUT,
    )
    log(f"load: backfill of the sample, and {count:,} POSTs at {args.post_rate}/s")
    until = t0 + args.duration
    killers = [Killer(w, args.kills, until, rng, out) for w in workers]
    for k in killers:
        k.start()
    connect = ConnectClient(settings.connect_url)
    try:
        for at, service, settle in (
            (0.35, "kafka", lambda t: committing_since(workers[0], t)),
            (0.65, "connect", lambda t: connectors_running(connect)),
        ):
            delay = t0 + args.duration * at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the scheduled moment of the fault
            restart_service(service, settle, out)
            if service == "kafka":
                out.broker_restarts += 1
            else:
                out.connect_restarts += 1
        for k in killers:
            k.join(args.duration * 4)
        if any(k.is_alive() for k in killers):
            out.failures.append("a worker's kills did not finish in time")
        if load.wait(args.duration + 60) != 0:
            out.failures.append(f"the load generator exited with {load.returncode}")
        if backfill.wait(300) != 0:
            out.failures.append(f"the backfill failed; see {backfill_log.name}")
        log(f"faults over after {time.monotonic() - t0:.0f} s; reconciling")
        acked, others = parse_answers(answers.read_text().splitlines())
        out.acked = len(acked)
        if others:
            log(f"POSTs refused (not acknowledged, so not counted): {dict(others)}")
        reconcile(out, wall0)
        ledger(settings, start, acked, out)
    finally:
        for proc in (load, backfill):
            if proc.poll() is None:
                proc.kill()
        connect.close()
        backfill_log.close()
    for failure in out.failures:
        log(f"problem: {failure}")
    log(f"done in {time.monotonic() - t0:.0f} s")
    print(out.summary(), flush=True)
    return 0 if out.clean else 1


if __name__ == "__main__":
    sys.exit(main())
