"""Exit 0 when a Kafka broker answers an ApiVersions request without error (stdlib only).

Why not just a port check: the socket opens before the broker can serve requests. Why not the
Java tools: a JVM start per poll costs seconds on two cores.
Usage: kafka_ready.py HOST:PORT [TIMEOUT_S]
"""

import socket
import struct
import sys
import time


def api_versions_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    client_id = b"stack-ready"
    header = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            data = b""
            while len(data) < 10:
                chunk = sock.recv(10 - len(data))
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    _size, correlation_id, error_code = struct.unpack(">iih", data[:10])
    return correlation_id == 1 and error_code == 0


def main() -> int:
    host, port = sys.argv[1].rsplit(":", 1)
    deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 0)
    while True:
        if api_versions_ok(host, int(port)):
            return 0
        if time.monotonic() >= deadline:
            return 1
        time.sleep(0.5)  # poll interval between real readiness checks, not a wait for readiness


if __name__ == "__main__":
    sys.exit(main())
