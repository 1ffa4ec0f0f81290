"""Settings from environment variables, with the defaults of the local stack (`make up`).

Every service reads the same names (the operating contract): pointing the pipeline at an
existing Kafka, registry, Connect or PostgreSQL is a matter of setting these variables.

| variable                  | default                                               |
|---------------------------|-------------------------------------------------------|
| KAFKA_BOOTSTRAP_SERVERS   | 127.0.0.1:9092                                        |
| KAFKA_SECURITY_CONFIG     | (none) extra librdkafka settings, `key=value;key=value` |
| SCHEMA_REGISTRY_URL       | http://127.0.0.1:8081/apis/ccompat/v7                 |
| DATABASE_URL              | postgresql+psycopg2://postgres@127.0.0.1:5433/reviews |
| CONNECT_URL               | http://127.0.0.1:8083                                 |
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _extra_kafka_config(raw: str) -> dict[str, str]:
    """Parse `key=value;key=value` (SASL/TLS settings for a managed cluster)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"KAFKA_SECURITY_CONFIG: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5433/reviews"
    connect_url: str = "http://127.0.0.1:8083"
    kafka_extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        defaults = cls()
        return cls(
            kafka_bootstrap_servers=env.get(
                "KAFKA_BOOTSTRAP_SERVERS", defaults.kafka_bootstrap_servers
            ),
            schema_registry_url=env.get("SCHEMA_REGISTRY_URL", defaults.schema_registry_url),
            database_url=env.get("DATABASE_URL", defaults.database_url),
            connect_url=env.get("CONNECT_URL", defaults.connect_url),
            kafka_extra=_extra_kafka_config(env.get("KAFKA_SECURITY_CONFIG", "")),
        )

    def kafka_config(self, **overrides: object) -> dict[str, object]:
        """Base librdkafka config: bootstrap servers, security extras, then overrides."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_extra, **overrides}


CLOCK_OFFSET_ENV = "CLOCK_OFFSET_S"
"""Seconds added to the wall clock of the processes that read it (the aggregator's recent
window, the batch side's "today"): how a test or a chaos run moves a restarted instance across
midnight without touching the machine's clock. Default 0."""


def clock_from_env(env: dict[str, str] | None = None) -> Callable[[], float]:
    """`time.time`, shifted by CLOCK_OFFSET_S when it is set (a clear error when it is not a
    number)."""
    raw = (os.environ if env is None else env).get(CLOCK_OFFSET_ENV, "").strip()
    if not raw:
        return time.time
    try:
        offset = float(raw)
    except ValueError:
        raise SystemExit(f"{CLOCK_OFFSET_ENV} must be a number of seconds, got {raw!r}") from None
    return lambda: time.time() + offset
