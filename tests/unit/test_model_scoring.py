"""Differential test: the Rust IsolationForestModel against scikit-learn's own score_samples.

Tolerance: |rust - sklearn| <= 1e-12 * |sklearn| per row (relative). Measured: at most one
ulp (~2.2e-16 relative) apart, most rows bit-identical; the one-ulp rows come from numpy's
vectorised pow / summation order versus libm's pow. A perturbed export must disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sluice.features import parse_feature_spec
from sluice.model import (
    ModelError,
    Registry,
    TrainParams,
    export_isolation_forest,
    fit,
    impute,
    read_jsonl,
    to_dataset,
    train,
)
from sluice.native import IsolationForestModel
from sluice.native import ModelError as NativeModelError

REL_TOL = 1e-12
ROWS = 6_000


def _data(rng: np.random.Generator, n: int, d: int, nan_share: float) -> np.ndarray:
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 50, size=d) + rng.uniform(-100, 100, size=d)
    X[rng.random(size=X.shape) < nan_share] = np.nan
    return X


def _check(rust: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(rust - ref)
    assert np.all(diff <= REL_TOL * np.abs(ref)), f"max rel diff {np.max(diff / np.abs(ref))}"
    return float(diff.max()), float(np.max(diff / np.abs(ref)))


# (rows, features, max_samples, max_features, n_estimators, NaN share)
SHAPES = [
    (4_000, 11, "auto", 1.0, 100, 0.05),
    (3_000, 5, 100, 0.6, 60, 0.1),
    (600, 3, 600, 1.0, 30, 0.0),      # deep trees: max_samples = all rows
    (2_000, 17, 64, 0.3, 80, 0.2),    # strong feature subsetting
    (300, 1, "auto", 1.0, 25, 0.0),   # a single feature
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}-ms{s[2]}-mf{s[3]}")
def test_rust_equals_sklearn_score_samples(shape: tuple) -> None:
    from sklearn.ensemble import IsolationForest

    n, d, ms, mf, ne, nan_share = shape
    rng = np.random.default_rng(n * 31 + d)
    Xtr = _data(rng, n, d, nan_share)
    medians = np.array([np.median(c[~np.isnan(c)]) for c in Xtr.T])
    model = IsolationForest(n_estimators=ne, max_samples=ms, max_features=mf,
                            random_state=7).fit(impute(Xtr, medians))
    rust = IsolationForestModel(json.dumps(export_isolation_forest(model, medians)))
    assert rust.n_estimators == ne and rust.n_features == d

    # In- and out-of-distribution rows, with missing values the scorer imputes itself.
    X = np.vstack([_data(rng, ROWS // 2, d, nan_share), _data(rng, ROWS // 2, d, nan_share) * 3])
    ref = model.score_samples(impute(X, medians))
    got = np.asarray(rust.score_many(X))
    _check(got, ref)
    # The per-vector path (list and 1-D array input) gives the same numbers as the batch.
    for i in range(0, ROWS, 97):
        assert rust.score(X[i].tolist()) == got[i]
        assert rust.score(X[i]) == got[i]
    # decision_function = score_samples - offset_
    assert rust.offset == model.offset_
    _check(got - rust.offset + 10.0, model.decision_function(impute(X, medians)) + 10.0)
    # Scores are not trivially constant: the test could not pass with a broken walk.
    assert np.ptp(ref) > 0.05


def test_perturbed_export_differs() -> None:
    """Negative control: shifting one split threshold, or one leaf's sample count, or the
    imputation value, changes Rust scores, so the comparison above can fail."""
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(3)
    Xtr = _data(rng, 2_000, 4, 0.0)
    medians = np.median(Xtr, axis=0)
    model = IsolationForest(n_estimators=40, random_state=1).fit(Xtr)
    X = _data(rng, 5_000, 4, 0.0)
    X[:50, 2] = np.nan
    ref = model.score_samples(impute(X, medians))
    export = export_isolation_forest(model, medians)
    _check(np.asarray(IsolationForestModel(json.dumps(export)).score_many(X)), ref)

    def mutated(fn) -> np.ndarray:  # type: ignore[no-untyped-def]
        e = json.loads(json.dumps(export))
        fn(e)
        return np.asarray(IsolationForestModel(json.dumps(e)).score_many(X))

    def shift_root(e: dict) -> None:  # the root split of tree 0 moves to the column's median
        t = e["estimators"][0]
        col = t["features"][t["feature"][0]]
        assert t["threshold"][0] != float(np.median(X[50:, col]))
        t["threshold"][0] = float(np.median(X[50:, col]))

    def leaf_count(e: dict) -> None:  # every leaf of tree 0 claims 5 more training samples
        t = e["estimators"][0]
        t["n_node_samples"] = [c + 5 if left == -1 else c
                               for c, left in zip(t["n_node_samples"], t["children_left"], strict=True)]

    def other_median(e: dict) -> None:
        e["impute"][2] += 10.0

    for fn in (shift_root, leaf_count, other_median):
        got = mutated(fn)
        assert np.any(np.abs(got - ref) > REL_TOL * np.abs(ref)), fn.__name__


def test_export_thresholds_round_trip_exactly() -> None:
    """Split thresholds go through JSON text and must come back bit-exact: a row sitting on
    the threshold goes left, and after a one-ulp decrease of the threshold goes right."""
    x = float(np.float32(0.1))  # the float32 row value, widened as sklearn compares it

    def stump(threshold: float) -> IsolationForestModel:
        return IsolationForestModel(json.dumps({
            "format": "sluice-isolation-forest", "format_version": 1, "n_features": 1,
            "impute": [0.0], "max_samples": 8, "offset": -0.5,
            "estimators": [{"features": [0], "children_left": [1, -1, -1],
                            "children_right": [2, -1, -1], "feature": [0, -2, -2],
                            "threshold": [threshold, -2.0, -2.0], "n_node_samples": [8, 7, 1],
                            "missing_go_to_left": [0, 0, 0]}]}))

    on = stump(x).score([0.1])
    below = stump(math.nextafter(x, -math.inf)).score([0.1])
    assert on != below
    assert on == stump(x).score([x]) and below == stump(x).score([1.0])  # left vs right leaf


def test_loader_and_call_errors() -> None:
    with pytest.raises(NativeModelError, match="format"):
        IsolationForestModel(json.dumps({"format": "onnx"}))
    with pytest.raises(NativeModelError):
        IsolationForestModel("not json")
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=3, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 3)))
    e = export_isolation_forest(model, [0.0, 0.0, 0.0])
    e["estimators"][2]["children_left"][0] = 0
    with pytest.raises(NativeModelError, match=r"estimators\[2\]\.children_left\[0\]"):
        IsolationForestModel(json.dumps(e))
    rust = IsolationForestModel(json.dumps(export_isolation_forest(model, [0.0, 0.0, 0.0])))
    with pytest.raises(ValueError, match="expected 3 features, got 2"):
        rust.score([1.0, 2.0])
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        rust.score_many(np.zeros((4, 2)))
    with pytest.raises(TypeError):
        rust.score(["a", "b", "c"])
    assert rust.score_many([[0.0, 0.0, 0.0]]) == [rust.score([0.0, 0.0, 0.0])]
    assert issubclass(NativeModelError, Exception) and NativeModelError.__name__ == "ModelError"


# --- training from FeatureVectors, the registry ---------------------------------------------
SPEC = """
version: 1
windows:
  - name: w
    kind: tumble
    size: 1m
    source: TELEMETRY
    features:
      - field: temperature_c
        aggs: [mean, max, std]
