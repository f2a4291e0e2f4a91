"""Seeded synthetic input for all three wire formats, produced through the registry.

v1, v2 and v3 telemetry writers produce Avro to the same topic at once (one
idempotent producer, one AvroSerializer per writer schema, so per-partition order
is the generation order); binary sensor frames and JSON maintenance work orders
go to their own topics. Corrupt records of every kind in :data:`CORRUPT_KINDS`
are mixed in. The returned :class:`Generated` is the input an independent oracle
needs to compute the expected output.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import struct
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from sluice.auth import fail_fast
from sluice.config import AnomalyConfig, SluiceConfig
from sluice.native import encode_frame
from sluice.registry import read_schema

# A schema id no registry here hands out (Apicurio and Confluent count from 1).
UNKNOWN_SCHEMA_ID = 987_654_321

# Inputs (logical names; the topic of each comes from the config).
TELEMETRY, FRAMES, MAINTENANCE = "telemetry", "sensor-frames", "maintenance-events"

# Kinds injected `corrupt_each_rare_kind` times each, per input they go to.
RARE_KINDS_BY_INPUT = {
    TELEMETRY: (
        "magic-byte-1", "empty", "tombstone", "garbage-body", "trailing-bytes",
        "nan-reading", "inf-reading", "far-past-ts", "far-future-ts", "oversized",
        "duplicate-event-id", "out-of-range-reading", "bad-device-id",
    ),
    FRAMES: ("bad-crc", "frame-truncated", "frame-bad-version", "frame-invalid-utf8"),
    MAINTENANCE: ("malformed-json", "invalid-utf8", "deep-json", "missing-field", "oversized-json"),
}
RARE_KINDS = tuple(k for kinds in RARE_KINDS_BY_INPUT.values() for k in kinds)
CORRUPT_KINDS = ("non-avro", "unknown-schema", "truncated", *RARE_KINDS)
INPUT_OF_KIND = {
    **{k: TELEMETRY for k in ("non-avro", "unknown-schema", "truncated")},
    **{k: src for src, kinds in RARE_KINDS_BY_INPUT.items() for k in kinds},
}
# What the job must say about each kind (DeadLetter.reason).
EXPECTED_REASON = {
    "non-avro": "bad-magic",
    "unknown-schema": "unknown-schema",
    "truncated": "truncated",
    "magic-byte-1": "bad-magic",
    "empty": "empty",
    "tombstone": "empty",
    # A known writer id, then a string length whose varint runs past 64 bits.
    "garbage-body": "type-mismatch",
    "trailing-bytes": "trailing-bytes",
    "nan-reading": "non-finite",
    "inf-reading": "non-finite",
    "far-past-ts": "ts-out-of-range",
    "far-future-ts": "ts-out-of-range",
    "oversized": "oversized",
    # The exact bytes of an earlier reading again (a producer retry gone wrong).
    "duplicate-event-id": "duplicate-event-id",
    # Valid Avro, but failing a blocking expectation of schemas/expectations/telemetry.json.
    "out-of-range-reading": "quality",
    "bad-device-id": "quality",
    "bad-crc": "bad-crc",
    "frame-truncated": "truncated",
    "frame-bad-version": "unsupported-version",
    "frame-invalid-utf8": "invalid-utf8",
    "malformed-json": "malformed-json",
    "invalid-utf8": "invalid-utf8",
    "deep-json": "too-deep",
    "missing-field": "missing-field",
    "oversized-json": "oversized",
}

# The blocking expectations the `quality` kinds fail (DeadLetter.failed_expectations).
EXPECTED_FAILED = {
    "out-of-range-reading": ["expect_column_values_to_be_between(temperature_c)"],
    "bad-device-id": ["expect_column_values_to_match_regex(device_id)"],
}

# Oversized values: bigger than the job's default ingest.max_record_bytes (64 KiB).
OVERSIZE_BYTES = 70_000
TEN_YEARS_MS = 10 * 365 * 86_400_000


def f32(x: float) -> float:
    """The value an Avro ``float`` field round-trips to."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


