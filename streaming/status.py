"""`reviews status`: the whole pipeline on one screen, from the outside, as an operator sees it.

Every service answers a short probe; every worker instance its `/health` (status, lag, last
commit, restore progress); Connect each sink's connector and tasks; Dagster the newest
reconciliation (over its GraphQL API: this module imports nothing of Dagster). Probes run with
short timeouts, so a service that hangs shows as DOWN instead of hanging the screen. Reading
the answers into lines is pure (`render`), the probes are the edge (`gather`).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx

from streaming.pipeline import SINKS, WORKERS
from streaming.settings import (
    PipelineSettings,
    Settings,
    SettingsError,
    SourceSettings,
    dagster_auth,
    dagster_verify,
    load,
    redact_url,
    registry_auth,
    registry_verify,
)

PROBE_TIMEOUT_S = 3.0
DagsterLogin = tuple[tuple[str, str] | None, ssl.SSLContext | bool]
"""How to reach Dagster's webserver: its Basic login (None: none asked) and how to verify it."""
RECONCILIATION_QUERY = """
{ assetOrError(assetKey: {path: ["reconciliation", "stream_vs_batch"]}) {
    ... on Asset { assetMaterializations(limit: 1) { timestamp runId
      metadataEntries { label
        ... on IntMetadataEntry { intValue }
        ... on TextMetadataEntry { text } } } } } }
"""


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    where: str
    detail: str = ""


@dataclass
class Report:
    services: list[Probe] = field(default_factory=list)
    instances: list[tuple[str, dict[str, Any] | None, str]] = field(default_factory=list)
    """(name, its /health answer or None, where)"""
    connectors: list[tuple[str, str]] = field(default_factory=list)
    """(name, one line per connector and task)"""
    reconciliation: dict[str, Any] | None = None
    reconciliation_error: str | None = None

    @property
    def healthy(self) -> bool:
        return (
            all(p.ok for p in self.services)
            and all(h is not None and h.get("status") in SERVING for _, h, _ in self.instances)
            and not any("FAILED" in line or "MISSING" in line for _, line in self.connectors)
        )


SERVING = frozenset({"ok", "restoring"})
"""Worker statuses that are healthy (or on their way: a restore); stalled and waiting are not."""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago"


def instance_line(name: str, health: Mapping[str, Any] | None, where: str, now: float) -> str:
    """One worker instance: status, lag, records, last commit, restore progress."""
    if health is None:
        return f"{name:<20} {'DOWN':<10} {where}"
    last = health.get("last_commit_time")
    parts = [
        f"lag {health.get('consumer_lag') if health.get('consumer_lag') is not None else '?'}",
        f"in {health.get('records_in', 0):,}",
        f"last commit {_age(None if last is None else now - last)}",
        f"partitions {len(health.get('assigned_partitions', []))}",
    ]
    progress = health.get("restore_progress") or {}
    for store, done in sorted(progress.items()):
        parts.append(f"restoring {store} {done['records']:,}/{done['of']:,}")
    if health.get("as_of_day") is not None:
        day = date(1970, 1, 1) + timedelta(days=int(health["as_of_day"]))
        parts.append(f"as-of day {day.isoformat()}")
    if health.get("reason") and health.get("status") not in ("ok", "restoring"):
        parts.append(f"why: {health['reason']}")
    return f"{name:<20} {health.get('status', '?'):<10} " + ", ".join(parts)


def reconciliation_line(found: Mapping[str, Any] | None, error: str | None, now: float) -> str:
    if error is not None:
        return f"reconciliation: unknown ({error})"
    if found is None:
        return "reconciliation: not run yet (Dagster: materialize reconciliation/stream_vs_batch)"
    meta = found["metadata"]
    mismatches = int(meta.get("mismatches", 0))
    verdict = "AGREE" if mismatches == 0 else f"DISAGREE: {mismatches} differences"
    courses = meta.get("courses", "?")
    return (
        f"reconciliation: {verdict} over {courses} courses, as of {meta.get('as_of_day', '?')}, "
        f"{_age(now - found['timestamp'])} (run {found['run_id']})"
    )


def render(report: Report, now: float | None = None) -> str:
    """The screen: services, worker instances, connectors, the reconciliation, a verdict."""
    now = time.time() if now is None else now
    lines = ["SERVICES"]
    lines += [
        f"  {p.name:<18} {'ok' if p.ok else 'DOWN':<10} {p.where}"
        + (f"  ({p.detail})" if p.detail else "")
        for p in report.services
    ]
    lines.append("WORKER INSTANCES")
    lines += [f"  {instance_line(n, h, w, now)}" for n, h, w in report.instances]
    lines.append("CONNECTORS")
    lines += [f"  {line}" for _, line in report.connectors]
    lines.append(reconciliation_line(report.reconciliation, report.reconciliation_error, now))
    lines.append("status: healthy" if report.healthy else "status: UNHEALTHY")
    return "\n".join(lines)


def _http_probe(
    name: str, url: str, auth: tuple[str, str] | None = None, verify: ssl.SSLContext | bool = True
) -> Probe:
    try:
        answer = httpx.get(url, timeout=PROBE_TIMEOUT_S, auth=auth, verify=verify)
    except httpx.HTTPError as exc:
        return Probe(name, False, redact_url(url), type(exc).__name__)
    detail = "" if answer.is_success else f"HTTP {answer.status_code}"
    if not answer.is_success and "json" in answer.headers.get("content-type", ""):
        body = answer.json()
        detail += f": {body.get('kafka') or body.get('detail') or ''}".rstrip(": ")
    return Probe(name, answer.is_success, redact_url(url), detail)


