"""The settings model: every environment variable the pipeline's processes, the `reviews` CLI
and the Dagster resources read, with its default and what it is for, and what the clients make
of them (librdkafka and registry configs, credentials read from their files, trusted Hosts).

One pydantic-settings class per component (`KafkaSettings`, ...), gathered by `Settings`, the
deployment's settings as one value (`Settings.from_env()`); a declared worker's own variables
(`<WORKER>_INSTANCES`, ...) are read by `worker_settings`. This module is the only reader of the
process environment: the rest of the code takes a `Settings` (or a component) or calls `load`.
`docs/configuration.md` is generated from the classes (`reviews config-reference`; a test fails
when the two drift).

One error type, `SettingsError`: a value that does not parse or cannot be used (a malformed
value, a missing or unreadable secret file) names the variable and why, never a secret's value;
a process prints it as one line and exits 2 (`exit_on_bad_settings`). Secrets are never values
here: a `*_FILE` variable names the file that holds one.
"""

from __future__ import annotations

import os
import shlex
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from streaming.pipeline import WorkerSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5433/reviews"


class SettingsError(ValueError):
    """A setting that does not parse or cannot be used (a malformed value, a missing or
    unreadable secret file): the message names the variable, never a secret's value. Processes
    print it as one line and exit 2 (`exit_on_bad_settings`)."""


@contextmanager
def exit_on_bad_settings(prog: str) -> Iterator[None]:
    """A SettingsError inside becomes one line on stderr (`prog: why`) and exit status 2,
    never a traceback."""
    try:
        yield
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class _Component(BaseSettings):
    # validate_by_name: `load` hands values over by field name (the aliases are the variables)
    model_config = SettingsConfigDict(
        extra="ignore", case_sensitive=True, frozen=True, validate_by_name=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """What `load` hands over, nothing else: it alone reads the environment it is given
        (a test's or a child's), never the process's behind its back."""
        return (init_settings,)


class KafkaSettings(_Component):
    """Kafka, for every client of ours."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_")
    bootstrap_servers: str = Field("127.0.0.1:9092", description="the brokers")
    security_config: str = Field(
        "",
        description="extra librdkafka settings, `key=value;key=value` (`security.protocol`, "
        "`sasl.mechanism`, `sasl.username`, TLS); a password is refused here (it goes in "
        "KAFKA_SASL_PASSWORD_FILE); errors name an entry's key, never its value",
        repr=False,
    )
    sasl_username: str | None = Field(
        None,
        description="the principal this process logs in as (overrides KAFKA_SECURITY_CONFIG's "
        "`sasl.username`: each service of `make up` has its own)",
    )
    sasl_password_file: str | None = Field(
        None, description="a file holding that principal's SASL password (mode 0600)"
    )
    client_properties: str | None = Field(
        None,
        description="the same login for Java clients, a properties file (the Kafka tools' "
        "`--command-config`, the benchmarks' Java peers); `make up` writes the operator's",
    )
    credentials_dir: str | None = Field(
        None,
        description="`reviews bootstrap` only: where every principal's password file is (made "
        "on first use); its SCRAM credentials are set from them (unset: not managed here)",
    )


class RegistrySettings(_Component):
    """The schema registry (any registry with the Confluent REST API)."""

    model_config = SettingsConfigDict(env_prefix="SCHEMA_REGISTRY_")
    url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="the Confluent-compatible base URL"
    )
    user: str | None = Field(None, description="the registry's user (HTTP Basic)")
    password_file: str | None = Field(None, description="a file holding that user's password")
    ca_file: str | None = Field(
        None,
        description="a CA certificate (PEM) that an `https://` registry URL is verified by "
        "instead of the system's trust store (`STACK_TLS=1 make up` sets its local CA's)",
    )


class DatabaseSettings(_Component):
    """The pipeline's PostgreSQL database."""

    model_config = SettingsConfigDict(env_prefix="DATABASE_")
    url: str = Field(
        LOCAL_DATABASE_URL,
        description="SQLAlchemy URL, without a password (the Python clients log in through "
        "libpq's PGPASSFILE)",
    )
    password_file: str | None = Field(
        None,
        description="the password of DATABASE_URL's user, for a connector without a role of "
        "its own (a config-provider reference)",
    )
    roles_dir: str | None = Field(
        None,
        description="where `reviews db-roles` keeps each role's password (`<role>`, mode 0600, "
        "generated when missing) and each service's libpq password file (`<service>.pgpass`)",
    )
    sink_secrets_dir: str | None = Field(
        None,
        description="the sinks' roles' passwords (`<role>`), the one directory Connect's config "
        "provider may read (unset: the sinks log in as DATABASE_URL's user with "
        "DATABASE_PASSWORD_FILE)",
    )


class ConnectSettings(_Component):
    """Kafka Connect's REST API."""

    model_config = SettingsConfigDict(env_prefix="CONNECT_")
    url: str = Field("http://127.0.0.1:8083", description="the REST API")
    user: str | None = Field(None, description="the REST user (HTTP Basic)")
    password_file: str | None = Field(None, description="a file holding that user's password")


class HttpSettings(_Component):
    """Every HTTP service of ours: the APIs and the workers' health and metrics servers."""

    bind_host: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("BIND_HOST"),
        description="the address they listen on (`0.0.0.0`: every interface)",
    )
    allowed_hosts: str = Field(
        "127.0.0.1,localhost,::1",
        validation_alias=AliasChoices("ALLOWED_HOSTS"),
        description="the Host headers they answer, comma-separated (`*`: any); the bind "
        "address is always one",
    )


