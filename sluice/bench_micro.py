"""The Rust micro-benchmarks (criterion, udfs_rs/benches/hot_path.rs) next to the same
calls timed from Python through pyo3, and the pure-Python equivalent where there is one.

    python -m sluice.bench_micro model PATH   # the IsolationForest export the Rust bench scores
    python -m sluice.bench_micro show         # print the `micro` object sluice bench stores

`sluice bench` stores :func:`collect` as ``micro`` in out/bench/results.json: per call,
``rust_ns`` (criterion's mean estimate, when `cargo bench` has run), ``pyo3_ns`` (the call
from Python, best of 5) and ``python_ns`` (fastavro / numpy / scikit-learn, where one does
the same work).
"""

from __future__ import annotations

import io
import json
import math
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice.config import REPO_ROOT

CRITERION_DIR = REPO_ROOT / "udfs_rs" / "target" / "criterion"
N_FEATURES = 11


def _best_ns(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    """Best of ``repeat`` runs of ``n`` calls, in ns per call."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return round(best, 1)


def model_export(path: Path) -> Path:
    """Fit the bench's IsolationForest (100 trees, 11 features, as tests/bench) and write
    the JSON export the Rust model loads."""
    import numpy as np

    from sluice.model import export_isolation_forest

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export_isolation_forest(bench_forest(), np.zeros(N_FEATURES))))
    return path


def bench_forest() -> Any:
    """The bench's scikit-learn IsolationForest (100 trees, 11 features, seeded)."""
    import numpy as np
    from sklearn.ensemble import IsolationForest

    X = np.random.default_rng(0).normal(size=(5_000, N_FEATURES))
    return IsolationForest(n_estimators=100, random_state=0).fit(X)


def frame_samples() -> list[float]:
    """The Rust bench's frame: 256 samples at 2 kHz (f32-exact)."""
    out = []
    for i in range(256):
        t = i / 2000.0
        x = 1.5 * math.sin(2 * math.pi * 120 * t) + 0.3 * math.sin(2 * math.pi * 410 * t)
        out.append(struct.unpack("<f", struct.pack("<f", x))[0])
    return out


def numpy_frame_stats(data: bytes) -> tuple[str, int, int, int, float, float, float]:
    """The pure-Python equivalent of ``FrameDecoder.decode`` on a valid v1 frame
    (docs/formats.md): header and CRC with struct and zlib, statistics with numpy."""
    import numpy as np

    if data[:2] != b"SF" or data[2] != 1 or data[3] != 0:
        raise ValueError("not a v1 sensor frame")
    n_id = data[4]
    ts, rate, n = struct.unpack_from(">qIH", data, 5 + n_id)
    total = 23 + n_id + 4 * n
    if len(data) != total or zlib.crc32(data[:total - 4]) != struct.unpack_from(">I", data, total - 4)[0]:
        raise ValueError("bad length or CRC")
    x = np.frombuffer(data, dtype=">f4", count=n, offset=19 + n_id).astype(np.float64)
    return (data[5:5 + n_id].decode("utf-8"), ts, rate, n, math.sqrt(float(np.dot(x, x)) / n),
            float(np.max(np.abs(x))), float(x.sum()) / n)


class PyWindowAggregates:
    """The pure-Python equivalent of a ``FeatureAccumulator`` with count, mean, std, min,
    max, ewma, slope and a quantile: the same update rules as the Rust one (Welford moments,
    time-decayed sums rescaled to the newest event time, least-squares co-moments over time,
    a DDSketch of log-spaced bins; udfs_rs/src/features.rs), one value at a time."""

    def __init__(self, half_life_ms: float, q: float, alpha: float = 0.01) -> None:
        self.h, self.q = half_life_ms, q
        self.ln_gamma = math.log((1 + alpha) / (1 - alpha))
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.at, self.wx, self.w = 0, 0.0, 0.0
        self.t0, self.mean_t, self.mean_x, self.m2_t, self.c_tx = 0, 0.0, 0.0, 0.0, 0.0
        self.bins: dict[int, int] = {}  # positive values only (the bench's are)

    def update(self, ts_ms: int, x: float) -> None:
        self.n += 1
        n = self.n
        d = x - self.mean
        self.mean += d / n
        self.m2 += d * (x - self.mean)
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)
        if self.w == 0.0 or ts_ms >= self.at:
            f = 2.0 ** (-(ts_ms - self.at) / self.h) if self.w else 0.0
            self.wx, self.w, self.at = self.wx * f + x, self.w * f + 1.0, ts_ms
        else:
            f = 2.0 ** (-(self.at - ts_ms) / self.h)
            self.wx, self.w = self.wx + f * x, self.w + f
        if n == 1:
            self.t0, self.mean_t, self.mean_x, self.m2_t, self.c_tx = ts_ms, 0.0, x, 0.0, 0.0
        else:
            tr = float(ts_ms - self.t0)
            dt = tr - self.mean_t
            self.mean_t += dt / n
            self.mean_x += (x - self.mean_x) / n
            self.m2_t += dt * (tr - self.mean_t)
            self.c_tx += dt * (x - self.mean_x)
        key = math.ceil(math.log(x) / self.ln_gamma)
        self.bins[key] = self.bins.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        rank, seen, key = int(self.q * (self.n - 1)), 0, 0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen > rank:
                break
        gamma = math.exp(self.ln_gamma)
        return {"count": float(self.n), "mean": self.mean, "std": math.sqrt(self.m2 / self.n),
                "min": self.lo, "max": self.hi, "ewma": self.wx / self.w,
                "slope": self.c_tx / self.m2_t * 1000 if self.m2_t else math.nan,
                # the bin's representative value, within the values seen (as in Rust)
                "quantile": min(max(math.exp(key * self.ln_gamma) * 2 / (1 + gamma), self.lo),
                                self.hi)}


