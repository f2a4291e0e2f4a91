"""The window features of jobs/pipeline.py on a mini-cluster, against the oracle.

One unbounded run per case: the generated input (telemetry, frames, work orders,
corrupt records) is produced in event-time order, or shuffled within the watermark's
out-of-orderness; once the job has read all of it (every input position is in
telemetry.enriched or the DLQ) and its watermark has moved, a second batch follows:
events older than the watermark minus each window's allowed lateness (→ ``late``), and
one event inside a tumbling window that already fired but is within its lateness (a
late firing: the window's vector is emitted again). Then stop-with-drain fires the rest.

The FeatureVectors on ``features`` (last record per key) must equal the oracle's final
vectors (tests/feature_oracle.py, replaying the same arrival order with the Kafka
partitions), floats within 1e-9 relative and quantiles within the sketch's 1 %; the late
side output must hold exactly the oracle's late events per window, and no window counts
them. The in-order case runs with the hashmap state backend, the shuffled one with
RocksDB and incremental checkpoints.
"""

from __future__ import annotations

import math
import random
import socket
import subprocess
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import REPO_ROOT, SluiceConfig
from sluice.features import load_feature_spec
from sluice.generator import Corrupt, Frame, Reading, WorkOrder, aligned_start, plan, produce
from sluice.kafka_util import ensure_topics, read_committed
from tests.conftest import PYTHON, unique_config, write_config
from tests.faults import FlinkRest, OutputWatch
from tests.feature_oracle import OracleResult, expected_features, features_close

pytestmark = pytest.mark.integration

RECORDS = 1500
STEP_MS = 20  # ~35 s of event time
OOO_MS = 1000

SPEC = """
version: 1
windows:
  - name: t5s
    kind: tumble
    size: 5s
    allowed_lateness: 6s      # >= size: some fired window is always still open for a late firing
    source: TELEMETRY
    features:
      - field: temperature_c
        aggs: [count, sum, mean, std, min, max, {ewma: {half_life: 2s}}, slope,
               {quantile: {q: 0.95}}, {quantile: {q: 0.999}}]
      - field: humidity_pct
        aggs: [count, mean, max]
  - name: h10s
    kind: hop
    size: 10s
    slide: 5s
    allowed_lateness: 2s
    source: [TELEMETRY, SENSOR_FRAME]
    features:
      - field: vibration_rms
        aggs: [count, mean, std, max, slope, {quantile: {q: 0.5}}]
      - field: frame.peak_abs_g
        aggs: [max]
  - name: s3s
    kind: session
    gap: 3s
    allowed_lateness: 1s
    source: SENSOR_FRAME
    features:
      - field: frame.samples
        aggs: [rms, peak, crest_factor, kurtosis, {band_energy: {bands: [[0, 50], [50, 200], [200, 500]]}}]
      - field: frame.mean_g
        aggs: [mean, min]
"""

Key = tuple[str, str, int, int]  # window, device, start, end


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event_id(item: Any) -> str | None:
    return None if isinstance(item, Corrupt) else item.event_id


def _shuffle_within(items: list, bound_ms: int, rng: random.Random) -> list:
    """Each record arrives up to ``bound_ms`` of event time after its turn (never behind
    the watermark, which is max ts - bound)."""
    jitter = [rng.uniform(0, bound_ms - 1) for _ in items]
    order = sorted(range(len(items)), key=lambda i: items[i].ts + jitter[i])
    return [items[i] for i in order]


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s: {what}")
        time.sleep(0.5)


