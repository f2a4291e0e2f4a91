"""Smoke test of the `sluice bench` harness (sluice/bench.py) on a tiny input: the Rust
variant, the Flink SQL variant on the same Avro (avro-confluent against the registry) and
the raw-consume limit, every record counted, results.json shaped as the docs say. The
measurements themselves are not asserted (bench numbers are not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.bench import bench_config, run, run_kafka_limit
from sluice.config import SluiceConfig
from sluice.kafka_util import read_committed

pytestmark = pytest.mark.integration


def _mismatches(rust: dict[str, dict], sql: dict[str, dict]) -> list[str]:
    """Event ids whose reading the SQL variant decoded differently from the Rust decoder."""
    def ms(v: object) -> int:
        return v if isinstance(v, int) else int(v.timestamp() * 1000)  # type: ignore[union-attr]

    bad = sorted(set(rust) ^ set(sql))
    for eid in set(rust) & set(sql):
        r, q = rust[eid], sql[eid]
        if ((q["device_id"], q["ts"], q["status"], q["humidity_pct"], q["firmware"],
             q["sample_count"]) != (r["device_id"], ms(r["ts"]), r["status"], r["humidity_pct"],
                                    r["firmware"], r["sample_count"])
                or q["temperature_c"] != pytest.approx(r["temperature_c"], rel=1e-12)
                or q["vibration_rms_g"] != pytest.approx(r["vibration_rms"], rel=1e-6)):
            bad.append(eid)
    return bad


def test_bench_harness_counts_every_record(stack: SluiceConfig, tmp_path: Path) -> None:
    res = run(stack, records=300, names=["rust_eo", "sql", "kafka", "paced_low_latency"],
              out_dir=tmp_path, say=print, rate=200, paced_seconds=3, warmup_seconds=3,
              paced_steps=(0.5, 1.0))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"] == 300
    for name in ("rust_eo", "sql", "kafka"):
        v = saved["variants"][name]
        assert v["records_out"] == 300 and v["counts_match"], v
        assert v["events_per_s"] > 0
    eo = saved["variants"]["rust_eo"]
    assert eo["latency_ms"]["p50"] is not None and eo["cpu_seconds"] > 0
    assert set(saved["ratios"]) == {"rust_vs_kafka_limit", "rust_vs_sql"}
    # The SQL variant decoded the registry's Avro (v1-v3 writers: an alias, promotions,
    # an enum) with Flink's avro-confluent format: field by field, its readings equal what
    # the Rust decoder made of the same records.
    assert "avro-confluent" in saved["variants"]["sql"]["label"]
    tag = saved["input_topic"].removesuffix(".telemetry")
    rust_t, sql_t = f"{tag}.rust_eo.enriched", f"{tag}.sql.enriched"
    got = read_committed(stack, [rust_t, sql_t], idle_timeout=2)
    with SchemaRegistryClient(stack.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        rust = {r["event_id"]: r for r in (de(m.value, None) for m in got[rust_t])}
    sql = {r["event_id"]: r for r in (json.loads(m.value) for m in got[sql_t])}
    assert len(rust) == len(sql) == 300
    assert _mismatches(rust, sql) == []
    # Negative controls of that comparison: one changed temperature, one changed enum
    # value, one missing reading are each found.
    some = sorted(sql)[:3]
    changed = {**sql, some[0]: {**sql[some[0]], "temperature_c": sql[some[0]]["temperature_c"] + 1e-6}}
    assert _mismatches(rust, changed) == [some[0]]
    other = "ok" if sql[some[1]]["status"] != "ok" else "warn"
    assert _mismatches(rust, {**sql, some[1]: {**sql[some[1]], "status": other}}) == [some[1]]
    assert _mismatches(rust, {k: v for k, v in sql.items() if k != some[2]}) == [some[2]]

    # The paced profile: a warm-up, then two rates on one job, every record measured from
    # the send time stamped in it. Its latencies are reported, not asserted.
    paced = saved["variants"]["paced_low_latency"]
    assert paced["paced"] and paced["profile"] == "low-latency"
    assert paced["delivery_guarantee"] == "at-least-once" and paced["target_p99_ms"] == 100
    assert [st["rate_eps"] for st in paced["steps"]] == [100, 200]
    for st in paced["steps"]:
        assert st["records_in"] == st["records_out"] > 0 and st["missing"] == 0, st
        assert 0 < st["latency_ms"]["p50"] <= st["latency_ms"]["p99"] <= st["latency_ms"]["max"]
    assert paced["records_in"] == 600 and paced["warmup"]["records"] == 300
    assert paced["latency_breakdown_ms"]["send_to_processed_at"]["p50"] is not None
    assert paced["events_per_s"] == pytest.approx(200, rel=0.15)
    assert isinstance(paced["meets_target"], bool)
    # No job restarted (a mini-cluster once kept checkpoints in memory, and a paced run's
    # dedup state outgrew its 5 MB: every checkpoint failed and the job restarted).
    assert paced["job_restarts"] == 0 and saved["variants"]["rust_eo"]["job_restarts"] == 0
    assert saved["micro"]["calls"]["avro/decode_resolve_v1_to_v3"]["pyo3_ns"] > 0
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert res["ratios"] == saved["ratios"]

    # Negative control: the count check fails when records are missing (here: more are
    # expected than the input topic holds).
    base = bench_config(stack, 300, "unused", tmp_path).with_overrides(
        topics={"telemetry": saved["input_topic"]})
    short = run_kafka_limit(base, 310, timeout_s=3)
    assert short["records_out"] == 300 and not short["counts_match"]
