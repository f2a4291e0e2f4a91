"""Announcing a model version on ``topics.model_updates`` (docs/scoring.md): the scoring
job consumes the topic as broadcast state and switches to the announced version without a
restart. The record is a ModelUpdate (schemas/model-updates-value), Avro through the
registry; the key is the model name, so one model's announcements stay in order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sluice.config import SluiceConfig
from sluice.model import ModelVersion


def update_record(mv: ModelVersion, registry_root: Path,
                  previous_version: int | None = None) -> dict[str, Any]:
    """The ModelUpdate announcing ``mv``; artifact_uri is relative to the registry root,
    so a cluster that mounts the registry elsewhere resolves it against its own
    ``models.dir``."""
    meta = mv.metadata
    try:
        rel = (mv.path / "model.json").resolve().relative_to(Path(registry_root).resolve())
        uri = str(rel)
    except ValueError:  # outside the registry root: name it absolutely
        uri = (mv.path / "model.json").resolve().as_uri()
    return {
        "model_name": mv.name,
        "version": str(mv.version),
        "previous_version": None if previous_version is None else str(previous_version),
        "feature_spec_version": str(meta.get("feature_spec_version", "")),
        "artifact_uri": uri,
        "artifact_sha256": str(meta["export_sha256"]),
        "holdout_metrics": {k: float(v) for k, v in (meta.get("holdout_metrics") or {}).items()
                            if isinstance(v, int | float)},
        "published_at": int(time.time() * 1000),
    }


_FIELDS = ("model_name", "version", "previous_version", "feature_spec_version", "artifact_uri",
           "artifact_sha256", "holdout_metrics", "published_at")


def announce(cfg: SluiceConfig, mv: ModelVersion, previous_version: int | None = None,
             timeout: float = 30) -> dict[str, Any]:
    """Produce the ModelUpdate of ``mv`` (idempotent producer, acks=all) and wait until
    the broker has it. Returns the record."""
    from confluent_kafka import Producer

    from sluice.auth import fail_fast
    from sluice.kafka_util import ensure_topics
    from sluice.native import AvroEncoder
    from sluice.registry import output_schema

    record = update_record(mv, cfg.path(cfg.models.dir), previous_version)
    schema = output_schema(cfg, cfg.schemas.model_updates)
    value = AvroEncoder(schema.schema_str, schema.schema_id).encode(
        tuple(record[f] for f in _FIELDS))
    ensure_topics(cfg, [cfg.topics.model_updates])
    errors: list[str] = []
    producer = Producer({**fail_fast(cfg.kafka.client_properties()), "enable.idempotence": True,
                         "acks": "all"})
    producer.produce(cfg.topics.model_updates, key=mv.name.encode(), value=value,
                     on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    left = producer.flush(timeout)
    if left or errors:
        raise RuntimeError(f"announcing {mv.name} v{mv.version} on {cfg.topics.model_updates}: "
                           f"{errors[0] if errors else 'not delivered in time'}")
    return record


__all__ = ["announce", "update_record"]
