"""Fault-injection helpers for the recovery and fault tests (tests/e2e/test_recovery.py,
tests/e2e/test_faults.py).

* :class:`FaultScenario`: the shape every fault test shares: input slice A produced, the
  job submitted with `flink run -d` and mid-stream (a completed checkpoint, committed
  output, slice B being produced), the fault, then slice C and a stop with drain; the
  exactly-once verdict (:func:`assert_exactly_once`) and the one-line report.

* :class:`FlinkRest`: the standalone cluster's REST API (job state, checkpoints,
  restarts, stop-with-drain, cancel), always on loopback and never through a proxy.
* :func:`taskmanager_target` / :func:`kill_taskmanager` / :func:`restore_taskmanager`:
  a hard TaskManager failure (SIGKILL of the pid the local stack recorded, after
  checking it really is that TaskManager; its orphaned Python workers are reported
  and killed) and a replacement started through ``sluice.stack.up``.
* :class:`OutputWatch`: a read_committed consumer in a thread, so a test can see
  how much output is committed (and how many distinct inputs it covers) while the
  job runs.
* :func:`paced_produce`: the generator's seeded input in simulated event time,
  throttled, so the job is mid-stream when the fault hits.
* :class:`TransactionProbe` / :func:`hanging_transactions`: last stable offset vs high
  watermark per partition; EosTestDriver's check is that they are equal at the end.
* :func:`uncommitted_duplicates`: what a read_uncommitted consumer sees twice
  (records of aborted transactions, or at-least-once replays).
* :func:`python_workers` / :func:`kill_python_workers`: the TaskManager's Python UDF
  worker processes (process mode), killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import SluiceConfig
from sluice.flink import flink_run_command
from sluice.generator import Generated, Item, aligned_start, plan, produce
from sluice.kafka_util import Record, ensure_topics, read_committed
from sluice.verify import TransactionProbe, open_transactions


class FaultError(AssertionError):
    """A step of a fault scenario did not happen as planned (the test fails)."""


# =======================================================================================
# Flink REST
# =======================================================================================
JOB_ID = re.compile(r"JobID\s+([0-9a-f]{32})")


def job_id_from_output(out: str) -> str:
    """The JobID `flink run -d` prints ("Job has been submitted with JobID …")."""
    m = JOB_ID.search(out)
    if m is None:
        raise FaultError(f"no JobID in the `flink run -d` output:\n{out[-3000:]}")
    return m.group(1)


class FlinkRest:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only, never through an HTTP(S)_PROXY

    def close(self) -> None:
        self.session.close()

    def get(self, path: str, timeout: float = 5) -> Any:
        r = self.session.get(f"{self.url}{path}", timeout=timeout)
        r.raise_for_status()
        return r.json()

    # -- job state ------------------------------------------------------------------------
    def job(self, jid: str) -> dict[str, Any]:
        return self.get(f"/jobs/{jid}")

    def state(self, jid: str) -> str:
        return str(self.job(jid)["state"])

    def running_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.get("/jobs/overview")["jobs"] if j["state"] == "RUNNING"]

    def fully_running(self, jid: str) -> bool:
        """The job is RUNNING and so is every one of its tasks (deployed on a TaskManager)."""
        job = self.job(jid)
        if job["state"] != "RUNNING":
            return False
        return all(v["status"] == "RUNNING" for v in job["vertices"])

    def wait_fully_running(self, jid: str, timeout: float, why: str = "") -> None:
        self.wait(lambda: self.fully_running(jid), timeout,
                  lambda: f"job {jid} not fully RUNNING {why}(state {self._safe_state(jid)})")

    def wait_state(self, jid: str, states: Sequence[str], timeout: float) -> str:
        last = ""

        def reached() -> bool:
            nonlocal last
            last = self._safe_state(jid)
            return last in states

        self.wait(reached, timeout, lambda: f"job {jid} is {last}, not {'/'.join(states)}")
        return last

    def _safe_state(self, jid: str) -> str:
        try:
            return self.state(jid)
        except (requests.RequestException, KeyError, ValueError) as exc:
            return f"unknown ({type(exc).__name__})"

    @staticmethod
    def wait(cond: Callable[[], bool], timeout: float, msg: Callable[[], str],
             interval: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if cond():
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass  # the cluster is mid-failover; ask again
            if time.monotonic() >= deadline:
                raise FaultError(f"after {timeout:.0f} s: {msg()}")
            time.sleep(interval)

    # -- checkpoints and restarts ---------------------------------------------------------
    def checkpoints(self, jid: str) -> dict[str, Any]:
        return self.get(f"/jobs/{jid}/checkpoints")

    def completed_checkpoints(self, jid: str) -> int:
        return int(self.checkpoints(jid)["counts"]["completed"])

    def latest_completed(self, jid: str) -> dict[str, Any]:
        """The job's latest completed checkpoint (id, external_path, ...); fails if none."""
        latest = (self.checkpoints(jid).get("latest") or {}).get("completed")
        if not latest:
            raise FaultError(f"job {jid} has no completed checkpoint")
        return latest

    def restored_checkpoint(self, jid: str) -> dict[str, Any] | None:
        """The checkpoint the job last restored from (None if it never restored)."""
        return (self.checkpoints(jid).get("latest") or {}).get("restored")

    def num_restarts(self, jid: str) -> int:
        metrics = self.get(f"/jobs/{jid}/metrics?get=numRestarts")
        return int(metrics[0]["value"]) if metrics else 0

    def exceptions(self, jid: str) -> list[dict[str, Any]]:
        return list(self.get(f"/jobs/{jid}/exceptions").get("exceptionHistory", {})
                    .get("entries", []))

    # -- ending a job ---------------------------------------------------------------------
    def stop_with_drain(self, jid: str, savepoint_dir: Path, timeout: float = 180,
                        *, drain: bool = True) -> str:
        """Stop with a final savepoint and MAX_WATERMARK (windows fire, the last Kafka
        transactions commit); returns the savepoint's location. ``drain=False``: the
        savepoint to resume from (open windows stay in it, unfired)."""
        r = self.session.post(
            f"{self.url}/jobs/{jid}/stop",
            json={"drain": drain, "targetDirectory": savepoint_dir.resolve().as_uri()},
            timeout=10,
        )
        r.raise_for_status()
        trigger = r.json()["request-id"]
        location = ""

        def done() -> bool:
            nonlocal location
            st = self.get(f"/jobs/{jid}/savepoints/{trigger}")
            if st["status"]["id"] != "COMPLETED":
                return False
            op = st.get("operation") or {}
            if "failure-cause" in op:
                raise FaultError(f"stop-with-drain of {jid} failed: "
                                 f"{op['failure-cause'].get('stack-trace', op)[:3000]}")
            location = str(op.get("location", ""))
            return True

        self.wait(done, timeout, lambda: f"stop-with-drain of {jid} did not complete")
        self.wait_state(jid, ["FINISHED"], timeout)
        return location

    def cancel_now(self, jid: str, timeout: float = 120) -> None:
        """Cancel a running job (a fault, not a clean-up: any failure fails the test)."""
        self.session.patch(f"{self.url}/jobs/{jid}?mode=cancel", timeout=10).raise_for_status()
        self.wait_state(jid, ["CANCELED"], timeout)

    def cancel(self, jid: str) -> None:
        """Cancel the job unless it already ended (used in finally blocks)."""
        with contextlib.suppress(requests.RequestException):
            if self.state(jid) in ("FINISHED", "CANCELED", "FAILED"):
                return
            self.session.patch(f"{self.url}/jobs/{jid}?mode=cancel", timeout=10)
            with contextlib.suppress(FaultError):
                self.wait_state(jid, ["CANCELED", "FINISHED", "FAILED"], 60)


