"""Anomaly models and the on-disk model registry (docs/models.md).

``train`` fits scikit-learn's :class:`~sklearn.ensemble.IsolationForest` on FeatureVectors of
one window of the feature spec and publishes a new version into the registry::

    models/<name>/<version>/model.json      the export the Rust scorer loads
                           /metadata.json   what, from what, how good (see METADATA_FIELDS)
                           /sklearn.joblib  the fitted estimator (for the differential test)

Training data is FeatureVector records (schemas/features-value/v1.avsc): from a JSON-lines
file (one record per line, ``window_start`` in epoch ms or ISO-8601; an optional ``label``
0/1 marks known anomalies) or from the ``features`` topic (read_committed, Avro).

The feature columns are the spec's output names of the chosen window, in the spec's order.
A feature missing from a record (or NaN) is imputed with its training median; the medians
are part of the export, so the Rust scorer imputes the same way. The score is sklearn's
``score_samples`` (lower = more abnormal); a record is an anomaly when its score is below
the threshold, which is sklearn's ``offset_`` for the chosen contamination.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

    from sluice.config import SluiceConfig
    from sluice.features import FeatureSpec

EXPORT_FORMAT = "sluice-isolation-forest"
EXPORT_FORMAT_VERSION = 1
SCORE_KIND = "sklearn.IsolationForest.score_samples"
REFERENCE_BINS = 10
REFERENCE_QUANTILES = tuple(i / 100 for i in range(101))
SCORE_QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class ModelError(ValueError):
    """Training data or the registry is not usable (the message says why)."""


# --- training data --------------------------------------------------------------------------
def _epoch_ms(v: Any) -> int:
    if isinstance(v, datetime):
        return int(v.timestamp() * 1000)
    if isinstance(v, str):
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    return int(v)


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """FeatureVector records from a JSON-lines file (blank lines skipped)."""
    rows = []
    p = Path(path)
    with p.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{p}:{n}: not JSON: {exc}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("features"), dict):
                raise ModelError(f"{p}:{n}: not a FeatureVector (no 'features' map)")
            rows.append(rec)
    return rows


def read_topic(cfg: SluiceConfig, *, idle_timeout: float = 5.0, max_wait: float = 300.0
               ) -> list[dict[str, Any]]:
    """FeatureVector records from the features topic (read_committed, Avro via the registry)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from sluice.kafka_util import read_committed

    topic = cfg.topics.features
    got = read_committed(cfg, [topic], idle_timeout=idle_timeout, max_wait=max_wait)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        return [de(r.value, None) for r in got[topic] if r.value is not None]


@dataclass(frozen=True)
class Dataset:
    """The rows of one window as a matrix: columns = ``feature_names`` (NaN = missing)."""

    feature_names: tuple[str, ...]
    X: np.ndarray
    window_start: np.ndarray  # epoch ms, int64
    labels: np.ndarray | None  # 0/1 when every row has a label


def to_dataset(rows: Iterable[dict[str, Any]], feature_names: Sequence[str], *,
               window: str | None = None, spec_version: str | None = None) -> Dataset:
    """Rows of ``window`` (all rows when None) as a matrix in ``feature_names`` order.

    A row whose ``feature_spec_version`` differs from ``spec_version`` is an error: its
    features were computed by another spec. Features a row lacks are NaN; features the list
    does not name are ignored."""
    names = tuple(feature_names)
    if not names:
        raise ModelError("no feature names")
    X, starts, labels = [], [], []
    for rec in rows:
        if window is not None and rec.get("window") != window:
            continue
        if spec_version is not None and rec.get("feature_spec_version") != spec_version:
            raise ModelError(
                f"a record of device {rec.get('device_id')!r} has feature_spec_version "
                f"{rec.get('feature_spec_version')!r}, the spec's is {spec_version!r}")
        feats = rec["features"]
        X.append([float(v) if (v := feats.get(n)) is not None else math.nan for n in names])
        starts.append(_epoch_ms(rec["window_start"]))
        labels.append(rec.get("label"))
    if not X:
        raise ModelError(f"no records{f' of window {window!r}' if window else ''} to train on")
    lab = None if any(v is None for v in labels) else np.asarray(labels, dtype=np.int64)
    return Dataset(names, np.asarray(X, dtype=np.float64).reshape(len(X), len(names)),
                   np.asarray(starts, dtype=np.int64), lab)