class Run:
    """What one run produced and what the job wrote."""

    def __init__(self, cfg: SluiceConfig, spec_path: Path, items: list, late_items: list,
                 late_firing: Key, vectors: list[dict], late: list[dict],
                 enriched: dict[str, dict]):
        self.cfg, self.items, self.late_items = cfg, items, late_items
        self.spec = load_feature_spec(spec_path)
        self.late_firing, self.vectors, self.late, self.enriched = late_firing, vectors, late, enriched
        self.backend: dict[str, Any] = {}  # the job's /checkpoints/config (REST)

    def oracle_events(self) -> list[dict]:
        """Every valid canonical event in arrival order, with its Kafka split and, for
        frames, its samples; duplicates (a resent event id) only once."""
        events, seen = [], set()
        for item in [*self.items, *self.late_items]:
            eid = _event_id(item)
            if eid is None or eid in seen:
                continue
            seen.add(eid)
            e = self.enriched[eid]
            ev = {**e, "ts": _ms(e["ts"]), "partition": (e["source_topic"], e["source_partition"])}
            if isinstance(item, Frame):
                ev["frame"] = {**e["frame"], "samples": list(item.samples)}
            events.append(ev)
        return events

    def expected(self) -> OracleResult:
        parts = {(t, p) for t in self.cfg.topics.inputs() for p in range(self.cfg.topics.partitions)}
        return expected_features(self.oracle_events(), self.spec, out_of_orderness_ms=OOO_MS,
                                 partitions=sorted(parts))


def run_case(stack: SluiceConfig, tmp_path: Path, case: str) -> Run:
    spec_path = tmp_path / "features.yaml"
    spec_path.write_text(SPEC)
    cfg = unique_config(
        stack, f"feat-{case}",
        job={"bounded": False, "startup_mode": "earliest", "python_execution_mode": "process"},
        generator={"records": RECORDS},
        # No idleness: the oracle does not model it (a partition is never skipped).
        window={"out_of_orderness_ms": OOO_MS, "idle_timeout_ms": 0},
        features={"spec": str(spec_path)},
        checkpoint={"state_backend": "rocksdb" if case == "shuffled" else "hashmap"},
        quality={"audit": False},
    )
    ensure_topics(cfg)
    g = cfg.generator
    n = int(g.records * (1 + g.frame_share + g.maintenance_share)) + 100
    items = plan(cfg, start_ms=aligned_start(cfg, n * STEP_MS), step_ms=STEP_MS)
    if case == "shuffled":
        items = _shuffle_within(items, OOO_MS, random.Random(11))
    cfg_path = write_config(cfg, tmp_path)
    port = _free_port()
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen([PYTHON, "jobs/pipeline.py", "--config", str(cfg_path),
                            "--rest-port", str(port)], cwd=REPO_ROOT, stdout=log,
                           stderr=subprocess.STDOUT)
    rest = FlinkRest(f"http://127.0.0.1:{port}")
    try:
        def running() -> bool:
            if job.poll() is not None:
                raise AssertionError(f"the job exited {job.returncode}: "
                                     f"{(tmp_path / 'job.log').read_text()[-4000:]}")
            try:
                jobs = rest.running_jobs()
            except Exception:  # noqa: BLE001 - the mini-cluster is still starting
                return False
            return bool(jobs) and rest.fully_running(jobs[0]["jid"])

        _wait(running, 240, "the job did not start")
        jid = rest.running_jobs()[0]["jid"]
        backend = rest.get(f"/jobs/{jid}/checkpoints/config")
        backend["job_config"] = {e["key"]: e["value"]
                                 for e in rest.get(f"/jobs/{jid}/jobmanager/config")}
        with OutputWatch(cfg) as watch:
            gen = produce(cfg, items)
            _wait(lambda: watch.inputs_out() >= gen.total, 240,
                  "the job did not read the whole first batch")
            time.sleep(2.0)  # a few watermark intervals: the job's watermark is the oracle's
            late_items, late_firing = _late_batch(cfg, items, _watermark(cfg))
            gen2 = produce(cfg, late_items)
            _wait(lambda: watch.inputs_out() >= gen.total + gen2.total, 120,
                  "the job did not read the late batch")
            time.sleep(2.0)
        # Stop with drain: MAX_WATERMARK fires every open window, the last transactions
        # commit, and the mini-cluster script returns (so its REST endpoint goes away).
        r = rest.session.post(f"{rest.url}/jobs/{jid}/stop", timeout=10, json={
            "drain": True, "targetDirectory": (tmp_path / "savepoints").resolve().as_uri()})
        r.raise_for_status()
        assert job.wait(180) == 0, (tmp_path / "job.log").read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
        rest.close()
        log.close()
    out = Run(cfg, spec_path, items, late_items, late_firing, *_outputs(cfg))
    out.backend = backend
    return out


