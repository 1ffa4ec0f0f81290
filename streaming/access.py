"""Who may do what on Kafka: one principal per component, its grants derived from the pipeline's
declaration (`streaming.pipeline`), so a new topic, port or stage is granted where it is used.

`reviews bootstrap` applies them (`streaming.admin.apply_access`): a SCRAM credential per
principal, its password in a file of mode 0600 under KAFKA_CREDENTIALS_DIR, and these ACLs on a
cluster whose authorizer refuses what no ACL allows (`allow.everyone.if.no.acl.found=false`).
Pure data, no I/O: the names below are confluent-kafka's `ResourceType`, `ResourcePatternType`
and `AclOperation` members.

The operator (`reviews bootstrap`, `reviews rebuild-stream`, the tools, tests, benchmarks) is a
super user of the broker (`super.users`, the stack's), so it has no grants here. Every other
principal gets only what its component does; anything else is refused, an anonymous client too.
The declaration governs the pipeline's resources (its topics, groups and transactional ids):
grants elsewhere (Connect's own topics, which the stack grants) are not its to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from streaming.pipeline import (
    CONNECT_DEAD_LETTER,
    INPUT,
    SINKS,
    TOPICS,
    WORKERS,
    WorkerSpec,
)

Resource = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID"]
Pattern = Literal["LITERAL", "PREFIXED"]

OPERATOR = "operator"
"""The stack's administrative principal (a super user): never granted, never given to a service."""
PROBE_GROUP_PREFIXES = ("orchestration-", "topic-reader-")
"""Groups of the orchestrator's throw-away readers (offsets probes, whole-topic reads)."""


@dataclass(frozen=True)
class Grant:
    """Operations allowed on the resources a name (or a prefix of names) matches."""

    resource: Resource
    name: str
    operations: tuple[str, ...]
    pattern: Pattern = "LITERAL"


@dataclass(frozen=True)
class Principal:
    """A SCRAM user of the cluster (`User:<name>`) and what it may do."""

    name: str
    purpose: str
    grants: tuple[Grant, ...]


def _read(topic: str) -> Grant:
    return Grant("TOPIC", topic, ("READ", "DESCRIBE", "DESCRIBE_CONFIGS"))


