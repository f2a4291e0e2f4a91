"""Independent reference for the window features of issue 4.

Given canonical events in arrival order, the feature spec, the watermark's bounded
out-of-orderness and the spec's allowed lateness, it computes the FeatureVectors a Flink
event-time window job must emit, and which events are too late, by replaying what Flink's
DataStream ``WindowOperator`` does with each element and each watermark. The aggregations
are the textbook definitions in float64 numpy (docs/features.md); nothing here imports the
Rust module or shares code with it.

Events are EnrichedReading dicts (``device_id``, ``ts``, ``source``, ``site_id`` and the
measurements; nested parts as dicts: ``{"frame": {"sample_rate_hz": 1000, ...}}``). A
sensor frame also carries its waveform as ``frame["samples"]``. An optional ``partition``
(any hashable, e.g. ``("telemetry", 0)``) says which source split the event came from.

The exact rules, with the Flink source they come from (apache/flink, release 2.2):

* Watermark. The job's source declares ``WATERMARK FOR ts AS ts - INTERVAL ...`` (Flink SQL
  CREATE TABLE, "WATERMARK": "emits watermarks which are the maximum observed timestamp
  minus the specified delay", https://nightlies.apache.org/flink/flink-docs-release-2.2/docs/dev/table/sql/create/#watermark),
  so per split ``wm_p = max ts seen in p - out_of_orderness`` -- no extra -1, unlike the
  DataStream ``BoundedOutOfOrdernessWatermarks`` (``maxTimestamp - outOfOrdernessMillis - 1``).
  The operator's watermark is the minimum over all splits (a split that has not yet
  delivered a record holds it at Long.MIN_VALUE; idleness is not modelled). Splits are
  the distinct ``partition`` values of the input, or the ``partitions`` argument.
  The oracle advances the watermark after **every** record: the element being processed
  sees the watermark of the records before it. Flink emits watermarks periodically
  (``pipeline.auto-watermark-interval``, 200 ms in the job), so a real watermark can lag
  this one: an element the oracle calls late may still be on time in Flink, never the
  reverse. Tests that expect late records must make them late by a margin in wall-clock
  time too (e.g. send them after a pause longer than the interval).
* Window assignment (``TumblingEventTimeWindows``, ``SlidingEventTimeWindows``,
  ``EventTimeSessionWindows``, ``TimeWindow.getWindowStartWithOffset``): tumbling windows
  ``[ts - ts mod size, +size)`` aligned to the epoch; hop windows: every ``[s, s + size)``
  with ``s`` a multiple of ``slide`` and ``ts - size < s <= ts``; sessions: each element
  opens ``[ts, ts + gap)`` and in-flight windows of the same key merge when they
  intersect **or touch** (``TimeWindow.intersects``: ``start <= other.end && end >=
  other.start``), so events exactly ``gap`` apart share a session. A session's
  window_start is its first ts and window_end its last ts + gap (as Flink SQL SESSION).
* Lateness (``WindowOperator.processElement`` / ``isWindowLate`` / ``isElementLate``;
  docs: https://nightlies.apache.org/flink/flink-docs-release-2.2/docs/dev/datastream/operators/windows/#allowed-lateness):
  a window is late when ``window_end - 1 + allowed_lateness <= watermark``; an element is
  not added to late windows; it goes to the late side output when it was added to no
  window at all and ``ts + allowed_lateness <= watermark``. For sessions the check is on
  the window after merging, so an element whose own ``[ts, ts + gap)`` is late still joins
  a live session it touches.
* Firing (``EventTimeTrigger``): a window fires when the watermark reaches ``window_end -
  1`` (its event-time timer), and again, at once, for every element added afterwards
  while ``window_end - 1 <= watermark`` (a late firing within the allowed lateness). Its
  state is dropped when the watermark reaches ``window_end - 1 + allowed_lateness``. The
  last firing of a window is its final vector; a later firing updates an earlier one.
  With ``end_of_input`` the stream ends with Long.MAX_VALUE (a bounded source, or
  ``stop --drain``): every open window fires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sluice.features import WAVEFORM_FIELD, Agg, FeatureSpec, WindowSpec

# Relative tolerance for comparing the job's features with these: float64 sums in another
# order differ in the last bits. Quantiles come from a DDSketch with 1 % relative accuracy.
RELATIVE_TOLERANCE = 1e-9
QUANTILE_RELATIVE_TOLERANCE = 0.01

_QUANTILE_NAME = re.compile(r"\.p\d+(\.\d+)?$")

LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1

Event = dict[str, Any]


@dataclass(frozen=True)
class ExpectedVector:
    window: str
    window_kind: str
    device_id: str
    site_id: str | None
    window_start: int
    window_end: int
    event_count: int
    features: dict[str, float]
    feature_spec_version: str
    # "on-time": the watermark passed the window's end; "late": an element arrived after that,
    # within the allowed lateness, and the window fired again with it.
    firing: str
    watermark: int

    @property
    def key(self) -> tuple[str, str, int, int]:
        return self.window, self.device_id, self.window_start, self.window_end


@dataclass
class OracleResult:
    emissions: list[ExpectedVector] = field(default_factory=list)  # every firing, in order
    final: list[ExpectedVector] = field(default_factory=list)  # last firing of each window
    late: dict[str, list[Event]] = field(default_factory=dict)  # side output, per spec window
    # Without end_of_input: the windows still in state (fired or not), with their contents.
    open: list[ExpectedVector] = field(default_factory=list)

    def final_by_key(self) -> dict[tuple[str, str, int, int], ExpectedVector]:
        return {v.key: v for v in self.final}


# --- field access and the aggregations --------------------------------------------------------
def field_value(event: Event, path: str) -> Any:
    """``frame.peak_abs_g`` → event["frame"]["peak_abs_g"]; None where any part is absent."""
    node: Any = event
    for part in path.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def _scalar(agg: Agg, ts: np.ndarray, x: np.ndarray) -> float:
    n = len(x)
    if agg.name == "count":
        return float(n)
    if agg.name == "sum":
        return float(np.sum(x))
    if agg.name == "mean":
        return float(np.mean(x))
    if agg.name == "std":
        return float(np.sqrt(np.mean((x - np.mean(x)) ** 2)))
    if agg.name == "min":
        return float(np.min(x))
    if agg.name == "max":
        return float(np.max(x))
    if agg.name == "ewma":
        assert agg.half_life_ms is not None
        w = 0.5 ** ((ts.max() - ts) / agg.half_life_ms)
        return float(np.sum(w * x) / np.sum(w))
    if agg.name == "slope":
        if len(np.unique(ts)) < 2:
            return 0.0
        t = (ts - ts.min()) / 1000.0  # seconds; shifted first so no precision is lost
        dt = t - t.mean()
        return float(np.sum(dt * (x - x.mean())) / np.sum(dt * dt))
    if agg.name == "quantile":
        assert agg.q is not None
        return float(np.sort(x)[math.floor(agg.q * (n - 1))])
    raise AssertionError(f"not a scalar aggregation: {agg.name}")


def _waveform(agg: Agg, frames: list[tuple[np.ndarray, float]]) -> list[float]:
    s = np.concatenate([x for x, _ in frames])
    if agg.name == "rms":
        return [float(np.sqrt(np.mean(s * s)))]
    if agg.name == "peak":
        return [float(np.max(np.abs(s)))]
    if agg.name == "crest_factor":
        rms = np.sqrt(np.mean(s * s))
        return [float(np.max(np.abs(s)) / rms) if rms > 0 else 0.0]
    if agg.name == "kurtosis":
        c = s - np.mean(s)
        m2, m4 = np.mean(c**2), np.mean(c**4)
        return [float(m4 / m2**2) if m2 > 0 else 0.0]
    if agg.name == "band_energy":
        assert agg.bands is not None
        per_frame, weights = [], []
        for x, rate in frames:
            n = len(x)
            # One-sided power: every bin but DC and (even n) Nyquist counts twice, so the
            # bands tiling [0, rate/2] add up to mean(x**2) (Parseval).
            doubled = np.full(n // 2 + 1, 2.0)
            doubled[0] = 1.0
            if n % 2 == 0:
                doubled[-1] = 1.0
            power = doubled * np.abs(np.fft.rfft(x)) ** 2 / n**2
            freqs = np.arange(len(power)) * rate / n
            per_frame.append([float(np.sum(power[(freqs >= lo) & (freqs < hi)])) for lo, hi in agg.bands])
            weights.append(n)
        return [float(v) for v in np.average(np.array(per_frame), axis=0, weights=weights)]
    raise AssertionError(f"not a waveform aggregation: {agg.name}")


def window_features(spec: WindowSpec, events: Sequence[Event]) -> dict[str, float]:
    """The feature map of one window's events. A field with no value in the window gives
    count = sum = 0 and no other feature (the map has no entry for them)."""
    out: dict[str, float] = {}
    for f in spec.features:
        if f.field == WAVEFORM_FIELD:
            frames = [(np.asarray(e["frame"]["samples"], dtype=np.float64),
                       float(e["frame"]["sample_rate_hz"]))
                      for e in events if field_value(e, WAVEFORM_FIELD) is not None]
            for agg in f.aggs:
                if frames:
                    out.update(zip(agg.output_names(f.field), _waveform(agg, frames), strict=True))
            continue
        pairs = [(e["ts"], float(v)) for e in events if (v := field_value(e, f.field)) is not None]
        ts = np.array([p[0] for p in pairs], dtype=np.int64)
        x = np.array([p[1] for p in pairs], dtype=np.float64)
        for agg in f.aggs:
            (name,) = agg.output_names(f.field)
            if pairs:
                out[name] = _scalar(agg, ts, x)
            elif agg.name in ("count", "sum"):
                out[name] = 0.0
    return out


def _site(events: Sequence[Event]) -> str | None:
    """site_id of the window's latest event (greatest ts; among equal ts the greatest id)."""
    latest = max(events, key=lambda e: (e["ts"], e.get("site_id") or ""))
    return latest.get("site_id")


