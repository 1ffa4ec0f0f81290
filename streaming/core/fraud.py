"""The fraud rule: which reviews the fraud filter rejects.

The default model is byte-compatible with the original Kafka Streams app: a review is fraud iff
`to_positive(murmur2(single_object_bytes)) % 100 < 5`, where `murmur2` is Kafka's
`Utils.murmur2` and `single_object_bytes` is Avro's single-object encoding of the Review
(C3 01, 8-byte little-endian CRC-64-AVRO fingerprint of the schema's canonical form, Avro body).
Verdicts therefore depend on the exact Avro bytes, which is why the worker hashes the body it
received rather than a re-encoding.

The model is pluggable: callers read the `FRAUD_MODEL` environment variable, a dotted path
"package.module:factory_or_class" (empty or unset = `HashFraudModel`), and pass it to
`load_model`.
"""

import importlib
import io
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fastavro import schemaless_writer
from murmurhash2 import murmurhash2

from streaming.core.avro_codec import (
    SINGLE_OBJECT_MAGIC,
    load_schema,
    schema_fingerprint_le,
    schemas_dir,
)

FRAUD_MODEL_ENV = "FRAUD_MODEL"
"""Environment variable callers pass to `load_model` to pick the fraud model."""

KAFKA_MURMUR2_SEED = 0x9747B28C
"""Seed of Kafka's `Utils.murmur2`, used by its default partitioner and by the original app."""

FRAUD_PERCENT = 5
"""Share of hash buckets (out of 100) that the default rule calls fraud."""

REVIEW_SCHEMA_FILE = "review.avsc"


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`: a signed 32-bit int, as Java returns it."""
    h = murmurhash2(data, KAFKA_MURMUR2_SEED)
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def to_positive(x: int) -> int:
    """Kafka's `Utils.toPositive`: clear the sign bit (not abs, so MIN_VALUE maps to 0)."""
    return x & 0x7FFF_FFFF


@runtime_checkable
class FraudModel(Protocol):
    """What the fraud filter needs from a model.

    `is_fraud_body` gets the raw Avro body (the bytes after the Confluent header) so that
    byte-level models skip decoding; `is_fraud` gets the decoded Review for models that look
    at fields.
    """

    def is_fraud_body(self, body: bytes) -> bool: ...

    def is_fraud(self, review: dict[str, Any]) -> bool: ...


class HashFraudModel:
    """The original app's rule: murmur2 of the single-object encoding, 5% of buckets are fraud."""

    def __init__(self, schema_path: str | Path | None = None) -> None:
        """Load the Review schema (default `<schemas dir>/review.avsc`) and fix the hash prefix.

        The 10-byte single-object prefix depends only on the schema, so it is computed once and
        each record costs one concatenation and one hash call.
        """
        path = schema_path if schema_path is not None else schemas_dir() / REVIEW_SCHEMA_FILE
        self.schema = load_schema(path)
        self.prefix = SINGLE_OBJECT_MAGIC + schema_fingerprint_le(self.schema)

    def is_fraud_body(self, body: bytes) -> bool:
        """Verdict on an Avro binary body (hot path: `to_positive` inlined).

        murmurhash2 returns the hash unsigned; masking the sign bit gives the same value as
        Kafka's toPositive of the signed int.
        """
        h = murmurhash2(self.prefix + body, KAFKA_MURMUR2_SEED)
        return (h & 0x7FFF_FFFF) % 100 < FRAUD_PERCENT

    def is_fraud(self, review: dict[str, Any]) -> bool:
        """Verdict on a decoded Review, by encoding it with the model's schema."""
        buf = io.BytesIO()
        schemaless_writer(buf, self.schema, review)
        return self.is_fraud_body(buf.getvalue())


def load_model(spec: str | None) -> FraudModel:
    """Build the fraud model named by `spec`, "package.module:factory_or_class".

    None or "" gives the default `HashFraudModel`. The attribute after the colon may be dotted
    (e.g. "pkg.mod:Models.strict") and is called without arguments. Raises ValueError naming
    the spec when it is malformed, cannot be imported, or does not yield a FraudModel.
    """
    if not spec:
        return HashFraudModel()
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"bad {FRAUD_MODEL_ENV} spec {spec!r}: expected 'package.module:factory_or_class'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"bad {FRAUD_MODEL_ENV} spec {spec!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    for name in attr_path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError as exc:
            raise ValueError(
                f"bad {FRAUD_MODEL_ENV} spec {spec!r}: {module_name!r} has no {attr_path!r}"
            ) from exc
    if not callable(target):
        raise ValueError(f"bad {FRAUD_MODEL_ENV} spec {spec!r}: {attr_path!r} is not callable")
    model = target()
    if not isinstance(model, FraudModel):
        raise ValueError(
            f"bad {FRAUD_MODEL_ENV} spec {spec!r}: {attr_path!r} returned "
            f"{type(model).__name__}, which lacks is_fraud_body(body) and is_fraud(review)"
        )
    return model
