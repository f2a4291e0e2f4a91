"""The scoring job on a mini-cluster: FeatureVectors scored by the announced model, a
hot swap to a new version without a restart, exactly one version per vector.

Two versions of one model are trained on synthetic vectors (v2 on shifted data, so the
two score differently). v1 is announced, batch A is produced and scored; then v2 is
announced while the job runs, and small batches follow until the first v2 score appears;
a last batch C follows. The output (read_committed, decoded with confluent-kafka's own
Avro deserializer) is checked by tests/scoring_checks.check_scores against the model
registry: every vector of the model's window scored once, by the version it names (Rust
export exactly, scikit-learn within 1e-9), versions only move forward per partition, and
alerts match alerting scores one to one. A vector of another window is not scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sluice.config import SluiceConfig
from sluice.kafka_util import ensure_topics, topic_config
from sluice.model import Registry, TrainParams, train
from sluice.model_updates import announce
from tests.conftest import unique_config, write_config
from tests.scoring_checks import (
    WINDOW,
    ScoringJob,
    bridge_until,
    check_scores,
    produce_vectors,
    read_outputs,
    ref,
    synthetic_vectors,
    wait_for,
)

pytestmark = pytest.mark.integration
MODEL = "iforest-hot"


def _outputs(cfg: SluiceConfig) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    got = read_outputs(cfg, [cfg.topics.model_scores, cfg.topics.alerts])
    return got[cfg.topics.model_scores], [a for _, a in got[cfg.topics.alerts]]


def test_hot_swap_scores_every_vector_with_exactly_one_version(
        stack: SluiceConfig, tmp_path: Path) -> None:
    cfg = unique_config(stack, "scoring", models={"dir": str(tmp_path / "models")},
                        job={"startup_mode": "earliest"}, scoring={"warmup": 3})
    ensure_topics(cfg)
    # One announcement per model survives compaction (keyed by model name).
    assert topic_config(cfg, cfg.topics.model_updates)["cleanup.policy"] == "compact"
    spec = cfg.feature_spec()
    assert spec is not None
    reg = Registry(cfg.path(cfg.models.dir))
    params = TrainParams(n_estimators=40, seed=1)
    v1 = train(synthetic_vectors(cfg, devices=8, windows=40, seed=1), spec, WINDOW, reg, MODEL,
               params)
    v2 = train(synthetic_vectors(cfg, devices=8, windows=40, shift=1.5, seed=2), spec, WINDOW,
               reg, MODEL, params)
    announce(cfg, v1)

    t0 = 1_767_225_600_000
    batch_a = synthetic_vectors(cfg, devices=6, windows=10, start_ms=t0, seed=10)
    # A vector of a window no model scores: read, counted, not scored.
    other = synthetic_vectors(cfg, devices=1, windows=1, start_ms=t0, seed=11,
                              window="vib_5m")
    produce_vectors(cfg, batch_a + other)

    vectors = list(batch_a)
    with ScoringJob(write_config(cfg, tmp_path), tmp_path / "job.log") as job:
        def scored(n: int) -> Callable[[], bool]:
            def check() -> bool:
                job.alive()
                return len(_outputs(cfg)[0]) >= n
            return check

        wait_for(scored(len(batch_a)), 240, "batch A was not scored")
        announce(cfg, v2, previous_version=v1.version)

        def bridge(k: int) -> None:
            batch = synthetic_vectors(cfg, devices=6, windows=1, start_ms=t0 + (10 + k) * 60_000,
                                      seed=100 + k)
            produce_vectors(cfg, batch)
            vectors.extend(batch)

        def switched() -> bool:
            job.alive()
            return any(s["model_version"] == ref(v2) for _, s in _outputs(cfg)[0])

        # Small batches until the first v2 score shows the switch.
        k = bridge_until(switched, bridge, pause=2.0, what="no vector was scored by v2")
        batch_c = synthetic_vectors(cfg, devices=6, windows=5,
                                    start_ms=t0 + (10 + k) * 60_000, seed=999)
        produce_vectors(cfg, batch_c)
        vectors += batch_c
        wait_for(scored(len(vectors)), 120, "batch C was not scored")
        time.sleep(3.0)  # a checkpoint more: anything extra (a duplicate) would show now
        scores, alerts = _outputs(cfg)

    report = check_scores(vectors + other, scores, alerts, reg.root, MODEL)
    by_sid = {s["score_id"]: s["model_version"] for _, s in scores}
    a_versions = {by_sid[f"{v['device_id']}@{v['window']}@{v['window_start']}#{MODEL}"]
                  for v in batch_a}
    c_versions = {by_sid[f"{v['device_id']}@{v['window']}@{v['window_start']}#{MODEL}"]
                  for v in batch_c}
    assert a_versions == {ref(v1)}, a_versions
    assert c_versions == {ref(v2)}, c_versions
    assert set(report.by_version) == {ref(v1), ref(v2)}
    # The switch point: every v1 score was written before every v2 score.
    last_v1 = max(s["scored_at"] for _, s in scores if s["model_version"] == ref(v1))
    first_v2 = min(s["scored_at"] for _, s in scores if s["model_version"] == ref(v2))
    assert last_v1 <= first_v2, (last_v1, first_v2)
    print(f"scored {report.scores} vectors: {report.by_version}, {report.alerts} alerts; "
          f"{k} bridging batches")