def _watermark(cfg: SluiceConfig) -> int:
    """The source's watermark once it has read everything so far: per input partition the
    greatest record timestamp minus the out-of-orderness, the least over partitions."""
    got = read_committed(cfg, [cfg.topics.enriched], idle_timeout=2, max_wait=60)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        top: dict[tuple[str, int], int] = {}
        for r in got[cfg.topics.enriched]:
            e = de(r.value, None)
            split = (e["source_topic"], e["source_partition"])
            top[split] = max(top.get(split, 0), _ms(e["ts"]))
    assert len(top) == len(cfg.topics.inputs()) * cfg.topics.partitions, (
        f"every input partition must hold records, or the watermark never moves: {sorted(top)}")
    return min(top.values()) - OOO_MS


def _late_batch(cfg: SluiceConfig, items: list, wm: int) -> tuple[list, Key]:
    """Events far behind the watermark ``wm`` for every window (two readings, a frame),
    and one reading in the newest tumbling window that already fired (t5s: 5 s, lateness
    6 s, so that window is still kept)."""
    valid = [i for i in items if not isinstance(i, Corrupt | WorkOrder)]
    first = min(i.ts for i in valid)
    frame = next(i for i in valid if isinstance(i, Frame))
    readings = [i for i in valid if isinstance(i, Reading)]
    old = [replace(readings[k], event_id=f"late-{k}", ts=first + 100 + k, seq=-1) for k in (0, 1)]
    old_frame = replace(frame, ts=first + 50, seq=-1)
    end = (wm + 1) // 5000 * 5000  # the newest t5s window with end - 1 <= watermark
    r = readings[-1]
    fired = replace(r, event_id="late-firing", ts=end - 1 - 300, seq=-1)
    # end - 1 <= wm < end - 1 + 5000: the window fired and is kept until end - 1 + 6000.
    return [*old, old_frame, fired], ("t5s", r.device_id, end - 5000, end)


def _outputs(cfg: SluiceConfig) -> tuple[list[dict], list[dict], dict[str, dict]]:
    t = cfg.topics
    got = read_committed(cfg, [t.features, t.late, t.enriched], idle_timeout=3, max_wait=120)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        vectors = [{**de(r.value, None), "_key": r.key, "_offset": r.offset} for r in got[t.features]]
        late = [de(r.value, None) for r in got[t.late]]
        enriched = {e["event_id"]: e for e in (de(r.value, None) for r in got[t.enriched])}
    return vectors, late, enriched


def final_vectors(vectors: list[dict]) -> tuple[dict[Key, dict], dict[Key, int]]:
    """The last record of each key (same key → same partition, so offset order), and how
    many records each key has."""
    by_key: dict[Key, list[dict]] = defaultdict(list)
    for v in vectors:
        by_key[(v["window"], v["device_id"], _ms(v["window_start"]), _ms(v["window_end"]))].append(v)
    final = {}
    for k, vs in by_key.items():
        vs.sort(key=lambda v: v["_offset"])
        assert len({v["_key"] for v in vs}) == 1
        assert [_ms(v["computed_at"]) for v in vs] == sorted(_ms(v["computed_at"]) for v in vs)
        final[k] = vs[-1]
    return final, {k: len(vs) for k, vs in by_key.items()}


