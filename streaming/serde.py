"""Avro values in the Confluent wire format, with schemas from the registry (I/O at the edge).

Our own thin codec instead of confluent-kafka's AvroSerializer: the workers need the writer
schema id and the raw body (the fraud rule hashes the body without decoding it), and a decode
that tells "unknown schema id" apart from "registry unreachable" (a dead letter vs. a retry).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import httpx2
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from streaming.core.avro_codec import split_confluent
from streaming.core.review_frames import Writer, writer_for
from streaming.settings import redact_url, registry_client_config

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"


class RegistryUnavailable(ConnectionError):
    """The schema registry could not be reached: nothing is wrong with the data, retry later."""


class UnknownSchemaError(LookupError):
    """The registry does not know the schema id a record names (the record is poison)."""


@cache
def local_schema(file_name: str) -> dict[str, Any]:
    """A schema of `schemas/`, parsed once per process."""
    # every schema there is a record: parsed, a dict
    return cast("dict[str, Any]", parse_schema(json.loads((SCHEMAS_DIR / file_name).read_text())))


@dataclass(frozen=True)
class WriterSchema:
    schema_id: int
    parsed: dict[str, Any]
    canonical: str


class Registry:
    """Schema lookups by id and registrations by subject, cached for the process lifetime."""

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        self._client = SchemaRegistryClient(registry_client_config(url))
        self._by_id: dict[int, WriterSchema] = {}

    def writer_schema(self, schema_id: int) -> WriterSchema:
        """The schema a record was written with; UnknownSchemaError when the registry has none.

        Other registry errors (unreachable, 5xx) propagate: the record is not at fault.
        """
        found = self._by_id.get(schema_id)
        if found is None:
            try:
                schema_str = self._call(self._client.get_schema, schema_id).schema_str
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    self._confirm_serving(schema_id)
                    msg = f"schema id {schema_id} is not in the registry"
                    raise UnknownSchemaError(msg) from exc
                raise
            parsed = cast("dict[str, Any]", parse_schema(json.loads(schema_str)))  # values: records
            found = WriterSchema(schema_id, parsed, to_parsing_canonical_form(parsed))
            self._by_id[schema_id] = found
        return found

    def _confirm_serving(self, schema_id: int) -> None:
        """A 404 for an id convicts the record only when the registry serves its schemas: one
        restarting over empty or unready storage answers 404 for every id, and taking that
        at its word would dead-letter every record until the worker restarts. A registry
        without a single subject is not serving (RegistryUnavailable: retry)."""
        if not self._call(self._client.get_subjects):
            raise RegistryUnavailable(
                f"schema registry at {self.url} answered 404 for schema id {schema_id} and "
                "lists no subjects: not serving its schemas (restarting?)"
            )

    def register(self, subject: str, schema_file: str) -> int:
        """Register (idempotently) a schema of `schemas/` under a subject and return its id."""
        text = (SCHEMAS_DIR / schema_file).read_text()
        return self._call(self._client.register_schema, subject, Schema(text, "AVRO"))

    def _call(self, method: Any, *args: Any) -> Any:
        """A registry request; a transport failure or a 5xx answer (the registry up but its
        storage not, as while its database restarts) becomes RegistryUnavailable naming the URL."""
        try:
            return method(*args)
        except httpx2.TransportError as exc:
            raise RegistryUnavailable(
                f"schema registry at {self.url} is unreachable: {exc}"
            ) from exc
        except SchemaRegistryError as exc:
            if (exc.http_status_code or 0) >= 500:
                raise RegistryUnavailable(
                    f"schema registry at {self.url} cannot serve now: {exc}"
                ) from exc
            raise


def decode(registry: Registry, value: bytes, reader_schema: dict[str, Any]) -> dict[str, Any]:
    """Decode a Confluent-framed value into the reader schema (Avro schema resolution).

    Raises WireFormatError (bad framing), UnknownSchemaError, or fastavro's errors for a body
    that does not match its writer schema or cannot be resolved to the reader schema.
    """
    schema_id, body = split_confluent(value)
    writer = registry.writer_schema(schema_id)
    bio = io.BytesIO(body)
    record = cast("dict[str, Any]", schemaless_reader(bio, writer.parsed, reader_schema))
    if bio.tell() != len(body):
        raise ValueError(f"{len(body) - bio.tell()} trailing bytes after the Avro body")
    return record


UNKNOWN_ID_RECHECK_S = 30.0
"""How long "the registry has no such id" is believed before it is asked again (the schema may
be registered since: a producer that wrote before registering, a registry restored late)."""


class ReviewWriters:
    """schema id -> how to read Review records written with it (None: the registry has no such
    id), looked up once per id for the process (an unknown id again after
    UNKNOWN_ID_RECHECK_S): the workers' only registry I/O."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.review_schema = local_schema("review.avsc")
        self.clock = clock
        self._known: dict[int, Writer | None] = {}
        self._unknown_since: dict[int, float] = {}

    def __call__(self, schema_id: int) -> Writer | None:
        if schema_id in self._known and (
            self._known[schema_id] is not None
            or self.clock() - self._unknown_since[schema_id] < UNKNOWN_ID_RECHECK_S
        ):
            return self._known[schema_id]
        try:
            parsed = self.registry.writer_schema(schema_id).parsed
            self._known[schema_id] = writer_for(parsed, self.review_schema)
        except UnknownSchemaError:
            self._known[schema_id] = None
            self._unknown_since[schema_id] = self.clock()
        return self._known[schema_id]
