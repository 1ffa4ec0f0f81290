"""A stand-in stream worker for the LocalProcessRuntime tests: a health endpoint, nothing else.

It reports `FAKE_MARKER` from its environment and WORKER_INSTANCE as its instance, so tests see
which environment it was given, and its pid as `test_pid` (a real worker's /health shows none),
so they see which process answers; SIGTERM stops it.
"""

import os
import signal
import sys

from streaming.workers.runtime import HealthServer, WorkerMetrics


def main() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    metrics = WorkerMetrics("fake", os.environ.get("WORKER_INSTANCE", ""))
    metrics.extra["marker"] = os.environ.get("FAKE_MARKER", "")
    metrics.extra["test_pid"] = os.getpid()
    health = HealthServer(metrics, int(os.environ["HEALTH_PORT"])).start()
    signal.sigwait({signal.SIGTERM})
    health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
