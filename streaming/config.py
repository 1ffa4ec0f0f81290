"""Settings from environment variables, with the defaults of the local stack (`make up`).

Every service reads the same names (the operating contract): pointing the pipeline at an
existing Kafka, registry, Connect or PostgreSQL is a matter of setting these variables.

The variables, their defaults and meanings are declared once, in `streaming.settings` (one
class per component); docs/configuration.md is generated from them. This module turns them
into what the clients need: librdkafka and registry configs, credentials read from their
files, the trusted Host names.
"""

from __future__ import annotations

import shlex
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streaming.settings import (
    ConnectSettings,
    DatabaseSettings,
    HttpSettings,
    KafkaSettings,
    LoopSettings,
    PipelineSettings,
    RegistrySettings,
    load,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A setting that cannot be used (a malformed value, a missing or unreadable secret file):
    the message names the variable, never a secret's value. Processes print it and exit."""


def _extra_kafka_config(raw: str) -> dict[str, str]:
    """Parse `key=value;key=value` (SASL/TLS settings for a managed cluster). An error names
    the entry by its position and key only: its value may be a password."""
    out: dict[str, str] = {}
    for n, item in enumerate(filter(None, (part.strip() for part in raw.split(";"))), 1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            shown = f"key {key.strip()!r}" if sep else "no '='"
            raise ConfigError(f"KAFKA_SECURITY_CONFIG entry {n}: expected key=value ({shown})")
        out[key.strip()] = value.strip()
    return out


SECRET_KAFKA_KEYS = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)
"""librdkafka settings that hold a secret: never a value of KAFKA_SECURITY_CONFIG (which sits in
`.stack/env` and every process's environment), only read from a file."""


def kafka_security(kafka: KafkaSettings) -> dict[str, str]:
    """The librdkafka security settings of a process: KAFKA_SECURITY_CONFIG, its principal
    (KAFKA_SASL_USERNAME over `sasl.username`) and the password read from
    KAFKA_SASL_PASSWORD_FILE. A secret given as a value is refused by its key."""
    extra = _extra_kafka_config(kafka.security_config)
    secret = sorted(SECRET_KAFKA_KEYS & extra.keys())
    if secret:
        raise ConfigError(
            f"KAFKA_SECURITY_CONFIG: {', '.join(secret)} must not be a value there (every "
            "process's environment holds it); put the password in a file of mode 0600 and set "
            "KAFKA_SASL_PASSWORD_FILE to it"
        )
    if kafka.sasl_username:
        extra["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password_file:
        extra["sasl.password"] = read_secret(kafka.sasl_password_file, "KAFKA_SASL_PASSWORD_FILE")
    elif "sasl.username" in extra:
        raise ConfigError(
            f"KAFKA_SECURITY_CONFIG names the SASL user {extra['sasl.username']!r}: "
            "KAFKA_SASL_PASSWORD_FILE must name the file of its password"
        )
    return extra


def read_secret(path: str, variable: str) -> str:
    """The secret in the file `path` names (its first line); errors name the variable and the
    file, never the content."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{variable}: {path} is empty")
    return value


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5433/reviews"
    connect_url: str = "http://127.0.0.1:8083"
    kafka_extra: dict[str, str] = field(default_factory=dict, repr=False)
    database_password_file: str | None = None
    database_sink_secrets_dir: str | None = None
    connect_user: str | None = None
    connect_password_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From the variables of `streaming.settings` (Kafka, registry, database, Connect)."""
        kafka, registry = load(KafkaSettings, env), load(RegistrySettings, env)
        database, connect = load(DatabaseSettings, env), load(ConnectSettings, env)
        return cls(
            kafka_bootstrap_servers=kafka.bootstrap_servers,
            schema_registry_url=registry.url,
            database_url=database.url,
            connect_url=connect.url,
            kafka_extra=kafka_security(kafka),
            database_password_file=database.password_file,
            database_sink_secrets_dir=database.sink_secrets_dir,
            connect_user=connect.user,
            connect_password_file=connect.password_file,
        )

    def connect_auth(self) -> tuple[str, str] | None:
        """Connect's REST credentials (HTTP Basic), the password read from its file; None
        without CONNECT_USER."""
        if not self.connect_user:
            return None
        if not self.connect_password_file:
            raise ConfigError("CONNECT_USER is set: CONNECT_PASSWORD_FILE must name its password")
        return self.connect_user, read_secret(self.connect_password_file, "CONNECT_PASSWORD_FILE")

    def sink_login(self, connector: str) -> tuple[str, str | None]:
        """The database URL and password file the declared sink `connector` logs in with: its
        own role (`streaming.db_roles`) and that role's password in DATABASE_SINK_SECRETS_DIR;
        without that directory, DATABASE_URL's user and DATABASE_PASSWORD_FILE."""
        from sqlalchemy.engine import make_url

        from streaming.db_roles import sink_role
        from streaming.pipeline import SINKS

        if not self.database_sink_secrets_dir:
            return self.database_url, self.database_password_file
        spec = next((s for s in SINKS if s.connector == connector), None)
        if spec is None:
            raise ConfigError(f"{connector!r} is no sink of streaming/pipeline.py: no role")
        user = sink_role(spec)
        url = make_url(self.database_url).set(username=user).render_as_string(False)
        return url, str(Path(self.database_sink_secrets_dir) / user)

    def kafka_config(self, **overrides: object) -> dict[str, object]:
        """Base librdkafka config: bootstrap servers, security extras, then overrides."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_extra, **overrides}


DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_REQUEST_HEAD_BYTES = 16 * 1024
"""The most a request line and its headers may take on every HTTP service of ours (the APIs
and the workers' health/metrics servers): past it, 431 before any route or auth check runs,
and no server holds a client's megabytes of headers in memory."""


def bind_host(env: Mapping[str, str] | None = None) -> str:
    """BIND_HOST: the address every HTTP service of ours listens on (the APIs and the
    workers' health/metrics servers); loopback by default, `0.0.0.0` to serve a network."""
    return load(HttpSettings, env).bind_host


@dataclass(frozen=True)
class TrustedHosts:
    """The Host headers our HTTP services answer (ALLOWED_HOSTS, comma-separated; `*` any).

    A page on another site can resolve its own name to 127.0.0.1 (DNS rebinding) and then
    read a local service as "same origin"; its requests still carry its own name as Host, so
    a service that answers only its own names is out of that page's reach."""

    names: frozenset[str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrustedHosts:
        http = load(HttpSettings, env)
        names = {n.strip().lower() for n in http.allowed_hosts.split(",") if n.strip()}
        names = names or set(DEFAULT_ALLOWED_HOSTS)
        host = http.bind_host
        if host not in ("0.0.0.0", "::"):
            names.add(host.lower())  # a service always answers the address it listens on
        return cls(frozenset(names))

    def allows(self, host_header: str | None) -> bool:
        """A Host header (`name`, `name:port`, `[v6]:port`) is one of the names."""
        if "*" in self.names:
            return True
        if not host_header:
            return False
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        return host in self.names


REGISTRY_TIMEOUT_S = 10.0
"""Every registry request's timeout: both registry clients default to none, so a registry that
accepts a connection and never answers would hang a worker for good."""


def registry_auth(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The registry's credentials (HTTP Basic) of SCHEMA_REGISTRY_USER, the password read from
    SCHEMA_REGISTRY_PASSWORD_FILE; None without a user."""
    registry = load(RegistrySettings, env)
    if not registry.user:
        return None
    if not registry.password_file:
        raise ConfigError("SCHEMA_REGISTRY_USER is set: SCHEMA_REGISTRY_PASSWORD_FILE must be")
    return registry.user, read_secret(registry.password_file, "SCHEMA_REGISTRY_PASSWORD_FILE")


def registry_client_config(url: str, env: Mapping[str, str] | None = None) -> dict[str, object]:
    """confluent-kafka's SchemaRegistryClient settings: the URL, a timeout, the credentials of
    `registry_auth` as the client's own setting (not in the URL, where every error message
    would show them), and SCHEMA_REGISTRY_CA_FILE's CA, checked readable here."""
    config: dict[str, object] = {"url": url, "timeout": REGISTRY_TIMEOUT_S}
    auth = registry_auth(env)
    if auth:
        config["basic.auth.user.info"] = ":".join(auth)
    ca_file = load(RegistrySettings, env).ca_file
    if ca_file:
        tls_verify(ca_file, "SCHEMA_REGISTRY_CA_FILE")
        config["ssl.ca.location"] = ca_file
    return config


def tls_verify(ca_file: str | None, variable: str) -> ssl.SSLContext | bool:
    """An HTTP client's `verify`: a context that trusts only CA_FILE's certificates (a private
    CA, as `STACK_TLS=1 make up` makes), else True (the system's trust store). An unusable
    file is a ConfigError naming the variable."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{variable}: cannot use {ca_file} as a CA certificate: {exc}") from None


def registry_verify(env: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """How an HTTP client verifies the registry: SCHEMA_REGISTRY_CA_FILE's CA, if set."""
    return tls_verify(load(RegistrySettings, env).ca_file, "SCHEMA_REGISTRY_CA_FILE")


def dagster_verify(env: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """How an HTTP client verifies Dagster's webserver: DAGSTER_CA_FILE's CA, if set."""
    return tls_verify(load(PipelineSettings, env).dagster_ca_file, "DAGSTER_CA_FILE")


def dagster_auth(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The login of Dagster's webserver behind the stack's proxy (HTTP Basic): DAGSTER_USER,
    the password read from DAGSTER_PASSWORD_FILE; None without a user."""
    pipeline = load(PipelineSettings, env)
    if not pipeline.dagster_user:
        return None
    if not pipeline.dagster_password_file:
        raise ConfigError("DAGSTER_USER is set: DAGSTER_PASSWORD_FILE must name its password")
    return pipeline.dagster_user, read_secret(
        pipeline.dagster_password_file, "DAGSTER_PASSWORD_FILE"
    )


def redact_url(url: str) -> str:
    """`url` without the password of its user info (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of a shell environment file such as `.stack/env` (comments and blank
    lines skipped), values unquoted as the shell that sources it would (`'a;b'` is `a;b`)."""
    if not path.exists():
        return {}
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            words = shlex.split(value, comments=False, posix=True)
            out[key] = " ".join(words)
    return out


CLOCK_OFFSET_ENV = "CLOCK_OFFSET_S"
"""Seconds added to the wall clock of the processes that read it (the aggregator's recent
window, the batch side's "today"): how a test or a chaos run moves a restarted instance across
midnight without touching the machine's clock. Default 0."""


def clock_from_env(env: dict[str, str] | None = None) -> Callable[[], float]:
    """`time.time`, shifted by CLOCK_OFFSET_S when it is set (a clear error when it is not a
    number)."""
    offset = load(LoopSettings, env).clock_offset_s
    if not offset:
        return time.time
    return lambda: time.time() + offset
