"""Shared checks of the pipeline's output against the independent oracle."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import SluiceConfig
from sluice.generator import (
    FRAMES,
    MAINTENANCE,
    TELEMETRY,
    Generated,
    aligned_start,
    plan,
    produce,
    topic_of,
)
from sluice.kafka_util import ensure_topics, read_committed
from tests import oracle

RECORDS = 1500
STEP_MS = 20  # 30 s of event time → 6 five-second windows per device


def produce_input(cfg: SluiceConfig) -> Generated:
    ensure_topics(cfg)
    g = cfg.generator
    n = int(g.records * (1 + g.frame_share + g.maintenance_share)) + 100
    items = plan(cfg, start_ms=aligned_start(cfg, n * STEP_MS), step_ms=STEP_MS)
    return produce(cfg, items)


def decoded_outputs(cfg: SluiceConfig) -> dict[str, list[dict]]:
    """Every committed output record, decoded with confluent-kafka's AvroDeserializer.
    The job has finished, so whatever it committed is visible; read until idle."""
    topics = [cfg.topics.enriched, cfg.topics.dlq, cfg.topics.scores, cfg.topics.alerts,
              cfg.topics.quality]
    got = read_committed(cfg, topics, idle_timeout=3, max_wait=120)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        return {t: [de(r.value, None) for r in recs] for t, recs in got.items()}


def _ms(v) -> int:  # AvroDeserializer turns timestamp-millis into datetimes
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


def check_against_oracle(
    cfg: SluiceConfig, gen: Generated, devices_csv: Path, outputs: dict[str, list[dict]] | None = None,
    *, seq_required: bool = True,
) -> dict[str, list[dict]]:
    """The job's output equals the oracle's. ``seq_required=False``: canonical events
    written with an EnrichedReading schema before v3 (no `seq`) are accepted too (a run
    that was upgraded midway); the others must still carry the right sequence number."""
    devs = oracle.devices(devices_csv)
    exp_enriched = oracle.expected_enriched(gen, devs)
    exp_windows = oracle.expected_windows(gen, devs, cfg.window.size_ms, cfg.score.default_threshold,
                                          cfg.score.metric)
    exp_alerts = {k: w for k, w in exp_windows.items() if w.is_alert}
    assert exp_alerts, "the generated data must produce at least one alert"
    assert len(exp_alerts) < len(exp_windows), "and at least one quiet window"
    out = decoded_outputs(cfg) if outputs is None else outputs

    # in = out + dlq + late (nothing is late for the per-record outputs: windows come
    # after them), with no duplicates and nothing invented.
    enriched = out[cfg.topics.enriched]
    ids = [e["event_id"] for e in enriched]
    assert len(ids) == len(set(ids)), "duplicate enriched records"
    assert set(ids) == set(exp_enriched), "enriched records differ from the input"
    assert len(enriched) + len(out[cfg.topics.dlq]) == gen.total
    assert Counter(e["source"] for e in enriched) == Counter(
        {"TELEMETRY": len(gen.readings), "SENSOR_FRAME": len(gen.frames),
         "MAINTENANCE": len(gen.work_orders)}) - Counter()
    warnings = oracle.expected_warnings(gen, cfg.path(cfg.quality.suites_dir))
    assert any(warnings.values()), "the generated data must raise some non-blocking warnings"
    for e in enriched:
        want = dict(exp_enriched[e["event_id"]])
        if "seq" not in e and not seq_required:
            del want["seq"]
        got = {k: e[k] for k in want}
        got["ts"] = _ms(got["ts"])
        assert got == want, e["event_id"]
        assert set(e["quality_warnings"]) == warnings.get(e["event_id"], set()), e["event_id"]

    # The DLQ holds exactly the corrupt records, byte for byte, with their reasons
    # (a multiset: an empty value or a tombstone can occur more than once).
    dlq = out[cfg.topics.dlq]
    input_of = {topic_of(cfg, src): src for src in (TELEMETRY, FRAMES, MAINTENANCE)}
    got_dlq = Counter((input_of[d["source_topic"]], d["original_value"], d["reason"]) for d in dlq)
    assert len(dlq) == len(gen.corrupt), "DLQ size differs (missing or duplicate dead letters)"
    assert got_dlq == oracle.expected_dead_letters(gen)
    want_failed = Counter((c.value, tuple(oracle.expected_failed_expectations(c.kind)))
                          for c in gen.corrupt)
    assert Counter((d["original_value"], tuple(d["failed_expectations"])) for d in dlq) == want_failed
    for d in dlq:
        assert d["job"] == cfg.job.name
        assert d["detail"]
        assert d["original_key"] is not None and d["original_key"].startswith(b"dev-")

    # Window aggregates: exactly the oracle's, floats within tolerance.
    scores = {(s["device_id"], _ms(s["window_start"])): s for s in out[cfg.topics.scores]}
    assert len(scores) == len(out[cfg.topics.scores]), "duplicate window scores"
    missing, extra = set(exp_windows) - set(scores), set(scores) - set(exp_windows)
    assert not missing and not extra, (
        f"windows differ: {len(missing)} missing, e.g. {sorted(missing)[:5]}; {len(extra)} "
        f"unexpected, e.g. {sorted(extra)[:5]}")
    wrong_counts = {k: (scores[k]["count"], w.count) for k, w in exp_windows.items()
                    if scores[k]["count"] != w.count}
    assert not wrong_counts, f"window counts (got, want) differ: {list(wrong_counts.items())[:8]}"
    for key, w in exp_windows.items():
        s = scores[key]
        assert _ms(s["window_end"]) == w.window_end
        assert s["site_id"] == w.site_id
        assert math.isclose(s["mean"], w.mean, rel_tol=oracle.FLOAT_TOLERANCE), key
        assert s["max"] == w.max
        assert s["threshold"] == w.threshold
        assert s["is_alert"] == w.is_alert
        assert math.isclose(s["score"], w.score, rel_tol=oracle.FLOAT_TOLERANCE)

    if cfg.quality.audit:
        check_audit(cfg, gen, out[cfg.topics.quality])

    alerts = {(a["device_id"], _ms(a["window_start"])): a for a in out[cfg.topics.alerts]}
    assert len(alerts) == len(out[cfg.topics.alerts]), "duplicate alerts"
    assert set(alerts) == set(exp_alerts)
    for key, a in alerts.items():
        assert a["alert_id"] == f"{key[0]}@{key[1]}"
        assert math.isclose(a["mean"], exp_alerts[key].mean, rel_tol=oracle.FLOAT_TOLERANCE)
    return out




def check_audit(cfg: SluiceConfig, gen: Generated, results: list[dict]) -> None:
    """One QualityResult per input and audit window, over exactly the records that
    reached the quality checks, with every expectation of the suite evaluated; the
    blocked records show up as unexpected values of their expectation."""
    window = cfg.quality.audit_window_ms
    want = oracle.expected_audit_counts(gen, window)
    got = Counter()
    for r in results:
        key = (r["source"], _ms(r["window_start"]))
        assert key not in got, f"two audit results for {key}"
        got[key] = r["record_count"]
        assert _ms(r["window_end"]) - _ms(r["window_start"]) == window
        names = [e["name"] for e in r["expectations"]]
        assert len(names) == r["evaluated_expectations"] > 0
        assert 0 <= r["success_ratio"] <= 1
        assert r["successful_expectations"] == sum(e["success"] for e in r["expectations"])
    assert got == want, "audit batches differ from the records that reached the checks"
    blocked = sum(
        e["unexpected_count"] or 0 for r in results if r["source"] == "telemetry"
        for e in r["expectations"]
        if e["name"] in ("expect_column_values_to_be_between(temperature_c)",
                         "expect_column_values_to_match_regex(device_id)"))
    assert blocked == sum(c.kind in ("out-of-range-reading", "bad-device-id") for c in gen.corrupt)
