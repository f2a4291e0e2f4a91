"""`sluice eval` (docs/evaluation.md): the metrics on a hand-computed example, the adaptive
threshold, offline features against the independent oracle, and a small end-to-end run."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluice.cli import app
from sluice.config import load_config
from sluice.evaluation import DETECTORS, AdaptiveThreshold, Unit, evaluate
from sluice.generator import Anomaly, Frame, Reading, plan_with_labels
from sluice.offline_features import OfflineWindowError, compute_vectors, events_from_items, window_bounds
from tests.feature_oracle import features_close, window_features

REPO = Path(__file__).resolve().parents[2]

A = Anomaly("d1", "spike", 100, 150, 20.0)
B = Anomaly("d2", "drift", 1000, 3000, 15.0)


def _units(alerts: dict[tuple[str, int], bool]) -> list[Unit]:
    """1-second windows; an alerted window alerts at its end."""
    return [Unit(d, "w", s, s + 1000, s + 1000 if a else None) for (d, s), a in alerts.items()]


def test_metrics_on_a_hand_computed_example() -> None:
    units = _units({
        ("d1", 0): True,      # overlaps A: TP
        ("d1", 1000): True,   # no anomaly: FP
        ("d1", 2000): False,  # TN
        ("d2", 0): False,     # ends where B starts ([0, 1000) vs [1000, 3000]): TN
        ("d2", 1000): False,  # overlaps B: FN
        ("d2", 2000): True,   # TP, B's first alert at 3000
        ("d2", 3000): True,   # starts at B's (inclusive) end: TP
    })
    m = evaluate(units, [A, B], hours=1.0)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 2)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    # TTD: A 1000 - 100 = 0.9 s, B 3000 - 1000 = 2.0 s; median 1.45, p90 (linear) 1.89.
    assert m["ttd_median_s"] == pytest.approx(1.45) and m["ttd_p90_s"] == pytest.approx(1.89)
    assert m["detected"] == 2 and m["event_recall"] == 1.0
    assert m["per_kind"]["spike"] == {"anomalies": 1, "detected": 1, "recall": 1.0,
                                      "window_recall": 1.0, "ttd_median_s": pytest.approx(0.9)}
    assert m["per_kind"]["drift"]["window_recall"] == pytest.approx(2 / 3)
    assert m["false_alerts_per_device_hour"] == pytest.approx(0.5)  # 1 FP, 2 devices, 1 h


def test_metrics_negative_controls() -> None:
    windows = [("d1", 0), ("d1", 1000), ("d1", 2000), ("d2", 0), ("d2", 1000), ("d2", 2000),
               ("d2", 3000)]
    # Silent detector: nothing detected, no TTD.
    m = evaluate(_units(dict.fromkeys(windows, False)), [A, B])
    assert (m["precision"], m["recall"], m["f1"], m["detected"]) == (0.0, 0.0, 0.0, 0)
    assert m["ttd_median_s"] is None and m["per_kind"]["spike"]["recall"] == 0.0
    # Alerts only where no anomaly is: precision 0 although it alerts.
    m = evaluate(_units({w: w in (("d1", 1000), ("d1", 2000), ("d2", 0)) for w in windows}), [A, B])
    assert (m["alerts"], m["tp"], m["precision"], m["recall"]) == (3, 0, 0.0, 0.0)
    # The right times on the wrong device count for nothing.
    wrong = [Unit("d3", u.window, u.start, u.end, u.end) for u in _units(dict.fromkeys(windows, True))]
    m = evaluate(wrong, [A, B])
    assert (m["tp"], m["fp"], m["detected"]) == (0, 7, 0)
    # Always alerting: recall 1, precision = the positive share.
    m = evaluate(_units(dict.fromkeys(windows, True)), [A, B])
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(4 / 7)


def test_adaptive_threshold() -> None:
    t = AdaptiveThreshold(-0.5, alpha=0.1, k=3.0, warmup=5)
    # Warm-up: the model's threshold alone.
    assert t.observe("quiet", -0.51) and not t.observe("quiet", -0.49)
    for i in range(30):
        assert not t.observe("quiet", -0.40 + (0.005 if i % 2 else -0.005))
    # A quiet device: mu - 3 sigma is above the model threshold, so the model's decides.
    assert t.limit("quiet") == -0.5
    assert t.observe("quiet", -0.52)
    # A noisy device: mu - 3 sigma is far below the model threshold, so a score the fixed
    # threshold flags (the negative control) is not an alert here.
    for i in range(30):
        t.observe("noisy", -0.30 if i % 2 else -0.49)
    assert t.limit("noisy") < -0.55
    assert -0.55 < -0.5 and not t.observe("noisy", -0.55)
    assert t.observe("noisy", -0.9)
    with pytest.raises(ValueError):
        AdaptiveThreshold(-0.5, alpha=0)


def test_offline_features_equal_the_oracle() -> None:
    """Offline vectors (the job's Rust path) against tests/feature_oracle.py (numpy), on a
    stream with every kind of anomaly."""
    cfg = load_config(REPO / "sluice.yaml").with_overrides(
        generator={"records": 6_000, "devices": 4, "anomalies": {"rate": 3, "seed": 1}})
    spec = cfg.feature_spec()
    assert spec is not None
    items, labels = plan_with_labels(cfg, start_ms=1_700_000_000_000, step_ms=3_600_000 / 6_720)
    assert {a.kind for a in labels} == {"spike", "drift", "stuck", "bearing"}
    vectors = compute_vectors(events_from_items(items), spec)
    groups = defaultdict(list)
    for it in items:
        if isinstance(it, Reading):
            e = {"device_id": it.device_id, "ts": it.ts, "source": "TELEMETRY",
                 "temperature_c": it.temperature_c, "vibration_rms": it.vibration_rms,
                 "humidity_pct": it.humidity_pct}
        elif isinstance(it, Frame):
            s = [float(x) for x in it.samples]
            e = {"device_id": it.device_id, "ts": it.ts, "source": "SENSOR_FRAME",
                 "vibration_rms": math.sqrt(sum(x * x for x in s) / len(s)),
                 "frame": {"samples": s, "sample_rate_hz": it.sample_rate_hz,
                           "peak_abs_g": max(abs(x) for x in s)}}
        else:
            continue
        for w in spec.windows:
            if w.kind != "session" and e["source"] in w.source:
                for b in window_bounds(w, e["ts"]):
                    groups[(w.name, e["device_id"], b)].append(e)
    assert {v["window"] for v in vectors} == {"temp_1m", "vib_5m"}
    assert len(vectors) == len(groups)
    for v in vectors:
        evs = groups[(v["window"], v["device_id"], (v["window_start"], v["window_end"]))]
        assert v["event_count"] == len(evs)
        expected = window_features(spec.window(v["window"]), evs)
        assert set(v["features"]) == set(expected)
        for name, x in expected.items():
            assert features_close(name, v["features"][name], x), (v["window"], name, v["features"][name], x)
    with pytest.raises(OfflineWindowError, match="session"):
        compute_vectors([], spec, ["vib_session"])


def test_sluice_eval_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, [
        "eval", "--devices", "4", "--records", "5000", "--hours", "1", "--rate", "3",
        "--out", str(out), "--config", str(REPO / "sluice.yaml")])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["detectors"]) == set(DETECTORS)
    lab = results["streams"]["labelled"]
    assert lab["anomalies"] == len(results["labels"]) > 0
    assert results["streams"]["baseline"]["seed"] != lab["seed"]
    for name, m in results["detectors"].items():
        assert m["windows"] == lab["vectors"] > 0, name
        assert m["positive_windows"] > 0
        for key in ("precision", "recall", "f1", "event_recall"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert m["tp"] + m["fp"] == m["alerts"] and m["tp"] + m["fn"] == m["positive_windows"]
        assert set(m["per_kind"]) <= {"spike", "drift", "stuck", "bearing"}
        if m["detected"]:
            assert 0 <= m["ttd_median_s"] <= m["ttd_p90_s"] <= 3600
    # sluice's model: trained on the baseline, registered, Rust-scored; it finds something.
    for w, model in results["models"].items():
        if not w.startswith("raw:"):
            assert Path(model["path"], "model.json").is_file() and model["threshold"] < 0
    assert results["detectors"]["sluice-iforest"]["detected"] > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| `river-hst` |" in (out / "results.md").read_text()
    assert "sluice-iforest" in res.output and "river-hst" in res.output
