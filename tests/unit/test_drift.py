"""Drift detection (sluice/drift.py): PSI and KS against scipy, sliding windows in event
time, consecutive counts, the retrain policy's K and cool-down, state round trips, and a
negative control (same-distribution data never drifts; shifted data does)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import special, stats

from sluice.config import DriftConfig
from sluice.drift import (
    DriftDetector,
    DriftError,
    RetrainPolicy,
    feature_reference,
    ks_grid,
    psi,
    trigger_id,
)
from sluice.model import Dataset, TrainParams, fit, reference_distribution

FEATURES = ("a", "b", "c")
T0 = 1_767_225_600_000  # 2026-01-01, a multiple of every slide below


def _meta(rng: np.random.Generator, n: int = 20_000, *, version: int = 1) -> dict:
    """Reference of a: N(0, 1), b: exponential(2), c: N(5, 0.5) with 10 % missing."""
    cols = {"a": rng.normal(0, 1, n), "b": rng.exponential(2, n), "c": rng.normal(5, 0.5, n)}
    cols["c"][rng.random(n) < 0.1] = np.nan
    return {"name": "iforest-w", "version": version, "window": "w", "feature_names": list(FEATURES),
            "reference": {f: reference_distribution(v) for f, v in cols.items()}}


def _vectors(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[dict]:
    a, b, c = rng.normal(shift, 1, n), rng.exponential(2, n), rng.normal(5, 0.5, n)
    return [{"a": float(a[i]), "b": float(b[i]), "c": float(c[i]) if i % 10 else None}
            for i in range(n)]


def _cfg(**kw: int | float) -> DriftConfig:
    base = {"window_ms": 40_000, "slide_ms": 10_000, "min_samples": 50, "k_windows": 3,
            "cooldown_ms": 100_000}
    return DriftConfig(**{**base, **kw})


# --- the statistics ----------------------------------------------------------------------
def test_psi_equals_the_symmetric_kl_divergence_of_scipy() -> None:
    """PSI = sum (a - e) ln(a / e) = KL(a||e) + KL(e||a); scipy's rel_entr on random
    histograms (no empty bins, so the epsilon floor plays no part)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        bins = int(rng.integers(2, 15))
        counts = rng.integers(1, 500, bins)
        e = rng.dirichlet(np.ones(bins))
        a = counts / counts.sum()
        want = special.rel_entr(a, e).sum() + special.rel_entr(e, a).sum()
        assert psi(counts, e)[0] == pytest.approx(want, rel=1e-12)
    # Identical shares: 0; an empty live bin is floored, not infinite; no data: NaN.
    assert psi([10, 30, 60], [0.1, 0.3, 0.6])[0] == pytest.approx(0.0, abs=1e-15)
    assert np.isfinite(psi([0, 50, 50], [0.2, 0.4, 0.4])[0])
    assert np.isnan(psi([0, 0, 0], [0.2, 0.4, 0.4])[0])


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("seed", [2, 3])
def test_ks_on_the_percentile_grid_brackets_scipys_exact_statistic(shift: float, seed: int) -> None:
    """Against scipy.stats.ks_2samp(live, training values): D_grid <= D_exact <= D_upper and
    the grid value is within 0.015 of the exact one (101 percentile grid)."""
    rng = np.random.default_rng(seed)
    train = rng.normal(0, 1, 20_000)
    live = rng.normal(shift, 1.2, 400)
    ref = feature_reference("x", reference_distribution(train))
    assert ref is not None
    counts = np.bincount(np.searchsorted(ref.ks_x, live, side="left"), minlength=ref.ks_x.size + 1)
    d, upper = ks_grid(counts, ref.ks_cdf)
    exact = stats.ks_2samp(live, train).statistic
    assert d[0] <= exact + 1e-12 <= upper[0] + 2e-12
    assert abs(d[0] - exact) < 0.015


