"""Drift detection against a model's training reference, and the retrain policy
(docs/drift.md).

:class:`DriftDetector` watches the FeatureVectors one model scores. Per feature it keeps
**binned counts per pane** (one pane per ``slide_ms`` of event time), never raw values, and
when the watermark passes the end of a sliding window (``window_ms`` long, every
``slide_ms``) it sums the window's panes and computes, per feature with at least
``min_samples`` values in the window:

* **PSI** (population stability index) over the reference's decile bins
  (``meta["reference"][f]["edges"]`` / ``["proportions"]``)::

      PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

  ``a_i`` the live share, ``e_i`` the training share of bin i, both floored at
  :data:`PSI_EPSILON` (an empty bin would make the log infinite);
* a **KS statistic** ``max_j |F_live(x_j) - F_ref(x_j)|`` over a grid ``x_j`` of the
  reference's percentiles (``meta["reference"][f]["cdf"]``: the distinct 0..100th percentiles
  of the training values and the exact training share ``<= x_j``). The exact two-sample KS
  statistic takes the supremum over every x; evaluating it on the grid gives a lower bound
  that is at most the largest step of either CDF between two grid points below the exact
  value (:func:`ks_grid` returns that bound too). Old model versions without ``cdf`` use the
  stored percentiles themselves as the reference CDF (``F(x_j) = q_j``).

A window **drifted** for a feature when ``psi > psi_threshold`` or ``ks > ks_threshold``;
``consecutive_windows`` counts the windows in a row that drifted (a window with fewer than
``min_samples`` values of the feature is not evaluated and changes nothing). Each evaluated
(window, feature) yields one DriftEvent (schemas/drift-value/v1.avsc) as a dict.

:class:`RetrainPolicy` reads DriftEvents: when a window leaves ``k_windows`` (or more)
consecutive drifted windows on any feature, it emits one RetrainTrigger
(schemas/retrain-triggers-value/v1.avsc) per model, then stays quiet for ``cooldown_ms`` of
event time.

Both keep their state small and serialisable: ``snapshot()`` gives a JSON-able dict,
``snapshot_bytes()`` its UTF-8 JSON, and ``restore(...)`` rebuilds the object (for Flink
keyed/operator state).

Event time follows Flink: a watermark ``w`` says no event with timestamp ``<= w`` will come,
so the window ``[start, end)`` closes once ``w >= end - 1``. An event whose every window has
closed is dropped and counted (``late_dropped``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sluice.config import DriftConfig

#: Floor of live and reference bin shares in PSI (a share of 0 would make ln infinite).
PSI_EPSILON = 1e-4
STATE_FORMAT = 1


class DriftError(ValueError):
    """The model's reference or a saved state is not usable (the message says why)."""


# --- the statistics -----------------------------------------------------------------------
def psi(actual_counts: np.ndarray, expected: np.ndarray, eps: float = PSI_EPSILON) -> np.ndarray:
    """PSI per row: ``actual_counts`` (n × bins, counts) against ``expected`` (n × bins,
    shares summing to 1). Shares are floored at ``eps``. Rows with no counts give NaN."""
    a = np.atleast_2d(np.asarray(actual_counts, dtype=np.float64))
    e = np.atleast_2d(np.asarray(expected, dtype=np.float64))
    n = a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.maximum(a / n, eps)
    e = np.maximum(e, eps)
    out = np.sum((a - e) * np.log(a / e), axis=1)
    return np.where(n[:, 0] > 0, out, np.nan)