@dataclass(frozen=True)
class Reading:
    event_id: str
    device_id: str
    ts: int
    temperature_c: float
    vibration_rms: float
    status: str
    humidity_pct: float | None
    firmware: str | None
    sample_count: int
    writer: str  # "v1", "v2" or "v3"
    # Per-device sequence number over every input record of the plan (all formats,
    # corrupt ones included), sent in the `ingest.sequence_header` Kafka header.
    seq: int = -1

    def as_avro(self) -> dict[str, Any]:
        """The record as its writer version spells it (v3 renamed vibration_rms)."""
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "device_id": self.device_id,
            "ts": self.ts,
            "temperature_c": self.temperature_c,
            "vibration_rms_g" if self.writer == "v3" else "vibration_rms": self.vibration_rms,
            "status": self.status,
        }
        if self.writer != "v1":
            d["humidity_pct"] = self.humidity_pct
            d["firmware"] = self.firmware
            d["sample_count"] = self.sample_count
        return d


@dataclass(frozen=True)
class Frame:
    """One binary sensor frame (docs/formats.md); samples are f32-exact."""

    device_id: str
    ts: int
    sample_rate_hz: int
    samples: tuple[float, ...]
    seq: int = -1

    @property
    def event_id(self) -> str:
        """Frames carry no id of their own: a device sends one frame per instant."""
        return f"{self.device_id}/{self.ts}"

    def encode(self) -> bytes:
        return encode_frame(self.device_id, self.ts, self.sample_rate_hz, list(self.samples))


@dataclass(frozen=True)
class WorkOrder:
    """One maintenance work order, produced as a JSON document."""

    event_id: str
    device_id: str
    ts: int
    kind: str  # repair | inspection | part_replaced
    technician: str | None
    notes: str | None
    parts: tuple[tuple[str, int], ...]
    # Fields the format does not define, as (key, compact JSON text) in document order.
    extra: tuple[tuple[str, str], ...]
    seq: int = -1

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"event_id": self.event_id, "device_id": self.device_id,
                               "ts": self.ts, "kind": self.kind}
        if self.technician is not None:
            doc["technician"] = self.technician
        doc["notes"] = self.notes
        if self.parts:
            doc["parts"] = [{"part_no": p, "qty": q} for p, q in self.parts]
        for k, text in self.extra:
            doc[k] = json.loads(text)
        return doc

    def encode(self) -> bytes:
        return json.dumps(self.document(), ensure_ascii=False, indent=1).encode()


@dataclass(frozen=True)
class Corrupt:
    kind: str
    device_id: str
    ts: int
    value: bytes | None  # None: a tombstone
    # duplicate-event-id: the reading it repeats (the nearest earlier one in the plan).
    of: Reading | None = None
    seq: int = -1

    @property
    def input(self) -> str:
        return INPUT_OF_KIND[self.kind]


Item = Reading | Frame | WorkOrder | Corrupt


@dataclass
class Generated:
    readings: list[Reading] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    work_orders: list[WorkOrder] = field(default_factory=list)
    corrupt: list[Corrupt] = field(default_factory=list)
    produce_seconds: float = 0.0
    # The labelled anomalies in what was produced (generator.anomalies), in event time.
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.readings) + len(self.frames) + len(self.work_orders) + len(self.corrupt)

    def by_input(self) -> dict[str, int]:
        """Records produced per input (logical name), corrupt ones included."""
        counts = {TELEMETRY: len(self.readings), FRAMES: len(self.frames),
                  MAINTENANCE: len(self.work_orders)}
        for c in self.corrupt:
            counts[c.input] += 1
        return counts


# --- labelled anomalies (generator.anomalies; docs/evaluation.md) ---------------------------
ANOMALY_KINDS = ("spike", "drift", "stuck", "bearing")
# Event-time span of each kind, in ms (drawn uniformly).
ANOMALY_SPAN_MS = {
    "spike": (5_000, 20_000),
    "drift": (900_000, 2_400_000),
    "stuck": (300_000, 1_200_000),
    "bearing": (1_200_000, 2_700_000),
}
# Magnitude of each kind (drawn uniformly): °C added by a spike, °C a drift reaches at its
# end, g amplitude of a bearing's fundamental defect harmonic at its end. A stuck sensor's
# magnitude is the value it is stuck at.
ANOMALY_MAGNITUDE = {"spike": (15.0, 30.0), "drift": (12.0, 20.0), "bearing": (1.5, 3.0)}
# Bearing defect frequencies (Hz) and the harmonics added (each at amplitude / h, those
# below 0.45 x the frame's sample rate only).
BEARING_FREQUENCY_HZ = (230.0, 420.0)
BEARING_HARMONICS = (1, 2, 3)
# Injected temperatures stay under the blocking quality bound (150 °C), so an anomaly is
# scored, not dead-lettered.
TEMPERATURE_CEILING_C = 145.0


