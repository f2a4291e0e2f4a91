"""ModelUpdate records on ``topics.model_updates`` (schemas/model-updates-value/v1.avsc):
how a registry version is announced for hot swap, and how a consumer gets its artifact.

* :func:`model_update_record` builds the record of a registry version;
* :func:`announce` produces it (key: the model name, so one model's updates stay in order
  on one partition) with an idempotent producer and waits for the broker's ack;
  ``sluice model publish NAME [--version V]`` calls it; ``jobs/retrain.py`` writes the same
  record inside its transaction;
* :func:`load_artifact` is what a consumer does with one: read ``artifact_uri`` and refuse
  the bytes unless their SHA-256 is ``artifact_sha256``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.model import ModelError, ModelVersion

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from sluice.actions import ConfluentAvroEncoder
    from sluice.config import SluiceConfig

SCHEMA = "model-updates-value/v1.avsc"
_AUTO = "auto"


def artifact_uri(mv: ModelVersion) -> str:
    """``file://`` URI of the version's export (absolute: TaskManagers resolve it)."""
    return (mv.path.resolve() / "model.json").as_uri()


def model_update_record(mv: ModelVersion, previous_version: str | None = None, *,
                        extra_metrics: Mapping[str, float] | None = None,
                        published_at_ms: int | None = None) -> dict[str, Any]:
    """The ModelUpdate of a registry version; ``holdout_metrics`` are the version's own
    (numbers only), plus ``extra_metrics``."""
    meta = mv.metadata
    metrics = {k: float(v) for k, v in (meta.get("holdout_metrics") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    metrics.update({k: float(v) for k, v in (extra_metrics or {}).items()})
    return {
        "model_name": mv.name, "version": str(mv.version),
        "previous_version": None if previous_version is None else str(previous_version),
        "feature_spec_version": str(meta.get("feature_spec_version", "")),
        "artifact_uri": artifact_uri(mv), "artifact_sha256": meta["export_sha256"],
        "holdout_metrics": metrics,
        "published_at": int(time.time() * 1000) if published_at_ms is None else published_at_ms,
    }


def encoder(cfg: SluiceConfig) -> ConfluentAvroEncoder:
    """Avro (Confluent framing) of the ModelUpdate schema, registered or looked up."""
    from sluice.actions import ConfluentAvroEncoder
    from sluice.registry import output_schema

    out = output_schema(cfg, SCHEMA)
    return ConfluentAvroEncoder(out.schema_str, out.schema_id)


def read_updates(cfg: SluiceConfig) -> list[dict[str, Any]]:
    """Every committed ModelUpdate on the topic, in offset order per partition."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from sluice.kafka_util import ensure_topics, read_to_end

    topic = cfg.topics.model_updates
    ensure_topics(cfg, [topic])
    recs = read_to_end(cfg, topic)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        return [de(r.value, None) for r in sorted(recs, key=lambda r: (r.partition, r.offset))
                if r.value is not None]


def last_announced(cfg: SluiceConfig, model_name: str) -> str | None:
    """The version of the newest ModelUpdate of ``model_name`` (None: never announced).
    All of a model's updates share a key, hence a partition: offset order is their order."""
    versions = [u["version"] for u in read_updates(cfg) if u["model_name"] == model_name]
    return versions[-1] if versions else None


def announce(cfg: SluiceConfig, model_version: ModelVersion,
             previous_version: str | None = _AUTO, *,
             extra_metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Produce the ModelUpdate of ``model_version`` to ``topics.model_updates`` and return
    it once the broker acknowledged it (idempotent producer, acks=all). ``previous_version``
    defaults to the model's last announced version on the topic."""
    from confluent_kafka import KafkaException, Producer

    from sluice.auth import fail_fast
    from sluice.kafka_util import ensure_topics

    topic = cfg.topics.model_updates
    ensure_topics(cfg, [topic])
    if previous_version == _AUTO:
        previous_version = last_announced(cfg, model_version.name)
    record = model_update_record(model_version, previous_version, extra_metrics=extra_metrics)
    value = encoder(cfg)(record)
    producer: Producer = Producer({**fail_fast(cfg.kafka.client_properties()),
                                   "enable.idempotence": True, "acks": "all"})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        producer.produce(topic, key=model_version.name.encode(), value=value,
                         on_delivery=on_delivery)
    except KafkaException as exc:
        raise RuntimeError(f"cannot produce to {topic}: {exc}") from exc
    left = producer.flush(30)
    if left or errors:
        raise RuntimeError(f"the ModelUpdate of {model_version.name} v{model_version.version} was "
                           f"not acknowledged by {topic}: {errors[0] if errors else 'timeout'}")
    return record


def load_artifact(update: Mapping[str, Any], registry_root: Path | None = None) -> str:
    """The export text a ModelUpdate points to; ModelError unless its SHA-256 matches.
    ``artifact_uri``: a ``file://`` URI, an absolute path, or a path relative to
    ``registry_root`` (a model directory means its model.json). Feed the text to
    ``sluice.native.IsolationForestModel``."""
    from sluice.scoring import ModelLoadError, artifact_path

    try:
        path = artifact_path(str(update["artifact_uri"]), Path(registry_root or "."))
    except ModelLoadError as exc:
        raise ModelError(str(exc)) from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"artifact {path} of {update.get('model_name')} v{update.get('version')}: "
                         f"cannot read: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != update["artifact_sha256"]:
        raise ModelError(f"artifact {path}: sha256 {digest} differs from the ModelUpdate's "
                         f"{update['artifact_sha256']}")
    return data.decode()


def producer_send(producer: Producer, cfg: SluiceConfig, enc: ConfluentAvroEncoder,
                  record: Mapping[str, Any]) -> None:
    """Produce a ModelUpdate with a caller's (e.g. transactional) producer."""
    producer.produce(cfg.topics.model_updates, key=str(record["model_name"]).encode(),
                     value=enc(record))


__all__ = ["SCHEMA", "announce", "artifact_uri", "encoder", "last_announced", "load_artifact",
           "model_update_record", "producer_send", "read_updates"]
