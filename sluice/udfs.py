"""Python UDFs of the pipeline: thin shells around the Rust module.

Each record crosses JVM→Python once: :class:`Ingest` decodes the Confluent-framed
Avro value (Rust), enriches it from the device reference table, and encodes
either the EnrichedReading or a DeadLetter (Rust) in the same call, so the
JVM side only routes bytes. Keep numpy out of here: these run in thread mode
too, where numpy's GIL handling deadlocks under pemja.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyflink.common import Row
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction

# Imported once at module load, not per record: eval() is the per-record hot path.
from sluice.native import (
    AvroDecoder,
    AvroEncoder,
    DecodeError,
    SchemaError,
    UnknownSchemaError,
)
from sluice.registry import RegistryUnavailable, RetryPolicy, WriterSchemaCache

# Field order of the reader schema (telemetry-value v3), as the decoder returns it.
_READER_FIELDS = (
    "event_id", "device_id", "ts", "temperature_c", "vibration_rms_g", "status",
    "humidity_pct", "firmware", "sample_count",
)

INGEST_RESULT = DataTypes.ROW(
    [
        DataTypes.FIELD("ok", DataTypes.BOOLEAN()),
        DataTypes.FIELD("out_key", DataTypes.STRING()),
        DataTypes.FIELD("out_value", DataTypes.BYTES()),
        DataTypes.FIELD("device_id", DataTypes.STRING()),
        DataTypes.FIELD("site_id", DataTypes.STRING()),
        DataTypes.FIELD("metric", DataTypes.DOUBLE()),
        DataTypes.FIELD("threshold", DataTypes.DOUBLE()),
        DataTypes.FIELD("reason", DataTypes.STRING()),
    ]
)

SCORE_RESULT = DataTypes.ROW(
    [
        DataTypes.FIELD("score_value", DataTypes.BYTES()),
        DataTypes.FIELD("alert_value", DataTypes.BYTES()),
        DataTypes.FIELD("is_alert", DataTypes.BOOLEAN()),
    ]
)


@dataclass(frozen=True)
class DeviceRef:
    site_id: str | None
    device_model: str | None
    max_temperature_c: float | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: Any) -> int:
    """Epoch milliseconds of what PyFlink hands over for TIMESTAMP_LTZ (a naive UTC datetime).
    Integer arithmetic: ``int(timestamp() * 1000)`` loses a millisecond for some dates."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MS
    return int(value)