# --- reference distributions, metrics ------------------------------------------------------
def reference_distribution(values: np.ndarray, bins: int = REFERENCE_BINS) -> dict[str, Any]:
    """Per feature, for PSI and KS drift checks (sluice/drift.py): interior quantile bin
    edges and the share of training values per bin (bins are (-inf, e0], (e0, e1], ...,
    (e_k, inf)), the 0..100 percentiles, the exact training CDF at the distinct percentile
    values (``cdf``: {x, p}, p = share of values <= x; the KS grid), and the missing share."""
    finite = values[~np.isnan(values)]
    out: dict[str, Any] = {"count": int(finite.size),
                           "missing_rate": float(1 - finite.size / values.size) if values.size else 1.0}
    if finite.size == 0:
        return {**out, "edges": [], "proportions": [], "quantiles": None}
    edges = np.unique(np.quantile(finite, [i / bins for i in range(1, bins)]))
    idx = np.searchsorted(edges, finite, side="left")  # x <= e_i -> bin i
    counts = np.bincount(idx, minlength=edges.size + 1)
    grid = np.unique(np.quantile(finite, REFERENCE_QUANTILES))
    below = np.searchsorted(np.sort(finite), grid, side="right")  # values <= x
    return {**out,
            "mean": float(finite.mean()), "std": float(finite.std()),
            "edges": edges.tolist(), "proportions": (counts / finite.size).tolist(),
            "quantiles": {"q": list(REFERENCE_QUANTILES),
                          "values": np.quantile(finite, REFERENCE_QUANTILES).tolist()},
            "cdf": {"x": grid.tolist(), "p": (below / finite.size).tolist()}}


def _metrics(scores: np.ndarray, threshold: float, labels: np.ndarray | None) -> dict[str, float]:
    flagged = scores < threshold
    m: dict[str, float] = {"rows": float(scores.size), "anomaly_rate": float(flagged.mean()),
                           "score_mean": float(scores.mean())}
    for q, v in zip(SCORE_QUANTILES, np.quantile(scores, SCORE_QUANTILES), strict=True):
        m[f"score_p{q * 100:g}"] = float(v)
    if labels is not None:
        pos = labels == 1
        tp = float(np.sum(flagged & pos))
        m["labelled_anomalies"] = float(pos.sum())
        m["precision"] = tp / float(flagged.sum()) if flagged.any() else 0.0
        m["recall"] = tp / float(pos.sum()) if pos.any() else 0.0
        pr = m["precision"] + m["recall"]
        m["f1"] = 2 * m["precision"] * m["recall"] / pr if pr else 0.0
        if 0 < pos.sum() < pos.size:
            from sklearn.metrics import roc_auc_score

            m["roc_auc"] = float(roc_auc_score(pos, -scores))
    return m


# --- export --------------------------------------------------------------------------------
def export_isolation_forest(model: IsolationForest, impute: Sequence[float],
                            feature_names: Sequence[str] | None = None,
                            threshold: float | None = None) -> dict[str, Any]:
    """The JSON the Rust ``IsolationForestModel`` loads (docs/models.md, "Export format").

    Per estimator: the columns it reads (``estimators_features_`` when sklearn subsamples
    features, i.e. ``max_features < n_features``; else the identity, as sklearn then feeds
    the full row), and its tree arrays as sklearn stores them."""
    n = int(model.n_features_in_)
    subsample = model._max_features != n  # what IsolationForest._compute_chunked_score_samples checks
    estimators = []
    for est, feats in zip(model.estimators_, model.estimators_features_, strict=True):
        t = est.tree_
        estimators.append({
            "features": [int(f) for f in feats] if subsample else list(range(n)),
            "children_left": t.children_left.tolist(),
            "children_right": t.children_right.tolist(),
            "feature": t.feature.tolist(),
            "threshold": t.threshold.tolist(),
            "n_node_samples": t.n_node_samples.tolist(),
            "missing_go_to_left": t.missing_go_to_left.astype(int).tolist(),
        })
    out: dict[str, Any] = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "n_features": n,
        "impute": [float(v) for v in impute], "max_samples": int(model.max_samples_),
        "offset": float(model.offset_), "estimators": estimators,
    }
    if feature_names is not None:
        out["feature_names"] = list(feature_names)
    if threshold is not None:
        out["threshold"] = float(threshold)
    return out


