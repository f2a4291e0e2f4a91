"""sluice.metrics_catalog names exactly the counters the job code registers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sluice.config import REPO_ROOT
from sluice.metrics_catalog import STAGE_COUNTERS, prometheus_name, prometheus_names

CODE_DIRS = (REPO_ROOT / "sluice", REPO_ROOT / "jobs")


def registered_counters(files: list[Path]) -> set[tuple[str, str]]:
    """(stage, name) of every ``counters(ctx, "stage", ("a", "b", ...))`` call."""
    found: set[tuple[str, str]] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "counters" and len(node.args) == 3):
                continue
            stage, names = node.args[1], node.args[2]
            if not (isinstance(stage, ast.Constant) and isinstance(names, ast.Tuple)):
                raise AssertionError(f"{path}:{node.lineno}: counters() with non-literal "
                                     "stage or names: the catalog cannot be checked")
            for elt in names.elts:
                assert isinstance(elt, ast.Constant), f"{path}:{node.lineno}"
                found.add((stage.value, elt.value))
    return found


def code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in sorted(d.rglob("*.py"))]


def test_catalog_matches_the_counters_the_jobs_register() -> None:
    registered = registered_counters(code_files())
    assert registered, "no counters() call found: the scan is broken"
    assert set(STAGE_COUNTERS) == registered, (
        f"in the code, not the catalog: {sorted(registered - set(STAGE_COUNTERS))}; "
        f"in the catalog, not the code: {sorted(set(STAGE_COUNTERS) - registered)}")


def test_the_scan_sees_a_counter_that_is_not_catalogued(tmp_path: Path) -> None:
    """Negative control: a new counter in job code shows up as missing from the catalog."""
    extra = tmp_path / "new_stage.py"
    extra.write_text('def open(self, ctx):\n'
                     '    self.c = counters(ctx, "score", ("windows", "alerts"))\n')
    registered = registered_counters([*code_files(), extra])
    assert registered - set(STAGE_COUNTERS) == {("score", "windows"), ("score", "alerts")}


def test_counters_are_registered_under_the_group_the_names_assume() -> None:
    """The Prometheus names assume add_group("sluice").add_group(stage).counter(name);
    run sluice.udfs.counters against a recording metric group to see what it really does."""
    from sluice.udfs import counters

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
