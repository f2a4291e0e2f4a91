"""Detection quality against a peer: ``sluice eval`` (docs/evaluation.md).

One run:

1. two generator plans over consecutive event-time spans: a clean **baseline** (its own
   seed, no anomalies) and a **labelled** stream (another seed, ``generator.anomalies``
   on: spikes, slow drift, stuck sensors, bearing wear; sluice/generator.py);
2. window features of both with the job's feature code (sluice/offline_features.py);
3. detectors, each scoring the labelled stream after learning from the baseline:

   * ``sluice-iforest``: per spec window, sluice's model (``sluice.model.train``:
     scikit-learn IsolationForest, published to a registry under the output folder,
     exported to JSON) scored by the Rust ``IsolationForestModel``; alert when
     ``score < threshold`` (the model's, for ``contamination``);
   * ``sluice-iforest-adaptive``: the same scores with a per-device adaptive threshold
     (:class:`AdaptiveThreshold`);
   * ``river-hst``: River's HalfSpaceTrees behind River's online ``MinMaxScaler`` over the
     same (median-imputed) feature vectors; it learns the baseline, then scores and keeps
     learning online on the labelled stream; alert when its score exceeds the baseline's
     ``1 - contamination`` score quantile;
   * ``river-hst-raw``: the same over raw events (telemetry readings; sensor frames' RMS,
     peak and mean, each source its own model); a window alerts when one of its events did;

4. window-level metrics (:func:`evaluate`): a window vector is positive when it overlaps a
   labelled anomaly of its device; precision, recall, F1, per-kind recall, and the time
   to detect each labelled anomaly (event time from its start to the first alert of its
   device in a window overlapping it).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sluice.config import AnomalyConfig, SluiceConfig
from sluice.generator import ANOMALY_KINDS, Anomaly, Item, plan_with_labels
from sluice.offline_features import Event, compute_vectors, events_from_items

# 2026-01-01T00:00:00Z: a fixed start, so a run's numbers depend only on its parameters.
DEFAULT_START_MS = 1_767_225_600_000

SLUICE = "sluice-iforest"
SLUICE_ADAPTIVE = "sluice-iforest-adaptive"
RIVER = "river-hst"
RIVER_RAW = "river-hst-raw"
DETECTORS = (SLUICE, SLUICE_ADAPTIVE, RIVER, RIVER_RAW)

# Raw events as River sees them, per source: (feature name, path in the event record).
RAW_FEATURES = {
    "TELEMETRY": (("temperature_c", "temperature_c"), ("vibration_rms", "vibration_rms"),
                  ("humidity_pct", "humidity_pct")),
    "SENSOR_FRAME": (("vibration_rms", "vibration_rms"), ("peak_abs_g", "frame.peak_abs_g"),
                     ("mean_g", "frame.mean_g")),
}


# --- parameters ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalParams:
    devices: int = 20
    records: int = 100_000  # telemetry readings per stream (frames and work orders on top)
    hours: float = 4.0  # event-time span of each stream
    seed: int = 2  # generator seed of the labelled stream
    baseline_seed: int = 1  # generator seed of the clean baseline
    anomaly_seed: int = 7
    anomaly_rate: float = 0.5  # labelled anomalies per device-hour
    kinds: tuple[str, ...] = ANOMALY_KINDS
    windows: tuple[str, ...] | None = None  # default: every tumble/hop window of the spec
    contamination: float = 0.01
    n_estimators: int = 100
    model_seed: int = 0
    # Per-device adaptive threshold (sluice-iforest-adaptive).
    adaptive_alpha: float = 0.05
    adaptive_k: float = 3.0
    adaptive_warmup: int = 10
    # River HalfSpaceTrees.
    hst_trees: int = 10
    hst_height: int = 8
    hst_window: int = 250
    hst_seed: int = 0
    raw: bool = True  # also run river-hst-raw
    start_ms: int = DEFAULT_START_MS


# --- the adaptive threshold --------------------------------------------------------------------
class AdaptiveThreshold:
    """Per device, an EWMA of the mean and variance of its recent non-alert scores
    (``alpha``). After ``warmup`` such scores a score alerts when it is below
    ``min(threshold, mu - k * sigma)``; before, below ``threshold`` (the model's)."""

    def __init__(self, threshold: float, *, alpha: float = 0.05, k: float = 3.0, warmup: int = 10):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.threshold, self.alpha, self.k, self.warmup = threshold, alpha, k, warmup
        self.state: dict[str, tuple[int, float, float]] = {}  # device -> (n, mean, variance)

    def limit(self, device: str) -> float:
        n, mu, var = self.state.get(device, (0, 0.0, 0.0))
        if n < self.warmup:
            return self.threshold
        return min(self.threshold, mu - self.k * math.sqrt(var))

    def observe(self, device: str, score: float) -> bool:
        """Whether ``score`` alerts; a score that does not updates the device's statistics."""
        alert = score < self.limit(device)
        if not alert:
            n, mu, var = self.state.get(device, (0, score, 0.0))
            if n == 0:
                self.state[device] = (1, score, 0.0)
            else:
                d = score - mu
                mu += self.alpha * d
                var = (1 - self.alpha) * (var + self.alpha * d * d)
                self.state[device] = (n + 1, mu, var)
        return alert


# --- metrics -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One scored window vector: ``[start, end)`` of ``device_id``; ``alert_ts`` is the
    event time its detector alerted (None: no alert)."""

    device_id: str
    window: str
    start: int
    end: int
    alert_ts: int | None


def overlaps(u: Unit, a: Anomaly) -> bool:
    return u.device_id == a.device_id and u.start <= a.end_ts and u.end > a.start_ts


def _quantile(xs: Sequence[float], q: float) -> float | None:
    return float(np.quantile(np.asarray(xs, dtype=np.float64), q)) if xs else None


def evaluate(units: Sequence[Unit], labels: Sequence[Anomaly], hours: float | None = None
             ) -> dict[str, Any]:
    """Window-level precision / recall / F1, per-kind recall and time to detect.

    * positive window: overlaps a labelled anomaly of its device; TP / FP / FN count windows.
    * ``per_kind[k]``: ``anomalies``; ``detected`` (at least one alert in a window
      overlapping it); ``recall`` = detected / anomalies (event level); ``window_recall``
      (alerted share of the windows overlapping one of kind k); ``ttd_median_s``.
    * time to detect (TTD): per detected anomaly, the earliest ``alert_ts`` among its
      overlapping windows minus its ``start_ts`` (0 if earlier), in seconds; median and p90.
    """
    by_dev: dict[str, list[Anomaly]] = defaultdict(list)
    for a in labels:
        by_dev[a.device_id].append(a)
    tp = fp = fn = tn = 0
    first_alert: dict[int, int] = {}
    kind_windows: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [positive, alerted]
    index = {id(a): i for i, a in enumerate(labels)}
    for u in units:
        hits = [a for a in by_dev.get(u.device_id, ()) if overlaps(u, a)]
        alert = u.alert_ts is not None
        if hits:
            tp += alert
            fn += not alert
        else:
            fp += alert
            tn += not alert
        for a in hits:
            kw = kind_windows[a.kind]
            kw[0] += 1
            kw[1] += alert
            if u.alert_ts is not None:
                i = index[id(a)]
                first_alert[i] = min(first_alert.get(i, u.alert_ts), u.alert_ts)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ttd = {i: max(0, t - labels[i].start_ts) / 1000 for i, t in first_alert.items()}
    per_kind: dict[str, Any] = {}
    for kind in sorted({a.kind for a in labels}, key=lambda k: (ANOMALY_KINDS + (k,)).index(k)):
        idx = [i for i, a in enumerate(labels) if a.kind == kind]
        det = [i for i in idx if i in ttd]
        pos, alerted = kind_windows[kind]
        per_kind[kind] = {
            "anomalies": len(idx), "detected": len(det),
            "recall": len(det) / len(idx) if idx else 0.0,
            "window_recall": alerted / pos if pos else 0.0,
            "ttd_median_s": _quantile([ttd[i] for i in det], 0.5),
        }
    detected = len(ttd)
    out: dict[str, Any] = {
        "windows": len(units), "positive_windows": tp + fn, "alerts": tp + fp,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall, "f1": f1,
        "anomalies": len(labels), "detected": detected,
        "event_recall": detected / len(labels) if labels else 0.0,
        "ttd_median_s": _quantile(list(ttd.values()), 0.5),
        "ttd_p90_s": _quantile(list(ttd.values()), 0.9),
        "per_kind": per_kind,
    }
    if hours:
        devices = len({u.device_id for u in units}) or 1
        out["false_alerts_per_device_hour"] = fp / (devices * hours)
    return out


# --- streams -----------------------------------------------------------------------------------
@dataclass
class Stream:
    items: list[Item]
    labels: list[Anomaly]
    events: list[Event]
    vectors: list[dict[str, Any]] = field(default_factory=list)


def stream_config(cfg: SluiceConfig, p: EvalParams, *, seed: int, anomalies: bool) -> SluiceConfig:
    acfg = AnomalyConfig(rate=p.anomaly_rate, kinds=p.kinds, seed=p.anomaly_seed) if anomalies else None  # type: ignore[arg-type]
    return cfg.with_overrides(generator={
        "seed": seed, "records": p.records, "devices": p.devices,
        "anomalies": None if acfg is None else acfg.model_dump()})


def make_stream(cfg: SluiceConfig, p: EvalParams, *, seed: int, anomalies: bool, start_ms: int) -> Stream:
    c = stream_config(cfg, p, seed=seed, anomalies=anomalies)
    g = c.generator
    slots = g.records + round(g.records * g.frame_share) + round(g.records * g.maintenance_share)
    step = p.hours * 3_600_000 / max(slots, 1)
    items, labels = plan_with_labels(c, start_ms=start_ms, step_ms=step)
    return Stream(items, labels, events_from_items(items))


# --- detectors ---------------------------------------------------------------------------------
def _units(vectors: Sequence[dict[str, Any]], alerts: Sequence[bool]) -> list[Unit]:
    return [Unit(v["device_id"], v["window"], v["window_start"], v["window_end"],
                 v["window_end"] if a else None) for v, a in zip(vectors, alerts, strict=True)]


def hst_window(p: EvalParams, baseline_points: int) -> int:
    """HST's window size: ``hst_window``, at most a quarter of the baseline (small runs)."""
    return max(2, min(p.hst_window, baseline_points // 4))


def _hst(p: EvalParams, window: int) -> Any:
    from river import anomaly, preprocessing

    return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
        n_trees=p.hst_trees, height=p.hst_height, window_size=window, seed=p.hst_seed)


def _hst_learn_baseline(model: Any, xs: Sequence[dict[str, float]], window: int, p: EvalParams,
                        tick: Callable[[], None]) -> float:
    """Learn the baseline online; the alert threshold is the ``1 - contamination``
    quantile of the scores given to baseline points once the first reference window is
    full (each scored before it is learned)."""
    scores = []
    for n, x in enumerate(xs):
        if n >= window:
            scores.append(model.score_one(x))
        model.learn_one(x)
        tick()
    if not scores:
        raise ValueError(f"the baseline has {len(xs)} points; River's HST needs more than "
                         f"its window ({window}) to calibrate a threshold")
    return float(np.quantile(scores, 1 - p.contamination))


def _hst_score_stream(model: Any, xs: Sequence[dict[str, float]], tick: Callable[[], None]) -> list[float]:
    out = []
    for x in xs:
        out.append(model.score_one(x))
        model.learn_one(x)
        tick()
    return out


def _raw_points(events: Sequence[Event], source: str, medians: dict[str, float] | None
                ) -> tuple[list[Event], list[dict[str, float]]]:
    from sluice.feature_job import field_value

    evs = [e for e in events if e.source == source]
    xs = []
    for e in evs:
        x = {}
        for name, path in RAW_FEATURES[source]:
            v = field_value(e.record, path)
            if v is None or not math.isfinite(float(v)):
                if medians is None:
                    continue
                v = medians[name]
            x[name] = float(v)
        xs.append(x)
    return evs, xs


def _raw_medians(xs: Sequence[dict[str, float]], source: str) -> dict[str, float]:
    out = {}
    for name, _ in RAW_FEATURES[source]:
        vals = [x[name] for x in xs if name in x]
        out[name] = float(np.median(vals)) if vals else 0.0
    return out


@contextmanager
def _noop_stage(name: str, total: int) -> Iterator[Callable[[], None]]:
    yield lambda: None


Stage = Callable[[str, int], Any]  # (description, total steps) -> context manager yielding tick()


def run_eval(cfg: SluiceConfig, p: EvalParams, out_dir: Path, *, stage: Stage | None = None
             ) -> dict[str, Any]:
    """The whole evaluation; writes ``out_dir/results.json`` (and the models it trains under
    ``out_dir/models``) and returns the results."""
    from sluice.model import Registry, TrainParams, to_dataset, train

    stage = stage or _noop_stage
    spec = cfg.feature_spec()
    if spec is None:
        raise ValueError("no feature spec: set features.spec in the config (docs/features.md)")
    windows = list(p.windows) if p.windows else [w.name for w in spec.windows if w.kind in ("tumble", "hop")]
    span = int(p.hours * 3_600_000)
    t0 = time.monotonic()
    with stage("generating the streams", 2) as tick:
        base = make_stream(cfg, p, seed=p.baseline_seed, anomalies=False, start_ms=p.start_ms)
        tick()
        test = make_stream(cfg, p, seed=p.seed, anomalies=True, start_ms=p.start_ms + span)
        tick()
    n_pass = len(windows)
    with stage("window features (Rust accumulators)", (len(base.events) + len(test.events)) * n_pass) as tick:
        every = 1000

        def on_event(n: int) -> None:
            if n % every == 0:
                for _ in range(every):
                    tick()

        base.vectors = compute_vectors(base.events, spec, windows, on_event)
        test.vectors = compute_vectors(test.events, spec, windows, on_event)
    registry = Registry(out_dir / "models")
    alerts: dict[str, list[Unit]] = {d: [] for d in DETECTORS if d != RIVER_RAW or p.raw}
    models: dict[str, Any] = {}
    scores_by_window: dict[str, dict[str, list[float]]] = {}
    for w in windows:
        names = spec.window(w).feature_names()
        brows = [v for v in base.vectors if v["window"] == w]
        trows = [v for v in test.vectors if v["window"] == w]
        with stage(f"{SLUICE}: train + Rust scoring ({w})", 2) as tick:
            mv = train(brows, spec, w, registry, f"eval-{w}",
                       TrainParams(n_estimators=p.n_estimators, contamination=p.contamination,
                                   seed=p.model_seed))
            tick()
            meta = mv.metadata
            native = mv.native()
            threshold = float(meta["threshold"])
            X = to_dataset(trows, names, window=w).X
            scores = native.score_many(X)
            tick()
        alerts[SLUICE] += _units(trows, [s < threshold for s in scores])
        adaptive = AdaptiveThreshold(threshold, alpha=p.adaptive_alpha, k=p.adaptive_k,
                                     warmup=p.adaptive_warmup)
        alerts[SLUICE_ADAPTIVE] += _units(trows, [adaptive.observe(v["device_id"], s)
                                                  for v, s in zip(trows, scores, strict=True)])
        medians = np.asarray(meta["impute"]["values"], dtype=np.float64)
        from sluice.model import impute

        def points(rows: list[dict[str, Any]], names: list[str] = names,
                   medians: np.ndarray = medians) -> list[dict[str, float]]:
            Xi = impute(to_dataset(rows, names).X, medians)
            return [dict(zip(names, map(float, r), strict=True)) for r in Xi]

        with stage(f"{RIVER}: learn baseline, score online ({w})", len(brows) + len(trows)) as tick:
            win = hst_window(p, len(brows))
            hst = _hst(p, win)
            hst_threshold = _hst_learn_baseline(hst, points(brows), win, p, tick)
            hst_scores = _hst_score_stream(hst, points(trows), tick)
        alerts[RIVER] += _units(trows, [s > hst_threshold for s in hst_scores])
        models[w] = {"name": mv.name, "version": mv.version, "path": str(mv.path),
                     "threshold": threshold, "training_rows": meta["training"]["rows"],
                     "features": names, "hst_threshold": hst_threshold, "hst_window": win,
                     "baseline_vectors": len(brows), "labelled_vectors": len(trows)}
        scores_by_window[w] = {"sluice": list(map(float, scores)), "river": hst_scores}
    if p.raw:
        import bisect

        raw_alerts: dict[tuple[str, str], list[int]] = defaultdict(list)  # (device, source) -> times
        for source in RAW_FEATURES:
            _, bx = _raw_points(base.events, source, None)
            medians_raw = _raw_medians(bx, source)
            _, bxs = _raw_points(base.events, source, medians_raw)
            tevs, txs = _raw_points(test.events, source, medians_raw)
            with stage(f"{RIVER_RAW}: learn baseline, score online ({source})", len(bxs) + len(txs)) as tick:
                win = hst_window(p, len(bxs))
                hst = _hst(p, win)
                thr = _hst_learn_baseline(hst, bxs, win, p, tick)
                raw_scores = _hst_score_stream(hst, txs, tick)
            for e, s in zip(tevs, raw_scores, strict=True):
                if s > thr:
                    raw_alerts[(e.device_id, source)].append(e.ts)
            models[f"raw:{source}"] = {"hst_threshold": thr, "hst_window": win, "baseline_events": len(bxs),
                                       "labelled_events": len(txs)}
        for ts_list in raw_alerts.values():
            ts_list.sort()
        raw_units = []
        for v in test.vectors:
            # A window alerts at its first alerted event of a source it reads.
            hits = []
            for source in spec.window(v["window"]).source:
                ts_list = raw_alerts.get((v["device_id"], source), [])
                i = bisect.bisect_left(ts_list, v["window_start"])
                if i < len(ts_list) and ts_list[i] < v["window_end"]:
                    hits.append(ts_list[i])
            raw_units.append(Unit(v["device_id"], v["window"], v["window_start"], v["window_end"],
                                  min(hits) if hits else None))
        alerts[RIVER_RAW] = raw_units
    metrics = {d: evaluate(units, test.labels, p.hours) for d, units in alerts.items()}
    per_window = {d: {w: evaluate([u for u in units if u.window == w], test.labels, p.hours)
                      for w in windows} for d, units in alerts.items()}
    for d in per_window:
        for w in per_window[d]:
            per_window[d][w].pop("per_kind")
    results = {
        "params": {**asdict(p), "windows": windows},
        "feature_spec_version": spec.spec_version(),
        "streams": {
            "baseline": {"seed": p.baseline_seed, "events": len(base.events), "vectors": len(base.vectors),
                         "start_ms": p.start_ms, "end_ms": p.start_ms + span},
            "labelled": {"seed": p.seed, "events": len(test.events), "vectors": len(test.vectors),
                         "start_ms": p.start_ms + span, "end_ms": p.start_ms + 2 * span,
                         "anomalies": len(test.labels),
                         "by_kind": {k: sum(a.kind == k for a in test.labels) for k in ANOMALY_KINDS}},
        },
        "labels": [a.as_json() for a in test.labels],
        "models": models,
        "detectors": metrics,
        "per_window": per_window,
        "seconds": round(time.monotonic() - t0, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "results.md").write_text(markdown_table(results))
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """The detector table as Markdown (docs/evaluation.md; ``results.md``)."""
    det = results["detectors"]
    kinds = [k for k in ANOMALY_KINDS if any(k in m["per_kind"] for m in det.values())]

    def minutes(s: float | None) -> str:
        return "—" if s is None else f"{s / 60:.1f} min"

    head = ["detector", "precision", "recall", "F1", *[f"{k} detected" for k in kinds],
            "TTD median", "TTD p90", "alerts", "false alerts / device-h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in det.items():
        per = [m["per_kind"].get(k) for k in kinds]
        row = [f"`{name}`", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
               *["—" if k is None else f"{k['detected']}/{k['anomalies']}" for k in per],
               minutes(m["ttd_median_s"]), minutes(m["ttd_p90_s"]), str(m["alerts"]),
               f"{m.get('false_alerts_per_device_hour', 0.0):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# --- chart -------------------------------------------------------------------------------------
def write_chart(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: precision / recall / F1 and recall per kind for each detector, and the
    time to detect (median, p90) in minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = results["detectors"]
    names = list(det)
    kinds = [k for k in ANOMALY_KINDS if any(k in det[d]["per_kind"] for d in names)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    groups = ["precision", "recall", "F1", *[f"recall\n{k}" for k in kinds]]
    width = 0.8 / len(names)
    for i, d in enumerate(names):
        m = det[d]
        vals = [m["precision"], m["recall"], m["f1"], *[m["per_kind"].get(k, {}).get("recall", 0.0)
                                                        for k in kinds]]
        ax1.bar(np.arange(len(groups)) + i * width, vals, width, label=d)
    ax1.set_xticks(np.arange(len(groups)) + width * (len(names) - 1) / 2, groups)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("window-level P/R/F1; per-kind: share of anomalies detected")
    ax1.legend(fontsize=8)
    ax1.set_title("detection quality on the labelled stream")
    for i, d in enumerate(names):
        m = det[d]
        vals = [(m[k] or 0.0) / 60 for k in ("ttd_median_s", "ttd_p90_s")]
        ax2.bar(np.arange(2) + i * width, vals, width, label=d)
    ax2.set_xticks(np.arange(2) + width * (len(names) - 1) / 2, ["median", "p90"])
    ax2.set_ylabel("minutes of event time")
    ax2.set_title("time to detect")
    p = results["params"]
    fig.suptitle(f"sluice eval: {p['devices']} devices, {p['records']} readings / {p['hours']} h "
                 f"per stream, seeds {p['baseline_seed']} (baseline) / {p['seed']} (labelled), "
                 f"anomaly seed {p['anomaly_seed']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "AdaptiveThreshold", "DETECTORS", "EvalParams", "RIVER", "RIVER_RAW", "SLUICE", "SLUICE_ADAPTIVE",
    "Unit", "evaluate", "make_stream", "markdown_table", "overlaps", "run_eval", "write_chart",
]
