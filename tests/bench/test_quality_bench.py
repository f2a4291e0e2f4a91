"""Data-quality micro-benchmark: per-record cost of the Rust checks vs
great-expectations validating the same batch (same suite, same rows, one run).
`make bench` runs it; results go to out/bench/quality.json.

Absolute numbers drift on a shared 2-core machine; quote the ratios of one run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from sluice.config import REPO_ROOT, load_config
from sluice.generator import Reading, plan
from sluice.quality import (
    COLUMNS,
    compile_suite,
    load_suite,
    run_great_expectations,
    suite_path,
    to_dataframe,
)

pytestmark = pytest.mark.bench

SUITES = REPO_ROOT / "schemas" / "expectations"
OUT = REPO_ROOT / "out" / "bench"
N = 20_000


def _best(fn: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_quality_checks_rust_vs_great_expectations() -> None:
    cfg = load_config(REPO_ROOT / "sluice.yaml", env={}).with_overrides(generator={"records": N})
    rows = [
        (r.event_id, r.device_id, r.ts, r.temperature_c, r.vibration_rms, r.status, r.humidity_pct,
         r.firmware, r.sample_count)
        for r in plan(cfg, start_ms=1_700_000_000_000, step_ms=10)
        if isinstance(r, Reading)
    ]
    n = len(rows)
    suite = load_suite(suite_path(SUITES, "telemetry"))
    # The per-record expectations only, so both sides evaluate the same checks.
    per_record = {**suite, "expectations": [
        e for e in suite["expectations"] if e["type"] not in (
            "expect_column_values_to_be_unique", "expect_column_mean_to_be_between")]}
    checker = compile_suite(suite_path(SUITES, "telemetry"), COLUMNS["telemetry"])
    n_exp = len(checker.names)
    assert n_exp == len(per_record["expectations"])

    check = checker.check

    def rust() -> None:
        for row in rows:
            check(row)

    def noop() -> None:  # the Python loop alone, to separate the call overhead
        for row in rows:
            len(row)

    t0 = time.perf_counter()
    run_great_expectations(per_record, to_dataframe(rows[:10], COLUMNS["telemetry"]))  # import + context
    ge_cold = time.perf_counter() - t0

    def ge_only() -> None:
        run_great_expectations(per_record, df, "SUMMARY")

    def ge_with_frame() -> None:
        run_great_expectations(per_record, to_dataframe(rows, COLUMNS["telemetry"]), "SUMMARY")

    df = to_dataframe(rows, COLUMNS["telemetry"])
    results = {
        "records": n,
        "per_record_expectations": n_exp,
        "rust_us_per_record": _best(rust, 5) / n * 1e6,
        "python_loop_us_per_record": _best(noop, 5) / n * 1e6,
        "ge_validate_us_per_record": _best(ge_only, 3) / n * 1e6,
        "ge_frame_and_validate_us_per_record": _best(ge_with_frame, 3) / n * 1e6,
        "ge_first_call_s": ge_cold,
    }
    results["ratio_ge_vs_rust"] = results["ge_validate_us_per_record"] / results["rust_us_per_record"]
    print()
    print(f"telemetry suite, {n} records, {n_exp} per-record expectations (best of 5 / 3)")
    print(f"{'path':44} {'µs/record':>10}")
    for k, label in [
        ("rust_us_per_record", "Rust QualityChecker.check (from Python)"),
        ("python_loop_us_per_record", "  of which the bare Python loop"),
        ("ge_validate_us_per_record", "great-expectations validate (DataFrame)"),
        ("ge_frame_and_validate_us_per_record", "great-expectations incl. building the frame"),
    ]:
        print(f"{label:44} {results[k]:10.3f}")
    print(f"great-expectations / Rust: {results['ratio_ge_vs_rust']:.0f}x; "
          f"GE first call (import + context): {ge_cold:.1f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    assert results["rust_us_per_record"] < results["ge_frame_and_validate_us_per_record"]
