"""Fault-injection helpers for the recovery tests (tests/e2e/test_recovery.py).

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
from confluent_kafka import Consumer, IsolationLevel, KafkaError, TopicPartition
from confluent_kafka.admin import OffsetSpec
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import SluiceConfig
from sluice.generator import Generated, Item, produce
from sluice.kafka_util import Record, admin, read_committed


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
    def stop_with_drain(self, jid: str, savepoint_dir: Path, timeout: float = 180) -> str:
        """Stop with a final savepoint and MAX_WATERMARK (windows fire, the last Kafka
        transactions commit); returns the savepoint's location."""
        r = self.session.post(
            f"{self.url}/jobs/{jid}/stop",
            json={"drain": True, "targetDirectory": savepoint_dir.resolve().as_uri()},
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
    up(run_dir, StackPorts(), flink=True)
    rest.wait(lambda: bool(taskmanager_ids(rest) - old_ids), timeout,
              lambda: "no new TaskManager registered with the JobManager")
    return time.monotonic() - t0


def taskmanager_ids(rest: FlinkRest) -> set[str]:
    return {tm["id"] for tm in rest.get("/taskmanagers")["taskmanagers"]}


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


class TransactionProbe:
    """Last stable offset (LSO, the end a read_committed consumer sees) and high
    watermark (HW) of every partition of some topics, both asked at once."""

    def __init__(self, cfg: SluiceConfig, topics: Sequence[str]):
        self.client = admin(cfg)
        md = self.client.list_topics(timeout=15)
        self.partitions = [TopicPartition(t, p) for t in topics for p in md.topics[t].partitions]

    def lag(self) -> dict[str, tuple[int, int]]:
        """{"topic-partition": (lso, hw)} for the partitions where LSO < HW, that is
        where a transaction is open (neither committed nor aborted)."""
        wanted = {tp: OffsetSpec.latest() for tp in self.partitions}
        futures = {
            level: self.client.list_offsets(wanted, isolation_level=level, request_timeout=15)
            for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
        }
        ends = {
            level: {(tp.topic, tp.partition): f.result().offset for tp, f in fs.items()}
            for level, fs in futures.items()
        }
        lso, hw = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
        return {f"{t}-{p}": (lso[(t, p)], hw[(t, p)]) for (t, p) in hw if lso[(t, p)] != hw[(t, p)]}


def hanging_transactions(cfg: SluiceConfig, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
    """EosTestDriver's check: partitions whose last stable offset is behind the high
    watermark, {"topic-partition": (lso, hw)}; empty when no transaction hangs."""
    return TransactionProbe(cfg, topics).lag()


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