def impute(X: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """NaN → the column's training median (what the Rust scorer does too)."""
    return np.where(np.isnan(X), medians, X)


# --- registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.path / "metadata.json").read_text())

    def export_text(self) -> str:
        return (self.path / "model.json").read_text()

    def native(self) -> Any:
        """The Rust scorer of this version (``sluice.native.IsolationForestModel``); refuses
        an export whose digest differs from the one recorded in the metadata."""
        from sluice.native import IsolationForestModel

        text = self.export_text()
        want = self.metadata["export_sha256"]
        if hashlib.sha256(text.encode()).hexdigest() != want:
            raise ModelError(f"{self.path / 'model.json'}: sha256 differs from metadata.json's")
        return IsolationForestModel(text)

    def sklearn(self) -> IsolationForest:
        import joblib

        return joblib.load(self.path / "sklearn.joblib")


class Registry:
    """``<root>/<name>/<version>/`` with versions 1, 2, 3, … per name. A version directory
    appears complete or not at all (written aside, then renamed into place)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[ModelVersion]:
        d = self.root / name
        if not d.is_dir():
            return []
        vs = sorted(int(p.name) for p in d.iterdir()
                    if p.is_dir() and p.name.isdigit() and (p / "metadata.json").is_file())
        return [ModelVersion(name, v, d / str(v)) for v in vs]

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        vs = self.versions(name)
        if not vs:
            raise ModelError(f"no model {name!r} in {self.root}")
        if version is None:
            return vs[-1]
        for v in vs:
            if v.version == version:
                return v
        raise ModelError(f"model {name!r} has no version {version} (has {[v.version for v in vs]})")

    def publish(self, name: str, files: dict[str, bytes],
                metadata: dict[str, Any]) -> ModelVersion:
        """Write a new version (the next integer after every existing one, also incomplete
        ones, so a number is never reused); ``metadata`` gains ``version``."""
        if not _NAME.match(name):
            raise ModelError(f"model name {name!r} must match {_NAME.pattern}")
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        while True:
            taken = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
            version = max(taken, default=0) + 1
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d))
            try:
                for fname, data in files.items():
                    (tmp / fname).write_bytes(data)
                meta = {**metadata, "version": version}
                (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                try:
                    os.rename(tmp, d / str(version))  # fails if another trainer took it
                except OSError:
                    continue
                return ModelVersion(name, version, d / str(version))
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)


# --- training ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainParams:
    n_estimators: int = 100
    max_samples: int | str = "auto"
    max_features: float = 1.0
    contamination: float = 0.01
    holdout: float = 0.2
    seed: int = 0


def split(ds: Dataset, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, holdout rows): the newest ``holdout`` share by window_start holds out."""
    if not 0 <= holdout < 1:
        raise ModelError(f"holdout must be in [0, 1), got {holdout}")
    order = np.argsort(ds.window_start, kind="stable")
    n_hold = int(len(order) * holdout)
    return order[: len(order) - n_hold], order[len(order) - n_hold:]


def fit(ds: Dataset, params: TrainParams = TrainParams()
        ) -> tuple[IsolationForest, np.ndarray, dict[str, Any]]:
    """Fit on the older part of ``ds`` (by window_start), evaluate on the newest ``holdout``
    share. Returns the model, the imputation medians and the metadata it implies."""
    import sklearn
    from sklearn.ensemble import IsolationForest

    train_idx, hold_idx = split(ds, params.holdout)
    n_hold = len(hold_idx)
    if len(train_idx) < 2:
        raise ModelError(f"{len(train_idx)} training rows; need at least 2")
    Xtr = ds.X[train_idx]
    all_missing = [n for n, col in zip(ds.feature_names, Xtr.T, strict=True) if np.isnan(col).all()]
    # A feature never seen in training is imputed with 0.0 (and listed in the metadata).
    medians = np.array([float(np.median(c[~np.isnan(c)])) if (~np.isnan(c)).any() else 0.0
                        for c in Xtr.T])
    model = IsolationForest(n_estimators=params.n_estimators, max_samples=params.max_samples,
                            max_features=params.max_features, contamination=params.contamination,
                            random_state=params.seed)
    model.fit(impute(Xtr, medians))
    threshold = float(model.offset_)
    train_scores = model.score_samples(impute(Xtr, medians))
    meta: dict[str, Any] = {
        "library": "scikit-learn", "library_version": sklearn.__version__,
        "algorithm": "IsolationForest", "score": SCORE_KIND,
        "score_semantics": "lower = more abnormal; anomaly when score < threshold",
        "params": {"n_estimators": params.n_estimators, "max_samples": params.max_samples,
                   "max_samples_": int(model.max_samples_), "max_features": params.max_features,
                   "contamination": params.contamination, "random_state": params.seed},
        "threshold": threshold,
        "feature_names": list(ds.feature_names),
        "impute": {"strategy": "training median", "values": medians.tolist(),
                   "all_missing_features": all_missing},
        "training": {
            "rows": int(len(train_idx)), "holdout_rows": int(n_hold),
            "window_start_min": int(ds.window_start[train_idx].min()),
            "window_start_max": int(ds.window_start[train_idx].max()),
            "split": "by window_start: the newest holdout share is the holdout",
            "metrics": _metrics(train_scores, threshold,
                                None if ds.labels is None else ds.labels[train_idx]),
        },
        "reference": {n: reference_distribution(col)
                      for n, col in zip(ds.feature_names, Xtr.T, strict=True)},
        "holdout_metrics": (
            _metrics(model.score_samples(impute(ds.X[hold_idx], medians)), threshold,
                     None if ds.labels is None else ds.labels[hold_idx])
            if n_hold else {}),
    }
    return model, medians, meta


def train(rows: Iterable[dict[str, Any]], spec: FeatureSpec, window: str, registry: Registry,
          name: str | None = None, params: TrainParams = TrainParams()) -> ModelVersion:
    """Train on the FeatureVectors of ``window`` and publish the next version of ``name``
    (default: ``iforest-<window>``)."""
    try:
        feature_names = spec.window(window).feature_names()
    except KeyError as exc:
        raise ModelError(str(exc.args[0])) from None
    spec_version = spec.spec_version()
    ds = to_dataset(rows, feature_names, window=window, spec_version=spec_version)
    model, medians, meta = fit(ds, params)
    name = name or f"iforest-{window}"
    files, meta = package(model, medians, meta, name=name, window=window, spec_version=spec_version)
    return registry.publish(name, files, meta)


def package(model: IsolationForest, medians: np.ndarray, meta: dict[str, Any], *, name: str,
            window: str, spec_version: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files of a registry version (export, joblib) and its metadata, from ``fit``'s
    results: what :meth:`Registry.publish` takes."""
    import joblib

    export = json.dumps(export_isolation_forest(model, medians, meta["feature_names"],
                                                meta["threshold"]), separators=(",", ":"))
    meta = {**meta,
            "name": name, "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "window": window, "feature_spec_version": spec_version,
            "export_format": EXPORT_FORMAT, "export_format_version": EXPORT_FORMAT_VERSION,
            "export_sha256": hashlib.sha256(export.encode()).hexdigest()}
    return {"model.json": export.encode(), "sklearn.joblib": _joblib_bytes(joblib, model)}, meta


def _joblib_bytes(joblib: Any, model: Any) -> bytes:
    import io

    bio = io.BytesIO()
    joblib.dump(model, bio)
    return bio.getvalue()


__all__ = [
    "Dataset", "EXPORT_FORMAT", "EXPORT_FORMAT_VERSION", "ModelError", "ModelVersion", "Registry",
    "SCORE_KIND", "TrainParams", "export_isolation_forest", "fit", "impute", "package", "read_jsonl",
    "read_topic", "reference_distribution", "split", "to_dataset", "train",
]
