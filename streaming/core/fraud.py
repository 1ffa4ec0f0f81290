"""The fraud rule: which reviews the fraud filter rejects.

The default model is byte-compatible with the original Kafka Streams app: a review is fraud iff
`to_positive(murmur2(single_object_bytes)) % 100 < 5`, where `murmur2` is Kafka's
`Utils.murmur2` and `single_object_bytes` is Avro's single-object encoding of the Review
(C3 01, 8-byte little-endian CRC-64-AVRO fingerprint of the schema's canonical form, Avro body).
The original app deserialized each record and hashed `review.toByteBuffer()`, the encoding of
the *decoded* review; so do the stream and the batch. For a body already in that canonical
encoding (nearly every one) it is the bytes as received, which the fraud filter hashes without
decoding; `review_frames.frame_batch` re-encodes the rare other one first (another writer
schema, a longer varint than needed, invalid UTF-8 that Java decodes to U+FFFD), and the batch
re-encodes each row the sink stored, so both agree with the original app on every record.

The model is pluggable: callers read the `FRAUD_MODEL` environment variable, a dotted path
"package.module:factory_or_class" (empty or unset = `HashFraudModel`), and pass it to
`load_model`. The stream worker hands a model whole batches of canonical Review bodies, packed
(`review_bytes.pack`), so a byte-level model runs compiled over the batch.
"""

import importlib
import io
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from fastavro import schemaless_writer

from streaming.core.avro_codec import (
    REPO_SCHEMAS_DIR,
    SINGLE_OBJECT_MAGIC,
    load_schema,
    schema_fingerprint_le,
)
from streaming.core.review_bytes import hash_buckets, pack

FRAUD_PERCENT = 5
"""Share of hash buckets (out of 100) that the default rule calls fraud."""

REVIEW_SCHEMA_FILE = "review.avsc"


@runtime_checkable
class FraudModel(Protocol):
    """What the fraud filter needs from a model.

    `is_fraud_batch` gets a packed batch of canonical Review Avro bodies (the bytes after the
    Confluent header: `buf`, and each body's `starts`/`ends` in it) and returns one bool per
    body, so byte-level models skip decoding and per-record Python calls; `is_fraud` gets one
    decoded Review, for models that look at fields and for the batch side.
    """

    def is_fraud_batch(
        self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> np.ndarray: ...

    def is_fraud(self, review: dict[str, Any]) -> bool: ...


class HashFraudModel:
    """The original app's rule: murmur2 of the single-object encoding, 5% of buckets are fraud."""

    def __init__(self, schema_path: str | Path | None = None) -> None:
        """Load the Review schema (default the repository's `schemas/review.avsc`; a
        deployment's SCHEMAS_DIR is its caller's to pass) and fix the hash prefix.

        The 10-byte single-object prefix depends only on the schema, so it is computed once and
        each record costs one concatenation and one hash call.
        """
        path = schema_path if schema_path is not None else REPO_SCHEMAS_DIR / REVIEW_SCHEMA_FILE
        self.schema = load_schema(path)
        self.prefix = SINGLE_OBJECT_MAGIC + schema_fingerprint_le(self.schema)
        self._prefix_array = np.frombuffer(self.prefix, dtype=np.uint8)

    def is_fraud_batch(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Verdicts on a packed batch: murmur2 of prefix + body, compiled, no concatenation."""
        return hash_buckets(self._prefix_array, buf, starts, ends, 100) < FRAUD_PERCENT

    def is_fraud_body(self, body: bytes) -> bool:
        """Verdict on one Avro binary body (the batch path, for one record)."""
        return bool(self.is_fraud_batch(*pack([body]))[0])

    def is_fraud(self, review: dict[str, Any]) -> bool:
        """Verdict on a decoded Review, by encoding it with the model's schema."""
        buf = io.BytesIO()
        schemaless_writer(buf, self.schema, review)
        return self.is_fraud_body(buf.getvalue())


def load_model(spec: str | None, schemas_dir: Path | None = None) -> FraudModel:
    """Build the fraud model named by `spec`, "package.module:factory_or_class".

    None or "" gives the default `HashFraudModel` (its schema from `schemas_dir`, default the
    repository's). The attribute after the colon may be dotted
    (e.g. "pkg.mod:Models.strict") and is called without arguments. Raises ValueError naming
    the spec when it is malformed, cannot be imported, or does not yield a FraudModel.
    """
    if not spec:
        return HashFraudModel(None if schemas_dir is None else schemas_dir / REVIEW_SCHEMA_FILE)
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"bad FRAUD_MODEL spec {spec!r}: expected 'package.module:factory_or_class'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"bad FRAUD_MODEL spec {spec!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    for name in attr_path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError as exc:
            raise ValueError(
                f"bad FRAUD_MODEL spec {spec!r}: {module_name!r} has no {attr_path!r}"
            ) from exc
    if not callable(target):
        raise ValueError(f"bad FRAUD_MODEL spec {spec!r}: {attr_path!r} is not callable")
    model = target()
    if not isinstance(model, FraudModel):
        raise ValueError(
            f"bad FRAUD_MODEL spec {spec!r}: {attr_path!r} returned "
            f"{type(model).__name__}, which lacks is_fraud_batch(buf, starts, ends) and "
            "is_fraud(review)"
        )
    return model
