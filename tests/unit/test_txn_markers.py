"""The parsing behind `chaos/txn_markers.py`, on the broker's and the tools' real output
(Kafka 4.4.0)."""

from __future__ import annotations

from chaos.txn_markers import producer_batches, skipped_txn_ids

SKIPPED_LINE = (
    "2026-12-06T11:30:27,722 INFO  [TxnMarkerSenderThread-1] k.c.t.TransactionMarkerChannelManager"
    " - [Transaction Marker Channel Manager 1]: Couldn't find leader endpoint for partitions "
    "Set(txn-markers-repro-5) while trying to send transaction markers for txn-markers-18903-5-0,"
    " these partitions are likely deleted already and hence can be skipped"
)

DUMP = """Dumping .stack/kafka/data/txn-markers-repro-11/00000000000000000000.log
Log starting offset: 0
baseOffset: 5263 lastOffset: 5263 count: 1 baseSequence: -1 lastSequence: -1 producerId: 5002 \
producerEpoch: 0 partitionLeaderEpoch: 10 isTransactional: true isControl: true \
deleteHorizonMs: OptionalLong.empty position: 386718 CreateTime: 1796556614469 size: 78
| offset: 5263 CreateTime: 1796556614469 keySize: 4 valueSize: 6 sequence: -1 headerKeys: [] \
endTxnMarker: COMMIT coordinatorEpoch: 10
baseOffset: 5266 lastOffset: 5266 count: 1 baseSequence: 55 lastSequence: 55 producerId: 5002 \
producerEpoch: 0 partitionLeaderEpoch: 10 isTransactional: true isControl: false \
deleteHorizonMs: OptionalLong.empty position: 386952 CreateTime: 1796556614467 size: 69
| offset: 5266 CreateTime: 1796556614467 keySize: -1 valueSize: 1 sequence: 55 headerKeys: []
baseOffset: 5267 lastOffset: 5267 count: 1 baseSequence: 60 lastSequence: 60 producerId: 5003 \
producerEpoch: 0 partitionLeaderEpoch: 10 isTransactional: true isControl: false \
deleteHorizonMs: OptionalLong.empty position: 387021 CreateTime: 1796556614470 size: 69
| offset: 5267 CreateTime: 1796556614470 keySize: -1 valueSize: 1 sequence: 60 headerKeys: []
baseOffset: 5281 lastOffset: 5281 count: 1 baseSequence: -1 lastSequence: -1 producerId: 5002 \
producerEpoch: 0 partitionLeaderEpoch: 12 isTransactional: true isControl: true \
deleteHorizonMs: OptionalLong.empty position: 388041 CreateTime: 1796556754593 size: 78
| offset: 5281 CreateTime: 1796556754593 keySize: 4 valueSize: 6 sequence: -1 headerKeys: [] \
endTxnMarker: ABORT coordinatorEpoch: 10
"""


def test_the_transactional_ids_whose_markers_were_skipped() -> None:
    assert skipped_txn_ids((SKIPPED_LINE, "an unrelated line")) == {"txn-markers-18903-5-0"}


def test_one_producers_batches_from_the_open_transaction_with_their_markers() -> None:
    assert producer_batches(DUMP, 5002, 5266) == [
        "baseOffset: 5266 lastOffset: 5266 producerId: 5002 producerEpoch: 0 isControl: false "
        "CreateTime: 1796556614467",
        "baseOffset: 5281 lastOffset: 5281 producerId: 5002 producerEpoch: 0 isControl: true "
        "CreateTime: 1796556754593 endTxnMarker: ABORT",
    ]
