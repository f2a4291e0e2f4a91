"""Pure-Python UDFs for `sluice bench` variant (b): the honest baseline.

Same job graph, same Python crossings, same enrichment and routing as the Rust UDFs of
:mod:`sluice.udfs`; only the codec work is done in Python: fastavro decodes the
Confluent-framed telemetry (writer schema from the registry → reader schema, Avro
resolution) and encodes the EnrichedReading, DeadLetter, WindowScore and Alert records.
:class:`PyIngest` and :class:`PyScoreWindow` subclass the Rust-backed UDFs and swap
their codec objects in ``open()``, so every other line of the per-record path is shared.

fastavro is given the schemas without logical types, so it does the same work as the
Rust side (sluice keeps ``timestamp-millis`` as an int; tests/bench/test_codec_bench.py).
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
from pyflink.table.udf import FunctionContext

from sluice.udfs import Ingest, ScoreWindow

_MAGIC = 0


def plain_schema(schema: Any) -> Any:
    """An Avro schema (parsed JSON) without logical types."""
    if isinstance(schema, dict):
        return {k: plain_schema(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [plain_schema(s) for s in schema]
    return schema


class PyUnknownSchema(Exception):
    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is not known")
        self.schema_id = schema_id


class PyAvroDecoder:
    """fastavro stand-in for :class:`sluice._native.AvroDecoder` (tuple records, reader
    field order). Unknown writer ids raise the Rust module's UnknownSchemaError type, so
    :class:`sluice.udfs.Ingest` fetches them from the registry the same way."""

    def __init__(self, reader_schema: str) -> None:
        self.reader = fastavro.parse_schema(plain_schema(json.loads(reader_schema)))
        self.fields = [f["name"] for f in json.loads(reader_schema)["fields"]]
        self.writers: dict[int, Any] = {}

    def add_writer_schema(self, schema_id: int, text: str) -> None:
        self.writers[schema_id] = fastavro.parse_schema(plain_schema(json.loads(text)))

    def decode(self, value: bytes) -> tuple[int, tuple]:
        from sluice.native import DecodeError, UnknownSchemaError

        if len(value) < 5 or value[0] != _MAGIC:
            bad = DecodeError("not Confluent-framed Avro (bad magic byte)")
            bad.reason, bad.schema_id = "bad-magic", None
            raise bad
        schema_id = struct.unpack(">I", value[1:5])[0]
        writer = self.writers.get(schema_id)
        if writer is None:
            unknown = UnknownSchemaError(f"unknown schema id {schema_id}")
            unknown.reason, unknown.schema_id = "unknown-schema", schema_id
            raise unknown
        try:
            rec = fastavro.schemaless_reader(io.BytesIO(value[5:]), writer, self.reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, SchemaResolutionError
            bad = DecodeError(f"fastavro: {exc}")
            bad.reason = "truncated" if isinstance(exc, EOFError) else "type-mismatch"
            bad.schema_id = schema_id
            raise bad from exc
        return schema_id, tuple(rec[f] for f in self.fields)  # type: ignore[index]


def _to_datum(schema: Any, value: Any) -> Any:
    """A tuple-shaped record (as the Rust encoder takes it) → fastavro's dict shape."""
    if value is None:
        return None
    if isinstance(schema, list):  # union: the first non-null branch that is a record
        for branch in schema:
            is_record = isinstance(branch, dict) and branch.get("type") == "record"
            if is_record and isinstance(value, (tuple, list)):
                return _to_datum(branch, value)
        return value
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record" and isinstance(value, (tuple, list)):
            return {f["name"]: _to_datum(f["type"], v) for f, v in zip(schema["fields"], value, strict=True)}
        if kind == "array":
            return [_to_datum(schema["items"], v) for v in value]
    return value


class PyAvroEncoder:
    """fastavro stand-in for :class:`sluice._native.AvroEncoder`: Confluent-framed."""

    def __init__(self, schema: str, schema_id: int) -> None:
        self.raw = plain_schema(json.loads(schema))
        self.schema = fastavro.parse_schema(self.raw)
        self.header = struct.pack(">bI", _MAGIC, schema_id)

    def encode(self, record: Any) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.schema, _to_datum(self.raw, record))
        return buf.getvalue()


class PyIngest(Ingest):
    """:class:`sluice.udfs.Ingest` with fastavro decode and encode instead of Rust."""

    def open(self, function_context: FunctionContext) -> None:
        super().open(function_context)
        self.decoder = PyAvroDecoder(self.reader_schema)  # type: ignore[assignment]
        self.enriched_encoder = PyAvroEncoder(self.enriched_schema, self.enriched_id)  # type: ignore[assignment]
        self.dlq_encoder = PyAvroEncoder(self.dlq_schema, self.dlq_id)  # type: ignore[assignment]
        if self.checkers:
            raise ValueError("PyIngest has no Python quality checks: run it without suites")


class PyScoreWindow(ScoreWindow):
    """:class:`sluice.udfs.ScoreWindow` with fastavro encoders instead of Rust."""

    def open(self, function_context: FunctionContext) -> None:
        super().open(function_context)
        self.score_encoder = PyAvroEncoder(self.score_schema, self.score_id)  # type: ignore[assignment]
        self.alert_encoder = PyAvroEncoder(self.alert_schema, self.alert_id)  # type: ignore[assignment]
