"""Python UDFs of the pipeline: thin shells around the Rust module.

Each record crosses JVM→Python once: :class:`Ingest` decodes it by its input
topic (Confluent-framed Avro telemetry, a binary sensor frame or a JSON work
order, all in Rust), refuses what may not pass (size, NaN/inf, event time,
blocking expectations compiled from the great-expectations suites), enriches it
from the device reference table, and encodes either the canonical event
(EnrichedReading v2) or a DeadLetter (Rust) in the same call, so the JVM side
only routes bytes. Keep numpy out of here: these run in thread mode
too, where numpy's GIL handling deadlocks under pemja.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyflink.common import Row
from pyflink.table import AggregateFunction, DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction

from sluice.metrics import StageMetrics, counters

# Imported once at module load, not per record: eval() is the per-record hot path.
from sluice.native import (
    AvroDecoder,
    AvroEncoder,
    DecodeError,
    EventDecoder,
    FrameDecoder,
    QualityChecker,
    SchemaError,
    UnknownSchemaError,
)
from sluice.quality import COLUMNS, validate_batch, window_bounds
from sluice.registry import RegistryUnavailable, RetryPolicy, WriterSchemaCache

# Field order of the reader schema (telemetry-value v3), as the decoder returns it.
_READER_FIELDS = (
    "event_id", "device_id", "ts", "temperature_c", "vibration_rms_g", "status",
    "humidity_pct", "firmware", "sample_count",
)

# The inputs, by the logical name the generator, the suites and the docs use.
TELEMETRY, FRAMES, MAINTENANCE = "telemetry", "sensor-frames", "maintenance-events"
_SOURCE_SYMBOL = {TELEMETRY: "TELEMETRY", FRAMES: "SENSOR_FRAME", MAINTENANCE: "MAINTENANCE"}

# Per-record columns the quality suites see, per input (schemas/expectations/*.json).
QUALITY_COLUMNS = COLUMNS

_DECIMAL = re.compile(rb"[0-9]{1,19}")

INGEST_RESULT = DataTypes.ROW(
    [
        DataTypes.FIELD("ok", DataTypes.BOOLEAN()),
        DataTypes.FIELD("out_key", DataTypes.STRING()),
        DataTypes.FIELD("out_value", DataTypes.BYTES()),
        DataTypes.FIELD("event_id", DataTypes.STRING()),
        DataTypes.FIELD("device_id", DataTypes.STRING()),
        DataTypes.FIELD("site_id", DataTypes.STRING()),
        DataTypes.FIELD("metric", DataTypes.DOUBLE()),
        DataTypes.FIELD("threshold", DataTypes.DOUBLE()),
        DataTypes.FIELD("reason", DataTypes.STRING()),
        DataTypes.FIELD("source", DataTypes.STRING()),
        # The canonical event of a record dead-lettered by a blocking expectation, so the
        # great-expectations audit sees every decoded record (null otherwise).
        DataTypes.FIELD("audit", DataTypes.BYTES()),
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


@dataclass(frozen=True)
class IngestLimits:
    """What the job refuses before and after decoding (config section ``ingest``)."""

    max_record_bytes: int
    max_json_depth: int
    max_frame_samples: int
    min_ts_ms: int
    max_ts_skew_ms: int


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_INF = float("inf")


def epoch_ms(value: Any) -> int:
    """Epoch milliseconds of what PyFlink hands over for TIMESTAMP_LTZ (a naive UTC datetime).
    Integer arithmetic: ``int(timestamp() * 1000)`` loses a millisecond for some dates."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MS
    return int(value)


def _finite(*xs: float | None) -> bool:
    """No NaN or infinity among the measurements (None: not measured)."""
    return all(x is None or -_INF < x < _INF for x in xs)


class _Rejected(Exception):
    """A record that decoded but may not pass: its DLQ class, reason and detail."""

    def __init__(self, error_class: str, reason: str, detail: str,
                 failed: list[str] | None = None, canonical: bytes | None = None,
                 schema_id: int | None = None) -> None:
        super().__init__(detail)
        self.error_class, self.reason, self.detail = error_class, reason, detail
        self.schema_id = schema_id
        self.failed = failed or []
        self.canonical = canonical


