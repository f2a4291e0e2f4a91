"""Unit tests of the sensor-frame and maintenance-event decoders of the Rust module
(``sluice.native.FrameDecoder`` / ``encode_frame`` / ``EventDecoder``).

Independent oracles written here in Python:

* frames: built and parsed with :mod:`struct` + :func:`zlib.crc32` following
  ``docs/formats.md``; statistics from :func:`math.fsum` (accuracy, 1e-9 relative) and
  from the documented sequential f64 formula (bit-exact, so a 1-ulp slip is caught);
* events: :mod:`json` (with a pairs hook, so duplicate keys stay visible) plus the field
  rules of ``docs/formats.md`` in document order, which predicts the exact reason code of
  every rejected document.

Fuzz loops are seeded, so every run checks the same inputs.
"""

from __future__ import annotations

import json
import math
import random
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import pytest

from sluice.native import (
    BadCrcError,
    BadMagicError,
    DecodeError,
    EmptyMessageError,
    EncodeError,
    EventDecoder,
    FrameDecoder,
    InvalidUtf8Error,
    MalformedJsonError,
    MissingFieldError,
    OversizedError,
    SluiceError,
    TooDeepError,
    TrailingBytesError,
    TruncatedError,
    TypeMismatchError,
    UnsupportedVersionError,
    encode_frame,
)

REASON_CLASS: dict[str, type[DecodeError]] = {
    "empty": EmptyMessageError,
    "bad-magic": BadMagicError,
    "truncated": TruncatedError,
    "type-mismatch": TypeMismatchError,
    "trailing-bytes": TrailingBytesError,
    "unsupported-version": UnsupportedVersionError,
    "bad-crc": BadCrcError,
    "invalid-utf8": InvalidUtf8Error,
    "oversized": OversizedError,
    "too-deep": TooDeepError,
    "malformed-json": MalformedJsonError,
    "missing-field": MissingFieldError,
}


def check_error(e: BaseException, reason: str | None = None) -> DecodeError:
    """``e`` is a module-raised DecodeError whose class matches its reason code."""
    assert isinstance(e, DecodeError), repr(e)
    assert e.reason in REASON_CLASS, e.reason
    assert type(e) is REASON_CLASS[e.reason], (type(e), e.reason)
    assert e.schema_id is None
    if reason is not None:
        assert e.reason == reason, str(e)
    return e


# =======================================================================================
# frames: Python oracle
# =======================================================================================