def _write(topic: str) -> Grant:
    return Grant("TOPIC", topic, ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"))


def worker_grants(spec: WorkerSpec) -> tuple[Grant, ...]:
    """A stream worker: read its inputs, write its outputs, read and write its stores'
    changelogs, delete what it consumed of a topic it both writes and reads (the repartition
    purge), its consumer groups (the group and its restore readers share its id as prefix) and
    its transactional ids (`<group>-<instance>`)."""
    topics = spec.topics({})
    reads = {topics[p] for s in spec.stages for p in s.inputs}
    writes = {topics[p] for s in spec.stages for p in s.outputs}
    stores = {topics[s.store.changelog] for s in spec.stages if s.store}
    out: list[Grant] = []
    for topic in sorted(reads | writes | stores):
        ops = {"DESCRIBE", "DESCRIBE_CONFIGS"}
        ops |= {"READ"} if topic in reads or topic in stores else set()
        ops |= {"WRITE"} if topic in writes or topic in stores else set()
        ops |= {"DELETE"} if topic in reads and topic in writes else set()
        out.append(Grant("TOPIC", topic, tuple(sorted(ops))))
    out.append(Grant("GROUP", spec.group_id, ("READ", "DESCRIBE"), "PREFIXED"))
    out.append(Grant("TRANSACTIONAL_ID", f"{spec.group_id}-", ("WRITE", "DESCRIBE"), "PREFIXED"))
    return tuple(out)


def _connect_grants() -> tuple[Grant, ...]:
    """Kafka Connect's JDBC sinks: their groups (`connect-<connector>`: DELETE too, which
    Connect's offsets reset needs, `reviews connectors` redelivering a sink's topic), the topics
    they read and their dead-letter topic. Connect's own topics and group are the stack's to
    grant (it starts Connect before any of this is applied)."""
    return (
        Grant("GROUP", "connect-", ("READ", "DESCRIBE", "DELETE"), "PREFIXED"),
        *(_read(t) for t in sorted({s.topic for s in SINKS})),
        _write(CONNECT_DEAD_LETTER.name),
    )


def _orchestrator_grants() -> tuple[Grant, ...]:
    """Dagster (webserver, daemon, code server, runs): reads every topic it observes and
    reconciles, the committed offsets of every stage's group, its own probe groups, and writes
    the input (the batch backfill)."""
    groups = [w.group_id for w in WORKERS] + ["connect-"]
    return (
        *(_read(t.name) for t in TOPICS),
        _write(INPUT.name),
        *(Grant("GROUP", g, ("DESCRIBE",), "PREFIXED") for g in groups),
        *(Grant("GROUP", p, ("READ", "DESCRIBE"), "PREFIXED") for p in PROBE_GROUP_PREFIXES),
    )


PRINCIPALS: tuple[Principal, ...] = (
    Principal("ingest", "the pipeline API: writes reviews to the input", (_write(INPUT.name),)),
    Principal(
        "producer",
        "other systems that write the input directly (legacy producers, the chaos load, tests)",
        (_write(INPUT.name),),
    ),
    *(Principal(w.name, f"the {w.name} worker ({w.module})", worker_grants(w)) for w in WORKERS),
    Principal("connect", "Kafka Connect and its JDBC sinks", _connect_grants()),
    Principal("orchestrator", "Dagster: observes, reconciles, backfills", _orchestrator_grants()),
)


def governed(principals: tuple[Principal, ...] = PRINCIPALS) -> set[tuple[str, str, str]]:
    """(resource, name, pattern) of everything the declaration grants on, and every declared
    topic: `reviews bootstrap` removes grants there that are no longer declared."""
    out = {(g.resource, g.name, g.pattern) for p in principals for g in p.grants}
    return out | {("TOPIC", t.name, "LITERAL") for t in TOPICS}


IMPLIES_DESCRIBE = frozenset({"READ", "WRITE", "DELETE", "ALTER"})
"""Kafka's implied operations: any of these allows DESCRIBE (and ALTER_CONFIGS allows
DESCRIBE_CONFIGS)."""


def allows(who: Principal, resource: Resource, name: str, operation: str) -> bool:
    """Whether the declared grants let `who` do `operation` on `name`, as Kafka's authorizer
    decides it (a literal name, or a prefix of it; implied DESCRIBE)."""
    for g in who.grants:
        if g.resource != resource:
            continue
        if not (name == g.name if g.pattern == "LITERAL" else name.startswith(g.name)):
            continue
        ops = set(g.operations)
        if operation in ops or "ALL" in ops:
            return True
        if operation == "DESCRIBE" and ops & IMPLIES_DESCRIBE:
            return True
        if operation == "DESCRIBE_CONFIGS" and "ALTER_CONFIGS" in ops:
            return True
    return False


def principal(name: str) -> Principal:
    for p in PRINCIPALS:
        if p.name == name:
            return p
    raise KeyError(f"no principal {name!r} (declared: {', '.join(p.name for p in PRINCIPALS)})")


def login_env(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables that make a process log in as principal `name`: its password is the file
    `name` in KAFKA_CREDENTIALS_DIR. None without that directory (no managed credentials)."""
    directory = env.get("KAFKA_CREDENTIALS_DIR")
    if not directory:
        return {}
    return {"KAFKA_SASL_USERNAME": name, "KAFKA_SASL_PASSWORD_FILE": f"{directory}/{name}"}


def worker_login_env(module: str, env: Mapping[str, str]) -> dict[str, str]:
    """`login_env` of the worker whose module this is (a worker's principal is its name); none
    for a module no declared worker runs (it has no principal: it keeps the caller's login)."""
    for w in WORKERS:
        if w.module == module:
            return login_env(w.name, env)
    return {}
