"""The whole loop of issue 5, on the real stack: a distribution shift → drift → a retrain
trigger → a new model version → hot swap → the alert rate back to baseline.

Running: jobs/scoring.py (mini-cluster: scoring, drift monitor) and jobs/retrain.py (a
plain process), both as they run in production, on topics of this test alone.

1. v1 is trained on baseline vectors (every feature N(0, 1)) and announced.
2. Phase 1, baseline: 40 devices × 12 minutes of N(0, 1) vectors. Their alert rate r0 is
   the baseline; no drift window that holds only baseline vectors may drift (the
   negative control: the detector does not fire on its own training distribution).
3. Phase 2, the shift: 40 devices × 20 minutes with every feature N(3, 1). Under v1
   most of them alert; the drift monitor's sliding windows drift, and after
   ``drift.k_windows`` in a row exactly one RetrainTrigger goes out (then the cool-down).
4. jobs/retrain.py trains v2 on the shifted period, its holdout guard accepts it (v1 is
   far worse on the same holdout), and it announces v2 in the transaction that commits
   the trigger. The scoring job switches without a restart.
5. Phase 3: shifted vectors in small batches until the first v2 score; then phase 4,
   40 devices × 10 minutes more of the shifted distribution: its alert rate under v2 must
   be back near r0, while phase 2's under v1 was high.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sluice.config import REPO_ROOT, SluiceConfig
from sluice.kafka_util import ensure_topics
from sluice.model import Registry, TrainParams, train
from sluice.model_updates import announce, read_updates
from tests.conftest import PYTHON, unique_config, write_config
from tests.scoring_checks import (
    MINUTE,
    WINDOW,
    ScoringJob,
    produce_vectors,
    read_outputs,
    synthetic_vectors,
    wait_for,
)

pytestmark = pytest.mark.integration
MODEL = "iforest-loop"
DEVICES = 40
SHIFT = 3.0
T0 = 1_767_225_600_000


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


def _rate(scores: list[dict[str, Any]]) -> float:
    return sum(1 for s in scores if s["is_alert"]) / max(len(scores), 1)


def test_drift_retrains_and_the_alert_rate_returns_to_baseline(
        stack: SluiceConfig, tmp_path: Path) -> None:
    cfg = unique_config(
        stack, "loop", models={"dir": str(tmp_path / "models")},
        job={"startup_mode": "earliest"},
        drift={"window_ms": 5 * MINUTE, "slide_ms": MINUTE, "min_samples": 200, "k_windows": 2,
               "cooldown_ms": 24 * 3600 * 1000},
        retrain={"min_rows": 300, "consumer_group": f"retrain-{tmp_path.name[-20:]}"})
    ensure_topics(cfg)
    spec = cfg.feature_spec()
    assert spec is not None
    reg = Registry(cfg.path(cfg.models.dir))

    def vectors(minute0: int, n: int, shift: float, seed: int) -> list[dict[str, Any]]:
        return synthetic_vectors(cfg, devices=DEVICES, windows=n, shift=shift,
                                 start_ms=T0 + minute0 * MINUTE, seed=seed)

    v1 = train(synthetic_vectors(cfg, devices=DEVICES, windows=40, seed=1, start_ms=T0 - 60 * MINUTE),
               spec, WINDOW, reg, MODEL, TrainParams(n_estimators=60, seed=1))
    announce(cfg, v1)
    phase1 = vectors(0, 12, 0.0, 10)
    phase2 = vectors(12, 20, SHIFT, 20)
    # One vector first, an hour before the rest: once it is scored, v1 is active, so the
    # phases are scored (and reach the drift monitor) in their partitions' order. Vectors
    # that wait for a first model are flushed device by device, which would put most of
    # them behind the monitor's watermark (docs/drift.md).
    sentinel = synthetic_vectors(cfg, devices=1, windows=1, seed=5, start_ms=T0 - 60 * MINUTE)
    produce_vectors(cfg, sentinel)
    cfg_path = write_config(cfg, tmp_path)
    retrain_log = (tmp_path / "retrain.log").open("w")
    retrainer = subprocess.Popen([PYTHON, "jobs/retrain.py", "--config", str(cfg_path)],
                                 cwd=REPO_ROOT, stdout=retrain_log, stderr=subprocess.STDOUT)
    topics = [cfg.topics.model_scores, cfg.topics.drift, cfg.topics.retrain_triggers]
    try:
        with ScoringJob(cfg_path, tmp_path / "scoring.log") as job:
            def sentinel_scored() -> bool:
                job.alive()
                return bool(read_outputs(cfg, [cfg.topics.model_scores])[cfg.topics.model_scores])

            wait_for(sentinel_scored, 240, "the first vector was not scored")
            produce_vectors(cfg, phase1 + phase2)
            def v2_announced() -> bool:
                job.alive()
                assert retrainer.poll() is None, (tmp_path / "retrain.log").read_text()[-3000:]
                return any(u["model_name"] == MODEL and u["version"] == "2"
                           for u in read_updates(cfg))

            wait_for(v2_announced, 300, "no v2 was announced: "
                     + (tmp_path / "retrain.log").read_text()[-2000:])
            minute, seed = 32, 100
            deadline = time.monotonic() + 120
            while True:  # phase 3: until the switch shows in the output
                job.alive()
                produce_vectors(cfg, vectors(minute, 1, SHIFT, seed))
                minute, seed = minute + 1, seed + 1
                time.sleep(2.0)
                got = read_outputs(cfg, [cfg.topics.model_scores])[cfg.topics.model_scores]
                if any(s["model_version"] == f"{MODEL}/v2" for _, s in got):
                    break
                assert time.monotonic() < deadline, "v2 was announced but never scored"
            phase4 = vectors(minute, 10, SHIFT, 999)
            produce_vectors(cfg, phase4)
            n_total = len(sentinel) + len(phase1) + len(phase2) + (minute - 32) * DEVICES + len(phase4)

            def all_scored() -> bool:
                job.alive()
                got = read_outputs(cfg, [cfg.topics.model_scores])[cfg.topics.model_scores]
                return len(got) >= n_total

            wait_for(all_scored, 180, "not every vector was scored")
            time.sleep(3.0)
            out = read_outputs(cfg, topics)
    finally:
        retrainer.terminate()
        try:
            retrainer.wait(30)
        except subprocess.TimeoutExpired:
            retrainer.kill()
        retrain_log.close()

    scores = {s["score_id"]: s for _, s in out[cfg.topics.model_scores]}
    assert len(scores) == n_total, "a vector scored twice or not at all"

    def of(vs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [scores[f"{v['device_id']}@{v['window']}@{v['window_start']}#{MODEL}"] for v in vs]

    s1, s2, s4 = of(phase1), of(phase2), of(phase4)
    assert {s["model_version"] for s in s1 + s2} == {f"{MODEL}/v1"}
    assert {s["model_version"] for s in s4} == {f"{MODEL}/v2"}
    r0, r2, r4 = _rate(s1), _rate(s2), _rate(s4)
    drift = [{**d, "window_start": _ms(d["window_start"]), "window_end": _ms(d["window_end"])}
             for _, d in out[cfg.topics.drift]]
    triggers = [t for _, t in out[cfg.topics.retrain_triggers]]
    print(f"alert rate: baseline {r0:.3f}, shift under v1 {r2:.3f}, shift under v2 {r4:.3f}; "
          f"{len(drift)} drift events ({sum(d['drifted'] for d in drift)} drifted), "
          f"{len(triggers)} retrain trigger(s)")
    # The shift is an incident under v1 and normal again under v2.
    assert r2 >= 0.5, r2
    assert r4 <= max(2 * r0, 0.05), (r0, r4)
    # Drift: none while the windows held baseline vectors only; drifted once the shift came.
    shift_start = T0 + 12 * MINUTE
    v1_drift = [d for d in drift if d["model_version"] == "1"]
    baseline_only = [d for d in v1_drift if d["window_end"] <= shift_start]
    assert baseline_only and not any(d["drifted"] for d in baseline_only), baseline_only[:3]
    assert any(d["drifted"] for d in v1_drift if d["window_start"] >= shift_start)
    # One trigger (the cool-down holds back the rest), for v1, naming drifted features.
    assert len(triggers) == 1, triggers
    assert triggers[0]["model_version"] == "1" and triggers[0]["drifted_features"]
    v2 = reg.get(MODEL, 2)
    assert v2.metadata["retrain"]["trigger_id"] == triggers[0]["trigger_id"]
    ups = [u for u in read_updates(cfg) if u["model_name"] == MODEL]
    assert [u["version"] for u in ups] == ["1", "2"] and ups[1]["previous_version"] == "1"