@dataclass(frozen=True)
class Anomaly:
    """One labelled anomaly: ``kind`` on ``device_id`` over event times ``start_ts`` ..
    ``end_ts`` (both inclusive). ``records``: readings and frames it changed."""

    device_id: str
    kind: str
    start_ts: int
    end_ts: int
    magnitude: float
    frequency_hz: float | None = None
    records: int = 0

    def progress(self, ts: int) -> float:
        """0 at the start of the span, 1 at its end."""
        return (ts - self.start_ts) / (self.end_ts - self.start_ts) if self.end_ts > self.start_ts else 1.0

    def bearing_amplitude(self, ts: int) -> float:
        """A bearing's fundamental amplitude (g) at ``ts``: a quarter at the start, growing."""
        return self.magnitude * (0.25 + 0.75 * self.progress(ts))

    def as_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "kind": self.kind, "start_ts": self.start_ts,
                "end_ts": self.end_ts, "magnitude": self.magnitude,
                "frequency_hz": self.frequency_hz, "records": self.records}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Anomaly:
        return Anomaly(str(d["device_id"]), str(d["kind"]), int(d["start_ts"]), int(d["end_ts"]),
                       float(d["magnitude"]), None if d.get("frequency_hz") is None
                       else float(d["frequency_hz"]), int(d.get("records", 0)))


def schedule_anomalies(acfg: AnomalyConfig, devices: list[str], start_ms: int, end_ms: int
                       ) -> list[Anomaly]:
    """Where the anomalies go: ``round(rate x devices x hours)`` of them, the kinds in
    turn (shuffled), each on a random device at a random time, at least ``min_gap_ms``
    from the stream's start and from any other anomaly of the same device. One that finds
    no room after 100 draws is left out."""
    rng = random.Random(acfg.seed)
    hours = max(0, end_ms - start_ms) / 3_600_000
    n = round(acfg.rate * len(devices) * hours)
    kinds = [acfg.kinds[i % len(acfg.kinds)] for i in range(n)]
    rng.shuffle(kinds)
    gap = acfg.min_gap_ms
    busy: dict[str, list[tuple[int, int]]] = defaultdict(list)
    out = []
    for kind in kinds:
        lo, hi = ANOMALY_SPAN_MS[kind]
        span = rng.randint(lo, hi)
        mag = rng.uniform(*ANOMALY_MAGNITUDE[kind]) if kind in ANOMALY_MAGNITUDE else 0.0
        freq = rng.uniform(*BEARING_FREQUENCY_HZ) if kind == "bearing" else None
        if end_ms - span <= start_ms + gap:
            continue
        for _ in range(100):
            dev = devices[rng.randrange(len(devices))]
            s = rng.randint(start_ms + gap, end_ms - span)
            e = s + span
            if all(e + gap < s2 or s > e2 + gap for s2, e2 in busy[dev]):
                busy[dev].append((s, e))
                out.append(Anomaly(dev, kind, s, e, round(mag, 3),
                                   None if freq is None else round(freq, 1)))
                break
    return sorted(out, key=lambda a: (a.start_ts, a.device_id))


def _bearing_samples(f: Frame, a: Anomaly) -> tuple[float, ...]:
    amp = a.bearing_amplitude(f.ts)
    assert a.frequency_hz is not None
    rate = f.sample_rate_hz
    harmonics = [h for h in BEARING_HARMONICS if h * a.frequency_hz < 0.45 * rate]
    return tuple(
        f32(x + sum(amp / h * math.sin(2 * math.pi * h * a.frequency_hz * k / rate) for h in harmonics))
        for k, x in enumerate(f.samples)
    )


def _bearing_rms(v: float, a: Anomaly, ts: int) -> float:
    """Telemetry's vibration RMS with the defect harmonics' energy added (sum of A_h**2 / 2)."""
    amp = a.bearing_amplitude(ts)
    extra = sum((amp / h) ** 2 / 2 for h in BEARING_HARMONICS)
    return f32(round(math.sqrt(v * v + extra), 3))


def _temperature(r: Reading, value: float) -> float:
    """``value`` at the precision the reading's writer sends (v1/v2 float, v3 double)."""
    v = round(min(value, TEMPERATURE_CEILING_C), 2)
    return v if r.writer == "v3" else f32(v)


