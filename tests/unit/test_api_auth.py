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
    monkeypatch.setenv("PIPELINE_API_TOKEN", TOKEN)  # a variable is no source of the token
    with pytest.raises(auth.TokenError, match=auth.TOKEN_FILE_ENV):
        auth.server_token()


def test_a_client_reads_only_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = token_file(tmp_path, 0o600)
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(path))
    monkeypatch.setenv("PIPELINE_API_TOKEN", "from-a-variable-0123456789")
    assert auth.client_token() == TOKEN
    assert auth.client_token_file() == path
    monkeypatch.delenv(auth.TOKEN_FILE_ENV)
    with pytest.raises(auth.TokenError, match=auth.TOKEN_FILE_ENV):
        auth.client_token()


@pytest.mark.parametrize("fault", ["missing", "others may read it", "a directory"])
def test_a_client_without_a_usable_file_is_told_which_variable_never_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    path = token_file(tmp_path, 0o644)
    if fault != "others may read it":
        path.unlink()
    if fault == "a directory":
        path.mkdir(mode=0o700)
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(path))
    with pytest.raises(auth.TokenError, match=auth.TOKEN_FILE_ENV) as refused:
        auth.client_token()
    assert TOKEN not in str(refused.value)


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