def check_features(run: Run, vectors: list[dict] | None = None,
                   late: list[dict] | None = None) -> OracleResult:
    """The job's output equals the oracle's (raises AssertionError naming the first
    difference)."""
    vectors = run.vectors if vectors is None else vectors
    late = run.late if late is None else late
    exp = run.expected()
    want = exp.final_by_key()
    got, n_records = final_vectors(vectors)
    missing = set(want) - set(got)
    assert not missing, f"{len(missing)} windows missing, e.g. {sorted(missing)[:3]}"
    for k in set(got) - set(want):
        # only a session that a late event merged into a bigger one may be left over
        assert k[0] == "s3s" and any(
            w[:2] == k[:2] and w[2] <= k[2] and k[3] <= w[3] for w in want), f"unexpected {k}"
    version = run.spec.spec_version()
    for k, w in want.items():
        v = got[k]
        assert v["event_count"] == w.event_count, (k, v["event_count"], w.event_count)
        assert v["site_id"] == w.site_id, k
        assert v["window_kind"] == w.window_kind and v["feature_spec_version"] == version, k
        assert v["features"].keys() == w.features.keys(), (k, sorted(v["features"]), sorted(w.features))
        for name, x in w.features.items():
            assert features_close(name, v["features"][name], x), (k, name, v["features"][name], x)
    # the late firing: the window fired on time, then again with the late event
    assert any(e.key == run.late_firing and e.firing == "late" for e in exp.emissions)
    assert n_records[run.late_firing] >= 2, "the late firing did not re-emit the window"
    # late side output: exactly the oracle's, per window; the watermark proves it was late
    want_late = sorted((w, e["event_id"]) for w, evs in exp.late.items() for e in evs)
    assert sorted((r["window"], r["event_id"]) for r in late) == want_late, "late records differ"
    lateness = {w.name: w.allowed_lateness for w in run.spec.windows}
    for r in late:
        assert _ms(r["ts"]) + lateness[r["window"]] <= _ms(r["watermark"]), r
    # ... and no window counts them: every event is in exactly one tumbling window and one
    # session, so the final counts add up to the window's events minus its late ones
    events = run.oracle_events()
    for name, src in (("t5s", {"TELEMETRY"}), ("s3s", {"SENSOR_FRAME"})):
        counted = sum(w.event_count for k, w in want.items() if k[0] == name)
        in_src = sum(e["source"] in src for e in events)
        assert counted == in_src - len(exp.late[name]), name
    return exp


@pytest.fixture(scope="module", params=["in-order", "shuffled"])
def run(request, stack: SluiceConfig, tmp_path_factory) -> Run:
    return run_case(stack, tmp_path_factory.mktemp(request.param), request.param)


def test_features_equal_the_oracle(run: Run) -> None:
    exp = check_features(run)
    # the run is meaningful: every window kind produced vectors and lost late events
    assert {k[0] for k in exp.final_by_key()} == {"t5s", "h10s", "s3s"}
    assert all(exp.late[w] for w in ("t5s", "h10s", "s3s")), {w: len(v) for w, v in exp.late.items()}
    assert len(exp.final) > 200
    print(f"\n{len(run.vectors)} feature records, {len(exp.final)} final vectors compared, "
          f"{sum(len(w.features) for w in exp.final)} feature values; late per window "
          f"{ {w: len(v) for w, v in exp.late.items()} }; late firings "
          f"{sum(e.firing == 'late' for e in exp.emissions)}")
    # the late events are in telemetry.enriched all the same (late is per window, not a loss)
    assert {e["event_id"] for evs in exp.late.values() for e in evs} <= set(run.enriched)


def test_feature_check_fails_on_a_wrong_output(run: Run) -> None:
    """Negative controls: a feature off by 1e-6 relative, a lost late record, a lost
    vector, a vector counted twice its events."""
    vectors = [dict(v, features=dict(v["features"])) for v in run.vectors]
    final, _ = final_vectors(vectors)
    target = next(v for k, v in final.items() if k[0] == "t5s")
    target["features"]["temperature_c.mean"] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        check_features(run, vectors=vectors)
    with pytest.raises(AssertionError, match="late records differ"):
        check_features(run, late=run.late[1:])
    last = max(run.vectors, key=lambda v: (v["window"] != "h10s", v["_offset"]))
    with pytest.raises(AssertionError):
        check_features(run, vectors=[v for v in run.vectors if v is not last])
    doubled = [dict(v) for v in run.vectors]
    doubled[-1]["event_count"] *= 2
    with pytest.raises(AssertionError):
        check_features(run, vectors=doubled)


