"""Unit tests of the pure pieces: scoring helpers, the generator's plan, registry helpers
and the schemas on disk (checked with fastavro and the avro package's own checker)."""

from __future__ import annotations

import io
import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import avro.schema
import fastavro
import pytest
import yaml
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from sluice.config import SluiceConfig, load_config
from sluice.generator import CORRUPT_KINDS, EXPECTED_REASON, RARE_KINDS, Corrupt, Reading, f32, plan
from sluice.registry import load_subjects, read_schema, schema_versions, subject_of
from sluice.udfs import alert_key, epoch_ms, severity, threshold_score

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
ALL_AVSC = sorted(SCHEMAS.rglob("*.avsc"))


# ---------------------------------------------------------------------------------------
# scoring helpers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "threshold", "expected"),
    [(90.0, 80.0, 1.125), (40.0, 80.0, 0.5), (0.0, 80.0, 0.0), (80.0, 80.0, 1.0), (-8.0, 80.0, -0.1)],
)
def test_threshold_score(mean: float, threshold: float, expected: float) -> None:
    assert threshold_score(mean, threshold) == pytest.approx(expected, rel=1e-15)


def test_threshold_score_zero_threshold_is_infinite() -> None:
    assert threshold_score(1.0, 0.0) == math.inf
    assert threshold_score(0.0, 0.0) == math.inf


@pytest.mark.parametrize(
    ("score", "expected"),
    [(1.0, "WARNING"), (1.05, "WARNING"), (math.nextafter(1.1, 0.0), "WARNING"),
     (1.1, "CRITICAL"), (2.0, "CRITICAL"), (math.inf, "CRITICAL")],
)
def test_severity(score: float, expected: str) -> None:
    assert severity(score) == expected


def test_severity_symbols_are_in_alert_schema() -> None:
    schema = json.loads((SCHEMAS / "alerts-value/v1.avsc").read_text())
    sev = next(f for f in schema["fields"] if f["name"] == "severity")["type"]
    assert {severity(s) for s in (1.0, 5.0)} == set(sev["symbols"])


def test_alert_key() -> None:
    assert alert_key("dev-0001", 1_700_000_000_000) == "dev-0001@1700000000000"
    assert alert_key("dev-0001", 0) == alert_key("dev-0001", 0)
    keys = {alert_key(d, w) for d in ("dev-1", "dev-2") for w in (0, 5000, 10000)}
    assert len(keys) == 6


def test_epoch_ms_naive_is_utc() -> None:
    naive = datetime(2024, 1, 1, 0, 0, 0, 123_000)
    assert epoch_ms(naive) == 1_704_067_200_123
    assert epoch_ms(naive.replace(tzinfo=UTC)) == 1_704_067_200_123
    plus2 = datetime(2024, 1, 1, 2, 0, 0, 123_000, tzinfo=timezone(timedelta(hours=2)))
    assert epoch_ms(plus2) == 1_704_067_200_123
    assert epoch_ms(datetime(1970, 1, 1)) == 0
    assert epoch_ms(1_704_067_200_123) == 1_704_067_200_123
    assert epoch_ms(-5) == -5


def test_epoch_ms_exact_for_current_era_millisecond_datetimes() -> None:
    """No float rounding loses a millisecond for 2005..2037 (exact integer arithmetic as
    the oracle). In this span timestamp()*1000 is provably exact: the timestamp lies in
    [1.024 * 2**30, 2**31) s, where the product's half-ulp exceeds 1000x the input error."""
    rng = random.Random(11)
    epoch = datetime(1970, 1, 1)
    lo = (datetime(2005, 1, 1) - epoch) // timedelta(milliseconds=1)
    hi = (datetime(2038, 1, 1) - epoch) // timedelta(milliseconds=1)
    for _ in range(20_000):
        ms = rng.randrange(lo, hi)
        d = epoch + timedelta(milliseconds=ms)
        assert epoch_ms(d) == ms, d


