"""Avro framing helpers: schema fingerprints, single-object encoding, Confluent wire format.

The fraud rule hashes Avro's single-object encoding of a record, which embeds the CRC-64-AVRO
fingerprint of the schema's Parsing Canonical Form, while Kafka carries the same body in the
Confluent wire format. Both framings live here so stream workers can move between them without
re-encoding. The per-record helpers sit on the hot path of the stream workers, so they only
unpack the header and slice.
"""

import json
import struct
from pathlib import Path

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from fastavro.types import Schema

REPO_SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
"""The repository's `.avsc` files (a deployment's are `streaming.settings.schemas_dir()`: core
reads no settings, its callers pass the directory)."""

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
"""Marker that opens Avro's single-object encoding (spec, "Single-object encoding")."""

CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_SIZE = 5

_CONFLUENT_HEADER = struct.Struct(">BI")


class WireFormatError(ValueError):
    """A Kafka value is not in the Confluent wire format; route it to the dead-letter topic."""


def load_schema(path: str | Path) -> Schema:
    """Read and parse a `.avsc` file into the form fastavro's readers and writers take."""
    with Path(path).open(encoding="utf-8") as f:
        return parse_schema(json.load(f))


def canonical_form(schema: Schema) -> str:
    """Parsing Canonical Form of a parsed schema: what Avro fingerprints are computed over."""
    return to_parsing_canonical_form(schema)


def schema_fingerprint_le(schema: Schema) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint that single-object encoding embeds
    (fastavro's, whose hex digest is those bytes; computed once per schema, not per record)."""
    return bytes.fromhex(fingerprint(canonical_form(schema), "CRC-64-AVRO"))


def split_confluent(value: bytes) -> tuple[int, bytes]:
    """Split a Confluent-framed value into (schema id, Avro body).

    The body is a bytes slice, not a memoryview: for record-sized values (~150 bytes) the slice
    costs half as much, and the hash's concatenation and fastavro's BytesIO would copy a
    memoryview anyway.

    Raises WireFormatError when the value is shorter than the 5-byte header or its magic byte
    is not 0, so callers can dead-letter it instead of crashing.
    """
    if len(value) < CONFLUENT_HEADER_SIZE:
        raise WireFormatError(
            f"value of {len(value)} bytes is shorter than the {CONFLUENT_HEADER_SIZE}-byte "
            "Confluent header (magic byte 0 + 4-byte schema id)"
        )
    magic, schema_id = _CONFLUENT_HEADER.unpack_from(value)
    if magic != CONFLUENT_MAGIC:
        raise WireFormatError(
            f"magic byte is {magic:#04x}, expected {CONFLUENT_MAGIC:#04x} (Confluent wire format)"
        )
    return schema_id, value[CONFLUENT_HEADER_SIZE:]


def confluent_frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header: magic byte 0, big-endian schema id."""
    return _CONFLUENT_HEADER.pack(CONFLUENT_MAGIC, schema_id) + body
