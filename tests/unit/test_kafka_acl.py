"""Applying the declared access (streaming/kafka_acl.py) against a scripted admin client: the
missing grants are made, the ones no longer declared removed on the pipeline's resources only,
credentials set from generated 0600 files, and a cluster without an authorizer left alone."""

from __future__ import annotations

import stat
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streaming.access import PRINCIPALS
from streaming.kafka_acl import apply_access, apply_acls, desired_bindings


def done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def failed(exc: BaseException) -> Future:
    f: Future = Future()
    f.set_exception(exc)
    return f


class ScriptedAdmin:
    def __init__(self, held: list[AclBinding], authorizer: bool = True) -> None:
        self.held = list(held)
        self.authorizer = authorizer
        self.upserts: list[Any] = []

    def describe_acls(self, query: Any) -> Future:
        if not self.authorizer:
            return failed(KafkaException(KafkaError(KafkaError.SECURITY_DISABLED)))
        return done([b for b in self.held if b.principal == query.principal])

    def create_acls(self, bindings: list[AclBinding]) -> dict:
        self.held += bindings
        return {b: done(None) for b in bindings}

    def delete_acls(self, filters: list[Any]) -> dict:
        gone = {(f.restype, f.name, f.principal, f.operation) for f in filters}
        self.held = [
            b for b in self.held if (b.restype, b.name, b.principal, b.operation) not in gone
        ]
        return {f: done([]) for f in filters}

    def alter_user_scram_credentials(self, upserts: list[Any]) -> dict:
        self.upserts += upserts
        return {u.user: done(None) for u in upserts}


def grant(name: str, principal: str, op: str = "WRITE") -> AclBinding:
    return AclBinding(
        ResourceType.TOPIC,
        name,
        ResourcePatternType.LITERAL,
        f"User:{principal}",
        "*",
        AclOperation[op],
        AclPermissionType.ALLOW,
    )


def test_a_fresh_cluster_gets_every_declared_grant_and_a_second_run_changes_nothing() -> None:
    admin = ScriptedAdmin([])
    assert apply_acls(admin)[0].startswith(f"ACLs: {len(desired_bindings())} created, 0 deleted")
    assert apply_acls(admin) == [f"ACLs as declared for {len(PRINCIPALS)} principals"]


def test_a_grant_no_longer_declared_goes_but_one_elsewhere_stays() -> None:
    stale = grant("long-term-stats", "producer")  # a pipeline topic: the declaration's
    elsewhere = grant("_connect-configs", "connect")  # Connect's own topic: the stack's
    admin = ScriptedAdmin([*desired_bindings(), stale, elsewhere])
    assert apply_acls(admin) == [f"ACLs: 0 created, 1 deleted ({len(PRINCIPALS)} principals)"]
    assert stale not in admin.held and elsewhere in admin.held


def test_a_cluster_without_an_authorizer_is_said_and_left_alone() -> None:
    admin = ScriptedAdmin([], authorizer=False)
    assert "no authorizer" in apply_acls(admin)[0]
    assert admin.held == []


def test_credentials_come_from_generated_private_files_that_are_kept(tmp_path: Path) -> None:
    admin = ScriptedAdmin([])
    apply_access(admin, str(tmp_path / "kafka"), "SCRAM-SHA-512")
    files = {p.name: p for p in (tmp_path / "kafka").iterdir()}
    assert set(files) == {p.name for p in PRINCIPALS}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    assert stat.S_IMODE((tmp_path / "kafka").stat().st_mode) == 0o700
    first = {name: p.read_text() for name, p in files.items()}
    apply_access(admin, str(tmp_path / "kafka"), "SCRAM-SHA-512")
    assert {name: p.read_text() for name, p in files.items()} == first
    assert {u.user for u in admin.upserts} == {p.name for p in PRINCIPALS}
    assert apply_access(ScriptedAdmin([]), None, "SCRAM-SHA-512")[0].startswith("ACLs")
