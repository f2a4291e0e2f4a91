"""The window-feature oracle (tests/feature_oracle.py) on small cases whose expected numbers
were worked out by hand from the definitions in docs/features.md, not by the oracle."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sluice.config import SluiceConfig
from sluice.features import FeatureSpec, load_feature_spec, parse_feature_spec
from sluice.generator import Frame, Reading, plan
from tests.feature_oracle import LONG_MAX, expected_features, features_close, window_features

REPO = Path(__file__).resolve().parents[2]


def spec_of(windows: str) -> FeatureSpec:
    return parse_feature_spec("version: 1\nwindows:\n" + textwrap.indent(textwrap.dedent(windows), "  "))


def tel(dev: str, ts: int, temp: float | None = None, vib: float | None = None, *,
        site: str | None = "s1", partition: Any = 0) -> dict[str, Any]:
    return {"event_id": f"{dev}@{ts}", "device_id": dev, "ts": ts, "source": "TELEMETRY",
            "temperature_c": temp, "vibration_rms": vib, "humidity_pct": None, "site_id": site,
            "frame": None, "partition": partition}


def frame(dev: str, ts: int, samples: list[float], rate: int = 4) -> dict[str, Any]:
    return {"event_id": f"{dev}/{ts}", "device_id": dev, "ts": ts, "source": "SENSOR_FRAME",
            "temperature_c": None, "vibration_rms": None, "site_id": "s1",
            "frame": {"sample_rate_hz": rate, "n_samples": len(samples),
                      "peak_abs_g": max(abs(x) for x in samples), "mean_g": sum(samples) / len(samples),
                      "samples": samples}}


def approx(d: dict[str, float]) -> Any:
    return pytest.approx(d, rel=1e-12, abs=1e-12)


# --- tumbling -------------------------------------------------------------------------------
TUMBLE = """\
- name: t
  kind: tumble
  size: 10s
  source: TELEMETRY
  features:
    - field: temperature_c
      aggs: [count, sum, mean, std, min, max, {ewma: {half_life: 2s}}, slope, {quantile: {q: 0.5}}]
    - field: humidity_pct
      aggs: [count, sum, mean]
"""


def test_tumbling_windows_by_hand() -> None:
    spec = spec_of(TUMBLE)
    events = [
        tel("d1", 0, 10.0), tel("d1", 2000, 14.0),
        frame("d1", 3000, [1.0]),            # a sensor frame: not a source of this window
        tel("d1", 4000, 18.0), tel("d2", 5000, 7.0),
        tel("d1", 6000, None, site="s2"),    # no temperature: counts as an event, not a value
        tel("d1", 10000, 40.0),              # the next window: [10000, 20000)
    ]
    res = expected_features(events, spec, out_of_orderness_ms=0)
    final = res.final_by_key()
    assert sorted(final) == [("t", "d1", 0, 10000), ("t", "d1", 10000, 20000), ("t", "d2", 0, 10000)]

    v = final[("t", "d1", 0, 10000)]
    assert (v.window_kind, v.event_count, v.site_id) == ("TUMBLE", 4, "s2")  # site of the latest event
    # values 10, 14, 18 at 0, 2, 4 s: mean 14, squared deviations 16 + 0 + 16 → std sqrt(32/3);
    # EWMA weights 0.5^(4/2), 0.5^(2/2), 1 → (2.5 + 7 + 18) / 1.75; slope +4 per 2 s.
    assert v.features == approx({
        "temperature_c.count": 3.0, "temperature_c.sum": 42.0, "temperature_c.mean": 14.0,
        "temperature_c.std": 3.265986323710904, "temperature_c.min": 10.0, "temperature_c.max": 18.0,
        "temperature_c.ewma_2s": 15.714285714285714, "temperature_c.slope": 2.0,
        "temperature_c.p50": 14.0,
        # humidity is null in every event: count and sum are 0, the rest is left out
        "humidity_pct.count": 0.0, "humidity_pct.sum": 0.0,
    })
    # one value: std 0, slope 0 (fewer than two distinct times), every average the value
    assert final[("t", "d2", 0, 10000)].features == approx({
        "temperature_c.count": 1.0, "temperature_c.sum": 7.0, "temperature_c.mean": 7.0,
        "temperature_c.std": 0.0, "temperature_c.min": 7.0, "temperature_c.max": 7.0,
        "temperature_c.ewma_2s": 7.0, "temperature_c.slope": 0.0, "temperature_c.p50": 7.0,
        "humidity_pct.count": 0.0, "humidity_pct.sum": 0.0,
    })
    assert final[("t", "d1", 10000, 20000)].event_count == 1
    # [0, 10000) fired when ts 10000 moved the watermark (bound 0) to 10000 >= 9999
    first = res.emissions[0]
    assert (first.key, first.firing, first.watermark) == (("t", "d1", 0, 10000), "on-time", 10000)
    assert len(res.emissions) == 3 and res.late == {"t": []}
    assert {v.feature_spec_version for v in res.final} == {spec.spec_version()}


def test_negative_timestamps_align_to_the_epoch() -> None:
    res = expected_features([tel("d1", -1, 1.0), tel("d1", -10000, 2.0), tel("d1", -10001, 3.0)],
                            spec_of(TUMBLE), out_of_orderness_ms=60_000)
    assert sorted(v.key[2:] for v in res.final) == [(-20000, -10000), (-10000, 0)]


# --- hop --------------------------------------------------------------------------------------
HOP = """\
- name: h
  kind: hop
  size: 10s
  slide: 5s
  source: TELEMETRY
  features:
    - field: vibration_rms
      aggs: [count, sum]
