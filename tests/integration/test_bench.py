"""Smoke test of the `sluice bench` harness (sluice/bench.py) on a tiny input: one Flink
variant and the raw-consume limit, every record counted, results.json shaped as the
docs say. The measurements themselves are not asserted (bench numbers are not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.bench import bench_config, run, run_kafka_limit
from sluice.config import SluiceConfig

pytestmark = pytest.mark.integration


def test_bench_harness_counts_every_record(stack: SluiceConfig, tmp_path: Path) -> None:
    res = run(stack, records=300, names=["rust_eo", "kafka"], out_dir=tmp_path, say=print)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"] == 300
    for name in ("rust_eo", "kafka"):
        v = saved["variants"][name]
        assert v["records_out"] == 300 and v["counts_match"], v
        assert v["events_per_s"] > 0
    eo = saved["variants"]["rust_eo"]
    assert eo["latency_ms"]["p50"] is not None and eo["cpu_seconds"] > 0
    assert set(saved["ratios"]) == {"rust_vs_kafka_limit"}
    assert saved["micro"]["calls"]["avro/decode_resolve_v1_to_v3"]["pyo3_ns"] > 0
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert res["ratios"] == saved["ratios"]

    # Negative control: the count check fails when records are missing (here: more are
    # expected than the input topic holds).
    base = bench_config(stack, 300, "unused", tmp_path).with_overrides(
        topics={"telemetry": saved["input_topic"]})
    short = run_kafka_limit(base, 310, timeout_s=3)
    assert short["records_out"] == 300 and not short["counts_match"]
