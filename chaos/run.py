"""`make chaos`: faults under an edit-heavy load on the real stack, then an independent proof.

While the sample backfill and `chaos.load` (new reviews, re-ratings, verdict flips, moves,
equal-`modified` versions, stale re-sends, title changes; through `POST /reviews` and straight
into `udemy-reviews`) stream in, this run:

- SIGKILLs every instance of each stream worker (`--kills` each; every other kill of an
  aggregator instance also kills its replacement before that one's first commit, while it
  restores), whatever state the instance is in;
- SIGSTOPs one instance of each worker for longer than its consumer session (10 s) but shorter
  than the supervisor's stall limit (two silent evaluations, 15 s apart), then SIGCONTs it: a
  zombie whose transactions the broker must fence;
- SIGKILLs the Kafka broker and brings it back, as an operator's restart policy would;
- restarts PostgreSQL, the schema registry, Connect and the Dagster daemon;
- moves every aggregator instance across midnight (each restarted with CLOCK_OFFSET_S set to
  land just after the next UTC midnight); the reconciliation and the check use that day too.

Nothing here restarts a worker: the process supervisors and the Dagster sensors do. Then the
pipeline catches up, the reconciliation job runs in Dagster, and `chaos.check` (an independent
implementation of the semantics, `chaos.oracle`) judges the topics, the tables and the read API.
Recovery of a kill: SIGKILL to the new incarnation's first committed transaction (its
`first_commit_time`); of a service fault: the fault to every worker instance committing again.
The last line is the summary; exit 0 only when everything holds and the run was not vacuous.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import httpx
from confluent_kafka import Consumer, TopicPartition

from chaos.check import Verdict, run_check
from chaos.ledger import Floors, Outcome, reaper_aborts
from chaos.load import Load, parse_answers
from orchestration.sample_run import dagster_client, wait_for
from orchestration.topology import RECONCILIATION_KEY
from stack import procs
from streaming import pipeline
from streaming.api.auth import client_token
from streaming.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
STACK = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
RECOVERY_TIMEOUT_S = 240.0
POLL_S = 0.05
STOP_S = 13.0
"""SIGSTOP length: past the 10 s consumer session, short of two sensor evaluations (15 s)."""
WATCHED = tuple(
    t.name for t in (pipeline.INPUT, pipeline.VALID, pipeline.FRAUD, pipeline.DEAD_LETTER)
)
"""The topics whose end offsets open the run's window (`chaos.check` judges what follows)."""
DAY_S = 86_400


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Instance:
    """One instance of a stream worker: its process name and health URL."""

    worker: pipeline.WorkerSpec
    index: int

    @property
    def name(self) -> str:
        return f"{self.worker.name}-{self.index}"

    @property
    def url(self) -> str:
        return self.worker.health_url(self.index)

    def health(self) -> dict | None:
        try:
            return httpx.get(self.url, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def pid(self) -> int | None:
        return procs.read_pid(STACK, self.name)


def instances() -> list[Instance]:
    return [
        Instance(w, i)
        for w in (pipeline.FRAUD_FILTER, pipeline.AGGREGATOR)
        for i in range(w.instance_count())
    ]


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Poll `check` until true; seconds it took. Raises TimeoutError naming `what`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what} not within {timeout_s:.0f} s")
        time.sleep(POLL_S)  # interval between polls of a real condition
    return time.monotonic() - start


def first_commit_after(inst: Instance, wall: float) -> Callable[[], bool]:
    """A process of `inst` made its first commit after `wall` (the time of a kill): a new one,
    as the killed one had made its first before or never (/health shows no pid)."""

    def done() -> bool:
        h = inst.health() or {}
        return (h.get("first_commit_time") or 0) > wall

    return done


def committing_since(inst: Instance, wall: float) -> bool:
    h = inst.health() or {}
    return (h.get("last_commit_time") or 0) > wall


