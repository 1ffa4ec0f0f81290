"""Java Kafka client settings for Kafka Connect from librdkafka ones (KAFKA_SECURITY_CONFIG).

The Python clients take `key=value;key=value` in librdkafka's names; Connect's worker and the
clients it makes for connectors (producer., consumer., admin.) are Java clients with other
names for the same things. `python -m stack.kafka_client_security` prints the properties
lines stack.sh adds to Connect's worker config, so one variable secures every client. A
setting without a known Java equivalent is refused by name (never silently dropped), and no
error repeats a value.
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


def java_properties(librdkafka: dict[str, str]) -> dict[str, str]:
    """The Java client settings equal to librdkafka's `security.protocol`, `sasl.mechanism(s)`,
    `sasl.username`/`sasl.password` (PLAIN, SCRAM), `ssl.ca.location` (PEM) and
    `ssl.endpoint.identification.algorithm`."""
    given = dict(librdkafka)
    if "sasl.mechanisms" in given:
        given["sasl.mechanism"] = given.pop("sasl.mechanisms")
    out = {k: given.pop(k) for k in sorted(SAME & given.keys())}
    if out.get("ssl.endpoint.identification.algorithm") == "none":
        out["ssl.endpoint.identification.algorithm"] = ""  # Java's "do not check"
    if "ssl.ca.location" in given:
        out["ssl.truststore.type"] = "PEM"
        out["ssl.truststore.location"] = given.pop("ssl.ca.location")
    user, password = given.pop("sasl.username", None), given.pop("sasl.password", None)
    if user is not None or password is not None:
        mechanism = out.get("sasl.mechanism", "GSSAPI")
        if mechanism not in LOGIN_MODULES or user is None or password is None:
            raise ValueError(
                f"KAFKA_SECURITY_CONFIG: sasl.username and sasl.password need a mechanism of "
                f"{', '.join(LOGIN_MODULES)} (got {mechanism})"
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


def connect_lines(raw: str) -> list[str]:
    """`KEY=VALUE` lines for Connect's worker config: each setting for every client it runs."""
    props = java_properties(parse(raw))
    return [f"{prefix}{k}={v}" for prefix in PREFIXES for k, v in props.items()]


def main() -> int:
    try:
        lines = connect_lines(os.environ.get("KAFKA_SECURITY_CONFIG", ""))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
