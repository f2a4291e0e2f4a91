"""Window features of a generated stream, computed offline with the job's own feature code.

The Flink job (sluice/feature_job.py) turns each canonical event into per-field Rust
:class:`~sluice.native.FeatureAccumulator` updates and a fired window into a FeatureVector
through :func:`~sluice.feature_job.field_plans` / :func:`~sluice.feature_job.field_features`.
This module drives exactly those, without Flink, over the items of a generator plan, so
``sluice eval`` and tests get the vectors the job would write for the same input:

* events: a telemetry :class:`~sluice.generator.Reading` gives the measurements the job
  decodes from its Avro (the generator's values are already at the writer's precision); a
  :class:`~sluice.generator.Frame` is encoded to its wire bytes and decoded by the Rust
  :class:`~sluice.native.FrameDecoder`, as the ingest UDF does (vibration_rms = the frame's
  RMS; ``frame.peak_abs_g``, ``frame.mean_g``, ...), and the raw bytes feed waveform
  aggregations through ``update_sensor_frame``; work orders are MAINTENANCE events without
  measurements; corrupt records are skipped (the job dead-letters them).
* windows: tumbling and hopping windows in event time, assigned as Flink's
  ``TumblingEventTimeWindows`` / ``SlidingEventTimeWindows`` (offset 0) do. Session windows
  are not computed here (:class:`OfflineWindowError`).
* every event counts: the result is each window's final vector when no event is late,
  which holds for a generator plan (its event times never go back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.feature_job import FieldPlan, field_features, field_plans, field_value, scalar_fields
from sluice.features import FeatureSpec, WindowSpec
from sluice.generator import Frame, Item, Reading, WorkOrder
from sluice.native import FeatureAccumulator, FrameDecoder
from sluice.native import FeatureSpec as NativeSpec


class OfflineWindowError(ValueError):
    """A window of the spec this module cannot compute (session windows)."""


@dataclass(frozen=True)
class Event:
    """One canonical event as the feature windows see it."""

    device_id: str
    source: str  # TELEMETRY | SENSOR_FRAME | MAINTENANCE
    ts: int
    record: dict[str, Any]  # the EnrichedReading measurement fields it sets
    frame: bytes | None = None  # a sensor frame's wire bytes


def events_from_items(items: Iterable[Item]) -> list[Event]:
    """The canonical events of a plan's valid items, in plan order."""
    decoder = FrameDecoder()
    out = []
    for item in items:
        if isinstance(item, Reading):
            out.append(Event(item.device_id, "TELEMETRY", item.ts, {
                "temperature_c": item.temperature_c, "vibration_rms": item.vibration_rms,
                "humidity_pct": item.humidity_pct, "sample_count": item.sample_count}))
        elif isinstance(item, Frame):
            raw = item.encode()
            _, ts, rate, n, rms, peak, mean = decoder.decode(raw)
            out.append(Event(item.device_id, "SENSOR_FRAME", ts, {
                "vibration_rms": rms,
                "frame": {"sample_rate_hz": rate, "n_samples": n, "peak_abs_g": peak, "mean_g": mean}},
                raw))
        elif isinstance(item, WorkOrder):
            out.append(Event(item.device_id, "MAINTENANCE", item.ts, {}))
    return out


def window_bounds(w: WindowSpec, ts: int) -> list[tuple[int, int]]:
    """The windows ``[start, end)`` an event at ``ts`` belongs to (Flink, offset 0)."""
    if w.kind == "tumble":
        assert w.size is not None
        start = ts - ts % w.size
        return [(start, start + w.size)]
    if w.kind == "hop":
        assert w.size is not None and w.slide is not None
        out, start = [], ts - ts % w.slide
        while start > ts - w.size:
            out.append((start, start + w.size))
            start -= w.slide
        return out
    raise OfflineWindowError(
        f"window {w.name!r} is a {w.kind} window; offline features cover tumble and hop windows")


class _WindowState:
    __slots__ = ("count", "accs")

    def __init__(self, specs: list[NativeSpec]) -> None:
        self.count = 0
        self.accs = [FeatureAccumulator(s) for s in specs]


def _window_vectors(w: WindowSpec, plans: tuple[FieldPlan, ...], events: Sequence[Event],
                    spec_version: str, on_event: Callable[[int], None] | None) -> list[dict[str, Any]]:
    specs = [NativeSpec(list(p.aggs)) for p in plans]
    # A plan's scalar values, by its index into the fields tuple the plans were built with.
    fields = [p.field for p in plans]
    sources = frozenset(w.source)
    state: dict[tuple[str, int, int], _WindowState] = {}
    for n, ev in enumerate(events):
        if on_event is not None:
            on_event(n)
        if ev.source not in sources:
            continue
        values = [None if p.waveform else field_value(ev.record, f)
                  for p, f in zip(plans, fields, strict=True)]
        for start, end in window_bounds(w, ev.ts):
            st = state.get((ev.device_id, start, end))
            if st is None:
                st = state[(ev.device_id, start, end)] = _WindowState(specs)
            st.count += 1
            for plan, acc, v in zip(plans, st.accs, values, strict=True):
                if plan.waveform:
                    if ev.frame is not None:
                        acc.update_sensor_frame(ev.frame)
                elif v is not None:
                    acc.update(ev.ts, float(v))
    out = []
    for (device, start, end), st in state.items():
        features: dict[str, float] = {}
        for plan, acc in zip(plans, st.accs, strict=True):
            features.update(field_features(plan, acc))
        out.append({"device_id": device, "site_id": None, "window": w.name,
                    "window_kind": w.window_kind, "window_start": start, "window_end": end,
                    "event_count": st.count, "features": features,
                    "feature_spec_version": spec_version})
    return out


def compute_vectors(events: Sequence[Event], spec: FeatureSpec, windows: Sequence[str] | None = None,
                    on_event: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """FeatureVector records (dicts shaped like schemas/features-value/v1.avsc, ``computed_at``
    left out, ``site_id`` None) of ``windows`` (default: every tumble/hop window of the
    spec), ordered by window end, then window name, device and start. ``on_event(n)`` is
    called per event and window pass (progress)."""
    chosen = [spec.window(n) for n in windows] if windows is not None else [
        w for w in spec.windows if w.kind in ("tumble", "hop")]
    for w in chosen:
        if w.kind not in ("tumble", "hop"):
            raise OfflineWindowError(
                f"window {w.name!r} is a {w.kind} window; offline features cover tumble and hop windows")
    fields = scalar_fields(spec.windows)
    version = spec.spec_version()
    out: list[dict[str, Any]] = []
    for w in chosen:
        out.extend(_window_vectors(w, field_plans(w, fields), events, version, on_event))
    out.sort(key=lambda v: (v["window_end"], v["window"], v["device_id"], v["window_start"]))
    return out


__all__ = ["Event", "OfflineWindowError", "compute_vectors", "events_from_items", "window_bounds"]
