"""sluice report: cost arithmetic, alert thresholds, /proc sampling and the page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sluice.config import PricesConfig, SluiceConfig
from sluice.report import (
    Cost,
    check_thresholds,
    cost_of,
    emit_alerts,
    parse_time,
    stage_latencies,
    tables,
    usage,
    write_html,
)


def test_cost_arithmetic() -> None:
    prices = PricesConfig(cpu_per_hour=0.036, memory_gb_per_hour=0.0036)
    # 2 million events that took 360 CPU-seconds and 7200 GB-seconds (2 GB for an hour)
    c = cost_of(2_000_000, 360.0, 7200.0, prices)
    assert c.cpu_cost == pytest.approx(360 / 3600 * 0.036)          # 0.0036
    assert c.memory_cost == pytest.approx(2 * 0.0036)               # 0.0072
    assert c.total == pytest.approx(0.0108)
    assert c.per_million == pytest.approx(0.0054)
    assert c.cpu_seconds_per_million == pytest.approx(180.0)
    assert c.to_dict()["per_million"] == pytest.approx(0.0054)
    # Twice the events for the same resources: half the unit cost.
    assert cost_of(4_000_000, 360.0, 7200.0, prices).per_million == pytest.approx(0.0027)
    assert cost_of(0, 1.0, 1.0, prices).per_million is None
    with pytest.raises(ValueError):
        cost_of(1, -1.0, 0.0, prices)


def _cfg(tmp_path: Path, **report: object) -> SluiceConfig:
    return SluiceConfig(base_dir=tmp_path, report={"alerts_file": "alerts.jsonl", **report})


def _cost(per_million: float) -> Cost:
    # 1e6 events costing `per_million` in CPU only
    return Cost(1_000_000, 1.0, 0.0, per_million, 0.0, "USD")


def test_thresholds_raise_events_when_crossed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, lag_records_max=1000, cost_per_million_max=0.5)
    alerts = check_thresholds(cfg, lag_records=1001, cost=_cost(0.75))
    assert [(a.kind, a.value, a.threshold) for a in alerts] == [("lag", 1001, 1000), ("cost", 0.75, 0.5)]
    path = emit_alerts(cfg, alerts)
    assert path == tmp_path / "alerts.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["lag", "cost"]
    assert lines[0]["job"] == cfg.job.name and "report.lag_records_max" in lines[0]["message"]


def test_thresholds_negative_control(tmp_path: Path) -> None:
    """At or below the thresholds, or with them switched off: no event, no file."""
    cfg = _cfg(tmp_path, lag_records_max=1000, cost_per_million_max=0.5)
    assert check_thresholds(cfg, lag_records=1000, cost=_cost(0.5)) == []
    assert check_thresholds(cfg, lag_records=None, cost=None) == []
    off = _cfg(tmp_path, lag_records_max=None, cost_per_million_max=None)
    assert check_thresholds(off, lag_records=10**9, cost=_cost(10**6)) == []
    assert emit_alerts(cfg, []) is None
    assert not (tmp_path / "alerts.jsonl").exists()


def test_usage_counts_a_child_process_cpu() -> None:
    """CPU-seconds come from /proc for the process and its descendants."""
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        import os

        before = usage([os.getpid()])
        time.sleep(1.5)
        after = usage([os.getpid()])
        assert after.processes >= 2  # this test's process + the child
        assert after.cpu_seconds - before.cpu_seconds >= 0.4
        assert after.rss_bytes > 10_000_000
        # Negative control: a process that does not exist has no usage.
        assert usage([2**22 + 7]).processes == 0
    finally:
        child.kill()
        child.wait()


def test_parse_time() -> None:
    now = 1_700_000_000_000
    assert parse_time("15m", now) == now - 900_000
    assert parse_time("30s", now) == now - 30_000
    assert parse_time("1700000000000", now) == now
    assert parse_time("2023-11-14T22:13:20", now) == now
    assert parse_time(None, now) is None


def test_stage_latencies_from_rest_metrics() -> None:
    m = {"ingest.decode_us_p50": {"sum": 9, "max": 5}, "ingest.decode_us_p99": {"sum": 40, "max": 30},
         "ingest.decode_us_count": {"sum": 100, "max": 60}, "ingest.records_in": {"sum": 7, "max": 7}}
    assert stage_latencies(m) == [{"stage": "ingest", "name": "decode_us", "p50": 5, "p99": 30,
                                   "count": 100}]


def sample_report() -> dict:
    return {
        "job": "j", "job_id": "abc", "job_state": "RUNNING", "profile": "default",
        "delivery_guarantee": "exactly-once", "generated_at_ms": 1_700_000_000_000, "notes": [],
        "throughput": [{"topic": "telemetry", "partition": p, "records": 100 * (p + 1),
                        "per_s": 10.0 * (p + 1), "input": True} for p in range(2)],
        "lag": {"series": [{"t_s": t, "lag": {"telemetry-0": 5 * t, "telemetry-1": 3}} for t in range(4)],
                "latest": {"telemetry-0": 15, "telemetry-1": 3}, "total": 18},
        "latency_records": {"event → ingest": {"p50": 20.0, "p95": 40.0, "p99": 90.0, "max": 120.0, "n": 50},
                            "vector → sink": None},
        "latency_stages": [{"stage": "ingest", "name": "decode_us", "p50": 5, "p95": 9, "p99": 30,
                            "max": 31, "count": 100}],
        "checkpoints": [{"id": i, "status": "COMPLETED", "trigger_ms": 0, "duration_ms": 100 + i,
                         "state_bytes": 1000} for i in range(1, 6)],
        "dead_letters": {"records": 3, "input_records": 300, "rate": 0.01, "sampled": 3,
                         "by_reason": {"undecodable": 2, "quality": 1}, "quality_blocked_rate": 1 / 300,
                         "quality_warned_rate": 0.0},
        "resources": {"processes": 3, "pids": [1], "window_s": 10.0, "cpu_seconds": 4.0,
                      "rss_gb_mean": 1.5, "events": 2000},
        "cost": cost_of(2000, 4.0, 15.0, PricesConfig()).to_dict(),
        "alerts": [{"kind": "lag", "message": "lag <high>", "value": 18, "threshold": 1,
                    "job": "j", "at_ms": 0}],
        "stage_metrics": {},
    }


def test_page_is_self_contained_with_one_chart_per_section(tmp_path: Path) -> None:
    page = write_html(sample_report(), tmp_path / "r.html").read_text()
    assert page.count("<svg") == 6  # throughput, lag, latency, checkpoints, DLQ, cost
    # Nothing to load: no script, no stylesheet link, no external src/href (offline page;
    # SVG namespace declarations are names, not fetched).
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "lag &lt;high&gt;" in page  # escaped
    rep = sample_report()
    rep["checkpoints"], rep["cost"] = [], None
    page = write_html(rep, tmp_path / "r2.html").read_text()
    assert page.count("<svg") == 4 and page.count("no data for a chart") == 2
    assert tables(rep)["cost"][1][0] == ["processes measured", "3"]