# Regression: epoch_ms once used int(timestamp() * 1000), whose float product can land
# just below the integer, losing 1 ms for ~0.6% of datetimes outside 2005..2037.
@pytest.mark.parametrize(
    ("d", "ms"),
    [
        (datetime(1987, 4, 1, 4, 3, 33, 920_000), 544_248_213_920),
        (datetime(2004, 1, 10, 13, 37, 4, 1_000), 1_073_741_824_001),
        (datetime(2038, 1, 19, 3, 14, 8, 2_000), 2_147_483_648_002),
        (datetime(2039, 3, 8, 19, 46, 13, 411_000), 2_183_226_373_411),
    ],
)
def test_epoch_ms_is_exact_outside_current_era(d: datetime, ms: int) -> None:
    assert (d - datetime(1970, 1, 1)) // timedelta(milliseconds=1) == ms  # the oracle
    assert epoch_ms(d) == ms


# ---------------------------------------------------------------------------------------
# generator.plan / f32
# ---------------------------------------------------------------------------------------


def gen_cfg(**generator: object) -> SluiceConfig:
    """Telemetry only unless a test asks for frames and work orders too."""
    base = load_config(REPO / "sluice.yaml", env={})
    return base.with_overrides(generator={"records": 800, "devices": 12, "frame_share": 0,
                                          "maintenance_share": 0, **generator})


def test_plan_is_deterministic_per_seed() -> None:
    a = plan(gen_cfg(seed=7), start_ms=1_000_000, step_ms=2.5)
    b = plan(gen_cfg(seed=7), start_ms=1_000_000, step_ms=2.5)
    c = plan(gen_cfg(seed=8), start_ms=1_000_000, step_ms=2.5)
    assert a == b
    assert a != c
    assert len(a) == len(c)
    ra = [i for i in a if isinstance(i, Reading)]
    rc = [i for i in c if isinstance(i, Reading)]
    assert [r.temperature_c for r in ra] != [r.temperature_c for r in rc]


@pytest.mark.parametrize(("n_non", "n_unknown", "n_trunc"), [(3, 3, 3), (0, 5, 1), (7, 0, 0), (0, 0, 0)])
def test_plan_corrupt_counts(n_non: int, n_unknown: int, n_trunc: int) -> None:
    cfg = gen_cfg(seed=3, corrupt_non_avro=n_non, corrupt_unknown_schema=n_unknown,
                  corrupt_truncated=n_trunc, corrupt_each_rare_kind=0)
    items = plan(cfg, start_ms=0, step_ms=1)
    corrupt = [i for i in items if isinstance(i, Corrupt)]
    readings = [i for i in items if isinstance(i, Reading)]
    assert len(readings) == 800
    assert len(items) == 800 + n_non + n_unknown + n_trunc
    kinds = [c.kind for c in corrupt]
    assert kinds.count("non-avro") == n_non
    assert kinds.count("unknown-schema") == n_unknown
    assert kinds.count("truncated") == n_trunc
    assert set(kinds) <= set(CORRUPT_KINDS)
    # spread through the stream, not bunched at either end
    positions = [n for n, i in enumerate(items) if isinstance(i, Corrupt)]
    if positions:
        assert positions[0] > 0
        assert positions[-1] < len(items) - 1


def test_plan_includes_each_rare_kind() -> None:
    items = plan(gen_cfg(seed=3, corrupt_each_rare_kind=2), start_ms=0, step_ms=1)
    kinds = [c.kind for c in items if isinstance(c, Corrupt)]
    for kind in RARE_KINDS:
        assert kinds.count(kind) == 2, kind


def test_expected_reasons_cover_every_corrupt_kind() -> None:
    assert set(EXPECTED_REASON) == set(CORRUPT_KINDS)
    assert len(CORRUPT_KINDS) >= 15, "issue 3 asks for a corpus of at least 15 kinds"
    assert set(EXPECTED_REASON.values()) <= {
        "empty", "bad-magic", "unknown-schema", "truncated", "type-mismatch", "trailing-bytes",
        "non-finite", "ts-out-of-range", "oversized", "duplicate-event-id", "bad-crc",
        "unsupported-version", "invalid-utf8", "malformed-json", "too-deep", "missing-field",
        "quality"}


