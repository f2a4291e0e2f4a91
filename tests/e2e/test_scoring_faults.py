"""Issue 6, layer C: the scoring job (jobs/scoring.py) under a fault, checked by the
independent scoring oracle (tests/scoring_checks.check_scores).

The job runs on a mini-cluster in a child process (tests.scoring_checks.ScoringJob), as
in production but with a REST port the test knows. Its Python worker processes (the Beam
SDK harness, descendants of the job process; the JVM lives on) are SIGKILLed mid-stream:

* S1: after a completed checkpoint with committed scores, right after the next batch of
  vectors went in (an open transaction holds its scores). Flink restarts the job from
  the checkpoint;
* S2: a hot swap across that restart. v2 is announced, the first v2 score is committed,
  then the workers are killed. The restored broadcast state must still say v2: no vector
  after the switch is scored by v1 again (per partition versions only move forward);
* S1 with at-least-once sinks (the negative control): the same fault must make
  check_scores fail on a vector scored twice, nothing missing.

Each exactly-once case requires that the job really restarted (numRestarts >= 1 and a
restored checkpoint in Flink's REST view) and ends with check_scores on the
read_committed output: every vector scored exactly once, by the version it names
(recomputed from the registry), alerts one to one with alerting scores. Each prints and
logs one line in out/test-reports/faults.log.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, IsolationLevel, KafkaError, TopicPartition
from confluent_kafka.admin import OffsetSpec

from sluice.config import SluiceConfig
from sluice.kafka_util import ensure_topics
from sluice.model import ModelVersion, Registry, TrainParams, train
from sluice.model_updates import announce
from sluice.verify import TransactionProbe
from tests.conftest import unique_config, write_config
from tests.faults import (
    FaultError,
    FlinkRest,
    WorkerKill,
    kill_python_workers,
    log_line,
    python_workers,
)
from tests.scoring_checks import (
    MINUTE,
    WINDOW,
    ScoringJob,
    bridge_until,
    check_drift,
    check_scores,
    produce_vectors,
    read_outputs,
    ref,
    synthetic_vectors,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
MODEL = "iforest-fault"
DEVICES = 6
T0 = 1_767_225_600_000
INTERVAL_MS = 4000  # the kill lands between two checkpoints, records in flight
SHIFT = 3.0  # the batch the kill hits: far from the training data, so it alerts
# Drift windows small enough for the run's minutes of vectors: 3-minute windows every
# minute, evaluated from one minute's vectors on (S1 checks the drift output too).
DRIFT = {"window_ms": 3 * MINUTE, "slide_ms": MINUTE, "min_samples": DEVICES, "k_windows": 2}


def written(probe: TransactionProbe) -> int:
    """Records on the probe's partitions, committed or not (the sum of high watermarks)."""
    wanted = {tp: OffsetSpec.latest() for tp in probe.partitions}
    futures = probe.client.list_offsets(wanted, isolation_level=IsolationLevel.READ_UNCOMMITTED,
                                        request_timeout=15)
    return sum(f.result().offset for f in futures.values())


def sid(v: dict[str, Any]) -> str:
    return f"{v['device_id']}@{v['window']}@{v['window_start']}#{MODEL}"