# --- Flink's window operator, replayed ------------------------------------------------------
@dataclass(eq=False)
class _Window:
    start: int
    end: int
    events: list[Event] = field(default_factory=list)
    timer: bool = False  # an event-time timer at end - 1 is registered
    last: ExpectedVector | None = None

    @property
    def max_timestamp(self) -> int:
        return self.end - 1


class _Operator:
    def __init__(self, spec: WindowSpec, version: str, result: OracleResult):
        self.spec, self.version, self.result = spec, version, result
        self.windows: dict[str, list[_Window]] = {}
        result.late[spec.name] = []

    def _assign(self, ts: int) -> list[tuple[int, int]]:
        s = self.spec
        if s.kind == "tumble":
            assert s.size is not None
            start = ts - ts % s.size  # Python's % floors, like getWindowStartWithOffset
            return [(start, start + s.size)]
        if s.kind == "hop":
            assert s.size is not None and s.slide is not None
            out, start = [], ts - ts % s.slide
            while start > ts - s.size:
                out.append((start, start + s.size))
                start -= s.slide
            return out
        assert s.gap is not None
        return [(ts, ts + s.gap)]

    def _late(self, w: _Window | tuple[int, int], wm: int) -> bool:
        end = w.end if isinstance(w, _Window) else w[1]
        return end - 1 + self.spec.allowed_lateness <= wm

    def process(self, ev: Event, wm: int) -> None:
        key, ts = ev["device_id"], ev["ts"]
        live = self.windows.setdefault(key, [])
        skipped = True
        for start, end in self._assign(ts):
            if self.spec.kind == "session":
                w = self._merge(live, start, end, wm)
                if w is None:
                    continue
            else:
                if self._late((start, end), wm):
                    continue
                w = next((x for x in live if (x.start, x.end) == (start, end)), None)
                if w is None:
                    w = _Window(start, end)
                    live.append(w)
            skipped = False
            w.events.append(ev)
            self._on_element(w, wm)
        if skipped:
            if ts + self.spec.allowed_lateness <= wm:
                self.result.late[self.spec.name].append(ev)
            else:  # cannot happen with slide <= size, which the spec enforces
                raise AssertionError(f"{self.spec.name}: Flink would drop {ev} without a trace")

    def _merge(self, live: list[_Window], start: int, end: int, wm: int) -> _Window | None:
        """MergingWindowSet.addWindow with TimeWindow.mergeWindows: the window the element
        goes to, or None when that window is late."""
        touching = [w for w in live if w.start <= end and w.end >= start]
        if not touching:
            new = _Window(start, end)
            if self._late(new, wm):
                return None
            live.append(new)
            return new
        # The in-flight windows of a key never touch each other, so only the new window can
        # bridge them; the result covers all of them.
        result = _Window(min(start, *(w.start for w in touching)), max(end, *(w.end for w in touching)))
        if len(touching) == 1 and (touching[0].start, touching[0].end) == (result.start, result.end):
            return touching[0]  # inside an existing session: no merge happens
        assert not self._late(result, wm), "Flink refuses a merge that ends before the watermark"
        for w in touching:
            live.remove(w)
            result.events.extend(w.events)
        # EventTimeTrigger.onMerge: the old windows' timers go; the result gets one if pending.
        result.timer = result.max_timestamp > wm
        live.append(result)
        return result

    def _on_element(self, w: _Window, wm: int) -> None:
        if w.max_timestamp <= wm:
            self._emit(w, "late", wm)
        else:
            w.timer = True

    def _emit(self, w: _Window, firing: str, wm: int) -> None:
        v = ExpectedVector(
            window=self.spec.name, window_kind=self.spec.window_kind, device_id=w.events[0]["device_id"],
            site_id=_site(w.events), window_start=w.start, window_end=w.end,
            event_count=len(w.events), features=window_features(self.spec, w.events),
            feature_spec_version=self.version, firing=firing, watermark=wm,
        )
        w.last = v
        self.result.emissions.append(v)

    def advance(self, wm: int) -> None:
        """The watermark reached ``wm``: timers fire in timestamp order, then state is dropped."""
        due = sorted(((w.max_timestamp, key, w.start, w) for key, ws in self.windows.items() for w in ws
                      if w.timer and w.max_timestamp <= wm), key=lambda t: t[:3])
        for _, _, _, w in due:
            w.timer = False
            self._emit(w, "on-time", wm)
        for ws in self.windows.values():
            for w in [w for w in ws if self._late(w, wm)]:
                ws.remove(w)
                assert w.last is not None
                self.result.final.append(w.last)

    def still_open(self) -> list[ExpectedVector]:
        out = []
        for ws in self.windows.values():
            for w in ws:
                features = window_features(self.spec, w.events)
                out.append(ExpectedVector(
                    self.spec.name, self.spec.window_kind, w.events[0]["device_id"], _site(w.events),
                    w.start, w.end, len(w.events), features, self.version, "open", LONG_MIN))
        return out