class Ingest(ScalarFunction):
    """One input record of any of the three wire formats → ROW(ok, out_key, out_value, ...):
    the canonical event (EnrichedReading v2 or v3) or a DeadLetter, both Avro-encoded in
    Rust. With an EnrichedReading schema that has `seq` (v3), the producer's per-device
    sequence number (the ``seq`` argument: the sequence header's bytes) is copied into it."""

    def __init__(
        self,
        *,
        topics: dict[str, str],
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
        limits: IngestLimits,
        suites: dict[str, str] | None = None,
        registry_auth_file: str | None = None,
    ) -> None:
        # topic name → input name (telemetry, sensor-frames, maintenance-events)
        self.topics = topics
        self.reader_schema = reader_schema
        self.enriched_schema = enriched_schema
        self.enriched_id = enriched_id
        self.dlq_schema = dlq_schema
        self.dlq_id = dlq_id
        # No credentials in here: this object is pickled into the job graph. They are
        # read from registry_auth_file in open(), on the TaskManager.
        if "basic.auth.user.info" in registry_conf:
            raise ValueError("Ingest: pass registry credentials as registry_auth_file, not in "
                             "registry_conf (the UDF is pickled into the job)")
        self.registry_conf = registry_conf
        self.registry_auth_file = registry_auth_file
        self.registry_retry = registry_retry
        self.unknown_id_cooldown_ms = unknown_id_cooldown_ms
        self.devices = devices
        self.job_name = job_name
        self.metric = metric
        self.default_threshold = default_threshold
        self.limits = limits
        # input name → great-expectations suite JSON (compiled to Rust checks in open()).
        self.suites = suites or {}

    def open(self, function_context: FunctionContext) -> None:
        self.decoder = AvroDecoder(self.reader_schema)
        self.frames = FrameDecoder(self.limits.max_frame_samples)
        self.events = EventDecoder(self.limits.max_record_bytes, self.limits.max_json_depth)
        self.enriched_encoder = AvroEncoder(self.enriched_schema, self.enriched_id)
        self.dlq_encoder = AvroEncoder(self.dlq_schema, self.dlq_id)
        conf = dict(self.registry_conf)
        if self.registry_auth_file:
            from sluice.config import read_secret_file

            conf["basic.auth.user.info"] = read_secret_file(
                Path(self.registry_auth_file), "registry.basic_auth_file")
        self.writers = WriterSchemaCache(conf, self.registry_retry)
        self.checkers = {src: QualityChecker(text, list(QUALITY_COLUMNS[src]))
                         for src, text in self.suites.items()}
        # Ids the registry does not know, or whose schema cannot be resolved to the
        # reader: remembered so a burst of them costs one registry call, not one each.
        self.bad_ids: dict[int, tuple[str, str, str]] = {}
        # Ids given up on while the registry was unreachable: id → (retry after, failure).
        self.unreachable: dict[int, tuple[float, tuple[str, str, str]]] = {}
        # Per-record latency by component: Kafka record timestamp (event time for sluice's
        # producers) → this call; decoding; checks + enrichment + encoding.
        self.metrics = StageMetrics(function_context, "ingest", (
            "records_in", "records_out", "dead_letters", "quality_blocked", "quality_warnings",
            "bad_sequence_header"), ("kafka_to_ingest_ms", "decode_us", "enrich_encode_us"))
        self.counters = self.metrics.counter
        self.latency = self.metrics.latency
        # v3 and later end with `seq`; v2 (a job not yet upgraded) does not have it.
        fields = [f["name"] for f in json.loads(self.enriched_schema)["fields"]]
        self.with_seq = fields[-1] == "seq"
        if "seq" in fields and not self.with_seq:
            raise ValueError("the EnrichedReading schema must have `seq` as its last field")

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

    def eval(self, value, key, topic, partition, offset, kafka_ts, seq=None):  # type: ignore[no-untyped-def]
        self.counters["records_in"].inc()
        t0 = time.perf_counter_ns()
        self.latency["kafka_to_ingest_ms"].observe(time.time() * 1000 - epoch_ms(kafka_ts))
        self.seq = self._sequence(seq) if seq is not None else None
        source = self.topics.get(topic, TELEMETRY)
        if value is None:  # a tombstone: nothing to decode, but it must not vanish
            return self._dead(value, key, topic, partition, offset, kafka_ts, source,
                              "TombstoneError", "the record has no value (tombstone)", None, "empty")
        if len(value) > self.limits.max_record_bytes:
            return self._dead(value, key, topic, partition, offset, kafka_ts, source,
                              "OversizedError", f"{len(value)} bytes is more than "
                              f"ingest.max_record_bytes ({self.limits.max_record_bytes})",
                              None, "oversized")
        schema_id = None
        try:
            if source == TELEMETRY:
                schema_id, canonical, columns = self._telemetry(value)
            elif source == FRAMES:
                canonical, columns = self._frame(value)
            else:
                canonical, columns = self._work_order(value)
            t1 = time.perf_counter_ns()
            self.latency["decode_us"].observe((t1 - t0) / 1000)
            self._check_time(canonical[2], epoch_ms(kafka_ts))
            row = self._accept(source, canonical, columns, schema_id, topic, partition, offset)
            self.latency["enrich_encode_us"].observe((time.perf_counter_ns() - t1) / 1000)
            return row
        except _UnknownWriter as exc:
            error_class, detail, reason = exc.failure
            return self._dead(value, key, topic, partition, offset, kafka_ts, source,
                              error_class, detail, exc.schema_id, reason)
        except DecodeError as exc:
            return self._dead(value, key, topic, partition, offset, kafka_ts, source,
                              type(exc).__name__, str(exc), exc.schema_id, exc.reason)
        except _Rejected as exc:
            return self._dead(value, key, topic, partition, offset, kafka_ts, source,
                              exc.error_class, exc.detail, exc.schema_id or schema_id, exc.reason,
                              exc.failed, exc.canonical)

    def _sequence(self, raw: bytes) -> int | None:
        """The sequence header's value: a non-negative decimal number, else None (the
        record itself is fine, so it is not dead-lettered; a counter notes it)."""
        if _DECIMAL.fullmatch(raw) is None or int(raw) >= 2**63:
            self.counters["bad_sequence_header"].inc()
            return None
        return int(raw)

    # -- per format: decode → (canonical tuple without the enrichment, quality columns) --

    def _telemetry(self, value: bytes) -> tuple[int, list, tuple]:
        try:
            schema_id, rec = self.decoder.decode(value)
        except UnknownSchemaError as exc:
            failure = self.bad_ids.get(exc.schema_id) or self._learn(exc.schema_id)
            if failure is not None:
                raise _UnknownWriter(exc.schema_id, failure) from None
            schema_id, rec = self.decoder.decode(value)
        event_id, device_id, ts, temp, vib, status, humidity, firmware, samples = rec
        if not _finite(temp, vib, humidity):
            raise _Rejected("NonFiniteError", "non-finite",
                            f"a measurement is NaN or infinite: temperature_c={temp}, "
                            f"vibration_rms_g={vib}, humidity_pct={humidity}", schema_id=schema_id)
        return schema_id, [event_id, device_id, ts, "TELEMETRY", temp, vib, status, humidity,
                           firmware, samples, None, None], rec

    def _frame(self, value: bytes) -> tuple[list, tuple]:
        device_id, ts, rate, n, rms, peak, mean = cols = self.frames.decode(value)
        if not _finite(rms, peak, mean):
            raise _Rejected("NonFiniteError", "non-finite",
                            f"a sample is NaN or infinite: rms={rms}, peak_abs={peak}, mean={mean}")
        return [f"{device_id}/{ts}", device_id, ts, "SENSOR_FRAME", None, rms, None, None, None,
                None, (rate, n, peak, mean), None], cols

    def _work_order(self, value: bytes) -> tuple[list, tuple]:
        event_id, device_id, ts, kind, technician, notes, parts, extra = self.events.decode(value)
        return [event_id, device_id, ts, "MAINTENANCE", None, None, None, None, None, None, None,
                (kind.upper(), technician, notes, parts, extra)], (
            event_id, device_id, ts, kind, technician, notes, len(parts))

    def _check_time(self, ts: int, kafka_ts: int) -> None:
        lim = self.limits
        if ts < lim.min_ts_ms or abs(ts - kafka_ts) > lim.max_ts_skew_ms:
            raise _Rejected(
                "TimestampOutOfRange", "ts-out-of-range",
                f"event time {ts} is before ingest.min_ts_ms ({lim.min_ts_ms}) or more than "
                f"ingest.max_ts_skew_ms ({lim.max_ts_skew_ms}) from the Kafka record "
                f"timestamp {kafka_ts}")

    def _accept(self, source: str, c: list, columns: tuple, schema_id: int | None, topic: str,
                partition: int, offset: int) -> Row:
        event_id, device_id = c[0], c[1]
        ref = self.devices.get(device_id)
        site = model = max_temp = None
        if ref is not None:
            site, model, max_temp = ref.site_id, ref.device_model, ref.max_temperature_c
        warnings: list[str] = []
        checker = self.checkers.get(source)
        verdict = checker.check(columns) if checker is not None else None
        record = (
            *c[:10], site, model, max_temp, schema_id, topic, partition, offset,
            int(time.time() * 1000), c[10], c[11], warnings,
        ) + ((self.seq,) if self.with_seq else ())
        if verdict is not None:
            blocking, warnings[:] = verdict
            if warnings:
                self.counters["quality_warnings"].inc()
            if blocking:
                self.counters["quality_blocked"].inc()
                raise _Rejected("ExpectationFailed", "quality",
                                "failed blocking expectations: " + ", ".join(blocking),
                                list(blocking), self.enriched_encoder.encode(record))
        out = self.enriched_encoder.encode(record)
        if self.metric == "temperature_c":
            metric = c[4]
            threshold = max_temp if max_temp is not None else self.default_threshold
        else:
            metric, threshold = c[5], self.default_threshold
        self.counters["records_out"].inc()
        return Row(True, device_id, out, event_id, device_id, site, metric, threshold, None,
                   source, None)

    def _dead(  # type: ignore[no-untyped-def]
        self, value, key, topic, partition, offset, kafka_ts, source, error_class, detail,
        schema_id, reason, failed=(), canonical=None,
    ) -> Row:
        self.counters["dead_letters"].inc()
        out = dead_letter(self.dlq_encoder, value, key, topic, partition, offset, kafka_ts,
                          error_class, reason, detail, schema_id, self.job_name, failed)
        return Row(False, f"{topic}/{partition}/{offset}", out, None, None, None, None, None,
                   reason, source, canonical)


