"""The chaos run's faults do not cut each other short: a SIGKILL waits while its instance is
SIGSTOPped (seed 202: the kill of a stopped instance left its SIGCONT without a process)."""

from __future__ import annotations

import random
import threading

from chaos.ledger import Outcome
from chaos.run import Instance, Killer, fault_lock
from streaming import pipeline


class NoProcess(Instance):
    """An instance with no process: a kill that gets through returns at once."""

    def pid(self) -> int | None:
        return None


def test_a_kill_waits_for_the_fault_holding_its_instance() -> None:
    inst = NoProcess(pipeline.FRAUD_FILTER, 0)
    killer = Killer(inst, kills=1, until=0.0, rng=random.Random(0), out=Outcome())
    done = threading.Event()
    lock = fault_lock(inst.name)
    with lock:  # the SIGSTOP of this instance is under way
        attempt = threading.Thread(target=lambda: (killer.kill(), done.set()))
        attempt.start()
        assert not done.wait(0.3), "the kill went through while the instance was stopped"
    assert done.wait(5), "the kill never came after the stop ended"
    attempt.join()


def test_faults_on_other_instances_do_not_wait_for_each_other() -> None:
    assert fault_lock("aggregator-0") is fault_lock("aggregator-0")
    with fault_lock("aggregator-0"):
        assert fault_lock("aggregator-1").acquire(timeout=1)
        fault_lock("aggregator-1").release()