class _Watermark:
    def __init__(self, out_of_orderness_ms: int, partitions: Iterable[Hashable]):
        self.bound = out_of_orderness_ms
        self.max_ts: dict[Hashable, int | None] = dict.fromkeys(partitions)

    def observe(self, ev: Event) -> None:
        p = ev.get("partition", 0)
        if p not in self.max_ts:
            raise ValueError(f"event from partition {p!r}, not one of {list(self.max_ts)}")
        seen = self.max_ts[p]
        self.max_ts[p] = ev["ts"] if seen is None else max(seen, ev["ts"])

    @property
    def current(self) -> int:
        if any(v is None for v in self.max_ts.values()):
            return LONG_MIN
        return min(v for v in self.max_ts.values() if v is not None) - self.bound


def expected_features(
    events: Sequence[Event], spec: FeatureSpec, *, out_of_orderness_ms: int,
    partitions: Iterable[Hashable] | None = None, end_of_input: bool = True,
) -> OracleResult:
    """Replay ``events`` (in arrival order) through one event-time window operator per spec
    window; see the module docstring for the rules."""
    result = OracleResult()
    version = spec.spec_version()
    ops = [_Operator(w, version, result) for w in spec.windows]
    parts = list(partitions) if partitions is not None else list(dict.fromkeys(
        e.get("partition", 0) for e in events))
    wm_state = _Watermark(out_of_orderness_ms, parts)
    wm = LONG_MIN
    for ev in events:
        for op in ops:
            if ev["source"] in op.spec.source:
                op.process(ev, wm)
        wm_state.observe(ev)
        if wm_state.current > wm:
            wm = wm_state.current
            for op in ops:
                op.advance(wm)
    if end_of_input:
        for op in ops:
            op.advance(LONG_MAX)
    else:
        for op in ops:
            result.open.extend(op.still_open())
    return result


def features_close(name: str, actual: float, expected: float) -> bool:
    """Whether the job's value of feature ``name`` matches the oracle's (docs/features.md)."""
    rel = QUANTILE_RELATIVE_TOLERANCE if _QUANTILE_NAME.search(name) else RELATIVE_TOLERANCE
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-12)