"""


def test_hop_windows_by_hand() -> None:
    events = [tel("d1", 3000, vib=1.0), tel("d1", 7000, vib=2.0), tel("d1", 12000, vib=4.0)]
    res = expected_features(events, spec_of(HOP), out_of_orderness_ms=60_000)
    # every [s, s + 10 s) with s a multiple of 5 s that holds an event
    assert {v.key[2:]: (v.event_count, v.features["vibration_rms.sum"]) for v in res.final} == {
        (-5000, 5000): (1, 1.0), (0, 10000): (2, 3.0), (5000, 15000): (2, 6.0), (10000, 20000): (1, 4.0),
    }
    assert {v.window_kind for v in res.final} == {"HOP"}


def test_hop_element_late_for_one_window_only_is_not_late() -> None:
    # bound 0: after ts 12000 the watermark is 12000. ts 9000 belongs to [0, 10000), already
    # closed (9999 <= 12000), and to [5000, 15000), still open: it goes there and is not late.
    res = expected_features([tel("d1", 12000, vib=4.0), tel("d1", 9000, vib=2.0)], spec_of(HOP),
                            out_of_orderness_ms=0)
    assert {v.key[2:]: v.features["vibration_rms.sum"] for v in res.final} == {
        (5000, 15000): 6.0, (10000, 20000): 4.0}
    assert res.late == {"h": []}


# --- session ----------------------------------------------------------------------------------
SESSION = """\
- name: s
  kind: session
  gap: 5s
  source: TELEMETRY
  features:
    - field: vibration_rms
      aggs: [count, sum, min, max]