def _kafka_probe(settings: Settings) -> Probe:
    from confluent_kafka.admin import AdminClient

    try:
        # log_level 0: an unreachable broker is the answer, not a screen of librdkafka lines
        admin = AdminClient(settings.kafka_config(log_level=0))
        topics = admin.list_topics(timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # KafkaException, or a config error: both mean "not usable"
        return Probe("kafka", False, settings.kafka_bootstrap_servers, str(exc))
    return Probe("kafka", True, settings.kafka_bootstrap_servers, f"{len(topics.brokers)} brokers")


def _postgres_probe(settings: Settings) -> Probe:
    import sqlalchemy as sa

    where = redact_url(settings.database_url)
    engine = sa.create_engine(settings.database_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        return Probe("postgres", True, where)
    except sa.exc.SQLAlchemyError as exc:
        # the driver's own error, which a DBAPIError carries (other SQLAlchemyErrors have none)
        orig = getattr(exc, "orig", None)
        return Probe("postgres", False, where, str(orig or exc).splitlines()[0])
    finally:
        engine.dispose()


def _connect_probe(settings: Settings) -> Probe:
    try:
        auth = settings.connect_auth()
    except SettingsError as exc:  # its credentials unusable: shown on its line
        return Probe("connect", False, settings.connect_url, str(exc))
    return _http_probe("connect", f"{settings.connect_url}/", auth)


def _registry_probe(settings: Settings, env: Mapping[str, str] | None) -> Probe:
    try:
        auth, verify = registry_auth(env), registry_verify(env)
    except SettingsError as exc:
        return Probe("registry", False, redact_url(settings.schema_registry_url), str(exc))
    return _http_probe("registry", f"{settings.schema_registry_url}/subjects", auth, verify)


def _dagster_probe(dagster_url: str, login: DagsterLogin | SettingsError) -> Probe:
    if isinstance(login, SettingsError):
        return Probe("dagster", False, dagster_url, str(login))
    return _http_probe("dagster", f"{dagster_url}/server_info", *login)


def _instances(env: Mapping[str, str] | None) -> list[tuple[str, dict[str, Any] | None, str]]:
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    for worker in WORKERS:
        for i, name in enumerate(worker.instance_names(env)):
            url = f"http://127.0.0.1:{worker.instance_port(i, env)}/health"
            try:
                out.append((name, httpx.get(url, timeout=PROBE_TIMEOUT_S).json(), url))
            except (httpx.HTTPError, ValueError):
                out.append((name, None, url))
    return out


def _connectors(settings: Settings) -> list[tuple[str, str]]:
    from streaming.sink.connect import ConnectClient, ConnectError

    out = []
    with ConnectClient(
        settings.connect_url, timeout_s=PROBE_TIMEOUT_S, auth=settings.connect_auth()
    ) as client:
        for sink in SINKS:
            try:
                state = client.status(sink.connector)
            except ConnectError as exc:
                word = "MISSING" if exc.status == 404 else "UNKNOWN"
                out.append((sink.connector, f"{sink.connector:<24} {word} ({exc})"))
                continue
            tasks = ", ".join(f"task {t.id} {t.state}" for t in state.tasks) or "no tasks"
            out.append((sink.connector, f"{sink.connector:<24} {state.state:<10} {tasks}"))
    return out


def _reconciliation(dagster_url: str, login: DagsterLogin) -> dict[str, Any] | None:
    auth, verify = login
    answer = httpx.post(
        f"{dagster_url}/graphql",
        json={"query": RECONCILIATION_QUERY},
        auth=auth,
        verify=verify,
        timeout=PROBE_TIMEOUT_S * 3,
    )
    answer.raise_for_status()
    asset = answer.json()["data"]["assetOrError"]
    found = (asset or {}).get("assetMaterializations") or []
    if not found:
        return None
    newest = found[0]
    metadata = {
        e["label"]: e.get("intValue", e.get("text")) for e in newest.get("metadataEntries", [])
    }
    return {
        "timestamp": float(newest["timestamp"]) / 1000,
        "run_id": newest["runId"],
        "metadata": metadata,
    }


def gather(env: Mapping[str, str] | None = None) -> Report:
    """Ask every part (the edge: network calls with short timeouts)."""
    settings = Settings.from_env(env)
    pipeline, source_settings = load(PipelineSettings, env), load(SourceSettings, env)
    api, dagster = pipeline.pipeline_api_url, pipeline.dagster_url
    source = source_settings.api_url
    try:
        login: DagsterLogin | SettingsError = (dagster_auth(env), dagster_verify(env))
    except SettingsError as exc:  # its credentials unusable: shown on its line
        login = exc
    report = Report()
    report.services = [
        _postgres_probe(settings),
        _kafka_probe(settings),
        _registry_probe(settings, env),
        _connect_probe(settings),
        _http_probe("udemy-api", f"{source}/health"),
        _http_probe("pipeline-api", f"{api}/health"),
        _dagster_probe(dagster, login),
    ]
    report.instances = _instances(env)
    try:
        report.connectors = _connectors(settings)
    except Exception as exc:  # Connect down: shown, not raised
        report.connectors = [("connect", f"connectors unknown: {exc}")]
    if isinstance(login, SettingsError):
        report.reconciliation_error = f"Dagster at {dagster}: {login}"
        return report
    try:
        report.reconciliation = _reconciliation(dagster, login)
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        report.reconciliation_error = f"Dagster at {dagster}: {type(exc).__name__}"
    return report