# =======================================================================================
# TaskManager failure and replacement
# =======================================================================================
def taskmanager_pid(run_dir: Path) -> int:
    """The TaskManager pid the local stack recorded, checked against /proc."""
    from sluice.stack import status

    tm = status(run_dir).components["flink-taskmanager"]
    if not tm.running or tm.pid is None:
        raise FaultError(f"the stack has no running TaskManager ({tm.detail})")
    try:
        cmdline = Path(f"/proc/{tm.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError as exc:
        raise FaultError(f"TaskManager pid {tm.pid} vanished: {exc}") from exc
    if "taskmanager" not in cmdline.lower() or "java" not in cmdline:
        raise FaultError(f"pid {tm.pid} is not a TaskManager JVM: {cmdline[:300]}")
    return tm.pid


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of any of its threads, recursively)."""
    parent: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parent.items() if p in frontier]
        out += kids
        frontier = kids
    return out


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Kill:
    pid: int
    at: float  # time.time() of the SIGKILL
    workers: list[int] = field(default_factory=list)  # the TM's Python workers at that time
    orphans_left: list[int] = field(default_factory=list)  # workers still alive afterwards
    pgids: dict[int, int | None] = field(default_factory=dict)  # TM and workers: process group


def taskmanager_target(run_dir: Path) -> Kill:
    """Look up what :func:`kill_taskmanager` will kill: the stack's TaskManager and its
    Python workers. Slow (it health-checks the stack), so do it before aiming."""
    pid = taskmanager_pid(run_dir)
    workers = _descendants(pid)  # pyflink-udf-runner.sh → python -m ...beam_boot
    return Kill(pid=pid, at=0.0, workers=workers, pgids={p: _pgid(p) for p in (pid, *workers)})


def kill_taskmanager(target: Kill, *, orphan_grace: float = 5.0) -> Kill:
    """SIGKILL the TaskManager JVM of ``target``, as a crashed machine would die.

    Its Python UDF workers (descendants of the JVM) are reparented to init. Any still
    alive after ``orphan_grace`` seconds are killed by pid (they belong to the
    TaskManager this test's stack started) and reported in ``Kill.orphans_left``:
    nothing else would ever stop them (`sluice stack down` forgets the dead
    TaskManager's process group once `up` replaced its record).
    """
    pid = target.pid
    try:  # the pid must still be that TaskManager (a cheap re-check right before)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError as exc:
        raise FaultError(f"TaskManager pid {pid} vanished before the kill: {exc}") from exc
    if "taskmanager" not in cmdline.lower():
        raise FaultError(f"pid {pid} no longer runs the TaskManager; not killing it")
    os.kill(pid, signal.SIGKILL)
    target.at = time.time()
    deadline = time.monotonic() + 30
    while _alive(pid):
        if time.monotonic() > deadline:
            raise FaultError(f"TaskManager pid {pid} survived SIGKILL for 30 s")
        time.sleep(0.05)
    deadline = time.monotonic() + orphan_grace
    while [w for w in target.workers if _alive(w)] and time.monotonic() < deadline:
        time.sleep(0.25)
    target.orphans_left = [w for w in target.workers if _alive(w)]
    for w in target.orphans_left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w, signal.SIGKILL)
    return target


def restore_taskmanager(run_dir: Path, rest: FlinkRest, old_ids: set[str],
                        timeout: float = 120) -> float:
    """Start a replacement TaskManager through the stack manager and wait until it has
    registered with the JobManager. Returns the seconds that took."""
    from sluice.stack import StackPorts, up

    t0 = time.monotonic()
    up(run_dir, StackPorts.from_env(), flink=True)
    rest.wait(lambda: bool(taskmanager_ids(rest) - old_ids), timeout,
              lambda: "no new TaskManager registered with the JobManager")
    return time.monotonic() - t0


def taskmanager_ids(rest: FlinkRest) -> set[str]:
    return {tm["id"] for tm in rest.get("/taskmanagers")["taskmanagers"]}


# =======================================================================================
# Python UDF workers (process mode)
# =======================================================================================
def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def python_workers(tm_pid: int) -> dict[int, str]:
    """The TaskManager's Python UDF workers: its descendants that run PyFlink's Beam
    harness (``pyflink-udf-runner.sh`` → ``python -m pyflink.fn_execution.beam.beam_boot``
    → the SDK worker), {pid: command line}."""
    found = {p: _cmdline(p) for p in _descendants(tm_pid)}
    return {p: c for p, c in found.items()
            if "pyflink" in c and ("beam" in c or "udf-runner" in c or "fn_execution" in c)}


@dataclass
class WorkerKill:
    tm_pid: int
    at: float  # time.monotonic() of the SIGKILL
    killed: dict[int, str] = field(default_factory=dict)
    survivors: list[int] = field(default_factory=list)  # alive 10 s later (must be none)


def kill_python_workers(tm_pid: int) -> WorkerKill:
    """SIGKILL every Python UDF worker of the TaskManager ``tm_pid`` at once (the JVM
    lives on). Fails if there is none: the job would not be in process mode."""
    workers = python_workers(tm_pid)
    if not workers:
        raise FaultError(f"TaskManager {tm_pid} has no Python worker to kill: "
                         f"{[_cmdline(p)[:120] for p in _descendants(tm_pid)]}")
    kill = WorkerKill(tm_pid=tm_pid, at=time.monotonic(), killed=workers)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while [w for w in workers if _alive(w)] and time.monotonic() < deadline:
        time.sleep(0.05)
    kill.survivors = [w for w in workers if _alive(w)]
    return kill


# =======================================================================================
# Input and output
# =======================================================================================
def merge(parts: Sequence[Generated]) -> Generated:
    out = Generated()
    for g in parts:
        out.readings += g.readings
        out.frames += g.frames
        out.work_orders += g.work_orders
        out.corrupt += g.corrupt
        out.produce_seconds += g.produce_seconds
    return out


def paced_produce(cfg: SluiceConfig, items: Sequence[Item], *,
                  rate_eps: float) -> Generated:
    """Produce ``items`` (planned, simulated event times) in one ``produce`` call throttled
    to about ``rate_eps`` records per second (it reports progress every 100 records)."""
    t0 = time.monotonic()

    def throttle(n: int) -> None:
        ahead = t0 + n / rate_eps - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)

    return produce(cfg, list(items), on_progress=throttle)


class Background(threading.Thread):
    """A thread whose exception (or result) the test collects with :meth:`result`."""

    def __init__(self, fn: Callable[[], Any], name: str):
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc

    def result(self, timeout: float) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise FaultError(f"{self.name} did not finish within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self._result


class OutputWatch:
    """What a read_committed consumer sees on the output topics while the job runs:
    records per topic, and the distinct input positions (source topic, partition, offset)
    that reached ``telemetry.enriched`` or ``dlq``; duplicates do not count twice there."""

    def __init__(self, cfg: SluiceConfig):
        self.cfg = cfg
        t = cfg.topics
        self.topics = [t.enriched, t.dlq, t.scores, t.alerts]
        self._counts: Counter[str] = Counter()
        self._inputs: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = Background(self._read, "output-watch")
        self._registry = SchemaRegistryClient(cfg.registry.client_conf())
        self._de = AvroDeserializer(self._registry)

    def _add(self, rec: Record) -> None:
        pos = None
        if rec.topic in (self.cfg.topics.enriched, self.cfg.topics.dlq):
            v = self._de(rec.value, None)
            pos = (v["source_topic"], v["source_partition"], v["source_offset"])
        with self._lock:
            self._counts[rec.topic] += 1
            if pos is not None:
                self._inputs.add(pos)

    def _read(self) -> None:
        read_committed(self.cfg, self.topics, until=lambda _c: self._stop.is_set(),
                       max_wait=3600, on_record=self._add)

    def __enter__(self) -> OutputWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self._thread.result(30)
        finally:
            self._registry.close()

    def _check(self) -> None:
        if not self._thread.is_alive():
            self._thread.result(0)  # re-raise what stopped the reader
            raise FaultError("the output watch stopped early")

    def count(self, *topics: str) -> int:
        """Records seen on ``topics`` (duplicates included)."""
        self._check()
        with self._lock:
            return sum(self._counts[t] for t in topics)

    def inputs_out(self) -> int:
        """Distinct input records accounted for by enriched + dlq output."""
        self._check()
        with self._lock:
            return len(self._inputs)


def hanging_transactions(cfg: SluiceConfig, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
    """EosTestDriver's check: partitions whose last stable offset is behind the high
    watermark, {"topic-partition": (lso, hw)}; empty when no transaction hangs."""
    return open_transactions(cfg, topics)


def uncommitted_duplicates(cfg: SluiceConfig, topics: Sequence[str],
                           timeout: float = 60) -> tuple[int, int]:
    """Read ``topics`` (enriched and/or dlq) read_uncommitted to their ends; returns
    (records, records whose input position, source topic/partition/offset, was already
    seen). Aborted transactions' records are visible to such a consumer."""
    c = Consumer({
        **cfg.kafka.client_properties(),
        "group.id": f"sluice-uncommitted-{time.time_ns()}",
        "isolation.level": "read_uncommitted",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    values: list[bytes] = []
    try:
        md = c.list_topics(timeout=15).topics
        parts = [TopicPartition(t, p, 0) for t in topics for p in md[t].partitions]
        c.assign(parts)
        at_eof: set[tuple[str | None, int | None]] = set()
        deadline = time.monotonic() + timeout
        while len(at_eof) < len(parts):
            if time.monotonic() > deadline:
                raise FaultError(f"reading {topics} read_uncommitted took over {timeout:.0f} s")
            for m in c.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof.add((m.topic(), m.partition()))
                        continue
                    raise FaultError(f"consumer error: {err}")
                values.append(m.value() or b"")
    finally:
        c.close()
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        positions = Counter(
            (d["source_topic"], d["source_partition"], d["source_offset"])
            for d in (de(v, None) for v in values)
        )
    return len(values), sum(n - 1 for n in positions.values() if n > 1)


# =======================================================================================
# The scenario every fault test shares
# =======================================================================================
RECORDS = 4500  # readings (+ 450 frames, 90 work orders, 29 corrupt records)
STEP_MS = 20  # 90 s of event time: 18 five-second windows per device
B_RATE_EPS = 200.0  # slice B is paced so the job is mid-stream when the fault hits


def scenario_config(stack: SluiceConfig, name: str, tmp_path: Path, *, interval_ms: int,
                    guarantee: str = "exactly-once", **job: Any) -> SluiceConfig:
    """A config of its own for one fault run: unbounded from the earliest offsets, a few
    restarts allowed, checkpoints retained under ``tmp_path``.

    The sink's transaction timeout stays at the 15 min default (>= 10x the interval): a
    transaction the fault left open must show up as hanging, not be tidied away by the
    broker's timeout before the check runs."""
    from tests.conftest import unique_config

    return unique_config(
        stack, name,
        job={"startup_mode": "earliest", "bounded": False, "restart_attempts": 5,
             "delivery_guarantee": guarantee, **job},
        checkpoint={"interval_ms": interval_ms, "dir": f"file://{tmp_path / 'checkpoints'}"},
        generator={"records": RECORDS},
    )


def submit_detached(cfg: SluiceConfig, conf_dir: Path, tmp_path: Path, *,
                    job: Path | None = None, extra_args: list[str] | None = None,
                    restore_path: str | None = None) -> str:
    """`flink run -d` of the pipeline (or ``job``) with ``cfg``; the new job's id."""
    from tests.conftest import PYTHON, run_job, write_config

    kw: dict[str, Any] = {"job": job} if job is not None else {}
    folder = tmp_path / f"submit-{time.time_ns()}"  # one config per submission
    folder.mkdir(parents=True)
    cfg_path = write_config(cfg, folder)
    cmd = flink_run_command(cfg, cfg_path, python=PYTHON, detached=True,
                            extra_args=extra_args, restore_path=restore_path, **kw)
    out = run_job(cmd, timeout=300, env={"FLINK_CONF_DIR": str(conf_dir)})
    return job_id_from_output(out)


def assert_exactly_once(cfg: SluiceConfig, gen: Generated, **check: Any) -> dict[str, list[dict]]:
    """No hanging transaction on any output (EosTestDriver), and the output equals the
    independent oracle: nothing missing, duplicated or wrong. Returns the decoded output."""
    from tests.pipeline_checks import check_against_oracle

    outputs = [cfg.topics.enriched, cfg.topics.dlq, cfg.topics.scores, cfg.topics.alerts]
    hanging = hanging_transactions(cfg, outputs)
    assert hanging == {}, f"hanging transactions (partition: LSO, HW): {hanging}"
    return check_against_oracle(cfg, gen, cfg.path(cfg.reference.devices_csv), **check)


def exception_texts(rest: FlinkRest, jid: str) -> list[str]:
    """The job's exception history: name and stack trace of each failure."""
    return [f"{e.get('exceptionName', '')}: {e.get('stacktrace', '')}" for e in rest.exceptions(jid)]


class FaultScenario:
    """Slice A produced, the job submitted (`flink run -d`) and mid-stream, the fault hits
    while slice B is produced, slice C after recovery, then all input must come out and
    the job stops with drain (the final windows fire, the last transactions commit).

    The input is the generator's seeded plan in simulated event time, in three slices. So
    at the moment of the fault some but never all output is committed, at least one
    checkpoint has completed, and records are in flight. Use as a context manager: it
    watches the committed output throughout and cancels every job it submitted on exit
    (a no-op for jobs that finished)."""

    def __init__(self, cfg: SluiceConfig, conf_dir: Path, tmp_path: Path, run_dir: Path):
        from sluice.stack import status

        self.cfg, self.conf_dir, self.tmp_path = cfg, conf_dir, tmp_path
        self.io_topics = (cfg.topics.enriched, cfg.topics.dlq)
        self.rest = FlinkRest(str(status(run_dir).flink_rest_url))
        self.timings: dict[str, float] = {}
        self.jobs: list[str] = []
        self._t0 = time.monotonic()
        ensure_topics(cfg)
        items = plan(cfg, start_ms=0, step_ms=STEP_MS)
        items = plan(cfg, start_ms=aligned_start(cfg, len(items) * STEP_MS), step_ms=STEP_MS)
        n = len(items)
        self.a, self.b, self.c = items[: n // 3], items[n // 3 : 2 * n // 3], items[2 * n // 3 :]
        self.gen_a = Generated()
        self.producer_b: Background | None = None
        self.b_rate_eps = B_RATE_EPS  # a test may slow B down before start()
        self.checkpoint_before_b = 0
        self.watch = OutputWatch(cfg)

    def __enter__(self) -> FaultScenario:
        self.watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.watch.__exit__(*exc)
        finally:
            for jid in self.jobs:
                self.rest.cancel(jid)  # no-op when it ended; a failed test leaves no job
            self.rest.close()

    def mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self._t0, 1)

    def visible(self) -> int:
        """Committed enriched + dlq records (duplicates included)."""
        return self.watch.count(*self.io_topics)

    def submit(self, cfg: SluiceConfig | None = None, **kw: Any) -> str:
        jid = submit_detached(cfg or self.cfg, self.conf_dir, self.tmp_path, **kw)
        self.jobs.append(jid)
        self.mark(f"submitted {jid[:8]}")
        return jid

    def warn_other_jobs(self, jid: str) -> None:
        """The TaskManager is shared: a fault on it hits every job there. Another
        engineer's job on the same local cluster would be hit too, so say so."""
        others = [j["jid"] for j in self.rest.running_jobs() if j["jid"] not in self.jobs]
        if others:
            print(f"warning: other jobs run on the cluster and will see the fault too: {others}")

    def start(self, **submit: Any) -> str:
        """Produce A, submit, and return once the job is mid-stream: running, a completed
        checkpoint and committed output, then B paced in the background and part of B's
        output visible (exactly-once: committed by a checkpoint taken during B). B is still
        being produced, so records are in flight; C is not, so never all output is out."""
        self.gen_a = produce(self.cfg, self.a)
        self.mark("input A produced")
        jid = self.submit(**submit)
        rest = self.rest
        rest.wait_fully_running(jid, 180)
        self.mark("running")
        rest.wait(lambda: rest.completed_checkpoints(jid) >= 1 and self.visible() > 0, 120,
                  lambda: f"no checkpoint / output yet ({self.visible()} out)")
        self.checkpoint_before_b = int(rest.latest_completed(jid)["id"])
        self.mark("first checkpoint + output")
        self.producer_b = Background(
            lambda: paced_produce(self.cfg, self.b, rate_eps=self.b_rate_eps), "produce-B")
        self.producer_b.start()
        rest.wait(lambda: self.visible() >= len(self.a) + 100, 60,
                  lambda: f"B's output not visible ({self.visible()} out)")
        self.mark("B's output visible")
        self.warn_other_jobs(jid)
        return jid

    def wait_open_transaction(self, timeout: float = 8) -> int:
        """Aim the fault at an open transaction holding records (HW ahead of the LSO);
        returns the offsets it holds (0: none seen within ``timeout``, fault anyway).

        Python bundles flush at the checkpoint barrier, so such a transaction mostly
        belongs to the checkpoint in progress: hit before that checkpoint completes, it
        must be aborted and its records replayed; hit after, the restored job must commit
        it, once. Both are exactly-once paths."""
        probe = TransactionProbe(self.cfg, list(self.io_topics))
        held = 0

        def txn_open() -> bool:
            nonlocal held
            held = sum(hw - lso for lso, hw in probe.lag().values())
            return held > 0

        with contextlib.suppress(FaultError):
            self.rest.wait(txn_open, timeout, lambda: "no open transaction seen", interval=0.005)
        return held

    def wait_recovered(self, jid: str, since: float, timeout: float = 180) -> float:
        """Wait until ``jid`` restarted (numRestarts >= 1) and runs again; the seconds
        since ``since`` (a time.monotonic())."""
        rest = self.rest
        rest.wait(lambda: rest.num_restarts(jid) >= 1 and rest.fully_running(jid), timeout,
                  lambda: f"job {jid} did not restart (state {rest._safe_state(jid)}, "
                  f"{rest.num_restarts(jid)} restarts)")
        self.mark("job running again")
        return round(time.monotonic() - since, 1)

    def finish(self, jid: str) -> Generated:
        """The rest of B, then C; wait until every input record came out (stop-with-drain
        ends the sources where they are), then stop with drain. Returns all input."""
        assert self.producer_b is not None, "start() first"
        gen_b = self.producer_b.result(120)
        gen_c = produce(self.cfg, self.c)
        gen = merge([self.gen_a, gen_b, gen_c])
        self.mark("input C produced")
        self.rest.wait(lambda: self.watch.inputs_out() >= gen.total, 180,
                       lambda: f"only {self.watch.inputs_out()} of {gen.total} input records "
                       f"came out; open transactions (partition: LSO, HW): "
                       f"{hanging_transactions(self.cfg, list(self.io_topics))}")
        self.mark("all input out")
        self.rest.stop_with_drain(jid, self.tmp_path / "savepoints")
        self.mark("stopped with drain")
        return gen


def report(fault: str, gen: Generated, *, restarts: int, restored: dict[str, Any] | None,
           recovery_seconds: float, **details: Any) -> str:
    """The one line a fault test prints (quoted in closing notes), also appended to
    ``out/test-reports/faults.log`` so a `make test` run keeps every fault's numbers."""
    extra = "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in details.items())
    line = (f"{fault}: {gen.total} records checked ({len(gen.readings)} readings, "
            f"{len(gen.corrupt)} corrupt), 0 missing / 0 duplicated / 0 wrong, no hanging "
            f"transactions; restarts {restarts}; restored checkpoint "
            f"{(restored or {}).get('id')}; recovery {recovery_seconds} s"
            + (f"; {extra}" if extra else ""))
    return log_line(line)


def log_line(line: str) -> str:
    """Print a result line and append it to ``out/test-reports/faults.log``."""
    print("\n" + line)
    log = Path(__file__).resolve().parents[1] / "out" / "test-reports" / "faults.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    return line
