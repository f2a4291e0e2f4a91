"""sluice.scoring: announced models, the adaptive threshold, and the output check's
negative controls (tests/scoring_checks.check_scores must fail on broken output)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from sluice.config import load_config
from sluice.model import Registry, TrainParams, train
from sluice.model_updates import model_update_record
from sluice.scoring import (
    AdaptivePolicy,
    Baseline,
    ModelLoadError,
    alert_id,
    artifact_path,
    load_announced,
    score_id,
    version_number,
)
from tests.scoring_checks import WINDOW, check_drift, check_scores, synthetic_vectors

MODEL = "iforest-unit"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Registry, Any]:
    cfg = load_config()
    root = tmp_path_factory.mktemp("models")
    reg = Registry(root)
    spec = cfg.feature_spec()
    mv = train(synthetic_vectors(cfg, devices=5, windows=30), spec, WINDOW, reg, MODEL,
               TrainParams(n_estimators=20, seed=3))
    return cfg, reg, mv


def test_announced_model_loads_and_scores_like_the_registry(trained: Any) -> None:
    cfg, reg, mv = trained
    upd = model_update_record(mv)
    assert upd["artifact_uri"] == (mv.path.resolve() / "model.json").as_uri()
    # A path relative to the registry root names the same artifact.
    rel = load_announced({**upd, "artifact_uri": f"{MODEL}/1"}, reg.root)
    assert rel.ref == f"{MODEL}/v1"
    m = load_announced(upd, reg.root)
    assert (m.name, m.version, m.window, m.ref) == (MODEL, 1, WINDOW, f"{MODEL}/v1")
    v = synthetic_vectors(cfg, devices=1, windows=1, seed=9)[0]
    assert m.score(v["features"]) == mv.native().score(m.vector(v["features"]))
    # A missing feature is NaN → imputed by the Rust scorer with the training median.
    assert math.isnan(m.vector({})[0])


def test_announced_model_with_another_digest_is_refused(trained: Any, tmp_path: Path) -> None:
    _, reg, mv = trained
    upd = {**model_update_record(mv), "artifact_sha256": "0" * 64}
    with pytest.raises(ModelLoadError, match="sha256"):
        load_announced(upd, reg.root)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_announced({**upd, "artifact_uri": str(tmp_path / "nope.json")}, reg.root)
    with pytest.raises(ModelLoadError, match="only file://"):
        artifact_path("s3://bucket/model.json", reg.root)


def test_artifact_path_forms(tmp_path: Path) -> None:
    d = tmp_path / "m" / "1"
    d.mkdir(parents=True)
    (d / "model.json").write_text("{}")
    assert artifact_path("m/1", tmp_path) == d / "model.json"
    assert artifact_path(d.as_uri(), Path("/elsewhere")) == d / "model.json"
    assert artifact_path(str(d / "model.json"), Path("/x")) == d / "model.json"
    assert version_number("v7") == version_number("7") == version_number(7) == 7
    with pytest.raises(ModelLoadError):
        version_number("latest")


class _Model:
    ref, threshold = "m/v1", -0.5


def test_adaptive_threshold_warms_up_then_follows_the_device() -> None:
    pol = AdaptivePolicy(alpha=0.5, k=2.0, warmup=2, critical_margin=0.1)
    m: Any = _Model()
    v = pol.judge(-0.3, m, None)  # cold: the model's threshold
    assert (v.threshold, v.is_alert, v.baseline.n, v.baseline.mean) == (-0.5, False, 1, -0.3)
    v = pol.judge(-0.5, m, v.baseline)  # still cold (n=1 < 2); -0.5 is not < -0.5
    assert v.threshold == -0.5 and not v.is_alert
    # EWMA: mean -0.3 + 0.5 * (-0.2) = -0.4; var = 0.5 * (0 + 0.5 * 0.04) = 0.01
    assert v.baseline.n == 2 and v.baseline.mean == pytest.approx(-0.4)
    assert v.baseline.var == pytest.approx(0.01)
    # Warm: min(-0.5, -0.4 - 2 * 0.1) = -0.6
    w = pol.judge(-0.55, m, v.baseline)
    assert w.threshold == pytest.approx(-0.6) and not w.is_alert
    assert w.baseline_mean == pytest.approx(-0.4) and w.baseline_std == pytest.approx(0.1)
    # -0.55 was normal: now n=3, mean -0.475, std ~0.103 → threshold ~-0.681.
    assert w.baseline.n == 3 and w.baseline.mean == pytest.approx(-0.475)
    # An alert does not teach the baseline; far below (margin 0.1) is CRITICAL.
    a = pol.judge(-0.9, m, w.baseline)
    assert a.is_alert and a.severity == "CRITICAL" and a.baseline == w.baseline
    b = pol.judge(-0.7, m, w.baseline)
    assert b.is_alert and b.severity == "WARNING"


def test_adaptive_threshold_never_stricter_than_the_model_and_resets_on_switch() -> None:
    pol = AdaptivePolicy(alpha=0.2, k=1.0, warmup=1)
    m: Any = _Model()
    base = Baseline("m/v1", 10, 0.2, 0.0001)  # a very normal device: mean - k std ≈ 0.19
    v = pol.judge(-0.45, m, base)
    assert v.threshold == -0.5 and not v.is_alert  # not the device's 0.19
    other: Any = type("M2", (), {"ref": "m/v2", "threshold": -0.4})()
    v2 = pol.judge(-0.45, other, base)  # a new version: cold again
    assert v2.threshold == -0.4 and v2.is_alert and v2.baseline.model_ref == "m/v2"


def test_ids_are_deterministic() -> None:
    assert score_id("d1", "w", 5, "m") == "d1@w@5#m"
    assert alert_id("d1", "w", 5, "m") == "m:d1@w@5"


def _scored(trained: Any) -> tuple[list[dict[str, Any]], list[tuple[int, dict[str, Any]]],
                                   list[dict[str, Any]]]:
    cfg, reg, mv = trained
    m = load_announced(model_update_record(mv), reg.root)
    vectors = synthetic_vectors(cfg, devices=3, windows=4, seed=5, shift=2.0)
    pol = AdaptivePolicy(warmup=100)
    scores, alerts = [], []
    for i, v in enumerate(vectors):
        verdict = pol.judge(m.score(v["features"]), m, None)
        s = {"score_id": score_id(v["device_id"], WINDOW, v["window_start"], MODEL),
             "device_id": v["device_id"], "window": WINDOW, "window_start": v["window_start"],
             "model_name": MODEL, "model_version": m.ref, "score": verdict.score,
             "model_threshold": m.threshold, "threshold": verdict.threshold,
             "is_alert": verdict.is_alert}
        scores.append((i % 2, s))
        if verdict.is_alert:
            alerts.append({"alert_id": alert_id(v["device_id"], WINDOW, v["window_start"], MODEL),
                           "model_version": m.ref, "mean": verdict.score})
    return vectors, scores, alerts


def test_check_scores_passes_on_correct_output(trained: Any) -> None:
    vectors, scores, alerts = _scored(trained)
    assert alerts, "shifted vectors should raise some alerts"
    r = check_scores(vectors, scores, alerts, trained[1].root, MODEL)
    assert r.scores == r.vectors == len(vectors) and r.by_version == {f"{MODEL}/v1": len(vectors)}


@pytest.mark.parametrize("breakage", ["duplicate", "missing", "wrong-score", "alert-twice",
                                      "alert-missing", "verdict"])
def test_check_scores_fails_on_broken_output(trained: Any, breakage: str) -> None:
    """Negative controls: each kind of broken output is caught."""
    vectors, scores, alerts = _scored(trained)
    if breakage == "duplicate":
        scores.append(scores[0])
    elif breakage == "missing":
        scores.pop()
    elif breakage == "wrong-score":
        p, s = scores[0]
        scores[0] = (p, {**s, "score": s["score"] + 1e-6})
    elif breakage == "alert-twice":
        alerts.append(alerts[0])
    elif breakage == "alert-missing":
        alerts.pop()
    elif breakage == "verdict":
        p, s = scores[1]
        scores[1] = (p, {**s, "is_alert": not s["is_alert"]})
    with pytest.raises(AssertionError):
        check_scores(vectors, scores, alerts, trained[1].root, MODEL)


def test_check_scores_fails_when_a_partition_goes_back_a_version(trained: Any) -> None:
    cfg, reg, mv = trained
    vectors, scores, alerts = _scored(trained)
    mv2 = train(synthetic_vectors(cfg, devices=5, windows=30, seed=8), cfg.feature_spec(), WINDOW,
                reg, MODEL, TrainParams(n_estimators=20, seed=4))
    try:
        m2 = load_announced(model_update_record(mv2), reg.root)
        # Partition 0: v2 then v1 again.
        idx = [i for i, (p, _) in enumerate(scores) if p == 0]
        p, s = scores[idx[0]]
        v = next(x for x in vectors if x["window_start"] == s["window_start"]
                 and x["device_id"] == s["device_id"])
        sc = m2.score(v["features"])
        scores[idx[0]] = (p, {**s, "model_version": m2.ref, "score": sc,
                              "model_threshold": m2.threshold, "threshold": m2.threshold,
                              "is_alert": sc < m2.threshold})
        alerts = [a for a in alerts if a["alert_id"] != alert_id(
            s["device_id"], WINDOW, s["window_start"], MODEL)]
        if sc < m2.threshold:
            alerts.append({"alert_id": alert_id(s["device_id"], WINDOW, s["window_start"], MODEL),
                           "model_version": m2.ref, "mean": sc})
        with pytest.raises(AssertionError, match="goes back"):
            check_scores(vectors, scores, alerts, reg.root, MODEL)
    finally:
        import shutil

        shutil.rmtree(mv2.path)


def test_update_record_is_json_shaped(trained: Any) -> None:
    _, reg, mv = trained
    rec = model_update_record(mv, previous_version=None)
    json.dumps(rec)
    assert rec["version"] == "1" and rec["artifact_sha256"] == mv.metadata["export_sha256"]


# --- the drift output's check (used by the S1 fault test) --------------------------------
def _drift_run(trained: Any) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]],
                                      list[dict[str, Any]], Any, list[str]]:
    """The real DriftDetector and RetrainPolicy, fed as DriftMonitor feeds them (the
    per-partition watermark rule), over 12 minutes of vectors on 3 partitions, the last
    four shifted far from the training data."""
    from sluice.config import DriftConfig
    from sluice.drift import DriftDetector, RetrainPolicy

    cfg, reg, mv = trained
    drift = DriftConfig(window_ms=180_000, slide_ms=60_000, min_samples=5, k_windows=2)
    vectors = (synthetic_vectors(cfg, devices=5, windows=8, seed=21)
               + synthetic_vectors(cfg, devices=5, windows=4, seed=22, shift=3.0,
                                   start_ms=1_767_225_600_000 + 8 * 60_000))
    features = [(int(v["device_id"][-1]) % 3, v) for v in vectors]
    det, policy = DriftDetector(mv.metadata, drift, clock=lambda: 0), RetrainPolicy(drift)
    marks: dict[int, int] = {}
    events: list[dict[str, Any]] = []
    triggers: list[dict[str, Any]] = []
    for p, v in features:
        marks[p] = max(marks.get(p, v["window_start"]), v["window_start"])
        wm = min(marks.values()) - drift.slide_ms if len(marks) == 3 else None
        new = det.add(v, v["window_start"], watermark_ms=wm)
        events += new
        triggers += policy.observe(new)
    return features, events, triggers, drift, list(det.features)


def test_check_drift_passes_on_the_detector_output(trained: Any) -> None:
    features, events, triggers, drift, names = _drift_run(trained)
    report = check_drift(features, events, triggers, drift, 3, names)
    assert report.windows == len(events) > 0 and report.drifted > 0 and triggers


@pytest.mark.parametrize("breakage", ["duplicate", "missing", "count", "trigger", "extra"])
def test_check_drift_fails_on_broken_output(trained: Any, breakage: str) -> None:
    features, events, triggers, drift, names = _drift_run(trained)
    if breakage == "duplicate":
        events = events + events[3:4]
    elif breakage == "missing":
        events = events[:2] + events[3:]
    elif breakage == "count":
        events = [dict(events[0], sample_count=events[0]["sample_count"] + 1)] + events[1:]
    elif breakage == "trigger":
        triggers = triggers + triggers[:1]
    else:  # a window the watermark never closed
        last = max(events, key=lambda e: e["window_start"])
        events = events + [dict(last, window_start=last["window_start"] + drift.slide_ms,
                                window_end=last["window_end"] + drift.slide_ms)]
    with pytest.raises(AssertionError):
        check_drift(features, events, triggers, drift, 3, names)