def inject_anomalies(items: list[Item], anomalies: list[Anomaly]) -> tuple[list[Item], list[Anomaly]]:
    """Apply the scheduled anomalies to the readings and frames of their device and span
    (items in event-time order). Returns the changed items and the labels, each with the
    number of records it changed; an anomaly that changed none is dropped (no label)."""
    by_dev: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(anomalies):
        by_dev[a.device_id].append(i)
    last: dict[str, Reading] = {}
    frozen: dict[int, Reading] = {}  # stuck anomaly -> the values it is stuck at
    changed = [0] * len(anomalies)
    out: list[Item] = []
    for item in items:
        if not isinstance(item, Reading | Frame):
            out.append(item)
            continue
        hit = next((i for i in by_dev.get(item.device_id, ())
                    if anomalies[i].start_ts <= item.ts <= anomalies[i].end_ts), None)
        if hit is None:
            if isinstance(item, Reading):
                last[item.device_id] = item
            out.append(item)
            continue
        a = anomalies[hit]
        new: Item = item
        if isinstance(item, Reading):
            if a.kind == "spike":
                new = replace(item, temperature_c=_temperature(item, item.temperature_c + a.magnitude))
            elif a.kind == "drift":
                new = replace(item, temperature_c=_temperature(
                    item, item.temperature_c + a.magnitude * a.progress(item.ts)))
            elif a.kind == "stuck":
                ref = frozen.setdefault(hit, last.get(item.device_id, item))
                temp = f32(ref.temperature_c)  # exact in every writer's precision
                hum = None if item.writer == "v1" else (
                    ref.humidity_pct if ref.humidity_pct is not None else item.humidity_pct)
                new = replace(item, temperature_c=temp, vibration_rms=ref.vibration_rms,
                              humidity_pct=hum)
            elif a.kind == "bearing":
                new = replace(item, vibration_rms=_bearing_rms(item.vibration_rms, a, item.ts))
        elif a.kind == "bearing":
            new = replace(item, samples=_bearing_samples(item, a))
        if new is not item:
            changed[hit] += 1
        out.append(new)
    labels = []
    for i, a in enumerate(anomalies):
        if not changed[i]:
            continue
        mag = f32(frozen[i].temperature_c) if a.kind == "stuck" else a.magnitude
        labels.append(replace(a, records=changed[i], magnitude=mag))
    return out, labels


_NOTES = [
    "replaced bearing on drive side; vibration back to normal",
    "routine inspection, no findings",
    "Lüfter getauscht — Temperatur prüfen",
    "seal leaking \u2192 ordered spare",
    None,
]
_TECHNICIANS = ["a.kowalski", "m.dubois", "s.tanaka", None]


def _frame(rng: random.Random, dev: str, ts: int, level: float, n: int) -> Frame:
    rate = rng.choice([1_000, 2_000, 4_000])
    freq = rng.uniform(20, 200)
    samples = tuple(
        f32(level * math.sin(2 * math.pi * freq * k / rate) + rng.gauss(0, level / 10))
        for k in range(n)
    )
    return Frame(dev, ts, rate, samples)


def _work_order(rng: random.Random, seed: int, i: int, dev: str, ts: int) -> WorkOrder:
    kind = rng.choice(["repair", "inspection", "part_replaced"])
    parts: tuple[tuple[str, int], ...] = ()
    if kind == "part_replaced":
        parts = tuple((f"P-{rng.randrange(1000, 9999)}", rng.randint(1, 4))
                      for _ in range(rng.randint(1, 3)))
    extra: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        extra.append(("priority", str(rng.randint(1, 3))))
    if rng.random() < 0.3:
        extra.append(("location", json.dumps({"bay": rng.randint(1, 9), "row": "B"},
                                             separators=(",", ":"))))
    return WorkOrder(f"wo-{seed}-{i:06d}", dev, ts, kind, rng.choice(_TECHNICIANS),
                     rng.choice(_NOTES), parts, tuple(extra))


def plan(cfg: SluiceConfig, *, start_ms: int, step_ms: float) -> list[Item]:
    """The deterministic sequence for a seed: telemetry readings, sensor frames and
    work orders in event-time order, with the corrupt records spread evenly through it."""
    return plan_with_labels(cfg, start_ms=start_ms, step_ms=step_ms)[0]


