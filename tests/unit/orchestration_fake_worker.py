"""A stand-in stream worker for the LocalProcessRuntime tests: a health endpoint, nothing else.

It reports `FAKE_MARKER` from its environment and WORKER_INSTANCE as its instance, so tests see
which environment it was given, and its pid as `test_pid` (a real worker's /health shows none),
so they see which process answers; SIGTERM stops it.
"""

import os
import signal
import sys
from typing import Any

from streaming.workers.health import HealthServer
from streaming.workers.metrics import WorkerMetrics


class FakeMetrics(WorkerMetrics):
    """A worker's /health with the two fields only this stand-in reports."""

    def snapshot(self, stall_after_s: float, restore_limit_s: float = 600) -> dict[str, Any]:
        marker = os.environ.get("FAKE_MARKER", "")
        return {
            **super().snapshot(stall_after_s, restore_limit_s),
            "marker": marker,
            "test_pid": os.getpid(),
        }


def main() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    metrics = FakeMetrics("fake", os.environ.get("WORKER_INSTANCE", ""))
    health = HealthServer(metrics, int(os.environ["HEALTH_PORT"])).start()
    signal.sigwait({signal.SIGTERM})
    health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