def test_plan_mixes_frames_and_work_orders_into_the_time_line() -> None:
    from sluice.generator import Frame, WorkOrder

    items = plan(gen_cfg(seed=4, frame_share=0.1, maintenance_share=0.05), start_ms=0, step_ms=1)
    readings = [i for i in items if isinstance(i, Reading)]
    frames = [i for i in items if isinstance(i, Frame)]
    orders = [i for i in items if isinstance(i, WorkOrder)]
    assert (len(readings), len(frames), len(orders)) == (800, 80, 40)
    assert len({f.event_id for f in frames}) == 80 and len({o.event_id for o in orders}) == 40
    assert all(len(f.samples) == 64 and all(f32(x) == x for x in f.samples) for f in frames)
    assert {o.kind for o in orders} == {"repair", "inspection", "part_replaced"}
    assert all(bool(o.parts) == (o.kind == "part_replaced") for o in orders)
    ts = [i.ts for i in items]
    assert ts == sorted(ts)


def test_work_order_document_round_trips_through_the_rust_decoder() -> None:
    from sluice.generator import WorkOrder
    from sluice.native import EventDecoder

    w = WorkOrder("wo-1", "dev-0001", 5, "part_replaced", None, "seal \u2192 spare",
                  (("P-1", 2),), (("priority", "2"), ("location", '{"bay":3,"row":"B"}')))
    assert EventDecoder().decode(w.encode()) == (
        "wo-1", "dev-0001", 5, "part_replaced", None, "seal \u2192 spare", [("P-1", 2)],
        {"priority": "2", "location": '{"bay":3,"row":"B"}'})


@pytest.mark.parametrize("step_ms", [1.0, 0.3, 2.5, 17.0])
def test_plan_event_times_non_decreasing(step_ms: float) -> None:
    start = 1_700_000_000_000
    items = plan(gen_cfg(seed=5), start_ms=start, step_ms=step_ms)
    ts = [i.ts for i in items]
    assert all(a <= b for a, b in zip(ts, ts[1:], strict=False))
    assert ts[0] == start
    readings = [i for i in items if isinstance(i, Reading)]
    assert readings[-1].ts == start + int(799 * step_ms)


def test_plan_readings_are_well_formed() -> None:
    cfg = gen_cfg(seed=42)
    readings = [i for i in plan(cfg, start_ms=0, step_ms=1) if isinstance(i, Reading)]
    assert len({r.event_id for r in readings}) == len(readings)
    assert {r.writer for r in readings} == {"v1", "v2", "v3"}
    assert {r.device_id for r in readings} <= {f"dev-{i:04d}" for i in range(12)}
    assert any(r.status == "MAINTENANCE" for r in readings)
    assert any(f32(r.temperature_c) != r.temperature_c for r in readings if r.writer == "v3")
    for r in readings:
        assert f32(r.vibration_rms) == r.vibration_rms  # a float in every version
        if r.writer == "v1":
            assert (r.humidity_pct, r.firmware, r.sample_count) == (None, None, 1)
            assert set(r.as_avro()) == {"event_id", "device_id", "ts", "temperature_c",
                                        "vibration_rms", "status"}
        else:
            assert r.humidity_pct is not None and 20 <= r.humidity_pct <= 80
            assert "firmware" in r.as_avro() and 1 <= r.as_avro()["sample_count"] <= 64
        if r.writer == "v3":
            assert "vibration_rms_g" in r.as_avro() and "vibration_rms" not in r.as_avro()
        else:
            assert r.status in ("OK", "WARN", "FAULT")
            assert f32(r.temperature_c) == r.temperature_c  # exactly representable as Avro float