def plan_with_labels(cfg: SluiceConfig, *, start_ms: int, step_ms: float
                     ) -> tuple[list[Item], list[Anomaly]]:
    """:func:`plan` and the labelled anomalies in it (none unless ``generator.anomalies``
    is set; the anomalies use their own randomness, so everything else is unchanged)."""
    g = cfg.generator
    rng = random.Random(g.seed)
    devices = [f"dev-{i:04d}" for i in range(g.devices)]
    n_hot = round(len(devices) * g.hot_device_share)
    hot = set(rng.sample(devices, n_hot))
    base_temp = {d: rng.uniform(40.0, 60.0) for d in devices}
    versions = sorted(g.writer_weights)
    weights = [g.writer_weights[v] for v in versions]
    n_frames = round(g.records * g.frame_share)
    n_orders = round(g.records * g.maintenance_share)
    total = g.records + n_frames + n_orders
    # Which slots of the time line hold a frame or a work order (from a separate
    # stream of randomness, so readings do not change when the shares do).
    slots = random.Random(g.seed + 1).sample(range(total), n_frames + n_orders)
    frame_slots = set(slots[:n_frames])
    order_slots = set(slots[n_frames:])
    items: list[Item] = []
    i_reading = i_order = 0
    for slot in range(total):
        dev = devices[rng.randrange(len(devices))]
        ts = start_ms + int(slot * step_ms)
        if slot in frame_slots:
            items.append(_frame(rng, dev, ts, 1.5 + (1.0 if dev in hot else 0.0), g.frame_samples))
            continue
        if slot in order_slots:
            items.append(_work_order(rng, g.seed, i_order, dev, ts))
            i_order += 1
            continue
        temp = round(base_temp[dev] + rng.gauss(0, 3) + (45.0 if dev in hot else 0.0), 2)
        writer = rng.choices(versions, weights=weights)[0]
        statuses = ["OK", "WARN", "FAULT"] + (["MAINTENANCE"] if writer == "v3" else [])
        items.append(
            Reading(
                event_id=f"{g.seed}-{i_reading:08d}",
                device_id=dev,
                ts=ts,
                # v1/v2 write a float, v3 a double (the promotion the reader resolves).
                temperature_c=temp if writer == "v3" else f32(temp),
                vibration_rms=f32(round(abs(rng.gauss(1.5, 0.4)), 3)),
                status=rng.choices(statuses, weights=[88, 8, 2, 2][: len(statuses)])[0],
                humidity_pct=round(rng.uniform(20, 80), 1) if writer != "v1" else None,
                firmware=rng.choice(["1.4.2", "1.5.0", None]) if writer != "v1" else None,
                sample_count=rng.randint(1, 64) if writer != "v1" else 1,
                writer=writer,
            )
        )
        i_reading += 1
    labels: list[Anomaly] = []
    if g.anomalies is not None:
        end_ms = start_ms + int((total - 1) * step_ms) if total else start_ms
        scheduled = schedule_anomalies(g.anomalies, devices, start_ms, end_ms)
        items, labels = inject_anomalies(items, scheduled)
    kinds = (
        ["non-avro"] * g.corrupt_non_avro
        + ["unknown-schema"] * g.corrupt_unknown_schema
        + ["truncated"] * g.corrupt_truncated
        + [k for k in RARE_KINDS for _ in range(g.corrupt_each_rare_kind)]
    )
    rng.shuffle(kinds)
    for j, kind in enumerate(kinds):
        pos = (j + 1) * len(items) // (len(kinds) + 1)
        near = items[pos] if items else None
        dev = near.device_id if near is not None else devices[0]
        ts = near.ts if near is not None else start_ms
        of = None
        if kind == "duplicate-event-id":
            of = next((i for i in reversed(items[:pos]) if isinstance(i, Reading)), None)
            if of is None:
                raise ValueError("a duplicate-event-id needs a reading before it; raise records")
        # A resend goes out under the key of the reading it repeats.
        items.insert(pos, Corrupt(kind, of.device_id if of is not None else dev, ts, b"", of))
    return with_sequence_numbers(items), labels


def with_sequence_numbers(items: list[Item]) -> list[Item]:
    """Number each device's records 0, 1, 2, ... in plan order (the Kafka key is the
    device id, so this is also their order within a partition)."""
    next_seq: dict[str, int] = defaultdict(int)
    out: list[Item] = []
    for item in items:
        out.append(replace(item, seq=next_seq[item.device_id]))
        next_seq[item.device_id] += 1
    return out