class _UnknownWriter(Exception):
    def __init__(self, schema_id: int, failure: tuple[str, str, str]) -> None:
        super().__init__(failure[1])
        self.schema_id, self.failure = schema_id, failure


def dead_letter(encoder: AvroEncoder, value, key, topic, partition, offset, kafka_ts,  # type: ignore[no-untyped-def]
                error_class, reason, detail, schema_id, job_name, failed=()) -> bytes:
    """A DeadLetter (v2) for one input record, Avro-encoded in Rust."""
    return encoder.encode(
        (value, key, topic, partition, offset, epoch_ms(kafka_ts), error_class, reason, detail,
         schema_id, job_name, int(time.time() * 1000), list(failed))
    )


class DuplicateEvent(ScalarFunction):
    """The DeadLetter for an event whose id the job has already seen (reason
    ``duplicate-event-id``). Runs only on the repeats, after the dedup count."""

    def __init__(self, *, dlq_schema: str, dlq_id: int, job_name: str, ttl_ms: int) -> None:
        self.dlq_schema, self.dlq_id, self.job_name, self.ttl_ms = dlq_schema, dlq_id, job_name, ttl_ms

    def open(self, function_context: FunctionContext) -> None:
        self.dlq_encoder = AvroEncoder(self.dlq_schema, self.dlq_id)
        self.counters = counters(function_context, "dedup", ("dead_letters",))

    def eval(self, value, key, topic, partition, offset, kafka_ts, event_id, seen):  # type: ignore[no-untyped-def]
        self.counters["dead_letters"].inc()
        return dead_letter(
            self.dlq_encoder, value, key, topic, partition, offset, kafka_ts,
            "DuplicateEventError", "duplicate-event-id",
            f"event id {event_id!r} was already accepted (occurrence {seen} within "
            f"ingest.dedup_ttl_ms = {self.ttl_ms})", None, self.job_name)


