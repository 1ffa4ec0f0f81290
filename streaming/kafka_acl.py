"""Applies the declared access (`streaming.access`) to a cluster, idempotently: part of
`reviews bootstrap`, run as the operator.

Credentials: with KAFKA_CREDENTIALS_DIR set (`make up` sets it), every principal's password is the
file `<dir>/<principal>` (generated on first use, mode 0600) and its SCRAM credential is set from
it on every run, so a changed file (a rotation) takes effect here; processes read their own file
when they start. Without it the cluster's users are someone else's business (a managed cluster).

ACLs: when the broker has an authorizer, each declared principal ends up with exactly its
declared grants on the pipeline's resources: missing ones are created, ones no longer declared
are deleted (grants elsewhere, such as Connect's own topics, are the stack's). A broker without
one answers SECURITY_DISABLED and nothing is changed (said in the result).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from streaming.access import PRINCIPALS, Principal, governed

SCRAM_ITERATIONS = 8192
"""Kafka's recommended minimum for SCRAM-SHA-512 (4096) doubled; verified once per connection."""


def password_file(directory: Path, name: str) -> Path:
    """`<directory>/<name>`, made on first use: 32 random bytes, base64url, mode 0600, in a
    directory of mode 0700. An existing file is kept (restarts see the same password)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    if not path.exists() or not path.read_text().strip():
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        tmp.replace(path)
    return path


def upsert_credentials(
    admin: AdminClient,
    directory: Path,
    mechanism: str = "SCRAM-SHA-512",
    principals: Iterable[Principal] = PRINCIPALS,
    timeout_s: float = 30,
) -> list[str]:
    """Every principal's SCRAM credential, from its password file."""
    kind = ScramMechanism[mechanism.replace("-", "_")]
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            p.name,
            ScramCredentialInfo(kind, SCRAM_ITERATIONS),
            password_file(directory, p.name).read_text().strip().encode(),
        )
        for p in principals
    ]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout_s)
    return [f"SCRAM credentials ({mechanism}) set for {len(upserts)} principals from {directory}"]


def desired_bindings(principals: Iterable[Principal] = PRINCIPALS) -> set[AclBinding]:
    """The ACLs the declaration asks for: ALLOW, from any host."""
    return {
        AclBinding(
            ResourceType[g.resource],
            g.name,
            ResourcePatternType[g.pattern],
            f"User:{p.name}",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for p in principals
        for g in p.grants
        for op in g.operations
    }


def _key(
    b: AclBinding,
) -> tuple[
    ResourceType | str | int,
    str,
    ResourcePatternType | str | int,
    str,
    str,
    AclOperation | str | int,
    AclPermissionType | str | int,
]:
    return (
        b.restype,
        b.name,
        b.resource_pattern_type,
        b.principal,
        b.host,
        b.operation,
        b.permission_type,
    )


def create(admin: AdminClient, bindings: list[AclBinding], timeout_s: float = 30) -> None:
    """Make these ACLs (waiting for each)."""
    if bindings:
        for future in admin.create_acls(bindings).values():
            future.result(timeout_s)


def revoke(admin: AdminClient, bindings: list[AclBinding], timeout_s: float = 30) -> None:
    """Delete exactly these ACLs (each matched by all its fields)."""
    if bindings:
        filters = [AclBindingFilter(*_key(b)) for b in bindings]
        for future in admin.delete_acls(filters).values():
            future.result(timeout_s)


def _resource(b: AclBinding) -> tuple[str, str, str]:
    return (
        b.restype.name,  # type: ignore[union-attr]  # AclBinding turned a str/int into the enum
        b.name,
        b.resource_pattern_type.name,  # type: ignore[union-attr]  # likewise
    )


def existing_bindings(
    admin: AdminClient, principals: Iterable[Principal], timeout_s: float
) -> list[AclBinding]:
    """The ACLs the cluster holds for the declared principals."""
    out: list[AclBinding] = []
    for p in principals:
        query = AclBindingFilter(
            ResourceType.ANY,
            None,  # type: ignore[arg-type]  # a filter's None matches any name (stub: str)
            ResourcePatternType.ANY,
            f"User:{p.name}",
            None,  # type: ignore[arg-type]  # ... and any host (stub: str)
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        out += admin.describe_acls(query).result(timeout_s)
    return out


def apply_acls(
    admin: AdminClient, principals: Iterable[Principal] = PRINCIPALS, timeout_s: float = 30
) -> list[str]:
    """Each declared principal's ACLs made exactly its declared grants."""
    principals = list(principals)
    try:
        have = {_key(b): b for b in existing_bindings(admin, principals, timeout_s)}
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.SECURITY_DISABLED:
            return [
                "ACLs not applied: the cluster has no authorizer (every client may do anything)"
            ]
        raise
    want = {_key(b): b for b in desired_bindings(principals)}
    ours = governed(tuple(principals))
    missing = [b for k, b in want.items() if k not in have]
    stale = [b for k, b in have.items() if k not in want and _resource(b) in ours]
    create(admin, missing, timeout_s)
    revoke(admin, stale, timeout_s)
    if not missing and not stale:
        return [f"ACLs as declared for {len(principals)} principals"]
    return [f"ACLs: {len(missing)} created, {len(stale)} deleted ({len(principals)} principals)"]


def apply_access(
    admin: AdminClient,
    credentials_dir: str | None,
    mechanism: str,
    timeout_s: float = 30,
) -> list[str]:
    """Credentials (when KAFKA_CREDENTIALS_DIR is set), then ACLs."""
    actions: list[str] = []
    if credentials_dir:
        actions += upsert_credentials(admin, Path(credentials_dir), mechanism, timeout_s=timeout_s)
    return actions + apply_acls(admin, timeout_s=timeout_s)