class Ingest(ScalarFunction):
    """value bytes + Kafka coordinates → ROW(ok, out_key, out_value, device_id, site, metric, threshold)."""

    def __init__(
        self,
        *,
        reader_schema: str,
        enriched_schema: str,
        enriched_id: int,
        dlq_schema: str,
        dlq_id: int,
        registry_conf: dict[str, Any],
        registry_retry: RetryPolicy,
        unknown_id_cooldown_ms: int,
        devices: dict[str, DeviceRef],
        job_name: str,
        metric: str,
        default_threshold: float,
    ) -> None:
        self.reader_schema = reader_schema
        self.enriched_schema = enriched_schema
        self.enriched_id = enriched_id
        self.dlq_schema = dlq_schema
        self.dlq_id = dlq_id
        self.registry_conf = registry_conf
        self.registry_retry = registry_retry
        self.unknown_id_cooldown_ms = unknown_id_cooldown_ms
        self.devices = devices
        self.job_name = job_name
        self.metric_index = _READER_FIELDS.index(metric)
        self.default_threshold = default_threshold

    def open(self, function_context: FunctionContext) -> None:
        self.decoder = AvroDecoder(self.reader_schema)
        self.enriched_encoder = AvroEncoder(self.enriched_schema, self.enriched_id)
        self.dlq_encoder = AvroEncoder(self.dlq_schema, self.dlq_id)
        self.writers = WriterSchemaCache(self.registry_conf, self.registry_retry)
        # Ids the registry does not know, or whose schema cannot be resolved to the
        # reader: remembered so a burst of them costs one registry call, not one each.
        self.bad_ids: dict[int, tuple[str, str, str]] = {}
        # Ids given up on while the registry was unreachable: id → (retry after, failure).
        self.unreachable: dict[int, tuple[float, tuple[str, str, str]]] = {}

    def close(self) -> None:
        self.writers.close()

    def _learn(self, schema_id: int) -> tuple[str, str, str] | None:
        """Fetch an unseen writer id once and hand it to Rust; the failure, if any.
        An unreachable registry stalls this id at most registry_retry.bound_ms, then
        the id is dead-lettered at once for a cool-down, so the job never stalls."""
        waiting = self.unreachable.get(schema_id)
        if waiting is not None and time.monotonic() < waiting[0]:
            return waiting[1]
        try:
            text = self.writers.fetch_with_retry(schema_id)
        except RegistryUnavailable as exc:
            failure = ("RegistryUnavailable", str(exc), "unknown-schema")
            retry_at = time.monotonic() + self.unknown_id_cooldown_ms / 1000
            self.unreachable[schema_id] = (retry_at, failure)
            return failure
        self.unreachable.pop(schema_id, None)
        if text is None:
            failure = ("UnknownSchemaError", f"schema id {schema_id} is not in the registry",
                       "unknown-schema")
        else:
            try:
                self.decoder.add_writer_schema(schema_id, text)
                return None
            except SchemaError as exc:
                failure = ("SchemaError", str(exc), "incompatible-schema")
        self.bad_ids[schema_id] = failure
        return failure

    def eval(self, value, topic, partition, offset, kafka_ts):  # type: ignore[no-untyped-def]
        if value is None:  # a tombstone: nothing to decode, but it must not vanish
            return self._dead(value, topic, partition, offset, kafka_ts, "TombstoneError",
                              "the record has no value (tombstone)", None, "empty")
        try:
            try:
                schema_id, rec = self.decoder.decode(value)
            except UnknownSchemaError as exc:
                schema_id = exc.schema_id
                failure = self.bad_ids.get(schema_id) or self._learn(schema_id)
                if failure is not None:
                    error_class, detail, reason = failure
                    return self._dead(value, topic, partition, offset, kafka_ts, error_class,
                                      detail, schema_id, reason)
                schema_id, rec = self.decoder.decode(value)
        except DecodeError as exc:
            return self._dead(
                value, topic, partition, offset, kafka_ts, type(exc).__name__, str(exc),
                exc.schema_id, exc.reason,
            )
        if rec is None:  # pragma: no cover - the reader schema is a record
            raise AssertionError("decoder returned no record")
        return self._enriched(rec, schema_id, partition, offset)

    def _enriched(self, rec: tuple, schema_id: int, partition: int, offset: int) -> Row:
        event_id, device_id, ts, temp, vib, status, humidity, firmware, _samples = rec
        ref = self.devices.get(device_id)
        site = model = max_temp = None
        if ref is not None:
            site, model, max_temp = ref.site_id, ref.device_model, ref.max_temperature_c
        out = self.enriched_encoder.encode(
            (
                event_id, device_id, ts, temp, vib, status, humidity, firmware,
                site, model, max_temp, schema_id, partition, offset, int(time.time() * 1000),
            )
        )
        threshold = max_temp if max_temp is not None else self.default_threshold
        return Row(True, device_id, out, device_id, site, float(rec[self.metric_index]), threshold, None)

    def _dead(  # type: ignore[no-untyped-def]
        self, value, topic, partition, offset, kafka_ts, error_class, detail, schema_id, reason
    ) -> Row:
        out = self.dlq_encoder.encode(
            (
                value, None, topic, partition, offset, epoch_ms(kafka_ts), error_class, reason,
                detail, schema_id, self.job_name, int(time.time() * 1000), [],
            )
        )
        return Row(False, f"{topic}/{partition}/{offset}", out, None, None, None, None, reason)


class ScoreWindow(ScalarFunction):
    """One tumbling window's aggregate → encoded WindowScore, and an Alert when it crosses."""

    def __init__(
        self, *, score_schema: str, score_id: int, alert_schema: str, alert_id: int,
        metric: str, model_version: str,
    ) -> None:
        self.score_schema = score_schema
        self.score_id = score_id
        self.alert_schema = alert_schema
        self.alert_id = alert_id
        self.metric = metric
        self.model_version = model_version

    def open(self, function_context: FunctionContext) -> None:
        self.score_encoder = AvroEncoder(self.score_schema, self.score_id)
        self.alert_encoder = AvroEncoder(self.alert_schema, self.alert_id)

    def eval(self, device_id, site_id, window_start, window_end, count, mean, mx, threshold):  # type: ignore[no-untyped-def]
        start, end = epoch_ms(window_start), epoch_ms(window_end)
        score = threshold_score(mean, threshold)
        is_alert = score >= 1.0
        score_value = self.score_encoder.encode(
            (device_id, site_id, start, end, self.metric, count, mean, mx, threshold, score,
             is_alert, self.model_version)
        )
        alert_value = None
        if is_alert:
            alert_value = self.alert_encoder.encode(
                (alert_key(device_id, start), device_id, site_id, start, end, self.metric, mean,
                 threshold, score, severity(score), self.model_version)
            )
        return Row(score_value, alert_value, is_alert)


def threshold_score(mean: float, threshold: float) -> float:
    """The trivial model: how far the window mean is towards (and past) the threshold."""
    return mean / threshold if threshold else float("inf")


def severity(score: float) -> str:
    return "CRITICAL" if score >= 1.1 else "WARNING"


def alert_key(device_id: str, window_start_ms: int) -> str:
    """Deterministic alert id: the downstream idempotency key."""
    return f"{device_id}@{window_start_ms}"