_FAULT_LOCKS: dict[str, threading.Lock] = {}
_FAULT_LOCKS_GUARD = threading.Lock()


def fault_lock(name: str) -> threading.Lock:
    """Held by a fault on one instance that must not be cut short by another (seed 202: a
    SIGKILL of the SIGSTOPped instance left its SIGCONT without a process)."""
    with _FAULT_LOCKS_GUARD:
        return _FAULT_LOCKS.setdefault(name, threading.Lock())


class Killer(threading.Thread):
    """SIGKILLs one instance `kills` times at random moments, whatever its state; with
    `double`, every other kill also kills the replacement before its first commit."""

    def __init__(
        self, inst: Instance, kills: int, until: float, rng: random.Random, out: Outcome
    ) -> None:
        super().__init__(daemon=True, name=f"kill-{inst.name}")
        self.inst, self.kills, self.until, self.rng, self.out = inst, kills, until, rng, out
        self.double = inst.worker is pipeline.AGGREGATOR

    def kill(self) -> tuple[int, float] | None:
        """SIGKILL the instance's current process; its pid and the wall time, and what its
        health said (a kill while restoring is counted as such). Not while the instance is
        SIGSTOPped: the kill waits for the SIGCONT, so both faults happen in full."""
        with fault_lock(self.inst.name):
            return self._kill()

    def _kill(self) -> tuple[int, float] | None:
        pid = self.inst.pid()
        if pid is None or not procs.alive(pid):
            return None
        h = self.inst.health() or {}
        # the answer is the current process's: only one holds the health port
        restoring = h.get("status") == "restoring" or (
            bool(h) and h.get("first_commit_time") is None
        )
        os.kill(pid, signal.SIGKILL)
        wall = time.time()
        self.out.record_kill(self.inst.name, restoring)
        log(f"SIGKILL {self.inst.name} (pid {pid}, {h.get('status', 'no answer')})")
        return pid, wall

    def kill_replacement(self, old: int) -> bool:
        """Kill the incarnation after `old` as soon as it runs, before its first commit."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = self.inst.pid()
            if pid not in (None, old) and procs.alive(pid):
                h = self.inst.health() or {}
                # `old` is dead: whoever answers the health port is a replacement
                if h.get("first_commit_time") is not None:
                    return False  # it committed before we saw it: not a kill during restore
                return self.kill() is not None
            time.sleep(POLL_S)
        return False

    def run(self) -> None:
        done = 0
        span = max(self.until - time.monotonic(), 1)
        while done < self.kills:
            time.sleep(self.rng.uniform(0.5, 1.5) * span / (self.kills + 1))  # the fault's moment
            try:
                killed = self.kill()
                if killed is None:
                    continue
                done += 1
                pid, wall = killed
                if self.double and done % 2 == 0 and self.kill_replacement(pid):
                    wall = time.time()
                took = wait_until(
                    f"{self.inst.name} committing after SIGKILL",
                    first_commit_after(self.inst, wall),
                    RECOVERY_TIMEOUT_S,
                )
                h = self.inst.health() or {}
                self.out.recovered("kill", float(h.get("first_commit_time", wall)) - wall)
                log(f"{self.inst.name} committed {took:.1f} s after the SIGKILL")
            except TimeoutError as exc:
                self.out.failures.append(str(exc))
                log(f"FAILED: {exc}")


def all_committing(since: float, timeout_s: float = 180) -> float:
    """Wait until every worker instance committed after `since`; seconds from `since`."""
    for inst in instances():
        wait_until(f"{inst.name} committing", lambda i=inst: committing_since(i, since), timeout_s)  # type: ignore[misc]  # i binds inst
    return time.time() - since


def stop_and_continue(inst: Instance, out: Outcome) -> None:
    """SIGSTOP past the session timeout, SIGCONT: the zombie's transactions must be fenced."""
    pid = inst.pid()
    if pid is None:
        out.failures.append(f"{inst.name}: no process to SIGSTOP")
        return
    with fault_lock(inst.name):
        log(f"SIGSTOP {inst.name} (pid {pid}) for {STOP_S:.0f} s")
        os.kill(pid, signal.SIGSTOP)
        time.sleep(STOP_S)  # the length of the fault
        os.kill(pid, signal.SIGCONT)
    wall = time.time()
    out.stops += 1
    took = all_committing(wall)
    out.recovered("stop", took)
    log(f"SIGCONT {inst.name}; every instance committing {took:.1f} s later")


