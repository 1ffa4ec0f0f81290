"""The stack's authenticating reverse proxy: one nginx config rendered from generic fronts.

stack/stack.sh runs one nginx (Debian's) in front of the services that must not be reached
directly: each *front* listens on a public port and passes requests to a service listening on
loopback only. A front is one line, `NAME PORT UPSTREAM [OPTION...]`:

  auth=USER:FILE   HTTP Basic: USER with the password in FILE (a generated secret). The proxy
                   keeps a hash of it (SHA-512 crypt, `openssl passwd -6`, the password on
                   stdin) in a 0600 file, and does not pass the credentials on
  graphql=PATH     PATH is a GraphQL endpoint: a GET there only as a WebSocket upgrade whose
                   Origin is the front's own, a POST only with a JSON body; anything else is
                   refused (405, 403 for a foreign Origin, 415 for another body)
  json_writes=1    everywhere else on the front, a request other than GET/HEAD only as a POST
                   with a JSON body and no foreign Origin (no cross-site form can write)

Every front answers only the Host names of ALLOWED_HOSTS (comma-separated; `*`: any; default
127.0.0.1, localhost, ::1; the bind address is always one) and refuses others with 421, so a
page that rebinds its own name to this machine cannot use it. It listens on BIND_HOST
[127.0.0.1]. "Own Origin" means the request's scheme + `://` + its (allowed) Host.

With `--tls CERT:KEY` (PEM files) every front serves HTTPS only (TLS 1.2 and 1.3); a plain HTTP
request to it is refused by nginx (400).

  python -m stack.proxy render --state DIR [--tls CERT:KEY] < FRONTS
      prints nginx.conf; writes the htpasswd files and temp dirs under DIR/proxy
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")
OPTIONS = ("auth", "graphql", "json_writes")

# Request classifications shared by every front (nginx maps: evaluated lazily, per request).
MAPS = r"""
    # the request's Origin against its own origin (http:// + Host): none, own or foreign
    map "$http_origin|$scheme://$http_host" $stack_origin {
        "~^\|" none;
        "~*^([^|]+)\|\1$" own;
        default foreign;
    }
    map $content_type $stack_json {
        "~*^application/json\s*(;.*)?$" 1;
        default 0;
    }
    map $http_upgrade $stack_connection {
        "" "";
        default upgrade;
    }
    # a GraphQL endpoint: 0 lets the request through, else the status that refuses it
    map "$request_method|$http_upgrade|$stack_origin|$stack_json" $stack_graphql {
        "~*^GET\|websocket\|own\|" 0;
        "~*^GET\|websocket\|" 403;
        "~^POST\|[^|]*\|(own|none)\|1$" 0;
        "~^POST\|[^|]*\|foreign\|" 403;
        "~^POST\|" 415;
        default 405;
    }
    # json_writes: reads pass; a write only as a JSON POST without a foreign Origin
    map "$request_method|$stack_origin|$stack_json" $stack_write {
        "~^(GET|HEAD)\|" 0;
        "~^POST\|(own|none)\|1$" 0;
        "~^POST\|foreign\|" 403;
        "~^POST\|" 415;
        default 405;
    }
"""


class FrontError(ValueError):
    """A front line that cannot be used; the message names the line's NAME and the problem."""


@dataclass(frozen=True)
class Tls:
    """The certificate (chain) and private key every front serves, PEM files."""

    cert: str
    key: str


def parse_tls(raw: str) -> Tls:
    """`CERT:KEY`, both readable files."""
    cert, sep, key = raw.partition(":")
    if not (cert and sep and key):
        raise FrontError(f"--tls {raw!r}: expected CERT:KEY (two PEM files)")
    for path in (cert, key):
        if not os.access(path, os.R_OK):
            raise FrontError(f"--tls: cannot read {path}")
    return Tls(cert, key)


def _tls_block(tls: Tls | None) -> str:
    if tls is None:
        return ""
    return (
        f"    ssl_certificate {tls.cert};\n"
        f"    ssl_certificate_key {tls.key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_session_cache shared:stack_tls:1m;\n"
    )


@dataclass(frozen=True)
class Front:
    name: str
    port: int
    upstream: str
    auth: tuple[str, str] | None = None  # (user, password file)
    graphql: str | None = None
    json_writes: bool = False


def parse_front(line: str) -> Front:
    """`NAME PORT UPSTREAM [auth=USER:FILE] [graphql=PATH] [json_writes=1]`."""
    words = line.split()
    if len(words) < 3 or not words[1].isdigit():
        raise FrontError(f"front {line!r}: expected NAME PORT HOST:PORT [OPTION=VALUE...]")
    name, port, upstream, *rest = words
    options: dict[str, str] = {}
    for word in rest:
        key, sep, value = word.partition("=")
        if not sep or key not in OPTIONS or not value:
            raise FrontError(f"front {name}: unknown option {key!r} (known: {', '.join(OPTIONS)})")
        options[key] = value
    auth = None
    if "auth" in options:
        user, sep, path = options["auth"].partition(":")
        if not (user and sep and path):
            raise FrontError(f"front {name}: auth= wants USER:PASSWORD_FILE")
        auth = (user, path)
    graphql = options.get("graphql")
    if graphql is not None and not graphql.startswith("/"):
        raise FrontError(f"front {name}: graphql= wants a path starting with /")
    return Front(name, int(port), upstream, auth, graphql, options.get("json_writes") == "1")