class ApiSettings(_Component):
    """The pipeline API (`reviews api`)."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_API_")
    port: int = Field(8000, description="its port")
    workers: int = Field(2, ge=1, description="uvicorn processes (ingestion scales by processes)")
    token_file: str | None = Field(
        None, description="the writer token of POST /reviews, a file of mode 0600 (required)"
    )


class SourceSettings(_Component):
    """The review source: the local Udemy-compatible server and its clients."""

    api_url: str = Field(
        "http://127.0.0.1:8010/api-2.0",
        validation_alias=AliasChoices("UDEMY_API_URL"),
        description="its base URL (clients)",
    )
    api_port: int = Field(
        8010, validation_alias=AliasChoices("UDEMY_API_PORT"), description="its port (server)"
    )
    client_id: str = Field(
        "local-client", validation_alias=AliasChoices("UDEMY_CLIENT_ID"), description="Basic user"
    )
    client_secret_file: str | None = Field(
        None,
        validation_alias=AliasChoices("UDEMY_CLIENT_SECRET_FILE"),
        description="a file holding the client secret (`UDEMY_CLIENT_SECRET` itself is read "
        "too, for a shell; default `local-secret`)",
    )
    rate_limit: float | None = Field(
        None,
        validation_alias=AliasChoices("UDEMY_RATE_LIMIT"),
        description="requests a second the server allows (none: unlimited)",
    )
    sample_seed: int | None = Field(
        None, validation_alias=AliasChoices("SAMPLE_SEED"), description="the sample's seed"
    )
    sample_size: int | None = Field(
        None,
        validation_alias=AliasChoices("SAMPLE_SIZE"),
        description="reviews in the sample (none: the bundled one)",
    )


class LoopSettings(_Component):
    """Every stream worker's loop (`streaming.workers.eos`)."""

    worker_instance: str = Field(
        "0",
        validation_alias=AliasChoices("WORKER_INSTANCE"),
        description="this instance's id: its transactional id and health port offset",
    )
    commit_every_records: int = Field(
        20_000,
        ge=1,
        validation_alias=AliasChoices("COMMIT_EVERY_RECORDS"),
        description="a transaction commits after this many records",
    )
    commit_interval_ms: int = Field(
        100,
        ge=1,
        validation_alias=AliasChoices("COMMIT_INTERVAL_MS"),
        description="... or this many milliseconds",
    )
    commit_min_ms: int = Field(
        10,
        ge=0,
        validation_alias=AliasChoices("COMMIT_MIN_MS"),
        description="... or, once there is nothing more to read, this many (at low rates a "
        "record waits for no timer; the floor bounds the transactions per second)",
    )
    session_timeout_ms: int = Field(
        10_000,
        validation_alias=AliasChoices("SESSION_TIMEOUT_MS"),
        description="the consumer group session timeout",
    )
    snapshot_interval_s: int = Field(
        30,
        ge=0,
        validation_alias=AliasChoices("SNAPSHOT_INTERVAL_S"),
        description="how often changed state is snapshotted (less often when a snapshot costs "
        "more than 1/20 of it; 0: never)",
    )
    state_dir: str | None = Field(
        None,
        validation_alias=AliasChoices("STATE_DIR"),
        description="where state snapshots are kept (a cache; default `.stack/state`)",
    )
    health_port: int | None = Field(
        None,
        validation_alias=AliasChoices("HEALTH_PORT"),
        description="this instance's health/metrics port (default: its worker's base + instance)",
    )
    repartition_purge_s: int = Field(
        30,
        ge=0,
        validation_alias=AliasChoices("REPARTITION_PURGE_S"),
        description="how often the aggregator purges its consumed repartition records",
    )
    log_level: str = Field(
        "INFO", validation_alias=AliasChoices("LOG_LEVEL"), description="the JSON logs' level"
    )
    clock_offset_s: float = Field(
        0.0,
        validation_alias=AliasChoices("CLOCK_OFFSET_S"),
        description="seconds added to the wall clock of the recent window and the batch side's "
        "today (tests and chaos move an instance across midnight)",
    )