"""


def test_session_merges_by_hand() -> None:
    events = [
        tel("d1", 0, vib=1.0),       # [0, 5000)
        tel("d1", 7000, vib=2.0),    # [7000, 12000): apart
        tel("d1", 20000, vib=3.0),   # [20000, 25000)
        tel("d1", 4000, vib=4.0),    # [4000, 9000) bridges the first two → [0, 12000)
        tel("d1", 1000, vib=0.5),    # [1000, 6000) lies inside [0, 12000)
        tel("d1", 25000, vib=5.0),   # exactly gap after 20000: touching windows merge → [20000, 30000)
        tel("d2", 2000, vib=10.0),   # another key, its own session
        tel("d3", 0, vib=1.0), tel("d3", 5001, vib=1.0),  # gap + 1 apart: two sessions
    ]
    res = expected_features(events, spec_of(SESSION), out_of_orderness_ms=100_000)
    got = {v.key[1:]: (v.event_count, v.features) for v in res.final}
    assert got == {
        ("d1", 0, 12000): (4, approx({"vibration_rms.count": 4.0, "vibration_rms.sum": 7.5,
                                      "vibration_rms.min": 0.5, "vibration_rms.max": 4.0})),
        ("d1", 20000, 30000): (2, approx({"vibration_rms.count": 2.0, "vibration_rms.sum": 8.0,
                                          "vibration_rms.min": 3.0, "vibration_rms.max": 5.0})),
        ("d2", 2000, 7000): (1, approx({"vibration_rms.count": 1.0, "vibration_rms.sum": 10.0,
                                        "vibration_rms.min": 10.0, "vibration_rms.max": 10.0})),
        ("d3", 0, 5000): (1, approx({"vibration_rms.count": 1.0, "vibration_rms.sum": 1.0,
                                     "vibration_rms.min": 1.0, "vibration_rms.max": 1.0})),
        ("d3", 5001, 10001): (1, approx({"vibration_rms.count": 1.0, "vibration_rms.sum": 1.0,
                                         "vibration_rms.min": 1.0, "vibration_rms.max": 1.0})),
    }
    assert {v.window_kind for v in res.final} == {"SESSION"}
    assert len(res.emissions) == 5  # nothing fired before the end of the input


def test_session_late_element_rejoins_a_live_session() -> None:
    # bound 0, lateness 0. ts 5000 and 7000 make the session [5000, 12000); the watermark is 7000.
    # ts 2000 opens [2000, 7000), late on its own (6999 <= 7000), but it touches [5000, 12000)
    # (7000 >= 5000): Flink checks the merged window [2000, 12000), which is not late.
    # d9's ts 20000 closes it; ts 1000 then opens [1000, 6000): late, touching nothing live.
    res = expected_features([tel("d1", 5000, vib=1.0), tel("d1", 7000, vib=1.0),
                             tel("d1", 2000, vib=1.0), tel("d9", 20000, vib=1.0),
                             tel("d1", 1000, vib=1.0)],
                            spec_of(SESSION), out_of_orderness_ms=0)
    d1 = [v.key[1:] + (v.event_count,) for v in res.final if v.device_id == "d1"]
    assert d1 == [("d1", 2000, 12000, 3)]
    assert [e["ts"] for e in res.late["s"]] == [1000]


# --- lateness ---------------------------------------------------------------------------------
LATE = """\
- name: strict
  kind: tumble
  size: 10s
  source: TELEMETRY
  features: [{field: temperature_c, aggs: [count, sum]}]
- name: lenient
  kind: tumble
  size: 10s
  allowed_lateness: 2s
  source: TELEMETRY
  features: [{field: temperature_c, aggs: [count, sum]}]
