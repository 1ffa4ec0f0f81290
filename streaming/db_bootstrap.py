"""`reviews db-roles`: the declared PostgreSQL roles (`streaming.db_roles`) applied as the
bootstrap superuser (DATABASE_URL at set-up time), idempotently, so `make up` also upgrades a
database made before them (ALTER OWNER of what the superuser created).

Each role's password is a generated file of mode 0600 (`stack/secret.sh`, kept once made):
a sink's in DATABASE_SINK_SECRETS_DIR, the only directory Connect's config provider may read;
every other's in DATABASE_ROLES_DIR, beside one libpq password file per service
(`<service>.pgpass`) holding its own roles' lines only. The server gets a SCRAM-SHA-256
verifier, bound as a parameter: a password is never in SQL text, a log or a command line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from streaming.db_roles import (
    ROLES,
    SERVICES,
    Role,
    database_sql,
    grant_sql,
    own_database_sql,
    pgpass_line,
    role_sql,
)
from streaming.settings import REPO_ROOT, DatabaseSettings, SettingsError, read_secret
from streaming.sql import quote

SCRAM_ITERATIONS = 4096
"""PostgreSQL's own default (scram_iterations)."""


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, as psql's
    \\password computes it): the server never sees the password itself."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def directory(value: str | None, variable: str) -> Path:
    """A directory setting `reviews db-roles` needs."""
    if not value:
        raise SettingsError(f"{variable} must name the directory of the roles' passwords")
    return Path(value)


def password_file(r: Role, settings: DatabaseSettings) -> Path:
    """Where role `r`'s password is kept (a sink's where Connect reads it)."""
    if r.login == "connect":
        return directory(settings.sink_secrets_dir, "DATABASE_SINK_SECRETS_DIR") / r.name
    return directory(settings.roles_dir, "DATABASE_ROLES_DIR") / r.name


def ensure_secret(path: Path) -> str:
    """The password in `path`, generated first when missing (stack/secret.sh)."""
    subprocess.run(
        [str(REPO_ROOT / "stack" / "secret.sh"), str(path.parent), path.name],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return read_secret(str(path), path.name)


def write_private(path: Path, content: str) -> None:
    """Replace `path` by a file of mode 0600 holding `content`."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)


def apply_roles(engine: sa.Engine, database: str, passwords: dict[str, str]) -> None:
    """Every role, its attributes and password, and its grants in the pipeline's database."""
    with engine.begin() as conn:
        for r in ROLES:
            create, attributes = role_sql(r)
            conn.execute(sa.text(create))
            conn.execute(sa.text(attributes), {"verifier": scram_verifier(passwords[r.name])})
        for statement in database_sql(database):
            conn.execute(sa.text(statement))
        for r in ROLES:
            for statement in grant_sql(r, database):
                conn.execute(sa.text(statement))


def apply_own_database(url: sa.URL, database: str, owner: str) -> None:
    """`owner`'s own database, created when missing, owned by it with everything in it."""
    engine = sa.create_engine(url.set(database=database))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("select 1 from pg_database where datname = :d"), {"d": database}
            ).first()
            if found is None:
                conn.execute(sa.text(f"create database {quote(database)}"))
        with engine.begin() as conn:
            for statement in own_database_sql(database, owner):
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
        admin.dispose()


def write_pgpass_files(roles_dir: Path, passwords: dict[str, str]) -> list[Path]:
    """One libpq password file per service, with its own roles' lines only."""
    out = []
    for service in SERVICES:
        path = roles_dir / f"{service.name}.pgpass"
        write_private(path, "".join(pgpass_line(n, passwords[n]) + "\n" for n in service.roles))
        out.append(path)
    return out


def bootstrap_roles(settings: DatabaseSettings, say: Callable[[str], None]) -> None:
    """Apply the declaration over DATABASE_URL (the superuser's), then write the services'
    password files. Says what it did, never a password."""
    passwords = {r.name: ensure_secret(password_file(r, settings)) for r in ROLES}
    url = sa.make_url(settings.url)
    if not url.database:
        raise SettingsError("DATABASE_URL: names no database")
    engine = sa.create_engine(url)
    try:
        apply_roles(engine, url.database, passwords)
    finally:
        engine.dispose()
    for r in ROLES:
        if r.owns_database:
            apply_own_database(url, r.owns_database, r.name)
        say(f"role {r.name}: {r.purpose} (password {password_file(r, settings)})")
    roles_dir = directory(settings.roles_dir, "DATABASE_ROLES_DIR")
    for path in write_pgpass_files(roles_dir, passwords):
        say(f"libpq password file {path}")
