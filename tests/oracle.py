"""Independent reference for the pipeline's output.

Computes, in plain Python from the generator's input and the device CSV (parsed
here with the csv module, not with the job's loader), what the streaming job
must write. It shares no code with the job: if both were wrong the same way,
they would have to be wrong independently.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from sluice.generator import EXPECTED_REASON, Frame, Generated

FLOAT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ExpectedWindow:
    device_id: str
    site_id: str | None
    window_start: int
    window_end: int
    count: int
    mean: float
    max: float
    threshold: float
    score: float
    is_alert: bool


def devices(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["device_id"]: row for row in csv.DictReader(f)}


def frame_stats(f: Frame) -> tuple[float, float, float]:
    """(rms, peak |x|, mean) of a frame's samples, summed in order in double precision."""
    total = squares = peak = 0.0
    for x in f.samples:
        total += x
        squares += x * x
        peak = max(peak, abs(x))
    return math.sqrt(squares / len(f.samples)), peak, total / len(f.samples)


def _ref(devs: dict[str, dict[str, str]], device_id: str) -> dict:
    ref = devs.get(device_id)
    return {
        "site_id": ref["site_id"] if ref else None,
        "device_model": ref["device_model"] if ref else None,
        "max_temperature_c": float(ref["max_temperature_c"]) if ref else None,
    }


_NO_MEASUREMENTS = {"temperature_c": None, "vibration_rms": None, "status": None,
                    "humidity_pct": None, "firmware": None, "sample_count": None}


def expected_enriched(gen: Generated, devs: dict[str, dict[str, str]]) -> dict[str, dict]:
    """The canonical event of every valid input record, by event id."""
    out = {}
    for r in gen.readings:
        out[r.event_id] = {
            "event_id": r.event_id,
            "device_id": r.device_id,
            "ts": r.ts,
            "source": "TELEMETRY",
            "temperature_c": r.temperature_c,
            "vibration_rms": r.vibration_rms,
            "status": r.status,
            "humidity_pct": r.humidity_pct if r.writer != "v1" else None,
            "firmware": r.firmware if r.writer != "v1" else None,
            "sample_count": r.sample_count if r.writer != "v1" else 1,
            **_ref(devs, r.device_id),
            "frame": None,
            "maintenance": None,
        }
    for f in gen.frames:
        rms, peak, mean = frame_stats(f)
        out[f"{f.device_id}/{f.ts}"] = {
            "event_id": f"{f.device_id}/{f.ts}",
            "device_id": f.device_id,
            "ts": f.ts,
            "source": "SENSOR_FRAME",
            **_NO_MEASUREMENTS,
            "vibration_rms": rms,
            **_ref(devs, f.device_id),
            "frame": {"sample_rate_hz": f.sample_rate_hz, "n_samples": len(f.samples),
                      "peak_abs_g": peak, "mean_g": mean},
            "maintenance": None,
        }
    for w in gen.work_orders:
        out[w.event_id] = {
            "event_id": w.event_id,
            "device_id": w.device_id,
            "ts": w.ts,
            "source": "MAINTENANCE",
            **_NO_MEASUREMENTS,
            **_ref(devs, w.device_id),
            "frame": None,
            "maintenance": {
                "kind": w.kind.upper(),
                "technician": w.technician,
                "notes": w.notes,
                "parts": [{"part_no": p, "qty": q} for p, q in w.parts],
                "extra": dict(w.extra),
            },
        }
    return out


def expected_windows(
    gen: Generated, devs: dict[str, dict[str, str]], size_ms: int, default_threshold: float,
    metric: str = "temperature_c",
) -> dict[tuple[str, int], ExpectedWindow]:
    """Tumbling windows per device over the records that carry the metric: readings
    (both metrics) and, for vibration, sensor frames (their RMS)."""
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in gen.readings:
        start = r.ts - (r.ts % size_ms)
        groups[(r.device_id, start)].append(
            r.temperature_c if metric == "temperature_c" else r.vibration_rms)
    if metric != "temperature_c":
        for f in gen.frames:
            groups[(f.device_id, f.ts - (f.ts % size_ms))].append(frame_stats(f)[0])
    out = {}
    for (dev, start), temps in groups.items():
        ref = devs.get(dev)
        threshold = (float(ref["max_temperature_c"]) if ref and metric == "temperature_c"
                     else default_threshold)
        mean = sum(temps) / len(temps)
        out[(dev, start)] = ExpectedWindow(
            device_id=dev,
            site_id=ref["site_id"] if ref else None,
            window_start=start,
            window_end=start + size_ms,
            count=len(temps),
            mean=mean,
            max=max(temps),
            threshold=threshold,
            score=mean / threshold,
            is_alert=mean / threshold >= 1.0,
        )
    return out


def expected_dead_letters(gen: Generated) -> Counter[tuple[str, bytes | None, str]]:
    """(input, original bytes, reason) of every record the DLQ must hold, with multiplicity."""
    return Counter((c.input, c.value, EXPECTED_REASON[c.kind]) for c in gen.corrupt)
