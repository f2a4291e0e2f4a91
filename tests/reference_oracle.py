"""An independent reference for the reference-data joins (docs/reference-data.md).

Written from the documented semantics, by plain scans over everything generated and
published, and sharing no code with the operator (sluice/reference.py): for every
accepted reading (telemetry or sensor frame) the expected JoinedReading, or the
expectation that it is dead-lettered as unknown-device.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from sluice.generator import Generated, WorkOrder
from tests import oracle


def sites(path: Path) -> dict[str, dict]:
    with path.open(newline="") as f:
        return {row["site_id"]: {"region": row["region"], "timezone": row["timezone"],
                                 "energy_price_per_kwh": float(row["energy_price_per_kwh"])}
                for row in csv.DictReader(f)}


def readings(gen: Generated) -> list[dict]:
    """Every reading the pipeline accepts, as (event_id, device_id, ts, source, measures)."""
    out = [{"event_id": r.event_id, "device_id": r.device_id, "ts": r.ts, "source": "TELEMETRY",
            "temperature_c": r.temperature_c, "vibration_rms": r.vibration_rms}
           for r in gen.readings]
    out += [{"event_id": f"{f.device_id}/{f.ts}", "device_id": f.device_id, "ts": f.ts,
             "source": "SENSOR_FRAME", "temperature_c": None,
             "vibration_rms": oracle.frame_stats(f)[0]} for f in gen.frames]
    return out


def expected(gen: Generated, versions: list, site_rows: dict[str, dict], *, hold_ms: int,
             before_ms: int, after_ms: int,
             deletions: list[tuple[str, int]] = ()) -> dict[str, dict]:  # type: ignore[assignment]
    """event_id → the expected JoinedReading fields (reference_status MISSING included:
    the caller decides whether those are flagged or dead-lettered). ``deletions``:
    (device id, time) of the tombstones published on the devices topic."""
    out = {}
    for r in readings(gen):
        # The device's history up to the reading, as (time, rank, version or None for a
        # deletion); at the same millisecond a deletion (rank 1) comes after a version.
        history = sorted(
            [(v.valid_from, 0, v) for v in versions if v.device_id == r["device_id"]]
            + [(at, 1, None) for dev, at in deletions if dev == r["device_id"]],
            key=lambda e: (e[0], e[1]))
        past = [e for e in history if e[0] <= r["ts"]]
        if past and past[-1][2] is not None:
            status, v = "VALID", past[-1][2]
        else:  # never registered, or deleted: the next version, if within the hold
            later = [e[2] for e in history if e[0] > r["ts"] and e[2] is not None]
            if later and later[0].valid_from - r["ts"] <= hold_ms:
                status, v = "LATE", later[0]
            else:
                status, v = "MISSING", None
        rec = {**r, "reference_status": status, "device_version": None, "site_id": None,
               "device_model": None, "calibration_offset_c": None, "max_temperature_c": None,
               "max_vibration_rms_g": None, "decommissioned": None,
               "temperature_calibrated_c": None, "region": None, "timezone": None,
               "energy_price_per_kwh": None}
        if v is not None:
            rec.update(device_version=v.valid_from, site_id=v.site_id,
                       device_model=v.device_model, calibration_offset_c=v.calibration_offset_c,
                       max_temperature_c=v.max_temperature_c,
                       max_vibration_rms_g=v.max_vibration_rms_g,
                       decommissioned=v.decommissioned)
            if r["temperature_c"] is not None:
                rec["temperature_calibrated_c"] = r["temperature_c"] + v.calibration_offset_c
            rec.update(site_rows.get(v.site_id, {}))
        orders = [w for w in gen.work_orders if w.device_id == r["device_id"]
                  and r["ts"] - before_ms <= w.ts <= r["ts"] + after_ms]
        latest: WorkOrder | None = None
        for w in orders:
            if latest is None or (w.ts, w.event_id) > (latest.ts, latest.event_id):
                latest = w
        rec["maintenance_event_id"] = latest.event_id if latest else None
        rec["maintenance_kind"] = latest.kind.upper() if latest else None
        rec["maintenance_ts"] = latest.ts if latest else None
        out[r["event_id"]] = rec
    return out


def _ms(v):  # type: ignore[no-untyped-def]
    return None if v is None else int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v


def check(joined: list[dict], want: dict[str, dict], topics: dict[str, str]) -> None:
    """The job's JoinedReadings equal ``want`` exactly (measurements to 1e-12 relative):
    no record missing, none duplicated, none invented. ``topics``: source → input topic."""
    ids = [j["event_id"] for j in joined]
    assert len(ids) == len(set(ids)), "duplicate joined records"
    assert set(ids) == set(want), (
        f"joined records differ: {len(set(want) - set(ids))} missing, e.g. "
        f"{sorted(set(want) - set(ids))[:3]}; {len(set(ids) - set(want))} unexpected")
    for j in joined:
        w = want[j["event_id"]]
        for k, v in w.items():
            got = j[k]
            if k in ("ts", "device_version", "maintenance_ts"):
                got = _ms(got)
            if isinstance(v, float) and isinstance(got, float):
                assert math.isclose(got, v, rel_tol=1e-12), (j["event_id"], k, got, v)
            else:
                assert got == v, (j["event_id"], k, got, v)
        assert j["source_topic"] == topics[w["source"]], j["event_id"]
