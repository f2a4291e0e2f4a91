"""The online feature store on the real stack: FeatureVector records committed (and
aborted) the way the job's exactly-once sink writes them, with duplicates and windows
out of order, materialised into the stack's redis-server; the store must equal an
independent oracle (tests/feature_store_oracle.py) computed from the committed records.
Then Redis is SIGKILLed mid-run and restarted empty: the materializer backs off, keeps
its position and rebuilds the store from Kafka."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from sluice.config import SluiceConfig
from sluice.feature_store import FeatureStore, Materializer, UnknownDevice, materialize
from sluice.kafka_util import ensure_topics, read_to_end
from sluice.registry import output_schema
from tests.conftest import PYTHON, RUN_DIR, _external_stack, run_job, stack_ports, unique_config, write_config
from tests.feature_store_oracle import diff, latest

pytestmark = pytest.mark.integration

WINDOWS = ("temp_1m", "vib_5m")
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
OUTAGE_S = 4.0


def _cfg(stack: SluiceConfig, name: str, **fs: Any) -> SluiceConfig:
    cfg = unique_config(stack, name)
    tag = cfg.topics.features.split(".")[0]
    return cfg.with_overrides(feature_store={
        "key_prefix": f"test:{tag}:", "consumer_group": f"fs-{tag}", "batch_size": 40,
        "backoff_initial_ms": 100, "backoff_max_ms": 1000, "socket_timeout_s": 2, **fs})


class Writer:
    """FeatureVectors framed like the job's sink (registry id + Avro), keyed like the job
    (device@window@start: a device's windows spread over the partitions), produced in
    Kafka transactions that commit or abort."""

    def __init__(self, cfg: SluiceConfig):
        from sluice.actions import ConfluentAvroEncoder

        self.cfg = cfg
        ensure_topics(cfg, [cfg.topics.features])
        sch = output_schema(cfg, cfg.schemas.features)
        self.encode = ConfluentAvroEncoder(sch.schema_str, sch.schema_id)
        self.producer = Producer({**cfg.kafka.client_properties(),
                                  "transactional.id": f"{cfg.job.transactional_id_prefix}-fs",
                                  "enable.idempotence": True})
        self.producer.init_transactions(30)
        self.committed: list[dict[str, Any]] = []
        self.aborted: list[dict[str, Any]] = []

    def txn(self, vectors: list[dict[str, Any]], *, commit: bool = True) -> None:
        p = self.producer
        p.begin_transaction()
        for v in vectors:
            key = f"{v['device_id']}@{v['window']}@{v['window_start']}".encode()
            p.produce(self.cfg.topics.features, key=key, value=self.encode(v))
        p.flush(30)
        if commit:
            p.commit_transaction(30)
            self.committed += vectors
        else:
            p.abort_transaction(30)
            self.aborted += vectors


def vectors(rng: random.Random, devices: range, slots: range, *, dups: int = 0) -> list[dict[str, Any]]:
    out = []
    for d in devices:
        for w in WINDOWS:
            for t in slots:
                size = 60_000 if w == "temp_1m" else 300_000
                start = T0 + t * 60_000
                for firing in range(rng.choice((1, 1, 2))):  # some late firings
                    out.append({
                        "device_id": f"dev-{d:03d}", "site_id": f"site-{d % 3}", "window": w,
                        "window_kind": "TUMBLE" if w == "temp_1m" else "HOP",
                        "window_start": start, "window_end": start + size,
                        "event_count": 5 + firing,
                        "features": {"temperature_c.mean": round(rng.uniform(10, 90), 3),
                                     "temperature_c.max": round(rng.uniform(90, 99), 3)},
                        "feature_spec_version": "spec-test",
                        "computed_at": start + size + 1000 + firing * 2000,
                    })
    out += [dict(v) for v in rng.sample(out, dups)]
    rng.shuffle(out)  # out of order within and across windows
    return out


def store_state(store: FeatureStore, devices: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    got = {}
    for d in sorted(devices):
        try:
            for sv in store.get(d):
                got[(sv.device_id, sv.window)] = sv.to_dict()
        except UnknownDevice:
            pass
    return got


def test_store_equals_the_oracle_aborted_duplicates_out_of_order(stack: SluiceConfig) -> None:
    cfg = _cfg(stack, "fstore")
    rng = random.Random(5)
    w = Writer(cfg)
    w.txn(vectors(rng, range(0, 8), range(0, 6), dups=10))
    # Aborted: windows newer than anything committed, and a device nobody commits.
    w.txn(vectors(rng, range(0, 9), range(50, 52)), commit=False)
    w.txn(vectors(rng, range(0, 8), range(3, 9), dups=20))  # overlaps: duplicates, refinements
    w.txn(vectors(rng, range(0, 8), range(1, 3)))  # older windows arriving last: must not win
    t0 = time.monotonic()
    counts = materialize(cfg, bounded=True, max_wait_s=60)
    took = time.monotonic() - t0
    assert counts["stopped_by"] == "end-offsets", counts
    n = len(w.committed)
    assert counts["read"] == n and counts["written"] + counts["stale"] == n, counts
    assert counts["stale"] > 0 and counts["undecodable"] == 0

    store = FeatureStore(cfg.feature_store)
    devices = {v["device_id"] for v in w.committed + w.aborted}
    oracle = latest(w.committed)
    got = store_state(store, devices)
    assert diff(oracle, got) == []
    assert "dev-008" not in {d for d, _ in got}, "a device of the aborted transaction is in the store"
    assert max(g["window_start"] for g in got.values()) < T0 + 50 * 60_000
    assert all(0 < g["ttl_left_s"] <= cfg.feature_store.ttl_s for g in got.values())

    # Offsets were committed: a second bounded run has nothing to read.
    again = materialize(cfg, bounded=True, max_wait_s=60)
    assert again["read"] == 0 and again["stopped_by"] == "end-offsets", again
    # A full replay (new group, same store) changes nothing.
    regroup = {"consumer_group": f"{cfg.feature_store.consumer_group}-r"}
    replay = materialize(cfg.with_overrides(feature_store=regroup), bounded=True, max_wait_s=60)
    assert replay["read"] == n and replay["written"] == 0 and replay["stale"] == n, replay
    assert diff(oracle, store_state(store, devices)) == []
    print(f"\nmaterialised {n} committed vectors ({len(w.aborted)} aborted) in {took:.1f} s: {counts}")


def test_negative_control_a_dropped_record_fails_the_comparison(stack: SluiceConfig) -> None:
    cfg = _cfg(stack, "fstore-neg")
    w = Writer(cfg)
    w.txn(vectors(random.Random(6), range(0, 4), range(0, 4)))
    materialize(cfg, bounded=True, max_wait_s=60)
    store = FeatureStore(cfg.feature_store)
    devices = {v["device_id"] for v in w.committed}
    oracle = latest(w.committed)
    assert diff(oracle, store_state(store, devices)) == []
    # Drop the record that is the latest of one (device, window), on either side.
    key = sorted(oracle)[0]
    dropped = [v for v in w.committed if v is not oracle[key] and not (
        (v["device_id"], v["window"]) == key and v["window_end"] == oracle[key]["window_end"]
        and v["computed_at"] == oracle[key]["computed_at"])]
    assert diff(latest(dropped), store_state(store, devices)) != []
    store.r.delete(store.vector_key(*key))
    assert diff(oracle, store_state(store, devices)) == [f"{key}: missing from the store"]


def _redis_pid() -> int:
    from sluice.stack import status

    st = status(RUN_DIR).components["redis"]
    if not st.running or st.pid is None:
        pytest.skip("no redis-server of the local stack to stop (external stack?)")
    return st.pid


def _wait(cond: Any, timeout: float, what: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(0.2)


def test_redis_down_the_materializer_waits_and_catches_up(stack: SluiceConfig) -> None:
    if _external_stack():
        pytest.skip("stops the local stack's redis-server")
    from sluice.stack import up

    cfg = _cfg(stack, "fstore-down")
    rng = random.Random(9)
    w = Writer(cfg)
    store = FeatureStore(cfg.feature_store)
    m = Materializer(cfg)
    result: dict[str, Any] = {}
    th = threading.Thread(target=lambda: result.update(s=m.run(max_wait_s=120)), daemon=True)
    th.start()
    redis_down = False
    try:
        w.txn(vectors(rng, range(0, 6), range(0, 4), dups=5))
        devices = {f"dev-{d:03d}" for d in range(0, 7)}
        _wait(lambda: diff(latest(w.committed), store_state(store, devices)) == [], 30,
              lambda: f"A not in the store: {diff(latest(w.committed), store_state(store, devices))[:5]}")

        pid = _redis_pid()
        os.kill(pid, signal.SIGKILL)
        redis_down = True
        _wait(lambda: not Path(f"/proc/{pid}").exists(), 10, lambda: f"redis pid {pid} lives")
        t_down = time.monotonic()
        w.txn(vectors(rng, range(2, 7), range(4, 7), dups=5))  # B, during the outage
        w.txn(vectors(rng, range(0, 7), range(90, 92)), commit=False)
        _wait(lambda: m.summary.redis_retries >= 3 and time.monotonic() - t_down > OUTAGE_S, 30,
              lambda: "the materializer never retried")
        assert th.is_alive(), f"the materializer gave up: {result}"
        up(RUN_DIR, stack_ports(), flink=False)  # redis comes back empty (no persistence)
        redis_down = False
        outage = time.monotonic() - t_down
        w.txn(vectors(rng, range(0, 7), range(6, 8)))  # C, after it

        oracle = latest(w.committed)
        _wait(lambda: diff(oracle, store_state(store, devices)) == [], 40,
              lambda: f"store did not catch up: {diff(oracle, store_state(store, devices))[:5]}")
    finally:
        m.request_stop()
        th.join(30)
        if redis_down:
            up(RUN_DIR, stack_ports(), flink=False)
    s = result["s"]
    assert s.stopped_by == "signal"
    assert s.redis_retries >= 3 and s.outage_s >= OUTAGE_S
    assert s.store_resets >= 1, "redis came back empty: the materializer must have re-read"
    # No offset lost: the group's committed position covers every committed record.
    recs = read_to_end(cfg, cfg.topics.features)
    ends: dict[int, int] = {}
    for r in recs:
        ends[r.partition] = max(ends.get(r.partition, -1), r.offset)
    for p, last in ends.items():
        assert s.offsets[f"{cfg.topics.features}:{p}"] > last, (p, last, s.offsets)
    print(f"\nredis down {outage:.1f} s: {s.to_dict()}")


def test_cli_materialize_once_and_get(stack: SluiceConfig, tmp_path: Path) -> None:
    import json

    cfg = _cfg(stack, "fstore-cli")
    w = Writer(cfg)
    w.txn(vectors(random.Random(3), range(0, 3), range(0, 3)))
    path = write_config(cfg, tmp_path)
    out = run_job([PYTHON, "-m", "sluice.cli", "features", "materialize", "--once", "--json",
                   "-c", str(path)], timeout=120)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["read"] == len(w.committed) and summary["stopped_by"] == "end-offsets"
    got = json.loads(run_job([PYTHON, "-m", "sluice.cli", "features", "get", "dev-001", "--json",
                              "-c", str(path)], timeout=60))
    oracle = latest(w.committed)
    assert {(g["device_id"], g["window"]) for g in got} == {("dev-001", x) for x in WINDOWS}
    for g in got:
        assert g["window_end"] == oracle[("dev-001", g["window"])]["window_end"]
        assert g["age_s"] > 0 and 0 < g["ttl_left_s"] <= cfg.feature_store.ttl_s
    table = run_job([PYTHON, "-m", "sluice.cli", "features", "get", "dev-001", "-w", "vib_5m",
                     "-c", str(path)], timeout=60, env={"COLUMNS": "200"})
    assert "temperature_c.mean" in table and "TTL left" in table
    import subprocess

    unknown = subprocess.run([PYTHON, "-m", "sluice.cli", "features", "get", "dev-999", "-c", str(path)],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert unknown.returncode == 1 and "no device 'dev-999'" in unknown.stdout
    down_cfg = cfg.with_overrides(feature_store={"redis_url": "redis://127.0.0.1:1/0"})
    bad = subprocess.run([PYTHON, "-m", "sluice.cli", "features", "get", "dev-001", "-c",
                          str(write_config(down_cfg, tmp_path))], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert bad.returncode == 2 and "unreachable" in bad.stdout


def test_demo_hook_materialises_and_counts(stack: SluiceConfig) -> None:
    from rich.console import Console

    from sluice.demo import demo_feature_store

    cfg = _cfg(stack, "fstore-demo")
    w = Writer(cfg)
    w.txn(vectors(random.Random(4), range(0, 5), range(0, 2), dups=3))
    FeatureStore(cfg.feature_store).upsert({**w.committed[0], "device_id": "left-from-last-run"})
    got = demo_feature_store(cfg, Console(quiet=True))
    assert got["read"] == len(w.committed) and got["stopped_by"] == "end-offsets", got
    assert got["written"] + got["stale"] == got["read"] and got["devices"] == 5, got
    assert got["example_device"] == "dev-000"
    down = demo_feature_store(cfg.with_overrides(
        feature_store={"redis_url": "redis://127.0.0.1:1/0", "socket_timeout_s": 1}), Console(quiet=True))
    assert "error" in down and "ConnectionError" in down["error"], down
