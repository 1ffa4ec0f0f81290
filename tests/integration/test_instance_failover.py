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

from stack import procs
from streaming.core.window import epoch_day
from streaming.pipeline import (
    AGGREGATOR,
    COURSES_CHANGELOG,
    FRAUD_FILTER,
    VERSIONS_CHANGELOG,
    WorkerSpec,
)
from streaming.settings import Settings
from streaming.workers.snapshots import SnapshotDir
from tests.integration.edit_history import courses_on_distinct_partitions, expected_stats, history
from tests.integration.test_edits_end_to_end import (
    eventually_equal,
    produce_in_order,
    topic_stats,
    with_rule_verdicts,
)

pytestmark = pytest.mark.integration
STACK = Path(os.environ.get("STACK_DIR", Path(__file__).resolve().parents[2] / ".stack"))
RUN = STACK / "run"


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
    partners = {spec.name: health(spec, 1)["incarnation"] for spec in (AGGREGATOR, FRAUD_FILTER)}
    before = {spec.name: health(spec, 0).get("incarnation") for spec in (AGGREGATOR, FRAUD_FILTER)}
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
                health(s, 0).get("incarnation") not in (None, before[s.name])
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
        assert health(spec, 1)["incarnation"] == partners[spec.name], f"{spec.name}-1 kept running"


def snapshot_files() -> dict[str, list[Path]]:
    """The stack aggregator's snapshot files, per changelog."""
    root = SnapshotDir.from_env(AGGREGATOR.group_id).root
    return {d.name: sorted(d.glob("*.snap")) for d in sorted(root.iterdir()) if d.is_dir()}


def restored_sources() -> dict[str, dict[str, str]]:
    body = health(AGGREGATOR, 0).get("restored_from", {})
    return {store: {p: r["source"] for p, r in parts.items()} for store, parts in body.items()}


def kill_and_wait(spec: WorkerSpec, while_down=lambda: None, spare: bool = False) -> None:
    """SIGKILL instance 0, and its warm spare too unless `spare` (as a machine crash would:
    no standby copies, the restart reads snapshots), run `while_down` before its supervisor
    may restart it (it is held meanwhile), then wait until it is back and healthy."""
    name = f"{spec.name}-0"
    pid, incarnation = procs.read_pid(STACK, name), health(spec, 0).get("incarnation")
    spare_pid = None if spare else procs.read_record(STACK, name).get("spare_pid")
    procs.hold(STACK, name, "test: snapshots changed while down")
    try:
        for victim in (pid, spare_pid):
            if victim is not None and procs.alive(victim):
                os.kill(victim, signal.SIGKILL)
                until(f"{name} ({victim}) down", lambda v=victim: not procs.alive(v))
        while_down()
    finally:
        procs.release(STACK, name)

    def restored() -> bool:
        # a new incarnation answers "ok" before its first assignment: wait for its restore
        body = health(spec, 0)
        done = body.get("restored_from", {}).keys() >= {"review-versions", "course-stats"}
        new = body.get("incarnation") not in (None, incarnation)
        return new and body.get("status") == "ok" and done

    until(f"{name} back and restored", restored)


def standby_ready() -> bool:
    """Aggregator instance 0's current warm spare has caught-up copies of what it owns."""
    name = f"{AGGREGATOR.name}-0"
    note = SnapshotDir.from_env(AGGREGATOR.group_id).read_note(f"standby-{AGGREGATOR.group_id}-0")
    spare = procs.read_record(STACK, name).get("spare_pid")
    return note.get("ready") is True and spare is not None and note.get("pid") == spare


def owned_files(changelog: str) -> list[Path]:
    """Snapshot files of the partitions aggregator instance 0 owns."""
    owned = {
        a.rsplit("[", 1)[1].rstrip("]")
        for a in health(AGGREGATOR, 0).get("assigned_partitions", [])
        if a.startswith("udemy-reviews-valid[")
    }
    return [f for f in snapshot_files().get(changelog, []) if f.stem in owned]


def test_corrupt_foreign_and_deleted_snapshots_are_discarded_and_nothing_is_lost(
    settings: Settings,
) -> None:
    """Kill the aggregator's instance 0 and its warm spare three times under input: once with
    its snapshots intact (they are used), once with one corrupted and one deleted, once with
    one written for another topic; each bad one is discarded for the whole changelog. Then
    once without its spare, which takes over with its standby copies. Every review is still
    counted exactly once."""
    if AGGREGATOR.instance_count() < 2:
        pytest.skip(f"{AGGREGATOR.instances_env}=1: no partner instance to keep running")
    until("aggregator healthy", lambda: health(AGGREGATOR, 0).get("status") == "ok")
    rng = random.Random(31)
    now_ms = int(time.time() * 1000)
    base = 8_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 8)
    records = history(400, now_ms, courses, first_id=base * 10, seed=31)
    verdicts = with_rule_verdicts(records, rng)
    quarter = len(records) // 4
    positions = produce_in_order(settings, records[:quarter])
    taken = health(AGGREGATOR, 0).get("snapshots", 0)
    until("a snapshot after the input", lambda: health(AGGREGATOR, 0).get("snapshots", 0) > taken)
    kill_and_wait(AGGREGATOR)
    assert "snapshot" in {s for parts in restored_sources().values() for s in parts.values()}

    positions += produce_in_order(settings, records[quarter : 2 * quarter])
    versions = owned_files(VERSIONS_CHANGELOG.name)[0]
    course_stats = owned_files(COURSES_CHANGELOG.name)[0]

    def corrupt_and_delete() -> None:
        data = bytearray(versions.read_bytes())
        data[-3] ^= 0xFF
        versions.write_bytes(bytes(data))
        course_stats.unlink()

    kill_and_wait(AGGREGATOR, corrupt_and_delete)
    sources = restored_sources()
    assert sources["review-versions"][versions.stem] == "changelog", sources
    assert sources["course-stats"][course_stats.stem] == "changelog", sources

    positions += produce_in_order(settings, records[2 * quarter : 3 * quarter])
    until("a snapshot of the restored state", lambda: owned_files(COURSES_CHANGELOG.name))
    target = owned_files(COURSES_CHANGELOG.name)[0]

    def make_foreign() -> None:
        magic, header, payload = target.read_bytes().split(b"\n", 2)
        foreign = {**json.loads(header), "topic_id": "AAAAAAAAAAAAAAAAAAAAAA"}
        target.write_bytes(b"\n".join([magic, json.dumps(foreign).encode(), payload]))

    kill_and_wait(AGGREGATOR, make_foreign)
    assert restored_sources()["course-stats"][target.stem] == "changelog"

    positions += produce_in_order(settings, records[3 * quarter : 7 * len(records) // 8])
    until("the warm spare's standby copies caught up", standby_ready)
    kill_and_wait(AGGREGATOR, spare=True)
    sources = restored_sources()
    assert {s for parts in sources.values() for s in parts.values()} == {"standby"}, sources

    positions += produce_in_order(settings, records[7 * len(records) // 8 :])
    expected = expected_stats(records, positions, epoch_day(now_ms), fraud=verdicts)
    ids = set(courses) & {r["course"]["id"] for r in records}
    eventually_equal(lambda: topic_stats(settings, ids), expected, "statistics topics")
