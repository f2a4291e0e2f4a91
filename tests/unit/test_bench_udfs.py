"""The pure-Python baseline of `sluice bench` (sluice/bench_udfs.py) does the same work as
the Rust codec it replaces: same decoded tuples, same encoded bytes."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest

from sluice.bench_udfs import PyAvroDecoder, PyAvroEncoder, plain_schema
from sluice.config import REPO_ROOT
from sluice.native import AvroDecoder, AvroEncoder, DecodeError, UnknownSchemaError

SCHEMAS = REPO_ROOT / "schemas"
V = {v: (SCHEMAS / "telemetry-value" / f"{v}.avsc").read_text() for v in ("v1", "v2", "v3")}
RECORDS = {
    "v1": {"event_id": "e1", "device_id": "dev-1", "ts": 1_790_000_000_000,
           "temperature_c": 51.25, "vibration_rms": 1.5, "status": "WARN"},
    "v2": {"event_id": "e2", "device_id": "dev-2", "ts": 1_790_000_000_001,
           "temperature_c": 49.5, "vibration_rms": 1.25, "status": "OK", "humidity_pct": 40.0,
           "firmware": "1.5.0", "sample_count": 12},
    "v3": {"event_id": "e3", "device_id": "dev-3", "ts": 1_790_000_000_002,
           "temperature_c": 48.123, "vibration_rms_g": 1.0, "status": "MAINTENANCE",
           "humidity_pct": None, "firmware": None, "sample_count": 3},
}


def _framed(version: str, schema_id: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(plain_schema(json.loads(V[version]))),
                               RECORDS[version])
    return struct.pack(">bI", 0, schema_id) + buf.getvalue()


def test_decode_matches_rust_for_every_writer() -> None:
    py, rs = PyAvroDecoder(V["v3"]), AvroDecoder(V["v3"])
    for i, version in enumerate(("v1", "v2", "v3"), start=1):
        py.add_writer_schema(i, V[version])
        rs.add_writer_schema(i, V[version])
        assert py.decode(_framed(version, i)) == rs.decode(_framed(version, i))


def test_encode_matches_rust_bytes() -> None:
    enriched = (SCHEMAS / "telemetry.enriched-value" / "v3.avsc").read_text()
    fields = json.loads(enriched)["fields"]
    rs_dec = AvroDecoder(enriched)
    rs_dec.add_writer_schema(9, enriched)
    # A record the Rust encoder accepts, built from the decoded default-ish values.
    record = ("e1", "dev-1", 1_790_000_000_000, "TELEMETRY", 51.25, 1.5, "OK", 40.0, "1.5.0", 12,
              "site-a", "m1", 80.0, 1, "t", 0, 7, 1_790_000_000_100, None, None, [], 5)
    assert len(record) == len(fields)
    rust = AvroEncoder(enriched, 9).encode(record)
    assert PyAvroEncoder(enriched, 9).encode(record) == rust
    assert rs_dec.decode(rust)[1] == record


def test_bad_input_raises_the_rust_error_types() -> None:
    py = PyAvroDecoder(V["v3"])
    with pytest.raises(UnknownSchemaError) as unknown:
        py.decode(_framed("v1", 4))
    assert unknown.value.schema_id == 4
    py.add_writer_schema(4, V["v1"])
    with pytest.raises(DecodeError) as bad:
        py.decode(b"\x01" + _framed("v1", 4)[1:])
    assert bad.value.reason == "bad-magic"
    with pytest.raises(DecodeError) as short:
        py.decode(_framed("v1", 4)[:-3])
    assert short.value.reason == "truncated"
