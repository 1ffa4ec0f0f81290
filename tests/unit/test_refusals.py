"""Finding the record whose output the broker refuses for good (`streaming.workers.refusals`)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from streaming.workers.refusals import Refusals, failed_transaction, reason, refused


def test_only_errors_no_retry_can_change_are_refusals() -> None:
    assert refused(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert refused(KafkaError(KafkaError.INVALID_RECORD))
    assert refused(KafkaError(KafkaError.POLICY_VIOLATION))
    assert not refused(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
    assert not refused(KafkaError(KafkaError._FENCED))
    assert reason(KafkaError(KafkaError.INVALID_RECORD)).startswith(
        "output refused by the broker: INVALID_RECORD"
    )


def test_a_refused_batch_is_gone_through_one_record_at_a_time_then_batches_resume() -> None:
    r = Refusals()
    r.suspect([("in", 0, 10), ("in", 1, 4), ("in", 2, 0)])
    assert r.careful
    r.caught_up({("in", 0): 5, ("in", 1): 3, ("in", 2): 0})
    assert r.careful_until == {("in", 0): 10, ("in", 1): 4}, "an idle partition needs no care"
    r.caught_up({("in", 0): 5})  # partition 1 was revoked
    assert r.careful_until == {("in", 0): 10}
    r.caught_up({("in", 0): 10})
    assert not r.careful


def test_a_failed_transaction_is_a_reason_to_look_record_by_record() -> None:
    assert failed_transaction(KafkaError(KafkaError._STATE))
    assert not failed_transaction(KafkaError(KafkaError._STATE, fatal=True))
    assert not failed_transaction(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))


def test_the_blamed_record_is_dead_lettered_when_read_again_then_forgotten() -> None:
    r = Refusals()
    assert r.blame("in", 0, 7, "too large")
    assert r.take("in", 0, 6) is None
    assert r.take("in", 0, 7) == "too large"
    assert not r.blame("in", 0, 7, "the dead letter too"), "nothing left to try"
    r.passed("in", 0, 7)
    assert r.blamed == {} and r.diverted == set()
