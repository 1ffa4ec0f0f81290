"""The writer token: read only from a private file by the API, compared exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.api import auth

TOKEN = "a-writer-token-of-32-characters!"


def token_file(tmp_path: Path, mode: int, text: str = TOKEN) -> Path:
    path = tmp_path / "token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_a_private_file_is_read_without_its_newline(tmp_path: Path) -> None:
    assert auth.read_token_file(token_file(tmp_path, 0o600)) == TOKEN


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(auth.TokenError, match="chmod 600"):
        auth.read_token_file(token_file(tmp_path, mode))


def test_a_short_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(auth.TokenError, match="under 16 characters"):
        auth.read_token_file(token_file(tmp_path, 0o600, "short"))


def test_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(auth.TokenError, match="cannot read the writer token file"):
        auth.read_token_file(tmp_path / "absent")


def test_the_server_reads_only_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(auth.CLIENT_TOKEN_ENV, TOKEN)  # a shell variable, not the API's config
    with pytest.raises(auth.TokenError, match=auth.TOKEN_FILE_ENV):
        auth.server_token()


def test_a_client_takes_the_variable_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(token_file(tmp_path, 0o600)))
    monkeypatch.setenv(auth.CLIENT_TOKEN_ENV, "from-the-variable-0123")
    assert auth.client_token() == "from-the-variable-0123"
    monkeypatch.delenv(auth.CLIENT_TOKEN_ENV)
    assert auth.client_token() == TOKEN
    monkeypatch.delenv(auth.TOKEN_FILE_ENV)
    with pytest.raises(auth.TokenError, match="stack/env"):
        auth.client_token()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer  {TOKEN} ", True),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        ("Bearer", False),
        ("", False),
        (None, False),
    ],
)
def test_authorized(header: str | None, ok: bool) -> None:
    assert auth.authorized(header, TOKEN) is ok
