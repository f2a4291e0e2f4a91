"""Unit tests of the Rust module through its public path ``sluice.native``.

fastavro is the independent oracle: records are written with
``fastavro.schemaless_writer`` and resolved with ``fastavro.schemaless_reader``, and
the Rust decoder/encoder must agree with it value for value (NaN and -0.0 included)
and byte for byte.
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

from sluice.native import (
    AvroDecoder,
    AvroEncoder,
    BadMagicError,
    DecodeError,
    EmptyMessageError,
    EncodeError,
    SchemaError,
    SluiceError,
    TrailingBytesError,
    TruncatedError,
    TypeMismatchError,
    UnknownSchemaError,
    parse_confluent_header,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
OUTPUT_SCHEMAS = (
    "telemetry.enriched-value/v1.avsc",
    "dlq-value/v1.avsc",
    "scores-value/v1.avsc",
    "alerts-value/v1.avsc",
)
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


# ---------------------------------------------------------------------------------------
# oracle helpers
# ---------------------------------------------------------------------------------------


def load(rel: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / rel).read_text())


def frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def strip_logical(schema: Any) -> Any:
    """The schema without logicalType annotations (same binary encoding), so fastavro
    hands back the underlying ints like the Rust module instead of datetimes."""
    if isinstance(schema, dict):
        return {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical(s) for s in schema]
    return schema


def fa_parse(schema: Any) -> Any:
    return fastavro.parse_schema(strip_logical(copy.deepcopy(schema)))


def fa_write(schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fa_parse(schema), record)
    return buf.getvalue()


def fa_read(body: bytes, writer: Any, reader: Any) -> Any:
    buf = io.BytesIO(body)
    value = fastavro.schemaless_reader(buf, fa_parse(writer), fa_parse(reader))
    assert buf.tell() == len(body), "oracle did not consume the whole body"
    return value


def _fullname(schema: dict[str, Any], namespace: str | None) -> tuple[str, str | None]:
    name = schema["name"]
    if "." in name:
        return name, name.rsplit(".", 1)[0]
    ns = schema.get("namespace", namespace)
    return (f"{ns}.{name}" if ns else name), ns


def collect_names(schema: Any, names: dict[str, Any], namespace: str | None = None) -> None:
    """Register every named type (by short and full name)."""
    if isinstance(schema, list):
        for s in schema:
            collect_names(s, names, namespace)
        return
    if not isinstance(schema, dict):
        return
    t = schema["type"]
    if isinstance(t, (dict, list)):
        collect_names(t, names, namespace)
        return
    if t in ("record", "error", "enum", "fixed"):
        full, namespace = _fullname(schema, namespace)
        names[full] = schema
        names[schema["name"].rsplit(".", 1)[-1]] = schema
    if t in ("record", "error"):
        for f in schema["fields"]:
            collect_names(f["type"], names, namespace)
    elif t == "array":
        collect_names(schema["items"], names, namespace)
    elif t == "map":
        collect_names(schema["values"], names, namespace)


def _deref(schema: Any, names: dict[str, Any]) -> Any:
    while isinstance(schema, str) and schema not in PRIMITIVES:
        schema = names[schema]
    while isinstance(schema, dict) and isinstance(schema["type"], (dict, list)):
        schema = schema["type"]
    return schema


def _type(schema: Any) -> str:
    return schema if isinstance(schema, str) else schema["type"]


def shape(value: Any, schema: Any, record_as: str, names: dict[str, Any] | None = None) -> Any:
    """An oracle value (fastavro dict) in the shape the Rust decoder returns for
    ``schema``: records as tuples in reader field order, or dicts in reader order."""
    if names is None:
        names = {}
        collect_names(schema, names)
    s = _deref(schema, names)
    if isinstance(s, list):  # union: only containers need re-shaping
        for branch in s:
            t = _type(_deref(branch, names))
            if (
                (isinstance(value, dict) and t in ("record", "map"))
                or (isinstance(value, list) and t == "array")
            ):
                return shape(value, branch, record_as, names)
        return value
    t = _type(s)
    if t in ("record", "error"):
        fields = [(f["name"], shape(value[f["name"]], f["type"], record_as, names)) for f in s["fields"]]
        if record_as == "tuple":
            return tuple(v for _, v in fields)
        return dict(fields)
    if t == "array":
        return [shape(v, s["items"], record_as, names) for v in value]
    if t == "map":
        return {k: shape(v, s["values"], record_as, names) for k, v in value.items()}
    return value


def diff(actual: Any, expected: Any, path: str = "$") -> str | None:
    """None when equal (strict types; NaN equals NaN; -0.0 differs from 0.0), else
    a description of the first difference."""
    if type(actual) is not type(expected):
        kinds = f"{type(actual).__name__} != {type(expected).__name__}"
        return f"{path}: type {kinds} ({actual!r} vs {expected!r})"
    if isinstance(actual, float):
        if math.isnan(actual) and math.isnan(expected):
            return None
        if actual == expected and math.copysign(1.0, actual) == math.copysign(1.0, expected):
            return None
        return f"{path}: {actual!r} != {expected!r}"
    if isinstance(actual, (tuple, list)):
        if len(actual) != len(expected):
            return f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            d = diff(a, e, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    if isinstance(actual, dict):
        if list(actual) != list(expected):
            return f"{path}: keys {list(actual)} != {list(expected)}"
        for k in actual:
            d = diff(actual[k], expected[k], f"{path}[{k!r}]")
            if d is not None:
                return d
        return None
    return None if actual == expected else f"{path}: {actual!r} != {expected!r}"


# ---------------------------------------------------------------------------------------
# seeded random values for any schema
# ---------------------------------------------------------------------------------------

F32_MAX = 3.4028234663852886e38
F32_EDGES = [
    0.0, -0.0, 1.0, -1.5, F32_MAX, -F32_MAX, 1.401298464324817e-45, -1.401298464324817e-45,
    1.1754943508222875e-38, math.inf, -math.inf, math.nan,
]
F64_EDGES = [
    0.0, -0.0, 0.1, sys.float_info.max, -sys.float_info.max, 5e-324, -5e-324,
    sys.float_info.min, 1e300, -1e-300, math.inf, -math.inf, math.nan,
]
INT_EDGES = [0, -1, 1, 63, 64, -64, -65, 2**31 - 1, -(2**31)]
LONG_EDGES = [*INT_EDGES, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63)]
STR_EDGES = [
    "", "a", "é", "日本語テキスト", "🚀🔥", "\x00", "nul\x00inside", "\U0010ffff", "x" * 300,
    "line\nbreak\t",
]


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def rand_str(rng: random.Random) -> str:
    if rng.random() < 0.35:
        return rng.choice(STR_EDGES)
    out = []
    for _ in range(rng.randrange(0, 20)):
        r = rng.random()
        if r < 0.5:
            cp = rng.randrange(0x20, 0x7F)
        elif r < 0.8:
            cp = rng.randrange(0x80, 0x800)
        elif r < 0.95:
            cp = rng.randrange(0x800, 0x10000)
        else:
            cp = rng.randrange(0x10000, 0x110000)
        out.append(chr(0xFFFD if 0xD800 <= cp <= 0xDFFF else cp))
    return "".join(out)


def rand_f32(rng: random.Random) -> float:
    if rng.random() < 0.3:
        return rng.choice(F32_EDGES)
    sign = rng.choice((-1.0, 1.0))
    return f32(sign * math.ldexp(rng.random(), rng.randrange(-145, 128)))


def rand_f64(rng: random.Random) -> float:
    if rng.random() < 0.3:
        return rng.choice(F64_EDGES)
    return rng.choice((-1.0, 1.0)) * math.ldexp(rng.random(), rng.randrange(-1070, 1024))


def rand_int(rng: random.Random, bits: int) -> int:
    edges = INT_EDGES if bits == 32 else LONG_EDGES
    if rng.random() < 0.3:
        return rng.choice(edges)
    if rng.random() < 0.5:
        return rng.randrange(-1000, 1000)
    return rng.randrange(-(2 ** (bits - 1)), 2 ** (bits - 1))


def gen(schema: Any, rng: random.Random, names: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(value for the Rust encoder with records as tuples, the same value for fastavro)."""
    if names is None:
        names = {}
        collect_names(schema, names)
    s = _deref(schema, names)
    if isinstance(s, list):
        return gen(rng.choice(s), rng, names)
    t = _type(s)
    if t == "null":
        return None, None
    if t == "boolean":
        b = rng.random() < 0.5
        return b, b
    if t in ("int", "long"):
        v = rand_int(rng, 32 if t == "int" else 64)
        return v, v
    if t == "float":
        v = rand_f32(rng)
        return v, v
    if t == "double":
        v = rand_f64(rng)
        return v, v
    if t == "string":
        v = rand_str(rng)
        return v, v
    if t == "bytes":
        v = rng.randbytes(rng.choice((0, 1, 5, 40)))
        return v, v
    if t == "fixed":
        v = rng.randbytes(s["size"])
        return v, v
    if t == "enum":
        v = rng.choice(s["symbols"])
        return v, v
    if t == "array":
        items = [gen(s["items"], rng, names) for _ in range(rng.choice((0, 0, 1, 2, 7)))]
        return [a for a, _ in items], [b for _, b in items]
    if t == "map":
        keys = {rand_str(rng) for _ in range(rng.choice((0, 0, 1, 3, 6)))}
        vals = {k: gen(s["values"], rng, names) for k in sorted(keys)}
        return {k: a for k, (a, _) in vals.items()}, {k: b for k, (_, b) in vals.items()}
    if t in ("record", "error"):
        fields = [(f["name"], gen(f["type"], rng, names)) for f in s["fields"]]
        return tuple(a for _, (a, _) in fields), {n: b for n, (_, b) in fields}
    raise AssertionError(f"no generator for {t}")


