"""sluice.metrics_catalog names exactly the counters and latency histograms the job code
registers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sluice.config import REPO_ROOT
from sluice.metrics_catalog import (
    GAUGE_SUFFIXES,
    STAGE_COUNTERS,
    STAGE_LATENCIES,
    known_series,
    latency_gauge_names,
    prometheus_name,
    prometheus_names,
)

CODE_DIRS = (REPO_ROOT / "sluice", REPO_ROOT / "jobs")
# How metrics are registered: counters(ctx, stage, counters) and
# StageMetrics(ctx, stage, counters, latencies=()) (sluice/metrics.py); parameter names
# for keyword arguments.
REGISTRARS = {"counters": ("context", "stage", "names"),
              "StageMetrics": ("context", "stage", "counters", "latencies")}


def _names(path: Path, node: ast.Call, arg: ast.expr, stage: str) -> set[tuple[str, str]]:
    if not isinstance(arg, ast.Tuple):
        raise AssertionError(f"{path}:{node.lineno}: metric names not a literal tuple: "
                             "the catalog cannot be checked")
    out = set()
    for elt in arg.elts:
        assert isinstance(elt, ast.Constant) and isinstance(elt.value, str), f"{path}:{node.lineno}"
        out.add((stage, elt.value))
    return out


def registered_metrics(files: list[Path]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(stage, name) of every counter and of every latency histogram the code registers
    with ``counters(...)`` or ``StageMetrics(...)`` (called by name or as an attribute)."""
    counters: set[tuple[str, str]] = set()
    latencies: set[tuple[str, str]] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = (func.id if isinstance(func, ast.Name)
                      else func.attr if isinstance(func, ast.Attribute) else None)
            if called not in REGISTRARS:
                continue
            params = REGISTRARS[called]
            args = dict(zip(params, node.args, strict=False))
            args.update({k.arg: k.value for k in node.keywords if k.arg in params})
            stage = args.get("stage")
            if not (isinstance(stage, ast.Constant) and isinstance(stage.value, str)):
                raise AssertionError(f"{path}:{node.lineno}: {called}() with a non-literal "
                                     "stage: the catalog cannot be checked")
            counters |= _names(path, node, args[params[2]], stage.value)
            if "latencies" in args:
                latencies |= _names(path, node, args["latencies"], stage.value)
    return counters, latencies


def registered_counters(files: list[Path]) -> set[tuple[str, str]]:
    return registered_metrics(files)[0]


# Where counters() and StageMetrics are defined (counters() passes its arguments on):
# no registration of its own.
DEFINITIONS = (REPO_ROOT / "sluice" / "metrics.py",)


def code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in sorted(d.rglob("*.py")) if p not in DEFINITIONS]


def test_catalog_matches_the_counters_the_jobs_register() -> None:
    registered = registered_counters(code_files())
    assert registered, "no counters() call found: the scan is broken"
    assert set(STAGE_COUNTERS) == registered, (
        f"in the code, not the catalog: {sorted(registered - set(STAGE_COUNTERS))}; "
        f"in the catalog, not the code: {sorted(set(STAGE_COUNTERS) - registered)}")


def test_catalog_matches_the_latency_histograms_the_jobs_register() -> None:
    registered = registered_metrics(code_files())[1]
    assert registered, "no StageMetrics(..., latencies) call found: the scan is broken"
    assert set(STAGE_LATENCIES) == registered, (
        f"in the code, not the catalog: {sorted(registered - set(STAGE_LATENCIES))}; "
        f"in the catalog, not the code: {sorted(set(STAGE_LATENCIES) - registered)}")


def test_the_scan_sees_every_registered_stage() -> None:
    """The scan reaches every kind of call site: the SQL UDFs, the DataStream functions
    of the feature job, and the scoring job's scoring and drift operators."""
    stages = {s for s, _ in registered_counters(code_files())}
    assert {"ingest", "dedup", "reference", "audit", "score", "features", "scoring"} <= stages
    assert {("scoring", "model_switches"), ("scoring", "drift_events")} <= registered_counters(
        code_files())


def test_the_scan_sees_a_counter_that_is_not_catalogued(tmp_path: Path) -> None:
    """Negative control: a new counter or histogram in job code shows up as missing from
    the catalog, whichever way it is registered."""
    extra = tmp_path / "new_stage.py"
    extra.write_text('def open(self, ctx):\n'
                     '    self.c = counters(ctx, "score", ("windows", "alerts"))\n'
                     '    self.m = metrics.StageMetrics(ctx, "explain", ("calls",),\n'
                     '                                  latencies=("explain_us",))\n')
    counters, latencies = registered_metrics([*code_files(), extra])
    assert counters - set(STAGE_COUNTERS) == {("score", "windows"), ("score", "alerts"),
                                              ("explain", "calls")}
    assert latencies - set(STAGE_LATENCIES) == {("explain", "explain_us")}


def test_the_scan_refuses_names_it_cannot_read(tmp_path: Path) -> None:
    extra = tmp_path / "dynamic.py"
    extra.write_text('NAMES = ("a",)\ndef open(self, ctx):\n    counters(ctx, "x", NAMES)\n')
    with pytest.raises(AssertionError, match="not a literal tuple"):
        registered_metrics([extra])


def test_latency_gauges_are_the_ones_stage_metrics_registers() -> None:
    """The catalog's gauge names are what StageMetrics really registers for a histogram
    (run against a recording metric group of process mode)."""
    from sluice.metrics import StageMetrics

    gauges: list[str] = []

    class Group:
        def add_group(self, name: str) -> Group:
            return self

        def counter(self, name: str) -> object:
            return object()

        def gauge(self, name: str, fn: object) -> None:
            gauges.append(name)

    class Ctx:
        def get_metric_group(self) -> Group:
            return Group()

    StageMetrics(Ctx(), "ingest", (), ("decode_us",))
    assert sorted(gauges) == sorted(f"decode_us_{s}" for s in GAUGE_SUFFIXES)
    assert ("flink_taskmanager_job_task_operator_sluice_ingest_decode_us_p99"
            in latency_gauge_names())
    assert set(latency_gauge_names()) <= known_series()


def test_counters_are_registered_under_the_group_the_names_assume() -> None:
    """The Prometheus names assume add_group("sluice").add_group(stage).counter(name);
    run sluice.udfs.counters against a recording metric group to see what it really does."""
    from sluice.udfs import counters  # the UDFs' name for sluice.metrics.counters

    calls: list[tuple[str, str]] = []

    class Group:
        def add_group(self, name: str) -> Group:
            calls.append(("group", name))
            return self

        def counter(self, name: str) -> str:
            calls.append(("counter", name))
            return name

    class Ctx:
        def get_metric_group(self) -> Group:
            return Group()

    counters(Ctx(), "ingest", ("records_in",))  # type: ignore[arg-type]
    assert calls == [("group", "sluice"), ("group", "ingest"), ("counter", "records_in")]


@pytest.mark.parametrize(("stage", "name", "expected"), [
    ("ingest", "records_in", "flink_taskmanager_job_task_operator_sluice_ingest_records_in"),
    ("odd-stage", "a.b", "flink_taskmanager_job_task_operator_sluice_odd_stage_a_b"),
])
def test_prometheus_names(stage: str, name: str, expected: str) -> None:
    assert prometheus_name(stage, name) == expected


def test_names_are_unique() -> None:
    assert len(set(prometheus_names())) == len(STAGE_COUNTERS)