def criterion_estimates(folder: Path = CRITERION_DIR) -> dict[str, float]:
    """criterion's mean estimate (ns) per ``group/bench`` from its last run."""
    out: dict[str, float] = {}
    for est in folder.glob("**/new/estimates.json"):
        info = est.parent / "benchmark.json"
        name = json.loads(info.read_text())["full_id"] if info.exists() else est.parents[1].name
        out[name] = round(json.loads(est.read_text())["mean"]["point_estimate"], 1)
    return out


def pyo3_timings(model_path: Path | None = None) -> dict[str, dict[str, float | None]]:
    import fastavro
    import numpy as np

    from sluice.bench_udfs import plain_schema
    from sluice.native import (
        AvroDecoder,
        FeatureAccumulator,
        FeatureSpec,
        FrameDecoder,
        IsolationForestModel,
        QualityChecker,
        encode_frame,
    )
    from sluice.quality import COLUMNS

    schemas = REPO_ROOT / "schemas" / "telemetry-value"
    v1, v3 = (schemas / "v1.avsc").read_text(), (schemas / "v3.avsc").read_text()
    rec = {"event_id": "42-00001234", "device_id": "dev-0007", "ts": 1_790_000_000_000,
           "temperature_c": 51.25, "vibration_rms": 1.5, "status": "OK"}
    w, r = (fastavro.parse_schema(plain_schema(json.loads(t))) for t in (v1, v3))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, w, rec)
    body = buf.getvalue()
    framed = struct.pack(">bI", 0, 1) + body
    dec = AvroDecoder(v3)
    dec.add_writer_schema(1, v1)

    samples = frame_samples()
    frame = encode_frame("dev-0007", 1_790_000_000_000, 2000, samples)
    frames = FrameDecoder(4096)
    wave = FeatureAccumulator(FeatureSpec(["frames", "rms", "peak", "crest", "kurtosis",
                                           {"agg": "band", "lo_hz": 0, "hi_hz": 50},
                                           {"agg": "band", "lo_hz": 50, "hi_hz": 200},
                                           {"agg": "band", "lo_hz": 200, "hi_hz": 500}]))
    arr = np.asarray(samples)

    def numpy_wave() -> object:
        rms = math.sqrt(float(np.mean(arr * arr)))
        peak = float(np.max(np.abs(arr)))
        m = arr - arr.mean()
        kurt = float(np.mean(m**4) / np.mean(m**2) ** 2)
        p = np.abs(np.fft.rfft(arr)) ** 2
        f = np.fft.rfftfreq(len(arr), 1 / 2000)
        return rms, peak, peak / rms, kurt, [p[(f >= lo) & (f < hi)].sum() for lo, hi in
                                             ((0, 50), (50, 200), (200, 500))]

    values = FeatureAccumulator(FeatureSpec(["count", "mean", "std", "min", "max",
                                             {"agg": "ewma", "half_life_ms": 30000}, "slope",
                                             {"agg": "quantile", "q": 0.95}]))
    py_values = PyWindowAggregates(30_000, 0.95)
    clock = [1_790_000_000_000]

    def update() -> None:
        clock[0] += 100
        values.update(clock[0], 50.0 + (clock[0] % 17) * 0.1)

    def py_update() -> None:
        clock[0] += 100
        py_values.update(clock[0], 50.0 + (clock[0] % 17) * 0.1)

    suite = (REPO_ROOT / "schemas" / "expectations" / "telemetry.json").read_text()
    checker = QualityChecker(suite, list(COLUMNS["telemetry"]))
    row = ("42-00001234", "dev-0007", 1_790_000_000_000, 51.25, 1.5, "OK", 45.0, "1.5.0", 12)

    out: dict[str, dict[str, float | None]] = {
        "avro/decode_resolve_v1_to_v3": {
            "pyo3_ns": _best_ns(lambda: dec.decode(framed), 20_000),
            "python_ns": _best_ns(lambda: fastavro.schemaless_reader(io.BytesIO(body), w, r), 5_000),
            "python": "fastavro schemaless_reader (no logical types)"},  # type: ignore[dict-item]
        "frames/decode_stats_256": {
            "pyo3_ns": _best_ns(lambda: frames.decode(frame), 20_000),
            "python_ns": _best_ns(lambda: numpy_frame_stats(frame), 5_000),
            "python": "struct + zlib.crc32 + numpy (numpy_frame_stats)"},  # type: ignore[dict-item]
        "features/accumulator_update_frame_256": {
            "pyo3_ns": _best_ns(lambda: wave.update_frame(samples, 2000.0), 5_000),
            "python_ns": _best_ns(numpy_wave, 1_000), "python": "numpy (rms, peak, crest, "  # type: ignore[dict-item]
            "kurtosis, rfft bands) on an array"},
        "features/window_update_value": {
            "pyo3_ns": _best_ns(update, 50_000), "python_ns": _best_ns(py_update, 50_000),
            "python": "plain Python, the same update rules (PyWindowAggregates)"},  # type: ignore[dict-item]
        "quality/telemetry_suite_record": {
            "pyo3_ns": _best_ns(lambda: checker.check(row), 20_000), "python_ns": None},
    }
    if model_path is not None and model_path.exists():
        model = IsolationForestModel(model_path.read_text())
        vec = [0.1 * i for i in range(model.n_features)]
        forest, row_2d = bench_forest(), np.asarray([vec])
        out["model/isolation_forest_score_row"] = {
            "pyo3_ns": _best_ns(lambda: model.score(vec), 2_000),
            "python_ns": _best_ns(lambda: forest.score_samples(row_2d), 20),
            "python": "scikit-learn IsolationForest.score_samples, one row"}  # type: ignore[dict-item]
    return out


def collect(model_path: Path | None = None, criterion_dir: Path = CRITERION_DIR) -> dict[str, Any]:
    rust = criterion_estimates(criterion_dir)
    calls = pyo3_timings(model_path)
    for name, ns in rust.items():
        calls.setdefault(name, {"pyo3_ns": None, "python_ns": None})["rust_ns"] = ns
    for c in calls.values():
        c.setdefault("rust_ns", None)
    return {"unit": "ns per call", "rust": "criterion mean (cargo bench --bench hot_path)",
            "pyo3": "the same call from Python through the extension, best of 5",
            "targets_ns": {"avro/decode_resolve_v1_to_v3": 250,
                           "features/waveform_frame_256": 3000},
            "calls": dict(sorted(calls.items()))}


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "model":
        print(model_export(Path(argv[1])))
    elif argv[:1] == ["show"]:
        print(json.dumps(collect(REPO_ROOT / "out" / "bench" / "micro-model.json"), indent=2))
    else:
        sys.exit("usage: python -m sluice.bench_micro model PATH | show")


if __name__ == "__main__":
    main(sys.argv[1:])
