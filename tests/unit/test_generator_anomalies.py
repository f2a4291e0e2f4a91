"""Labelled anomalies of the generator (generator.anomalies; docs/evaluation.md): off by
default with the plan unchanged byte for byte, and when on, every label matches what was
injected and nothing outside the labels changed."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from sluice.config import AnomalyConfig, ConfigError, SluiceConfig
from sluice.generator import (
    ANOMALY_KINDS,
    BEARING_HARMONICS,
    Anomaly,
    Corrupt,
    Frame,
    Reading,
    plan,
    plan_with_labels,
    restamp_labels,
)

START = 1_700_000_000_000

# sha256 of repr(plan(...)) computed on the commit before anomalies existed (bdd58ff): the
# default plan must stay exactly what every oracle and test was written against.
DIGEST_BEFORE = {
    (): "0e6abd6c33cc10bb277ce21275c02326af3a2634d896cfe0717940e934fd128c",
    (("records", 3000), ("devices", 7), ("seed", 5)):
        "27d1b140ffff7ce35a9469f77ede325bde039f6958c8599ab6504390f9fe54b4",
}


def _digest(items: list) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()


@pytest.mark.parametrize("overrides", list(DIGEST_BEFORE))
def test_default_plan_is_byte_identical_to_before(overrides: tuple) -> None:
    cfg = SluiceConfig().with_overrides(generator=dict(overrides)) if overrides else SluiceConfig()
    assert cfg.generator.anomalies is None
    items = plan(cfg, start_ms=START, step_ms=2.5)
    assert _digest(items) == DIGEST_BEFORE[overrides]
    items2, labels = plan_with_labels(cfg, start_ms=START, step_ms=2.5)
    assert labels == [] and _digest(items2) == DIGEST_BEFORE[overrides]
    # Negative control: the digest does see anomalies (the check can fail). At 2.5 ms per
    # record the plan spans seconds, too short for any anomaly: stretch it to hours.
    on = cfg.with_overrides(generator={"anomalies": {"rate": 2}})
    _, labels = plan_with_labels(on, start_ms=START, step_ms=2_000)
    assert labels
    stretched = _digest(plan(cfg, start_ms=START, step_ms=2_000))
    assert _digest(plan(on, start_ms=START, step_ms=2_000)) != stretched


def _streams(seed: int = 3, rate: float = 1.5) -> tuple[list, list, list[Anomaly]]:
    """The same plan without and with anomalies: 2 h of event time, 8 devices."""
    base = SluiceConfig().with_overrides(generator={"records": 16_000, "devices": 8, "seed": 11})
    step = 2 * 3_600_000 / 17_920
    clean = plan(base, start_ms=START, step_ms=step)
    on = base.with_overrides(generator={"anomalies": {"rate": rate, "seed": seed}})
    items, labels = plan_with_labels(on, start_ms=START, step_ms=step)
    return clean, items, labels


@pytest.fixture(scope="module")
def streams() -> tuple[list, list, list[Anomaly]]:
    return _streams()


def _in(a: Anomaly, item) -> bool:
    return item.device_id == a.device_id and a.start_ts <= item.ts <= a.end_ts


def test_every_kind_is_labelled_within_the_plan(streams) -> None:
    clean, items, labels = streams
    kinds = Counter(a.kind for a in labels)
    assert set(kinds) == set(ANOMALY_KINDS), kinds
    # The kinds take turns: counts differ by at most one (plus ones that found no room).
    assert max(kinds.values()) - min(kinds.values()) <= 2
    first, last = items[0].ts, items[-1].ts
    for a in labels:
        assert first < a.start_ts < a.end_ts <= last
        assert a.records == sum(1 for i in items if isinstance(i, Reading | Frame) and _in(a, i)
                                and (a.kind == "bearing" or isinstance(i, Reading)))
    # Labels of one device keep min_gap_ms apart.
    gap = AnomalyConfig().min_gap_ms
    by_dev: dict[str, list[Anomaly]] = {}
    for a in labels:
        by_dev.setdefault(a.device_id, []).append(a)
    for anoms in by_dev.values():
        anoms.sort(key=lambda a: a.start_ts)
        for x, y in zip(anoms, anoms[1:], strict=False):
            assert y.start_ts > x.end_ts + gap


def test_nothing_changes_outside_the_labels(streams) -> None:
    clean, items, labels = streams
    assert len(clean) == len(items)
    changed = 0
    for c, x in zip(clean, items, strict=True):
        if isinstance(c, Corrupt):
            continue  # a duplicate-event-id repeats a reading, which an anomaly may change
        if c != x:
            changed += 1
            assert any(_in(a, x) for a in labels), (c, x)
        assert (c.device_id, c.ts) == (x.device_id, x.ts)
    assert changed == sum(a.records for a in labels)


def _pairs(clean: list, items: list, a: Anomaly, kind: type) -> list[tuple]:
    return [(c, x) for c, x in zip(clean, items, strict=True) if isinstance(x, kind) and _in(a, x)]


def test_spikes_exceed_the_baseline(streams) -> None:
    clean, items, labels = streams
    spikes = [a for a in labels if a.kind == "spike"]
    assert spikes
    for a in spikes:
        pairs = _pairs(clean, items, a, Reading)
        assert pairs and 15 <= a.magnitude <= 30
        for c, x in pairs:
            assert x.temperature_c - c.temperature_c == pytest.approx(a.magnitude, abs=0.02)
            assert x.temperature_c > c.temperature_c + 14.9
            assert x.vibration_rms == c.vibration_rms


def test_stuck_sensor_is_constant_over_its_span(streams) -> None:
    clean, items, labels = streams
    stuck = [a for a in labels if a.kind == "stuck"]
    assert stuck
    for a in stuck:
        readings = [x for _, x in _pairs(clean, items, a, Reading)]
        assert len(readings) >= 5
        assert {r.temperature_c for r in readings} == {a.magnitude}
        assert len({r.vibration_rms for r in readings}) == 1
        # The value it is stuck at is the device's last reading before the span.
        before = [r for r in clean if isinstance(r, Reading) and r.device_id == a.device_id
                  and r.ts < a.start_ts]
        if before:
            assert a.magnitude == pytest.approx(before[-1].temperature_c, abs=1e-4)
        # Negative control: the clean readings over the same span are not constant.
        assert len({c.temperature_c for c, _ in _pairs(clean, items, a, Reading)}) > 1


def test_drift_ramps_up_over_its_span(streams) -> None:
    clean, items, labels = streams
    drifts = [a for a in labels if a.kind == "drift"]
    assert drifts
    for a in drifts:
        pairs = _pairs(clean, items, a, Reading)
        deltas = [x.temperature_c - c.temperature_c for c, x in pairs]
        expected = [a.magnitude * a.progress(x.ts) for _, x in pairs]
        assert np.allclose(deltas, expected, atol=0.02)
        assert deltas[-1] > 0.9 * a.magnitude and deltas[0] < 0.1 * a.magnitude


def _power_at(samples: tuple[float, ...], rate: int, hz: float) -> float:
    x = np.asarray(samples)
    p = np.abs(np.fft.rfft(x)) ** 2 / len(x) ** 2
    k = int(round(hz * len(x) / rate))
    return float(p[max(k - 1, 0): k + 2].sum())


def test_bearing_wear_adds_growing_harmonics(streams) -> None:
    clean, items, labels = streams
    bearings = [a for a in labels if a.kind == "bearing"]
    assert bearings
    n_frames = 0
    for a in bearings:
        assert a.frequency_hz is not None and 230 <= a.frequency_hz <= 420
        pairs = _pairs(clean, items, a, Frame)
        # Power near the defect frequency (64-sample frames: coarse bins, leakage from the
        # machine's own 20-200 Hz tone), over the anomaly's frames: far above the clean one.
        worn = sum(_power_at(x.samples, x.sample_rate_hz, a.frequency_hz) for _, x in pairs)
        healthy = sum(_power_at(c.samples, c.sample_rate_hz, a.frequency_hz) for c, _ in pairs)
        assert worn > 3 * healthy
        for c, x in pairs:
            n_frames += 1
            diff = np.asarray(x.samples) - np.asarray(c.samples)
            k = np.arange(len(diff))
            amp = a.bearing_amplitude(x.ts)
            want = sum(amp / h * np.sin(2 * np.pi * h * a.frequency_hz * k / x.sample_rate_hz)
                       for h in BEARING_HARMONICS if h * a.frequency_hz < 0.45 * x.sample_rate_hz)
            assert np.allclose(diff, want, atol=1e-5)
        readings = _pairs(clean, items, a, Reading)
        assert readings
        for c, x in readings:
            extra = sum((a.bearing_amplitude(x.ts) / h) ** 2 / 2 for h in BEARING_HARMONICS)
            assert x.vibration_rms == pytest.approx(math.sqrt(c.vibration_rms ** 2 + extra), abs=2e-3)
            assert x.vibration_rms > c.vibration_rms
    assert n_frames > 0


def test_anomaly_seed_changes_only_the_anomalies() -> None:
    _, items_a, labels_a = _streams(seed=3)
    _, items_b, labels_b = _streams(seed=4)
    assert labels_a != labels_b
    assert [(i.device_id, i.ts) for i in items_a] == [(i.device_id, i.ts) for i in items_b]
    assert _streams(seed=3)[2] == labels_a  # deterministic


def test_labels_round_trip_as_json(streams) -> None:
    _, _, labels = streams
    assert [Anomaly.from_json(a.as_json()) for a in labels] == labels


def test_restamp_labels_follows_the_items() -> None:
    planned = [10, 20, 20, 30, 40, 50]
    sent = [1000, 1001, 1002, 1003, 1004, 1005]
    a = Anomaly("d", "spike", 15, 40, 20.0)
    b = Anomaly("d", "stuck", 41, 49, 50.0)  # no item inside: dropped
    (r,) = restamp_labels([a, b], planned, sent)
    assert (r.start_ts, r.end_ts) == (1001, 1004)
    with pytest.raises(ValueError):
        restamp_labels([a], planned, sent[:-1])


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        AnomalyConfig(kinds=("spike", "spike"))
    with pytest.raises(ValidationError):
        AnomalyConfig(rate=0)
    with pytest.raises(ConfigError, match="anomalies"):
        SluiceConfig().with_overrides(generator={"anomalies": {"kinds": ["meteor"]}})
    cfg = SluiceConfig().with_overrides(generator={"anomalies": {"kinds": ["stuck"], "rate": 3}})
    _, labels = plan_with_labels(cfg.with_overrides(generator={"records": 4000, "devices": 4}),
                                 start_ms=START, step_ms=3_600_000 / 4500)
    assert labels and {a.kind for a in labels} == {"stuck"}
