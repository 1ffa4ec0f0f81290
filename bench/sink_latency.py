"""Latency of the reviews sink: from handing a review to the producer to its row in PostgreSQL.

The committed `udemy-reviews` connector config, re-pointed at a temporary topic and a table in a
temporary schema, receives reviews at a steady rate from the ingestion producer (as POST
/reviews sends them: idempotent, acks=all, linger 1 ms). The table gets one extra column,
`sunk_at timestamptz DEFAULT clock_timestamp()`, which PostgreSQL fills when the sink inserts the
row; latency = sunk_at - the wall-clock time the review was produced (one host, one clock).
With --transaction-ms the producer writes in transactions committed that often (as the stream
workers write), and latency counts from the commit, when read_committed makes records visible.

    make up && .venv/bin/python bench/sink_latency.py [--rate 1000] [--seconds 30]
        [--transaction-ms 100] [--set consumer.override.fetch.max.wait.ms=500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import remove_connector, review, write_result
from streaming.ingest.producer import ReviewProducer
from streaming.pipeline import REVIEWS_SINK
from streaming.settings import Settings, registry_client_config
from streaming.sink.connect import ConnectClient
from streaming.sink.render import render_connector

POLL_S = 0.2


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s:.0f}s")
        time.sleep(POLL_S)


def run(
    settings: Settings, rate: int, seconds: float, transaction_ms: int, overrides: dict[str, str]
) -> dict:
    tag = uuid.uuid4().hex[:8]
    topic, schema, name = f"bench-sink-{tag}", f"bench_sink_{tag}", f"bench-sink-{tag}"
    table = f"{schema}.{REVIEWS_SINK.table}"
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    engine = sa.create_engine(settings.database_url)
    connect = ConnectClient(settings.connect_url, auth=settings.connect_auth())
    txn = {"transactional.id": f"bench-sink-{tag}"} if transaction_ms else {}
    producer = ReviewProducer(settings, topic=topic, **{"linger.ms": 1, **txn})
    if transaction_ms:
        producer.producer.init_transactions(30)

    def count() -> int:
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                return 0
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()

    try:
        url, password_file = settings.sink_login(REVIEWS_SINK.connector)  # the sink's own role
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            conn.execute(
                sa.text(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {sa.make_url(url).username}")
            )
        config = render_connector(
            REVIEWS_SINK.connector,
            url,
            topic=topic,
            table=table,
            overrides=overrides,
            password_file=password_file,
        )
        connect.deploy(name, config)
        connect.wait_for(name, lambda s: s.running, 120)
        if transaction_ms:
            producer.producer.begin_transaction()
        producer.produce(review(0))  # warm-up: the sink creates the table
        if transaction_ms:
            producer.producer.commit_transaction(30)
        assert producer.flush(30) == 0
        wait_until(lambda: count() == 1, 60, "warm-up row")
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"ALTER TABLE {table} ADD sunk_at timestamptz DEFAULT clock_timestamp()")
            )

        n = int(rate * seconds)
        sent_at: dict[int, float] = {}
        in_txn: list[int] = []
        start = time.monotonic()
        next_commit = start + transaction_ms / 1000
        if transaction_ms:
            producer.producer.begin_transaction()
        for i in range(1, n + 1):
            due = start + i / rate
            while (now := time.monotonic()) < due:
                producer.poll(min(due - now, 0.005))
            r = review(i)
            sent_at[r["id"]] = time.time()
            producer.produce(r)
            producer.poll(0)
            in_txn.append(r["id"])
            if transaction_ms and (now >= next_commit or i == n):
                producer.producer.commit_transaction(30)
                committed = time.time()
                sent_at.update(dict.fromkeys(in_txn, committed))
                in_txn.clear()
                next_commit = now + transaction_ms / 1000
                if i < n:
                    producer.producer.begin_transaction()
        assert producer.flush(60) == 0
        wait_until(lambda: count() == n + 1, 120, f"{n} rows")
        with engine.connect() as conn:
            rows: Sequence[sa.Row[Any, Any]] = conn.execute(
                sa.text(f"SELECT id, extract(epoch FROM sunk_at) FROM {table} WHERE id <> :w"),
                {"w": review(0)["id"]},
            ).all()
    finally:
        remove_connector(connect, admin, name)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
        admin.delete_topics([topic])
        registry = SchemaRegistryClient(registry_client_config(settings.schema_registry_url))
        registry.delete_subject(f"{topic}-value")
        registry.delete_subject(f"{topic}-value", permanent=True)
    latencies = sorted((float(sunk) - sent_at[rid]) * 1000 for rid, sunk in rows)
    return {
        "reviews": n,
        "rate_per_s": rate,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p90_ms": round(percentile(latencies, 0.90), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "p999_ms": round(percentile(latencies, 0.999), 1),
        "max_ms": round(latencies[-1], 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="reviews per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--transaction-ms", type=int, default=0, help="commit interval (0: none)")
    parser.add_argument(
        "--set", action="append", default=[], help="connector setting override KEY=VALUE"
    )
    parser.add_argument("--no-save", action="store_true", help="print only (for trying settings)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    figures = run(Settings.from_env(), args.rate, args.seconds, args.transaction_ms, overrides)
    figures.update(transaction_ms=args.transaction_ms, overrides=overrides)
    print(figures)
    if not args.no_save:
        write_result(
            "sink_latency",
            figures,
            f"bench/sink_latency.py --rate {args.rate} --seconds {args.seconds:g}"
            f" --transaction-ms {args.transaction_ms}",
        )


if __name__ == "__main__":
    main()