def allowed_hosts(raw: str, bind: str) -> list[str] | None:
    """The Host names every front answers; None for any (`*`)."""
    names = [n.strip().lower() for n in raw.split(",") if n.strip()] or list(DEFAULT_ALLOWED_HOSTS)
    if "*" in names:
        return None
    if bind not in ("0.0.0.0", "::"):
        names.append(bind.lower())
    out: list[str] = []
    for name in names:  # nginx's $host keeps an IPv6 literal's brackets
        for form in (name, f"[{name}]") if ":" in name else (name,):
            if form not in out:
                out.append(form)
    return out


def _host_map(hosts: list[str] | None) -> str:
    if hosts is None:
        return "    map $host $stack_host_ok { default 1; }\n"
    lines = "".join(f'        "{h}" 1;\n' for h in hosts)
    return f"    map $host $stack_host_ok {{\n        default 0;\n{lines}    }}\n"


def _listen(bind: str, port: int) -> str:
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


def _proxy_pass(front: Front) -> str:
    out = [
        f"            proxy_pass http://{front.upstream};",
        "            proxy_http_version 1.1;",
        "            proxy_set_header Host $http_host;",
        "            proxy_set_header Upgrade $http_upgrade;",
        "            proxy_set_header Connection $stack_connection;",
        "            proxy_set_header X-Forwarded-For $remote_addr;",
        "            proxy_set_header X-Forwarded-Proto $scheme;",
        "            proxy_read_timeout 1h;",  # a GraphQL subscription idles for long
    ]
    if front.auth:
        out.append('            proxy_set_header Authorization "";')
    return "\n".join(out) + "\n"


def _refuse(variable: str) -> str:
    return "".join(
        f"            if (${variable} = {code}) {{ return {code}; }}\n" for code in (403, 405, 415)
    )


def server_block(front: Front, bind: str, state: Path, tls: bool = False) -> str:
    """One front: the Host check first (before any credential is asked), then Basic auth and
    the method rules, then the upstream."""
    out = [
        f"    # front {front.name}: {_listen(bind, front.port)} -> {front.upstream}",
        "    server {",
        f"        listen {_listen(bind, front.port)}{' ssl' if tls else ''};",
        "        if ($stack_host_ok = 0) { return 421; }",
    ]
    if front.auth:
        out.append(f'        auth_basic "{front.name}";')
        out.append(f"        auth_basic_user_file {htpasswd_path(state, front)};")
    out.append("        location / {")
    out.append((_refuse("stack_write") if front.json_writes else "") + _proxy_pass(front))
    out.append("        }")
    if front.graphql:
        out.append(f"        location = {front.graphql} {{")
        out.append(_refuse("stack_graphql") + _proxy_pass(front))
        out.append("        }")
    out.append("    }")
    return "\n".join(out) + "\n"


def htpasswd_path(state: Path, front: Front) -> Path:
    return state / "proxy" / f"{front.name}.htpasswd"


def render(
    fronts: list[Front],
    state: Path,
    bind: str,
    hosts_raw: str,
    as_root: bool,
    tls: Tls | None = None,
) -> str:
    """nginx.conf: in the foreground under the stack's supervisor, every path under
    STATE/proxy, workers as the invoking user when started as root; HTTPS only with `tls`."""
    run = state / "proxy"
    user = f"user {_whoami()};\n" if as_root else ""
    temp = "".join(
        f"    {kind}_temp_path {run}/tmp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    servers = "\n".join(server_block(f, bind, state, tls is not None) for f in fronts)
    return (
        "# Generated by stack/proxy.py (stack/stack.sh up_proxy); do not edit.\n"
        f"{user}daemon off;\nworker_processes 1;\npid {run}/nginx.pid;\nerror_log stderr warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {state}/logs/proxy-access.log;\n{temp}"
        "    server_tokens off;\n"
        f"{_tls_block(tls)}"
        f"{_host_map(allowed_hosts(hosts_raw, bind))}{MAPS}\n{servers}}}\n"
    )


def _whoami() -> str:
    """`user group` for nginx's workers: whoever runs the stack (who owns its files), not
    nginx's default `nobody`, which could read neither the htpasswd files nor the temp dirs."""
    entry = pwd.getpwuid(os.getuid())
    return f"{entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name}"


def htpasswd_line(user: str, password: str) -> str:
    """`user:$6$salt$hash`: SHA-512 crypt by `openssl passwd -6`, the password on its stdin
    (never on a command line)."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{user}:{hashed}"


def write_htpasswd(path: Path, user: str, password_file: str) -> None:
    """The front's htpasswd file (mode 0600), from the password file's first line."""
    password = Path(password_file).read_text().strip()
    if not password:
        raise FrontError(f"{password_file} is empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(htpasswd_line(user, password) + "\n")
    tmp.replace(path)


def _render_cli(state: Path, tls: Tls | None) -> int:
    fronts = [parse_front(line) for line in sys.stdin if line.strip()]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state / "proxy" / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    for front in fronts:
        if front.auth:
            write_htpasswd(htpasswd_path(state, front), *front.auth)
    bind = os.environ.get("BIND_HOST") or "127.0.0.1"
    hosts = os.environ.get("ALLOWED_HOSTS", "")
    sys.stdout.write(render(fronts, state, bind, hosts, os.getuid() == 0, tls))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render_cmd = sub.add_parser("render")
    render_cmd.add_argument("--state", type=Path, required=True)
    render_cmd.add_argument("--tls", metavar="CERT:KEY", help="serve HTTPS with these PEM files")
    args = parser.parse_args(argv)
    try:
        return _render_cli(args.state.resolve(), parse_tls(args.tls) if args.tls else None)
    except (FrontError, OSError, subprocess.CalledProcessError) as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
