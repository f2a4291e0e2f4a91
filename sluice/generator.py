"""Seeded synthetic telemetry, produced through the schema registry.

v1, v2 and v3 writers produce to the same topic at once (one idempotent producer,
one AvroSerializer per writer schema, so per-partition order is the generation
order). A few corrupt records are mixed in: non-Avro bytes, an unknown schema
id, a truncated body. The returned :class:`Generated` is the input an
independent oracle needs to compute the expected output.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from sluice.config import SluiceConfig
from sluice.registry import read_schema

# A schema id no registry here hands out (Apicurio and Confluent count from 1).
UNKNOWN_SCHEMA_ID = 987_654_321

RARE_KINDS = ("magic-byte-1", "empty", "tombstone", "garbage-body", "trailing-bytes")
CORRUPT_KINDS = ("non-avro", "unknown-schema", "truncated", *RARE_KINDS)
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
}


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
class Corrupt:
    kind: str
    device_id: str
    ts: int
    value: bytes | None  # None: a tombstone


@dataclass
class Generated:
    readings: list[Reading] = field(default_factory=list)
    corrupt: list[Corrupt] = field(default_factory=list)
    produce_seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.readings) + len(self.corrupt)


def plan(cfg: SluiceConfig, *, start_ms: int, step_ms: float) -> list[Reading | Corrupt]:
    """The deterministic sequence for a seed: readings in event-time order with the
    corrupt records spread evenly through it."""
    g = cfg.generator
    rng = random.Random(g.seed)
    devices = [f"dev-{i:04d}" for i in range(g.devices)]
    n_hot = round(len(devices) * g.hot_device_share)
    hot = set(rng.sample(devices, n_hot))
    base_temp = {d: rng.uniform(40.0, 60.0) for d in devices}
    versions = sorted(g.writer_weights)
    weights = [g.writer_weights[v] for v in versions]
    items: list[Reading | Corrupt] = []
    for i in range(g.records):
        dev = devices[rng.randrange(len(devices))]
        ts = start_ms + int(i * step_ms)
        temp = round(base_temp[dev] + rng.gauss(0, 3) + (45.0 if dev in hot else 0.0), 2)
        writer = rng.choices(versions, weights=weights)[0]
        statuses = ["OK", "WARN", "FAULT"] + (["MAINTENANCE"] if writer == "v3" else [])
        items.append(
            Reading(
                event_id=f"{g.seed}-{i:08d}",
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
        items.insert(pos, Corrupt(kind, dev, ts, b""))
    return items


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

    def reading(self, r: Reading) -> bytes:
        ctx = SerializationContext(self.topic, MessageField.VALUE)
        return self.by_writer[r.writer](r.as_avro(), ctx)

    def corrupt(self, c: Corrupt, template: bytes, n: int) -> bytes | None:
        """Corrupt bytes, unique per position ``n`` where the kind allows it, so every
        one can be traced in the DLQ."""
        if c.kind == "non-avro":
            return f"this is not avro: {c.device_id} @{c.ts} #{n}".encode()
        if c.kind == "unknown-schema":
            return b"\x00" + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + template[5:]
        if c.kind == "truncated":
            return template[: max(6, len(template) // 2)]
        if c.kind == "magic-byte-1":
            return b"\x01" + template[1:]
        if c.kind == "empty":
            return b""
        if c.kind == "tombstone":
            return None
        if c.kind == "garbage-body":
            return template[:5] + b"\xff" * 10 + b"\x01" + f"#{n}".encode()
        if c.kind == "trailing-bytes":
            return template + f"#{n}".encode()
        raise ValueError(f"unknown corrupt kind {c.kind}")


def produce(
    cfg: SluiceConfig,
    items: list[Reading | Corrupt],
    *,
    live: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Generated:
    """Produce the planned items to the telemetry topic.

    ``live``: stamp each reading with the wall clock at send time (and pace it at
    ``generator.rate_eps``); otherwise keep the planned event times.
    """
    ser = _Serializers(cfg)
    producer = Producer(
        {
            **cfg.kafka.client_properties(),
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    out = Generated()
    rate = cfg.generator.rate_eps
    t0 = time.monotonic()
    last_template = b""
    for n, item in enumerate(items):
        if live and rate > 0:
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        ts = int(time.time() * 1000) if live else item.ts
        if isinstance(item, Reading):
            if ts != item.ts:
                item = Reading(**{**item.__dict__, "ts": ts})
            value = ser.reading(item)
            last_template = value
            out.readings.append(item)
        else:
            if not last_template:  # a corrupt record first: build a template
                last_template = ser.reading(
                    Reading("template", item.device_id, ts, 0.0, 0.0, "OK", None, None, 1, "v1")
                )
            value = ser.corrupt(item, last_template, n)
            item = Corrupt(item.kind, item.device_id, ts, value)
            out.corrupt.append(item)
        while True:
            try:
                producer.produce(
                    cfg.topics.telemetry, value=value, key=item.device_id.encode(), timestamp=ts
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if on_progress is not None and n % 100 == 0:
            on_progress(n)
    ser.client.close()
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} telemetry records were not delivered within 60 s")
    out.produce_seconds = time.monotonic() - t0
    if on_progress is not None:
        on_progress(len(items))
    return out


def aligned_start(cfg: SluiceConfig, span_ms: int) -> int:
    """A recent, window-aligned start so a whole simulated run lies in the past
    (and well inside the broker's retention, which is judged by record timestamps)."""
    size = cfg.window.size_ms
    now = int(time.time() * 1000)
    return ((now - span_ms - 60_000) // size) * size
