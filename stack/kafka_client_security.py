"""Java Kafka client settings from the librdkafka ones (KAFKA_SECURITY_CONFIG and the password).

The Python clients take `key=value;key=value` in librdkafka's names and read the SASL
password in the file KAFKA_SASL_PASSWORD_FILE names; Java clients (Kafka Connect's worker and the
clients it makes for connectors, the Kafka tools, the benchmarks' Java peers) name the same
things otherwise. `stack/kafka_client_security.py --connect` prints the lines stack.sh adds to
Connect's worker config (each setting for the worker, `producer.`, `consumer.` and `admin.`);
`--properties` a client.properties (`--command-config` of the tools). A setting without a known
Java equivalent is refused by name (never silently dropped), and no error repeats a value.
Stdlib only: stack.sh runs it with any Python.
"""

from __future__ import annotations

import os
import sys

PREFIXES = ("", "producer.", "consumer.", "admin.")
"""The worker's own clients, then those it makes for connectors."""
SAME = {"security.protocol", "sasl.mechanism", "ssl.endpoint.identification.algorithm"}
LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def parse(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, item in enumerate(filter(None, (p.strip() for p in raw.split(";"))), 1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"KAFKA_SECURITY_CONFIG entry {n}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_password(path: str | None) -> str | None:
    """The SASL password in the file KAFKA_SASL_PASSWORD_FILE names (None: not set)."""
    if not path:
        return None
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError as exc:
        raise ValueError(f"KAFKA_SASL_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"KAFKA_SASL_PASSWORD_FILE: {path} is empty")
    return value


def java_properties(librdkafka: dict[str, str], password: str | None = None) -> dict[str, str]:
    """The Java client settings equal to librdkafka's `security.protocol`, `sasl.mechanism(s)`,
    `sasl.username` with `password` (PLAIN, SCRAM), `ssl.ca.location` (PEM) and
    `ssl.endpoint.identification.algorithm`."""
    given = dict(librdkafka)
    if "sasl.password" in given:
        raise ValueError(
            "KAFKA_SECURITY_CONFIG: sasl.password must not be a value there; put it in a file "
            "and set KAFKA_SASL_PASSWORD_FILE"
        )
    if "sasl.mechanisms" in given:
        given["sasl.mechanism"] = given.pop("sasl.mechanisms")
    out = {k: given.pop(k) for k in sorted(SAME & given.keys())}
    if out.get("ssl.endpoint.identification.algorithm") == "none":
        out["ssl.endpoint.identification.algorithm"] = ""  # Java's "do not check"
    if "ssl.ca.location" in given:
        out["ssl.truststore.type"] = "PEM"
        out["ssl.truststore.location"] = given.pop("ssl.ca.location")
    user = given.pop("sasl.username", None)
    if user is not None or password is not None:
        mechanism = out.get("sasl.mechanism", "GSSAPI")
        if mechanism not in LOGIN_MODULES or user is None or password is None:
            raise ValueError(
                f"KAFKA_SECURITY_CONFIG: sasl.username and KAFKA_SASL_PASSWORD_FILE need a "
                f"mechanism of {', '.join(LOGIN_MODULES)} (got {mechanism})"
            )
        out["sasl.jaas.config"] = (
            f"{LOGIN_MODULES[mechanism]} required username={_quote(user)} "
            f"password={_quote(password)};"
        )
    if given:
        raise ValueError(
            "KAFKA_SECURITY_CONFIG: no Java client equivalent known for "
            + ", ".join(sorted(given))
            + " (Kafka Connect's clients would run without it)"
        )
    return out


def connect_lines(raw: str, password: str | None = None) -> list[str]:
    """`KEY=VALUE` lines for Connect's worker config: each setting for every client it runs."""
    props = java_properties(parse(raw), password)
    return [f"{prefix}{k}={v}" for prefix in PREFIXES for k, v in props.items()]


def main(argv: list[str]) -> int:
    if argv not in (["--connect"], ["--properties"]):
        print("usage: kafka_client_security.py --connect | --properties", file=sys.stderr)
        return 2
    try:
        password = read_password(os.environ.get("KAFKA_SASL_PASSWORD_FILE"))
        raw = os.environ.get("KAFKA_SECURITY_CONFIG", "")
        if argv == ["--connect"]:
            lines = connect_lines(raw, password)
        else:
            lines = [f"{k}={v}" for k, v in java_properties(parse(raw), password).items()]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
