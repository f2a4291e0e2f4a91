"""The Ingest UDF without a JVM: decode + enrich + encode, dead letters, and a
registry that goes away and comes back (a real HTTP server on loopback)."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fastavro
import pytest
from pyflink.table.udf import FunctionContext

from sluice.registry import RetryPolicy, read_schema
from sluice.udfs import DeviceRef, Ingest, IngestLimits

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
V1, V2 = read_schema(SCHEMAS / "telemetry-value/v1.avsc"), read_schema(SCHEMAS / "telemetry-value/v2.avsc")
V3 = read_schema(SCHEMAS / "telemetry-value/v3.avsc")
ENRICHED = read_schema(SCHEMAS / "telemetry.enriched-value/v3.avsc")
ENRICHED_V2 = read_schema(SCHEMAS / "telemetry.enriched-value/v2.avsc")
DLQ = read_schema(SCHEMAS / "dlq-value/v2.avsc")
KAFKA_TS = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).replace(tzinfo=None)  # READING's ts
LIMITS = IngestLimits(max_record_bytes=4096, max_json_depth=8, max_frame_samples=256,
                      min_ts_ms=946_684_800_000, max_ts_skew_ms=60_000)
TOPICS = {"telemetry": "telemetry", "frames": "sensor-frames", "work": "maintenance-events"}


class _Registry(BaseHTTPRequestHandler):
    """Just enough of the Confluent API: GET /schemas/ids/<id>."""

    schemas: dict[int, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["schemas", "ids"] and int(parts[2]) in self.schemas:
            body = json.dumps({"schema": self.schemas[int(parts[2])]}).encode()
            self.send_response(200)
        else:
            body = json.dumps({"error_code": 40403, "message": "Schema not found"}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return _free_port()


@pytest.fixture
def registry(port: int) -> Iterator[ThreadingHTTPServer]:
    _Registry.schemas = {1: V1, 2: V2}
    server = ThreadingHTTPServer(("127.0.0.1", port), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _ingest(port: int, bound_ms: int = 300, cooldown_ms: int = 10_000,
            enriched: str = ENRICHED) -> Ingest:
    udf = Ingest(
        topics=TOPICS, limits=LIMITS,
        reader_schema=V3, enriched_schema=enriched, enriched_id=10, dlq_schema=DLQ, dlq_id=11,
        registry_conf={"url": f"http://127.0.0.1:{port}"},
        registry_retry=RetryPolicy(bound_ms=bound_ms, backoff_ms=50),
        unknown_id_cooldown_ms=cooldown_ms,
        devices={"dev-1": DeviceRef("plant-north", "VX-100", 75.0)},
        job_name="unit", metric="temperature_c", default_threshold=80.0,
    )
    udf.open(FunctionContext(None, {}))
    return udf


def _framed(schema: str, schema_id: int, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(schema)), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


READING = {"event_id": "e1", "device_id": "dev-1", "ts": 1_700_000_000_000, "temperature_c": 70.5,
           "vibration_rms": 1.25, "status": "OK"}


def _read(schema: str, framed: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(framed[5:]), fastavro.parse_schema(json.loads(schema)))


def test_v1_record_is_decoded_to_the_v2_reader_enriched_and_encoded(registry, port: int) -> None:
    udf = _ingest(port)
    row = udf.eval(_framed(V1, 1, READING), b"dev-1", "telemetry", 0, 7, KAFKA_TS)
    ok, key, value, event_id, device, site, metric, threshold, reason, source, audit = row
    assert (ok, key, event_id, device, site, metric, threshold, reason, source, audit) == (
        True, "dev-1", "e1", "dev-1", "plant-north", 70.5, 75.0, None, "telemetry", None)
    assert value[:5] == b"\x00" + (10).to_bytes(4, "big")
    out = _read(ENRICHED, value)
    assert out["humidity_pct"] is None and out["firmware"] is None  # v2 defaults
    assert (out["writer_schema_id"], out["source_partition"], out["source_offset"]) == (1, 0, 7)
    assert out["device_model"] == "VX-100"
    assert (out["source"], out["source_topic"], out["sample_count"]) == ("TELEMETRY", "telemetry", 1)
    assert out["frame"] is None and out["maintenance"] is None and out["quality_warnings"] == []


def test_unknown_device_is_enriched_with_nulls_and_the_default_threshold(registry, port: int) -> None:
    udf = _ingest(port)
    row = udf.eval(_framed(V1, 1, {**READING, "device_id": "dev-x"}), b"dev-x", "telemetry", 0, 1,
                   KAFKA_TS)
    assert row[0] is True and row[5] is None and row[7] == 80.0
    assert _read(ENRICHED, row[2])["site_id"] is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"not avro", "bad-magic"),
        (b"\x00\x00\x00", "truncated"),
        (b"\x00\x00\x00\x03\xe7" + b"\x02a", "unknown-schema"),  # id 999 is not in the registry
    ],
)
def test_bad_input_becomes_a_dead_letter_with_its_bytes_and_reason(
    registry, port: int, value: bytes | None, reason: str
) -> None:
    udf = _ingest(port)
    row = udf.eval(value, b"dev-1", "telemetry", 1, 42, KAFKA_TS)
    assert row[0] is False and row[8] == reason
    assert row[1] == "telemetry/1/42"
    dead = _read(DLQ, row[2])
    assert dead["original_value"] == value
    assert (dead["source_topic"], dead["source_partition"], dead["source_offset"]) == ("telemetry", 1, 42)
    assert dead["reason"] == reason and dead["detail"] and dead["job"] == "unit"
    assert dead["source_timestamp"] == KAFKA_TS.replace(tzinfo=UTC)
    assert dead["original_key"] == b"dev-1" and dead["failed_expectations"] == []


def test_truncated_body_of_a_known_id_is_dead_lettered(registry, port: int) -> None:
    udf = _ingest(port)
    good = _framed(V1, 1, READING)
    assert udf.eval(good, b"dev-1", "t", 0, 0, KAFKA_TS)[0] is True
    row = udf.eval(good[:-3], b"dev-1", "t", 0, 1, KAFKA_TS)
    assert (row[0], row[8]) == (False, "truncated")
    assert _read(DLQ, row[2])["schema_id"] == 1


def test_registry_outage_known_ids_flow_unseen_ids_wait_bounded_then_dlq(port: int) -> None:
    """Registry down (nothing listens on the port): an id seen before keeps flowing;
    an unseen id waits ~bound_ms with retries, then is dead-lettered; during the
    cool-down the same id is dead-lettered without waiting again."""
    udf = _ingest(port, bound_ms=400, cooldown_ms=60_000)
    udf.decoder.add_writer_schema(1, V1)  # learnt before the outage
    assert udf.eval(_framed(V1, 1, READING), b"dev-1", "t", 0, 0, KAFKA_TS)[0] is True

    t0 = time.monotonic()
    row = udf.eval(_framed(V2, 2, READING), b"dev-1", "t", 0, 1, KAFKA_TS)
    waited = time.monotonic() - t0
    assert (row[0], row[8]) == (False, "unknown-schema")
    assert 0.35 <= waited < 5, waited
    assert udf.writers.attempts >= 3, "it must retry with backoff, not give up at once"
    dead = _read(DLQ, row[2])
    assert dead["error_class"] == "RegistryUnavailable" and "gave up after 400 ms" in dead["detail"]

    t0 = time.monotonic()
    again = udf.eval(_framed(V2, 2, READING), b"dev-1", "t", 0, 2, KAFKA_TS)
    assert (again[0], again[8]) == (False, "unknown-schema")
    assert time.monotonic() - t0 < 0.2, "no second stall during the cool-down"
    assert udf.eval(_framed(V1, 1, READING), b"dev-1", "t", 0, 3, KAFKA_TS)[0] is True


def test_registry_back_after_the_cool_down_decodes_the_id_again(port: int) -> None:
    udf = _ingest(port, bound_ms=100, cooldown_ms=0)
    assert udf.eval(_framed(V2, 2, READING), b"dev-1", "t", 0, 1, KAFKA_TS)[8] == "unknown-schema"
    _Registry.schemas = {2: V2}
    server = ThreadingHTTPServer(("127.0.0.1", port), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        row = udf.eval(_framed(V2, 2, {**READING, "humidity_pct": 40.0, "firmware": "1.5.0"}),
                       b"dev-1", "t", 0, 2, KAFKA_TS)
        assert row[0] is True
        assert _read(ENRICHED, row[2])["firmware"] == "1.5.0"
    finally:
        server.shutdown()
        server.server_close()
    udf.close()


# ---------------------------------------------------------------------------------------
# The other wire formats, and what the job refuses after decoding
# ---------------------------------------------------------------------------------------

TS = 1_700_000_000_000
WORK_ORDER = {"event_id": "wo-1", "device_id": "dev-1", "ts": TS, "kind": "part_replaced",
              "technician": "m.dubois", "notes": "Lüfter getauscht",
              "parts": [{"part_no": "P-1", "qty": 2}], "priority": 2, "where": {"bay": 3}}


def test_sensor_frame_becomes_a_canonical_event_with_its_waveform_summary(port: int) -> None:
    from sluice.native import encode_frame

    udf = _ingest(port)
    row = udf.eval(encode_frame("dev-1", TS, 2000, [3.0, -4.0]), b"dev-1", "frames", 1, 5, KAFKA_TS)
    assert row[0] is True and row[3] == f"dev-1/{TS}" and row[9] == "sensor-frames"
    assert row[6] is None, "frames carry no temperature: they stay out of temperature windows"
    out = _read(ENRICHED, row[2])
    assert out["source"] == "SENSOR_FRAME" and out["temperature_c"] is None
    assert out["vibration_rms"] == (12.5) ** 0.5  # sqrt((9 + 16) / 2)
    assert out["frame"] == {"sample_rate_hz": 2000, "n_samples": 2, "peak_abs_g": 4.0, "mean_g": -0.5}
    assert out["writer_schema_id"] is None and out["site_id"] == "plant-north"


def test_vibration_metric_takes_the_frame_rms_and_the_default_threshold(port: int) -> None:
    from sluice.native import encode_frame

    udf = _ingest(port)
    udf.metric = "vibration_rms_g"
    row = udf.eval(encode_frame("dev-1", TS, 2000, [3.0, -4.0]), b"dev-1", "frames", 1, 5, KAFKA_TS)
    assert (row[6], row[7]) == ((12.5) ** 0.5, 80.0)


def test_work_order_becomes_a_canonical_event_with_unknown_fields_kept(port: int) -> None:
    udf = _ingest(port)
    row = udf.eval(json.dumps(WORK_ORDER).encode(), b"dev-1", "work", 0, 9, KAFKA_TS)
    assert row[0] is True and row[3] == "wo-1" and row[6] is None
    m = _read(ENRICHED, row[2])["maintenance"]
    assert m == {"kind": "PART_REPLACED", "technician": "m.dubois", "notes": "Lüfter getauscht",
                 "parts": [{"part_no": "P-1", "qty": 2}],
                 "extra": {"priority": "2", "where": '{"bay":3}'}}


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    [
        ("frames", b"SF\x02" + b"\x00" * 30, "unsupported-version"),
        ("frames", b"SF", "truncated"),
        ("work", b'{"event_id": ', "malformed-json"),
        ("work", b'{"event_id": "\xc3\x28"}', "invalid-utf8"),
        ("work", b'{"a":' + b"[" * 20 + b"]" * 20 + b"}", "too-deep"),
        ("work", b'{"event_id": "x", "device_id": "d", "ts": 1}', "missing-field"),
        ("work", b"{" + b" " * 5000 + b"}", "oversized"),
        ("telemetry", b"\x00" * 5000, "oversized"),
    ],
)
def test_bad_frames_and_documents_are_dead_lettered_with_their_reason(
    port: int, topic: str, value: bytes, reason: str
) -> None:
    udf = _ingest(port)
    row = udf.eval(value, b"dev-1", topic, 0, 3, KAFKA_TS)
    assert (row[0], row[8], row[9]) == (False, reason, TOPICS[topic])
    dead = _read(DLQ, row[2])
    assert dead["original_value"] == value and dead["reason"] == reason and dead["detail"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"temperature_c": float("nan")}, "non-finite"),
        ({"vibration_rms_g": float("inf")}, "non-finite"),
        ({"humidity_pct": float("-inf")}, "non-finite"),
        ({"ts": 86_400_000}, "ts-out-of-range"),  # before ingest.min_ts_ms
        ({"ts": TS + 60_001}, "ts-out-of-range"),  # further than max_ts_skew_ms from Kafka's
        ({"ts": TS - 60_001}, "ts-out-of-range"),
        ({"ts": TS + 60_000}, None),  # on the bound: accepted
    ],
)
def test_readings_that_decode_but_cannot_be_true_are_dead_lettered(
    registry, port: int, change: dict, reason: str | None
) -> None:
    udf = _ingest(port)
    v3 = {"event_id": "e1", "device_id": "dev-1", "ts": TS, "temperature_c": 20.0,
          "vibration_rms_g": 1.0, "status": "OK", "humidity_pct": 50.0, "firmware": None,
          "sample_count": 1}
    _Registry.schemas = {3: V3}
    row = udf.eval(_framed(V3, 3, {**v3, **change}), b"dev-1", "telemetry", 0, 1, KAFKA_TS)
    if reason is None:
        assert row[0] is True
        return
    assert (row[0], row[8]) == (False, reason)
    dead = _read(DLQ, row[2])
    assert dead["schema_id"] == 3 and dead["error_class"] in ("NonFiniteError", "TimestampOutOfRange")


def test_duplicate_event_dead_letter_names_the_id() -> None:
    from sluice.udfs import DuplicateEvent

    udf = DuplicateEvent(dlq_schema=DLQ, dlq_id=11, job_name="unit", ttl_ms=1000)
    udf.open(FunctionContext(None, {}))
    value = udf.eval(b"abc", b"dev-1", "telemetry", 1, 2, KAFKA_TS, "e1", 2)
    dead = _read(DLQ, value)
    assert (dead["reason"], dead["error_class"]) == ("duplicate-event-id", "DuplicateEventError")
    assert "'e1'" in dead["detail"] and dead["original_value"] == b"abc"


@pytest.mark.parametrize(("header", "seq"), [
    (b"0", 0), (b"41", 41), (b"9223372036854775807", 2**63 - 1), (None, None),
    (b"", None), (b"-1", None), (b"+5", None), (b" 5", None), (b"5_000", None), (b"4.0", None),
    (b"9223372036854775808", None), (b"\xff", None),
])
def test_the_sequence_header_becomes_seq_or_null(registry, port: int, header, seq) -> None:
    udf = _ingest(port)
    row = udf.eval(_framed(V1, 1, READING), b"dev-1", "telemetry", 0, 7, KAFKA_TS, header)
    assert row[0] is True  # a bad sequence header never costs the record itself
    assert _read(ENRICHED, row[2])["seq"] == seq
    bad = header is not None and seq is None
    assert udf.counters["bad_sequence_header"].count == int(bad)


def test_an_enriched_v2_schema_is_written_without_seq(registry, port: int) -> None:
    """A job not yet upgraded to EnrichedReading v3 writes v2 (issue 6, F4)."""
    udf = _ingest(port, enriched=ENRICHED_V2)
    row = udf.eval(_framed(V1, 1, READING), b"dev-1", "telemetry", 0, 7, KAFKA_TS, b"3")
    out = _read(ENRICHED_V2, row[2])
    assert "seq" not in out and out["event_id"] == "e1"
    with pytest.raises(Exception):  # noqa: B017,PT011 - v2 bytes are not a v3 record
        _read(ENRICHED, row[2])


def test_audit_window_decodes_events_an_earlier_job_version_wrote(registry, port: int) -> None:
    """After an upgrade from a savepoint (F4) the audit windows hold canonical events
    encoded with the previous EnrichedReading schema id: fetched from the registry."""
    from sluice.native import AvroEncoder, UnknownSchemaError
    from sluice.quality import load_suite, suite_path
    from sluice.udfs import AuditWindow

    quality = read_schema(SCHEMAS / "quality-value/v1.avsc")
    _Registry.schemas[41] = ENRICHED_V2
    old = _ingest(port, enriched=ENRICHED_V2)
    old.enriched_encoder = AvroEncoder(ENRICHED_V2, 41)
    event = old.eval(_framed(V1, 1, READING), b"dev-1", "telemetry", 0, 7, KAFKA_TS)[2]
    assert event[1:5] == (41).to_bytes(4, "big")
    suite = load_suite(suite_path(SCHEMAS / "expectations", "telemetry"))

    def audit(conf):  # noqa: ANN001, ANN202
        a = AuditWindow(suites={"telemetry": suite}, enriched_schema=ENRICHED, enriched_id=10,
                        quality_schema=quality, quality_id=12, window_ms=10_000,
                        registry_conf=conf, registry_retry=RetryPolicy(bound_ms=300, backoff_ms=50))
        a.open(FunctionContext(None, {}))
        return a

    result = audit({"url": f"http://127.0.0.1:{port}"}).result([event])
    assert result is not None and result["record_count"] == 1
    with pytest.raises(UnknownSchemaError):  # control: without the registry it cannot decode
        audit(None).result([event])