"""


def test_late_record_by_hand() -> None:
    late_one = tel("d1", 5000, 4.0)
    events = [tel("d1", 1000, 1.0),
              tel("d2", 12000, 2.0),   # watermark 12000 - 1000 = 11000: [0, 10000) fires (9999 <= 11000)
              late_one,                # strict: 9999 + 0 <= 11000, late; lenient: 9999 + 2000 > 11000, kept
              tel("d1", 10500, 8.0)]   # 1.5 s out of order (> bound) but its window is open: not late
    res = expected_features(events, spec_of(LATE), out_of_orderness_ms=1000)
    # the watermark is one for all keys: d2's reading made d1's late
    assert res.late == {"strict": [late_one], "lenient": []}
    final = {(v.window, v.device_id, v.window_start): (v.event_count, v.features["temperature_c.sum"])
             for v in res.final}
    assert final == {
        ("strict", "d1", 0): (1, 1.0), ("strict", "d1", 10000): (1, 8.0),
        ("strict", "d2", 10000): (1, 2.0),
        ("lenient", "d1", 0): (2, 5.0), ("lenient", "d1", 10000): (1, 8.0),
        ("lenient", "d2", 10000): (1, 2.0),
    }
    # lenient [0, 10000) fired on time with one event, then again at once with the late one
    lenient = [(v.firing, v.event_count, v.watermark) for v in res.emissions
               if v.key == ("lenient", "d1", 0, 10000)]
    assert lenient == [("on-time", 1, 11000), ("late", 2, 11000)]
    strict = [(v.firing, v.event_count) for v in res.emissions if v.key == ("strict", "d1", 0, 10000)]
    assert strict == [("on-time", 1)]


@pytest.mark.parametrize(("first_ts", "late"), [(9999, True), (9998, False)])
def test_lateness_boundary(first_ts: int, late: bool) -> None:
    # bound 0, lateness 0: the window [0, 10000) is late once the watermark is >= 9999.
    events = [tel("d1", first_ts, 1.0), tel("d1", 9999, 2.0)]
    res = expected_features(events, spec_of(LATE), out_of_orderness_ms=0)
    assert (len(res.late["strict"]) == 1) is late
    strict = [v for v in res.final if v.window == "strict"]
    assert [v.event_count for v in strict] == [1 if late else 2]


# --- out of order within the bound ------------------------------------------------------------
def test_out_of_order_within_bound_by_hand() -> None:
    events = [tel("d1", 8000, 1.0), tel("d1", 11000, 2.0), tel("d1", 9000, 4.0)]
    # bound 3 s: after ts 11000 the watermark is 8000 < 9999, so ts 9000 still counts
    res = expected_features(events, spec_of(LATE), out_of_orderness_ms=3000)
    strict = {v.window_start: (v.event_count, v.features["temperature_c.sum"])
              for v in res.final if v.window == "strict"}
    assert strict == {0: (2, 5.0), 10000: (1, 2.0)}
    assert res.late["strict"] == []
    # negative control: bound 1 s makes the watermark 10000, and ts 9000 late
    res = expected_features(events, spec_of(LATE), out_of_orderness_ms=1000)
    strict = {v.window_start: (v.event_count, v.features["temperature_c.sum"])
              for v in res.final if v.window == "strict"}
    assert strict == {0: (1, 1.0), 10000: (1, 2.0)}
    assert [e["ts"] for e in res.late["strict"]] == [9000]


def test_shuffled_within_bound_equals_in_order() -> None:
    rng = random.Random(7)
    bound = 2000
    events = [tel(f"d{rng.randrange(3)}", ts, round(rng.uniform(20, 30), 2), round(rng.uniform(0, 2), 3))
              for ts in sorted(rng.sample(range(0, 60_000), 300))]
    # each event arrives up to `bound` ms after its turn: never behind the watermark
    jitter = {id(e): rng.uniform(0, bound) for e in events}
    shuffled = sorted(events, key=lambda e: e["ts"] + jitter[id(e)])
    assert shuffled != events
    spec = spec_of(TUMBLE + HOP + SESSION)
    in_order = expected_features(events, spec, out_of_orderness_ms=bound).final_by_key()
    res = expected_features(shuffled, spec, out_of_orderness_ms=bound)
    assert all(not v for v in res.late.values())
    assert {v.firing for v in res.emissions} == {"on-time"}
    got = res.final_by_key()
    assert got.keys() == in_order.keys()
    for key, v in got.items():
        assert v.event_count == in_order[key].event_count
        assert v.features.keys() == in_order[key].features.keys()
        for name, x in v.features.items():
            assert features_close(name, x, in_order[key].features[name]), (key, name)


def test_watermark_is_the_minimum_over_partitions() -> None:
    # p1 has only reached ts 1000: the watermark stays at 1000 however far p0 goes,
    # so ts 2000 after ts 20000 is on time. Read as one partition, it is late.
    events = [tel("d1", 1000, 1.0, partition=1), tel("d1", 20000, 2.0, partition=0),
              tel("d1", 2000, 4.0, partition=0)]
    two = expected_features(events, spec_of(LATE), out_of_orderness_ms=0)
    assert two.late["strict"] == []
    assert {v.window_start: v.event_count for v in two.final if v.window == "strict"} == {0: 2, 20000: 1}
    one = [{**e, "partition": 0} for e in events]
    late = expected_features(one, spec_of(LATE), out_of_orderness_ms=0).late["strict"]
    assert [e["ts"] for e in late] == [2000]
    # a partition that never delivers holds the watermark at Long.MIN_VALUE
    silent = expected_features(one, spec_of(LATE), out_of_orderness_ms=0, partitions=[0, 1])
    assert silent.late["strict"] == []


def test_without_end_of_input_open_windows_stay_open() -> None:
    # watermark 11000: strict [0, 10000) is done; lenient keeps it until 9999 + 2000
    res = expected_features([tel("d1", 1000, 1.0), tel("d1", 11000, 2.0)], spec_of(LATE),
                            out_of_orderness_ms=0, end_of_input=False)
    assert {v.key for v in res.final} == {("strict", "d1", 0, 10000)}
    assert {v.key for v in res.open} == {("strict", "d1", 10000, 20000), ("lenient", "d1", 0, 10000),
                                         ("lenient", "d1", 10000, 20000)}
    assert LONG_MAX == 2**63 - 1


# --- waveform aggregations --------------------------------------------------------------------
WAVE = """\
- name: w
  kind: session
  gap: 1s
  source: SENSOR_FRAME
  features:
    - field: frame.samples
      aggs: [rms, peak, crest_factor, kurtosis, {band_energy: {bands: [[0, 1.5], [1.5, 3]]}}]
    - field: frame.peak_abs_g
      aggs: [max]