"""


def _vectors(spec_version: str, n: int, seed: int, shift: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.random() < 0.02)
        mean = rng.normal(40 + shift, 2) + (25 if label else 0)
        feats = {"temperature_c.mean": mean, "temperature_c.max": mean + abs(rng.normal(2, 1))}
        if rng.random() > 0.1:  # 10% lack std (NaN -> imputed)
            feats["temperature_c.std"] = abs(rng.normal(1, 0.3))
        out.append({"device_id": f"d{i % 7}", "window": "w", "window_kind": "TUMBLE",
                    "window_start": 1_700_000_000_000 + i * 60_000,
                    "window_end": 1_700_000_060_000 + i * 60_000, "event_count": 10,
                    "features": feats, "feature_spec_version": spec_version,
                    "computed_at": 0, "label": label})
    out.append({**out[0], "window": "other", "features": {}})  # another window: ignored
    return out


def test_train_publishes_versions_and_rust_matches(tmp_path: Path) -> None:
    spec = parse_feature_spec(SPEC)
    rows = _vectors(spec.spec_version(), 3_000, 1)
    reg = Registry(tmp_path / "models")
    v1 = train(rows, spec, "w", reg, params=TrainParams(n_estimators=50, contamination=0.02))
    v2 = train(rows, spec, "w", reg, params=TrainParams(n_estimators=50, seed=1))
    assert (v1.version, v2.version) == (1, 2) and reg.get("iforest-w").version == 2
    assert sorted(p.name for p in v1.path.iterdir()) == ["metadata.json", "model.json", "sklearn.joblib"]
    meta = v1.metadata
    assert meta["feature_names"] == ["temperature_c.mean", "temperature_c.max", "temperature_c.std"]
    assert meta["feature_spec_version"] == spec.spec_version() and meta["version"] == 1
    assert meta["training"]["rows"] == 2_400 and meta["training"]["holdout_rows"] == 600
    assert meta["training"]["window_start_max"] < 1_700_000_000_000 + 2_400 * 60_000
    assert 0.05 < meta["reference"]["temperature_c.std"]["missing_rate"] < 0.15
    ref = meta["reference"]["temperature_c.mean"]
    assert math.isclose(sum(ref["proportions"]), 1.0) and len(ref["proportions"]) == len(ref["edges"]) + 1
    hold = meta["holdout_metrics"]
    assert hold["rows"] == 600 and "recall" in hold and hold["recall"] > 0.5
    assert meta["threshold"] == v1.sklearn().offset_

    # The registered export scores as the registered sklearn model does, NaNs included.
    ds = to_dataset(rows, meta["feature_names"], window="w")
    medians = np.asarray(meta["impute"]["values"])
    rust = v1.native()
    assert rust.threshold == meta["threshold"] and rust.feature_names == meta["feature_names"]
    _check(np.asarray(rust.score_many(ds.X)), v1.sklearn().score_samples(impute(ds.X, medians)))

    # A tampered export is refused by digest.
    (v1.path / "model.json").write_text(v1.export_text().replace('"offset":', '"offset": '))
    with pytest.raises(ModelError, match="sha256"):
        v1.native()


def test_training_refuses_other_spec_and_empty_windows(tmp_path: Path) -> None:
    spec = parse_feature_spec(SPEC)
    reg = Registry(tmp_path)
    with pytest.raises(ModelError, match="feature_spec_version"):
        train(_vectors("0123456789abcdef", 50, 2), spec, "w", reg)
    with pytest.raises(ModelError, match="no window 'nope'"):
        train(_vectors(spec.spec_version(), 50, 2), spec, "nope", reg)
    with pytest.raises(ModelError, match="no records"):
        to_dataset([], ["a"], window="w")
    assert reg.names() == []


def test_jsonl_reader_and_all_missing_feature(tmp_path: Path) -> None:
    spec = parse_feature_spec(SPEC)
    rows = _vectors(spec.spec_version(), 400, 4)
    for r in rows:
        r["features"].pop("temperature_c.std", None)
        r["window_start"] = "2026-01-01T00:00:00Z" if r is rows[0] else r["window_start"]
    p = tmp_path / "f.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    back = read_jsonl(p)
    assert len(back) == len(rows)
    ds = to_dataset(back, spec.window("w").feature_names(), window="w")
    assert ds.window_start[0] == 1_767_225_600_000 and np.isnan(ds.X[:, 2]).all()
    _, medians, meta = fit(ds, TrainParams(n_estimators=10))
    assert meta["impute"]["all_missing_features"] == ["temperature_c.std"] and medians[2] == 0.0
    (tmp_path / "bad.jsonl").write_text('{"features": {}}\n[1]\n')
    with pytest.raises(ModelError, match="bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")