class PipelineSettings(_Component):
    """The pipeline as a whole: its rule, its schemas, where its parts answer."""

    fraud_model: str | None = Field(
        None,
        validation_alias=AliasChoices("FRAUD_MODEL"),
        description="`package.module:factory` of another fraud model (default: the hash rule)",
    )
    schemas_dir: str | None = Field(
        None,
        validation_alias=AliasChoices("SCHEMAS_DIR"),
        description="where the `.avsc` files are (default: the repository's `schemas/`)",
    )
    pipeline_api_url: str = Field(
        "http://127.0.0.1:8000",
        validation_alias=AliasChoices("PIPELINE_API_URL"),
        description="the pipeline API, for its clients (`reviews stats`, `status`)",
    )
    dagster_url: str = Field(
        "http://127.0.0.1:3000",
        validation_alias=AliasChoices("DAGSTER_URL"),
        description="Dagster's webserver (the stack's proxy in front of it), for `reviews "
        "status`, the sample run and chaos",
    )
    dagster_user: str | None = Field(
        None,
        validation_alias=AliasChoices("DAGSTER_USER"),
        description="the user of Dagster's login (HTTP Basic at the proxy)",
    )
    dagster_password_file: str | None = Field(
        None,
        validation_alias=AliasChoices("DAGSTER_PASSWORD_FILE"),
        description="a file holding that user's password",
    )
    dagster_ca_file: str | None = Field(
        None,
        validation_alias=AliasChoices("DAGSTER_CA_FILE"),
        description="a CA certificate (PEM) that an `https://` DAGSTER_URL is verified by "
        "instead of the system's trust store (`STACK_TLS=1 make up` sets its local CA's)",
    )
    stack_dir: str = Field(
        ".stack",
        validation_alias=AliasChoices("STACK_DIR"),
        description="the local stack's state (pid files, logs, `env`; relative to the "
        "repository), where Dagster's worker runtime finds and starts the stream workers",
    )


COMPONENTS: tuple[type[_Component], ...] = (
    KafkaSettings,
    RegistrySettings,
    DatabaseSettings,
    ConnectSettings,
    HttpSettings,
    ApiSettings,
    SourceSettings,
    LoopSettings,
    PipelineSettings,
)
C = TypeVar("C", bound=_Component)


def env_name(model: type[_Component], name: str, info: FieldInfo) -> str:
    """The variable a field is read from."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def variable(model: type[_Component], field: str) -> str:
    """The variable `model`'s `field` is read from (for messages that name it)."""
    return env_name(model, field, model.model_fields[field])


