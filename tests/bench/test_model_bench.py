"""Model scoring micro-benchmark: Rust IsolationForestModel vs scikit-learn's score_samples,
per vector and per batch (100 trees, max_samples 256, 11 features). Writes
out/bench/model.json. Run with `make bench`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest

from sluice.config import REPO_ROOT
from sluice.model import export_isolation_forest
from sluice.native import IsolationForestModel

pytestmark = pytest.mark.bench


def _best(fn: Callable[[], object], reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def test_model_scoring_bench() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 11))
    model = IsolationForest(n_estimators=100, random_state=0).fit(X)
    rust = IsolationForestModel(json.dumps(export_isolation_forest(model, np.zeros(11))))
    rows = [r.tolist() for r in X[:2_000]]
    single = X[:200]

    res = {
        "rust_score_per_vector_us": _best(lambda: [rust.score(r) for r in rows]) / len(rows) * 1e6,
        "sklearn_score_samples_per_row_us":
            _best(lambda: [model.score_samples(r.reshape(1, -1)) for r in single], 3) / len(single) * 1e6,
        "rust_score_many_per_row_us": _best(lambda: rust.score_many(X)) / len(X) * 1e6,
        "sklearn_score_samples_batch_per_row_us": _best(lambda: model.score_samples(X), 3) / len(X) * 1e6,
    }
    out = REPO_ROOT / "out/bench/model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:42s} {v:10.2f}")
    # Sanity, not a target: the Rust per-vector path must beat sklearn's per-row call.
    assert res["rust_score_per_vector_us"] < res["sklearn_score_samples_per_row_us"]