def test_old_metadata_without_cdf_uses_the_percentiles() -> None:
    """Model versions trained before `cdf` existed still load; their KS uses F(q_j) = q."""
    rng = np.random.default_rng(4)
    train = np.concatenate([np.zeros(3000), rng.normal(0, 1, 7000)])  # a tie at 0
    new = reference_distribution(train)
    old = {k: v for k, v in new.items() if k != "cdf"}
    r_new, r_old = feature_reference("x", new), feature_reference("x", old)
    assert r_new is not None and r_old is not None
    assert np.all(np.diff(r_old.ks_x) > 0)
    live = rng.normal(0.5, 1, 500)
    d = [ks_grid(np.bincount(np.searchsorted(r.ks_x, live), minlength=r.ks_x.size + 1),
                 r.ks_cdf)[0][0] for r in (r_new, r_old)]
    assert abs(d[0] - d[1]) < 0.02
    with pytest.raises(DriftError, match="neither"):
        feature_reference("x", {k: v for k, v in old.items() if k != "quantiles"})


# --- the detector ------------------------------------------------------------------------
def test_sliding_windows_close_by_watermark_and_count_what_they_hold() -> None:
    rng = np.random.default_rng(5)
    det = DriftDetector(_meta(rng), _cfg(min_samples=1), clock=lambda: 42)
    vs = _vectors(rng, 600)
    ts = [T0 + int(t) for t in rng.integers(0, 60_000, 600)]
    det.add_many(vs, ts)
    # The first window [T0 - 30 s, T0 + 10 s) closes at watermark T0 + 10 s - 1, not before.
    assert det.next_window_end() == T0 + 10_000
    assert det.on_watermark(T0 + 10_000 - 2) == []
    ev = det.on_watermark(T0 + 10_000 - 1)
    assert {(e["window_start"], e["window_end"]) for e in ev} == {(T0 - 30_000, T0 + 10_000)}
    ev += det.on_watermark(T0 + 200_000)
    windows = sorted({(e["window_start"], e["window_end"]) for e in ev})
    assert windows == [(T0 + k * 10_000 - 40_000, T0 + k * 10_000) for k in range(1, 10)]
    t = np.asarray(ts)
    for e in ev:
        sel = (t >= e["window_start"]) & (t < e["window_end"])
        present = [v[e["feature"]] is not None for v, s in zip(vs, sel, strict=True) if s]
        assert e["sample_count"] == sum(present), e
        assert e["detected_at"] == 42 and e["model_version"] == "1"
    assert set(json.loads(json.dumps(ev[0]))) == {
        "model_name", "model_version", "feature", "window_start", "window_end", "sample_count",
        "psi", "ks", "psi_threshold", "ks_threshold", "drifted", "consecutive_windows",
        "detected_at"}
    # Every pane is gone once the watermark passed all its windows: bounded state.
    assert det.panes == {} and det.on_watermark(T0 + 200_000) == []


def test_window_statistics_equal_a_recomputation_from_the_raw_values() -> None:
    rng = np.random.default_rng(6)
    meta = _meta(rng)
    det = DriftDetector(meta, _cfg(min_samples=1))
    vs = _vectors(rng, 800, shift=0.7)
    ts = [T0 + int(t) for t in rng.integers(0, 40_000, 800)]
    ev = det.add_many(vs, ts, watermark_ms=T0 + 40_000 - 1)
    full = [e for e in ev if (e["window_start"], e["window_end"]) == (T0, T0 + 40_000)]
    assert {e["feature"] for e in full} == set(FEATURES)
    for e in full:
        x = np.array([v[e["feature"]] for v in vs if v[e["feature"]] is not None], dtype=float)
        r = feature_reference(e["feature"], meta["reference"][e["feature"]])
        assert r is not None
        share = np.bincount(np.searchsorted(r.psi_edges, x, side="left"),
                            minlength=r.psi_edges.size + 1) / x.size
        a, ex = np.maximum(share, 1e-4), np.maximum(r.psi_expected, 1e-4)
        assert e["psi"] == pytest.approx(float(np.sum((a - ex) * np.log(a / ex))), rel=1e-12)
        live_cdf = np.searchsorted(np.sort(x), r.ks_x, side="right") / x.size
        assert e["ks"] == pytest.approx(float(np.max(np.abs(live_cdf - r.ks_cdf))), rel=1e-12)
    drifted = {e["feature"]: e["drifted"] for e in full}
    assert drifted == {"a": True, "b": False, "c": False}


