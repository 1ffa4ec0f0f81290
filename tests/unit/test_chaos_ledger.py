"""The chaos run's verdicts: lost and duplicated records, acknowledged POSTs, the summary line."""

from collections import Counter

from chaos.ledger import Outcome, acked_lost_and_duplicated, lost_and_duplicated, parse_answers


def test_identical_windows_lose_and_double_nothing() -> None:
    records = Counter({(b"1", b"a"): 1, (b"2", b"b"): 2})  # a re-sent input is two records
    assert lost_and_duplicated(records, Counter(records)) == (0, 0)


def test_missing_and_extra_copies_are_counted_per_record() -> None:
    inputs = Counter({(b"1", b"a"): 1, (b"2", b"b"): 2, (b"3", b"c"): 1})
    outputs = Counter({(b"1", b"a"): 3, (b"2", b"b"): 1})
    assert lost_and_duplicated(inputs, outputs) == (2, 2)


def test_same_key_other_bytes_is_a_loss_and_a_duplicate() -> None:
    assert lost_and_duplicated(Counter({(b"1", b"a"): 1}), Counter({(b"1", b"x"): 1})) == (1, 1)


def test_acknowledged_posts_against_the_input_topic() -> None:
    keys = Counter({10: 1, 11: 2, 99: 1})
    assert acked_lost_and_duplicated([10, 11, 12], keys) == (1, 1)


def test_answer_log_separates_acknowledged_from_refused() -> None:
    acked, others = parse_answers(["5 1795816238312.748", "! 503", "6 1795816238313.1", "! 503"])
    assert acked == [5, 6]
    assert others == {"503": 2}


def test_summary_line_is_clean_only_when_everything_is() -> None:
    out = Outcome(kills=10, broker_restarts=1, connect_restarts=1, acked=12000, mismatches=0)
    out.recoveries_s += [30.0, 40.0, 50.0]
    assert out.clean
    assert out.summary() == (
        "chaos: kills=10 broker_restarts=1 connect_restarts=1 acked=12000 lost=0 duplicated=0 "
        "reconciliation=exact recovery_p50_s=40.0 recovery_max_s=50.0"
    )
    out.mismatches = 3
    assert not out.clean
    assert "reconciliation=3 mismatches" in out.summary()


def test_no_reconciliation_or_a_failure_is_not_clean() -> None:
    assert not Outcome().clean
    assert "reconciliation=not run" in Outcome().summary()
    assert not Outcome(
        mismatches=0, failures=["aggregator back after SIGKILL not within 240 s"]
    ).clean
