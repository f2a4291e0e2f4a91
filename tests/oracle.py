"""Independent reference for the pipeline's output.

Computes, in plain Python from the generator's input and the device CSV (parsed
here with the csv module, not with the job's loader), what the streaming job
must write. It shares no code with the job: if both were wrong the same way,
they would have to be wrong independently.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from sluice.generator import EXPECTED_REASON, Generated

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


def expected_enriched(gen: Generated, devs: dict[str, dict[str, str]]) -> dict[str, dict]:
    out = {}
    for r in gen.readings:
        ref = devs.get(r.device_id)
        out[r.event_id] = {
            "event_id": r.event_id,
            "device_id": r.device_id,
            "ts": r.ts,
            "temperature_c": r.temperature_c,
            "vibration_rms": r.vibration_rms,
            "status": r.status,
            "humidity_pct": r.humidity_pct if r.writer != "v1" else None,
            "firmware": r.firmware if r.writer != "v1" else None,
            "site_id": ref["site_id"] if ref else None,
            "device_model": ref["device_model"] if ref else None,
            "max_temperature_c": float(ref["max_temperature_c"]) if ref else None,
        }
    return out


def expected_windows(
    gen: Generated, devs: dict[str, dict[str, str]], size_ms: int, default_threshold: float
) -> dict[tuple[str, int], ExpectedWindow]:
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in gen.readings:
        start = r.ts - (r.ts % size_ms)
        groups[(r.device_id, start)].append(r.temperature_c)
    out = {}
    for (dev, start), temps in groups.items():
        ref = devs.get(dev)
        threshold = float(ref["max_temperature_c"]) if ref else default_threshold
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


def expected_dead_letters(gen: Generated) -> Counter[tuple[bytes | None, str]]:
    """(original bytes, reason) of every record the DLQ must hold, with multiplicity."""
    return Counter((c.value, EXPECTED_REASON[c.kind]) for c in gen.corrupt)
