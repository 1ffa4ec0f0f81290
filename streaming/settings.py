"""Every environment variable the pipeline's processes read: one pydantic-settings class per
component, with its default and what it is for.

The classes are the single place a variable is named; `streaming.config` and the processes
read them, and `docs/configuration.md` is generated from them (`reviews config-reference`; a
test fails when the two drift). A value that does not parse stops the process with the
variable's name and why (`SettingsError`), never a traceback. Secrets are never values here:
a `*_FILE` variable names the file that holds one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

LOCAL_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5433/reviews"


class SettingsError(SystemExit):
    """A variable that does not parse: its name and why, as the process's exit message."""


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