class _Serializers:
    def __init__(self, cfg: SluiceConfig):
        self.client = client = SchemaRegistryClient(cfg.registry.client_conf())
        # TopicNameStrategy outright: confluent-kafka 2.16 defaults to ASSOCIATED, which
        # first asks GET /associations/..., an endpoint Apicurio 3.3 lacks and whose
        # 404 answers sometimes never arrive (the subject is <topic>-value either way).
        conf = {"auto.register.schemas": True, "subject.name.strategy.type": "TOPIC"}
        self.by_writer = {
            v: AvroSerializer(
                client,
                read_schema(cfg.schema_path(f"telemetry-value/{v}.avsc")),
                lambda obj, ctx: obj,
                conf,
            )
            for v in ("v1", "v2", "v3")
        }
        self.topic = cfg.topics.telemetry
        # The latest valid record per input: corrupt records are made from them.
        self.template: dict[str, bytes] = {}
        # Readings sent by this producer (as sent: live runs restamp them), by event id.
        self.sent: dict[str, Reading] = {}

    def reading(self, r: Reading) -> bytes:
        ctx = SerializationContext(self.topic, MessageField.VALUE)
        return self.by_writer[r.writer](r.as_avro(), ctx)

    def encode(self, item: Reading | Frame | WorkOrder) -> bytes:
        value = self.reading(item) if isinstance(item, Reading) else item.encode()
        src = TELEMETRY if isinstance(item, Reading) else FRAMES if isinstance(item, Frame) else MAINTENANCE
        self.template[src] = value
        if isinstance(item, Reading):
            self.sent[item.event_id] = item
        return value

    def _template(self, src: str, c: Corrupt) -> bytes:
        if src not in self.template:  # a corrupt record first: build a valid one
            if src == TELEMETRY:
                return self.reading(Reading("template", c.device_id, c.ts, 0.0, 0.0, "OK",
                                            None, None, 1, "v1"))
            if src == FRAMES:
                return encode_frame(c.device_id, c.ts, 1_000, [0.0] * 8)
            return json.dumps({"event_id": "template", "device_id": c.device_id, "ts": c.ts,
                               "kind": "inspection"}).encode()
        return self.template[src]

    def corrupt(self, c: Corrupt, n: int) -> tuple[bytes | None, str]:
        """Corrupt bytes, unique per position ``n`` where the kind allows it, so every
        one can be traced in the DLQ; and the Kafka key to send them with."""
        key = c.device_id
        t = self._template(c.input, c)
        k = c.kind
        if k == "non-avro":
            return f"this is not avro: {c.device_id} @{c.ts} #{n}".encode(), key
        if k == "unknown-schema":
            return b"\x00" + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + t[5:], key
        if k in ("truncated", "frame-truncated"):
            return t[: max(6, len(t) // 2)], key
        if k == "magic-byte-1":
            return b"\x01" + t[1:], key
        if k == "empty":
            return b"", key
        if k == "tombstone":
            return None, key
        if k == "garbage-body":
            return t[:5] + b"\xff" * 10 + b"\x01" + f"#{n}".encode(), key
        if k == "trailing-bytes":
            return t + f"#{n}".encode(), key
        base = Reading(f"bad-{n}", c.device_id, c.ts, 20.0, 1.0, "OK", 50.0, "1.5.0", 1, "v3")
        if k == "nan-reading":
            return self.reading(replace(base, temperature_c=math.nan)), key
        if k == "inf-reading":
            return self.reading(replace(base, vibration_rms=math.inf)), key
        if k == "far-past-ts":
            return self.reading(replace(base, ts=86_400_000 + n)), key
        if k == "far-future-ts":
            return self.reading(replace(base, ts=c.ts + TEN_YEARS_MS)), key
        if k == "oversized":
            return self.reading(replace(base, writer="v2", firmware="x" * OVERSIZE_BYTES)), key
        if k == "out-of-range-reading":
            return self.reading(replace(base, temperature_c=999.0)), key
        if k == "bad-device-id":
            return self.reading(replace(base, device_id=f"device#{n}")), key
        if k == "duplicate-event-id":
            if c.of is None:
                raise ValueError("duplicate-event-id without the reading it repeats")
            # Same bytes, same key (same partition) as the reading it repeats: as this
            # producer sent it, or as planned when an earlier run sent it.
            original = self.sent.get(c.of.event_id, c.of)
            return self.reading(original), original.device_id
        if k == "bad-crc":
            mid = len(t) // 2
            return t[:mid] + bytes([t[mid] ^ 0x40]) + t[mid + 1:], key
        if k == "frame-bad-version":
            return t[:2] + b"\x02" + t[3:], key
        if k == "frame-invalid-utf8":
            # A valid frame layout and CRC around a device id that is not UTF-8.
            body = b"SF\x01\x00\x04" + b"d\xff\xfeX" + t[5 + t[4]:-4]
            return body + zlib.crc32(body).to_bytes(4, "big"), key
        if k == "malformed-json":
            return f'{{"event_id": "wo-bad-{n}", "device_id": "{c.device_id}", "ts": '.encode(), key
        if k == "invalid-utf8":
            return (f'{{"event_id": "wo-bad-{n}", "device_id": "{c.device_id}", "ts": {c.ts}, '
                    f'"kind": "repair", "notes": "'.encode() + b"\xc3\x28" + b'"}'), key
        if k == "deep-json":
            return (f'{{"event_id": "wo-bad-{n}", "nest": '.encode() + b"[" * 100 + b"]" * 100
                    + b"}"), key
        if k == "missing-field":
            return json.dumps({"event_id": f"wo-bad-{n}", "device_id": c.device_id,
                               "ts": c.ts}).encode(), key
        if k == "oversized-json":
            return json.dumps({"event_id": f"wo-bad-{n}", "device_id": c.device_id, "ts": c.ts,
                               "kind": "inspection", "notes": "n" * OVERSIZE_BYTES}).encode(), key
        raise ValueError(f"unknown corrupt kind {k}")


def topic_of(cfg: SluiceConfig, source: str) -> str:
    return {TELEMETRY: cfg.topics.telemetry, FRAMES: cfg.topics.sensor_frames,
            MAINTENANCE: cfg.topics.maintenance}[source]


@dataclass(frozen=True)
class Encoded:
    """One item as it goes on the wire: topic, key, value and record timestamp."""

    topic: str
    key: bytes
    value: bytes | None
    ts: int
    item: Item  # with its final ts (and, for corrupt ones, value)
    headers: tuple[tuple[str, bytes], ...] = ()


def _encode(cfg: SluiceConfig, ser: _Serializers, item: Item, n: int) -> Encoded:
    key = item.device_id
    if isinstance(item, Corrupt):
        value, key = ser.corrupt(item, n)
        item = replace(item, value=value)
        if item.kind == "duplicate-event-id" and item.of is not None:
            # A resend keeps the record timestamp of the reading it repeats.
            item = replace(item, ts=ser.sent.get(item.of.event_id, item.of).ts)
        source = item.input
    else:
        value = ser.encode(item)
        source = (TELEMETRY if isinstance(item, Reading)
                  else FRAMES if isinstance(item, Frame) else MAINTENANCE)
    header = cfg.ingest.sequence_header
    headers = ((header, str(item.seq).encode()),) if header and item.seq >= 0 else ()
    return Encoded(topic_of(cfg, source), key.encode(), value, item.ts, item, headers)


def encode_items(cfg: SluiceConfig, items: list[Item]) -> list[Encoded]:
    """Serialize planned items now (the registry must be up), to send later with
    :func:`produce_encoded`, e.g. while the registry is down."""
    ser = _Serializers(cfg)
    try:
        return [_encode(cfg, ser, item, n) for n, item in enumerate(items)]
    finally:
        ser.client.close()


def _producer(cfg: SluiceConfig) -> Producer:
    return Producer({
        **fail_fast(cfg.kafka.client_properties()),
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 4 * OVERSIZE_BYTES,
    })


def _record(out: Generated, item: Item) -> None:
    if isinstance(item, Corrupt):
        out.corrupt.append(item)
    elif isinstance(item, Reading):
        out.readings.append(item)
    elif isinstance(item, Frame):
        out.frames.append(item)
    else:
        out.work_orders.append(item)


def _send(producer: Producer, e: Encoded) -> None:
    while True:
        try:
            producer.produce(e.topic, value=e.value, key=e.key, timestamp=e.ts,
                             headers=list(e.headers) or None)
            return
        except BufferError:
            producer.poll(0.1)


def _finish(producer: Producer, out: Generated, t0: float) -> Generated:
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} input records were not delivered within 60 s")
    out.produce_seconds = time.monotonic() - t0
    return out


class Pacer:
    """The send schedule of a paced producer: item ``n`` goes out at ``t0 + n / rate``
    (``rate`` <= 0: no pacing). Behind schedule it does not sleep, so a stall is made up by
    sending back to back: the average rate holds, and a consumer's latency shows the stall."""

    def __init__(self, rate_eps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate_eps, clock, sleep
        self.t0 = clock()

    def due(self, n: int) -> float:
        """When item ``n`` is due, on the pacer's clock."""
        return self.t0 + n / self.rate if self.rate > 0 else self.t0

    def wait(self, n: int) -> None:
        if self.rate > 0:
            ahead = self.due(n) - self.clock()
            if ahead > 0:
                self.sleep(ahead)


def produce_encoded(cfg: SluiceConfig, encoded: list[Encoded], *, rate_eps: float = 0) -> Generated:
    """Send items serialized earlier by :func:`encode_items` (no registry needed),
    paced at ``rate_eps`` when it is above 0."""
    producer, out, t0 = _producer(cfg), Generated(), time.monotonic()
    pacer = Pacer(rate_eps)
    for n, e in enumerate(encoded):
        pacer.wait(n)
        _send(producer, e)
        producer.poll(0)
        _record(out, e.item)
    return _finish(producer, out, t0)


def produce(
    cfg: SluiceConfig,
    items: list[Item],
    *,
    live: bool = False,
    on_progress: Callable[[int], None] | None = None,
    labels: list[Anomaly] | None = None,
    unique_ts: bool = True,
) -> Generated:
    """Produce the planned items, each to its input topic, keyed by device id.

    ``live``: stamp each item with the wall clock at send time (paced at
    ``generator.rate_eps``); otherwise keep the planned event times. Live stamps are
    strictly increasing, so frame ids stay unique, unless ``unique_ts`` is False: then they
    are the send time itself (non-decreasing), which above 1,000 items/s the strict ones
    cannot be (they run ahead of the clock). ``labels`` (from :func:`plan_with_labels`) end up in
    ``anomalies`` of the result, moved to the event times the items were sent with.
    """
    planned_ts = [item.ts for item in items]
    sent_ts: list[int] = []
    ser = _Serializers(cfg)
    producer = _producer(cfg)
    out = Generated()
    pacer = Pacer(cfg.generator.rate_eps if live else 0)
    t0 = time.monotonic()
    last_ts = 0
    for n, item in enumerate(items):
        pacer.wait(n)
        if live:
            last_ts = max(int(time.time() * 1000), last_ts + 1 if unique_ts else last_ts)
            if item.ts != last_ts:
                item = replace(item, ts=last_ts)
        sent_ts.append(item.ts)
        e = _encode(cfg, ser, item, n)
        _send(producer, e)
        _record(out, e.item)
        producer.poll(0)
        if on_progress is not None and n % 100 == 0:
            on_progress(n)
    ser.client.close()
    _finish(producer, out, t0)
    if labels:
        out.anomalies = restamp_labels(labels, planned_ts, sent_ts) if live else list(labels)
    if on_progress is not None:
        on_progress(len(items))
    return out


def restamp_labels(labels: list[Anomaly], planned_ts: list[int], sent_ts: list[int]) -> list[Anomaly]:
    """Labels in planned event time → the event times the same items were sent with
    (``planned_ts[n]`` was sent as ``sent_ts[n]``; both in send order, non-decreasing):
    a label starts at the first item planned at or after its start and ends at the last
    one planned at or before its end."""
    if len(planned_ts) != len(sent_ts):
        raise ValueError(f"{len(planned_ts)} planned times for {len(sent_ts)} sent items")
    out = []
    for a in labels:
        i = bisect.bisect_left(planned_ts, a.start_ts)
        j = bisect.bisect_right(planned_ts, a.end_ts) - 1
        if i > j:
            continue
        out.append(replace(a, start_ts=sent_ts[i], end_ts=sent_ts[j]))
    return out


def aligned_start(cfg: SluiceConfig, span_ms: int) -> int:
    """A recent, window-aligned start so a whole simulated run lies in the past
    (and well inside the broker's retention, which is judged by record timestamps)."""
    size = cfg.window.size_ms
    now = int(time.time() * 1000)
    return ((now - span_ms - 60_000) // size) * size
