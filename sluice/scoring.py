"""Scoring FeatureVectors with a versioned model (docs/scoring.md) — the parts that do not
need Flink: loading an announced model version, the per-device adaptive threshold, and
one vector's verdict. The Flink operators (sluice/scoring_job.py) call these; so do the
offline evaluation and the tests, so the stream and its oracle share one definition.

A model version is announced by a ModelUpdate record (schemas/model-updates-value):
``artifact_uri`` names the version's ``model.json`` (a ``file://`` URI, an absolute path,
or a path relative to the model registry root ``models.dir``) and ``artifact_sha256``
its digest. The scorer refuses an artifact whose digest differs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


class ModelLoadError(ValueError):
    """An announced model version cannot be used (missing, digest mismatch, bad export)."""


def model_ref(name: str, version: int | str) -> str:
    """How scores and alerts name the version that produced them: ``<name>/v<version>``."""
    return f"{name}/v{version}"


def version_number(version: str | int) -> int:
    """``3``, ``"3"`` or ``"v3"`` → 3."""
    s = str(version).strip()
    s = s[1:] if s[:1] in ("v", "V") else s
    try:
        return int(s)
    except ValueError:
        raise ModelLoadError(f"model version {version!r} is not a number") from None


def artifact_path(uri: str, registry_root: Path) -> Path:
    """The model.json an ``artifact_uri`` names (a directory means its model.json)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme in ("", None):
        path = Path(uri)
        if not path.is_absolute():
            path = registry_root / path
    else:
        raise ModelLoadError(f"artifact_uri {uri!r}: only file:// URIs and paths are supported")
    return path / "model.json" if path.is_dir() else path


@dataclass(frozen=True)
class LoadedModel:
    """One announced model version, ready to score."""

    name: str
    version: int
    window: str
    feature_spec_version: str
    feature_names: tuple[str, ...]
    threshold: float
    scorer: Any  # sluice.native.IsolationForestModel

    @property
    def ref(self) -> str:
        return model_ref(self.name, self.version)

    def vector(self, features: Mapping[str, float]) -> list[float]:
        """The model's input row: its features in its order; a missing one is NaN, which
        the scorer imputes with the training median."""
        return [float(features.get(n, math.nan)) for n in self.feature_names]

    def score(self, features: Mapping[str, float]) -> float:
        return float(self.scorer.score(self.vector(features)))


def load_announced(update: Mapping[str, Any], registry_root: Path) -> LoadedModel:
    """The model a ModelUpdate announces, verified against its digest."""
    from sluice.model import ModelError as RegistryError
    from sluice.model_updates import load_artifact
    from sluice.native import IsolationForestModel, ModelError

    try:
        text = load_artifact(update, registry_root)
    except RegistryError as exc:
        raise ModelLoadError(f"{update['model_name']} v{update['version']}: {exc}") from None
    path = artifact_path(str(update["artifact_uri"]), registry_root)
    meta_path = path.parent / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{meta_path}: {exc}") from None
    try:
        scorer = IsolationForestModel(text)
    except ModelError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    names = scorer.feature_names or meta.get("feature_names")
    threshold = scorer.threshold if scorer.threshold is not None else meta.get("threshold")
    if not names or threshold is None or not meta.get("window"):
        raise ModelLoadError(f"{path}: the export names no features, threshold or window")
    return LoadedModel(
        name=str(update["model_name"]), version=version_number(update["version"]),
        window=str(meta["window"]),
        feature_spec_version=str(update.get("feature_spec_version")
                                 or meta.get("feature_spec_version", "")),
        feature_names=tuple(names), threshold=float(threshold), scorer=scorer)


# --- the per-device adaptive threshold --------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """A device's recent normal scores under one model version: an exponentially weighted
    mean and variance (West's incremental form) of its non-alert scores."""

    model_ref: str
    n: int = 0
    mean: float = 0.0
    var: float = 0.0

    def to_tuple(self) -> tuple[str, int, float, float]:
        return self.model_ref, self.n, self.mean, self.var

    @classmethod
    def from_tuple(cls, t: Sequence[Any] | None) -> Baseline | None:
        return None if t is None else cls(str(t[0]), int(t[1]), float(t[2]), float(t[3]))


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float
    baseline_mean: float | None
    baseline_std: float | None
    is_alert: bool
    severity: str | None  # WARNING | CRITICAL | None
    baseline: Baseline  # the state after this score


@dataclass(frozen=True)
class AdaptivePolicy:
    alpha: float = 0.1
    k: float = 3.0
    warmup: int = 5
    critical_margin: float = 0.05

    @classmethod
    def from_config(cls, scoring: Any) -> AdaptivePolicy:
        return cls(scoring.alpha, scoring.k, scoring.warmup, scoring.critical_margin)

    def judge(self, score: float, model: LoadedModel, baseline: Baseline | None) -> Verdict:
        """The verdict on one score and the device's next baseline.

        Until ``warmup`` normal scores are in (and after every model switch: scores of
        another version are on another scale) the threshold is the model's own. Then it is
        min(model threshold, mean - k * std): a device whose normal scores are low and
        noisy is not paged for its normal, and none is held stricter than the model.
        An alert's score does not move the baseline (anomalies must not become normal)."""
        if baseline is None or baseline.model_ref != model.ref:
            baseline = Baseline(model.ref)
        mean = std = None
        threshold = model.threshold
        if baseline.n >= max(self.warmup, 1):
            mean, std = baseline.mean, math.sqrt(max(baseline.var, 0.0))
            threshold = min(model.threshold, mean - self.k * std)
        is_alert = score < threshold
        severity = None
        if is_alert:
            severity = "CRITICAL" if score < threshold - self.critical_margin else "WARNING"
            nxt = baseline
        elif baseline.n == 0:
            nxt = Baseline(model.ref, 1, score, 0.0)
        else:
            d = score - baseline.mean
            nxt = Baseline(model.ref, baseline.n + 1, baseline.mean + self.alpha * d,
                           (1 - self.alpha) * (baseline.var + self.alpha * d * d))
        return Verdict(score, threshold, mean, std, is_alert, severity, nxt)


def score_id(device_id: str, window: str, window_start: int, model_name: str) -> str:
    """One per vector and model: a later firing of the same window repeats it."""
    return f"{device_id}@{window}@{window_start}#{model_name}"


def alert_id(device_id: str, window: str, window_start: int, model_name: str) -> str:
    """Deterministic, so a replayed or re-fired window raises the same alert id (the
    action service's idempotency key)."""
    return f"{model_name}:{device_id}@{window}@{window_start}"


__all__ = [
    "AdaptivePolicy", "Baseline", "LoadedModel", "ModelLoadError", "Verdict", "alert_id",
    "artifact_path", "load_announced", "model_ref", "score_id", "version_number",
]
