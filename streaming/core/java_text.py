"""Java's UTF-8 decoding with replacement: how the original app and Kafka Connect read a string.

Avro's Java `Utf8.toString()` is `new String(bytes, UTF_8)`, which replaces each malformed
sequence with U+FFFD. Python's `bytes.decode("utf-8", "replace")` agrees on valid text and on
most malformed input, but not everywhere: Java takes an encoded surrogate (ED A0 80) as one
malformed sequence of three bytes where Python replaces each byte, and Java replaces whatever
is left of a sequence cut short by the end of the input with a single U+FFFD. A record's
verdict hashes its re-encoding, so the stream must replace exactly as Java does: this is a
port of the JDK's decoder (`sun.nio.cs.UTF_8`, its `malformedN` lengths), checked against a
real JVM by the tests. Only the rare string that is not valid UTF-8 comes here.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def _cont(b: int) -> bool:
    return b & 0xC0 == 0x80


def _malformed_3(b1: int, b2: int) -> int:
    """Bytes a malformed 3-byte sequence spans (the JDK's malformedN(3))."""
    return 1 if (b1 == 0xE0 and b2 & 0xE0 == 0x80) or not _cont(b2) else 2


def _malformed_4(b1: int, b2: int, b3: int) -> int:
    """Bytes a malformed 4-byte sequence spans (the JDK's malformedN(4))."""
    if (
        b1 > 0xF4
        or (b1 == 0xF0 and not 0x90 <= b2 <= 0xBF)
        or (b1 == 0xF4 and b2 & 0xF0 != 0x80)
        or not _cont(b2)
    ):
        return 1
    return 2 if not _cont(b3) else 3


def _step(data: bytes, i: int) -> tuple[str, int]:
    """The text the sequence at data[i] decodes to and the index after it (the JDK's loop).
    A sequence cut short by the end of the input is malformed up to the end (the decoder's
    underflow at end of input), unless its first bytes are malformed already."""
    n = len(data)
    b1 = data[i]
    if b1 < 0x80:
        return chr(b1), i + 1
    left = n - i
    if 0xC2 <= b1 <= 0xDF:
        if left < 2:
            return REPLACEMENT, n
        if not _cont(data[i + 1]):
            return REPLACEMENT, i + 1
        return chr(((b1 & 0x1F) << 6) | (data[i + 1] & 0x3F)), i + 2
    if 0xE0 <= b1 <= 0xEF:
        if left < 3:
            if left > 1 and _malformed_3(b1, data[i + 1]) == 1:
                return REPLACEMENT, i + 1
            return REPLACEMENT, n
        b2, b3 = data[i + 1], data[i + 2]
        if (b1 == 0xE0 and b2 & 0xE0 == 0x80) or not _cont(b2) or not _cont(b3):
            return REPLACEMENT, i + _malformed_3(b1, b2)
        code = ((b1 & 0x0F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F)
        if 0xD800 <= code <= 0xDFFF:
            return REPLACEMENT, i + 3
        return chr(code), i + 3
    if 0xF0 <= b1 <= 0xF7:
        if left < 4:
            if b1 > 0xF4 or (left > 1 and _malformed_4(b1, data[i + 1], 0x80) == 1):
                return REPLACEMENT, i + 1
            if left > 2 and not _cont(data[i + 2]):
                return REPLACEMENT, i + 2
            return REPLACEMENT, n
        b2, b3, b4 = data[i + 1], data[i + 2], data[i + 3]
        code = ((b1 & 0x07) << 18) | ((b2 & 0x3F) << 12) | ((b3 & 0x3F) << 6) | (b4 & 0x3F)
        if not (_cont(b2) and _cont(b3) and _cont(b4)) or not 0x10000 <= code <= 0x10FFFF:
            return REPLACEMENT, i + _malformed_4(b1, b2, b3)
        return chr(code), i + 4
    return REPLACEMENT, i + 1


def decode(data: bytes) -> str:
    """`new String(data, StandardCharsets.UTF_8)` in Java."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out, i = [], 0
    while i < len(data):
        text, i = _step(data, i)
        out.append(text)
    return "".join(out)
