"""The job's feature path without a JVM: the spec → Rust mapping, the AggregateFunction
(add, merge, state blobs) and the ProcessWindowFunction's output rules, against the
independent oracle (tests/feature_oracle.py) on generated events."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from sluice.feature_job import (
    DEVICE_ID,
    FeatureAggregate,
    UnsupportedWindowError,
    check_execution_mode,
    field_features,
    field_plans,
    scalar_fields,
)
from sluice.features import parse_feature_spec
from sluice.generator import encode_frame
from sluice.native import FeatureAccumulator
from sluice.native import FeatureSpec as NativeSpec
from tests.feature_oracle import features_close, window_features

SPEC = """
version: 1
windows:
  - name: t
    kind: tumble
    size: 1m
    source: [TELEMETRY, SENSOR_FRAME]
    features:
      - field: temperature_c
        aggs: [count, sum, mean, std, min, max, {ewma: {half_life: 30s}}, slope,
               {quantile: {q: 0.95}}, {quantile: {q: 0.999}}, {quantile: {q: 0.5}}]
      - field: humidity_pct
        aggs: [count, sum, mean, slope]
      - field: frame.samples
        aggs: [rms, peak, crest_factor, kurtosis,
               {band_energy: {bands: [[0, 50], [50, 200.5], [200.5, 600]]}}]
      - field: frame.peak_abs_g
        aggs: [max]
"""


def _events(rng: random.Random, n: int) -> tuple[list[dict], list[tuple]]:
    """Oracle events (dicts) and the decoded tuples the job's windows see, side by side."""
    oracle, job = [], []
    for i in range(n):
        ts = 1_700_000_000_000 + rng.randrange(60_000)
        if rng.random() < 0.3:
            rate = rng.choice([1000, 1200])
            samples = [float(round(rng.gauss(0, 2), 3)) for _ in range(rng.choice([64, 100]))]
            raw = encode_frame("d1", ts, rate, samples)
            f32 = [float(x) for x in __import__("array").array("f", samples)]
            ev = {"device_id": "d1", "ts": ts, "source": "SENSOR_FRAME", "site_id": "s1",
                  "frame": {"sample_rate_hz": rate, "peak_abs_g": max(abs(x) for x in f32),
                            "samples": f32}}
            values = (None, None, max(abs(x) for x in f32))
            job.append((f"e{i}", "d1", "s1", "SENSOR_FRAME", ts, values, raw, "t", 0, i))
        else:
            temp = round(rng.uniform(20, 90), 2)
            hum = round(rng.uniform(20, 80), 1) if rng.random() < 0.7 else None
            ev = {"device_id": "d1", "ts": ts, "source": "TELEMETRY", "site_id": f"s{i % 3}",
                  "temperature_c": temp, "humidity_pct": hum}
            job.append((f"e{i}", "d1", f"s{i % 3}", "TELEMETRY", ts, (temp, hum, None), None, "t", 0, i))
        oracle.append(ev)
    return oracle, job


def _job_features(window, plans, acc) -> dict[str, float]:
    out: dict[str, float] = {}
    for plan, blob in zip(plans, acc[3], strict=True):
        out.update(field_features(plan, FeatureAccumulator.from_bytes(NativeSpec(list(plan.aggs)), blob)))
    return out


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for name, x in want.items():
        assert features_close(name, got[name], x), (name, got[name], x)


@pytest.mark.parametrize("seed", range(5))
def test_aggregate_and_merge_equal_the_oracle(seed: int) -> None:
    spec = parse_feature_spec(SPEC)
    (w,) = spec.windows
    fields = scalar_fields(spec.windows)
    assert fields == ("temperature_c", "humidity_pct", "frame.peak_abs_g")
    plans = field_plans(w, fields)
    rng = random.Random(seed)
    oracle_events, job_events = _events(rng, 60)
    agg = pickle.loads(pickle.dumps(FeatureAggregate(plans)))  # as shipped to a worker
    acc = agg.create_accumulator()
    for e in job_events:
        acc = pickle.loads(pickle.dumps(agg.add(e, acc)))  # as kept in state
    assert acc[0] == len(job_events)
    want = window_features(w, oracle_events)
    _assert_close(_job_features(w, plans, acc), want)
    # merge (session windows): two halves merged equal one pass
    half = len(job_events) // 2
    a, b = agg.create_accumulator(), agg.create_accumulator()
    for e in job_events[:half]:
        a = agg.add(e, a)
    for e in job_events[half:]:
        b = agg.add(e, b)
    merged = agg.merge(a, b)
    assert merged[:3] == acc[:3]
    _assert_close(_job_features(w, plans, merged), want)
    # site of the latest event
    latest = max(oracle_events, key=lambda e: (e["ts"], e["site_id"]))
    assert acc[2] == latest["site_id"]


def test_empty_and_degenerate_fields_follow_the_spec() -> None:
    spec = parse_feature_spec(SPEC)
    (w,) = spec.windows
    fields = scalar_fields(spec.windows)
    plans = field_plans(w, fields)
    agg = FeatureAggregate(plans)
    acc = agg.create_accumulator()
    # one telemetry value without humidity and no frame: humidity count/sum 0, nothing else;
    # slope of one time is 0 (the Rust module says NaN)
    acc = agg.add(("e", "d1", "s", "TELEMETRY", 1000, (5.0, None, None), None, "t", 0, 0), acc)
    ev = {"device_id": "d1", "ts": 1000, "source": "TELEMETRY", "site_id": "s", "temperature_c": 5.0}
    got = _job_features(w, plans, acc)
    _assert_close(got, window_features(w, [ev]))
    assert got["humidity_pct.count"] == 0.0 and "humidity_pct.mean" not in got
    assert got["temperature_c.slope"] == 0.0
    assert not any(k.startswith("frame.samples") for k in got)
    # an all-zero frame: crest factor and kurtosis 0
    raw = encode_frame("d1", 2000, 1000, [0.0] * 8)
    acc = agg.add(("f", "d1", "s", "SENSOR_FRAME", 2000, (None, None, 0.0), raw, "t", 0, 1), acc)
    got = _job_features(w, plans, acc)
    assert got["frame.samples.crest_factor"] == 0.0 and got["frame.samples.kurtosis"] == 0.0
    assert not any(math.isnan(v) for v in got.values())


def test_the_comparison_can_fail() -> None:
    """Negative control: a different event set gives features the check rejects."""
    spec = parse_feature_spec(SPEC)
    (w,) = spec.windows
    plans = field_plans(w, scalar_fields(spec.windows))
    oracle_events, job_events = _events(random.Random(1), 40)
    agg = FeatureAggregate(plans)
    acc = agg.create_accumulator()
    for e in job_events[1:]:
        acc = agg.add(e, acc)
    with pytest.raises(AssertionError):
        _assert_close(_job_features(w, plans, acc), window_features(w, oracle_events))
    assert job_events[0][DEVICE_ID] == "d1"


def test_thread_mode_refuses_session_windows() -> None:
    spec = parse_feature_spec(SPEC + """
  - name: sess
    kind: session
    gap: 30s
    source: SENSOR_FRAME
    features:
      - field: frame.peak_abs_g
        aggs: [max]
""")
    with pytest.raises(UnsupportedWindowError, match="sess need job.python_execution_mode: process"):
        check_execution_mode(spec, "thread")
    check_execution_mode(spec, "process")
    check_execution_mode(parse_feature_spec(SPEC), "thread")  # no session: fine