def canonical_columns(event: dict[str, Any]) -> tuple[str, tuple]:
    """A decoded canonical event (EnrichedReading v2, as a dict) → (input, the record
    its quality suite checks): the very values Ingest handed to the Rust checks."""
    e = event
    if e["source"] == "SENSOR_FRAME":
        f = e["frame"]
        return FRAMES, (e["device_id"], e["ts"], f["sample_rate_hz"], f["n_samples"],
                        e["vibration_rms"], f["peak_abs_g"], f["mean_g"])
    if e["source"] == "MAINTENANCE":
        m = e["maintenance"]
        return MAINTENANCE, (e["event_id"], e["device_id"], e["ts"], m["kind"].lower(),
                             m["technician"], m["notes"], len(m["parts"]))
    return TELEMETRY, (e["event_id"], e["device_id"], e["ts"], e["temperature_c"],
                       e["vibration_rms"], e["status"], e["humidity_pct"], e["firmware"],
                       e["sample_count"])


class AuditWindow(AggregateFunction):
    """The audit path: a pandas UDAF over one input's canonical events of one event-time
    window. It decodes them (Rust), validates the batch with great-expectations itself
    against the input's suite, and returns the Avro-encoded QualityResult.

    It sees every record that reached the quality checks (the accepted ones and the
    ones a blocking expectation dead-lettered), so its ratios are comparable with the
    Rust verdicts. Pandas UDAFs run in process mode only.

    Its window state holds encoded canonical events, so after an upgrade from a
    savepoint it meets events an earlier job version wrote with an earlier
    EnrichedReading schema: their writer schemas are fetched from the registry by id
    and resolved to this version's (tests/e2e/test_upgrade.py)."""

    def __init__(self, *, suites: dict[str, dict], enriched_schema: str, enriched_id: int,
                 quality_schema: str, quality_id: int, window_ms: int,
                 registry_conf: dict[str, Any] | None = None,
                 registry_retry: RetryPolicy | None = None) -> None:
        self.suites = suites
        self.enriched_schema, self.enriched_id = enriched_schema, enriched_id
        self.quality_schema, self.quality_id = quality_schema, quality_id
        self.window_ms = window_ms
        self.registry_conf = registry_conf
        self.registry_retry = registry_retry

    def open(self, function_context: FunctionContext | None) -> None:
        self.decoder = AvroDecoder(self.enriched_schema, record_as="dict")
        self.decoder.add_writer_schema(self.enriched_id, self.enriched_schema)
        self.writers = (WriterSchemaCache(self.registry_conf, self.registry_retry)
                        if self.registry_conf is not None else None)
        self.encoder = AvroEncoder(self.quality_schema, self.quality_id)
        self.counters = counters(function_context, "audit", ("batches", "records"))

    def close(self) -> None:
        if self.writers is not None:
            self.writers.close()

    def _decode(self, value: bytes) -> dict[str, Any]:
        try:
            return self.decoder.decode(value)[1]
        except UnknownSchemaError as exc:
            # An event of an earlier job version, restored from a savepoint.
            text = self.writers.fetch_with_retry(exc.schema_id) if self.writers else None
            if text is None:
                raise
            self.decoder.add_writer_schema(exc.schema_id, text)
            return self.decoder.decode(value)[1]

    # PyFlink runs a pandas UDAF as create_accumulator → accumulate(all Series) → get_value.
    def create_accumulator(self) -> list:
        return []

    def accumulate(self, accumulator: list, *args: Any) -> None:
        accumulator.append(self.eval(*args))

    def get_value(self, accumulator: list) -> bytes | None:
        return accumulator[0] if accumulator else None

    def result(self, events: Any) -> dict[str, Any] | None:
        rows: dict[str, list[tuple]] = {}
        for value in events:
            if value is None:
                continue
            source, cols = canonical_columns(self._decode(bytes(value)))
            rows.setdefault(source, []).append(cols)
        if not rows:
            return None
        # One input per group (the query groups by input); take it from the rows.
        (source, batch), = rows.items()
        start, end = window_bounds((r[QUALITY_COLUMNS[source].index("ts")] for r in batch),
                                   self.window_ms)
        self.counters["batches"].inc()
        self.counters["records"].inc(len(batch))
        return validate_batch(self.suites[source], batch, source=source,
                              columns=QUALITY_COLUMNS[source], window_start=start,
                              window_end=end)

    def eval(self, events: Any) -> bytes | None:
        result = self.result(events)
        return None if result is None else bytes(self.encoder.encode(result))


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
        # How long after its end (wall clock) a window is scored: the watermark's delay
        # (out-of-orderness, idle partitions) plus the window operator and this call.
        self.metrics = StageMetrics(function_context, "score", ("windows_in", "alerts_out"),
                                    ("window_end_to_score_ms",))

    def eval(self, device_id, site_id, window_start, window_end, count, mean, mx, threshold):  # type: ignore[no-untyped-def]
        start, end = epoch_ms(window_start), epoch_ms(window_end)
        self.metrics.counter["windows_in"].inc()
        self.metrics.latency["window_end_to_score_ms"].observe(time.time() * 1000 - end)
        score = threshold_score(mean, threshold)
        is_alert = score >= 1.0
        score_value = self.score_encoder.encode(
            (device_id, site_id, start, end, self.metric, count, mean, mx, threshold, score,
             is_alert, self.model_version)
        )
        alert_value = None
        if is_alert:
            self.metrics.counter["alerts_out"].inc()
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