def test_plan_with_no_readings() -> None:
    items = plan(gen_cfg(records=0, corrupt_non_avro=2, corrupt_each_rare_kind=0), start_ms=99,
                 step_ms=1)
    assert len(items) == 2 + 3 + 3
    assert all(isinstance(i, Corrupt) and i.ts == 99 and i.device_id == "dev-0000" for i in items)


def test_f32_round_trip() -> None:
    rng = random.Random(3)
    for _ in range(2_000):
        x = rng.uniform(-1e6, 1e6)
        y = f32(x)
        assert f32(y) == y  # idempotent
        assert abs(y - x) <= abs(x) * 2**-24
    assert f32(0.5) == 0.5
    assert f32(0.1) != 0.1
    assert f32(0.1) == struct.unpack("<f", b"\xcd\xcc\xcc\x3d")[0]
    assert math.isnan(f32(math.nan))
    assert f32(-math.inf) == -math.inf


def test_f32_is_what_an_avro_float_round_trips_to() -> None:
    schema = fastavro.parse_schema({"type": "record", "name": "F", "fields": [
        {"name": "f", "type": "float"}]})
    rng = random.Random(4)
    for _ in range(500):
        x = rng.uniform(-1e4, 1e4)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, {"f": x})
        buf.seek(0)
        assert fastavro.schemaless_reader(buf, schema, schema)["f"] == f32(x)


# ---------------------------------------------------------------------------------------
# schema files and registry helpers
# ---------------------------------------------------------------------------------------


def test_schema_files_exist() -> None:
    assert len(ALL_AVSC) >= 6


