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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reviews", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bootstrap", help="create/align topics and register schemas (idempotent)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for Kafka")
    p.set_defaults(func=_bootstrap)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per registry request is noise at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
