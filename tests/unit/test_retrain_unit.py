"""The retrain decision without Kafka (sluice/retrain.py): a candidate on shifted data is
published; one whose holdout is worse than the active model's is refused, and published
with a loose bound (negative control: the guard is what refuses); too little data and an
unknown model are refused with their reasons; labels switch the metric to ROC AUC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sluice.config import REPO_ROOT, load_config
from sluice.model import Dataset, Registry, TrainParams, fit, package
from sluice.model_updates import load_artifact, model_update_record
from sluice.retrain import PUBLISHED, REFUSED, regression_guard, retrain

T0 = 1_767_225_600_000
NAMES = ("a", "b", "c")
SPEC = "spec-test"


def rows(rng: np.random.Generator, n: int, start: int, shift: float = 0.0,
         window: str = "w", labels: bool = False) -> list[dict]:
    X = rng.normal(0, 1, (n, 3))
    X[:, 0] += shift
    out = []
    for i in range(n):
        r = {"device_id": f"d{i % 7}", "window": window, "feature_spec_version": SPEC,
             "window_start": start + i * 1000, "features": dict(zip(NAMES, X[i].tolist(), strict=True))}
        if labels:
            r["label"] = int(i % 50 == 0)
            if r["label"]:
                r["features"]["b"] = 8.0
        out.append(r)
    return out


def active_model(tmp_path: Path, rng: np.random.Generator, *, labels: bool = False):  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "models")
    data = rows(rng, 2000, T0, labels=labels)
    X = np.array([[r["features"][n] for n in NAMES] for r in data])
    lab = np.array([r["label"] for r in data]) if labels else None
    ds = Dataset(NAMES, X, np.array([r["window_start"] for r in data]), lab)
    model, med, meta = fit(ds, TrainParams(n_estimators=50, contamination=0.02))
    files, meta = package(model, med, meta, name="m", window="w", spec_version=SPEC)
    return reg, reg.publish("m", files, meta)


def trigger(start: int, version: int = 1) -> dict:
    return {"trigger_id": f"m@{version}@{start + 1}", "model_name": "m",
            "model_version": str(version), "drifted_features": ["a"], "window_start": start,
            "window_end": start + 600_000, "triggered_at": start + 600_001}


def cfg_for(tmp_path: Path, **retrain: object):  # type: ignore[no-untyped-def]
    cfg = load_config(REPO_ROOT / "sluice.yaml")
    return cfg.with_overrides(models={"dir": str(tmp_path / "models")},
                              retrain={"min_rows": 300, **retrain})


def test_shifted_data_publishes_a_better_calibrated_version(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    reg, v1 = active_model(tmp_path, rng)
    start = T0 + 10_000_000
    data = rows(rng, 500, start - 500_000) + rows(rng, 1500, start, shift=3.0)  # old rows excluded
    d, mv = retrain(cfg_for(tmp_path), trigger(start), data, reg)
    assert d.action == PUBLISHED and mv is not None and (mv.version, d.version) == (2, 2)
    assert d.rows == 1500 and d.guard["metric"] == "calibration_error" and d.guard["ok"]
    assert d.guard["active_anomaly_rate"] > 0.2 > 0.06 > d.guard["candidate_anomaly_rate"]
    meta = mv.metadata
    assert meta["retrain"]["trigger_id"] == trigger(start)["trigger_id"]
    assert meta["retrain"]["previous_version"] == 1 and meta["window"] == "w"
    assert meta["params"]["contamination"] == 0.02 and meta["params"]["n_estimators"] == 50
    assert meta["reference"]["a"]["mean"] == pytest.approx(3.0, abs=0.15)
    rec = model_update_record(mv, "1")
    assert rec["version"] == "2" and rec["previous_version"] == "1"
    assert rec["feature_spec_version"] == SPEC and rec["holdout_metrics"]["rows"] == 300
    assert load_artifact(rec) == mv.export_text()
    with pytest.raises(Exception, match="sha256"):
        load_artifact({**rec, "artifact_sha256": "0" * 64})


def test_a_candidate_worse_on_the_holdout_is_refused_unless_the_bound_allows(tmp_path: Path) -> None:
    """The shift reverted: the newest rows (the holdout) look like the active model's data,
    the candidate learnt the shifted ones."""
    rng = np.random.default_rng(2)
    reg, _ = active_model(tmp_path, rng)
    start = T0 + 10_000_000
    data = rows(rng, 1200, start, shift=3.0) + rows(rng, 300, start + 1_200_000)
    d, mv = retrain(cfg_for(tmp_path), trigger(start), data, reg)
    assert d.action == REFUSED and mv is None and [v.version for v in reg.versions("m")] == [1]
    assert d.reason.startswith("holdout-regression: calibration_error")
    assert d.guard["candidate"] > d.guard["active"] + 0.02 and not d.guard["ok"]
    # Negative control: the same data with a bound of 1.0 is published.
    d2, mv2 = retrain(cfg_for(tmp_path, max_regression=1.0), trigger(start), data, reg)
    assert d2.action == PUBLISHED and mv2 is not None and mv2.version == 2


def test_too_few_rows_and_unknown_models_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    reg, _ = active_model(tmp_path, rng)
    start = T0 + 10_000_000
    few = rows(rng, 299, start) + rows(rng, 500, start, window="other")
    d, _ = retrain(cfg_for(tmp_path), trigger(start), few, reg)
    assert (d.action, d.rows) == (REFUSED, 299) and d.reason.startswith("too-few-rows")
    d, _ = retrain(cfg_for(tmp_path), trigger(start, version=7), rows(rng, 400, start), reg)
    assert d.action == REFUSED and d.reason.startswith("unknown-model")
    assert [v.version for v in reg.versions("m")] == [1]


def test_guard_metric() -> None:
    g = regression_guard({"anomaly_rate": 0.05}, {"anomaly_rate": 0.4}, 0.02, 0.02)
    assert g["metric"] == "calibration_error" and g["ok"] and g["regression"] == pytest.approx(-0.35)
    g = regression_guard({"anomaly_rate": 0.3, "roc_auc": 0.90}, {"anomaly_rate": 0.02, "roc_auc": 0.95},
                         0.02, 0.02)
    assert g["metric"] == "roc_auc" and not g["ok"] and g["regression"] == pytest.approx(0.05)
    assert regression_guard({"anomaly_rate": 0.3, "roc_auc": 0.94}, {"anomaly_rate": 0.02, "roc_auc": 0.95},
                            0.02, 0.02)["ok"]


def test_labelled_holdout_compares_roc_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    reg, _ = active_model(tmp_path, rng, labels=True)
    start = T0 + 10_000_000
    d, mv = retrain(cfg_for(tmp_path), trigger(start), rows(rng, 1500, start, shift=3.0, labels=True), reg)
    assert d.guard["metric"] == "roc_auc" and d.action == PUBLISHED and mv is not None
    assert d.guard["candidate"] > 0.9