def f32(x: float) -> float:
    """Round to the nearest f32 (what a frame can carry)."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def py_frame(
    device_id: bytes | str,
    ts_ms: int,
    rate: int,
    samples: Sequence[float],
    *,
    version: int = 1,
    flags: int = 0,
    id_len: int | None = None,
    n: int | None = None,
    crc: int | None = None,
) -> bytes:
    dev = device_id.encode() if isinstance(device_id, str) else device_id
    body = (
        struct.pack(">2sBBB", b"SF", version, flags, len(dev) if id_len is None else id_len)
        + dev
        + struct.pack(">qIH", ts_ms, rate, len(samples) if n is None else n)
        + struct.pack(f">{len(samples)}f", *samples)
    )
    return body + struct.pack(">I", zlib.crc32(body) if crc is None else crc)


def py_decode_frame(data: bytes, max_samples: int = 4096) -> tuple[Any, ...] | str:
    """The format spec in Python: the decoded fields and samples, or the reason code the
    decoder must raise (same check order as docs/formats.md)."""
    if not data:
        return "empty"
    for i, want in enumerate(b"SF"):
        if i >= len(data):
            return "truncated"
        if data[i] != want:
            return "bad-magic"
    if len(data) < 3:
        return "truncated"
    if data[2] != 1:
        return "unsupported-version"
    if len(data) < 5:
        return "truncated"
    id_len = data[4]
    if len(data) < 5 + id_len + 14:
        return "truncated"
    ts, rate, n = struct.unpack_from(">qIH", data, 5 + id_len)
    total = 5 + id_len + 14 + 4 * n + 4
    if len(data) < total:
        return "truncated"
    if len(data) > total:
        return "trailing-bytes"
    (stored,) = struct.unpack_from(">I", data, total - 4)
    if zlib.crc32(data[: total - 4]) != stored:
        return "bad-crc"
    if data[3] != 0 or not 1 <= id_len <= 64 or rate == 0 or not 1 <= n <= max_samples:
        return "type-mismatch"
    try:
        dev = data[5 : 5 + id_len].decode("utf-8")
    except UnicodeDecodeError:
        return "invalid-utf8"
    samples = list(struct.unpack_from(f">{n}f", data, 5 + id_len + 14))
    return dev, ts, rate, n, samples


def fsum_stats(samples: Sequence[float]) -> tuple[float, float, float]:
    """(rms, peak_abs, mean) with correctly rounded sums (math.fsum)."""
    n = len(samples)
    return (
        math.sqrt(math.fsum(x * x for x in samples) / n),
        max(abs(x) for x in samples),
        math.fsum(samples) / n,
    )


def sequential_stats(samples: Sequence[float]) -> tuple[float, float, float]:
    """The documented one-pass formula (docs/formats.md), evaluated in Python floats (IEEE
    binary64, same operation order), so it must agree with Rust bit for bit."""
    s = 0.0
    q = 0.0
    peak = 0.0
    for x in samples:
        s += x
        q += x * x
        if abs(x) > peak or math.isnan(x):  # a NaN sticks: later comparisons are False
            peak = abs(x)
    n = len(samples)
    return math.sqrt(q / n), peak, s / n


def same_float(a: float, b: float) -> bool:
    return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))


def assert_frame_matches(
    got: tuple[Any, ...], device_id: str, ts_ms: int, rate: int, samples: Sequence[float]
) -> None:
    """Compare ``FrameDecoder.decode`` output with the Python oracle: exact header fields,
    statistics bit-exact against the documented formula and within 1e-9 relative of the
    fsum-based values (mean: relative to max(|mean|, mean |x|), since a mean near zero is
    pure cancellation)."""
    assert got[:4] == (device_id, ts_ms, rate, len(samples))
    names = ("rms", "peak_abs", "mean")
    seq = sequential_stats(samples)
    for name, g, w in zip(names, got[4:], seq, strict=True):
        assert same_float(g, w), f"{name}: rust {g!r} != documented formula {w!r}"
    rms, peak, mean = fsum_stats(samples)
    scale = math.fsum(abs(x) for x in samples) / len(samples)
    assert math.isclose(got[4], rms, rel_tol=1e-9, abs_tol=0.0), (got[4], rms)
    assert got[5] == peak
    assert abs(got[6] - mean) <= 1e-9 * max(abs(mean), scale), (got[6], mean)


def random_samples(rng: random.Random, n: int) -> list[float]:
    kind = rng.randrange(5)
    if kind == 0:
        xs = [rng.gauss(0.0, 1.0) for _ in range(n)]
    elif kind == 1:
        xs = [rng.uniform(-1e3, 1e3) for _ in range(n)]
    elif kind == 2:  # wide dynamic range
        xs = [rng.choice((-1, 1)) * 10.0 ** rng.uniform(-30, 30) for _ in range(n)]
    elif kind == 3:  # offset signal: mean far from zero
        xs = [1e4 + rng.gauss(0.0, 1e-2) for _ in range(n)]
    else:  # extremes of f32
        pool = [3.4028234663852886e38, -3.4028234663852886e38, 1.401298464324817e-45, 0.0, -0.0, 1.0]
        xs = [rng.choice(pool) for _ in range(n)]
    return [f32(x) for x in xs]


def random_device_id(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_.éü日本🦀"
    while True:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        if len(s.encode()) <= 64:
            return s


# =======================================================================================
# frames: tests
# =======================================================================================


def test_new_exception_classes() -> None:
    for reason, cls in REASON_CLASS.items():
        assert issubclass(cls, DecodeError) and issubclass(cls, SluiceError)
        assert cls.reason == reason
        e = cls("hand made")
        assert (e.reason, e.schema_id, e.offset) == (reason, None, None)


def test_zlib_crc_is_the_frame_crc() -> None:
    # Known answer of CRC-32/ISO-HDLC, so the Python oracle itself is pinned.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    f = py_frame("d", 1, 2, [1.0])
    # magic, version, flags, id len | "d" | ts_ms | rate | n | 1.0f | crc
    head = bytes.fromhex("5346 01 00 016400000000000000010000000200013f800000")
    assert f == head + struct.pack(">I", zlib.crc32(head))


def test_frames_against_python_oracle() -> None:
    rng = random.Random(20240611)
    dec = FrameDecoder()
    for i in range(600):
        n = rng.choice((1, 2, 3, 64, rng.randint(1, 300), 4096 if i % 50 == 0 else 5))
        dev = random_device_id(rng)
        ts = rng.choice((0, -1, 2**63 - 1, -(2**63), rng.randint(-(2**63), 2**63 - 1), 1_700_000_000_000))
        rate = rng.choice((1, 2**32 - 1, rng.randint(1, 2**32 - 1), 1000))
        samples = random_samples(rng, n)
        frame = py_frame(dev, ts, rate, samples)
        assert encode_frame(dev, ts, rate, samples) == frame
        got = dec.decode(frame)
        assert_frame_matches(got, dev, ts, rate, samples)
        raw = dec.samples(frame)
        assert [struct.pack(">d", x) for x in raw] == [struct.pack(">d", x) for x in samples]


def test_frame_comparison_detects_one_ulp_in_rms() -> None:
    """Negative control: the helper is not vacuous."""
    rng = random.Random(7)
    samples = random_samples(rng, 64)
    frame = py_frame("dev-1", 5, 100, samples)
    got = FrameDecoder().decode(frame)
    assert_frame_matches(got, "dev-1", 5, 100, samples)
    for direction in (math.inf, -math.inf):
        off = (*got[:4], math.nextafter(got[4], direction), *got[5:])
        with pytest.raises(AssertionError, match="rms"):
            assert_frame_matches(off, "dev-1", 5, 100, samples)
    # ... and an error above the 1e-9 accuracy bound in the mean too.
    off = (*got[:6], got[6] * (1 + 1e-8) + 1e-8)
    with pytest.raises(AssertionError):
        assert_frame_matches(off, "dev-1", 5, 100, samples)


def test_encode_frame_python_floats_round_to_f32() -> None:
    xs = [0.1, 1 / 3, -2.5, 1e-40, 5, -0.0]
    assert encode_frame("d", 0, 1, xs) == py_frame("d", 0, 1, [f32(x) for x in xs])
    assert encode_frame("d", 0, 1, tuple(xs)) == encode_frame("d", 0, 1, xs)
    assert FrameDecoder().samples(encode_frame("d", 0, 1, xs)) == [f32(x) for x in xs]


def test_non_finite_samples() -> None:
    dec = FrameDecoder()
    nan, inf = math.nan, math.inf
    cases = [
        ([1.0, nan, 2.0], (nan, nan, nan)),
        ([nan], (nan, nan, nan)),
        ([1.0, -inf], (inf, inf, -inf)),
        ([inf, -inf], (inf, inf, nan)),
    ]
    for samples, want in cases:
        frame = py_frame("d", 0, 1, samples)
        assert encode_frame("d", 0, 1, samples) == frame
        got = dec.decode(frame)
        assert got[:4] == ("d", 0, 1, len(samples))
        for g, w in zip(got[4:], want, strict=True):
            assert same_float(g, w), (samples, got)
        assert all(same_float(a, b) for a, b in zip(dec.samples(frame), samples, strict=True))


def test_frame_reason_codes() -> None:
    dec = FrameDecoder()
    good = py_frame("dev-1", 7, 100, [1.0, 2.0])
    cases: list[tuple[bytes, str, int, str]] = [
        (b"", "empty", 0, "empty"),
        (b"XF" + good[2:], "bad-magic", 0, "magic"),
        (b"S", "truncated", 0, "magic"),
        (py_frame("d", 0, 1, [1.0], version=2), "unsupported-version", 2, "version 2"),
        (py_frame("d", 0, 1, [1.0], flags=1), "type-mismatch", 3, "flags"),
        (py_frame(b"", 0, 1, [1.0]), "type-mismatch", 4, "device_id_len"),
        (py_frame(b"a" * 65, 0, 1, [1.0]), "type-mismatch", 4, "device_id_len"),
        (py_frame("d", 0, 0, [1.0]), "type-mismatch", 6 + 8, "sample_rate_hz"),
        (py_frame("d", 0, 1, []), "type-mismatch", 6 + 12, "n_samples"),
        (py_frame("d", 0, 1, [0.5] * 4097), "type-mismatch", 6 + 12, "n_samples is 4097"),
        (py_frame(b"ab\xffc", 0, 1, [1.0]), "invalid-utf8", 7, "UTF-8"),
        (good[:-1], "truncated", len(good) - 4, "CRC"),
        (good + b"\x00", "trailing-bytes", len(good), "after the CRC"),
        (good[:-4] + b"\x00\x00\x00\x00", "bad-crc", len(good) - 4, "CRC-32 mismatch"),
    ]
    for data, reason, offset, text in cases:
        assert py_decode_frame(data) == reason
        with pytest.raises(DecodeError) as ei:
            dec.decode(data)
        e = check_error(ei.value, reason)
        assert e.offset == offset, (reason, e.offset, str(e))
        assert text in str(e), str(e)
        with pytest.raises(REASON_CLASS[reason]):
            dec.samples(data)
    # bad-crc shows the expected (computed) and the actual (stored) value.
    with pytest.raises(BadCrcError) as ei:
        dec.decode(good[:-4] + b"\x12\x34\x56\x78")
    assert f"expected {zlib.crc32(good[:-4]):#010x}" in str(ei.value)
    assert "actual 0x12345678" in str(ei.value)
    # A smaller max_samples.
    frame = py_frame("d", 0, 1, [1.0] * 9)
    with pytest.raises(TypeMismatchError):
        FrameDecoder(max_samples=8).decode(frame)
    assert FrameDecoder(max_samples=9).decode(frame)[3] == 9
    for bad in (0, -1, 4097):
        with pytest.raises(ValueError):
            FrameDecoder(max_samples=bad)


def test_every_single_bit_flip_and_truncation() -> None:
    dec = FrameDecoder()
    allowed = {"bad-crc", "bad-magic", "unsupported-version", "type-mismatch", "truncated", "trailing-bytes"}
    frame = py_frame("dev-0001", 1_700_000_000_000, 1000, [f32(x / 7) for x in range(64)])
    for i in range(len(frame)):
        for bit in range(8):
            g = bytearray(frame)
            g[i] ^= 1 << bit
            with pytest.raises(DecodeError) as ei:
                dec.decode(bytes(g))
            e = check_error(ei.value)
            assert e.reason in allowed
            assert e.reason == py_decode_frame(bytes(g)), (i, bit, str(e))
    for k in range(len(frame)):
        with pytest.raises(DecodeError) as ei:
            dec.decode(frame[:k])
        check_error(ei.value, "empty" if k == 0 else "truncated")


def test_encode_frame_errors() -> None:
    cases: list[tuple[tuple[Any, ...], dict[str, Any], str, str]] = [
        (("", 0, 1, [1.0]), {}, "out-of-range", "device_id"),
        (("é" * 33, 0, 1, [1.0]), {}, "out-of-range", "device_id"),
        ((b"d", 0, 1, [1.0]), {}, "wrong-type", "device_id"),
        (("d", 2**63, 1, [1.0]), {}, "out-of-range", "ts_ms"),
        (("d", 1.5, 1, [1.0]), {}, "wrong-type", "ts_ms"),
        (("d", True, 1, [1.0]), {}, "wrong-type", "ts_ms"),
        (("d", 0, 0, [1.0]), {}, "out-of-range", "sample_rate_hz"),
        (("d", 0, 2**32, [1.0]), {}, "out-of-range", "sample_rate_hz"),
        (("d", 0, -1, [1.0]), {}, "out-of-range", "sample_rate_hz"),
        (("d", 0, 1, []), {}, "out-of-range", "samples"),
        (("d", 0, 1, [0.0] * 4097), {}, "out-of-range", "samples"),
        (("d", 0, 1, iter([1.0])), {}, "wrong-type", "samples"),
        (("d", 0, 1, [1.0, "2"]), {}, "wrong-type", "samples[1]"),
        (("d", 0, 1, [1.0, None]), {}, "wrong-type", "samples[1]"),
        (("d", 0, 1, [False]), {}, "wrong-type", "samples[0]"),
        (("d", 0, 1, [1.0, 1e39]), {}, "out-of-range", "samples[1]"),
        (("d", 0, 1, [10**400]), {}, "out-of-range", "samples[0]"),
        (("d", 0, 1, [1.0]), {"version": 2}, "out-of-range", "version"),
    ]
    for args, kwargs, reason, path in cases:
        with pytest.raises(EncodeError) as ei:
            encode_frame(*args, **kwargs)
        assert (ei.value.reason, ei.value.path) == (reason, path), (args, kwargs, str(ei.value))
    assert encode_frame("é" * 32, 0, 1, [1]) == py_frame("é" * 32, 0, 1, [1.0])
    assert encode_frame("d", 0, 1, [1.0], version=1) == py_frame("d", 0, 1, [1.0])


def test_frame_fuzz_only_decode_errors() -> None:
    rng = random.Random(1234)
    dec = FrameDecoder(max_samples=64)
    seeds = [
        py_frame("dev-1", 5, 100, [f32(x / 3) for x in range(16)]),
        py_frame("x", -1, 1, [1.0]),
        py_frame(random_device_id(rng), 0, 7, random_samples(rng, 64)),
    ]
    accepted = 0
    for i in range(4000):
        if i % 4 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(48)))
            if len(data) > 3 and rng.random() < 0.5:
                data = b"SF\x01" + data[3:]
        else:
            g = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                op = rng.randrange(5)
                if not g:
                    break
                j = rng.randrange(len(g))
                if op == 0:
                    g[j] = rng.randrange(256)
                elif op == 1:
                    del g[j:]
                elif op == 2:
                    g.insert(j, rng.randrange(256))
                elif op == 3:
                    g[j] ^= 1 << rng.randrange(8)
                else:  # re-seal the CRC, so the field checks are reached
                    if len(g) > 4:
                        g[-4:] = struct.pack(">I", zlib.crc32(bytes(g[:-4])))
            data = bytes(g)
        want = py_decode_frame(data, 64)
        try:
            got = dec.decode(data)
        except DecodeError as e:
            check_error(e)
            assert e.reason == want, (data.hex(), str(e))
        else:
            accepted += 1
            assert isinstance(want, tuple), (data.hex(), want)
            assert got[:4] == want[:4]
            assert all(same_float(a, b) for a, b in zip(got[4:], sequential_stats(want[4]), strict=True))
    assert accepted > 0


# =======================================================================================
# events: Python oracle
# =======================================================================================

KINDS = ("repair", "inspection", "part_replaced")
KNOWN = ("event_id", "device_id", "ts", "kind", "technician", "notes", "parts")


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, duplicates kept."""


class Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def depth_prescan(text: str) -> int:
    """Max bracket nesting outside strings (a backslash in a string escapes the next char)."""
    depth = best = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            depth += 1
            best = max(best, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return best


def _has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def _keys_ok(obj: Pairs) -> None:
    keys = [k for k, _ in obj]
    if any(_has_surrogate(k) for k in keys) or len(set(keys)) != len(keys):
        raise Reject("malformed-json")


def _strict(v: Any) -> None:
    """What the decoder re-validates in kept (extra) values."""
    if isinstance(v, Pairs):
        _keys_ok(v)
        for _, x in v:
            _strict(x)
    elif isinstance(v, list):
        for x in v:
            _strict(x)
    elif isinstance(v, str):
        if _has_surrogate(v):
            raise Reject("malformed-json")
    elif isinstance(v, float):
        if math.isinf(v):
            raise Reject("malformed-json")
    elif isinstance(v, int) and not isinstance(v, bool):
        try:
            float(v)
        except OverflowError:
            raise Reject("malformed-json") from None


def _string(v: Any, *, nonempty: bool = False) -> str:
    if not isinstance(v, str):
        raise Reject("type-mismatch")
    if _has_surrogate(v):
        raise Reject("malformed-json")
    if nonempty and not v:
        raise Reject("type-mismatch")
    return v


def _int(v: Any, *, positive: bool = False) -> int:
    if type(v) is not int or not -(2**63) <= v < 2**63 or (positive and v <= 0):
        raise Reject("type-mismatch")
    return v


def to_plain(v: Any) -> Any:
    if isinstance(v, Pairs):
        return {k: to_plain(x) for k, x in v}
    if isinstance(v, list):
        return [to_plain(x) for x in v]
    return v


def py_decode_event(data: bytes, max_bytes: int = 65536, max_depth: int = 32) -> tuple[Any, ...] | str:
    """The event format spec in Python (docs/formats.md, same check order): the decoded
    tuple with ``extra`` as parsed values, or the reason code."""
    if not data:
        return "empty"
    if len(data) > max_bytes:
        return "oversized"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid-utf8"
    if depth_prescan(text) > max_depth:
        return "too-deep"
    try:
        top = json.loads(text, object_pairs_hook=Pairs, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return "malformed-json"
    try:
        if not isinstance(top, Pairs):
            raise Reject("malformed-json")
        _keys_ok(top)
        got: dict[str, Any] = {"technician": None, "notes": None, "parts": []}
        extra: dict[str, Any] = {}
        for k, v in top:
            if k in ("event_id", "device_id"):
                got[k] = _string(v, nonempty=True)
            elif k == "ts":
                got[k] = _int(v)
            elif k == "kind":
                if _string(v) not in KINDS:
                    raise Reject("type-mismatch")
                got[k] = v
            elif k in ("technician", "notes"):
                got[k] = None if v is None else _string(v)
            elif k == "parts":
                if not isinstance(v, list) or isinstance(v, Pairs):
                    raise Reject("type-mismatch")
                parts = []
                for item in v:
                    if not isinstance(item, Pairs):
                        raise Reject("type-mismatch")
                    _keys_ok(item)
                    part: dict[str, Any] = {}
                    for pk, pv in item:
                        if pk == "part_no":
                            part[pk] = _string(pv)
                        elif pk == "qty":
                            part[pk] = _int(pv, positive=True)
                        else:
                            raise Reject("type-mismatch")
                    if len(part) != 2:
                        raise Reject("missing-field")
                    parts.append((part["part_no"], part["qty"]))
                got["parts"] = parts
            else:
                _strict(v)
                extra[k] = to_plain(v)
        for k in ("event_id", "device_id", "ts", "kind"):
            if k not in got:
                raise Reject("missing-field")
    except Reject as r:
        return r.reason
    return (
        got["event_id"],
        got["device_id"],
        got["ts"],
        got["kind"],
        got["technician"],
        got["notes"],
        got["parts"],
        extra,
    )


def assert_event_matches(got: tuple[Any, ...], want: tuple[Any, ...]) -> None:
    assert got[:7] == want[:7]
    extra = got[7]
    assert list(extra) == list(want[7]), "extra keys or their order differ"
    for k, text in extra.items():
        assert json.loads(text) == want[7][k], k
        assert type(json.loads(text)) is type(want[7][k]), k


# --------------------------------------------------------------- random documents

STR_POOL = [
    "",
    "a",
    "[",
    "]",
    "{",
    "}",
    '"',
    "\\",
    "\\u",
    "'",
    ",",
    ":",
    " ",
    "\n",
    "\t",
    "\x00",
    "\x1f",
    "é",
    "日本",
    "🦀",
    "\u2028",
    "null",
    "[1]",
    '{"a":1}',
]


def rand_str(rng: random.Random) -> str:
    return "".join(rng.choice(STR_POOL) for _ in range(rng.randrange(6)))


def rand_value(rng: random.Random, depth: int) -> Any:
    k = rng.randrange(9 if depth > 0 else 6)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice((0, -1, 1, 2**53 + 1, -(2**63), 2**64 + 5, 10**30, rng.randint(-(10**6), 10**6)))
    if k == 3:
        return rng.choice((0.0, -0.0, 1.5, 1e-7, 1e300, -2.5e-300, 5e-324, rng.uniform(-1e6, 1e6)))
    if k in (4, 5):
        return rand_str(rng)
    if k in (6, 7):
        return [rand_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rand_str(rng) + str(i): rand_value(rng, depth - 1) for i in range(rng.randrange(4))}


def rand_event(rng: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "wo-" + rand_str(rng) + str(rng.randrange(10**6)),
        "device_id": rng.choice(("dev-0001", "Gerät-🦀", "d")),
        "ts": rng.choice((1_700_000_000_000, 0, -1, 2**63 - 1, -(2**63))),
        "kind": rng.choice(KINDS),
    }
    if rng.random() < 0.6:
        doc["technician"] = rng.choice((None, "a.smith", rand_str(rng)))
    if rng.random() < 0.6:
        doc["notes"] = rng.choice((None, "replaced bearing", rand_str(rng)))
    if rng.random() < 0.7:
        doc["parts"] = [
            {"part_no": rng.choice(("B-6204", rand_str(rng))), "qty": rng.choice((1, 2, 2**63 - 1))}
            if rng.random() < 0.5
            else {"qty": rng.randint(1, 99), "part_no": "S-" + str(rng.randrange(100))}
            for _ in range(rng.randrange(4))
        ]
    for i in range(rng.randrange(5)):
        doc[f"x{i}_" + rand_str(rng)] = rand_value(rng, 4)
    if rng.random() < 0.3:
        doc["cost"] = {"amount": 120.5, "currency": "EUR"}
    items = list(doc.items())
    rng.shuffle(items)
    return dict(items)


def dumps(rng: random.Random, doc: Any) -> tuple[bytes, bool]:
    ensure_ascii = rng.random() < 0.5
    indent = rng.choice((None, None, 0, 2, "\t"))
    seps = rng.choice(((",", ":"), (", ", ": "), (" ,", " :")))
    text = json.dumps(doc, ensure_ascii=ensure_ascii, indent=indent, separators=seps, allow_nan=False)
    if rng.random() < 0.2:
        text = " \n" + text + "\r\n "
    return text.encode("utf-8"), ensure_ascii


# =======================================================================================
# events: tests
# =======================================================================================

EXAMPLE = (
    b'{"event_id": "wo-1", "device_id": "dev-0001", "ts": 1700000000000, "kind": "repair", '
    b'"technician": "a.smith", "notes": "replaced bearing", "parts": [{"part_no": "B-6204", '
    b'"qty": 2}], "cost": {"amount": 120.5, "currency": "EUR"}, "site": ["n", 1]}'
)


def test_event_example() -> None:
    got = EventDecoder().decode(EXAMPLE)
    assert got == (
        "wo-1",
        "dev-0001",
        1700000000000,
        "repair",
        "a.smith",
        "replaced bearing",
        [("B-6204", 2)],
        {"cost": '{"amount":120.5,"currency":"EUR"}', "site": '["n",1]'},
    )
    assert_event_matches(got, py_decode_event(EXAMPLE))  # type: ignore[arg-type]


def test_events_against_python_json() -> None:
    rng = random.Random(99)
    dec = EventDecoder()
    for _ in range(1500):
        doc = rand_event(rng)
        data, ensure_ascii = dumps(rng, doc)
        want = py_decode_event(data)
        assert isinstance(want, tuple), (data, want)
        got = dec.decode(data)
        assert_event_matches(got, want)
        # The kept text is the compact serialisation of the value as written.
        for k, text in got[7].items():
            assert text == json.dumps(doc[k], ensure_ascii=ensure_ascii, separators=(",", ":")), k


def test_event_extra_keeps_numbers_and_escapes_exactly() -> None:
    data = (
        b'{"event_id":"e","device_id":"d","ts":1,"kind":"inspection",'
        b'"big": 123456789012345678901234567890, "f": 1.50E+3, "s": "\\u00e9\\/[", '
        b'"n": {"k" : [ 1 , "a  b" ]}}'
    )
    got = EventDecoder().decode(data)
    assert got[7] == {
        "big": "123456789012345678901234567890",
        "f": "1.50E+3",
        "s": '"\\u00e9\\/["',
        "n": '{"k":[1,"a  b"]}',
    }
    assert json.loads(got[7]["big"]) == 123456789012345678901234567890


def event_error(data: bytes, reason: str, dec: EventDecoder | None = None) -> DecodeError:
    """``data`` raises the class of ``reason``, and the Python oracle predicts it."""
    dec = dec or EventDecoder()
    with pytest.raises(DecodeError) as ei:
        dec.decode(data)
    e = check_error(ei.value, reason)
    assert py_decode_event(data, dec.max_bytes, dec.max_depth) == reason
    return e


def doc_with(extra: str) -> bytes:
    return ('{"event_id":"e","device_id":"d","ts":1,"kind":"inspection"' + extra + "}").encode()


def test_event_reason_codes() -> None:
    e = event_error(b"", "empty")
    assert e.offset == 0

    small = EventDecoder(max_bytes=len(doc_with("")))
    assert small.decode(doc_with(""))[0] == "e"
    e = event_error(doc_with(',"x":1'), "oversized", small)
    assert e.offset == small.max_bytes
    e = event_error(b"\xff" * 100_000, "oversized")  # checked before parsing

    data = doc_with("").replace(b'"e"', b'"e\xc3"')
    e = event_error(data, "invalid-utf8")
    assert e.offset == data.index(b"\xc3")

    e = event_error(doc_with(',"x":[[[1]]]'), "too-deep", EventDecoder(max_depth=3))
    assert e.offset == doc_with(',"x":[[[1]]]').index(b"[[[") + 2

    for bad in (b"[1]", b"{", b'{"a":1,}', b"{} x", b'{"a":NaN}', b"\xef\xbb\xbf{}", b'"s"'):
        e = event_error(bad, "malformed-json")
        assert " at line " in str(e)
    e = event_error(b'{"event_id": "e",\n "x": [1,, 2]}', "malformed-json")
    assert e.offset == 27 and "line 2 column 10" in str(e), str(e)

    e = event_error(doc_with(',"x":1,"x":2'), "malformed-json")
    assert "duplicate key 'x'" in str(e)
    e = event_error(doc_with(',"x":{"a":[{"b":1,"b":1}]}'), "malformed-json")
    assert "duplicate key 'b'" in str(e)
    e = event_error(doc_with(',"event_\\u0069d":"e2"'), "malformed-json")
    assert "duplicate key 'event_id'" in str(e)

    for field in ("event_id", "device_id", "ts", "kind"):
        doc = {"event_id": "e", "device_id": "d", "ts": 1, "kind": "repair"}
        del doc[field]
        e = event_error(json.dumps(doc).encode(), "missing-field")
        assert f"'{field}'" in str(e) and e.offset is None
    e = event_error(doc_with(',"parts":[{"part_no":"p"}]'), "missing-field")
    assert "'qty'" in str(e)

    mismatches = [
        (',"ts":"1"', "ts"),
        (',"ts":1.0', "ts"),
        (',"ts":true', "ts"),
        (',"ts":9223372036854775808', "ts"),
        (',"kind":"fix"', "kind"),
        (',"event_id":""', "event_id"),
        (',"technician":1', "technician"),
        (',"notes":[]', "notes"),
        (',"parts":{}', "parts"),
        (',"parts":null', "parts"),
        (',"parts":["p"]', "parts[0]"),
        (',"parts":[{"part_no":"p","qty":0}]', "parts[0].qty"),
        (',"parts":[{"part_no":"p","qty":-3}]', "parts[0].qty"),
        (',"parts":[{"part_no":"p","qty":2.0}]', "parts[0].qty"),
        (',"parts":[{"part_no":7,"qty":1}]', "parts[0].part_no"),
        (',"parts":[{"part_no":"p","qty":1,"color":"red"}]', "parts[0]"),
    ]
    for tail, field in mismatches:
        # Fields are checked in document order, missing ones only at the end.
        data = ('{"device_id":"d"' + tail + "}").encode()
        e = event_error(data, "type-mismatch")
        assert f"in field '{field}'" in str(e), str(e)
        assert e.offset is not None and 0 < e.offset < len(data)


def test_event_depth_boundary() -> None:
    for max_depth in (1, 2, 8, 32, 127):
        dec = EventDecoder(max_depth=max_depth)
        inner = max_depth - 1
        ok = doc_with(',"deep":' + "[" * inner + "1" + "]" * inner if inner else "")
        assert dec.decode(ok)[0] == "e"
        bad = doc_with(',"deep":' + "[" * (inner + 1) + "1" + "]" * (inner + 1))
        e = event_error(bad, "too-deep", dec)
        assert e.offset == bad.index(b"[") + inner
    # Objects count like arrays; brackets in strings do not count.
    assert EventDecoder(max_depth=2).decode(doc_with(',"o":{"s":"[[{{]]}}\\"[[\\\\"}'))[7]
    event_error(doc_with(',"o":{"s":"\\\\",  "a":[]}'), "too-deep", EventDecoder(max_depth=2))
    # Way past serde_json's own limit of 128: still too-deep, also when never closed.
    event_error(doc_with(',"d":' + "[" * 5000 + "]" * 5000), "too-deep", EventDecoder(max_depth=127))
    event_error(b"[" * 300, "too-deep", EventDecoder(max_depth=127))
    for limit in (0, 128, -1):
        with pytest.raises(ValueError):
            EventDecoder(max_depth=limit)
    with pytest.raises(ValueError):
        EventDecoder(max_bytes=0)


def test_event_unicode_and_escapes() -> None:
    data = (
        '{"event_\\u0069d":"w\\u00f6-\\ud83e\\udd80","device_id":"Gerät 🦀","ts":-5,'
        '"kind":"re\\u0070air","notes":"l1\\nl2 \\\\ [no] {nest}","t\\u00e9ch":"\\"q\\""}'
    ).encode()
    got = EventDecoder().decode(data)
    assert got[:6] == ("wö-🦀", "Gerät 🦀", -5, "repair", None, "l1\nl2 \\ [no] {nest}")
    assert got[7] == {"téch": '"\\"q\\""'}
    assert_event_matches(got, py_decode_event(data))  # type: ignore[arg-type]
    # Lone surrogates are not text: rejected (Python's json would accept them).
    event_error(doc_with(',"x":"\\ud800"'), "malformed-json")
    event_error(b'{"event_id":"\\udc00","device_id":"d","ts":1,"kind":"repair"}', "malformed-json")


def mutate(rng: random.Random, data: bytes) -> bytes:
    g = bytearray(data)
    alphabet = b'{}[]":,\\ 0123456789.eE-+truefalsnul\x00a\n'
    for _ in range(rng.randint(1, 3)):
        if not g:
            break
        j = rng.randrange(len(g))
        op = rng.randrange(6)
        if op == 0:
            g[j] = rng.choice(alphabet)
        elif op == 1:
            del g[j]
        elif op == 2:
            del g[j:]
        elif op == 3:
            g.insert(j, rng.choice(alphabet))
        elif op == 4:
            g[j] = rng.randrange(256)
        else:  # duplicate a slice (often a whole "key": value)
            k = rng.randrange(j, min(len(g), j + 30) + 1)
            g[k:k] = g[j:k]
    return bytes(g)


def structural_variant(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    """A valid-JSON document that breaks one field rule."""
    d = dict(doc)
    op = rng.randrange(6)
    if op == 0:
        d.pop(rng.choice(("event_id", "device_id", "ts", "kind")), None)
    elif op == 1:
        d[rng.choice(KNOWN)] = rand_value(rng, 2)
    elif op == 2:
        d["parts"] = [{"part_no": "p", "qty": rng.choice((0, -1, 1.5, "1", None, 2**63))}]
    elif op == 3:
        d["parts"] = [rng.choice(({"part_no": "p"}, {"qty": 1}, {"part_no": "p", "qty": 1, "z": 0}, [], "p"))]
    elif op == 4:
        d["kind"] = rng.choice(("Repair", "", "other", 1))
    else:
        d["ts"] = rng.choice((1.5, "1", 2**63, -(2**63) - 1, True, None))
    return d


RAW_INJECTIONS = (
    '"\\ud800"',
    '"\\ud83e\\udd80"',
    '"\\u00e9"',
    "1e400",
    "-1e-400",
    "1E+2",
    "123456789012345678901234567890",
    "1" * 400,
    '{"a":1,"a":2}',
    '[{"b":[],"b":0}]',
    '{"\\u0061":1,"a":2}',
    '{"\\udc00":1}',
    "[[[]]]",
)


def inject(rng: random.Random, data: bytes) -> bytes:
    """Splice a raw JSON text (things json.dumps never writes) in as one more field."""
    key = rng.choice(('"zz"', '"parts"', '"notes"', '"ts"', '"event_id"', '"\\ud800"'))
    value = rng.choice(RAW_INJECTIONS)
    if key == '"parts"':
        tmpl = rng.choice(("[%s]", '[{"part_no":"p","qty":1,"z":%s}]', '[{"qty":1,"part_no":%s}]'))
        value = tmpl.replace("%s", value)
    text = data.rstrip()
    assert text.endswith(b"}")
    return text[:-1] + f",{key}:{value}}}".encode()


def test_event_fuzz_only_decode_errors_and_oracle_agrees() -> None:
    rng = random.Random(4242)
    dec = EventDecoder(max_bytes=4096, max_depth=8)
    seen: dict[str, int] = {}
    for i in range(5000):
        r = i % 5
        if i % 101 == 0:
            data = dumps(rng, rand_event(rng))[0] + b" " * 4096
        elif i % 103 == 0:
            k = rng.randint(5, 12)
            data = doc_with(',"d":' + "[" * k + "]" * k)
        elif r == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif r == 1:
            data = bytes(rng.choice(b'{}[]":,\\ 01.e-truenl"a') for _ in range(rng.randrange(64)))
        elif r == 2 and i % 2:
            data = dumps(rng, structural_variant(rng, rand_event(rng)))[0]
        elif r == 2:
            data = inject(rng, dumps(rng, rand_event(rng))[0])
        else:
            data = mutate(rng, dumps(rng, rand_event(rng))[0])
        want = py_decode_event(data, 4096, 8)
        try:
            got = dec.decode(data)
        except DecodeError as e:
            check_error(e)
            assert e.reason == want, (data, str(e), want)
            seen[e.reason] = seen.get(e.reason, 0) + 1
        else:
            assert isinstance(want, tuple), (data, want, got)
            assert_event_matches(got, want)
            seen["ok"] = seen.get("ok", 0) + 1
    # The loop reached every outcome, not just malformed JSON.
    assert set(seen) >= {
        "ok",
        "empty",
        "oversized",
        "invalid-utf8",
        "too-deep",
        "malformed-json",
        "missing-field",
        "type-mismatch",
    }, seen


def test_decoders_reject_non_bytes() -> None:
    with pytest.raises(TypeError):
        FrameDecoder().decode("SF")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EventDecoder().decode("{}")  # type: ignore[arg-type]