def ks_grid(live_counts: np.ndarray, ref_cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KS statistic on a grid, per row, and an upper bound of the exact statistic.

    ``live_counts`` (n × (m+1)): live values per grid bin ``(-inf, x_0], (x_0, x_1], …,
    (x_{m-1}, inf)``; ``ref_cdf`` (n × m): the reference share ``<= x_j``. Returns
    ``(D_grid, D_upper)``: ``D_grid = max_j |F_live(x_j) - F_ref(x_j)|`` and
    ``D_upper = D_grid + max`` step of either CDF between neighbouring grid points (the
    tails included), so ``D_grid <= D_exact <= D_upper``."""
    c = np.atleast_2d(np.asarray(live_counts, dtype=np.float64))
    r = np.atleast_2d(np.asarray(ref_cdf, dtype=np.float64))
    n = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        live = np.cumsum(c, axis=1)[:, :-1] / n
    d = np.max(np.abs(live - r), axis=1)
    zeros, ones = np.zeros((r.shape[0], 1)), np.ones((r.shape[0], 1))
    step_live = np.max(np.diff(np.hstack([zeros, live, ones]), axis=1), axis=1)
    step_ref = np.max(np.diff(np.hstack([zeros, r, ones]), axis=1), axis=1)
    ok = n[:, 0] > 0
    return np.where(ok, d, np.nan), np.where(ok, d + np.maximum(step_live, step_ref), np.nan)


# --- the reference --------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference as the detector uses it."""

    name: str
    psi_edges: np.ndarray  # interior bin edges; bins (-inf, e0], (e0, e1], …, (e_k, inf)
    psi_expected: np.ndarray  # training share per bin (len(psi_edges) + 1)
    ks_x: np.ndarray  # the KS grid
    ks_cdf: np.ndarray  # training share <= ks_x[j]


def feature_reference(name: str, ref: Mapping[str, Any]) -> FeatureReference | None:
    """The detector's view of ``meta["reference"][name]`` (sluice.model.reference_distribution);
    None for a feature without training values (nothing to compare with)."""
    edges, props = ref.get("edges") or [], ref.get("proportions") or []
    if not props:
        return None
    if len(props) != len(edges) + 1:
        raise DriftError(f"reference of {name!r}: {len(props)} proportions for {len(edges)} edges")
    cdf = ref.get("cdf")
    if cdf:
        x, p = np.asarray(cdf["x"], dtype=np.float64), np.asarray(cdf["p"], dtype=np.float64)
    elif ref.get("quantiles"):
        # Old metadata: the percentiles themselves; for tied values the highest q.
        qv = np.asarray(ref["quantiles"]["values"], dtype=np.float64)
        qq = np.asarray(ref["quantiles"]["q"], dtype=np.float64)
        x, last = np.unique(qv[::-1], return_index=True)
        p = qq[::-1][last]
    else:
        raise DriftError(f"reference of {name!r} has neither 'cdf' nor 'quantiles' (needed for KS)")
    if x.size == 0 or x.size != p.size or np.any(np.diff(x) <= 0):
        raise DriftError(f"reference of {name!r}: the KS grid must be strictly increasing")
    return FeatureReference(name, np.asarray(edges, dtype=np.float64),
                            np.asarray(props, dtype=np.float64), x, p)


def _padded(rows: Sequence[np.ndarray], fill: float) -> np.ndarray:
    width = max(r.size for r in rows)
    out = np.full((len(rows), width), fill, dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


# --- the detector ---------------------------------------------------------------------------
def _now_ms() -> int:
    return int(time.time() * 1000)


class DriftDetector:
    """Sliding-window PSI and KS of one model version's features (see the module doc).

    ``model_meta``: the model's metadata.json (``ModelVersion.metadata``), which names the
    model (``name``, ``version``), the window it reads (``window``) and its ``reference``.
    ``clock``: epoch ms for ``detected_at`` (default: wall clock)."""

    def __init__(self, model_meta: Mapping[str, Any], cfg: DriftConfig,
                 clock: Callable[[], int] | None = None) -> None:
        try:
            self.model_name = str(model_meta["name"])
            self.model_version = str(model_meta["version"])
            reference = model_meta["reference"]
        except KeyError as exc:
            raise DriftError(f"model metadata lacks {exc.args[0]!r}") from None
        self.window: str | None = model_meta.get("window")
        self.cfg = cfg
        self.clock = clock or _now_ms
        refs = [r for n in model_meta.get("feature_names") or sorted(reference)
                if n in reference and (r := feature_reference(n, reference[n])) is not None]
        if not refs:
            raise DriftError(f"model {self.model_name} v{self.model_version}: no feature has a "
                             "reference distribution")
        self.refs = refs
        self.features: tuple[str, ...] = tuple(r.name for r in refs)
        self._psi_edges = _padded([r.psi_edges for r in refs], math.inf)
        self._psi_expected = _padded([r.psi_expected for r in refs], 0.0)
        self._ks_x = _padded([r.ks_x for r in refs], math.inf)
        self._ks_cdf = _padded([r.ks_cdf for r in refs], 1.0)
        self._rows = np.arange(len(refs))
        self.fingerprint = hashlib.sha256(json.dumps(
            [[r.name, r.psi_edges.tolist(), r.psi_expected.tolist(), r.ks_x.tolist(),
              r.ks_cdf.tolist()] for r in refs]).encode()).hexdigest()[:16]
        # State.
        self.panes: dict[int, dict[str, np.ndarray]] = {}
        self.consecutive = np.zeros(len(refs), dtype=np.int64)
        self.watermark: int | None = None
        self.closed_until: int | None = None  # every window with end <= this has closed
        self.late_dropped = 0
        self.other_window = 0

    # -- input ---------------------------------------------------------------------------
    def _matrix(self, vectors: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(values n × features, NaN = missing; a mask of the rows of this model's window)."""
        X = np.full((len(vectors), len(self.features)), np.nan)
        keep = np.ones(len(vectors), dtype=bool)
        for i, fv in enumerate(vectors):
            feats = fv.get("features")
            if isinstance(feats, Mapping):  # a whole FeatureVector record
                if self.window is not None and fv.get("window", self.window) != self.window:
                    keep[i] = False
                    continue
            else:
                feats = fv
            for j, name in enumerate(self.features):
                v = feats.get(name)
                if v is not None:
                    X[i, j] = float(v)
        return X, keep

    def add(self, feature_vector: Mapping[str, Any], event_time_ms: int,
            watermark_ms: int | None = None) -> list[dict[str, Any]]:
        """Count one FeatureVector (a whole record, or its ``features`` map) at
        ``event_time_ms``. With ``watermark_ms``, then :meth:`on_watermark` it and return the
        DriftEvents of the windows it closes; else return ``[]``."""
        return self.add_many([feature_vector], [event_time_ms], watermark_ms)

    def add_many(self, vectors: Sequence[Mapping[str, Any]], event_times_ms: Sequence[int],
                 watermark_ms: int | None = None) -> list[dict[str, Any]]:
        """:meth:`add` for a batch (binned in one numpy pass)."""
        if len(vectors) != len(event_times_ms):
            raise ValueError(f"{len(vectors)} vectors but {len(event_times_ms)} event times")
        if vectors:
            X, keep = self._matrix(vectors)
            self.other_window += int((~keep).sum())
            ts = np.asarray(event_times_ms, dtype=np.int64)
            panes = ts - ts % self.cfg.slide_ms
            if self.watermark is not None:
                late = panes + self.cfg.window_ms - 1 <= self.watermark
                self.late_dropped += int((late & keep).sum())
                keep &= ~late
            if keep.any():
                self._count(X[keep], panes[keep])
        return [] if watermark_ms is None else self.on_watermark(watermark_ms)

    def _count(self, X: np.ndarray, panes: np.ndarray) -> None:
        present = ~np.isnan(X)
        psi_idx = (self._psi_edges[None, :, :] < X[:, :, None]).sum(axis=2)
        ks_idx = (self._ks_x[None, :, :] < X[:, :, None]).sum(axis=2)
        nf = len(self.features)
        wp, wk = self._psi_edges.shape[1] + 1, self._ks_x.shape[1] + 1
        for p in (panes[:1] if panes.size == 1 else np.unique(panes)):
            pane = self.panes.get(int(p))
            if pane is None:
                pane = self.panes[int(p)] = {
                    "psi": np.zeros((nf, wp), dtype=np.int64),
                    "ks": np.zeros((nf, wk), dtype=np.int64),
                    "missing": np.zeros(nf, dtype=np.int64),
                }
            if panes.size == 1:  # one vector: each feature's bin once, plain fancy indexing
                ok = present[0]
                pane["psi"][self._rows[ok], psi_idx[0, ok]] += 1
                pane["ks"][self._rows[ok], ks_idx[0, ok]] += 1
                pane["missing"] += ~ok
                continue
            sel = panes == p
            ok = present[sel]
            rows = np.broadcast_to(self._rows, ok.shape)[ok]
            pane["psi"] += np.bincount(rows * wp + psi_idx[sel][ok], minlength=nf * wp).reshape(nf, wp)
            pane["ks"] += np.bincount(rows * wk + ks_idx[sel][ok], minlength=nf * wk).reshape(nf, wk)
            pane["missing"] += (~ok).sum(axis=0)

    # -- windows -------------------------------------------------------------------------
    def next_window_end(self) -> int | None:
        """The end of the earliest window with data that has not closed yet: a caller with
        event-time timers registers one at ``end - 1``. None without data."""
        ends = self._pending_ends(None)
        return ends[0] if ends else None

    def _pending_ends(self, watermark: int | None) -> list[int]:
        s, w = self.cfg.slide_ms, self.cfg.window_ms
        ends = {p + k * s for p in self.panes for k in range(1, w // s + 1)}
        return sorted(e for e in ends
                      if (self.closed_until is None or e > self.closed_until)
                      and (watermark is None or e - 1 <= watermark))

    def on_watermark(self, watermark_ms: int) -> list[dict[str, Any]]:
        """Close every window with ``end - 1 <= watermark_ms`` (oldest first) and return their
        DriftEvents; drop the panes no open window needs. A watermark that does not advance
        does nothing."""
        if self.watermark is not None and watermark_ms <= self.watermark:
            return []
        self.watermark = int(watermark_ms)
        s, w = self.cfg.slide_ms, self.cfg.window_ms
        events: list[dict[str, Any]] = []
        for end in self._pending_ends(self.watermark):
            events += self._evaluate(end - w, end)
        closed = (self.watermark + 1) - (self.watermark + 1) % s
        self.closed_until = closed if self.closed_until is None else max(self.closed_until, closed)
        for p in [p for p in self.panes if p + w - 1 <= self.watermark]:
            del self.panes[p]
        return events

    def window_counts(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(psi bin counts, KS grid bin counts, missing) summed over the panes in [start, end)."""
        nf = len(self.features)
        psi_c = np.zeros((nf, self._psi_edges.shape[1] + 1), dtype=np.int64)
        ks_c = np.zeros((nf, self._ks_x.shape[1] + 1), dtype=np.int64)
        missing = np.zeros(nf, dtype=np.int64)
        for p, pane in self.panes.items():
            if start <= p < end:
                psi_c += pane["psi"]
                ks_c += pane["ks"]
                missing += pane["missing"]
        return psi_c, ks_c, missing

    def _evaluate(self, start: int, end: int) -> list[dict[str, Any]]:
        psi_c, ks_c, _ = self.window_counts(start, end)
        n = psi_c.sum(axis=1)
        evaluated = n >= max(1, self.cfg.min_samples)
        if not evaluated.any():
            return []
        psi_v = psi(psi_c, self._psi_expected)
        ks_v, _ = ks_grid(ks_c, self._ks_cdf)
        drifted = (psi_v > self.cfg.psi_threshold) | (ks_v > self.cfg.ks_threshold)
        self.consecutive = np.where(evaluated, np.where(drifted, self.consecutive + 1, 0),
                                    self.consecutive)
        now = int(self.clock())
        return [{
            "model_name": self.model_name, "model_version": self.model_version,
            "feature": self.features[i], "window_start": int(start), "window_end": int(end),
            "sample_count": int(n[i]), "psi": float(psi_v[i]), "ks": float(ks_v[i]),
            "psi_threshold": float(self.cfg.psi_threshold),
            "ks_threshold": float(self.cfg.ks_threshold),
            "drifted": bool(drifted[i]), "consecutive_windows": int(self.consecutive[i]),
            "detected_at": now,
        } for i in np.flatnonzero(evaluated)]

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The detector's state as a JSON-able dict (counts only, no raw values)."""
        return {
            "format": STATE_FORMAT, "kind": "drift-detector",
            "model_name": self.model_name, "model_version": self.model_version,
            "reference": self.fingerprint, "features": list(self.features),
            "window_ms": self.cfg.window_ms, "slide_ms": self.cfg.slide_ms,
            "watermark": self.watermark, "closed_until": self.closed_until,
            "late_dropped": self.late_dropped, "other_window": self.other_window,
            "consecutive": self.consecutive.tolist(),
            "panes": {str(p): {k: v.tolist() for k, v in pane.items()}
                      for p, pane in sorted(self.panes.items())},
        }

    def snapshot_bytes(self) -> bytes:
        return json.dumps(self.snapshot(), separators=(",", ":")).encode()

    @classmethod
    def restore(cls, model_meta: Mapping[str, Any], cfg: DriftConfig,
                state: Mapping[str, Any] | bytes, clock: Callable[[], int] | None = None
                ) -> DriftDetector:
        """A detector of ``model_meta`` with a state from :meth:`snapshot` (or its bytes).
        Refuses a state of another model version or reference, or another slide (panes
        would not line up); a changed ``window_ms`` is fine."""
        st = json.loads(state) if isinstance(state, bytes | bytearray) else dict(state)
        det = cls(model_meta, cfg, clock)
        if st.get("format") != STATE_FORMAT or st.get("kind") != "drift-detector":
            raise DriftError(f"not a drift detector state of format {STATE_FORMAT}")
        mine = (det.model_name, det.model_version, det.fingerprint, list(det.features))
        theirs = (st["model_name"], st["model_version"], st["reference"], st["features"])
        if mine != theirs:
            raise DriftError(f"the state belongs to model {theirs[0]} v{theirs[1]} (reference "
                             f"{theirs[2]}), not {mine[0]} v{mine[1]} (reference {mine[2]})")
        if st["slide_ms"] != cfg.slide_ms:
            raise DriftError(f"the state has slide_ms {st['slide_ms']}, the config {cfg.slide_ms}: "
                             "panes would not line up; start from an empty state")
        det.watermark, det.closed_until = st["watermark"], st["closed_until"]
        det.late_dropped, det.other_window = int(st["late_dropped"]), int(st["other_window"])
        det.consecutive = np.asarray(st["consecutive"], dtype=np.int64)
        det.panes = {int(p): {k: np.asarray(v, dtype=np.int64) for k, v in pane.items()}
                     for p, pane in st["panes"].items()}
        return det


# --- the retrain policy ---------------------------------------------------------------------
def trigger_id(model_name: str, model_version: str, window_end: int) -> str:
    """Deterministic: the same drift (model, version, closing window) gives the same id."""
    return f"{model_name}@{model_version}@{int(window_end)}"


class RetrainPolicy:
    """K consecutive drifted windows on any feature → one RetrainTrigger per model name,
    then none for ``cooldown_ms`` of event time (measured between window ends)."""

    def __init__(self, cfg: DriftConfig, clock: Callable[[], int] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or _now_ms
        # State: (model, version, feature) -> start of its current drifted run; model -> end
        # of the window of its last trigger.
        self.run_start: dict[tuple[str, str, str], int] = {}
        self.last_trigger_end: dict[str, int] = {}

    def cooling_down(self, model_name: str, window_end: int) -> bool:
        last = self.last_trigger_end.get(model_name)
        return last is not None and window_end < last + self.cfg.cooldown_ms

    def observe(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Feed DriftEvents (in window order); return the RetrainTriggers they cause."""
        by_window: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
        for e in events:
            by_window.setdefault((e["model_name"], e["model_version"], int(e["window_end"])),
                                 []).append(e)
        out = []
        for (name, version, end), evs in by_window.items():
            persisting = []
            for e in evs:
                key = (name, version, e["feature"])
                if not e["drifted"]:
                    self.run_start.pop(key, None)
                    continue
                start = self.run_start.setdefault(key, int(e["window_start"]))
                if e["consecutive_windows"] >= self.cfg.k_windows:
                    persisting.append((e["feature"], start))
            if not persisting or self.cooling_down(name, end):
                continue
            self.last_trigger_end[name] = end
            out.append({
                "trigger_id": trigger_id(name, version, end),
                "model_name": name, "model_version": version,
                "drifted_features": sorted(f for f, _ in persisting),
                "window_start": min(s for _, s in persisting), "window_end": end,
                "triggered_at": int(self.clock()),
            })
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": "retrain-policy",
                "run_start": [[*k, v] for k, v in sorted(self.run_start.items())],
                "last_trigger_end": dict(sorted(self.last_trigger_end.items()))}

    def snapshot_bytes(self) -> bytes:
        return json.dumps(self.snapshot(), separators=(",", ":")).encode()

    @classmethod
    def restore(cls, cfg: DriftConfig, state: Mapping[str, Any] | bytes,
                clock: Callable[[], int] | None = None) -> RetrainPolicy:
        st = json.loads(state) if isinstance(state, bytes | bytearray) else dict(state)
        if st.get("format") != STATE_FORMAT or st.get("kind") != "retrain-policy":
            raise DriftError(f"not a retrain policy state of format {STATE_FORMAT}")
        pol = cls(cfg, clock)
        pol.run_start = {(m, v, f): int(s) for m, v, f, s in st["run_start"]}
        pol.last_trigger_end = {k: int(v) for k, v in st["last_trigger_end"].items()}
        return pol


__all__ = [
    "DriftDetector", "DriftError", "FeatureReference", "PSI_EPSILON", "RetrainPolicy",
    "feature_reference", "ks_grid", "psi", "trigger_id",
]
