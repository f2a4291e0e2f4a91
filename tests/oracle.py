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

from sluice.generator import EXPECTED_FAILED, EXPECTED_REASON, Frame, Generated

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
            "seq": r.seq,
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
            "seq": f.seq,
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
            "seq": w.seq,
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




def quality_rows(gen: Generated) -> dict[str, tuple[list[str], list[tuple]]]:
    """Per input: (event ids, the records its suite checks), from the generator's input."""
    tel = [(r.event_id, r.device_id, r.ts, r.temperature_c, r.vibration_rms, r.status,
            r.humidity_pct if r.writer != "v1" else None, r.firmware if r.writer != "v1" else None,
            r.sample_count if r.writer != "v1" else 1) for r in gen.readings]
    frames = []
    for f in gen.frames:
        rms, peak, mean = frame_stats(f)
        frames.append((f.device_id, f.ts, f.sample_rate_hz, len(f.samples), rms, peak, mean))
    orders = [(w.event_id, w.device_id, w.ts, w.kind, w.technician, w.notes, len(w.parts))
              for w in gen.work_orders]
    return {
        "telemetry": ([r.event_id for r in gen.readings], tel),
        "sensor-frames": ([f"{f.device_id}/{f.ts}" for f in gen.frames], frames),
        "maintenance-events": ([w.event_id for w in gen.work_orders], orders),
    }


def expected_warnings(gen: Generated, suites_dir: Path) -> dict[str, set[str]]:
    """Event id → the non-blocking expectations it fails, as great-expectations itself
    judges the whole input (COMPLETE result format, unexpected_index_list per
    expectation): independent of the Rust checks the job runs. Valid input fails no
    blocking expectation; that is asserted too."""
    from sluice.quality import (
        COLUMNS,
        ROW_TYPES,
        expectation_name,
        is_blocking,
        load_suite,
        run_great_expectations,
        to_dataframe,
    )

    out: dict[str, set[str]] = {}
    for source, (ids, rows) in quality_rows(gen).items():
        path = suites_dir / f"{source}.json"
        if not rows or not path.is_file():
            continue
        suite = load_suite(path)
        blocking = {expectation_name(e) for e in suite["expectations"] if is_blocking(e)}
        res = run_great_expectations(suite, to_dataframe(rows, COLUMNS[source]), "COMPLETE")
        for r in res.results:
            cfg = r.expectation_config
            if cfg.type not in ROW_TYPES:
                continue
            name = expectation_name({"type": cfg.type, "kwargs": cfg.kwargs, "meta": cfg.meta})
            for i in r.result["unexpected_index_list"]:
                assert name not in blocking, f"valid input {ids[i]} fails blocking {name}"
                out.setdefault(ids[i], set()).add(name)
    return out


def expected_failed_expectations(kind: str) -> list[str]:
    return EXPECTED_FAILED.get(kind, [])


# Corrupt kinds that pass decoding and reach the quality checks (and so the audit).
AUDITED_CORRUPT = {"out-of-range-reading", "bad-device-id", "duplicate-event-id"}


def expected_audit_counts(gen: Generated, window_ms: int) -> Counter[tuple[str, int]]:
    """(input, window start) → records the great-expectations audit must validate."""
    out: Counter[tuple[str, int]] = Counter()
    for src, items in (("telemetry", gen.readings), ("sensor-frames", gen.frames),
                       ("maintenance-events", gen.work_orders)):
        for i in items:
            out[(src, i.ts - i.ts % window_ms)] += 1
    for c in gen.corrupt:
        if c.kind in AUDITED_CORRUPT:
            out[(c.input, c.ts - c.ts % window_ms)] += 1
    return out
