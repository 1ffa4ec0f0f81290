"""Fraud filter: `udemy-reviews` -> `udemy-reviews-valid` | `udemy-reviews-fraud`, exactly once.

The loop is `streaming.workers.eos.EosWorker`'s (consume -> process -> commit with offsets);
`process` routes each batch with a pure function (`streaming.core.fraud_routing.route`) and
produces every record to its topic with its value bytes, headers and timestamp unchanged, keyed
by its review id (the value's `id`, as a decimal string): whatever key its producer sent (none,
an 8-byte long, another field), every version of a review lands on one partition of the valid
and fraud topics (Kafka's murmur2 of the key), where the aggregator's state for it lives.
Unreadable records go to the dead-letter topic in the same transaction, with the reason and their
source coordinates in headers; the loop goes on.

Every routed record carries its position in the input (`streaming.core.source_position`), which
orders versions of a review with equal `modified` downstream; a position header already on an
input record is replaced.

Topics and group are declared in `streaming.pipeline.FRAUD_FILTER` (overridable as
`FRAUD_FILTER_<PORT>_TOPIC`, `FRAUD_FILTER_GROUP_ID`). Environment (defaults):
KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL (see streaming.settings), WORKER_INSTANCE [0],
COMMIT_EVERY_RECORDS [20000], COMMIT_INTERVAL_MS [100], SESSION_TIMEOUT_MS [10000],
HEALTH_PORT [the declared port + instance; 0 picks a free port], FRAUD_MODEL [the hash rule].
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from confluent_kafka import Message

from streaming.core import review_bytes, source_position
from streaming.core.fraud import FraudModel, load_model
from streaming.core.fraud_routing import DEAD, FRAUD, route
from streaming.pipeline import FRAUD_FILTER
from streaming.serde import Registry, ReviewWriters, local_schema
from streaming.settings import PipelineSettings, Settings, load, schemas_dir
from streaming.workers.clients import LoopConfig
from streaming.workers.eos import EosWorker
from streaming.workers.process import StopFlag, run_worker


@dataclass(frozen=True)
class FraudTopics:
    input: str
    valid: str
    fraud: str
    dead_letter: str

    @classmethod
    def from_env(cls) -> FraudTopics:
        return cls(**FRAUD_FILTER.topics())


class FraudFilter(EosWorker):
    name = "fraud-filter"
    # Its copies are whole reviews: a producer may have sent one compressed to fit the input's
    # limit (a 3 MB text, say), and the copy must fit the same limit (plus headroom). lz4: the
    # cheapest codec per byte, on batches of mostly empty-text reviews.
    compression = "lz4"

    def __init__(
        self,
        settings: Settings,
        loop: LoopConfig,
        topics: FraudTopics,
        model: FraudModel,
        stop: StopFlag,
    ) -> None:
        super().__init__(settings, loop, stop, [topics.input], topics.dead_letter)
        self.topics = topics
        self.model = model
        self.review_schema = local_schema("review.avsc")
        self.registry = Registry(settings.schema_registry_url)
        self.resolve = ReviewWriters(self.registry)

    def process(self, msgs: list[Message]) -> None:
        values = [msg.value() for msg in msgs]
        codes, problems, ids = route(values, self.resolve, self.model, self.review_schema)
        produce = self.producer.produce
        topics = (self.topics.valid, self.topics.fraud)
        header, position, replace = (
            source_position.HEADER,
            source_position.encode,
            source_position.replace,
        )
        for msg, value, code, review_id in zip(
            msgs, values, codes.tolist(), ids.tolist(), strict=True
        ):
            if code == DEAD:
                continue
            claimed = msg.headers()  # usually none: the position is then the only header
            headers = (
                [(header, position(msg.partition(), msg.offset()))]  # type: ignore[arg-type]  # a consumed record's is set
                if claimed is None
                else replace(claimed, msg.partition(), msg.offset())  # type: ignore[arg-type]  # a consumed record's is set
            )
            key = b"%d" % review_id  # the review's identity, not the producer's key
            produce(topics[code], value, key, headers=headers, timestamp=msg.timestamp()[1])  # type: ignore[arg-type]  # invariant list (stub)
        for i, problem in problems.items():
            self.dead_letter(msgs[i], str(problem), problem.kind)
        n_fraud = int((codes == FRAUD).sum())
        self.metrics.records_out[self.topics.fraud] += n_fraud
        self.metrics.records_out[self.topics.valid] += len(msgs) - n_fraud - len(problems)


def build(settings: Settings, stop: StopFlag) -> FraudFilter:
    """The fraud filter as its settings declare it (a bad FRAUD_MODEL: ValueError)."""
    model = load_model(load(PipelineSettings).fraud_model, schemas_dir())
    return FraudFilter(
        settings, LoopConfig.from_env(FRAUD_FILTER), FraudTopics.from_env(), model, stop
    )


def main() -> int:
    return run_worker(FRAUD_FILTER, build, warm_up=review_bytes.warm_up)


if __name__ == "__main__":
    sys.exit(main())
