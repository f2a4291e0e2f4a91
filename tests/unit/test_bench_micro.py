"""The pure-Python equivalents the micro table times next to the Rust calls
(sluice/bench_micro.py) compute what the Rust ones compute, so the comparison is fair."""

from __future__ import annotations

import math
import random

import pytest

from sluice.bench_micro import PyWindowAggregates, frame_samples, numpy_frame_stats
from sluice.native import FeatureAccumulator, FeatureSpec, FrameDecoder, encode_frame


def test_numpy_frame_stats_equals_the_rust_decoder() -> None:
    rng = random.Random(3)
    for n in (1, 7, 256, 4096):
        xs = [rng.uniform(-5, 5) for _ in range(n)]
        frame = encode_frame("dev-0042", 1_790_000_000_123, 2000, xs)
        want = FrameDecoder(4096).decode(frame)
        got = numpy_frame_stats(frame)
        assert got[:4] == want[:4]
        assert got[4:] == pytest.approx(want[4:], rel=1e-12)
    frame = encode_frame("dev-0007", 1, 2000, frame_samples())
    assert numpy_frame_stats(frame)[3] == 256


@pytest.mark.parametrize("corrupt", ["crc", "magic", "length"])
def test_numpy_frame_stats_refuses_what_the_rust_decoder_refuses(corrupt: str) -> None:
    frame = bytearray(encode_frame("d", 1, 2, [1.0, 2.0]))
    if corrupt == "crc":
        frame[-1] ^= 1
    elif corrupt == "magic":
        frame[0] = ord("X")
    else:
        frame += b"\0"
    with pytest.raises(ValueError):
        numpy_frame_stats(bytes(frame))
    with pytest.raises(Exception):  # noqa: B017 - the Rust error types are tested elsewhere
        FrameDecoder(4096).decode(bytes(frame))


def test_py_window_aggregates_equal_the_rust_accumulator() -> None:
    spec = FeatureSpec(["count", "mean", "std", "min", "max",
                        {"agg": "ewma", "half_life_ms": 30000}, "slope",
                        {"agg": "quantile", "q": 0.95}])
    rust, py = FeatureAccumulator(spec), PyWindowAggregates(30_000, 0.95)
    rng = random.Random(7)
    t = 1_790_000_000_000
    for i in range(2_000):
        t += rng.randint(0, 400) if i % 50 else -rng.randint(0, 2_000)  # some out of order
        x = 50.0 + rng.gauss(0, 3)
        rust.update(t, x)
        py.update(t, x)
    want, got = rust.result(), py.result()
    assert got["count"] == want["count"] == 2_000
    for name in ("mean", "std", "min", "max", "ewma", "slope"):
        assert got[name] == pytest.approx(want[name], rel=1e-9), name
    assert got["quantile"] == pytest.approx(want["p95"], rel=1e-12)
    # Negative control: one value more and the two differ.
    py.update(t + 1, 1_000.0)
    assert not math.isclose(py.result()["max"], want["max"])


def test_one_value_quantile_is_the_value_in_both() -> None:
    spec = FeatureSpec([{"agg": "quantile", "q": 0.95}])
    rust, py = FeatureAccumulator(spec), PyWindowAggregates(30_000, 0.95)
    rust.update(1, 2.0)
    py.update(1, 2.0)
    assert py.result()["quantile"] == rust.result()["p95"] == 2.0
