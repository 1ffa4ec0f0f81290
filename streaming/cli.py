"""The `reviews` command: operate the pipeline's streaming side from a shell."""

from __future__ import annotations

import argparse
import logging
import sys

from confluent_kafka import KafkaException
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.config import Settings


def _bootstrap(args: argparse.Namespace) -> int:
    from streaming.admin import bootstrap

    settings = Settings.from_env()
    try:
        actions, ids = bootstrap(settings, timeout_s=args.timeout)
    except (KafkaException, TimeoutError) as exc:
        print(f"bootstrap: Kafka at {settings.kafka_bootstrap_servers}: {exc}", file=sys.stderr)
        return 1
    except SchemaRegistryError as exc:
        print(f"bootstrap: registry {settings.schema_registry_url}: {exc}", file=sys.stderr)
        return 1
    for action in actions or ["topics already as declared"]:
        print(f"bootstrap: {action}")
    for subject, schema_id in ids.items():
        print(f"bootstrap: schema {subject} id={schema_id} (BACKWARD)")
    return 0


def _source_api(args: argparse.Namespace) -> int:
    from streaming.source.server import main as serve_source

    serve_source()
    return 0


def _api(args: argparse.Namespace) -> int:
    from streaming.api.app import main as serve_api

    serve_api()
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streaming.ingest.backfill import BackfillError, backfill_all, backfill_course
    from streaming.ingest.producer import ReviewProducer
    from streaming.source.client import Checkpoint, SourceError, UdemyClient

    settings = Settings.from_env()
    checkpoint = Checkpoint(args.checkpoint_dir) if args.checkpoint_dir else None
    try:
        with (
            UdemyClient.from_env() as client,
            tqdm(unit=" reviews", unit_scale=True, smoothing=0.1) as bar,
        ):
            producer = ReviewProducer(settings, topic=args.topic)
            options = {
                "source_client": client,
                "producer": producer,
                "checkpoint": checkpoint,
                "progress": bar.update,
                "concurrency": args.concurrency,
            }
            if args.course:
                results = [backfill_course(cid, **options) for cid in args.course]
            else:
                results = backfill_all(**options)
    except (SourceError, BackfillError, KafkaException) as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 1
    total = sum(r.reviews for r in results)
    seconds = sum(r.seconds for r in results)
    rejected = sum(r.rejected for r in results)
    print(
        f"backfill: {total:,} reviews of {len(results)} courses into {args.topic} in "
        f"{seconds:.1f} s ({total / max(seconds, 1e-9):,.0f}/s); {rejected} rejected "
        "(in the dead-letter topic, with reasons)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reviews", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bootstrap", help="create/align topics and register schemas (idempotent)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for Kafka")
    p.set_defaults(func=_bootstrap)
    p = sub.add_parser("source-api", help="serve the Udemy-compatible review API (sample data)")
    p.set_defaults(func=_source_api)
    p = sub.add_parser("api", help="serve the pipeline's HTTP API (POST /reviews, stats)")
    p.set_defaults(func=_api)
    p = sub.add_parser("backfill", help="every review of the source's courses into Kafka")
    p.add_argument("--course", type=int, action="append", help="a course id (repeatable)")
    p.add_argument("--topic", default="udemy-reviews")
    p.add_argument("--concurrency", type=int, default=4, help="pages fetched in parallel")
    p.add_argument("--checkpoint-dir", help="resume state directory (one file per course)")
    p.set_defaults(func=_backfill)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per registry request is noise at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