@pytest.mark.parametrize("path", ALL_AVSC, ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_every_schema_parses(path: Path) -> None:
    parsed = fastavro.parse_schema(json.loads(path.read_text()))
    assert parsed["type"] == "record"
    avro.schema.parse(path.read_text())
    text = read_schema(path)
    assert json.loads(text) == json.loads(path.read_text())
    assert "\n" not in text


def test_read_schema_is_whitespace_insensitive(tmp_path: Path) -> None:
    schema = json.loads((SCHEMAS / "telemetry-value/v2.avsc").read_text())
    (tmp_path / "pretty.avsc").write_text(json.dumps(schema, indent=4))
    (tmp_path / "compact.avsc").write_text(json.dumps(schema, separators=(",", ":")))
    (tmp_path / "spaced.avsc").write_text(json.dumps(schema, separators=(" , ", " : ")))
    texts = {read_schema(tmp_path / n) for n in ("pretty.avsc", "compact.avsc", "spaced.avsc")}
    assert len(texts) == 1
    assert json.loads(texts.pop()) == schema


def test_read_schema_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_schema(tmp_path / "nope.avsc")
    bad = tmp_path / "bad.avsc"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_schema(bad)


def test_subject_of() -> None:
    assert subject_of("telemetry-value/v2.avsc") == "telemetry-value"
    assert subject_of("telemetry.enriched-value/v1.avsc") == "telemetry.enriched-value"
    cfg = load_config(REPO / "sluice.yaml", env={})
    subjects = set(load_subjects(SCHEMAS))
    for rel in (cfg.schemas.telemetry_reader, cfg.schemas.enriched, cfg.schemas.scores,
                cfg.schemas.alerts, cfg.schemas.dlq, cfg.schemas.quality):
        assert subject_of(rel) in subjects


def test_subjects_yaml_matches_folders() -> None:
    subjects = load_subjects(SCHEMAS)
    # Schema folders (schemas/expectations/ holds great-expectations suites, not Avro).
    folders = {p.name for p in SCHEMAS.iterdir() if p.is_dir() and any(p.glob("*.avsc"))}
    assert set(subjects) == folders
    cfg = load_config(REPO / "sluice.yaml", env={})
    for name, spec in subjects.items():
        assert spec["compatibility"] == "BACKWARD_TRANSITIVE"
        assert name == f"{spec['topic']}-{spec['part']}"  # TopicNameStrategy
        assert spec["topic"] in cfg.topics.all()
        assert schema_versions(SCHEMAS, name), name


def test_load_subjects_default_and_override(tmp_path: Path) -> None:
    (tmp_path / "subjects.yaml").write_text(yaml.safe_dump({
        "default_compatibility": "FULL",
        "subjects": {"a-value": None, "b-value": {"compatibility": "NONE", "topic": "b"}},
    }))
    assert load_subjects(tmp_path) == {
        "a-value": {"compatibility": "FULL"},
        "b-value": {"compatibility": "NONE", "topic": "b"},
    }


def test_schema_versions_numeric_order(tmp_path: Path) -> None:
    subject = tmp_path / "s-value"
    subject.mkdir()
    for v in (10, 2, 1, 9, 11):
        (subject / f"v{v}.avsc").write_text("{}")
    (subject / "notes.txt").write_text("not a schema")
    got = [p.name for p in schema_versions(tmp_path, "s-value")]
    assert got == ["v1.avsc", "v2.avsc", "v9.avsc", "v10.avsc", "v11.avsc"]
    assert [p.name for p in schema_versions(SCHEMAS, "telemetry-value")] == ["v1.avsc", "v2.avsc", "v3.avsc"]


def _compat(reader: Path | str, writer: Path | str) -> SchemaCompatibilityType:
    def parse(s: Path | str) -> avro.schema.Schema:
        return avro.schema.parse(s.read_text() if isinstance(s, Path) else s)

    result = ReaderWriterCompatibilityChecker().get_compatibility(parse(reader), parse(writer))
    return result.compatibility


def test_telemetry_v2_reads_v1_backward_compatible() -> None:
    v1 = SCHEMAS / "telemetry-value/v1.avsc"
    v2 = SCHEMAS / "telemetry-value/v2.avsc"
    assert _compat(v2, v1) is SchemaCompatibilityType.compatible


@pytest.mark.parametrize("subject", sorted(p.name for p in SCHEMAS.iterdir() if p.is_dir()))
def test_every_subject_is_backward_transitive(subject: str) -> None:
    versions = schema_versions(SCHEMAS, subject)
    for i, newer in enumerate(versions):
        for older in versions[: i + 1]:
            assert _compat(newer, older) is SchemaCompatibilityType.compatible, (newer, older)


def test_compatibility_checker_negative_controls() -> None:
    v1 = json.loads((SCHEMAS / "telemetry-value/v1.avsc").read_text())
    # a new field without a default: v1 data cannot be read
    no_default = json.loads(json.dumps(v1))
    no_default["fields"].append({"name": "site_code", "type": "string"})
    assert _compat(json.dumps(no_default), json.dumps(v1)) is SchemaCompatibilityType.incompatible
    # a type change with no promotion
    retyped = json.loads(json.dumps(v1))
    retyped["fields"][0]["type"] = "int"
    assert _compat(json.dumps(retyped), json.dumps(v1)) is SchemaCompatibilityType.incompatible
    # an enum symbol removed without a reader default
    fewer = json.loads(json.dumps(v1))
    fewer["fields"][5]["type"]["symbols"] = ["OK", "WARN"]
    assert _compat(json.dumps(fewer), json.dumps(v1)) is SchemaCompatibilityType.incompatible


def test_every_planned_record_has_its_devices_next_sequence_number() -> None:
    from collections import defaultdict

    items = plan(gen_cfg(seed=3, corrupt_each_rare_kind=2), start_ms=0, step_ms=1)
    seqs: dict[str, list[int]] = defaultdict(list)
    for item in items:
        seqs[item.device_id].append(item.seq)
    assert seqs and all(s == list(range(len(s))) for s in seqs.values())
    # A resend goes under the key (the device) of the reading it repeats.
    dups = [i for i in items if isinstance(i, Corrupt) and i.kind == "duplicate-event-id"]
    assert dups and all(d.of is not None and d.device_id == d.of.device_id for d in dups)
