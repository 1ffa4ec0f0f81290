"""Java's UTF-8 decoding, ported twice (the stream's `streaming.core.java_text` and the chaos
oracle's own), against a real JVM: `new String(bytes, UTF_8)`, what Avro's `Utf8.toString()`
and so the original app and Kafka Connect do. Random byte strings, weighted towards the bytes
where decoders differ (surrogates, overlongs, sequences cut short)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from chaos.oracle import java_text as oracle_java_text
from streaming.core import java_text

pytestmark = pytest.mark.integration
JAVA = str(Path(os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")) / "bin/java")
DECODER = """
import java.io.*;
import java.nio.charset.StandardCharsets;
public class Decode {
  public static void main(String[] args) throws IOException {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
    PrintWriter out = new PrintWriter(new BufferedWriter(new OutputStreamWriter(System.out)));
    for (String line; (line = in.readLine()) != null; ) {
      byte[] b = new byte[line.length() / 2];
      for (int i = 0; i < b.length; i++)
        b[i] = (byte) Integer.parseInt(line.substring(2 * i, 2 * i + 2), 16);
      StringBuilder hex = new StringBuilder();
      for (char c : new String(b, StandardCharsets.UTF_8).toCharArray())
        hex.append(String.format("%04x", (int) c));
      out.println(hex);
    }
    out.flush();
  }
}
"""
TRICKY = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0]
TRICKY += [0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFF]


def utf16_hex(text: str) -> str:
    raw = text.encode("utf-16-be", "surrogatepass")
    return "".join(f"{int.from_bytes(raw[i : i + 2], 'big'):04x}" for i in range(0, len(raw), 2))


def cases(n: int, seed: int = 8) -> list[bytes]:
    rng = random.Random(seed)
    out = [
        bytes(rng.choice(TRICKY) if rng.random() < 0.8 else rng.randrange(256) for _ in range(k))
        for k in (rng.randrange(8) for _ in range(n))
    ]
    for ch in ("é", "€", "😀", "\ud7ff", "\ue000", "\U0010ffff"):
        encoded = ch.encode("utf-8", "surrogatepass")
        for cut in range(len(encoded) + 1):
            out += [encoded[:cut], encoded[:cut] + b"A", b"A" + encoded[:cut]]
    return out


def test_both_ports_decode_as_the_jvm_does(tmp_path: Path) -> None:
    source = tmp_path / "Decode.java"
    source.write_text(DECODER)
    inputs = cases(50_000)
    done = subprocess.run(
        [JAVA, str(source)],
        input="".join(b.hex() + "\n" for b in inputs),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    jvm = done.stdout.splitlines()
    assert len(jvm) == len(inputs)
    python_differs = 0
    for data, expected in zip(inputs, jvm, strict=True):
        assert utf16_hex(java_text.decode(data)) == expected, data.hex()
        assert utf16_hex(oracle_java_text(data)) == expected, data.hex()
        python_differs += utf16_hex(data.decode("utf-8", "replace")) != expected
    assert python_differs > 0, "the cases reach where Python's own replacement differs"