"""


def test_waveform_features_by_hand() -> None:
    # 4 Hz frames of 4 samples: one-sided bins at 0, 1 and 2 Hz.
    # Band power c_k |X_k|^2 / N^2 (c = 1 at DC and Nyquist, else 2):
    # [1,-1,1,-1]: all at 2 Hz (Nyquist), 16/16 = 1.  [3,0,-3,0]: all at 1 Hz, 2 * 36/16 = 4.5;
    # each frame's bands add up to its mean square (1 and 4.5).
    # Pooled samples 1,-1,1,-1,3,0,-3,0: mean 0, mean square 22/8 = 2.75, 4th moment 166/8 = 20.75.
    events = [frame("d1", 0, [1.0, -1.0, 1.0, -1.0]), frame("d1", 500, [3.0, 0.0, -3.0, 0.0])]
    (v,) = expected_features(events, spec_of(WAVE), out_of_orderness_ms=0).final
    assert (v.window_start, v.window_end, v.event_count) == (0, 1500, 2)
    assert v.features == approx({
        "frame.samples.rms": math.sqrt(2.75),
        "frame.samples.peak": 3.0,
        "frame.samples.crest_factor": 3.0 / math.sqrt(2.75),
        "frame.samples.kurtosis": 20.75 / 2.75**2,
        # averaged over the 2 frames, weighted by their sample counts (equal here)
        "frame.samples.band_energy_0_1.5hz": (0.0 + 4.5) / 2,
        "frame.samples.band_energy_1.5_3hz": (1.0 + 0.0) / 2,
        "frame.peak_abs_g.max": 3.0,
    })


def test_degenerate_waveform_is_zero() -> None:
    (v,) = expected_features([frame("d1", 0, [0.0, 0.0])], spec_of(WAVE), out_of_orderness_ms=0).final
    assert v.features["frame.samples.crest_factor"] == 0.0
    assert v.features["frame.samples.kurtosis"] == 0.0


@pytest.mark.parametrize(("q", "expected"), [(0.5, 5.0), (0.95, 9.0), (0.1, 1.0), (0.99, 9.0)])
def test_quantile_is_the_lower_order_statistic(q: float, expected: float) -> None:
    # 1..10 sorted; index floor(q * 9): 0.5 → 4 → 5; 0.95 → 8 → 9; 0.1 → 0 → 1; 0.99 → 8 → 9
    spec = spec_of(TUMBLE.replace("q: 0.5", f"q: {q}"))
    events = [tel("d1", i * 100, float(x)) for i, x in enumerate([7, 3, 10, 1, 5, 9, 2, 8, 4, 6])]
    feats = window_features(spec.windows[0], events)
    name = spec.windows[0].feature_names()[8]
    assert feats[name] == expected


def test_slope_of_equal_times_is_zero() -> None:
    spec = spec_of(TUMBLE)
    feats = window_features(spec.windows[0], [tel("d1", 1000, 1.0), tel("d1", 1000, 5.0)])
    assert feats["temperature_c.slope"] == 0.0
    feats = window_features(spec.windows[0], [tel("d1", 1000, 1.0), tel("d1", 1500, 5.0)])
    assert feats["temperature_c.slope"] == pytest.approx(8.0)  # +4 in 0.5 s


def test_tolerances() -> None:
    assert features_close("temperature_c.p95", 100.9, 100.0)
    assert not features_close("temperature_c.p95", 101.1, 100.0)
    assert features_close("vibration_rms.p99.9", 99.5, 100.0)
    assert not features_close("vibration_rms.p99.9", 98.9, 100.0)
    assert not features_close("temperature_c.mean", 100.000001, 100.0)
    assert features_close("temperature_c.mean", 100.0 * (1 + 1e-12), 100.0)


# --- the demo's spec on the generator's events ------------------------------------------------
def _canonical(item: Reading | Frame) -> dict[str, Any]:
    if isinstance(item, Reading):
        return {"device_id": item.device_id, "ts": item.ts, "source": "TELEMETRY", "site_id": None,
                "temperature_c": item.temperature_c, "vibration_rms": item.vibration_rms,
                "humidity_pct": item.humidity_pct, "frame": None}
    return {"device_id": item.device_id, "ts": item.ts, "source": "SENSOR_FRAME", "site_id": None,
            "vibration_rms": math.sqrt(sum(x * x for x in item.samples) / len(item.samples)),
            "frame": {"sample_rate_hz": item.sample_rate_hz, "n_samples": len(item.samples),
                      "peak_abs_g": max(abs(x) for x in item.samples),
                      "mean_g": sum(item.samples) / len(item.samples), "samples": list(item.samples)}}


def test_demo_spec_on_generated_events_accounts_for_every_event() -> None:
    cfg = SluiceConfig().with_overrides(generator={"records": 1500, "devices": 5})
    items = [i for i in plan(cfg, start_ms=1_700_000_000_000, step_ms=200.0)
             if isinstance(i, Reading | Frame)]
    events = [_canonical(i) for i in items]
    spec = load_feature_spec(REPO / "features.yaml")
    res = expected_features(events, spec, out_of_orderness_ms=cfg.window.out_of_orderness_ms)
    assert all(not v for v in res.late.values())  # generated in event-time order
    n_tel = sum(e["source"] == "TELEMETRY" for e in events)
    n_frames = len(events) - n_tel
    by_window: dict[str, list] = {}
    for v in res.final:
        by_window.setdefault(v.window, []).append(v)
    # tumbling: each reading in exactly one window; hop 5m/1m: each event in exactly 5
    assert sum(v.event_count for v in by_window["temp_1m"]) == n_tel
    assert sum(v.event_count for v in by_window["vib_5m"]) == 5 * len(events)
    assert sum(v.event_count for v in by_window["vib_session"]) == n_frames
    for v in by_window["vib_session"]:
        assert set(v.features) == set(spec.window("vib_session").feature_names())
        assert v.features["frame.samples.peak"] == pytest.approx(v.features["frame.peak_abs_g.max"])
        assert v.features["frame.samples.crest_factor"] >= 1.0
    for v in by_window["temp_1m"]:
        f = v.features
        assert f["temperature_c.min"] <= f["temperature_c.p95"] <= f["temperature_c.max"]
        assert f["temperature_c.min"] <= f["temperature_c.ewma_30s"] <= f["temperature_c.max"]


def test_oracle_does_not_import_the_native_module() -> None:
    code = ("import sys; import tests.feature_oracle; "
            "assert 'sluice._native' not in sys.modules, 'imports the Rust module'; "
            "assert 'sluice.native' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