def stack_restart(service: str) -> None:
    proc = subprocess.run(
        [str(ROOT / "stack" / "stack.sh"), "restart", service], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"restart of {service} failed: {proc.stderr.strip()[-300:]}")


def kill_broker(out: Outcome) -> None:
    """SIGKILL the broker; its supervisor (the stack's restart policy) brings it back."""
    pid = procs.read_pid(STACK, "kafka")
    if pid is None or not procs.alive(pid):
        raise RuntimeError("no running Kafka broker to kill")
    log(f"SIGKILL the Kafka broker (pid {pid})")
    os.kill(pid, signal.SIGKILL)
    wall = time.time()
    wait_until(
        "a new broker process", lambda: procs.read_pid(STACK, "kafka") not in (None, pid), 60
    )
    out.broker_kills += 1
    took = all_committing(wall, 300)
    out.recovered("broker", took)
    log(f"Kafka back; every instance committing {took:.1f} s after the kill")


def restart_service(service: str, out: Outcome) -> None:
    """A graceful restart of an infrastructure service or the Dagster daemon."""
    log(f"restarting {service}")
    wall = time.time()
    if service == "daemon":
        old = procs.read_pid(STACK, "dagster-daemon")
        if not procs.restart(STACK, "dagster-daemon"):
            raise RuntimeError("the Dagster daemon has no supervisor")
        wait_until(
            "the Dagster daemon back",
            lambda: procs.read_pid(STACK, "dagster-daemon") not in (None, old),
            60,
        )
    else:
        stack_restart(service)
    out.restarts[service] += 1
    took = all_committing(wall, 300)
    out.recovered(service, took)
    log(f"{service} restarted; every instance committing {took:.1f} s after the restart began")


