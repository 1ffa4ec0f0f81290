"""Aborts hanging transactions on the stack's Kafka node, as an operator following Kafka's
runbook would (KIP-664: `kafka-transactions.sh find-hanging`, then `abort`).

Why the stack needs it: a one-node cluster that is SIGKILLed and restarted at once serves as
partition leader from its old metadata for a few seconds, until its controller fences the old
incarnation (broker.session.timeout.ms). If a transaction coordinator finishes a transaction in
that moment, Kafka's marker sender finds no leader for the transaction's partitions, treats them
as deleted and completes the transaction without writing its markers ("Couldn't find leader
endpoint ... likely deleted already"). Those partitions keep an open transaction that no
coordinator knows of: read_committed consumers stop at it, and the group's committed offsets stay
unstable, so the next owner of the partitions cannot even start. Nothing in Kafka ever ends it.

Kafka's own `find-hanging` decides what is hanging: an open transaction on a partition, older
than the given bound, that the coordinator of its producer does not show as ongoing with that
partition. Only those are aborted, with the marker Kafka's `abort` writes. The hazard follows a
broker (re)start, so the node is swept often for a while after each start of its process and
rarely otherwise. Knows nothing of the pipeline: it looks at every partition of the node.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stack import procs

TOOL = "org.apache.kafka.tools.TransactionsCommand"
MIN_OPEN_MINUTES = 1
"""find-hanging's bound (whole minutes): open this long and unknown to the coordinator."""
SWEEP_AFTER_START_S = 20.0
SWEEP_IDLE_S = 300.0
AFTER_START_WINDOW_S = 600.0
"""How long after a start of the broker process sweeps come every SWEEP_AFTER_START_S."""
TOOL_TIMEOUT_S = 120.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Hanging:
    topic: str
    partition: int
    producer_id: int
    producer_epoch: int
    start_offset: int


def parse_hanging(text: str) -> list[Hanging]:
    """The rows of find-hanging's table (a header line, then tab-separated columns)."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows or rows[0][:2] != ["Topic", "Partition"]:
        raise ValueError(f"not find-hanging output: {text[:200]!r}")
    header = rows[0]
    at = {name: header.index(name) for name in ("ProducerId", "ProducerEpoch", "StartOffset")}
    return [
        Hanging(
            topic=row[0],
            partition=int(row[1]),
            producer_id=int(row[at["ProducerId"]]),
            producer_epoch=int(row[at["ProducerEpoch"]]),
            start_offset=int(row[at["StartOffset"]]),
        )
        for row in rows[1:]
    ]


def sweep_interval(now: float, broker_started: float) -> float:
    """Often in the window after the broker process started, rarely otherwise."""
    if now - broker_started < AFTER_START_WINDOW_S:
        return SWEEP_AFTER_START_S
    return SWEEP_IDLE_S


class Reaper:
    def __init__(
        self, tool: Sequence[str], bootstrap: Sequence[str], broker_id: int, run: Runner
    ) -> None:
        """`bootstrap`: the address, then any client options (`--command-config FILE`)."""
        self.base = [*tool, "--bootstrap-server", *bootstrap]
        self.broker_id = broker_id
        self.run = run

    def find(self) -> list[Hanging]:
        done = self.run(
            [
                *self.base,
                "find-hanging",
                "--broker-id",
                str(self.broker_id),
                "--max-transaction-timeout",
                str(MIN_OPEN_MINUTES),
            ]
        )
        if done.returncode != 0:
            raise RuntimeError(f"find-hanging failed ({done.returncode}): {tail(done)}")
        return parse_hanging(done.stdout)

    def abort(self, txn: Hanging) -> bool:
        """True when aborted; False when it had ended meanwhile (the tool finds no open
        transaction at that offset: a later marker of the same producer closed it)."""
        done = self.run(
            [
                *self.base,
                "abort",
                "--topic",
                txn.topic,
                "--partition",
                str(txn.partition),
                "--start-offset",
                str(txn.start_offset),
            ]
        )
        if done.returncode == 0:
            return True
        if "Could not find any open transactions" in done.stdout + done.stderr:
            return False
        raise RuntimeError(f"abort of {txn} failed ({done.returncode}): {tail(done)}")

    def sweep(self) -> list[tuple[Hanging, bool]]:
        return [(txn, self.abort(txn)) for txn in self.find()]


def tail(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "SLF4J" not in ln]
    return " | ".join(lines[-3:])


def log(msg: str, **fields: object) -> None:
    print(
        json.dumps(
            {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "msg": msg, **fields}
        ),
        flush=True,
    )


def run_tool(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def loop(reaper: Reaper, state: Path) -> None:
    broker_pid, started = None, time.monotonic()
    while True:
        pid = procs.read_pid(state, "kafka")
        if pid != broker_pid:
            broker_pid, started = pid, time.monotonic()
        try:
            for txn, aborted in reaper.sweep():
                ended = "aborted" if aborted else "ended meanwhile"
                log(f"hanging transaction {ended}", **txn.__dict__)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            log("sweep failed, retrying at the next one", error=str(exc))
        # the sweep schedule, not a wait for a service
        time.sleep(sweep_interval(time.monotonic(), started))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="the stack directory")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--broker-id", type=int, default=1)
    parser.add_argument("--java", required=True)
    parser.add_argument("--libs", required=True, help="Kafka's jars (a classpath glob)")
    parser.add_argument(
        "--command-config", help="the tool's client properties (a super user's SASL login)"
    )
    args = parser.parse_args(argv)
    tool = [
        args.java,
        "-Xms32m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-cp",
        args.libs,
        TOOL,
    ]
    log("started", bootstrap=args.bootstrap, broker_id=args.broker_id)
    bootstrap = [args.bootstrap]
    if args.command_config:
        bootstrap += ["--command-config", args.command_config]
    loop(Reaper(tool, bootstrap, args.broker_id, run_tool), args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