def test_no_drift_on_same_distribution_data_and_drift_after_a_shift() -> None:
    """Negative control: 60 windows of data drawn like the reference never drift; the
    same detector flags feature `a` in every window after a 1-sd shift (so it can fail)."""
    rng = np.random.default_rng(7)
    det = DriftDetector(_meta(rng), _cfg(min_samples=200, window_ms=60_000, slide_ms=20_000))
    ev: list[dict] = []
    for k in range(60):  # 60 panes of 20 s, 150 vectors each: 450 per window
        vs = _vectors(rng, 150)
        ts = list(T0 + k * 20_000 + rng.integers(0, 20_000, 150))
        ev += det.add_many(vs, ts, watermark_ms=T0 + k * 20_000 - 1)
    ev += det.on_watermark(T0 + 60 * 20_000 + 40_000)
    # 62 windows hold data; the first and the last hold one pane only (< min_samples).
    assert len(ev) == 3 * 60 and not any(e["drifted"] for e in ev)
    assert max(e["psi"] for e in ev) < 0.1 and max(e["ks"] for e in ev) < 0.12
    assert all(e["consecutive_windows"] == 0 for e in ev)

    shifted: list[dict] = []
    base = T0 + 60 * 20_000 + 60_000
    for k in range(10):
        vs = _vectors(rng, 150, shift=1.0)
        ts = list(base + k * 20_000 + rng.integers(0, 20_000, 150))
        shifted += det.add_many(vs, ts, watermark_ms=base + k * 20_000 - 1)
    a = [e for e in shifted if e["feature"] == "a"]
    assert a and all(e["drifted"] for e in a)
    assert [e["consecutive_windows"] for e in a] == list(range(1, len(a) + 1))
    assert not any(e["drifted"] for e in shifted if e["feature"] != "a")


def test_consecutive_count_resets_and_small_windows_are_skipped() -> None:
    rng = np.random.default_rng(8)
    det = DriftDetector(_meta(rng), _cfg(window_ms=10_000, slide_ms=10_000, min_samples=100))
    plan = [1.5, 1.5, None, 1.5, 0.0, 1.5]  # None: only 20 vectors (below min_samples)
    got = []
    for k, shift in enumerate(plan):
        n = 20 if shift is None else 300
        ts = list(T0 + k * 10_000 + rng.integers(0, 10_000, n))
        ev = det.add_many(_vectors(rng, n, shift or 0.0), ts, watermark_ms=T0 + (k + 1) * 10_000 - 1)
        got.append([e["consecutive_windows"] for e in ev if e["feature"] == "a"])
    assert got == [[1], [2], [], [3], [0], [1]]


def test_late_events_and_other_windows_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(9)
    det = DriftDetector(_meta(rng), _cfg(min_samples=1))
    det.on_watermark(T0 + 100_000)
    v = _vectors(rng, 1)[0]
    det.add(v, T0 + 100_000 - 40_000)  # all its windows closed
    det.add({"window": "other", "features": v}, T0 + 200_000)
    assert (det.late_dropped, det.other_window, det.panes) == (1, 1, {})
    det.add(v, T0 + 100_000 - 30_000)  # its last window [T0+70s, T0+110s) is still open
    det.add({"window": "w", "features": v}, T0 + 200_000)
    assert sorted(det.panes) == [T0 + 70_000, T0 + 200_000] and det.late_dropped == 1
    ev = det.on_watermark(T0 + 110_000 - 1)
    assert {(e["window_start"], e["sample_count"]) for e in ev} == {(T0 + 70_000, 1)}


