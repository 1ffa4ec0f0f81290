"""How the batch's dbt project (dbt_like_sql/) is run, from a shell or from Dagster.

dbt reads its connection from libpq's variables (the project's profiles.yml), the pipeline from
DATABASE_URL; `dbt_env` derives the former from the latter, so both always talk to the same
database, and the password stays in PGPASSFILE. dbt is kept offline: no anonymous usage
statistics, no check for a newer version (both would try the internet, which our machines do not
have: they hang on DNS or fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from streaming.settings import REPO_ROOT, SettingsError

PROJECT_DIR = REPO_ROOT / "dbt_like_sql"
OFFLINE_ENV = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_VERSION_CHECK": "false"}


def libpq_env(database_url: str) -> dict[str, str]:
    """PGHOST, PGPORT, PGUSER, PGDATABASE of a SQLAlchemy URL (the profile's inputs)."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise SettingsError(f"DATABASE_URL is not a database URL: {exc}") from None
    if url.password:
        raise SettingsError(
            "DATABASE_URL holds a password: give it through PGPASSFILE (libpq's password file)"
        )
    values = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGDATABASE": url.database,
    }
    return {key: value for key, value in values.items() if value}


def dbt_env(database_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a dbt process runs in: `base` (default ours), the connection, offline."""
    return {
        **(os.environ if base is None else base),
        **libpq_env(database_url),
        **OFFLINE_ENV,
        "DBT_PROFILES_DIR": str(PROJECT_DIR),
    }


def dbt_executable() -> str:
    """The dbt next to this interpreter (the project's virtualenv), else the one on PATH."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else "dbt"


def run_dbt(args: Sequence[str], database_url: str) -> int:
    """`dbt ARGS` in the project directory against DATABASE_URL's database; dbt's exit code."""
    command = [dbt_executable(), *args]
    return subprocess.run(command, cwd=PROJECT_DIR, env=dbt_env(database_url)).returncode