# ---------------------------------------------------------------------------------------
# schemas used below
# ---------------------------------------------------------------------------------------

V1 = load("telemetry-value/v1.avsc")
V2 = load("telemetry-value/v2.avsc")

# A writer/reader pair exercising most resolution rules.
RICH_WRITER = {
    "type": "record", "name": "Thing", "namespace": "t.rich",
    "fields": [
        {"name": "old_name", "type": "string"},
        {"name": "count", "type": "int"},
        {"name": "ratio", "type": "float"},
        {"name": "level", "type": {"type": "enum", "name": "Level",
                                   "symbols": ["LOW", "MID", "HIGH", "EXTREME"]}},
        {"name": "choice", "type": ["null", "string", "long"]},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "a", "type": "int"},
            {"name": "gone", "type": "string"},
            {"name": "b", "type": {"type": "array", "items": "int"}},
        ]}},
        {"name": "tags", "type": {"type": "map", "values": "float"}},
        {"name": "items", "type": {"type": "array", "items": {
            "type": "record", "name": "Item", "fields": [
                {"name": "k", "type": "string"},
                {"name": "v", "type": ["null", "int"]},
            ]}}},
        {"name": "removed", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
        {"name": "blob", "type": "bytes"},
        {"name": "promo", "type": "int"},
        {"name": "stamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    ],
}
RICH_READER = {
    "type": "record", "name": "Thing", "namespace": "t.rich",
    "fields": [
        # nested record: fields reordered, one dropped, one added with default, int→long inside
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "b", "type": {"type": "array", "items": "long"}},
            {"name": "a", "type": "long"},
            {"name": "c", "type": "string", "default": "dflt"},
        ]}},
        # alias rename
        {"name": "new_name", "aliases": ["old_name"], "type": "string"},
        # union reordering
        {"name": "choice", "type": ["long", "string", "null"]},
        # enum symbol unknown to the reader → the enum default
        {"name": "level", "type": {"type": "enum", "name": "Level",
                                   "symbols": ["LOW", "MID", "HIGH", "UNKNOWN"],
                                   "default": "UNKNOWN"}},
        {"name": "count", "type": "long"},  # int → long
        {"name": "ratio", "type": "double"},  # float → double
        {"name": "tags", "type": {"type": "map", "values": "double"}},
        {"name": "items", "type": {"type": "array", "items": {
            "type": "record", "name": "Item", "fields": [
                {"name": "v", "type": ["null", "long", "string"]},
                {"name": "k", "type": "string"},
            ]}}},
        {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
        {"name": "blob", "type": "bytes"},
        {"name": "promo", "type": ["null", "double"]},  # non-union writer into a union, promoted
        {"name": "stamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "added", "type": {"type": "array", "items": "int"}, "default": [1, 2]},
        {"name": "point", "type": {"type": "record", "name": "Point", "fields": [
            {"name": "x", "type": "int"}, {"name": "y", "type": ["null", "string"]},
        ]}, "default": {"x": 7, "y": None}},
    ],
}


