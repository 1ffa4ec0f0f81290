"""Worker metrics read from librdkafka statistics, and the health endpoint."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest

from streaming.serde import RegistryUnavailable
from streaming.settings import SettingsError, clock_from_env
from streaming.workers.health import HealthServer
from streaming.workers.metrics import ABORT_STREAK, COMMIT_STALL_S, WorkerMetrics


def stats(*partitions: dict) -> str:
    parts = {str(i): {"fetch_state": "active", **p} for i, p in enumerate(partitions)}
    parts["-1"] = {"fetch_state": "none", "consumer_lag": 99}
    return json.dumps({"topics": {"t": {"partitions": parts}}})


def test_idle_after_a_transaction_marker_is_no_lag():
    m = WorkerMetrics("w", "0")
    # caught up: the fetch position is past the commit marker; librdkafka's own figure says 1
    m.on_stats(stats({"next_offset": 120, "ls_offset": 120, "fetchq_cnt": 0, "consumer_lag": 1}))
    assert m.consumer_lag == 0


def test_lag_counts_unfetched_and_prefetched_records():
    m = WorkerMetrics("w", "0")
    m.on_stats(
        stats(
            {"next_offset": 100, "ls_offset": 150, "fetchq_cnt": 20},
            {"next_offset": -1001, "ls_offset": -1, "consumer_lag": 7},  # not fetched yet
        )
    )
    assert m.consumer_lag == 50 + 20 + 7


def test_health_answers_503_when_the_loop_stalls():
    m = WorkerMetrics("w", "0")
    server = HealthServer(m, 0, stall_after_s=3600).start()
    try:
        url = f"http://127.0.0.1:{server.port}/health"
        assert httpx.get(url).status_code == 200
        server.stall_after_s = -1  # the loop's last turn is now "too long ago"
        answer = httpx.get(url)
        assert answer.status_code == 503 and answer.json()["status"] == "stalled"
    finally:
        server.stop()


def test_health_shows_which_start_this_is_but_no_pid() -> None:
    """/health is public: a supervisor tells a restart by the incarnation, not the pid."""
    first, second = WorkerMetrics("w", "0"), WorkerMetrics("w", "0")
    body = first.snapshot(stall_after_s=30)
    assert "pid" not in body and os.getpid() not in body.values()
    assert body["incarnation"] == first.snapshot(stall_after_s=30)["incarnation"]
    assert body["incarnation"] != second.snapshot(stall_after_s=30)["incarnation"]


def test_restoring_state_is_alive_not_stalled_until_its_limit():
    """A worker rebuilding the state of new partitions does not turn its loop for minutes."""
    m = WorkerMetrics("w", "0")
    m.last_loop_time = m.restoring_since = time.monotonic() - 120
    assert m.snapshot(stall_after_s=30)["status"] == "restoring"
    assert m.snapshot(stall_after_s=30, restore_limit_s=60)["status"] == "stalled"
    m.restoring_since = None
    assert m.snapshot(stall_after_s=30)["status"] == "stalled"
    m.last_loop_time = time.monotonic()
    assert m.snapshot(stall_after_s=30)["status"] == "ok"


def test_a_worker_with_input_and_no_commit_for_30_s_is_stalled_with_the_reason() -> None:
    """Its loop turns (it aborts and retries), so only the missing commits show it."""
    m = WorkerMetrics("w", "0")
    m.consumer_lag = 12
    m.aborted("MSG_SIZE_TOO_LARGE")
    assert m.snapshot(stall_after_s=30)["status"] == "ok"  # just started
    m.progress_since = time.monotonic() - COMMIT_STALL_S - 1
    snap = m.snapshot(stall_after_s=30)
    assert snap["status"] == "stalled"
    assert snap["reason"].startswith("no commit for 31 s with 12 records to read")
    assert "MSG_SIZE_TOO_LARGE" in snap["reason"]
    m.consumer_lag = 0  # idle: nothing to commit is no stall
    assert m.snapshot(stall_after_s=30)["status"] == "ok"
    m.consumer_lag = 12
    m.committed()
    assert m.snapshot(stall_after_s=30)["status"] == "ok"


def test_aborting_transaction_after_transaction_is_a_stall_at_once() -> None:
    m = WorkerMetrics("w", "0")
    for _ in range(ABORT_STREAK - 1):
        m.aborted("INVALID_RECORD")
    assert m.snapshot(stall_after_s=30)["status"] == "ok"
    m.aborted("INVALID_RECORD")
    snap = m.snapshot(stall_after_s=30)
    assert snap["status"] == "stalled" and snap["aborts"] == {"INVALID_RECORD": ABORT_STREAK}
    assert snap["reason"] == f"{ABORT_STREAK} transactions aborted in a row (last: INVALID_RECORD)"
    m.committed()
    assert m.snapshot(stall_after_s=30)["status"] == "ok"


def test_waiting_for_a_service_is_not_ok_and_not_a_stall() -> None:
    """It cannot commit, so /health is 503; but a restart would not bring the registry back."""
    m = WorkerMetrics("w", "0")
    m.waiting_for = "schema registry unreachable"
    for _ in range(ABORT_STREAK + 3):
        m.aborted("service unreachable")
    snap = m.snapshot(stall_after_s=30)
    assert snap["status"] == "waiting" and "schema registry unreachable" in snap["reason"]
    server = HealthServer(m, 0, stall_after_s=3600).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").status_code == 503
    finally:
        server.stop()


def test_the_clock_offset_moves_the_aggregators_and_the_batch_sides_clock() -> None:
    assert clock_from_env({}) is time.time
    shifted = clock_from_env({"CLOCK_OFFSET_S": "86400"})
    assert abs(shifted() - time.time() - 86400) < 5
    with pytest.raises(SettingsError, match="CLOCK_OFFSET_S: Input should be a valid number"):
        clock_from_env({"CLOCK_OFFSET_S": "tomorrow"})


def test_an_unreachable_service_is_waited_for_not_a_reason_to_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry restart must not make a worker exit (quick exits make a crash loop, which
    stops the restarts for good): start-up waits, the loop aborts and retries."""
    from streaming.workers import eos
    from streaming.workers.process import Backoff, StopFlag, until_reachable

    calls, waits = [], []

    def registry() -> None:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("schema registry at http://r is unreachable")

    assert until_reachable("the registry", registry, StopFlag(), sleep=waits.append)
    assert len(calls) == 4 and waits == [0.5, 1.0, 2.0]
    stopped = StopFlag()
    stopped.set()
    assert not until_reachable("the registry", registry, stopped, sleep=waits.append)

    class Loop:  # the parts of an EosWorker the wait touches
        metrics = WorkerMetrics("w", "0")
        _service_backoff = Backoff()

        def __init__(self) -> None:
            self.aborts: list[str] = []

        def abort(self, reason: str) -> None:
            self.aborts.append(reason)

    slept: list[float] = []
    monkeypatch.setattr(eos.time, "sleep", slept.append)
    loop = Loop()
    for _ in range(6):
        eos.EosWorker._wait_for_service(loop, RegistryUnavailable("http://registry.internal down"))  # type: ignore[arg-type]  # a fake loop
    assert loop.aborts == ["service unreachable"] * 6, "each failed batch is aborted, read again"
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert loop.metrics.waiting_for == "RegistryUnavailable"  # /health is public
    loop._service_backoff.reset()  # what a commit does: the service answered
    eos.EosWorker._wait_for_service(loop, ConnectionError("registry down again"))  # type: ignore[arg-type]  # a fake loop
    assert slept[-1] == 0.5, "after an answer the back-off starts again from its first wait"


def test_a_timed_out_committed_offsets_fetch_is_retried_a_fatal_error_is_not() -> None:
    # A hanging transaction holds a group's offsets unstable: librdkafka's fetch times out,
    # and the worker asks again (until COMMITTED_TIMEOUT_S) rather than exit every 30 s.
    from confluent_kafka import KafkaError

    from streaming.workers.stores import committed_retriable

    assert committed_retriable(KafkaError(KafkaError._TIMED_OUT))
    assert committed_retriable(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, retriable=True))
    assert not committed_retriable(KafkaError(KafkaError._TIMED_OUT, fatal=True))
    assert not committed_retriable(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
