"""The stack's proxy config (stack/proxy.py): fronts parsed, Host allow-list, Basic auth, the
GraphQL and write rules rendered, htpasswd hashes that verify and keep the password off argv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stack.proxy import (
    Front,
    FrontError,
    Tls,
    allowed_hosts,
    htpasswd_line,
    parse_front,
    parse_tls,
    render,
    write_htpasswd,
)
from tests.unit.certificates import self_signed

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def test_a_front_line_with_every_option() -> None:
    front = parse_front(
        "dagster 3000 127.0.0.1:3001 auth=dagster:/s/dagster-password graphql=/graphql "
        "json_writes=1"
    )
    assert front == Front(
        "dagster", 3000, "127.0.0.1:3001", ("dagster", "/s/dagster-password"), "/graphql", True
    )
    assert parse_front("registry 8081 127.0.0.1:8181") == Front("registry", 8081, "127.0.0.1:8181")


@pytest.mark.parametrize(
    "line",
    [
        "dagster",
        "dagster x 127.0.0.1:1",
        "d 1 h:2 auth=nopassword",
        "d 1 h:2 graphql=x",
        "d 1 h:2 tls=1",
    ],
)
def test_a_malformed_front_is_refused_by_name(line: str) -> None:
    with pytest.raises(FrontError, match=line.split()[0]):
        parse_front(line)


def test_the_allowed_hosts_default_to_loopback_names_plus_the_bind_address() -> None:
    assert allowed_hosts("", "127.0.0.1") == ["127.0.0.1", "localhost", "::1", "[::1]"]
    assert allowed_hosts("Reviews.Example, 10.0.0.5", "10.0.0.5") == ["reviews.example", "10.0.0.5"]
    assert allowed_hosts("a", "0.0.0.0") == ["a"], "an any-address bind is no Host name"
    assert allowed_hosts("a,*", "127.0.0.1") is None


def conf(*fronts: Front, hosts: str = "") -> str:
    return render(list(fronts), Path("/state"), "127.0.0.1", hosts, as_root=False)


def test_every_front_checks_host_before_asking_credentials() -> None:
    text = conf(Front("dagster", 3000, "127.0.0.1:3001", ("dagster", "/s/pw")))
    server = text[text.index("server {") :]
    assert server.index("return 421") < server.index("auth_basic ")
    assert "auth_basic_user_file /state/proxy/dagster.htpasswd;" in server
    assert 'proxy_set_header Authorization "";' in server, "the login stays at the proxy"
    assert '"localhost" 1;' in text and '"evil.example"' not in text
    assert "map $host $stack_host_ok { default 1; }" in conf(Front("r", 1, "h:2"), hosts="*")


def test_the_registry_front_passes_its_own_credentials_on() -> None:
    text = conf(Front("registry", 8081, "127.0.0.1:8181"))
    assert "auth_basic" not in text and "Authorization" not in text
    assert "proxy_pass http://127.0.0.1:8181;" in text


def test_graphql_and_write_rules_apply_where_declared() -> None:
    text = conf(Front("d", 3000, "127.0.0.1:3001", None, "/graphql", True))
    graphql = text[text.index("location = /graphql {") :]
    assert "if ($stack_graphql = 405) { return 405; }" in graphql
    root = text[text.index("location / {") : text.index("location = /graphql")]
    assert "if ($stack_write = 415) { return 415; }" in root
    plain = conf(Front("d", 3000, "127.0.0.1:3001"))
    assert "$stack_graphql =" not in plain and "$stack_write =" not in plain


def test_nginx_runs_in_the_foreground_with_every_path_under_the_state_dir() -> None:
    text = conf(Front("r", 1, "h:2"))
    assert "daemon off;" in text and "pid /state/proxy/nginx.pid;" in text
    assert "proxy_temp_path /state/proxy/tmp/proxy;" in text
    assert "user " not in text.split("http {")[0], "workers as the invoking user (not root here)"
    root = render([Front("r", 1, "h:2")], Path("/state"), "127.0.0.1", "", as_root=True)
    assert root.startswith("# Generated") and "\nuser " in root


def test_with_tls_every_front_serves_https_only() -> None:
    fronts = [Front("registry", 8081, "127.0.0.1:8181"), Front("d", 3000, "127.0.0.1:3001")]
    text = render(fronts, Path("/s"), "127.0.0.1", "", False, Tls("/t/c.pem", "/t/k.pem"))
    assert text.count(" ssl;") == 2 and "listen 127.0.0.1:8081 ssl;" in text
    assert "ssl_certificate /t/c.pem;" in text and "ssl_certificate_key /t/k.pem;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    plain = render(fronts, Path("/s"), "127.0.0.1", "", False)
    assert " ssl" not in plain and "ssl_certificate" not in plain


def test_a_tls_pair_must_be_two_readable_files(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(FrontError, match="CERT:KEY"):
        parse_tls(str(cert))
    with pytest.raises(FrontError, match="cannot read"):
        parse_tls(f"{cert}:{tmp_path / 'missing.pem'}")
    assert parse_tls(f"{cert}:{cert}") == Tls(str(cert), str(cert))


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")
@pytest.mark.parametrize("with_tls", [False, True], ids=["http", "https"])
def test_nginx_accepts_the_rendered_config(tmp_path: Path, with_tls: bool) -> None:
    tls = Tls(*map(str, self_signed(tmp_path, "127.0.0.1"))) if with_tls else None
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    fronts = [
        Front("registry", 18081, "127.0.0.1:18181"),
        Front("d", 13000, "127.0.0.1:13001", ("dagster", str(password)), "/graphql", True),
    ]
    (tmp_path / "logs").mkdir()
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "proxy" / "tmp" / kind).mkdir(parents=True)
    write_htpasswd(tmp_path / "proxy" / "d.htpasswd", "dagster", str(password))
    (tmp_path / "nginx.conf").write_text(render(fronts, tmp_path, "127.0.0.1", "", False, tls))
    checked = subprocess.run(
        [
            NGINX,
            "-t",
            "-q",
            "-e",
            "stderr",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


def test_an_htpasswd_line_verifies_and_is_salted() -> None:
    line = htpasswd_line("dagster", "s3cret")
    user, hashed = line.split(":", 1)
    assert user == "dagster" and hashed.startswith("$6$") and "s3cret" not in hashed
    salt = hashed.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert again == hashed
    assert htpasswd_line("dagster", "s3cret") != line, "a new salt each time"


def test_the_htpasswd_file_is_private(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    out = tmp_path / "proxy" / "d.htpasswd"
    write_htpasswd(out, "dagster", str(password))
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text().startswith("dagster:$6$")
    password.write_text("")
    with pytest.raises(FrontError, match="empty"):
        write_htpasswd(out, "dagster", str(password))
