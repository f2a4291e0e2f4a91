"""Reading the dead-letter topic back: what failed, where it came from, and why."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import SluiceConfig
from sluice.kafka_util import read_committed


def read_dead_letters(
    cfg: SluiceConfig, *, reason: str | None = None, idle_timeout: float = 3.0
) -> list[dict[str, Any]]:
    """Every committed DeadLetter on ``topics.dlq`` (optionally one reason), decoded,
    with the DLQ record's own partition and offset added as ``dlq_partition/offset``."""
    recs = read_committed(cfg, [cfg.topics.dlq], idle_timeout=idle_timeout)[cfg.topics.dlq]
    out = []
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        for r in recs:
            d = de(r.value, None)
            if reason is None or d["reason"] == reason:
                out.append({**d, "dlq_partition": r.partition, "dlq_offset": r.offset})
    return out


def by_reason(letters: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(d["reason"] for d in letters).most_common())


def preview(value: bytes | None, width: int = 24) -> str:
    """A short, printable view of the original bytes (hex, then ASCII)."""
    if value is None:
        return "(null: tombstone)"
    if not value:
        return "(empty)"
    head = value[:width]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    more = f" … {len(value)} bytes" if len(value) > width else ""
    return f"{head.hex(' ')} |{text}|{more}"


def as_json(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: bytes as base64, timestamps as epoch milliseconds."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bytes):
            out[k] = base64.b64encode(v).decode()
        elif hasattr(v, "timestamp"):
            out[k] = int(v.timestamp() * 1000)
        else:
            out[k] = v
    return out