@dataclass
class Run:
    """One scoring job under test, the vectors produced so far and the models."""

    cfg: SluiceConfig
    job: ScoringJob
    rest: FlinkRest
    jid: str
    reg: Registry
    v1: ModelVersion
    v2: ModelVersion
    vectors: list[dict[str, Any]] = field(default_factory=list)
    minute: int = 0  # the next batch's first window, in minutes after T0
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.t0, 1)

    def produce(self, windows: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
        batch = synthetic_vectors(self.cfg, devices=DEVICES, windows=windows,
                                  start_ms=T0 + self.minute * MINUTE, seed=seed, shift=shift)
        produce_vectors(self.cfg, batch)
        self.vectors += batch
        self.minute += windows
        return batch

    def scores(self) -> list[tuple[int, dict[str, Any]]]:
        self.job.alive()
        return read_outputs(self.cfg, [self.cfg.topics.model_scores])[self.cfg.topics.model_scores]

    def distinct_scored(self) -> int:
        return len({s["score_id"] for _, s in self.scores()})

    def outputs(self) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
        got = read_outputs(self.cfg, [self.cfg.topics.model_scores, self.cfg.topics.alerts])
        return got[self.cfg.topics.model_scores], [a for _, a in got[self.cfg.topics.alerts]]

    def checkpoint_id(self) -> int:
        latest = (self.rest.checkpoints(self.jid).get("latest") or {}).get("completed")
        return int(latest["id"]) if latest else 0

    def aim_and_kill(self, seed: int, attempts: int = 5) -> tuple[WorkerKill, int, int]:
        """Wait for a fresh checkpoint, produce a batch, wait until the job has written its
        scores (into an open transaction; with at-least-once sinks, for good), then
        SIGKILL the Python workers before the next checkpoint completes. Returns the kill,
        the checkpoint id before it and the offsets the open transactions held.

        Not later: a Python worker killed once every operator has finished its bundle is
        noticed only when the next record reaches it, and checkpoints go on completing
        meanwhile (tried: waiting for the batch's DriftEvents too left the job RUNNING,
        with a dead worker, for 120 s)."""
        before = self.checkpoint_id()
        self.rest.wait(lambda: self.checkpoint_id() > before, 30,
                       lambda: "no checkpoint completed")
        cp = self.checkpoint_id()
        probe = TransactionProbe(self.cfg, [self.cfg.topics.model_scores])
        written0 = written(probe)

        def hit() -> bool:
            return written(probe) >= written0 + len(batch)

        # Shifted vectors: most of them alert, so the open transactions the kill hits
        # hold alerts as well as scores.
        batch = self.produce(2, seed, shift=SHIFT)
        with contextlib.suppress(FaultError):
            self.rest.wait(hit, INTERVAL_MS / 1000 - 0.5, lambda: "batch not written",
                           interval=0.02)
        held = sum(hw - lso for lso, hw in probe.lag().values())  # 0 with at-least-once
        if self.checkpoint_id() != cp or not hit():
            # A checkpoint slipped in, or the job was too slow: aim at the next one.
            if attempts <= 1:
                raise FaultError("could not hit the job between two checkpoints with a "
                                 "written batch")
            return self.aim_and_kill(seed + 1, attempts - 1)
        # The mini-cluster JVM is a child of the job process, the workers its children:
        # only the Beam harness processes may be hit, never the JVM.
        jvm = [p for p, c in python_workers(self.job.proc.pid).items() if "java" in c]
        assert not jvm, f"the worker filter would kill the JVM: {jvm}"
        kill = kill_python_workers(self.job.proc.pid)
        self.mark("python workers killed")
        return kill, cp, held

    def wait_recovered(self, kill: WorkerKill) -> float:
        self.rest.wait(lambda: self.rest.num_restarts(self.jid) >= 1
                       and self.rest.fully_running(self.jid), 120,
                       lambda: f"the job did not restart (state {self.rest._safe_state(self.jid)}; "
                               f"killed {kill.killed}; workers now "
                               f"{python_workers(self.job.proc.pid)})")
        self.mark("job running again")
        return round(time.monotonic() - kill.at, 1)

    def finish(self, seed: int) -> list[dict[str, Any]]:
        """A last batch after recovery; wait until every vector is scored and one more
        checkpoint (a late duplicate would show then)."""
        batch = self.produce(3, seed)
        wait_for(lambda: self.distinct_scored() >= len(self.vectors), 120,
                 "not every vector was scored after the recovery")
        cp = self.checkpoint_id()
        self.rest.wait(lambda: self.checkpoint_id() > cp, 30, lambda: "no checkpoint")
        self.mark("all scored")
        return batch


@contextlib.contextmanager
def scoring_run(stack: SluiceConfig, tmp_path: Path, name: str,
                guarantee: str = "exactly-once") -> Iterator[Run]:
    """v1 and v2 trained (v2 on shifted data, so they score differently), v1 announced,
    a first batch produced, the job running with a completed checkpoint and the first
    batch's scores committed."""
    cfg = unique_config(
        stack, name, models={"dir": str(tmp_path / "models")},
        job={"startup_mode": "earliest", "restart_attempts": 5,
             "delivery_guarantee": guarantee},
        checkpoint={"interval_ms": INTERVAL_MS, "dir": f"file://{tmp_path / 'checkpoints'}"},
        scoring={"warmup": 3}, drift=DRIFT)
    ensure_topics(cfg)
    spec = cfg.feature_spec()
    assert spec is not None
    reg = Registry(cfg.path(cfg.models.dir))
    params = TrainParams(n_estimators=40, seed=1)
    v1 = train(synthetic_vectors(cfg, devices=8, windows=40, seed=1), spec, WINDOW, reg, MODEL,
               params)
    v2 = train(synthetic_vectors(cfg, devices=8, windows=40, shift=1.5, seed=2), spec, WINDOW,
               reg, MODEL, params)
    announce(cfg, v1)
    # A mini-cluster started from Python runs the Beam harness in "loopback" mode, in
    # threads of the job's own process: nothing to kill but the whole job. PyFlink's own
    # switch makes it start worker processes under the mini-cluster's TaskManager, as a
    # standalone or Kubernetes TaskManager does (the F7 topology).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("_python_worker_execution_mode", "process")
        job = ScoringJob(write_config(cfg, tmp_path), tmp_path / "job.log")
    with job:
        rest = FlinkRest(f"http://127.0.0.1:{job.port}")
        try:
            jobs: list[dict[str, Any]] = []

            def listed() -> bool:
                nonlocal jobs
                job.alive()
                jobs = rest.running_jobs()
                return bool(jobs)

            rest.wait(listed, 180, lambda: "the scoring job is not running")
            run = Run(cfg, job, rest, jobs[0]["jid"], reg, v1, v2)
            # A sentinel vector first, 10 minutes before the rest: once it is scored, v1 is
            # active. Vectors that reach the job before any model wait for one and are
            # scored (and seen by the drift monitor) later, out of event-time order; the
            # drift monitor then counts them late, and check_drift's windows would miss
            # them. Alone in its drift windows, the sentinel is below min_samples.
            sentinel = synthetic_vectors(cfg, devices=1, windows=1, start_ms=T0 - 10 * MINUTE,
                                         seed=9)
            produce_vectors(cfg, sentinel)
            run.vectors += sentinel
            wait_for(lambda: run.distinct_scored() >= 1, 180, "the sentinel was not scored")
            run.produce(10, seed=10)
            wait_for(lambda: run.distinct_scored() >= len(run.vectors), 180,
                     "the first batch was not scored")
            run.mark("first batch scored")
            yield run
        finally:
            rest.close()


def aborted_scores(cfg: SluiceConfig, timeout: float = 60) -> tuple[int, int]:
    """model-scores read_uncommitted: (records, records whose score id was seen before).
    Records of aborted transactions are visible to such a consumer."""
    c = Consumer({**cfg.kafka.client_properties(),
                  "group.id": f"sluice-uncommitted-{time.time_ns()}",
                  "isolation.level": "read_uncommitted", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    keys: Counter[bytes] = Counter()
    try:
        t = cfg.topics.model_scores
        parts = [TopicPartition(t, p, 0) for p in c.list_topics(t, timeout=15).topics[t].partitions]
        c.assign(parts)
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(eof) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(int(m.partition() or 0))
                        continue
                    raise FaultError(f"consumer error: {err}")
                keys[m.key() or b""] += 1
    finally:
        c.close()
    return sum(keys.values()), sum(n - 1 for n in keys.values() if n > 1)


def drift_check(run: Run) -> Any:
    """check_drift on what the features, drift and retrain-triggers topics hold."""
    from sluice.drift import DriftDetector

    t = run.cfg.topics
    got = read_outputs(run.cfg, [t.features, t.drift, t.retrain_triggers])
    names = list(DriftDetector(run.v1.metadata, run.cfg.drift).features)
    return check_drift(got[t.features], [e for _, e in got[t.drift]],
                       [x for _, x in got[t.retrain_triggers]], run.cfg.drift,
                       run.cfg.topics.partitions, names)


def _line(case: str, run: Run, report: Any, kill: WorkerKill, cp: int, held: int,
          recovery: float) -> str:
    restored = run.rest.restored_checkpoint(run.jid) or {}
    total, repeated = aborted_scores(run.cfg)
    workers = sum("beam_boot" in c for c in kill.killed.values())
    return log_line(
        f"{case}: {report.vectors} vectors checked by check_scores, 0 missing / 0 duplicated "
        f"/ 0 wrong; scores by version {report.by_version}; {report.alerts} alerts; "
        f"{workers} Python worker(s) SIGKILLed ({len(kill.killed)} processes); restarts "
        f"{run.rest.num_restarts(run.jid)}; checkpoint before kill {cp}, restored "
        f"{restored.get('id')}; recovery {recovery} s; open txn offsets at kill {held}; "
        f"read_uncommitted {total} records, {repeated} repeated score ids; "
        f"timings {run.timings}")


def test_s1_python_workers_killed_every_vector_scored_once(
        stack: SluiceConfig, tmp_path: Path) -> None:
    with scoring_run(stack, tmp_path, "scorefault-s1") as run:
        kill, cp, held = run.aim_and_kill(seed=20)
        assert not kill.survivors, f"Python workers survived SIGKILL: {kill.survivors}"
        recovery = run.wait_recovered(kill)
        restored = run.rest.restored_checkpoint(run.jid)
        assert restored is not None and int(restored["id"]) >= cp, restored
        assert run.rest.exceptions(run.jid), "no failure in the job's exception history"
        run.finish(seed=30)
        scores, alerts = run.outputs()
        report = check_scores(run.vectors, scores, alerts, run.reg.root, MODEL)
        assert report.by_version == {ref(run.v1): len(run.vectors)}, report.by_version
        assert report.alerts > 0, "no alert: the alerts sink was not under the fault"
        drift = drift_check(run)
        assert drift.events > 0, "no drift event: the drift sink was not under the fault"
        _line(f"S1 scoring job, Python workers SIGKILLed mid-transaction (drift: {drift})",
              run, report, kill, cp, held, recovery)


def test_s2_hot_swap_survives_a_restart(stack: SluiceConfig, tmp_path: Path) -> None:
    with scoring_run(stack, tmp_path, "scorefault-s2") as run:
        announce(run.cfg, run.v2, previous_version=run.v1.version)
        run.mark("v2 announced")
        # Small batches until the first committed v2 score.
        k = bridge_until(lambda: any(s["model_version"] == ref(run.v2) for _, s in run.scores()),
                         lambda k: run.produce(1, seed=100 + k), what="no vector was scored by v2")
        run.mark("first v2 score committed")
        switched_at = len(run.vectors)  # every vector from here on must get v2
        kill, cp, held = run.aim_and_kill(seed=200)
        assert not kill.survivors, f"Python workers survived SIGKILL: {kill.survivors}"
        recovery = run.wait_recovered(kill)
        restored = run.rest.restored_checkpoint(run.jid)
        assert restored is not None and int(restored["id"]) >= cp, restored
        run.finish(seed=300)
        scores, alerts = run.outputs()
        report = check_scores(run.vectors, scores, alerts, run.reg.root, MODEL)
        by_sid = {s["score_id"]: s["model_version"] for _, s in scores}
        after = Counter(by_sid[sid(v)] for v in run.vectors[switched_at:])
        assert after == {ref(run.v2): len(run.vectors) - switched_at}, \
            f"vectors after the switch scored by {dict(after)} across the restart"
        assert set(report.by_version) == {ref(run.v1), ref(run.v2)}, report.by_version
        _line(f"S2 scoring job, hot swap v1→v2 then Python workers SIGKILLed ({k} bridging "
              f"batches, {len(run.vectors) - switched_at} vectors after the switch, all v2)",
              run, report, kill, cp, held, recovery)


def test_s1_at_least_once_control_shows_duplicates(
        stack: SluiceConfig, tmp_path: Path) -> None:
    """Negative control: the S1 fault with non-transactional sinks. The scores written
    since the restored checkpoint are written again, and check_scores must say so."""
    with scoring_run(stack, tmp_path, "scorefault-alo", guarantee="at-least-once") as run:
        kill, cp, _ = run.aim_and_kill(seed=20)
        recovery = run.wait_recovered(kill)
        run.finish(seed=30)
        scores, alerts = run.outputs()
    with pytest.raises(AssertionError, match="scored twice"):
        check_scores(run.vectors, scores, alerts, run.reg.root, MODEL)
    counts = Counter(s["score_id"] for _, s in scores)
    assert set(counts) == {sid(v) for v in run.vectors}, "a vector was lost"
    dup = sum(n - 1 for n in counts.values())
    assert dup > 0
    alert_dup = sum(n - 1 for n in Counter(a["alert_id"] for a in alerts).values())
    # The drift output under the same fault, for the record only: the kill lands before
    # the drift monitor has closed the batch's windows (see aim_and_kill), so nothing of
    # it is replayed twice and the check passes; its negative controls are unit tests
    # (tests/unit/test_scoring_unit.py).
    try:
        drift_said = f"check_drift passed ({drift_check(run)})"
    except AssertionError as exc:
        drift_said = f"check_drift fails: {str(exc).splitlines()[0]}"
    log_line(f"S1-ALO negative control (at-least-once sinks, same fault): {len(run.vectors)} "
             f"vectors, {len(scores)} scores, {dup} duplicated, 0 missing; {len(alerts)} "
             f"alerts, {alert_dup} duplicated; check_scores fails as it must; checkpoint "
             f"before kill {cp}; recovery {recovery} s; {drift_said}")
