"""The Python-side latency histogram and stage metrics (sluice/metrics.py)."""

from __future__ import annotations

import random

import pytest

from sluice.metrics import BOUNDS, LatencyHistogram, StageMetrics


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def exact(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def test_quantiles_within_bucket_error() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(20_000)]
    h = LatencyHistogram(window_s=60, clock=Clock())
    for v in values:
        h.observe(v)
    ratio = BOUNDS[1] / BOUNDS[0]  # one bucket's width: 10 ** 0.1
    for q in (0.5, 0.95, 0.99):
        got, want = h.quantile(q), exact(values, q)
        assert want / ratio <= got <= want * ratio, (q, got, want)
    assert h.max() == max(values)
    assert h.window_count() == len(values)


def test_window_slides() -> None:
    clock = Clock()
    h = LatencyHistogram(window_s=10, clock=clock)
    for _ in range(100):
        h.observe(1000.0)
    clock.t = 11  # one window later: still reported (previous generation)
    for _ in range(100):
        h.observe(5.0)
    assert h.window_count() == 200
    assert h.max() == 1000.0
    clock.t = 22  # the slow records are two windows old now: gone
    assert h.window_count() == 100
    assert h.max() == 5.0
    assert h.quantile(0.99) <= 5.0
    clock.t = 60  # nothing for longer than two windows: empty, not stale numbers
    assert h.window_count() == 0 and h.quantile(0.5) == 0.0 and h.max() == 0.0
    assert h.total == 200


def test_negative_and_empty() -> None:
    h = LatencyHistogram(clock=Clock())
    assert h.quantile(0.99) == 0.0
    h.observe(-3)  # clock skew between hosts: counted as 0, not an error
    assert h.quantile(0.5) == 0.0 and h.window_count() == 1


class FakeGroup:
    """Records what a stage registers (the PyFlink MetricGroup calls)."""

    def __init__(self, path: tuple[str, ...] = ()) -> None:
        self.path, self.counters, self.gauges, self.children = path, {}, {}, {}

    def add_group(self, name: str) -> FakeGroup:
        return self.children.setdefault(name, FakeGroup((*self.path, name)))

    def counter(self, name: str):  # type: ignore[no-untyped-def]
        from sluice.metrics import _NoCounter

        return self.counters.setdefault(name, _NoCounter())

    def gauge(self, name: str, fn) -> None:  # type: ignore[no-untyped-def]
        self.gauges[name] = fn


class Ctx:
    def __init__(self) -> None:
        self.root = FakeGroup()

    def get_metric_group(self) -> FakeGroup:
        return self.root


def test_stage_metrics_register_counters_and_gauges() -> None:
    ctx = Ctx()
    m = StageMetrics(ctx, "ingest", ("records_in",), ("decode_us",))
    group = ctx.root.children["sluice"].children["ingest"]
    assert set(group.counters) == {"records_in"}
    assert set(group.gauges) == {f"decode_us_{s}" for s in ("p50", "p95", "p99", "max", "count")}
    for v in (10, 20, 30, 1000):
        m.latency["decode_us"].observe(v)
    m.counter["records_in"].inc(4)
    assert group.counters["records_in"].count == 4
    values = {k: fn() for k, fn in group.gauges.items()}
    assert all(isinstance(v, int) for v in values.values())  # PyFlink gauges carry ints
    assert values["decode_us_count"] == 4 and values["decode_us_max"] == 1000
    assert 15 <= values["decode_us_p50"] <= 30 and 1000 / 10 ** 0.1 <= values["decode_us_p99"] <= 1000


@pytest.mark.parametrize("ctx", [None, object()])
def test_without_a_metric_group_counters_still_count(ctx: object) -> None:
    m = StageMetrics(ctx, "ingest", ("records_in",), ("decode_us",))
    m.counter["records_in"].inc()
    m.latency["decode_us"].observe(3)
    assert m.counter["records_in"].count == 1 and not m.gauges_registered


def test_cluster_config_enables_the_prometheus_reporter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from sluice.stack import StackPorts
    from sluice.stack.render import flink_config_yaml, flink_home

    ports = StackPorts.from_env({"SLUICE_STACK_PORT_OFFSET": "100"})
    conf = yaml.safe_load(flink_config_yaml(ports, tmp_path, python=tmp_path / "python"))
    prom = conf["metrics"]["reporter"]["prom"]
    assert prom["factory"]["class"] == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    assert prom["port"] == "18184-18187"
    # The reporter is a plugin: its jar must be where the start scripts look
    # (FLINK_PLUGINS_DIR defaults to <FLINK_HOME>/plugins), not only in opt/.
    assert list((flink_home() / "plugins" / "metrics-prometheus").glob("flink-metrics-prometheus-*.jar"))
