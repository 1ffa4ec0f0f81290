"""The chaos run's bookkeeping: multiset comparison, floors, the summary line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from chaos.ledger import EDIT_KINDS, Floors, Outcome, lost_and_duplicated, reaper_aborts
from chaos.oracle import REFUSAL_KINDS


def test_identical_windows_lose_and_double_nothing() -> None:
    window = Counter({(b"1", b"a"): 1, (b"2", b"b"): 2})
    assert lost_and_duplicated(window, window.copy()) == (0, 0)


def test_missing_and_extra_copies_are_counted_per_record() -> None:
    inputs = Counter({(b"1", b"a"): 2, (b"2", b"b"): 1})
    outputs = Counter({(b"1", b"a"): 1, (b"2", b"b"): 3})
    assert lost_and_duplicated(inputs, outputs) == (1, 2)


def test_same_key_other_bytes_is_a_loss_and_a_duplicate() -> None:
    assert lost_and_duplicated(Counter({(b"1", b"a"): 1}), Counter({(b"1", b"b"): 1})) == (1, 1)


@dataclass
class FakeVerdict:
    routing: dict[str, int] = field(default_factory=dict)
    acked_missing: int = 0
    edits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EDIT_KINDS, 500))
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSAL_KINDS, 40))
    problems: list[str] = field(default_factory=list)

    @property
    def stats_exact(self) -> bool:
        return not self.problems


def full_run() -> Outcome:
    out = Outcome()
    for name in ("fraud-filter-0", "fraud-filter-1", "aggregator-0", "aggregator-1"):
        for i in range(5):
            out.record_kill(name, restoring=name.startswith("aggregator") and i == 0)
            out.recovered("kill", 2.0 + i)
    out.acked_posts = out.acked = 6_000
    out.mismatches = 0
    out.refusal_kinds_differing = 0
    out.take(FakeVerdict(routing={"lost": 0, "duplicated": 0, "misrouted": 0}))
    return out


def test_a_run_that_exercised_everything_and_found_nothing_is_clean() -> None:
    out = full_run()
    assert out.clean, out.problems()
    line = out.summary()
    assert line.startswith("chaos: kills=20 kills_restoring=2 ")
    fields = dict(f.split("=", 1) for f in line.removeprefix("chaos: ").split())
    assert fields["stats"] == fields["reconciliation"] == "exact"
    assert fields["lost"] == fields["duplicated"] == "0"
    assert fields["recovery_p50_s"] == "4.0" and fields["recovery_max_s"] == "6.0"
    assert fields["restarts"] == "pg:0,registry:0,connect:0,daemon:0"
    assert fields["vacuous"] == "no"
    assert fields["hanging_txns_aborted"] == "0"
    assert fields["refused"] == "undecodable:40,tombstone:40,text:40,rating:40,timestamp:40"


def test_below_a_floor_the_run_is_vacuous_whatever_it_found() -> None:
    few_posts = full_run()
    few_posts.acked_posts = 4_999
    assert not few_posts.clean and "4999 acknowledged POSTs" in few_posts.problems()[0]
    no_moves = full_run()
    no_moves.take(FakeVerdict(edits={**dict.fromkeys(EDIT_KINDS, 500), "move": 199}))
    assert not no_moves.clean and any("'move'" in p for p in no_moves.problems())
    no_restore_kills = full_run()
    no_restore_kills.kills_restoring = 1
    assert not no_restore_kills.clean
    once = full_run()
    once.kills["aggregator-1"] = 4
    assert not once.clean
    no_tombstones = full_run()
    no_tombstones.take(FakeVerdict(refused={**dict.fromkeys(REFUSAL_KINDS, 40), "tombstone": 19}))
    assert not no_tombstones.clean and any("'tombstone'" in p for p in no_tombstones.problems())
    smoke = full_run()
    smoke.floors = Floors.smoke()
    assert not smoke.clean, "a smoke run never passes as a proof"


def test_any_finding_loss_or_missing_reconciliation_is_not_clean() -> None:
    wrong = full_run()
    wrong.take(FakeVerdict(problems=["stats topics: course 1: count_reviews expected 2, actual 3"]))
    assert not wrong.clean and wrong.stats_exact is False
    assert "stats=differ" in wrong.summary()
    lost = full_run()
    lost.take(FakeVerdict(routing={"lost": 1}))
    assert not lost.clean
    unreconciled = full_run()
    unreconciled.mismatches = None
    assert not unreconciled.clean and "reconciliation=not-run" in unreconciled.summary()
    refusals_differ = full_run()
    refusals_differ.refusal_kinds_differing = 1
    assert not refusals_differ.clean
    assert "reconciliation=0-mismatches-1-refusal-kinds-differ" in refusals_differ.summary()
    failed = full_run()
    failed.failures.append("aggregator-0 committing after SIGKILL not within 240 s")
    assert not failed.clean


def test_the_clock_jump_lands_just_after_the_next_utc_midnight() -> None:
    from chaos.run import DAY_S, next_midnight_offset

    for now in (1_796_221_620.5, 1_796_169_600.0, 1_796_255_999.9):
        jumped = now + next_midnight_offset(now)
        assert jumped % DAY_S == 60 and jumped // DAY_S == now // DAY_S + 1


def test_the_reapers_aborts_are_counted_from_its_log() -> None:
    lines = [
        '{"ts": "t", "msg": "started", "bootstrap": "127.0.0.1:9092", "broker_id": 1}',
        '{"ts": "t", "msg": "hanging transaction aborted", "topic": "a", "partition": 1}',
        '{"ts": "t", "msg": "hanging transaction ended meanwhile", "topic": "a", "partition": 2}',
        '{"ts": "t", "msg": "hanging transaction aborted", "topic": "b", "partition": 0}',
    ]
    assert reaper_aborts(lines) == 2