def test_state_backend_is_the_configured_one(run: Run) -> None:
    """checkpoint.state_backend reaches the job: RocksDB with incremental checkpoints in
    the shuffled case, the heap (hashmap) backend in the other."""
    rocks = run.cfg.checkpoint.state_backend == "rocksdb"
    assert ("RocksDB" in run.backend["state_backend"]) == rocks, run.backend
    incremental = run.backend["job_config"].get("execution.checkpointing.incremental")
    assert incremental == ("true" if rocks else None), incremental


def test_quantiles_are_within_the_sketch_accuracy(run: Run) -> None:
    """The quantiles are the sketch's, not exact (1 % relative), yet never off by more."""
    exp = run.expected().final_by_key()
    final, _ = final_vectors(run.vectors)
    diffs = [abs(final[k]["features"][n] / x - 1) for k, w in exp.items() for n, x in w.features.items()
             if ".p" in n and x]
    assert diffs and max(diffs) <= 0.01
    assert not any(math.isnan(x) for v in run.vectors for x in v["features"].values())


def test_demo_spec_in_thread_mode_matches_the_oracle(stack: SluiceConfig, tmp_path: Path) -> None:
    """The repo's own features.yaml without its session window (thread mode refuses
    sessions, see check_execution_mode): 1 min tumbling and 5 min hop windows on a bounded
    run in thread mode (pemja), with checkpoints every 2 s; the end of input fires every
    window, and the vectors equal the oracle's; nothing is late in event-time order."""
    import yaml

    doc = yaml.safe_load((REPO_ROOT / "features.yaml").read_text())
    doc["windows"] = [w for w in doc["windows"] if w["kind"] != "session"]
    spec_path = tmp_path / "features.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    cfg = unique_config(
        stack, "feat-thread",
        job={"bounded": True, "startup_mode": "earliest", "python_execution_mode": "thread"},
        generator={"records": RECORDS}, quality={"audit": False},
        features={"spec": str(spec_path)},
    )
    ensure_topics(cfg)
    g = cfg.generator
    n = int(g.records * (1 + g.frame_share + g.maintenance_share)) + 100
    items = plan(cfg, start_ms=aligned_start(cfg, n * STEP_MS * 10), step_ms=STEP_MS * 10)
    produce(cfg, items)
    out = subprocess.run([PYTHON, "jobs/pipeline.py", "--config", str(write_config(cfg, tmp_path))],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    (tmp_path / "job.log").write_text(out.stdout + out.stderr)
    causes = [ln for ln in (out.stdout + out.stderr).splitlines() if "Caused by" in ln]
    assert out.returncode == 0, "\n".join(causes[:20]) + (out.stdout + out.stderr)[-3000:]
    vectors, late, enriched = _outputs(cfg)
    spec = load_feature_spec(spec_path)
    run = Run(cfg, spec_path, items, [], ("", "", 0, 0), vectors, late, enriched)
    exp = expected_features(sorted(run.oracle_events(), key=lambda e: e["ts"]), spec,
                            out_of_orderness_ms=cfg.window.out_of_orderness_ms)
    want = exp.final_by_key()
    got, _ = final_vectors(vectors)
    assert {k[0] for k in want} == {"temp_1m", "vib_5m"} and len(want) > 50
    assert got.keys() == want.keys()
    for k, w in want.items():
        assert got[k]["event_count"] == w.event_count, k
        assert got[k]["features"].keys() == w.features.keys(), k
        for name, x in w.features.items():
            assert features_close(name, got[k]["features"][name], x), (k, name)
    assert not late and not any(exp.late.values())
