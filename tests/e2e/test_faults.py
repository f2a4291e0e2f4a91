"""Faults of issue 6 beyond the TaskManager kill (test_recovery.py), each proven against
the independent oracle on the local standalone cluster (`flink run -d`):

* F1 a UDF throws once after at least one completed checkpoint (the pipeline run through
  tests/e2e/jobs/fail_once_pipeline.py, whose Ingest subclass raises when armed);
* F7 the Python UDF worker processes (process mode) are killed with SIGKILL while the
  TaskManager JVM lives on;
* F3 the job is cancelled and resumed from its retained checkpoint (`flink run -s`) with
  a different parallelism (1 → 2);
* F5 the Kafka broker is killed with SIGKILL mid-stream and started again.

Every scenario is :class:`tests.faults.FaultScenario`: slice A before the job, slice B
paced while it runs (the fault hits during B, aimed at an open Kafka transaction holding
records), slice C after recovery, stop with drain. Each ends with the same verdict: the
output equals the oracle (0 missing, 0 duplicated, 0 wrong) and no transaction hangs
on any output partition. Each prints one line: records, fault, restarts, restored
checkpoint, recovery time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.stack import status
from tests.conftest import RUN_DIR
from tests.faults import (
    FaultScenario,
    assert_exactly_once,
    exception_texts,
    hanging_transactions,
    kill_python_workers,
    report,
    scenario_config,
    taskmanager_pid,
    uncommitted_duplicates,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FAIL_ONCE_JOB = Path(__file__).parent / "jobs" / "fail_once_pipeline.py"


def _aborted(cfg: SluiceConfig) -> int:
    """Records of aborted transactions a read_uncommitted consumer sees (reported only)."""
    return uncommitted_duplicates(cfg, [cfg.topics.enriched, cfg.topics.dlq])[1]


def test_f1_udf_throws_once_after_a_checkpoint(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    cfg = scenario_config(stack, "fault-f1", tmp_path, interval_ms=1000)
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    fired = fault_dir / "fired"
    with FaultScenario(cfg, flink_cluster, tmp_path, RUN_DIR) as s:
        rest = s.rest
        # The UDF raises at the next record after arming: arm at once, while slice B
        # (slowed down here) still flows, or no record may come until C.
        s.b_rate_eps = 100.0
        jid = s.start(job=FAIL_ONCE_JOB, extra_args=["--fault-dir", str(fault_dir)])
        assert not fired.exists(), "the UDF failed before it was armed"
        checkpoint_at_arm = int(rest.latest_completed(jid)["id"])  # >= 1 completed
        open_txn = sum(hw - lso for lso, hw in
                       hanging_transactions(cfg, [cfg.topics.enriched, cfg.topics.dlq]).values())
        (fault_dir / "armed").touch()
        s.mark("armed")
        rest.wait(fired.exists, 60, lambda: "the armed UDF did not raise (no record after arming?)")
        t_fail = time.monotonic()
        s.mark("UDF raised")
        recovery = s.wait_recovered(jid, since=t_fail)
        restarts, restored = rest.num_restarts(jid), rest.restored_checkpoint(jid)
        gen = s.finish(jid)
        exceptions = exception_texts(rest, jid)

    message = fired.read_text().split(" (pid")[0]
    assert any(message in e for e in exceptions), f"{message!r} not in {exceptions}"
    assert restarts >= 1
    assert restored is not None and restored["id"] >= max(1, checkpoint_at_arm), restored
    assert_exactly_once(cfg, gen)
    report("F1 UDF raised once (Ingest.eval)", gen, restarts=restarts, restored=restored,
           recovery_seconds=recovery, checkpoint_at_arm=checkpoint_at_arm,
           open_txn_offsets=open_txn, aborted_records_read_uncommitted=_aborted(cfg),
           exceptions_with_message=sum(message in e for e in exceptions), timings=s.timings)


def test_f7_python_workers_killed(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    if not status(RUN_DIR).components["flink-taskmanager"].running:
        pytest.skip("no TaskManager of the local stack (external cluster?)")
    cfg = scenario_config(stack, "fault-f7", tmp_path, interval_ms=1000)
    assert cfg.job.python_execution_mode == "process"
    with FaultScenario(cfg, flink_cluster, tmp_path, RUN_DIR) as s:
        rest = s.rest
        jid = s.start()
        tm_pid = taskmanager_pid(RUN_DIR)
        checkpoint_before = int(rest.latest_completed(jid)["id"])
        open_txn = s.wait_open_transaction()
        kill = kill_python_workers(tm_pid)
        s.mark("python workers killed")
        assert not kill.survivors, f"Python workers survived SIGKILL: {kill.survivors}"
        recovery = s.wait_recovered(jid, since=kill.at)
        restarts, restored = rest.num_restarts(jid), rest.restored_checkpoint(jid)
        gen = s.finish(jid)
    # The JVM lived on: only the Python side died.
    assert taskmanager_pid(RUN_DIR) == tm_pid
    assert restarts >= 1
    assert restored is not None and restored["id"] >= checkpoint_before, restored
    assert_exactly_once(cfg, gen)
    workers = sum("beam_boot" in c for c in kill.killed.values())  # the rest: runner shells
    report(f"F7 {workers} Python UDF worker(s) SIGKILLed ({len(kill.killed)} processes with "
           "their runner shells)", gen, restarts=restarts,
           restored=restored, recovery_seconds=recovery, checkpoint_before_kill=checkpoint_before,
           open_txn_offsets=open_txn, aborted_records_read_uncommitted=_aborted(cfg),
           killed={p: c[-60:] for p, c in kill.killed.items()}, timings=s.timings)


def test_f3_cancel_and_resume_from_retained_checkpoint_with_new_parallelism(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    cfg = scenario_config(stack, "fault-f3", tmp_path, interval_ms=1000, parallelism=1)
    resumed_cfg = cfg.with_overrides(job={"parallelism": 2})  # same topics, group, txn ids
    with FaultScenario(cfg, flink_cluster, tmp_path, RUN_DIR) as s:
        rest = s.rest
        first = s.start()
        open_txn = s.wait_open_transaction()
        t_cancel = time.monotonic()
        rest.cancel_now(first)
        s.mark("cancelled")
        # Retained on cancellation (execution.checkpointing.externalized-checkpoint-retention).
        retained = rest.latest_completed(first)
        path = str(retained.get("external_path") or "")
        assert path.startswith("file:"), retained
        assert (Path(path.removeprefix("file:")) / "_metadata").is_file(), path
        second = s.submit(resumed_cfg, restore_path=path)
        rest.wait_fully_running(second, 180, "after the restore ")
        recovery = round(time.monotonic() - t_cancel, 1)
        s.mark("resumed job running")
        restored = rest.restored_checkpoint(second)
        parallelism = {v["name"][:40]: v["parallelism"] for v in rest.job(second)["vertices"]}
        restarts = rest.num_restarts(first) + rest.num_restarts(second)
        gen = s.finish(second)

    assert restored is not None and restored["id"] == retained["id"], (restored, retained)
    assert restored.get("external_path") == path, restored
    assert set(parallelism.values()) == {2}, parallelism
    assert_exactly_once(cfg, gen)
    report("F3 cancelled at parallelism 1, resumed (-s) at parallelism 2", gen,
           restarts=restarts, restored=restored, recovery_seconds=recovery,
           open_txn_offsets=open_txn, aborted_records_read_uncommitted=_aborted(cfg),
           retained=path, timings=s.timings)


def test_f5_broker_hard_restart(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    """SIGKILL of the (single) Kafka broker while a transaction holds records, then a
    restart from the same log directory. The job may ride it out (clients reconnect,
    the coordinator recovers the open transactions from its log) or fail over; either
    way the output must equal the oracle and no transaction may hang."""
    import os
    import signal

    from sluice.stack import StackPorts, up

    kafka = status(RUN_DIR).components["kafka"]
    if not kafka.running or kafka.pid is None:
        pytest.skip("no Kafka broker of the local stack to restart (external stack?)")
    cfg = scenario_config(stack, "fault-f5", tmp_path, interval_ms=1000)
    with FaultScenario(cfg, flink_cluster, tmp_path, RUN_DIR) as s:
        rest = s.rest
        jid = s.start()
        checkpoint_before = int(rest.latest_completed(jid)["id"])
        open_txn = s.wait_open_transaction()
        pid = status(RUN_DIR).components["kafka"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        rest.wait(lambda: not Path(f"/proc/{pid}").exists(), 30, lambda: "broker still alive")
        s.mark("broker killed")
        up(RUN_DIR, StackPorts.from_env(), flink=False)
        down_seconds = round(time.monotonic() - t_kill, 1)
        s.mark("broker back")
        rest.wait(lambda: rest.fully_running(jid) and
                  int(rest.latest_completed(jid)["id"]) > checkpoint_before + 1, 180,
                  lambda: f"no checkpoint completed after the broker came back "
                  f"(state {rest._safe_state(jid)})")
        recovery = round(time.monotonic() - t_kill, 1)
        s.mark("checkpointing again")
        restarts, restored = rest.num_restarts(jid), rest.restored_checkpoint(jid)
        gen = s.finish(jid)
    assert_exactly_once(cfg, gen)
    report("F5 Kafka broker SIGKILLed and restarted", gen, restarts=restarts, restored=restored,
           recovery_seconds=recovery, broker_down_seconds=down_seconds,
           checkpoint_before_kill=checkpoint_before, open_txn_offsets=open_txn,
           aborted_records_read_uncommitted=_aborted(cfg), timings=s.timings)