def test_snapshot_restore_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(10)
    meta, cfg = _meta(rng), _cfg(min_samples=30)
    batches = []
    for k in range(30):
        ts = list(T0 + k * 10_000 + rng.integers(-5_000, 10_000, 80))
        batches.append((_vectors(rng, 80, shift=0.05 * k), ts, T0 + k * 10_000 - 1))
    whole = DriftDetector(meta, cfg, clock=lambda: 1)
    pol_whole = RetrainPolicy(cfg, clock=lambda: 2)
    out_whole, trig_whole = [], []
    for b in batches:
        ev = whole.add_many(*b)
        out_whole += ev
        trig_whole += pol_whole.observe(ev)

    det, pol = DriftDetector(meta, cfg, clock=lambda: 1), RetrainPolicy(cfg, clock=lambda: 2)
    out, trig = [], []
    for i, b in enumerate(batches):
        if i % 7 == 3:  # a "failure": only the snapshot survives
            blob, pblob = det.snapshot_bytes(), pol.snapshot_bytes()
            det = DriftDetector.restore(meta, cfg, blob, clock=lambda: 1)
            pol = RetrainPolicy.restore(cfg, json.loads(pblob), clock=lambda: 2)
            assert det.snapshot() == json.loads(blob)
        ev = det.add_many(*b)
        out += ev
        trig += pol.observe(ev)
    assert out == out_whole and trig == trig_whole and len(trig) >= 1
    assert any(e["drifted"] for e in out) and len(det.snapshot_bytes()) < 60_000

    with pytest.raises(DriftError, match="v1"):
        DriftDetector.restore({**meta, "version": 2}, cfg, det.snapshot())
    with pytest.raises(DriftError, match="slide_ms"):
        DriftDetector.restore(meta, _cfg(slide_ms=20_000), det.snapshot())


def test_detector_reads_the_metadata_fit_writes() -> None:
    rng = np.random.default_rng(11)
    X = np.column_stack([rng.normal(0, 1, 2000), rng.normal(10, 2, 2000)])
    ds = Dataset(("x", "y"), X, T0 + np.arange(2000, dtype=np.int64) * 1000, None)
    _, _, meta = fit(ds, TrainParams(n_estimators=10))
    det = DriftDetector({**meta, "name": "m", "version": 3, "window": "w"}, _cfg(min_samples=10))
    assert det.features == ("x", "y")
    vs = [{"x": float(v), "y": 10.0} for v in rng.normal(0, 1, 100)]
    ev = det.add_many(vs, [T0] * 100, watermark_ms=T0 + 40_000)
    assert {(e["feature"], e["drifted"]) for e in ev} == {("x", False), ("y", True)}


# --- the retrain policy ------------------------------------------------------------------
def _event(end: int, drifted: bool, consecutive: int, feature: str = "a",
           version: str = "1") -> dict:
    return {"model_name": "m", "model_version": version, "feature": feature,
            "window_start": end - 40_000, "window_end": end, "sample_count": 100, "psi": 0.0,
            "ks": 0.0, "psi_threshold": 0.2, "ks_threshold": 0.2, "drifted": drifted,
            "consecutive_windows": consecutive, "detected_at": 0}


def test_policy_fires_after_k_windows_then_cools_down() -> None:
    cfg = _cfg(k_windows=3, cooldown_ms=50_000)
    pol = RetrainPolicy(cfg, clock=lambda: 7)
    fired = []
    for k in range(1, 15):  # feature a drifts in every window from k=1; b from k=2
        end = T0 + k * 10_000
        evs = [_event(end, True, k), _event(end, k >= 2, max(0, k - 1), feature="b")]
        for t in pol.observe(evs):
            fired.append((k, t))
    assert [k for k, _ in fired] == [3, 8, 13]  # K = 3; then 50 s of window ends quiet
    k, t = fired[0]
    assert t == {"trigger_id": trigger_id("m", "1", T0 + 30_000), "model_name": "m",
                 "model_version": "1", "drifted_features": ["a"],
                 "window_start": T0 + 10_000 - 40_000, "window_end": T0 + 30_000,
                 "triggered_at": 7}
    assert fired[1][1]["drifted_features"] == ["a", "b"]
    assert t["trigger_id"] == "m@1@" + str(T0 + 30_000)

    # Negative control: drift that never lasts K windows never fires.
    pol2 = RetrainPolicy(cfg)
    ends = [T0 + k * 10_000 for k in range(1, 30)]
    evs = [_event(e, k % 3 != 2, (k % 3) + 1 if k % 3 != 2 else 0) for k, e in enumerate(ends)]
    assert pol2.observe(evs) == []


def test_config_rejects_windows_that_do_not_line_up() -> None:
    with pytest.raises(ValueError, match="multiple"):
        DriftConfig(window_ms=25_000, slide_ms=10_000)
