"""A throwaway self-signed certificate for tests that need a PEM pair on disk.

One helper for every test that renders or loads TLS material (the proxy's fronts, the registry
client's CA), so the openssl invocation lives in one place.
"""

import subprocess
from pathlib import Path


def self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """Write a one-day RSA certificate and its key into `directory`; return (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name}"],
        check=True,
        capture_output=True,
    )
    return cert, key
