"""Flink metrics registered from the Python side (docs/observability.md).

Every stage of the job registers, under its operator's metric group,

    sluice.<stage>.<counter>            counters: records in / out / dead letters / ...
    sluice.<stage>.<latency>_p50|_p95|_p99|_max|_count
                                        a latency histogram, exposed as gauges

The histogram lives in the Python worker: log-spaced buckets (10 per decade, ≤ 26 %
relative error before interpolation), two generations of ``window_s`` seconds each, so
its quantiles describe the last one to two windows, not the whole run. PyFlink reads a
Python gauge when a bundle finishes (process mode) and sends it to the JVM with the
counters; Flink then shows it in REST / the web UI and every metrics reporter
(Prometheus: ``flink_taskmanager_job_task_operator_sluice_<stage>_<name>_p99``).

In thread mode PyFlink would call the gauge from a JVM metrics thread into the
embedded interpreter; the histograms are not registered there (counters are).

Nothing here imports numpy (thread mode, see sluice/udfs.py).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

#: Upper bucket bounds: 10 per decade from 1 to 1e8 (ms or µs, whatever the stage uses).
BOUNDS: tuple[float, ...] = tuple(10 ** (i / 10) for i in range(81))

#: The gauges each histogram exports, by suffix.
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


class _NoCounter:
    """Stands in for a Flink counter where metrics are off (python.metric.enabled=false)."""

    count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n


class LatencyHistogram:
    """A bucketed histogram of one stage's latency over a sliding window."""

    def __init__(self, window_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.current = [0] * (len(BOUNDS) + 1)
        self.previous = [0] * (len(BOUNDS) + 1)
        self.max_current = self.max_previous = 0.0
        self.rotated_at = clock()
        self.total = 0

    def observe(self, value: float) -> None:
        if value < 0:
            value = 0.0
        now = self.clock()
        if now - self.rotated_at >= self.window_s:
            self._rotate(now)
        self.current[bisect_left(BOUNDS, value)] += 1
        if value > self.max_current:
            self.max_current = value
        self.total += 1

    def _rotate(self, now: float) -> None:
        # More than two windows without a record: nothing recent is left.
        stale = now - self.rotated_at >= 2 * self.window_s
        self.previous = [0] * len(self.current) if stale else self.current
        self.max_previous = 0.0 if stale else self.max_current
        self.current = [0] * len(self.current)
        self.max_current = 0.0
        self.rotated_at = now

    def counts(self) -> list[int]:
        if self.clock() - self.rotated_at >= self.window_s:
            self._rotate(self.clock())
        return [a + b for a, b in zip(self.current, self.previous, strict=True)]

    def quantile(self, q: float) -> float:
        """The q-quantile of the window, interpolated linearly inside its bucket (0 when
        the window is empty)."""
        counts = self.counts()
        n = sum(counts)
        if n == 0:
            return 0.0
        rank = q * n
        seen = 0
        for i, c in enumerate(counts):
            if c and seen + c >= rank:
                lo = BOUNDS[i - 1] if i > 0 else 0.0
                hi = BOUNDS[i] if i < len(BOUNDS) else max(self.max(), lo)
                return min(lo + (hi - lo) * (rank - seen) / c, self.max())
            seen += c
        return self.max()

    def max(self) -> float:
        self.counts()
        return max(self.max_current, self.max_previous)

    def window_count(self) -> int:
        return sum(self.counts())


def metric_group(context: Any, stage: str) -> Any | None:
    """The metric group ``sluice.<stage>`` of a UDF's FunctionContext or a DataStream
    function's RuntimeContext; None where the job runs without Python metrics."""
    if context is None:
        return None
    getter = getattr(context, "get_metric_group", None) or getattr(context, "get_metrics_group", None)
    if getter is None:
        return None
    try:
        group = getter()
    except (AttributeError, RuntimeError):
        return None
    if group is None:
        return None
    return group.add_group("sluice").add_group(stage)


def _thread_mode(group: Any) -> bool:
    return type(group).__module__.startswith("pyflink.fn_execution.metrics.embedded")


class StageMetrics:
    """The counters and latency histograms of one stage.

    ``counters``: names of Flink counters (``self.counter[name].inc()``);
    ``latencies``: names of histograms (``self.latency[name].observe(value)``); give the
    unit in the name (``event_to_ingest_ms``, ``decode_us``)."""

    def __init__(self, context: Any, stage: str, counters: tuple[str, ...],
                 latencies: tuple[str, ...] = (), window_s: float = 30.0) -> None:
        group = metric_group(context, stage)
        self.stage = stage
        self.counter: dict[str, Any] = {
            name: (group.counter(name) if group is not None else _NoCounter()) for name in counters}
        self.latency = {name: LatencyHistogram(window_s) for name in latencies}
        self.gauges_registered = group is not None and not _thread_mode(group)
        if self.gauges_registered:
            for name, hist in self.latency.items():
                _register_gauges(group, name, hist)


def counters(context: Any, stage: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Flink counters ``sluice.<stage>.<name>`` of a UDF's FunctionContext or a DataStream
    function's RuntimeContext (visible in the Flink UI / REST and the metrics reporters),
    or local stand-ins when the job runs without Python metrics. Every call names its
    stage and counters literally: sluice.metrics_catalog is checked against these calls
    (tests/unit/test_metrics_catalog.py)."""
    return StageMetrics(context, stage, names).counter


def _register_gauges(group: Any, name: str, hist: LatencyHistogram) -> None:
    # Flink gauges from Python carry integers: round to the unit of the name.
    for suffix, q in QUANTILES.items():
        group.gauge(f"{name}_{suffix}", lambda q=q: round(hist.quantile(q)))
    group.gauge(f"{name}_max", lambda: round(hist.max()))
    group.gauge(f"{name}_count", hist.window_count)
