"""Declarative set-up of the pipeline's topics and schemas, idempotent (`reviews bootstrap`).

Topics come from the pipeline's declaration (`streaming.pipeline.TOPICS`): missing ones are
created, configs of existing ones are brought in line. Every topic's record limit
(max.message.bytes) is sized from the input's, read from the broker, so whatever a stage makes
of the largest record the input accepts can be written. Partitions: a topic declared `may_grow`
(the input, the dead letters) is raised to the declared count when below it and left alone
above it; any other topic holds state by partition, so a count other than the declared one is
refused with the way out (`reviews rebuild-stream` for the stream's derived topics), never
changed in place. Value schemas are registered under
`<topic>-value` with the compatibility each topic declares (FULL_TRANSITIVE for the input, which
other producers write; BACKWARD for ours), so an incompatible change is refused by the registry
before any producer can write it; a registration the registry refuses (ours, against a subject
another producer evolved) is `SchemaRefused` with the registry's reason. Access: every
principal's credentials and ACLs as `streaming.access` declares them (`streaming.kafka_acl`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.kafka_acl import apply_access
from streaming.pipeline import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INPUT,
    TOPICS,
    TopicSpec,
    max_message_bytes,
)
from streaming.settings import KafkaSettings, Settings, load, registry_client_config

log = logging.getLogger(__name__)

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"


def load_topic_specs(input_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[TopicSpec]:
    """The declared topics, each record limit sized from the input's (`max_message_bytes`)."""
    return [
        replace(
            spec,
            config={
                **spec.config,
                "max.message.bytes": str(max_message_bytes(spec, input_max_bytes)),
            },
        )
        if spec.name != INPUT.name
        else spec
        for spec in TOPICS
    ]


def input_max_bytes(admin: AdminClient, timeout_s: float = 30) -> int:
    """The input topic's max.message.bytes as the broker applies it (its own or the broker's
    default), read after the input exists."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, INPUT.name)
    config = admin.describe_configs([resource])[resource].result(timeout_s)
    return int(config["max.message.bytes"].value)


def wait_for_kafka(admin: AdminClient, timeout_s: float) -> None:
    """Poll cluster metadata until the broker answers or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Kafka did not answer within {timeout_s:.0f}s: {exc}") from exc


def ensure_topics(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 60) -> list[str]:
    """Create, reconfigure or widen topics to match the specs; return what was done."""
    wait_for_kafka(admin, timeout_s)
    existing = admin.list_topics(timeout=timeout_s).topics
    actions: list[str] = []

    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=s.config)
                for s in missing
            ],
            operation_timeout=timeout_s,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                actions.append(f"created {name}")
            except KafkaException as exc:  # a concurrent bootstrap may have created it
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
    present = [s for s in specs if s.name in existing]

    check_partition_counts({s.name: len(existing[s.name].partitions) for s in present}, present)
    grow = [
        NewPartitions(s.name, s.partitions)
        for s in present
        if s.may_grow and len(existing[s.name].partitions) < s.partitions
    ]
    if grow:
        for name, fut in admin.create_partitions(grow, operation_timeout=timeout_s).items():
            fut.result()
            actions.append(f"raised partitions of {name}")

    if present:
        resources = [
            ConfigResource(
                ConfigResource.Type.TOPIC,
                s.name,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                    for k, v in s.config.items()
                ],
            )
            for s in present
            if s.config
        ]
        described = admin.describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, r.name) for r in resources]
        )
        stale = []
        for res, fut in described.items():
            current = fut.result()
            spec = next(s for s in present if s.name == res.name)
            if any(current[k].value != v for k, v in spec.config.items()):
                stale.append(next(r for r in resources if r.name == res.name))
        if stale:
            for res, fut in admin.incremental_alter_configs(stale).items():
                fut.result()
                actions.append(f"updated config of {res.name}")
    return actions


class TopicLayoutError(RuntimeError):
    """A topic that holds state by partition has another partition count than declared."""


def check_partition_counts(counts: dict[str, int], specs: list[TopicSpec]) -> None:
    """Refuse (TopicLayoutError) what would re-partition state: a topic not declared `may_grow`
    whose count is not the declared one."""
    wrong = [
        f"{s.name} has {counts[s.name]} partitions, declared {s.partitions}"
        for s in specs
        if not s.may_grow and s.name in counts and counts[s.name] != s.partitions
    ]
    if wrong:
        raise TopicLayoutError(
            "; ".join(wrong) + ": these topics hold state by partition and are not re-partitioned "
            "in place (keys would move away from their state). For the stream's derived topics, "
            "stop the workers and run `reviews rebuild-stream`, which recreates them as declared "
            "and replays udemy-reviews; a statistics topic must be deleted and re-published."
        )


class SchemaRefused(RuntimeError):
    """The registry refuses one of our schemas under its subject's compatibility level."""


def register_schemas(
    registry: SchemaRegistryClient, specs: list[TopicSpec], schemas_dir: Path = SCHEMAS_DIR
) -> dict[str, tuple[int, str]]:
    """Register each topic's value schema with its declared compatibility; subject -> (id,
    level). SchemaRefused, with the registry's reason, for one it will not take."""
    ids: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if not spec.value_schema:
            continue
        subject = f"{spec.name}-value"
        registry.set_compatibility(subject_name=subject, level=spec.compatibility)
        schema_str = (schemas_dir / spec.value_schema).read_text()
        try:
            schema_id = registry.register_schema(subject, Schema(schema_str, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code != 409:
                raise
            raise SchemaRefused(
                f"the registry refuses {spec.value_schema} under {subject} "
                f"({spec.compatibility}): {exc.error_message}"
            ) from exc
        ids[subject] = (schema_id, spec.compatibility)
    return ids


def declared_topics(admin: AdminClient, timeout_s: float = 60) -> tuple[list[str], list[TopicSpec]]:
    """The input first (as declared, or as it is: another deployment may have made it), then
    every topic as declared, its record limit sized from the input's."""
    actions = ensure_topics(admin, [INPUT], timeout_s)
    return actions, load_topic_specs(input_max_bytes(admin, timeout_s))


def bootstrap(
    settings: Settings, timeout_s: float = 60
) -> tuple[list[str], dict[str, tuple[int, str]]]:
    """Topics then schemas: what `make up` runs before any worker starts."""
    admin = AdminClient(settings.kafka_config())
    actions, specs = declared_topics(admin, timeout_s)
    actions += ensure_topics(admin, [s for s in specs if s.name != INPUT.name], timeout_s)
    kafka = load(KafkaSettings)
    mechanism = str(settings.kafka_extra.get("sasl.mechanism", "SCRAM-SHA-512")).upper()
    mechanism = mechanism if mechanism.startswith("SCRAM-") else "SCRAM-SHA-512"
    actions += apply_access(admin, kafka.credentials_dir, mechanism, timeout_s)
    registry = SchemaRegistryClient(registry_client_config(settings.schema_registry_url))
    ids = register_schemas(registry, specs)
    return actions, ids