def next_midnight_offset(now: float) -> float:
    """Seconds to add to the clock so it reads 60 s past the next UTC midnight."""
    return (int(now // DAY_S) + 1) * DAY_S + 60 - now


def jump_clock(offset_s: float, out: Outcome) -> None:
    """Restart every aggregator instance with CLOCK_OFFSET_S (its supervisor too, so later
    incarnations keep the clock)."""
    log(f"moving every aggregator across midnight (CLOCK_OFFSET_S={offset_s:.0f})")
    wall = time.time()
    for i in range(pipeline.AGGREGATOR.instance_count()):
        name = f"{pipeline.AGGREGATOR.name}-{i}"
        env = {**os.environ, "WORKER_INSTANCE": str(i), "CLOCK_OFFSET_S": f"{offset_s:.3f}"}
        cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", pipeline.AGGREGATOR.module]
        with fault_lock(name):  # a kill waits until the new supervisor runs
            procs.stop(STACK, name)
            procs.start(STACK, name, cmd, env=env, cwd=ROOT, warm=True)
    out.clock_jumps += 1
    day = int((time.time() + offset_s) // DAY_S)
    for i in range(pipeline.AGGREGATOR.instance_count()):
        inst = Instance(pipeline.AGGREGATOR, i)
        wait_until(
            f"{inst.name} on day {day}",
            lambda i=inst: (i.health() or {}).get("as_of_day") == day,  # type: ignore[misc]  # i binds inst
            120,
        )
    took = all_committing(wall, 300)
    out.recovered("clock", took)
    log(f"aggregators on the next day; every instance committing {took:.1f} s later")


def end_offsets(settings: Settings) -> dict[str, dict[int, int]]:
    probe = Consumer(settings.kafka_config(**{"group.id": "chaos-probe"}))
    try:
        out = {}
        for topic in WATCHED:
            parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
            out[topic] = {
                p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts
            }
        return out
    finally:
        probe.close()


def caught_up() -> bool:
    """Every instance healthy with no consumer lag."""
    docs = [i.health() or {} for i in instances()]
    return all(d.get("status") == "ok" and d.get("consumer_lag") == 0 for d in docs)


def reconcile(out: Outcome, as_of_day: int, since: float) -> None:
    """The reconciliation job in Dagster (so it is in the UI), on the jumped day."""
    url = urlparse(os.environ.get("DAGSTER_URL", "http://127.0.0.1:3000"))
    client = dagster_client()
    op = RECONCILIATION_KEY.to_python_identifier()
    run_id = client.submit_job_execution(
        "reconciliation", run_config={"ops": {op: {"config": {"as_of_day": as_of_day}}}}
    )
    log(f"reconciliation submitted: {url.geturl()}/runs/{run_id}")
    status = wait_for(client, run_id, "reconciliation")
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(RECONCILIATION_KEY)
    mat = event.asset_materialization if event else None
    if mat is None or event is None or event.timestamp < since:
        out.failures.append(f"reconciliation run {run_id} ended {status} without a result")
        return
    out.mismatches = int(mat.metadata["mismatches"].value)  # type: ignore[arg-type]  # an int's
    out.refusal_kinds_differing = int(mat.metadata["refusal_kinds_differing"].value)  # type: ignore[arg-type]  # ditto
    if status != "SUCCESS":
        out.failures.append(f"reconciliation run {run_id} ended {status}")


def faults(args: argparse.Namespace, rng: random.Random, out: Outcome, t0: float) -> None:
    """The service faults, one after another at their moments, while the killers run."""
    fraud0, agg1 = Instance(pipeline.FRAUD_FILTER, 0), Instance(pipeline.AGGREGATOR, 1)
    offset = next_midnight_offset(time.time())
    plan: list[tuple[float, str, Callable[[], None]]] = [
        (0.10, "stop", lambda: stop_and_continue(agg1, out)),
        (0.20, "broker", lambda: kill_broker(out)),
        (0.32, "postgres", lambda: restart_service("postgres", out)),
        (0.42, "registry", lambda: restart_service("registry", out)),
        (0.52, "clock", lambda: jump_clock(offset, out)),
        (0.62, "connect", lambda: restart_service("connect", out)),
        (0.72, "daemon", lambda: restart_service("daemon", out)),
        (0.82, "stop", lambda: stop_and_continue(fraud0, out)),
    ]
    for at, what, fault in plan:
        jitter = rng.uniform(-0.03, 0.03)
        delay = t0 + args.duration * (at + jitter) - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the scheduled moment of the fault
        try:
            fault()
        except (RuntimeError, TimeoutError, OSError) as exc:
            out.failures.append(f"{what}: {exc}")
            log(f"FAILED: {what}: {exc}")
    out.clock_offset_s = offset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="fault phase, seconds")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per worker instance")
    parser.add_argument("--rate", type=int, default=45, help="load records per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--floors",
        choices=("issue", "smoke"),
        default="issue",
        help="what a run must exercise not to be vacuous (smoke: a quick look, never clean)",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    settings = Settings.from_env()
    api_url = os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8000")
    state = STACK / "chaos"
    state.mkdir(parents=True, exist_ok=True)
    out = Outcome(floors=Floors() if args.floors == "issue" else Floors.smoke())
    t0, wall0 = time.monotonic(), time.time()
    reaper_log = STACK / "logs" / "kafka-txn-reaper.log"
    reaper_from = reaper_log.stat().st_size if reaper_log.exists() else 0
    log(f"seed {seed}; fault phase {args.duration:.0f} s; {args.kills} kills per instance")
    check = subprocess.run([str(ROOT / "stack" / "stack.sh"), "status"], capture_output=True)
    if check.returncode != 0:
        print(check.stdout.decode(), file=sys.stderr)
        log("the stack is not healthy: start it with `make up` (make chaos does)")
        return 2

    start = end_offsets(settings)
    answers = state / f"answers-{seed}.jsonl"
    load = Load(
        api_url=api_url,
        bootstrap=settings.kafka_bootstrap_servers,
        registry_url=settings.schema_registry_url,
        rate=args.rate,
        seed=seed,
        base_id=5_000_000_000 + rng.randrange(10**9),
        out_path=answers,
        token=client_token(),
    )
    stop_load = threading.Event()  # the load flows until every fault is over and recovered
    loader = threading.Thread(
        target=load.run, args=(args.duration * 10, stop_load), daemon=True, name="load"
    )
    backfill_log = (state / "backfill.log").open("w")
    backfill = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "reviews"), "backfill"],
        stdout=backfill_log,
        stderr=subprocess.STDOUT,
    )
    loader.start()
    log(f"load: the sample's backfill, and {args.rate}/s of new reviews and edits")
    until = t0 + args.duration
    killers = [Killer(i, args.kills, until, rng, out) for i in instances()]
    for k in killers:
        k.start()
    try:
        faults(args, rng, out, t0)
        for k in killers:
            k.join(args.duration * 2)
        if any(k.is_alive() for k in killers):
            out.failures.append("the kills did not finish in time")
        stop_load.set()
        loader.join(120)
        log(load.summary())
        if backfill.wait(300) != 0:
            out.failures.append(f"the backfill failed; see {backfill_log.name}")
        log(f"faults over after {time.monotonic() - t0:.0f} s; catching up")
        wait_until("every instance caught up", caught_up, 300)
        as_of_day = int((time.time() + out.clock_offset_s) // DAY_S)
        reconcile(out, as_of_day, wall0)
        acked, refused = parse_answers(answers.read_text().splitlines())
        out.acked = len(acked)
        out.acked_posts = sum(1 for a in acked if a["path"] == "post")
        if refused:
            log(f"not acknowledged (so not counted): {dict(refused)}")
        verdict = judge(settings, api_url, start, acked, as_of_day)
        out.take(verdict)
    except (RuntimeError, TimeoutError, OSError) as exc:
        out.failures.append(str(exc))
    finally:
        stop_load.set()
        if backfill.poll() is None:
            backfill.kill()
        backfill_log.close()
    if reaper_log.exists():
        with reaper_log.open() as f:
            f.seek(reaper_from)
            out.hanging_aborted = reaper_aborts(f.read().splitlines())
    for problem in out.problems()[:40]:
        log(f"problem: {problem}")
    log(f"done in {time.monotonic() - t0:.0f} s")
    print(out.summary(), flush=True)
    return 0 if out.clean else 1


def judge(settings: Settings, api_url: str, start: dict, acked: list, as_of_day: int) -> Verdict:
    """The independent check, repeated while only the sink's views lag (Connect catches up)."""
    deadline = time.monotonic() + 180
    while True:
        verdict = run_check(
            bootstrap=settings.kafka_bootstrap_servers,
            registry_url=settings.schema_registry_url,
            database_url=settings.database_url,
            api_url=api_url,
            start=start,
            acked=acked,
            as_of_day=as_of_day,
            log=log,
        )
        lagging = [p for p in verdict.problems if p.startswith(("stats postgres", "stats api"))]
        if len(lagging) < len(verdict.problems) or not lagging or time.monotonic() > deadline:
            return verdict
        log(f"{len(lagging)} differences in the sink's views; checking again")
        time.sleep(5)  # the sink's next flush


if __name__ == "__main__":
    sys.exit(main())
