"""The writer token of `POST /reviews`: who may write reviews into the system of record.

The API reads the token from a file (`PIPELINE_API_TOKEN_FILE`, mode 0600; `make up` generates
`.stack/secrets/pipeline-api-token`), never from its environment or command line, where `ps` and
crash reports would show it. Requests carry it as `Authorization: Bearer <token>`, compared in
constant time. Reading statistics needs no token.

Clients (the benchmarks, the chaos run, the tests, a shell's curl) read the same file: the
value is in no variable, so no process's environment (`/proc/PID/environ`) carries it.
"""

from __future__ import annotations

import hmac
import stat
from pathlib import Path

from streaming.settings import ApiSettings, load, variable

TOKEN_FILE_ENV = variable(ApiSettings, "token_file")
"""PIPELINE_API_TOKEN_FILE, as the messages name it."""
MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused: guessable."""


class TokenError(RuntimeError):
    """No usable writer token; the message says what to set."""


def read_token_file(path: Path) -> str:
    """The token in `path`, refused when others may read the file or it is too short."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenError(
            f"cannot read the writer token file {path} ({TOKEN_FILE_ENV}): {exc.strerror}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"the writer token file {path} ({TOKEN_FILE_ENV}) is readable by others "
            f"(mode {stat.filemode(mode)}): chmod 600 {path}"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(
            f"the writer token in {path} ({TOKEN_FILE_ENV}) is under {MIN_TOKEN_CHARS} characters"
        )
    return token


def server_token() -> str:
    """The API's token, from the file `PIPELINE_API_TOKEN_FILE` names."""
    path = load(ApiSettings).token_file
    if not path:
        raise TokenError(
            f"POST /reviews needs a writer token: set {TOKEN_FILE_ENV} to a file of mode 0600 "
            "holding it (`make up` generates .stack/secrets/pipeline-api-token)"
        )
    return read_token_file(Path(path))


def client_token_file() -> Path:
    """Where a client finds the token: the file `PIPELINE_API_TOKEN_FILE` names, checked as
    the API checks it (so a tool that hands the path on fails here, clearly, not later)."""
    path = load(ApiSettings).token_file
    if not path:
        raise TokenError(
            f"writing reviews needs the API's writer token: set {TOKEN_FILE_ENV} to its file "
            "(`. .stack/env` sets it)"
        )
    read_token_file(Path(path))
    return Path(path)


def client_token() -> str:
    """A client's token, from the file `PIPELINE_API_TOKEN_FILE` names."""
    return read_token_file(client_token_file())


def bearer(token: str) -> dict[str, str]:
    """The request header that carries `token`."""
    return {"Authorization": f"Bearer {token}"}


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header value carries `token` (scheme case-insensitive), in
    time independent of where a wrong token differs."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
