"""Fail-over of one stream-worker instance while its partner keeps running and input flows.

The stack runs two instances of each worker (streaming/pipeline.py). A history of real edits
goes into `udemy-reviews` in three parts; aggregator instance 0 and fraud-filter instance 0 are
SIGKILLed after the first, while the second is produced. Their supervisors restart them, static
membership hands each its partitions back, and the partners keep theirs (no rebalance: same pid,
never revoked). Every review must then be counted exactly once at its current version, in both
statistics topics, against the independent pandas reference.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import httpx
import pytest

from streaming.config import Settings
from streaming.core.window import epoch_day
from streaming.pipeline import AGGREGATOR, FRAUD_FILTER, WorkerSpec
from tests.integration.edit_history import courses_on_distinct_partitions, expected_stats, history
from tests.integration.test_edits_end_to_end import (
    eventually_equal,
    produce_in_order,
    topic_stats,
    with_rule_verdicts,
)

pytestmark = pytest.mark.integration
RUN = Path(os.environ.get("STACK_DIR", Path(__file__).resolve().parents[2] / ".stack")) / "run"


def health(spec: WorkerSpec, instance: int) -> dict:
    try:
        body = httpx.get(spec.health_url(instance), timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def until(what: str, cond, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # poll interval


def test_an_instance_killed_while_its_partner_runs_loses_and_doubles_nothing(
    settings: Settings,
) -> None:
    for spec in (AGGREGATOR, FRAUD_FILTER):
        if spec.instance_count() < 2:  # only when the operator set <WORKER>_INSTANCES=1
            pytest.skip(f"{spec.instances_env}=1: no partner instance to keep running")
        assert health(spec, 1), f"{spec.name}-1 does not answer (the stack runs two by default)"
        until(f"{spec.name} healthy", lambda s=spec: health(s, 0).get("status") == "ok")
    rng = random.Random(29)
    now_ms = int(time.time() * 1000)
    base = 7_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 8)
    records = history(450, now_ms, courses, first_id=base * 10, seed=29)
    verdicts = with_rule_verdicts(records, rng)
    partners = {spec.name: health(spec, 1)["pid"] for spec in (AGGREGATOR, FRAUD_FILTER)}
    killed = {}
    third = len(records) // 3
    positions = produce_in_order(settings, records[:third])
    for spec in (AGGREGATOR, FRAUD_FILTER):
        pid = int((RUN / f"{spec.name}-0.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed[spec.name] = pid
    positions += produce_in_order(settings, records[third : 2 * third])
    for spec in (AGGREGATOR, FRAUD_FILTER):
        until(
            f"{spec.name}-0 back",
            lambda s=spec: (
                health(s, 0).get("pid") not in (None, killed[s.name])
                and health(s, 0).get("status") == "ok"
            ),
        )
        record = json.loads((RUN / f"{spec.name}-0.json").read_text())
        assert record["restarts"][-1]["pid"] == killed[spec.name], "restarted by its supervisor"
    positions += produce_in_order(settings, records[2 * third :])
    expected = expected_stats(records, positions, epoch_day(now_ms), fraud=verdicts)
    ids = set(courses) & {r["course"]["id"] for r in records}
    eventually_equal(lambda: topic_stats(settings, ids), expected, "statistics topics")
    for spec in (AGGREGATOR, FRAUD_FILTER):
        assert health(spec, 1)["pid"] == partners[spec.name], f"{spec.name}-1 kept running"