def load(model: type[C], env: Mapping[str, str] | None = None) -> C:
    """The component's settings from `env` (default: the process environment); an empty
    variable counts as unset. SettingsError names the variable that does not parse."""
    env = os.environ if env is None else env
    given: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        raw = env.get(env_name(model, name, info), "")
        if raw.strip() != "":
            given[name] = raw.strip()
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        names = {env_name(model, n, i): n for n, i in model.model_fields.items()}
        names |= {n: n for n in model.model_fields}

        def variable(loc: object) -> str:
            name = names.get(str(loc), str(loc))
            return (
                env_name(model, name, model.model_fields[name])
                if name in model.model_fields
                else name
            )

        problems = "; ".join(f"{variable(e['loc'][0])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from None


@dataclass(frozen=True)
class WorkerSettings:
    """A declared worker's own variables (`streaming.pipeline.WorkerSpec` names them)."""

    instances: int
    health_port: int
    """Instance 0's; instance i answers on this + i."""
    group_id: str
    topics: dict[str, str]
    """Port -> topic."""


def worker_settings(spec: WorkerSpec, env: Mapping[str, str] | None = None) -> WorkerSettings:
    """`<PREFIX>_INSTANCES`, `<PREFIX>_HEALTH_PORT`, `<PREFIX>_GROUP_ID` and each port's
    `<PREFIX>_<PORT>_TOPIC` (default: the declaration's); an empty variable counts as unset."""
    env = os.environ if env is None else env
    instances = env.get(spec.instances_env) or str(spec.instances)
    if not instances.isdigit() or int(instances) < 1:
        raise SettingsError(f"{spec.instances_env} must be a positive number, got {instances!r}")
    port = env.get(spec.health_port_env) or str(spec.health_port)
    if not port.isdigit():
        raise SettingsError(f"{spec.health_port_env} must be a port number, got {port!r}")
    return WorkerSettings(
        instances=int(instances),
        health_port=int(port),
        group_id=env.get(spec.group_env) or spec.group_id,
        topics={p: env.get(spec.port_env(p)) or topic for p, topic in spec.ports.items()},
    )


class Settings(BaseModel):
    """The deployment's settings: every component's, read from one environment at once
    (`from_env`), so a variable that does not parse stops any process at its start. The
    addresses the clients use most have short names (`kafka_bootstrap_servers`, ...);
    `replace` re-points them (tests, benchmarks)."""

    model_config = ConfigDict(frozen=True)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    connect: ConnectSettings = Field(default_factory=ConnectSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    kafka_extra: dict[str, str] = Field(default_factory=dict, repr=False)
    """librdkafka's security settings (`kafka_security`), the password read from its file."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every component from `env` (default: the process environment), and the Kafka
        security settings with their password (a SettingsError names what is wrong)."""
        kafka = load(KafkaSettings, env)
        return cls(
            kafka=kafka,
            registry=load(RegistrySettings, env),
            database=load(DatabaseSettings, env),
            connect=load(ConnectSettings, env),
            http=load(HttpSettings, env),
            api=load(ApiSettings, env),
            source=load(SourceSettings, env),
            loop=load(LoopSettings, env),
            pipeline=load(PipelineSettings, env),
            kafka_extra=kafka_security(kafka),
        )

    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    @property
    def schema_registry_url(self) -> str:
        return self.registry.url

    @property
    def database_url(self) -> str:
        return self.database.url

    @property
    def connect_url(self) -> str:
        return self.connect.url

    def replace(
        self,
        *,
        kafka_bootstrap_servers: str | None = None,
        schema_registry_url: str | None = None,
        database_url: str | None = None,
        kafka_extra: dict[str, str] | None = None,
    ) -> Settings:
        """These settings with other addresses (None: keep the current one)."""

        def part(component: BaseSettings, **values: object) -> Any:
            given = {k: v for k, v in values.items() if v is not None}
            return component.model_copy(update=given) if given else component

        return self.model_copy(
            update={
                "kafka": part(self.kafka, bootstrap_servers=kafka_bootstrap_servers),
                "registry": part(self.registry, url=schema_registry_url),
                "database": part(self.database, url=database_url),
                "kafka_extra": self.kafka_extra if kafka_extra is None else kafka_extra,
            }
        )

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """Base librdkafka config: bootstrap servers, security extras, then overrides."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_extra, **overrides}

    def connect_auth(self) -> tuple[str, str] | None:
        """Connect's REST credentials (HTTP Basic), the password read from its file; None
        without CONNECT_USER."""
        connect = self.connect
        if not connect.user:
            return None
        if not connect.password_file:
            raise SettingsError("CONNECT_USER is set: CONNECT_PASSWORD_FILE must name its password")
        return connect.user, read_secret(connect.password_file, "CONNECT_PASSWORD_FILE")

    def sink_login(self, connector: str) -> tuple[str, str | None]:
        """The database URL and password file the declared sink `connector` logs in with: its
        own role (`streaming.db_roles`) and that role's password in DATABASE_SINK_SECRETS_DIR;
        without that directory, DATABASE_URL's user and DATABASE_PASSWORD_FILE."""
        from sqlalchemy.engine import make_url

        from streaming.db_roles import sink_role
        from streaming.pipeline import SINKS

        if not self.database.sink_secrets_dir:
            return self.database_url, self.database.password_file
        spec = next((s for s in SINKS if s.connector == connector), None)
        if spec is None:
            raise SettingsError(f"{connector!r} is no sink of streaming/pipeline.py: no role")
        user = sink_role(spec)
        url = make_url(self.database_url).set(username=user).render_as_string(False)
        return url, str(Path(self.database.sink_secrets_dir) / user)


REPO_SCHEMAS = REPO_ROOT / "schemas"


def schemas_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the `.avsc` files are: SCHEMAS_DIR, else the repository's `schemas/`."""
    override = load(PipelineSettings, env).schemas_dir
    return Path(override) if override else REPO_SCHEMAS


def clock_from_env(env: Mapping[str, str] | None = None) -> Callable[[], float]:
    """`time.time`, shifted by CLOCK_OFFSET_S when it is set (a clear error when it is not a
    number): how a test or a chaos run moves a restarted instance across midnight without
    touching the machine's clock."""
    offset = load(LoopSettings, env).clock_offset_s
    if not offset:
        return time.time
    return lambda: time.time() + offset


def _extra_kafka_config(raw: str) -> dict[str, str]:
    """Parse `key=value;key=value` (SASL/TLS settings for a managed cluster). An error names
    the entry by its position and key only: its value may be a password."""
    out: dict[str, str] = {}
    for n, item in enumerate(filter(None, (part.strip() for part in raw.split(";"))), 1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            shown = f"key {key.strip()!r}" if sep else "no '='"
            raise SettingsError(f"KAFKA_SECURITY_CONFIG entry {n}: expected key=value ({shown})")
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
        raise SettingsError(
            f"KAFKA_SECURITY_CONFIG: {', '.join(secret)} must not be a value there (every "
            "process's environment holds it); put the password in a file of mode 0600 and set "
            "KAFKA_SASL_PASSWORD_FILE to it"
        )
    if kafka.sasl_username:
        extra["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password_file:
        extra["sasl.password"] = read_secret(kafka.sasl_password_file, "KAFKA_SASL_PASSWORD_FILE")
    elif "sasl.username" in extra:
        raise SettingsError(
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
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise SettingsError(f"{variable}: {path} is empty")
    return value


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
        raise SettingsError("SCHEMA_REGISTRY_USER is set: SCHEMA_REGISTRY_PASSWORD_FILE must be")
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
    file is a SettingsError naming the variable."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"{variable}: cannot use {ca_file} as a CA certificate: {exc}"
        ) from None


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
        raise SettingsError("DAGSTER_USER is set: DAGSTER_PASSWORD_FILE must name its password")
    return pipeline.dagster_user, read_secret(
        pipeline.dagster_password_file, "DAGSTER_PASSWORD_FILE"
    )


def client_secret(env: Mapping[str, str] | None = None) -> str:
    """The source API's client secret: UDEMY_CLIENT_SECRET, else the content of
    UDEMY_CLIENT_SECRET_FILE (`make up` generates one, mode 0600), else the local default."""
    env = os.environ if env is None else env
    if env.get("UDEMY_CLIENT_SECRET"):
        return env["UDEMY_CLIENT_SECRET"]
    path = load(SourceSettings, env).client_secret_file
    if path:
        return read_secret(path, "UDEMY_CLIENT_SECRET_FILE")
    return DEFAULT_CLIENT_SECRET


DEFAULT_CLIENT_SECRET = "local-secret"


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


def reference_markdown() -> str:
    """docs/configuration.md: every variable, its default and what it is for, per component."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `streaming/settings.py` by `reviews config-reference`; do not edit.",
        "Every process reads these variables (`make up` writes the stack's into `.stack/env`);",
        "an empty value counts as unset.",
    ]
    for model in COMPONENTS:
        title = (model.__doc__ or model.__name__).splitlines()[0].rstrip(".")
        out += ["", f"## {title}", ""]
        out += ["| variable | default | what |", "|---|---|---|"]
        for name, info in model.model_fields.items():
            default = "" if info.default in (None, "") else f"`{info.default}`"
            what = info.description or ""
            out.append(f"| `{env_name(model, name, info)}` | {default} | {what} |")
    out += ["", *_worker_section()]
    return "\n".join(out) + "\n"


def _worker_section() -> list[str]:
    """The variables each declared worker adds (their names come from its declaration)."""
    from streaming.pipeline import WORKERS

    out = ["## Per stream worker (from `streaming/pipeline.py`)", ""]
    out += ["| variable | default | what |", "|---|---|---|"]
    for w in WORKERS:
        out.append(f"| `{w.instances_env}` | `{w.instances}` | how many instances run |")
        out.append(f"| `{w.health_port_env}` | `{w.health_port}` | instance i's health port - i |")
        out.append(f"| `{w.group_env}` | `{w.group_id}` | its consumer group |")
        for port, topic in w.ports.items():
            out.append(f"| `{w.port_env(port)}` | `{topic}` | its {port} topic |")
    return out
