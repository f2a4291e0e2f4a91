"""F6: the schema registry is down for at least 30 s mid-stream, and writer schema ids
the job has never seen appear meanwhile.

The job runs unbounded under `flink run`. Slice A is written by v1 producers only, so the
job caches the v1 id and nothing else. Then the registry process is killed. Slice B is
v1, v2 and v3 at once; it was serialized while the registry was up, so the v2 and v3 ids
exist but the job has never fetched them. B is sent during the outage. After 30 s or
more the registry is started again, and once the job's cool-down has passed, slice C
(all writers) is sent. The test requires:

- the job never restarts: it neither crashes nor stalls for good;
- cached ids keep flowing: every v1 reading of B is a canonical event;
- unseen ids wait a bounded time, then go to the DLQ as `unknown-schema` with
  `RegistryUnavailable`; at least one did, so the outage really hit the job;
- each B reading ends up exactly once, either as a canonical event or as such a dead
  letter, and everything else is exactly what the oracle expects;
- after the registry is back, every reading of C is decoded (v2 and v3 included);
- `sluice verify`'s accounting holds, and no transaction hangs.

Then the outage's dead letters are replayed (the registry is back, so they decode) into
a repair topic, and a catch-up run turns every one of them into a canonical event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.flink import flink_run_command
from sluice.generator import (
    aligned_start,
    encode_items,
    plan,
    produce,
    produce_encoded,
    with_sequence_numbers,
)
from sluice.kafka_util import ensure_topics
from sluice.stack import StackPorts, status, up
from sluice.verify import verify
from tests import oracle
from tests.conftest import PYTHON, RUN_DIR, run_job, unique_config, write_config
from tests.faults import FlinkRest, OutputWatch, job_id_from_output, log_line, merge
from tests.pipeline_checks import _ms, decoded_outputs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

OUTAGE_S = 30
STEP_MS = 20


def _kill_registry() -> int:
    reg = status(RUN_DIR).components["registry"]
    if not reg.running or reg.pid is None:
        pytest.skip("no registry of the local stack to stop (external stack?)")
    os.kill(reg.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not Path(f"/proc/{reg.pid}").exists():
            return reg.pid
        time.sleep(0.2)
    raise AssertionError(f"registry pid {reg.pid} did not die")


def test_registry_down_30s_with_new_writer_ids(stack: SluiceConfig, flink_cluster: Path,
                                               tmp_path: Path) -> None:
    cfg = unique_config(
        stack, "f6-registry",
        job={"startup_mode": "earliest", "bounded": False, "restart_attempts": 3},
        checkpoint={"interval_ms": 1000},
        registry={"unknown_id_retry_ms": 3000, "retry_backoff_ms": 200,
                  "unknown_id_cooldown_ms": 4000},
        generator={"records": 600, "corrupt_non_avro": 0, "corrupt_unknown_schema": 0,
                   "corrupt_truncated": 0, "corrupt_each_rare_kind": 0},
        quality={"audit": False},
    )
    ensure_topics(cfg)
    span = 3 * 700 * STEP_MS
    start = aligned_start(cfg, span)
    # One bad record in A, so the output watch has the DeadLetter schema cached before
    # the registry goes (it decodes enriched and dlq records as they come).
    only_v1 = cfg.with_overrides(generator={"writer_weights": {"v1": 1, "v2": 0, "v3": 0},
                                            "corrupt_non_avro": 1})
    a = plan(only_v1, start_ms=start, step_ms=STEP_MS)
    b = plan(cfg.with_overrides(generator={"seed": 43}),
             start_ms=a[-1].ts + STEP_MS, step_ms=STEP_MS)
    c = plan(cfg.with_overrides(generator={"seed": 44}),
             start_ms=b[-1].ts + STEP_MS, step_ms=STEP_MS)
    # Three plans, one stream: each device's sequence numbers run on across the slices.
    numbered = with_sequence_numbers(a + b + c)
    a, b, c = numbered[:len(a)], numbered[len(a):len(a) + len(b)], numbered[len(a) + len(b):]
    b_wire = encode_items(cfg, b)  # registers v2/v3: their ids exist, the job has not seen them
    gen_a = produce(cfg, a)

    rest = FlinkRest(str(status(RUN_DIR).flink_rest_url))
    out = run_job(flink_run_command(cfg, write_config(cfg, tmp_path), python=PYTHON, detached=True),
                  timeout=300, env={"FLINK_CONF_DIR": str(flink_cluster)})
    jid = job_id_from_output(out)
    registry_down = False
    try:
        with OutputWatch(cfg) as watch:
            rest.wait_fully_running(jid, 180)
            rest.wait(lambda: watch.inputs_out() >= gen_a.total, 120,
                      lambda: f"A not out ({watch.inputs_out()} of {gen_a.total})")
            assert watch.count(cfg.topics.dlq) == 1
            t_down = time.monotonic()
            _kill_registry()
            registry_down = True
            gen_b = produce_encoded(cfg, b_wire, rate_eps=len(b_wire) / (OUTAGE_S * 0.6))
            rest.wait(lambda: watch.inputs_out() >= gen_a.total + gen_b.total, 120,
                      lambda: f"B not out during the outage ({watch.inputs_out()})")
            b_out_s = time.monotonic() - t_down
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
            up(RUN_DIR, StackPorts.from_env(), flink=False)
            registry_down = False
            outage_s = time.monotonic() - t_down
            time.sleep(cfg.registry.unknown_id_cooldown_ms / 1000 + 1)
            gen_c = produce(cfg, c)
            gen = merge([gen_a, gen_b, gen_c])
            rest.wait(lambda: watch.inputs_out() >= gen.total, 120,
                      lambda: f"C not out ({watch.inputs_out()} of {gen.total})")
            restarts = rest.num_restarts(jid)
            rest.stop_with_drain(jid, tmp_path / "savepoints")
    finally:
        if registry_down:
            with contextlib.suppress(Exception):
                up(RUN_DIR, StackPorts.from_env(), flink=False)
        rest.cancel(jid)
        rest.close()

    assert restarts == 0, "the job restarted: the outage must not fail it"
    outs = decoded_outputs(cfg)
    enriched = {e["event_id"]: e for e in outs[cfg.topics.enriched]}
    dlq = outs[cfg.topics.dlq]
    assert len(enriched) == len(outs[cfg.topics.enriched]), "duplicate canonical events"

    # B during the outage: v1 flowed from the cache; new ids waited, then dead-lettered.
    b_readings = gen_b.readings
    for r in b_readings:
        if r.writer == "v1":
            assert r.event_id in enriched, f"cached v1 id stalled: {r.event_id}"
    outage_dead = [d for d in dlq if d["reason"] == "unknown-schema"]
    assert outage_dead, "no record met the outage: the test did not test anything"
    assert all(d["error_class"] == "RegistryUnavailable" for d in outage_dead)
    dead_positions = {(d["source_topic"], d["source_partition"], d["source_offset"]) for d in dlq}
    assert len(dead_positions) == len(dlq), "a dead letter written twice"
    n_new = sum(r.writer != "v1" for r in b_readings)
    n_enriched_new = sum(r.writer != "v1" and r.event_id in enriched for r in b_readings)
    assert n_enriched_new + len(outage_dead) == n_new, "a B reading lost or doubled"
    # After the outage every reading decodes, v2 and v3 included.
    assert {r.writer for r in gen_c.readings} == {"v1", "v2", "v3"}
    assert all(r.event_id in enriched for r in gen_c.readings)
    # Everything else is the oracle's: frames, work orders, A, C and the B readings that made it.
    expected = oracle.expected_enriched(gen, oracle.devices(cfg.path(cfg.reference.devices_csv)))
    dead_ids = set(expected) - set(enriched)
    assert len(dead_ids) == len(outage_dead)
    for event_id, e in enriched.items():
        got = {k: e[k] for k in expected[event_id]}
        got["ts"] = _ms(got["ts"])
        assert got == expected[event_id], event_id

    rep = verify(cfg, idle_timeout=2)
    assert rep.ok, rep.as_dict()
    log_line(f"F6 registry outage: {gen.total} records in ({len(gen_b.readings)} readings during "
          f"the outage, {n_new} of them with unseen writer ids); registry down {outage_s:.0f} s; "
          f"B accounted for after {b_out_s:.0f} s; {len(outage_dead)} dead-lettered as "
          f"unknown-schema, {n_enriched_new} decoded; restarts {restarts}; "
          f"{len(enriched)} canonical events, windows {rep.windows}")
    _replay_outage_dead_letters(cfg, tmp_path, dead_ids, len(outage_dead))


def _replay_outage_dead_letters(cfg: SluiceConfig, tmp_path: Path, dead_ids: set[str],
                                n_dead: int) -> None:
    """The registry is back: replay the outage's dead letters into a repair topic and
    let a bounded catch-up run decode them all."""
    from sluice.dlq_replay import Selection, replay_dead_letters

    repair = cfg.with_overrides(
        topics={name: f"{getattr(cfg.topics, name)}.repair"
                for name in ("telemetry", "sensor_frames", "maintenance", "enriched", "dlq",
                             "scores", "alerts")},
        job={"bounded": True, "consumer_group": f"{cfg.job.consumer_group}-repair",
             "transactional_id_prefix": f"{cfg.job.transactional_id_prefix}-repair"},
    )
    ensure_topics(repair)
    report = replay_dead_letters(cfg, Selection(reasons=frozenset({"unknown-schema"})),
                                 to_topic=repair.topics.telemetry)
    assert len(report.replayed) == n_dead
    run_job([PYTHON, "jobs/pipeline.py", "--config", str(write_config(repair, tmp_path))])
    repaired = decoded_outputs(repair)
    assert {e["event_id"] for e in repaired[repair.topics.enriched]} == dead_ids
    assert repaired[repair.topics.dlq] == []
