"""The stack's hanging-transaction reaper: what it reads from Kafka's tool, what it aborts, when.

The table below is find-hanging's answer on the stack after chaos seed 101: the broker was
SIGKILLed while the transaction coordinator completed stats-aggregator-1's transaction, the
markers were skipped, and aggregator-1 could not read its committed offsets for minutes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from stack import txn_reaper
from stack.txn_reaper import Hanging, Reaper, parse_hanging, sweep_interval

FOUND = (
    "Topic                                      \tPartition\tProducerId\tProducerEpoch\t"
    "CoordinatorEpoch\tStartOffset\tLastTimestamp\tDuration(min)\t\n"
    "stats-aggregator-course-changes-repartition\t1        \t5         \t1            \t"
    "0               \t5257       \t1796225844830\t90           \t\n"
    "__consumer_offsets                         \t37       \t5         \t1            \t"
    "0               \t3423       \t1796225844835\t90           \t\n"
)
NONE_FOUND = FOUND.splitlines()[0] + "\n"


def test_find_hanging_rows_become_transactions_to_abort() -> None:
    assert parse_hanging(FOUND) == [
        Hanging("stats-aggregator-course-changes-repartition", 1, 5, 1, 5257),
        Hanging("__consumer_offsets", 37, 5, 1, 3423),
    ]
    assert parse_hanging(NONE_FOUND) == []


def test_anything_but_the_table_is_refused_not_read_as_nothing_hanging() -> None:
    with pytest.raises(ValueError, match="not find-hanging output"):
        parse_hanging("The `find-hanging` command requires either --topic or --broker-id\n")
    with pytest.raises(ValueError):
        parse_hanging("")


def test_sweeps_are_frequent_only_after_a_start_of_the_broker() -> None:
    assert sweep_interval(now=100.0, broker_started=0.0) == txn_reaper.SWEEP_AFTER_START_S
    late = txn_reaper.AFTER_START_WINDOW_S + 1
    assert sweep_interval(now=late, broker_started=0.0) == txn_reaper.SWEEP_IDLE_S


class FakeTool:
    """Kafka's TransactionsCommand, scripted: answers per sub-command, calls recorded."""

    def __init__(self, found: str, abort_answers: list[tuple[int, str]]) -> None:
        self.found = found
        self.abort_answers = abort_answers
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        if "find-hanging" in args:
            return subprocess.CompletedProcess(list(args), 0, self.found, "SLF4J: no binding")
        code, out = self.abort_answers.pop(0)
        return subprocess.CompletedProcess(list(args), code, out, "")


def reaper(tool: FakeTool) -> Reaper:
    return Reaper(["java", "Tool"], ["127.0.0.1:9092"], 1, tool)


def test_a_sweep_aborts_each_hanging_transaction_at_its_start_offset() -> None:
    tool = FakeTool(FOUND, [(0, ""), (0, "")])
    swept = reaper(tool).sweep()
    assert [aborted for _, aborted in swept] == [True, True]
    find, *aborts = tool.calls
    assert find[-4:] == ["--broker-id", "1", "--max-transaction-timeout", "1"]
    assert [a[-6:] for a in aborts] == [
        [
            "--topic",
            "stats-aggregator-course-changes-repartition",
            "--partition",
            "1",
            "--start-offset",
            "5257",
        ],
        ["--topic", "__consumer_offsets", "--partition", "37", "--start-offset", "3423"],
    ]


def test_a_transaction_that_ended_meanwhile_is_reported_not_an_error() -> None:
    # Aborting the offsets partition let the worker commit, and its markers closed the rest.
    gone = "Could not find any open transactions starting at offset 5257 on partition x-1"
    tool = FakeTool(FOUND, [(1, gone), (0, "")])
    assert [aborted for _, aborted in reaper(tool).sweep()] == [False, True]


def test_a_failing_tool_is_an_error_with_its_words() -> None:
    tool = FakeTool(FOUND, [(1, "org.apache.kafka.common.errors.TimeoutException: boom")])
    with pytest.raises(RuntimeError, match="TimeoutException: boom"):
        reaper(tool).sweep()
    with pytest.raises(ValueError):  # an empty answer is not "nothing hanging"
        reaper(FakeTool("", [])).sweep()
