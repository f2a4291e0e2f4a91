"""Unit tests of the window feature accumulators of the Rust module
(``sluice.native.FeatureSpec`` / ``FeatureAccumulator``).

Independent oracles written here with numpy: ``np.sum`` / ``np.mean`` / ``np.std``
(ddof=0), ``np.polyfit`` for the slope, the EWMA formula of the stubs (and pandas'
``ewm(times=...)``), ``np.quantile(method="lower")`` within the sketch's relative accuracy,
``m4 / m2**2`` for kurtosis and ``np.fft.rfft`` for band powers. Random inputs are
seeded, so every run checks the same data. Moments must agree to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sluice.native import (
    BadCrcError,
    FeatureAccumulator,
    FeatureSpec,
    FeatureSpecError,
    SluiceError,
    StateError,
    encode_frame,
)

HALF_LIFE_MS = 60_000.0
VALUE_AGGS: list[Any] = [
    "count", "sum", "mean", "std", "min", "max",
    {"agg": "ewma", "half_life_ms": HALF_LIFE_MS}, "slope",
    {"agg": "quantile", "q": 0.5}, {"agg": "quantile", "q": 0.95},
    {"agg": "quantile", "q": 0.99, "accuracy": 0.02, "name": "p99_coarse"},
]
QUANTILES = {"p50": (0.5, 0.01), "p95": (0.95, 0.01), "p99_coarse": (0.99, 0.02)}
FS = 1000.0
BANDS = [(0.0, 50.0), (50.0, 200.0), (200.0, 500.5)]  # tiles [0, fs/2] incl. Nyquist
WAVE_AGGS: list[Any] = ["frames", "rms", "peak", "crest", "kurtosis"] + [
    {"agg": "band", "lo_hz": lo, "hi_hz": hi} for lo, hi in BANDS
]
BAND_NAMES = ["band_0_50hz", "band_50_200hz", "band_200_500p5hz"]
RTOL = 1e-9


@pytest.fixture(scope="module")
def vspec() -> FeatureSpec:
    return FeatureSpec(VALUE_AGGS)


@pytest.fixture(scope="module")
def wspec() -> FeatureSpec:
    return FeatureSpec(WAVE_AGGS)


def _data(seed: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.int64(1_700_000_000_000) + np.sort(rng.integers(0, 600_000, n)).astype(np.int64)
    scale = 10.0 ** rng.integers(-4, 5)
    xs = rng.normal(20.0, 5.0, n) * scale + 0.01 * (ts - ts[0]) * scale / 1000.0
    return ts, xs


def _acc(spec: FeatureSpec, ts: np.ndarray, xs: np.ndarray) -> FeatureAccumulator:
    a = FeatureAccumulator(spec)
    a.update_many(ts, xs)
    return a


def _numpy_values(ts: np.ndarray, xs: np.ndarray) -> dict[str, float]:
    t_s = (ts - ts.min()) / 1000.0
    w = np.exp2(-(ts.max() - ts) / HALF_LIFE_MS)
    out = {
        "count": float(len(xs)), "sum": float(np.sum(xs)), "mean": float(np.mean(xs)),
        "std": float(np.std(xs)), "min": float(np.min(xs)), "max": float(np.max(xs)),
        "ewma": float(np.sum(w * xs) / np.sum(w)),
        "slope": float(np.polyfit(t_s, xs, 1)[0]),
    }
    for name, (q, _) in QUANTILES.items():
        out[name] = float(np.quantile(xs, q, method="lower"))
    return out


def _assert_matches_numpy(got: dict[str, float], ts: np.ndarray, xs: np.ndarray) -> None:
    want = _numpy_values(ts, xs)
    scale = float(np.max(np.abs(xs)))
    for name, w in want.items():
        if name in QUANTILES:
            alpha = QUANTILES[name][1]
            assert abs(got[name] - w) <= alpha * abs(w) * (1 + 1e-9), (name, got[name], w)
        elif name == "slope":
            # polyfit solves a least-squares system: compare on the scale of value / span.
            span_s = (ts.max() - ts.min()) / 1000.0
            assert got[name] == pytest.approx(w, rel=1e-7, abs=1e-9 * scale / span_s), name
        else:
            assert got[name] == pytest.approx(w, rel=RTOL, abs=RTOL * scale * 1e-3), name


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("seed", range(6))
def test_value_aggregations_equal_numpy(vspec: FeatureSpec, seed: int) -> None:
    ts, xs = _data(seed)
    _assert_matches_numpy(_acc(vspec, ts, xs).result(), ts, xs)


def test_negative_control_a_missing_value_is_caught(vspec: FeatureSpec) -> None:
    """The comparison above can fail: an accumulator that missed one value (or a
    sample-std oracle) does not pass it."""
    ts, xs = _data(1)
    short = _acc(vspec, ts[:-1], xs[:-1]).result()
    with pytest.raises(AssertionError):
        _assert_matches_numpy(short, ts, xs)
    full = _acc(vspec, ts, xs).result()
    assert full["std"] != pytest.approx(float(np.std(xs, ddof=1)), rel=RTOL)


def test_ewma_equals_pandas_adjusted_ewm_with_times(vspec: FeatureSpec) -> None:
    ts, xs = _data(7, n=300)
    got = _acc(vspec, ts, xs).result()["ewma"]
    times = pd.to_datetime(ts, unit="ms")
    want = pd.Series(xs).ewm(halflife=pd.Timedelta(milliseconds=HALF_LIFE_MS), times=times).mean()
    assert got == pytest.approx(float(want.iloc[-1]), rel=RTOL)


def test_order_and_batching_do_not_matter(vspec: FeatureSpec) -> None:
    ts, xs = _data(3)
    base = _acc(vspec, ts, xs).result()
    perm = np.random.default_rng(3).permutation(len(xs))
    shuffled = _acc(vspec, ts[perm], xs[perm]).result()
    one_by_one = FeatureAccumulator(vspec)
    for t, x in zip(ts.tolist(), xs.tolist(), strict=True):
        one_by_one.update(t, x)
    as_lists = FeatureAccumulator(vspec)
    as_lists.update_many(ts.tolist(), xs.tolist())
    assert one_by_one.result() == base
    assert as_lists.result() == base
    for name in ("count", "min", "max", "p50", "p95", "p99_coarse"):
        assert shuffled[name] == base[name], name  # exact: integer or order-free state
    for name in ("sum", "mean", "std", "ewma", "slope"):
        assert shuffled[name] == pytest.approx(base[name], rel=1e-9), name


@pytest.mark.parametrize("seed", range(4))
def test_merge_of_parts_equals_one_pass(vspec: FeatureSpec, seed: int) -> None:
    ts, xs = _data(seed + 10)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(xs), 3))
    parts = np.split(np.arange(len(xs)), cuts)
    accs = [_acc(vspec, ts[p], xs[p]) for p in parts]
    merged = FeatureAccumulator(vspec)
    for a in reversed(accs):  # a session window merging panes in any order
        merged.merge(a)
    one = _acc(vspec, ts, xs).result()
    got = merged.result()
    assert got["count"] == one["count"] == len(xs)
    for name in ("min", "max", "p50", "p95", "p99_coarse"):
        assert got[name] == one[name], name
    for name in ("sum", "mean", "std", "ewma", "slope"):
        assert got[name] == pytest.approx(one[name], rel=1e-9), name
    _assert_matches_numpy(got, ts, xs)


def test_merge_with_itself_doubles(vspec: FeatureSpec) -> None:
    ts, xs = _data(5, n=50)
    a = _acc(vspec, ts, xs)
    a.merge(a)
    twice = _acc(vspec, np.concatenate([ts, ts]), np.concatenate([xs, xs])).result()
    assert a.count == 100
    assert a.result()["p95"] == twice["p95"]
    assert a.result()["std"] == pytest.approx(twice["std"], rel=1e-9)


def test_empty_single_and_non_finite(vspec: FeatureSpec) -> None:
    empty = FeatureAccumulator(vspec).result()
    assert list(empty) == vspec.names
    assert (empty["count"], empty["sum"]) == (0.0, 0.0)
    assert all(math.isnan(empty[k]) for k in vspec.names if k not in ("count", "sum"))
    one = FeatureAccumulator(vspec)
    one.update(1_000, 4.5)
    r = one.result()
    assert (r["mean"], r["std"], r["min"], r["p95"], r["ewma"]) == (4.5, 0.0, 4.5, 4.5, 4.5)
    assert math.isnan(r["slope"])
    a = FeatureAccumulator(vspec)
    a.update_many([1, 2, 3, 4], [1.0, math.nan, math.inf, 3.0])
    a.update(5, -math.inf)
    assert (a.count, a.skipped_values) == (2, 3)
    assert a.result()["mean"] == 2.0


def test_huge_and_tiny_magnitudes(vspec: FeatureSpec) -> None:
    a = FeatureAccumulator(vspec)
    a.update_many([0, 1, 2], [1e16, 1.0, -1e16])
    assert a.result()["sum"] == 1.0  # compensated; np.sum gives 0.0 here
    for scale in (1e-300, 1e-100, 1e100, 1e150):
        ts = np.arange(200, dtype=np.int64) * 1000
        xs = (1.0 + np.random.default_rng(0).random(200)) * scale
        _assert_matches_numpy(_acc(vspec, ts, xs).result(), ts, xs)


def test_bad_arguments(vspec: FeatureSpec, wspec: FeatureSpec) -> None:
    a = FeatureAccumulator(vspec)
    with pytest.raises(ValueError, match="2 timestamps but 1 values"):
        a.update_many(np.array([1, 2], dtype=np.int64), np.array([1.0]))
    with pytest.raises(TypeError, match="ts_ms"):
        a.update_many(np.array([1.0, 2.0]), np.array([1.0, 2.0]))  # float timestamps
    with pytest.raises(ValueError, match="1-dimensional"):
        a.update_many(np.zeros((2, 2), dtype=np.int64), np.zeros(4))
    with pytest.raises(TypeError):
        a.update_many([1], b"x")
    with pytest.raises(TypeError):
        a.update(1.5, 2.0)  # type: ignore[arg-type]
    assert a.count == 0
    with pytest.raises(FeatureSpecError, match="no frame aggregations"):
        a.update_frame([1.0], FS)
    w = FeatureAccumulator(wspec)
    with pytest.raises(FeatureSpecError, match="no value aggregations"):
        w.update(1, 1.0)
    with pytest.raises(ValueError, match="sample_rate_hz"):
        w.update_frame([1.0], 0.0)
    with pytest.raises(ValueError, match="1..=65536 samples"):
        w.update_frame([], FS)


# -------------------------------------------------------------------- spec


def test_spec_names_json_and_equality() -> None:
    s = FeatureSpec(VALUE_AGGS)
    assert s.names == ["count", "sum", "mean", "std", "min", "max", "ewma", "slope",
                       "p50", "p95", "p99_coarse"]
    again = FeatureSpec(json.loads(s.to_json()))
    assert again == s and hash(again) == hash(s) and again.fingerprint == s.fingerprint
    # YAML-loaded specs carry ints, tuples or numpy scalars: same spec.
    alt = FeatureSpec(("mean", {"agg": "quantile", "q": np.float64(0.5), "max_bins": np.int64(2048)}))
    assert alt == FeatureSpec(["mean", {"agg": "quantile", "q": 0.5}])
    assert FeatureSpec(["mean"]) != FeatureSpec(["mean", "std"])
    assert FeatureSpec([{"agg": "quantile", "q": 0.999}]).names == ["p99p9"]
    assert FeatureSpec(WAVE_AGGS).names[-3:] == BAND_NAMES


@pytest.mark.parametrize(
    ("aggs", "message"),
    [
        ({"agg": "mean"}, "a feature spec is a list"),
        ([], "no aggregations"),
        (["median"], 'aggregation 0: unknown aggregation "median"'),
        ([{"agg": "quantile", "q": 1.5}],
         'aggregation 0 ("quantile"): parameter "q" must be a number in [0, 1], got 1.5'),
        (["mean", {"agg": "quantile", "p": 0.5}], 'aggregation 1 ("quantile"): unknown parameter "p"'),
        ([{"agg": "ewma"}], 'parameter "half_life_ms" is required'),
        ([{"agg": "ewma", "half_life_ms": True}], "got a boolean"),
        ([{"agg": "ewma", "half_life_ms": math.inf}], "aggregation 0: \"half_life_ms\": inf is not a finite"),
        ([{"agg": "band", "lo_hz": 10, "hi_hz": 5}], 'parameter "hi_hz" must be a frequency in Hz > lo_hz'),
        (["mean", "mean"], 'aggregations 0 and 1 both produce the output "mean"'),
        ([{"agg": "mean", "name": "temp.mean"}], 'name "temp.mean" must be'),
        ([{"agg": "mean", 3: 1}], "mapping key int is not a str"),
        ([object()], "aggregation 0: unsupported value of type object"),
    ],
)
def test_spec_errors_name_aggregation_and_parameter(aggs: Any, message: str) -> None:
    with pytest.raises(FeatureSpecError) as e:
        FeatureSpec(aggs)
    assert message in str(e.value)
    assert isinstance(e.value, SluiceError)


# -------------------------------------------------------------- state bytes


def test_bytes_round_trip_and_state_errors(vspec: FeatureSpec) -> None:
    ts, xs = _data(2)
    a = _acc(vspec, ts, xs)
    blob = a.to_bytes()
    back = FeatureAccumulator.from_bytes(vspec, blob)
    assert back.result() == a.result() and back.to_bytes() == blob
    assert back.spec == vspec
    assert len(FeatureAccumulator(vspec).to_bytes()) == 18
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(blob), 50).tolist():
        bad = bytearray(blob)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(StateError):
            FeatureAccumulator.from_bytes(vspec, bytes(bad))
    for cut in (0, 5, len(blob) // 2, len(blob) - 1):
        with pytest.raises(StateError):
            FeatureAccumulator.from_bytes(vspec, blob[:cut])
    with pytest.raises(StateError, match="format version 9"):
        FeatureAccumulator.from_bytes(vspec, b"\x09" + blob[1:])
    with pytest.raises(StateError, match="another feature spec"):
        FeatureAccumulator.from_bytes(FeatureSpec(["mean"]), blob)
    with pytest.raises(FeatureSpecError, match="different feature specs"):
        FeatureAccumulator(FeatureSpec(["mean"])).merge(a)
    assert issubclass(StateError, SluiceError) and issubclass(FeatureSpecError, SluiceError)


# ---------------------------------------------------------------- waveform


def _numpy_wave(frames: Sequence[np.ndarray]) -> dict[str, float]:
    x = np.concatenate(frames)
    rms = float(np.sqrt(np.mean(x**2)))
    d = x - x.mean()
    m2, m4 = np.mean(d**2), np.mean(d**4)
    out = {"frames": float(len(frames)), "rms": rms, "peak": float(np.max(np.abs(x))),
           "kurtosis": float(m4 / m2**2)}
    out["crest"] = out["peak"] / rms
    energy = np.zeros(len(BANDS))
    for f in frames:
        n = len(f)
        p = np.abs(np.fft.rfft(f)) ** 2 / n
        p[1:] *= 2
        if n % 2 == 0:
            p[-1] /= 2  # the Nyquist bin is not mirrored
        freqs = np.arange(len(p)) * FS / n
        for b, (lo, hi) in enumerate(BANDS):
            energy[b] += p[(freqs >= lo) & (freqs < hi)].sum()
    for b, name in enumerate(BAND_NAMES):
        out[name] = float(energy[b] / len(x))
    return out


def _frames(seed: int, count: int, n: int = 256) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    return [
        (rng.normal(0, 0.3, n) + 2.0 * np.sin(2 * np.pi * 30 * t + rng.random())
         + 0.7 * np.sin(2 * np.pi * 120 * t) + rng.normal(0, 0.1)).astype(np.float32)
        for _ in range(count)
    ]


@pytest.mark.parametrize("seed", range(4))
def test_waveform_features_equal_numpy(wspec: FeatureSpec, seed: int) -> None:
    frames = _frames(seed, count=1 + seed)
    a = FeatureAccumulator(wspec)
    for f in frames:
        a.update_frame(f, FS)
    got, want = a.result(), _numpy_wave([f.astype(np.float64) for f in frames])
    for name, w in want.items():
        assert got[name] == pytest.approx(w, rel=RTOL, abs=1e-12), name
    # Parseval: bands tiling [0, fs/2] add up to rms**2.
    assert sum(got[b] for b in BAND_NAMES) == pytest.approx(got["rms"] ** 2, rel=RTOL)
    # Energy sits where the sines are: 30 Hz in band 0, 120 Hz in band 1.
    assert got["band_0_50hz"] > 1.5 and got["band_50_200hz"] > 0.2


def test_waveform_negative_control(wspec: FeatureSpec) -> None:
    """The band oracle can fail: a Hann-windowed spectrum is not what the module computes."""
    f = _frames(0, 1)[0].astype(np.float64)
    a = FeatureAccumulator(wspec)
    a.update_frame(f, FS)
    hann = _numpy_wave([f * np.hanning(len(f))])
    assert a.result()["band_50_200hz"] != pytest.approx(hann["band_50_200hz"], rel=1e-3)


def test_frame_inputs_agree(wspec: FeatureSpec) -> None:
    f32 = _frames(9, 1, n=200)[0]
    via_f32, via_f64, via_list, via_bytes = (FeatureAccumulator(wspec) for _ in range(4))
    via_f32.update_frame(f32, FS)
    via_f64.update_frame(f32.astype(np.float64), FS)
    via_list.update_frame(f32.tolist(), FS)
    via_bytes.update_sensor_frame(encode_frame("dev-1", 1_700_000_000_000, int(FS), f32.tolist()))
    r = via_f32.result()
    assert via_f64.result() == r and via_list.result() == r and via_bytes.result() == r
    with pytest.raises(BadCrcError):
        bad = bytearray(encode_frame("dev-1", 0, 1000, [1.0, 2.0]))
        bad[-6] ^= 1
        via_bytes.update_sensor_frame(bytes(bad))


def test_frames_merge_round_trip_and_non_finite(wspec: FeatureSpec) -> None:
    frames = _frames(4, 5)
    one = FeatureAccumulator(wspec)
    parts = [FeatureAccumulator(wspec) for _ in range(2)]
    for i, f in enumerate(frames):
        one.update_frame(f, FS)
        parts[i % 2].update_frame(f, FS)
    merged = FeatureAccumulator.from_bytes(wspec, parts[0].to_bytes())
    merged.merge(FeatureAccumulator.from_bytes(wspec, parts[1].to_bytes()))
    for name, v in one.result().items():
        assert merged.result()[name] == pytest.approx(v, rel=RTOL), name
    bad = frames[0].copy()
    bad[3] = np.nan
    merged.update_frame(bad, FS)
    assert (merged.frames, merged.skipped_frames) == (5, 1)
    empty = FeatureAccumulator(wspec).result()
    assert empty["frames"] == 0.0 and all(math.isnan(empty[k]) for k in ["rms", "crest", *BAND_NAMES])
