"""The paced half of `sluice bench` (sluice/bench.py): the send schedule, how a paced run's
latency is judged against issue 7's targets (with misses that must be reported as misses),
the profile each paced variant runs under, and the one ratio table. No stack, no JVM."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sluice.bench import (
    PACED,
    RATIOS,
    chart,
    efficiency_ratios,
    latency_target_ms,
    paced_config,
    paced_figures,
    paced_rate,
    ratio_table,
    ratios,
)
from sluice.config import REPO_ROOT, SluiceConfig, load_config
from sluice.generator import Pacer


@pytest.fixture(scope="module")
def cfg() -> SluiceConfig:
    return load_config(REPO_ROOT / "sluice.yaml", env={})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


# ------------------------------------------------------------------------- pacing
def test_pacer_sends_item_n_at_t0_plus_n_over_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(200.0, clock=clock, sleep=clock.sleep)
    sent_at = []
    for n in range(5):
        pacer.wait(n)
        sent_at.append(clock.now)
        clock.now += 0.001  # the send itself takes 1 ms
    assert sent_at == pytest.approx([100.0, 100.005, 100.010, 100.015, 100.020])
    assert pacer.due(400) == pytest.approx(102.0)


def test_pacer_behind_schedule_catches_up_without_sleeping() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock=clock, sleep=clock.sleep)
    clock.now += 0.5  # a stall of half a second: items 0-50 are all due
    for n in range(51):
        pacer.wait(n)
    assert clock.sleeps == []
    pacer.wait(60)  # due at t0 + 0.6: 0.1 s ahead
    assert clock.sleeps == [pytest.approx(0.1)]


def test_pacer_without_a_rate_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(0, clock=clock, sleep=clock.sleep)
    for n in range(1000):
        pacer.wait(n)
    assert clock.sleeps == []


# ------------------------------------------------------------------ paced figures
def _run(cfg: SluiceConfig, name: str, latencies: list[float], *, drop: int = 0,
         dup: int = 0, warmup: int = 3) -> dict:
    """A paced run's figures: record i sent at 1000 + 10 i, received ``latencies[i]`` ms
    later, its processed_at halfway; ``drop`` records never arrive, ``dup`` arrive twice,
    and ``warmup`` earlier records (not in ``sent``) arrive too."""
    p = PACED[name]
    pcfg = paced_config(cfg, p, "t")
    sent = {f"e{i}": 1000 + 10 * i for i in range(len(latencies))}
    received = [(500.0 + i, f"w{i}", 500 + i, 500 + i) for i in range(warmup)]
    for i, lat in enumerate(latencies[drop:], start=drop):
        ts = sent[f"e{i}"]
        received.append((ts + lat, f"e{i}", ts, int(ts + lat / 2)))
    received += received[-dup:] if dup else []
    return paced_figures(p, pcfg, 100.0, sent, received)


def test_a_run_within_its_target_meets_it(cfg: SluiceConfig) -> None:
    f = _run(cfg, "paced_low_latency", [10.0 + i % 50 for i in range(1000)])
    assert f["delivery_guarantee"] == "at-least-once" and f["target_p99_ms"] == 100
    assert (f["records_in"], f["records_out"], f["missing"], f["duplicates"]) == (1000, 1000, 0, 0)
    assert f["counts_match"] and f["meets_target"]
    assert f["latency_ms"]["p50"] == pytest.approx(35, abs=1)
    assert f["latency_ms"]["p99"] == pytest.approx(59, abs=1)
    assert f["latency_ms"]["max"] == 59
    assert f["latency_breakdown_ms"]["send_to_processed_at"]["p99"] == pytest.approx(29, abs=1)
    assert f["events_per_s"] == pytest.approx(100, rel=0.01)  # 1000 sends 10 ms apart


def test_negative_control_a_slow_tail_is_a_miss(cfg: SluiceConfig) -> None:
    # 2 % of the records take 150 ms: the p99 is over the 100 ms target.
    lat = [20.0] * 980 + [150.0] * 20
    f = _run(cfg, "paced_low_latency", lat)
    assert f["counts_match"] and f["latency_ms"]["p99"] == 150
    assert not f["meets_target"]


def test_negative_control_a_missing_record_is_a_miss_however_fast(cfg: SluiceConfig) -> None:
    f = _run(cfg, "paced_low_latency", [5.0] * 1000, drop=1)
    assert f["missing"] == 1 and f["records_out"] == 999
    assert not f["counts_match"] and not f["meets_target"]


def test_duplicates_fail_exactly_once_only(cfg: SluiceConfig) -> None:
    alo = _run(cfg, "paced_low_latency", [5.0] * 100, dup=3)
    eo = _run(cfg, "paced_throughput", [5.0] * 100, dup=3)
    assert alo["duplicates"] == eo["duplicates"] == 3
    assert alo["counts_match"] and not eo["counts_match"]
    # Warm-up records are not measured: 100 in, 100 out.
    assert alo["records_out"] == 100


def test_latency_targets_follow_the_delivery_guarantee(cfg: SluiceConfig) -> None:
    low = paced_config(cfg, PACED["paced_low_latency"], "t")
    thr = paced_config(cfg, PACED["paced_throughput"], "t")
    assert latency_target_ms(low) == 100
    assert thr.job.delivery_guarantee == "exactly-once"
    assert latency_target_ms(thr) == thr.checkpoint.interval_ms + 250 == 10_250


def test_paced_config_runs_the_profile_unbounded_on_its_own_topic(cfg: SluiceConfig) -> None:
    low = paced_config(cfg.with_overrides(job={"bounded": True}), PACED["paced_low_latency"], "t")
    # A copied config has every key set, so the profile's sluice defaults must be applied
    # explicitly (with_overrides alone would leave exactly-once and the 5 ms bundle out).
    assert low.job.profile == "low-latency" and low.job.delivery_guarantee == "at-least-once"
    assert low.checkpoint.interval_ms == 5000 and low.job.python_bundle_time_ms == 5
    assert not low.job.bounded and low.job.startup_mode == "earliest"
    assert low.topics.telemetry == "t.paced_low_latency.telemetry"
    assert low.topics.enriched == "t.paced_low_latency.enriched"
    assert low.job.transactional_id_prefix == "sluice-t.paced_low_latency"
    thr = paced_config(cfg, PACED["paced_throughput"], "t")
    assert thr.job.python_bundle_time_ms == 1000 and thr.checkpoint.interval_ms == 10_000


def test_paced_rate_is_half_of_rust_eo_or_the_given_one() -> None:
    assert paced_rate({"rust_eo": {"events_per_s": 4000.0}}, None) == 2000
    assert paced_rate({"rust_eo": {"events_per_s": 4000.0}}, 300) == 300
    with pytest.raises(ValueError, match="rust_eo"):
        paced_rate({"python": {"events_per_s": 4000.0}}, None)
    with pytest.raises(ValueError, match="above 0"):
        paced_rate({}, 0)


# ---------------------------------------------------------------------- the table
def test_ratios_come_from_the_one_table() -> None:
    vs = {"rust_eo": {"events_per_s": 100.0, "events_per_cpu_s": 50.0},
          "python": {"events_per_s": 50.0, "events_per_cpu_s": 10.0},
          "rust_thread": {"events_per_s": 80.0, "events_per_cpu_s": None},
          "kafka": {"events_per_s": 0.0, "events_per_cpu_s": None}}
    assert ratios(vs) == {"rust_vs_python": 2.0, "thread_vs_process": 0.8}
    assert efficiency_ratios(vs) == {"rust_vs_python": 5.0}
    # Every ratio the issue names is in the table.
    assert {"rust_vs_python", "rust_vs_sql", "eo_vs_alo", "rust_vs_kafka_limit"} <= set(RATIOS)


def _variant(eps: float, **extra: object) -> dict:
    return {"label": "x", "events_per_s": eps, "events_per_cpu_s": eps / 2,
            "latency_ms": {"p50": 10.0, "p99": 20.0}, "checkpoint_ms": {"p50": None, "count": 0},
            **extra}


def test_table_and_chart_show_paced_runs_against_their_targets(cfg: SluiceConfig,
                                                              tmp_path: Path) -> None:
    slow = _run(cfg, "paced_low_latency", [300.0] * 100)  # a lower step, over its target
    ok = _run(cfg, "paced_low_latency", [10.0] * 200)
    ok["steps"] = [{**st, "events_per_cpu_s": 5.0} for st in (slow, ok)]
    missed = _run(cfg, "paced_throughput", [10.0] * 200, drop=5)
    results = {"records": 10, "variants": {
        "rust_eo": _variant(100.0), "rust_thread": _variant(80.0),
        "paced_low_latency": {**ok, "events_per_cpu_s": 10.0, "checkpoint_ms": {"p50": None, "count": 0}},
        "paced_throughput": {**missed, "events_per_cpu_s": 10.0, "job_restarts": 1,
                             "checkpoint_ms": {"p50": 300.0, "count": 2}}}}
    results["ratios"] = ratios(results["variants"])
    results["targets"] = {}
    out = io.StringIO()
    Console(file=out, width=250).print(ratio_table(results))
    text = out.getvalue()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    assert "p99 ≤ 100 ms ✓" in rows["paced_low_latency"]
    assert "p99 ≤ 100 ms ✗" in rows["paced_low_latency @ 100/s"]  # the step's own verdict
    assert "p99 ≤ 10,250 ms ✗" in rows["paced_throughput"]
    assert "195/200 out, 1 job restart" in rows["paced_throughput"]
    assert "rust_thread ÷ (a) = 0.80" in rows["rust_thread"]
    png = chart(results, tmp_path / "r.png")
    assert png.stat().st_size > 10_000


def test_a_paced_only_chart_has_only_the_latency_panel(cfg: SluiceConfig, tmp_path: Path) -> None:
    import matplotlib.image

    paced = {**_run(cfg, "paced_low_latency", [10.0] * 50), "events_per_cpu_s": 1.0}
    only = chart({"records": 1, "variants": {"paced_low_latency": paced}}, tmp_path / "a.png")
    both = chart({"records": 1, "variants": {"paced_low_latency": paced,
                                             "rust_eo": _variant(100.0)}}, tmp_path / "b.png")
    w_only = matplotlib.image.imread(str(only)).shape[1]
    w_both = matplotlib.image.imread(str(both)).shape[1]
    assert w_both == 3 * w_only  # one 6-inch panel, or three