def telemetry_messages(n: int, seed: int) -> list[tuple[int, bytes, dict[str, Any]]]:
    """(writer id, framed message, fastavro record) for seeded random v1/v2 records."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sid, writer = rng.choice(((1, V1), (2, V2)))
        _, rec = gen(writer, rng)
        out.append((sid, frame(sid, fa_write(writer, rec)), rec))
    return out


def telemetry_decoder(record_as: str = "tuple", reader: Any = V2) -> AvroDecoder:
    dec = AvroDecoder(json.dumps(reader), record_as=record_as)
    dec.add_writer_schema(1, json.dumps(V1))
    dec.add_writer_schema(2, json.dumps(V2))
    return dec


@pytest.fixture(scope="module")
def messages() -> list[tuple[int, bytes, dict[str, Any]]]:
    return telemetry_messages(500, seed=20240601)


# ---------------------------------------------------------------------------------------
# exception hierarchy and attributes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [EmptyMessageError, BadMagicError, UnknownSchemaError, TruncatedError, TypeMismatchError,
     TrailingBytesError],
)
def test_decode_errors_are_decode_and_sluice_errors(cls: type) -> None:
    assert issubclass(cls, DecodeError)
    assert issubclass(cls, SluiceError)
    assert issubclass(cls, Exception)


def test_encode_and_schema_errors_are_sluice_errors_not_decode_errors() -> None:
    for cls in (EncodeError, SchemaError):
        assert issubclass(cls, SluiceError)
        assert not issubclass(cls, DecodeError)
    assert issubclass(DecodeError, SluiceError)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [(EmptyMessageError, "empty"), (BadMagicError, "bad-magic"),
     (UnknownSchemaError, "unknown-schema"), (TruncatedError, "truncated"),
     (TypeMismatchError, "type-mismatch"), (TrailingBytesError, "trailing-bytes")],
)
def test_hand_made_subclass_has_its_reason_and_none_for_the_rest(cls: type, reason: str) -> None:
    e = cls("boom")
    assert e.reason == reason
    assert e.schema_id is None
    assert e.offset is None
    assert str(e) == "boom"


def test_bare_decode_error_has_no_reason() -> None:
    e = DecodeError("x")
    assert (e.reason, e.schema_id, e.offset) == (None, None, None)


# ---------------------------------------------------------------------------------------
# Confluent framing errors
# ---------------------------------------------------------------------------------------


def test_empty_message() -> None:
    with pytest.raises(EmptyMessageError) as ei:
        telemetry_decoder().decode(b"")
    assert ei.value.reason == "empty"
    assert ei.value.schema_id is None


@pytest.mark.parametrize("first", [0x01, 0x02, 0x7F, 0x80, 0xFF, ord("{"), ord("t")])
def test_bad_magic(first: int) -> None:
    with pytest.raises(BadMagicError) as ei:
        telemetry_decoder().decode(bytes([first]) + b"\x00\x00\x00\x01\x02ab")
    assert ei.value.reason == "bad-magic"
    assert ei.value.offset == 0
    assert ei.value.schema_id is None


def test_bad_magic_wins_over_short_input() -> None:
    with pytest.raises(BadMagicError):
        telemetry_decoder().decode(b"\x05")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_header_shorter_than_five_bytes_is_truncated(n: int) -> None:
    data = b"\x00\x00\x00\x00\x01"[:n]
    with pytest.raises(TruncatedError) as ei:
        telemetry_decoder().decode(data)
    assert ei.value.reason == "truncated"
    assert ei.value.schema_id is None
    assert ei.value.offset is not None and ei.value.offset <= n


def test_parse_confluent_header() -> None:
    assert parse_confluent_header(b"\x00\x01\x02\x03\x04rest") == (0x01020304, 5)
    assert parse_confluent_header(b"\x00\xff\xff\xff\xff") == (2**32 - 1, 5)
    with pytest.raises(EmptyMessageError):
        parse_confluent_header(b"")
    with pytest.raises(BadMagicError):
        parse_confluent_header(b"\x01\x00\x00\x00\x01")
    with pytest.raises(TruncatedError):
        parse_confluent_header(b"\x00\x00\x01")


def test_unknown_schema_id_then_added(messages: list[tuple[int, bytes, dict[str, Any]]]) -> None:
    dec = telemetry_decoder()
    _, msg, _ = next(m for m in messages if m[0] == 1)
    unknown = frame(0x01020304, msg[5:])
    with pytest.raises(UnknownSchemaError) as ei:
        dec.decode(unknown)
    assert ei.value.reason == "unknown-schema"
    assert ei.value.schema_id == 0x01020304  # big-endian id
    assert ei.value.offset is None
    assert not dec.has_writer(0x01020304)
    # the documented recovery: add the writer, retry
    dec.add_writer_schema(0x01020304, json.dumps(V1))
    assert dec.has_writer(0x01020304)
    assert dec.writer_ids() == [1, 2, 0x01020304]
    assert dec.decode(unknown) == (0x01020304, dec.decode(msg)[1])


def test_decode_requires_bytes() -> None:
    with pytest.raises(TypeError):
        telemetry_decoder().decode("\x00\x00\x00\x00\x01")  # type: ignore[arg-type]


def test_body_cut_at_every_position_is_truncated(
    messages: list[tuple[int, bytes, dict[str, Any]]],
) -> None:
    dec = telemetry_decoder()
    checked = 0
    for sid, msg, _ in messages[:120]:
        body = msg[5:]
        for k in range(len(body)):
            cut = msg[: 5 + k]
            with pytest.raises(DecodeError) as ei:
                dec.decode(cut)
            e = ei.value
            assert type(e) is TruncatedError, (cut, e)
            assert e.reason == "truncated"
            assert e.schema_id == sid
            assert 5 <= e.offset <= len(cut)
            # decode_body reports the same failure with body-relative offsets
            with pytest.raises(DecodeError) as eb:
                dec.decode_body(sid, body[:k])
            assert type(eb.value) is TruncatedError
            assert eb.value.offset == e.offset - 5
            checked += 1
    assert checked > 120 * 20


def test_rich_body_cut_at_every_position_is_truncated() -> None:
    dec = AvroDecoder(json.dumps(RICH_READER))
    dec.add_writer_schema(9, json.dumps(RICH_WRITER))
    rng = random.Random(7)
    for _ in range(40):
        _, rec = gen(RICH_WRITER, rng)
        msg = frame(9, fa_write(RICH_WRITER, rec))
        dec.decode(msg)  # the whole message is fine
        for k in range(5, len(msg)):
            with pytest.raises(DecodeError) as ei:
                dec.decode(msg[:k])
            assert type(ei.value) is TruncatedError, (msg[:k], ei.value)
            assert ei.value.schema_id == 9


@pytest.mark.parametrize("extra", [b"\x00", b"\x02abc", b"\xff" * 9])
def test_trailing_bytes(messages: list[tuple[int, bytes, dict[str, Any]]], extra: bytes) -> None:
    dec = telemetry_decoder()
    sid, msg, _ = messages[3]
    with pytest.raises(TrailingBytesError) as ei:
        dec.decode(msg + extra)
    assert ei.value.reason == "trailing-bytes"
    assert ei.value.schema_id == sid
    assert ei.value.offset == len(msg)
    with pytest.raises(TrailingBytesError) as eb:
        dec.decode_body(sid, msg[5:] + extra)
    assert eb.value.offset == len(msg) - 5


def _v1_body(event_id: bytes = b"\x02e", status_index: bytes = b"\x00") -> bytes:
    # event_id, device_id "d", ts 0, two floats, status enum index
    return event_id + b"\x02d" + b"\x00" + b"\x00" * 8 + status_index


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_v1_body(event_id=b"\x04\xff\xfe"), "event_id"),  # invalid UTF-8
        (_v1_body(event_id=b"\x03ab"), "event_id"),  # negative length
        (_v1_body(status_index=b"\x06"), "status"),  # enum index 3 of 3 symbols
        (_v1_body(status_index=b"\x01"), "status"),  # enum index -1
    ],
)
def test_malformed_body_is_type_mismatch(body: bytes, field: str) -> None:
    dec = telemetry_decoder()
    assert dec.decode(frame(1, _v1_body()))[1][5] == "OK"  # the template itself is valid
    with pytest.raises(DecodeError) as ei:
        dec.decode(frame(1, body))
    assert type(ei.value) is TypeMismatchError
    assert ei.value.reason == "type-mismatch"
    assert ei.value.schema_id == 1
    assert field in str(ei.value)


# ---------------------------------------------------------------------------------------
# schema resolution against fastavro
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("record_as", ["tuple", "dict"])
def test_telemetry_v1_v2_match_fastavro(
    messages: list[tuple[int, bytes, dict[str, Any]]], record_as: str
) -> None:
    dec = telemetry_decoder(record_as)
    assert dec.record_as == record_as
    assert dec.reader_field_names == [f["name"] for f in V2["fields"]]
    writers = {1: V1, 2: V2}
    seen = {1: 0, 2: 0}
    for sid, msg, _ in messages:
        got_id, got = dec.decode(msg)
        assert got_id == sid
        expected = shape(fa_read(msg[5:], writers[sid], V2), V2, record_as)
        d = diff(got, expected)
        assert d is None, f"schema id {sid}, message {msg!r}: {d}"
        assert diff(dec.decode_body(sid, msg[5:]), expected) is None
        seen[sid] += 1
    assert min(seen.values()) > 150  # both writers well represented


def test_telemetry_edge_values_are_covered(messages: list[tuple[int, bytes, dict[str, Any]]]) -> None:
    """The random set really contains the edge values the comparison is meant to cover."""
    recs = [r for _, _, r in messages]
    temps = [r["temperature_c"] for r in recs]
    assert any(math.isnan(t) for t in temps)
    assert any(math.isinf(t) for t in temps)
    assert any(t == 0.0 and math.copysign(1, t) < 0 for t in temps)
    assert any(r["event_id"] == "" for r in recs)
    assert any(any(ord(c) > 0xFFFF for c in r["device_id"]) for r in recs)
    assert any(r["ts"] in (2**63 - 1, -(2**63)) for r in recs)
    v2 = [r for r in recs if "humidity_pct" in r]
    assert any(r["humidity_pct"] is None for r in v2)
    assert any(r["firmware"] is None for r in v2)
    assert any(isinstance(r["humidity_pct"], float) and abs(r["humidity_pct"]) > 1e300 for r in v2)


def test_v1_record_gets_v2_defaults() -> None:
    rec = {"event_id": "e-1", "device_id": "dev-0001", "ts": 1_700_000_000_000,
           "temperature_c": 21.5, "vibration_rms": 1.25, "status": "WARN"}
    dec = telemetry_decoder("dict")
    _, got = dec.decode(frame(1, fa_write(V1, rec)))
    assert got == {**rec, "humidity_pct": None, "firmware": None, "sample_count": 1}
    assert list(got) == dec.reader_field_names


@pytest.mark.parametrize("record_as", ["tuple", "dict"])
def test_rich_schema_pair_matches_fastavro(record_as: str) -> None:
    dec = AvroDecoder(json.dumps(RICH_READER), record_as=record_as)
    dec.add_writer_schema(42, json.dumps(RICH_WRITER))
    rng = random.Random(1234)
    levels = set()
    for i in range(300):
        _, rec = gen(RICH_WRITER, rng)
        body = fa_write(RICH_WRITER, rec)
        got_id, got = dec.decode(frame(42, body))
        assert got_id == 42
        expected = shape(fa_read(body, RICH_WRITER, RICH_READER), RICH_READER, record_as)
        d = diff(got, expected)
        assert d is None, f"record {i} {rec!r}: {d}"
        levels.add(rec["level"])
    assert "EXTREME" in levels  # the enum-default path was exercised


def test_rich_schema_pair_specific_rules() -> None:
    """The resolution rules, spelled out on one record (independently of fastavro)."""
    rec = {
        "old_name": "renamed", "count": -(2**31), "ratio": 0.1, "level": "EXTREME",
        "choice": 2**40, "inner": {"a": 5, "gone": "bye", "b": [2**31 - 1, -3]},
        "tags": {"t": 0.5}, "items": [{"k": "x", "v": 3}, {"k": "y", "v": None}],
        "removed": {"r": ["a", "b"]}, "fx": b"\x00\x01\x02\x03", "blob": b"", "promo": -9,
        "stamp": 1,
    }
    dec = AvroDecoder(json.dumps(RICH_READER), record_as="dict")
    dec.add_writer_schema(42, json.dumps(RICH_WRITER))
    got = dec.decode_body(42, fa_write(RICH_WRITER, rec))
    assert got == {
        "inner": {"b": [2**31 - 1, -3], "a": 5, "c": "dflt"},
        "new_name": "renamed",
        "choice": 2**40,
        "level": "UNKNOWN",
        "count": -(2**31),
        "ratio": f32(0.1),
        "tags": {"t": 0.5},
        "items": [{"v": 3, "k": "x"}, {"v": None, "k": "y"}],
        "fx": b"\x00\x01\x02\x03",
        "blob": b"",
        "promo": -9.0,
        "stamp": 1,
        "added": [1, 2],
        "point": {"x": 7, "y": None},
    }
    assert type(got["promo"]) is float
    assert "removed" not in got


def test_enum_symbol_unknown_to_reader_without_default_is_type_mismatch() -> None:
    reader = copy.deepcopy(RICH_READER)
    level = next(f for f in reader["fields"] if f["name"] == "level")
    del level["type"]["default"]
    dec = AvroDecoder(json.dumps(reader))
    dec.add_writer_schema(1, json.dumps(RICH_WRITER))  # allowed: fails only if the symbol occurs
    rng = random.Random(5)
    _, rec = gen(RICH_WRITER, rng)
    ok = dec.decode_body(1, fa_write(RICH_WRITER, {**rec, "level": "HIGH"}))
    assert ok[dec.reader_field_names.index("level")] == "HIGH"
    with pytest.raises(TypeMismatchError) as ei:
        dec.decode_body(1, fa_write(RICH_WRITER, {**rec, "level": "EXTREME"}))
    assert "level" in str(ei.value)
    # fastavro agrees that this is an error
    with pytest.raises(Exception, match="(?i)symbol|enum|EXTREME"):
        fa_read(fa_write(RICH_WRITER, {**rec, "level": "EXTREME"}), RICH_WRITER, reader)


def test_writer_union_branch_without_reader_match_is_type_mismatch() -> None:
    writer = {"type": "record", "name": "U", "fields": [{"name": "v", "type": ["int", "string"]}]}
    reader = {"type": "record", "name": "U", "fields": [{"name": "v", "type": "long"}]}
    dec = AvroDecoder(json.dumps(reader))
    dec.add_writer_schema(3, json.dumps(writer))
    assert dec.decode(frame(3, fa_write(writer, {"v": -7}))) == (3, (-7,))
    assert fa_read(fa_write(writer, {"v": -7}), writer, reader) == {"v": -7}
    with pytest.raises(TypeMismatchError):
        dec.decode(frame(3, fa_write(writer, {"v": "text"})))


# ---------------------------------------------------------------------------------------
# incompatible writers and schema registration
# ---------------------------------------------------------------------------------------


def test_reader_field_without_default_missing_in_writer_is_schema_error() -> None:
    reader = copy.deepcopy(V2)
    reader["fields"].append({"name": "site_code", "type": "string"})
    dec = AvroDecoder(json.dumps(reader))
    with pytest.raises(SchemaError, match="site_code") as ei:
        dec.add_writer_schema(1, json.dumps(V1))
    assert not isinstance(ei.value, DecodeError)
    assert not dec.has_writer(1)
    assert dec.writer_ids() == []


def test_nested_missing_field_names_the_path() -> None:
    writer = {"type": "record", "name": "O", "fields": [{"name": "reading", "type": {
        "type": "record", "name": "R", "fields": [{"name": "temp", "type": "float"}]}}]}
    reader = copy.deepcopy(writer)
    reader["fields"][0]["type"]["fields"].append({"name": "unit", "type": "string"})
    with pytest.raises(SchemaError, match=r"reading\.unit"):
        AvroDecoder(json.dumps(reader)).add_writer_schema(1, json.dumps(writer))


def test_unpromotable_type_is_schema_error_naming_field() -> None:
    reader = copy.deepcopy(V2)
    reader["fields"][3]["type"] = "int"  # temperature_c: float cannot be read as int
    with pytest.raises(SchemaError, match="temperature_c"):
        AvroDecoder(json.dumps(reader)).add_writer_schema(1, json.dumps(V1))


def test_add_writer_schema_idempotent_and_conflicting() -> None:
    dec = telemetry_decoder()
    dec.add_writer_schema(1, json.dumps(V1, indent=2))  # same canonical form: no-op
    assert dec.writer_ids() == [1, 2]
    with pytest.raises(SchemaError):
        dec.add_writer_schema(1, json.dumps(V2))
    with pytest.raises(OverflowError):
        dec.add_writer_schema(2**32, json.dumps(V1))


def test_constructor_errors() -> None:
    with pytest.raises(SchemaError):
        AvroDecoder("{not json")
    with pytest.raises(ValueError, match="record_as"):
        AvroDecoder(json.dumps(V2), record_as="list")  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        AvroEncoder(json.dumps({"type": "record", "name": "X", "fields": [
            {"name": "a", "type": "int", "default": "not an int"}]}), 1)


# ---------------------------------------------------------------------------------------
# AvroEncoder against fastavro
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", OUTPUT_SCHEMAS)
def test_encoder_byte_identical_to_fastavro(rel: str) -> None:
    schema = load(rel)
    enc = AvroEncoder(json.dumps(schema), 0x01020304)
    assert enc.schema_id == 0x01020304
    assert enc.field_names == [f["name"] for f in schema["fields"]]
    dec = AvroDecoder(json.dumps(schema))
    dec.add_writer_schema(0x01020304, json.dumps(schema))
    rng = random.Random(sum(map(ord, rel)))
    for _ in range(250):
        tup, rec = gen(schema, rng)
        expected = fa_write(schema, rec)
        body = enc.encode_body(tup)
        assert body == expected, (tup, body, expected)
        framed = enc.encode(tup)
        assert framed == b"\x00\x01\x02\x03\x04" + expected
        assert enc.encode(list(tup)) == framed
        assert enc.encode(rec) == framed  # dict input
        # and it round-trips through the decoder
        assert diff(dec.decode(framed), (0x01020304, tup)) is None


@pytest.mark.parametrize(
    "schema", [V1, V2, RICH_WRITER], ids=["telemetry-v1", "telemetry-v2", "rich-writer"]
)
def test_encoder_matches_fastavro_for_telemetry_and_rich_schema(schema: dict[str, Any]) -> None:
    enc = AvroEncoder(json.dumps(schema), 5)
    rng = random.Random(99)
    for _ in range(200):
        tup, rec = gen(schema, rng)
        body = enc.encode_body(tup)
        # The block encoding of arrays/maps may legitimately differ between writers, so
        # compare what fastavro reads back; for these schemas the bytes match as well.
        assert diff(fa_read(body, schema, schema), rec) is None
        assert body == fa_write(schema, rec)


def test_dict_input_uses_field_defaults() -> None:
    schema = load("alerts-value/v1.avsc")
    enc = AvroEncoder(json.dumps(schema), 1)
    rec = {"alert_id": "dev@0", "device_id": "dev", "window_start": 0, "window_end": 10,
           "metric": "temperature_c", "mean": 90.0, "threshold": 80.0, "score": 1.125,
           "severity": "CRITICAL", "model_version": "threshold-v0", "ignored_extra": 1}
    body = enc.encode_body(rec)  # site_id omitted: default null
    assert body == fa_write(schema, {**rec, "site_id": None})


def _alert_tuple() -> list[Any]:
    return ["dev@0", "dev", None, 0, 10, "temperature_c", 90.0, 80.0, 1.125, "CRITICAL", "v0"]


@pytest.mark.parametrize(
    ("index", "value", "reason", "path"),
    [
        (3, "not a long", "wrong-type", "window_start"),
        (3, True, "wrong-type", "window_start"),  # bool is never an int
        (3, 2**63, "out-of-range", "window_start"),
        (4, -(2**63) - 1, "out-of-range", "window_end"),
        (6, "90.0", "wrong-type", "mean"),
        (6, 10**400, "out-of-range", "mean"),
        (2, 5, "wrong-type", "site_id"),
        (9, "INFO", "unknown-symbol", "severity"),
        (9, 1, "wrong-type", "severity"),
    ],
)
def test_encode_errors(index: int, value: Any, reason: str, path: str) -> None:
    enc = AvroEncoder(json.dumps(load("alerts-value/v1.avsc")), 1)
    good = _alert_tuple()
    enc.encode(tuple(good))
    bad = list(good)
    bad[index] = value
    with pytest.raises(EncodeError) as ei:
        enc.encode(tuple(bad))
    assert ei.value.reason == reason
    assert ei.value.path == path
    assert path in str(ei.value)


def test_encode_int_out_of_range_for_int_field() -> None:
    enc = AvroEncoder(json.dumps(load("dlq-value/v1.avsc")), 1)
    good = [b"x", "telemetry", 0, 1, 2, "BadMagicError", "bad-magic", "d", None, "job", 3]
    enc.encode(good)
    for value in (2**31, -(2**31) - 1):
        bad = list(good)
        bad[2] = value
        with pytest.raises(EncodeError) as ei:
            enc.encode(bad)
        assert (ei.value.reason, ei.value.path) == ("out-of-range", "source_partition")
    # the edges themselves fit
    enc.encode([*good[:2], 2**31 - 1, *good[3:]])
    enc.encode([*good[:2], -(2**31), *good[3:]])


def test_encode_missing_field_without_default() -> None:
    enc = AvroEncoder(json.dumps(load("alerts-value/v1.avsc")), 1)
    rec = dict(zip(enc.field_names, _alert_tuple(), strict=True))
    enc.encode(rec)
    del rec["device_id"]
    with pytest.raises(EncodeError) as ei:
        enc.encode(rec)
    assert (ei.value.reason, ei.value.path) == ("missing-field", "device_id")


def test_encode_wrong_tuple_length_is_top_level_wrong_type() -> None:
    enc = AvroEncoder(json.dumps(load("alerts-value/v1.avsc")), 1)
    with pytest.raises(EncodeError) as ei:
        enc.encode(tuple(_alert_tuple()[:-1]))
    assert (ei.value.reason, ei.value.path) == ("wrong-type", "")


def test_encode_error_path_in_nested_containers() -> None:
    schema = {"type": "record", "name": "N", "fields": [{"name": "items", "type": {
        "type": "array", "items": {"type": "record", "name": "I", "fields": [
            {"name": "tags", "type": {"type": "map", "values": "int"}}]}}}]}
    enc = AvroEncoder(json.dumps(schema), 1)
    with pytest.raises(EncodeError) as ei:
        enc.encode(([{"tags": {}}, {"tags": {"a": 1}}, {"tags": {"k": "bad"}}],))
    assert (ei.value.reason, ei.value.path) == ("wrong-type", "items[2].tags[k]")


# ---------------------------------------------------------------------------------------
# negative controls: the comparison can fail
# ---------------------------------------------------------------------------------------


def test_diff_reports_perturbations(messages: list[tuple[int, bytes, dict[str, Any]]]) -> None:
    dec = telemetry_decoder()
    sid, msg, _ = next(
        m for m in messages
        if m[0] == 2 and isinstance(m[2]["humidity_pct"], float) and math.isfinite(m[2]["temperature_c"])
    )
    _, got = dec.decode(msg)
    expected = shape(fa_read(msg[5:], V2, V2), V2, "tuple")
    assert diff(got, expected) is None

    def perturbed(i: int, value: Any) -> tuple[Any, ...]:
        return tuple(value if j == i else v for j, v in enumerate(expected))

    temp = expected[3]
    assert diff(got, perturbed(3, math.nextafter(temp, math.inf))) is not None
    assert diff(got, perturbed(3, math.nan)) is not None
    assert diff(got, perturbed(0, expected[0] + "x")) is not None
    assert diff(got, perturbed(2, float(expected[2]))) is not None  # int vs float
    assert diff(got, expected[:-1]) is not None
    assert diff(got, list(expected)) is not None  # tuple vs list
    assert diff(0.0, -0.0) is not None
    assert diff(True, 1) is not None
    assert diff({"a": 1, "b": 2}, {"b": 2, "a": 1}) is not None  # reader order matters
    assert diff(math.nan, math.nan) is None


def test_wrong_reader_is_detected_by_the_oracle(
    messages: list[tuple[int, bytes, dict[str, Any]]],
) -> None:
    """Decode v1 messages with a reader whose firmware default differs from the real v2:
    the comparison against fastavro (with the real v2) must flag every one of them."""
    wrong = copy.deepcopy(V2)
    fw = next(f for f in wrong["fields"] if f["name"] == "firmware")
    fw["type"] = ["string", "null"]
    fw["default"] = "unknown-firmware"
    dec = telemetry_decoder(reader=wrong)
    v1_msgs = [m for m in messages if m[0] == 1][:50]
    assert v1_msgs
    for _, msg, _ in v1_msgs:
        _, got = dec.decode(msg)
        expected = shape(fa_read(msg[5:], V1, V2), V2, "tuple")
        d = diff(got, expected)
        assert d is not None and d.startswith("$[7]"), d


@pytest.mark.parametrize(
    "x",
    [
        F32_MAX,
        math.nextafter(F32_MAX, math.inf),
        3.4028235677973362e38,  # largest double that still rounds to F32_MAX
        3.4028235677973366e38,  # rounds to infinity: does not fit
        -1e39,
        1e-50,
        -1e-50,
        0.1,
        math.inf,
        math.nan,
    ],
)
def test_float_narrowing_matches_struct_pack(x: float) -> None:
    """double → Avro float rounds like C's (float) cast, and overflow is an error."""
    enc = AvroEncoder(json.dumps({"type": "record", "name": "F", "fields": [
        {"name": "f", "type": "float"}]}), 1)
    try:
        expected = struct.pack("<f", x)
    except OverflowError:
        with pytest.raises(EncodeError) as ei:
            enc.encode_body((x,))
        assert (ei.value.reason, ei.value.path) == ("out-of-range", "f")
    else:
        assert enc.encode_body((x,)) == expected
