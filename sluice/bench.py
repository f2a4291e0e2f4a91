"""`sluice bench`: the ingest path's variants side by side, on the same input, in one run.

One generated telemetry input (sluice.generator plan → produce) is written once to a
topic (and a JSON copy of it for the SQL variant); every variant then reads it from the
earliest offset, bounded, in its own Flink mini-cluster process:

- ``rust_eo`` (a): jobs/pipeline.py (Rust UDFs), features/joins/quality off, exactly-once;
- ``rust_alo``: the same at-least-once; ``rust_thread``: the same in thread mode;
- ``python`` (b): jobs/bench_python.py, the same graph with fastavro/pure-Python UDFs;
- ``sql`` (c): jobs/bench_sql.py, Flink SQL built-ins on the JSON copy;
- ``kafka`` (d): a confluent-kafka read_committed consumer of the input topic.

Per variant: throughput = records / (last − first ``processed_at`` stamped in the
output records), CPU-seconds of the job's process tree and the broker over that span
(/proc, interpolated between 0.25 s samples), latency from ``processed_at`` to the
moment a read_committed consumer (running during the job) receives the record, and
the checkpoint durations Flink's REST API reports. Correctness is checked: each variant
must output every input record exactly once.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from sluice.config import REPO_ROOT, SluiceConfig, dump_config
from sluice.report import FlinkRest, _stat, process_tree

TARGETS = {  # issue 7: reported next to the measurements, never asserted
    "rust_vs_python": (">=", 8.0),
    "rust_vs_sql": (">=", 0.8),
    "eo_vs_alo": (">=", 0.9),
    "rust_vs_kafka_limit": (">=", 0.3),
}


#: Flink's avro-confluent SQL format (flink-conf/pom.xml; `make deps` fetches it). Only the
#: SQL variant loads it: it carries unshaded Guava and commons-lang3.
AVRO_CONFLUENT_JAR = ".deps/flink-jars/flink-sql-avro-confluent-registry-2.2.0.jar"


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    script: str | None  # None: the raw Kafka consumer
    job: dict[str, Any] = field(default_factory=dict)
    json_input: bool = False
    json_output: bool = False  # the SQL variants write JSON (processed_at as ISO-8601)
    args: tuple[str, ...] = ()  # extra arguments of the script
    jars: tuple[str, ...] = ()  # added to job.jars


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("rust_eo", "(a) Rust UDFs, exactly-once", "jobs/pipeline.py"),
    Variant("rust_alo", "(a) Rust UDFs, at-least-once", "jobs/pipeline.py",
            {"delivery_guarantee": "at-least-once"}),
    Variant("rust_thread", "(a) Rust UDFs, thread mode, exactly-once", "jobs/pipeline.py",
            {"python_execution_mode": "thread"}),
    Variant("python", "(b) pure-Python UDFs (fastavro), exactly-once", "jobs/bench_python.py"),
    Variant("sql", "(c) Flink SQL built-ins (avro-confluent), exactly-once", "jobs/bench_sql.py",
            json_output=True, args=("--format", "avro"), jars=(AVRO_CONFLUENT_JAR,)),
    Variant("sql_json", "(c) Flink SQL built-ins on a JSON copy, exactly-once",
            "jobs/bench_sql.py", json_input=True, json_output=True, args=("--format", "json")),
    Variant("kafka", "(d) raw Kafka consume (read_committed)", None),
)}


# ------------------------------------------------------------------------------ input
def bench_config(cfg: SluiceConfig, records: int, tag: str, out_dir: Path) -> SluiceConfig:
    """The base config of a run: telemetry only, no corrupt records, the ingest path alone
    (no feature windows, no reference joins, no quality suites or audit)."""
    no_suites = out_dir / "no-suites"
    no_suites.mkdir(parents=True, exist_ok=True)
    return cfg.with_overrides(
        generator={"records": records, "frame_share": 0.0, "maintenance_share": 0.0,
                   "corrupt_non_avro": 0, "corrupt_unknown_schema": 0, "corrupt_truncated": 0,
                   "corrupt_each_rare_kind": 0, "anomalies": None},
        quality={"audit": False, "suites_dir": str(no_suites)},
        features={"spec": None},
        reference={"joins": False},
        topics={"telemetry": f"{tag}.telemetry", "sensor_frames": f"{tag}.frames",
                "maintenance": f"{tag}.maintenance"},
        job={"bounded": True, "startup_mode": "earliest"},
    )


def produce_input(cfg: SluiceConfig, json_topic: str) -> int:
    """Plan and produce the telemetry once (Avro, via the registry) and a JSON copy of
    the same readings (same keys, partitions and record timestamps). Returns the count."""
    from sluice.generator import Reading, aligned_start, plan, produce
    from sluice.kafka_util import ensure_topics

    step_ms = 10.0
    span = int(cfg.generator.records * step_ms)
    items = plan(cfg, start_ms=aligned_start(cfg, span), step_ms=step_ms)
    ensure_topics(cfg, [cfg.topics.telemetry, cfg.topics.sensor_frames, cfg.topics.maintenance,
                        json_topic])
    produce(cfg, items)
    producer = Producer({**cfg.kafka.client_properties(), "linger.ms": 5,
                         "enable.idempotence": True, "compression.type": "lz4"})
    for it in items:
        assert isinstance(it, Reading)
        value = json.dumps({
            "event_id": it.event_id, "device_id": it.device_id, "ts": it.ts,
            "temperature_c": it.temperature_c, "vibration_rms_g": it.vibration_rms,
            "status": it.status, "humidity_pct": it.humidity_pct, "firmware": it.firmware,
            "sample_count": it.sample_count}).encode()
        while True:
            try:
                producer.produce(json_topic, value=value, key=it.device_id.encode(), timestamp=it.ts)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the JSON copy of the bench input was not delivered in 60 s")
    return len(items)


# ------------------------------------------------------------------------ measurement
class CpuSampler:
    """CPU-seconds of a process tree and the broker, sampled over time. Each pid's
    counter is kept as last seen, so workers that exit still count."""

    def __init__(self, roots: list[int], extra: list[int]) -> None:
        self.roots, self.extra = roots, extra
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.samples: list[tuple[float, float]] = []  # (epoch ms, cumulative CPU-s)
        self.by_kind: list[dict[str, float]] = []  # the same, per kind of process

    def _kind(self, pid: int) -> str:
        if pid in self.extra:
            return "broker"
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return "other"
        return "java" if comm == "java" else "python" if comm.startswith("python") else "other"

    def sample(self) -> None:
        pids = process_tree(self.roots) + [p for p in self.extra if p not in self.roots]
        for pid in pids:
            st = _stat(pid)
            if st is not None:
                self.base.setdefault(pid, st[1] if pid in self.extra else 0.0)
                self.kind.setdefault(pid, self._kind(pid))
                self.seen[pid] = st[1]
        kinds: dict[str, float] = {}
        for p, v in self.seen.items():
            kinds[self.kind[p]] = kinds.get(self.kind[p], 0.0) + v - self.base[p]
        self.samples.append((time.time() * 1000, sum(kinds.values())))
        self.by_kind.append(kinds)

    def at(self, t_ms: float, kind: str | None = None) -> float:
        """Cumulative CPU-seconds at wall time ``t_ms`` (linear between samples), of all
        processes or of one kind (java, python, broker, other)."""
        ts = [s[0] for s in self.samples]
        vals = [s[1] for s in self.samples] if kind is None else [
            k.get(kind, 0.0) for k in self.by_kind]
        i = bisect.bisect_left(ts, t_ms)
        if i <= 0:
            return vals[0]
        if i >= len(ts):
            return vals[-1]
        t0, t1, c0, c1 = ts[i - 1], ts[i], vals[i - 1], vals[i]
        return c0 + (c1 - c0) * (t_ms - t0) / max(t1 - t0, 1e-9)

    def split(self, first: float, last: float) -> dict[str, float]:
        """CPU-seconds per kind of process between two wall times."""
        kinds = sorted({k for d in self.by_kind for k in d})
        return {k: round(self.at(last, k) - self.at(first, k), 3) for k in kinds}


class OutputReader(threading.Thread):
    """A read_committed consumer of one output topic, running during the job: it keeps
    each record's value and the wall time it was received."""

    def __init__(self, cfg: SluiceConfig, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({
            **cfg.kafka.client_properties(), "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
        parts = self.consumer.list_topics(topic, timeout=15).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.received: list[tuple[float, bytes]] = []  # (wall ms received, value)
        self.record_ts: list[int] = []  # each one's Kafka record timestamp
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            # poll returns as soon as one message is there; consume(n, timeout) would wait
            # for n messages or the whole timeout, adding up to that timeout to the latency
            # measured. What is already fetched is then taken without waiting.
            first = self.consumer.poll(0.05)
            if first is None:
                continue
            now = time.time() * 1000
            for m in [first, *self.consumer.consume(1000, timeout=0)]:
                value = m.value()
                if m.error() is None and value is not None:
                    self.received.append((now, value))
                    self.record_ts.append(m.timestamp()[1])
        self.consumer.close()


def broker_pid(cfg: SluiceConfig) -> int | None:
    try:
        text = (cfg.path(cfg.stack.run_dir) / "kafka" / "pid").read_text()
    except OSError:
        return None
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def _processed_at_avro(cfg: SluiceConfig) -> Callable[[bytes], int]:
    decode = _decoder_enriched(cfg)
    return lambda v: decode(v)[2]


def _processed_at_json(v: bytes) -> int:
    return int(datetime.fromisoformat(json.loads(v)["processed_at"]).timestamp() * 1000)


class JobProcess:
    """One variant's job in its own process (and its own local mini-cluster), in a new
    session so that it and its children (the JVM, the Python workers) can be ended
    together. ``poll`` samples the CPU of the tree and the broker and reads the job's state
    and checkpoints from Flink's REST API."""

    def __init__(self, cfg: SluiceConfig, script: str, conf_path: Path, args: tuple[str, ...],
                 log_path: Path) -> None:
        port = _free_port()
        cmd = [sys.executable, str(REPO_ROOT / script), "--config", str(conf_path),
               "--rest-port", str(port), *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        self.log_path = log_path
        broker = broker_pid(cfg)
        self.t_start = time.monotonic()
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        self.sampler = CpuSampler([self.proc.pid], [broker] if broker else [])
        self.rest = FlinkRest(f"http://127.0.0.1:{port}", timeout=1)
        self.job_id: str | None = None
        self.job_info: dict[str, Any] = {}
        self.checkpoints: dict[int, int] = {}  # id -> end-to-end duration (ms), completed ones
        self.restarts = 0  # the job's numRestarts metric, as last read

    def poll(self) -> None:
        self.sampler.sample()
        try:
            if self.job_id is None:
                jobs = self.rest.get("/jobs/overview").get("jobs", [])
                self.job_id = jobs[0]["jid"] if jobs else None
            if self.job_id is not None:
                self.job_info = self.rest.get(f"/jobs/{self.job_id}")
                for c in self.rest.get(f"/jobs/{self.job_id}/checkpoints").get("history") or []:
                    if c.get("status") == "COMPLETED":
                        self.checkpoints[c["id"]] = c["end_to_end_duration"]
                for m in self.rest.get(f"/jobs/{self.job_id}/metrics", get="numRestarts"):
                    self.restarts = max(self.restarts, int(float(m.get("value", 0))))
        except Exception:  # REST not up yet, or gone at the end  # noqa: BLE001, S110
            pass

    def running(self) -> bool:
        """The job and every one of its vertices are RUNNING."""
        vs = self.job_info.get("vertices") or []
        return (self.job_info.get("state") == "RUNNING" and bool(vs)
                and all(v.get("status") == "RUNNING" for v in vs))

    def check_alive(self, what: str, timeout_s: float) -> None:
        """Raise if the process has exited with an error or ``timeout_s`` has passed."""
        rc = self.proc.poll()
        if rc is not None and rc != 0:
            raise self.failure()
        if time.monotonic() - self.t_start > timeout_s:
            raise TimeoutError(f"{what} did not finish in {timeout_s:.0f} s (log: {self.log_path})")

    def failure(self) -> RuntimeError:
        tail = self.log_path.read_text()[-3000:]
        return RuntimeError(f"{self.log_path.stem} exited {self.proc.returncode} "
                            f"(log {self.log_path}):\n{tail}")

    def kill(self) -> None:
        """End the job's whole process group (an unbounded job never exits by itself)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.t_start


def _variant_config(base: SluiceConfig, name: str, tag: str, jars: tuple[str, ...] = (),
                    topics: dict[str, str] | None = None, **job: Any) -> SluiceConfig:
    """The config of one variant: its own output topics, group, transactional ids and job
    name (``topics`` adds to or replaces the topics; ``job`` keys are set as given)."""
    vt = f"{tag}.{name}"
    outputs = {k: f"{vt}.{k}" for k in ("enriched", "scores", "alerts", "dlq", "quality")}
    return base.with_overrides(topics={**outputs, **(topics or {})}, job={
        "name": f"sluice-bench-{name}", "consumer_group": f"sluice-{vt}",
        "transactional_id_prefix": f"sluice-{vt}",
        "jars": [*base.job.jars, *(REPO_ROOT / j for j in jars)], **job})


def _output_topics(cfg: SluiceConfig) -> list[str]:
    return [cfg.topics.enriched, cfg.topics.scores, cfg.topics.alerts, cfg.topics.dlq,
            cfg.topics.quality]


def run_flink_variant(base: SluiceConfig, v: Variant, tag: str, n: int, out_dir: Path,
                      json_topic: str, say: Callable[[str], None], timeout_s: float = 420) -> dict:
    from sluice.kafka_util import ensure_topics

    cfg = _variant_config(base, v.name, tag, v.jars,
                          {"telemetry": json_topic} if v.json_input else None, **v.job)
    ensure_topics(cfg, _output_topics(cfg))
    conf_path = dump_config(cfg, out_dir / f"{v.name}.yaml")
    reader = OutputReader(cfg, cfg.topics.enriched)
    reader.start()
    job = JobProcess(cfg, v.script, conf_path, v.args, out_dir / f"{v.name}.log")  # type: ignore[arg-type]
    try:
        while job.proc.poll() is None:
            job.check_alive(v.name, timeout_s)
            job.poll()
            time.sleep(0.25)
    finally:
        job.kill()
    if job.proc.returncode != 0:
        reader.stop.set()
        raise job.failure()
    # The final exactly-once commit is visible shortly after the job ends.
    deadline = time.monotonic() + 20
    while len(reader.received) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    reader.stop.set()
    reader.join(10)
    decode = _processed_at_json if v.json_output else _processed_at_avro(cfg)
    stamps = [(recv, decode(val)) for recv, val in reader.received]
    return _figures(v, n, len(stamps), [p for _, p in stamps], [r - p for r, p in stamps],
                    job.sampler, sorted(job.checkpoints.values()), job.job_info,
                    job.wall_s) | {"job_restarts": job.restarts}


def _figures(v: Variant, n: int, out: int, processed: list[int], latency: list[float],
             sampler: CpuSampler, checkpoints: list[int], job_info: dict, wall_s: float) -> dict:
    first, last = (min(processed), max(processed)) if processed else (0, 0)
    span_s = max((last - first) / 1000, 1e-3)
    cpu = sampler.at(last) - sampler.at(first) if sampler.samples else None
    return {
        "label": v.label, "records_in": n, "records_out": out, "counts_match": out == n,
        "seconds": round(span_s, 3),
        "events_per_s": round(out / span_s, 1),
        "cpu_seconds": round(cpu, 3) if cpu is not None else None,
        "cpu_seconds_by_process": sampler.split(first, last) if sampler.samples else {},
        "events_per_cpu_s": round(out / cpu, 1) if cpu else None,
        "latency_ms": {"p50": _percentile(latency, 50), "p99": _percentile(latency, 99),
                       "measured": "processed_at in the record → received by a read_committed "
                                   "consumer" if v.script else "n/a"},
        "checkpoint_ms": {"count": len(checkpoints),
                          "p50": _percentile([float(c) for c in checkpoints], 50),
                          "max": max(checkpoints) if checkpoints else None},
        "job_duration_ms": job_info.get("duration"),
        "process_wall_s": round(wall_s, 1),
    }


def run_kafka_limit(cfg: SluiceConfig, n: int, timeout_s: float = 120) -> dict:
    """(d): how fast one read_committed consumer on this machine reads the same input."""
    consumer = Consumer({**cfg.kafka.client_properties(), "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    topic = cfg.topics.telemetry
    parts = consumer.list_topics(topic, timeout=15).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    broker = broker_pid(cfg)
    sampler = CpuSampler([os.getpid()], [broker] if broker else [])
    count, first, last = 0, None, 0.0
    deadline = time.monotonic() + timeout_s
    sampler.sample()
    while count < n and time.monotonic() < deadline:
        for m in consumer.consume(10_000, timeout=0.5):
            if m.error() is None:
                now = time.time() * 1000
                if first is None:
                    first = now
                    sampler.sample()
                last = now
                count += 1
    sampler.sample()
    consumer.close()
    v = VARIANTS["kafka"]
    cpu = sampler.samples[-1][1] - sampler.samples[1][1] if len(sampler.samples) > 2 else None
    span_s = max((last - (first or last)) / 1000, 1e-3)
    return {**_figures(v, n, count, [], [], CpuSampler([], []), [], {}, span_s),
            "seconds": round(span_s, 3), "events_per_s": round(count / span_s, 1),
            "cpu_seconds": round(cpu, 3) if cpu is not None else None,
            "events_per_cpu_s": round(count / cpu, 1) if cpu else None}


# ------------------------------------------------------------------- paced profiles
@dataclass(frozen=True)
class PacedVariant:
    """(a)'s job, unbounded, under a performance profile (flink-conf/profiles), fed at a
    fixed rate: the latency a user sees at a load the job sustains, not a backlog drain."""

    name: str
    label: str
    profile: str


PACED: dict[str, PacedVariant] = {p.name: p for p in (
    PacedVariant("paced_low_latency", "(a) paced, profile low-latency (at-least-once)",
                 "low-latency"),
    PacedVariant("paced_throughput", "(a) paced, profile throughput (exactly-once)",
                 "throughput"),
    PacedVariant("paced_kafka", "(d) paced: one Kafka hop, producer → read_committed consumer",
                 ""),
)}


def latency_target_ms(cfg: SluiceConfig) -> float:
    """Issue 7's p99 targets at half the sustainable rate: 100 ms at-least-once (output is
    visible as soon as it is written); exactly-once output is visible when the checkpoint
    that covers it commits, so the checkpoint interval + 250 ms."""
    if cfg.job.delivery_guarantee == "at-least-once":
        return 100.0
    return cfg.checkpoint.interval_ms + 250.0


def paced_config(base: SluiceConfig, p: PacedVariant, tag: str) -> SluiceConfig:
    """The job under the profile (its sluice defaults set explicitly: a copied config has
    every key set, so a profile would fill in nothing), unbounded, on a fresh input topic
    read from the start, so no record sent after the job starts can be missed."""
    from sluice.config import profile_defaults

    defaults = profile_defaults(p.profile)
    cfg = base.with_overrides(**{k: v for k, v in defaults.items() if k != "job"})
    return _variant_config(cfg, p.name, tag, topics={"telemetry": f"{tag}.{p.name}.telemetry"},
                           **defaults.get("job", {}), profile=p.profile, bounded=False,
                           startup_mode="earliest")


def paced_figures(p: PacedVariant, cfg: SluiceConfig, rate: float,
                  sent: dict[str, int], received: list[tuple[float, str, int, int]]) -> dict:
    """Latency of the measured records: ``sent`` maps event id → the send time stamped in
    the record (its event time); ``received`` holds (wall ms seen by a read_committed
    consumer, event id, ts, processed_at). Records not in ``sent`` (the warm-up) are left
    out; a record's first arrival counts, later ones are duplicates. The target is met only
    if every measured record arrived and the p99 is within it."""
    first: dict[str, tuple[float, int, int]] = {}
    duplicates = 0
    for recv, eid, ts, processed_at in received:
        if eid not in sent:
            continue
        if eid in first:
            duplicates += 1
        else:
            first[eid] = (recv, ts, processed_at)
    e2e = [recv - ts for recv, ts, _ in first.values()]
    in_job = [pa - ts for _, ts, pa in first.values()]
    to_reader = [recv - pa for recv, _, pa in first.values()]
    missing = len(sent) - len(first)
    target = latency_target_ms(cfg)
    p99 = _percentile(e2e, 99)
    send_times = sorted(sent.values())
    span_s = max((send_times[-1] - send_times[0]) / 1000, 1e-3) if send_times else 1e-3
    exactly_once = cfg.job.delivery_guarantee == "exactly-once"
    return {
        "label": p.label, "profile": p.profile, "delivery_guarantee": cfg.job.delivery_guarantee,
        "checkpoint_interval_ms": cfg.checkpoint.interval_ms, "paced": True,
        "rate_eps": round(rate, 1), "records_in": len(sent), "records_out": len(first),
        "missing": missing, "duplicates": duplicates,
        "counts_match": missing == 0 and (duplicates == 0 or not exactly_once),
        "seconds": round(span_s, 3), "events_per_s": round(len(sent) / span_s, 1),
        "latency_ms": {
            "p50": _percentile(e2e, 50), "p95": _percentile(e2e, 95), "p99": p99,
            "max": max(e2e) if e2e else None,
            "measured": "send time stamped in the record (its ts) → received by a "
                        "read_committed consumer"},
        "latency_breakdown_ms": {
            "send_to_processed_at": {"p50": _percentile(in_job, 50), "p99": _percentile(in_job, 99)},
            "processed_at_to_reader": {"p50": _percentile(to_reader, 50),
                                       "p99": _percentile(to_reader, 99)}},
        "target_p99_ms": target,
        "meets_target": missing == 0 and p99 is not None and p99 <= target,
    }


def _produce_live(conf_path: str, items: list[Any], out_path: str) -> None:
    """The body of the sender process: produce ``items`` live at the config's
    generator.rate_eps and write {event id: send time} to ``out_path``."""
    from sluice.config import load_config
    from sluice.generator import produce

    out = produce(load_config(conf_path), items, live=True, unique_ts=False)
    Path(out_path).write_text(json.dumps({r.event_id: r.ts for r in out.readings}))


class _Sender(threading.Thread):
    """Produces planned readings live (each stamped with its send time) at ``rate`` from a
    process of its own, so that serializing them does not hold the GIL the reader thread
    stamps arrivals under; keeps {event id: send time}, or the error."""

    def __init__(self, cfg: SluiceConfig, items: list[Any], rate: float, work_dir: Path) -> None:
        super().__init__(daemon=True)
        self.items = items
        tag = uuid.uuid4().hex[:8]
        self.conf_path = dump_config(cfg.with_overrides(generator={"rate_eps": rate}),
                                     work_dir / f"sender-{tag}.yaml")
        self.out_path = work_dir / f"sender-{tag}.json"
        self.sent: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        import multiprocessing

        proc = multiprocessing.get_context("spawn").Process(
            target=_produce_live, args=(str(self.conf_path), self.items, str(self.out_path)),
            daemon=True)
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            self.error = RuntimeError(f"the sender process exited {proc.exitcode}")
            return
        self.sent = {k: int(v) for k, v in json.loads(self.out_path.read_text()).items()}
        self.out_path.unlink()
        self.conf_path.unlink()


def _decoder_enriched(cfg: SluiceConfig) -> Callable[[bytes], tuple[str, int, int]]:
    from sluice.native import AvroDecoder
    from sluice.registry import output_schema

    enriched = output_schema(cfg, cfg.schemas.enriched)
    dec = AvroDecoder(enriched.schema_str, "dict")
    dec.add_writer_schema(enriched.schema_id, enriched.schema_str)

    def decode(v: bytes) -> tuple[str, int, int]:
        r = dec.decode(v)[1]
        return str(r["event_id"]), int(r["ts"]), int(r["processed_at"])

    return decode


#: The paced variants' rates, as fractions of the headline rate (half of (a)'s drained
#: events/s): one job steps through them after one warm-up; the last is the headline.
PACED_STEPS = (0.125, 0.25, 0.5, 1.0)


def _cpu_figures(sampler: CpuSampler, send_times: list[int]) -> dict:
    if not send_times or not sampler.samples:
        return {"cpu_seconds": None, "cpu_seconds_by_process": {}, "events_per_cpu_s": None}
    first, last = send_times[0], send_times[-1]
    cpu = sampler.at(last) - sampler.at(first)
    return {"cpu_seconds": round(cpu, 3), "cpu_seconds_by_process": sampler.split(first, last),
            "events_per_cpu_s": round(len(send_times) / cpu, 1) if cpu > 0 else None}


def run_paced_variant(base: SluiceConfig, p: PacedVariant, tag: str, rate: float,
                      seconds: float, out_dir: Path, say: Callable[[str], None],
                      warmup_s: float = 30.0, steps: tuple[float, ...] = PACED_STEPS,
                      start_timeout_s: float = 240) -> dict:
    """Start the job and wait until every vertex runs; send a warm-up at the first step's
    rate for ``warmup_s`` (all of which must come out: the Python workers and the sink are
    up, and the JIT compiler, which takes most of a fresh JVM's CPU in its first minute,
    has done most of its work); then, for each step, send ``seconds`` of records at
    ``rate`` × step and wait for them (up to three times as long plus twice the target +
    30 s; what is missing then is reported as missing, and higher steps are not run).
    The figures are those of the last step (``rate``), with every step under ``steps``."""
    from sluice.generator import plan
    from sluice.kafka_util import ensure_topics

    cfg = paced_config(base, p, tag)
    rates = [rate * f for f in sorted(steps)]
    warm_n = max(50, int(rates[0] * warmup_s))
    counts = [max(1, int(r * seconds)) for r in rates]
    cfg = cfg.with_overrides(generator={"records": warm_n + sum(counts), "rate_eps": rates[0]})
    ensure_topics(cfg, [cfg.topics.telemetry, *_output_topics(cfg)])
    items = plan(cfg, start_ms=int(time.time() * 1000), step_ms=1000 / rates[0])
    conf_path = dump_config(cfg, out_dir / f"{p.name}.yaml")
    reader = OutputReader(cfg, cfg.topics.enriched)
    reader.start()
    job = JobProcess(cfg, "jobs/pipeline.py", conf_path, (), out_dir / f"{p.name}.log")
    decode = _decoder_enriched(cfg)
    target = latency_target_ms(cfg)
    seen: set[str] = set()  # distinct event ids out so far (a restart replays records)
    # (received wall ms, event id, ts, processed_at) of reader.received, each decoded once
    decoded: list[tuple[float, str, int, int]] = []

    def wait_for(sender: _Sender, expect: int, limit_s: float, what: str) -> None:
        deadline = time.monotonic() + limit_s
        while True:
            if job.proc.poll() is not None:
                raise job.failure()
            job.poll()
            if sender.error is not None:
                raise RuntimeError(f"{p.name}: sending failed: {sender.error}") from sender.error
            new = [(recv, *decode(value)) for recv, value in reader.received[len(decoded):]]
            decoded.extend(new)
            seen.update(eid for _, eid, _, _ in new)
            if not sender.is_alive() and len(seen) >= expect:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{p.name}: {what} not done in {limit_s:.0f} s "
                                   f"({len(seen)}/{expect} out; log {job.log_path})")
            time.sleep(0.25)


    sent: list[tuple[float, dict[str, int]]] = []  # (rate, event id -> send time) per step
    try:
        deadline = time.monotonic() + start_timeout_s
        while not job.running():
            if job.proc.poll() is not None:
                raise job.failure()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{p.name}: not RUNNING in {start_timeout_s:.0f} s "
                                   f"(log {job.log_path})")
            job.poll()
            time.sleep(0.25)
        say(f"  {p.name}: running; warm-up {warm_n} records at {rates[0]:.0f} ev/s")
        warm = _Sender(cfg, items[:warm_n], rates[0], out_dir)
        warm.start()
        wait_for(warm, warm_n, 120 + warmup_s * 3 + target / 1000, "the warm-up")
        at, expect = warm_n, warm_n
        for r, n in zip(rates, counts, strict=True):
            say(f"  {p.name}: {n} records at {r:.0f} ev/s")
            sender = _Sender(cfg, items[at:at + n], r, out_dir)
            sender.start()
            at, expect = at + n, expect + n
            try:
                wait_for(sender, expect, seconds * 3 + 2 * target / 1000 + 30, f"{r:.0f} ev/s")
            except TimeoutError as exc:  # a miss is reported as one (missing records)
                say(f"  {p.name}: {exc}")
                sender.join()
                sent.append((r, sender.sent))
                break
            sent.append((r, sender.sent))
        time.sleep(0.5)
    finally:
        job.kill()
        reader.stop.set()
        reader.join(10)
    received = decoded + [(recv, *decode(val)) for recv, val in reader.received[len(decoded):]]
    figs = [paced_figures(p, cfg, r, ids, received) | _cpu_figures(job.sampler, sorted(ids.values()))
            for r, ids in sent]
    head = figs[-1] | {"headline_rate_eps": round(rate, 1)}
    if len(figs) < len(rates):  # a lower step was missed: the headline rate was not run
        head |= {"meets_target": False, "rates_not_run": [round(r, 1) for r in rates[len(figs):]]}
    cps = sorted(job.checkpoints.values())
    return head | {
        "steps": [{k: f[k] for k in ("rate_eps", "events_per_s", "records_in", "records_out",
                                     "missing", "duplicates", "target_p99_ms", "meets_target",
                                     "events_per_cpu_s", "cpu_seconds_by_process")}
                  | {"latency_ms": {k: v for k, v in f["latency_ms"].items() if k != "measured"}}
                  for f in figs],
        "warmup": {"records": warm_n, "rate_eps": round(rates[0], 1)},
        "checkpoint_ms": {"count": len(cps), "p50": _percentile([float(c) for c in cps], 50),
                          "max": max(cps) if cps else None},
        "process_wall_s": round(job.wall_s, 1), "job_restarts": job.restarts,
    }


def run_paced_kafka(base: SluiceConfig, p: PacedVariant, tag: str, rate: float, seconds: float,
                    out_dir: Path, say: Callable[[str], None],
                    steps: tuple[float, ...] = PACED_STEPS) -> dict:
    """The floor under the paced variants: the same sender, at the same rates, to a fresh
    topic read by the same read_committed reader; latency from the send time (the record's
    timestamp) to arrival. The pipeline has two such hops (its input and its output)."""
    from sluice.generator import plan
    from sluice.kafka_util import ensure_topics

    rates = [rate * f for f in sorted(steps)]
    counts = [max(1, int(r * seconds)) for r in rates]
    cfg = base.with_overrides(topics={"telemetry": f"{tag}.{p.name}.telemetry"},
                              generator={"records": sum(counts), "rate_eps": rates[0]})
    ensure_topics(cfg, [cfg.topics.telemetry])
    items = plan(cfg, start_ms=int(time.time() * 1000), step_ms=1000 / rates[0])
    reader = OutputReader(cfg, cfg.topics.telemetry)
    reader.start()
    broker = broker_pid(cfg)
    sampler = CpuSampler([], [broker] if broker else [])
    figs, at = [], 0
    try:
        for r, n in zip(rates, counts, strict=True):
            say(f"  {p.name}: {n} records at {r:.0f} ev/s")
            before = len(reader.received)
            sender = _Sender(cfg, items[at:at + n], r, out_dir)
            sender.start()
            while sender.is_alive():
                sampler.sample()
                time.sleep(0.25)
            if sender.error is not None:
                raise RuntimeError(f"{p.name}: sending failed: {sender.error}") from sender.error
            deadline = time.monotonic() + 30
            while len(reader.received) < before + n and time.monotonic() < deadline:
                time.sleep(0.1)
            sampler.sample()
            at += n
            got = len(reader.received) - before
            lat = [recv - ts for (recv, _), ts in zip(reader.received[before:], reader.record_ts[before:],
                                                      strict=True)]
            send_times = sorted(sender.sent.values())
            span_s = max((send_times[-1] - send_times[0]) / 1000, 1e-3)
            figs.append({
                "rate_eps": round(r, 1), "events_per_s": round(n / span_s, 1),
                "records_in": n, "records_out": got, "missing": max(0, n - got),
                "duplicates": max(0, got - n), "target_p99_ms": None, "meets_target": None,
                "latency_ms": {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95),
                               "p99": _percentile(lat, 99), "max": max(lat) if lat else None},
                **{k: v for k, v in _cpu_figures(sampler, send_times).items()
                   if k != "cpu_seconds"}})
    finally:
        reader.stop.set()
        reader.join(10)
    head = figs[-1]
    return {
        "label": p.label, "profile": None, "delivery_guarantee": None, "paced": True,
        **{k: head[k] for k in ("rate_eps", "events_per_s", "records_in", "records_out",
                                "missing", "duplicates", "target_p99_ms", "meets_target",
                                "events_per_cpu_s", "cpu_seconds_by_process")},
        "counts_match": all(f["missing"] == 0 for f in figs),
        "latency_ms": {**head["latency_ms"], "measured": "send time (the record timestamp) → "
                                                         "received by a read_committed consumer"},
        "headline_rate_eps": round(rate, 1), "steps": figs,
        "checkpoint_ms": {"count": 0, "p50": None, "max": None},
    }


# ---------------------------------------------------------------------------- results
#: Each ratio of the results: (numerator, denominator) variants of a throughput (or, in
#: ``cpu_efficiency_ratios``, events per CPU-second) division, and the table row it shows on.
RATIOS: dict[str, tuple[str, str, str]] = {
    "rust_vs_python": ("rust_eo", "python", "python"),
    "rust_vs_sql": ("rust_eo", "sql", "sql"),
    "eo_vs_alo": ("rust_eo", "rust_alo", "rust_alo"),
    "rust_vs_kafka_limit": ("rust_eo", "kafka", "kafka"),
    "thread_vs_process": ("rust_thread", "rust_eo", "rust_thread"),
    "rust_vs_sql_json": ("rust_eo", "sql_json", "sql_json"),
}


def _ratios(variants: dict[str, dict], key: str) -> dict[str, float]:
    out = {}
    for name, (a, b, _) in RATIOS.items():
        x = (variants.get(a) or {}).get(key)
        y = (variants.get(b) or {}).get(key)
        if x and y:
            out[name] = round(x / y, 3)
    return out


def ratios(variants: dict[str, dict]) -> dict[str, float]:
    return _ratios(variants, "events_per_s")


def efficiency_ratios(variants: dict[str, dict]) -> dict[str, float]:
    """The same ratios on events per CPU-second: less sensitive than throughput to other
    load on a shared machine."""
    return _ratios(variants, "events_per_cpu_s")


def chart(results: dict, path: Path) -> Path:
    """Throughput and efficiency of the drained variants; with paced variants, a third
    panel of their p50/p99 latency against each one's target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = {k: f for k, f in results["variants"].items() if not f.get("paced")}
    paced = {k: f for k, f in results["variants"].items() if f.get("paced")}
    names = list(vs)
    panels = (2 if vs else 0) + (1 if paced else 0)
    fig, grid = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 4.5), squeeze=False)
    axes = list(grid[0])
    if vs:
        ax1, ax2 = axes.pop(0), axes.pop(0)
        ax1.barh(names, [vs[k]["events_per_s"] for k in names], color="#4477aa")
        ax1.set_xscale("log")
        ax1.set_xlabel("events/s (log)")
        ax1.set_title("throughput, same input, one run")
        ax2.barh(names, [vs[k]["events_per_cpu_s"] or 0 for k in names], color="#ee7733")
        ax2.set_xscale("log")
        ax2.set_xlabel("events per CPU-second, job processes + broker (log)")
        ax2.set_title("efficiency")
        for ax in (ax1, ax2):
            ax.invert_yaxis()
    if paced:
        ax3 = axes.pop(0)
        for (k, f), color in zip(paced.items(), ("#aa3377", "#228833", "#4477aa", "#ccbb44"),
                                 strict=False):
            steps = f.get("steps") or [f]
            xs = [st["rate_eps"] for st in steps]
            ax3.plot(xs, [st["latency_ms"]["p99"] for st in steps], "o-", color=color,
                     label=f"{k} p99")
            ax3.plot(xs, [st["latency_ms"]["p50"] for st in steps], "o:", color=color,
                     label=f"{k} p50")
            if f.get("target_p99_ms") is not None:
                ax3.axhline(f["target_p99_ms"], color=color, linestyle="--", linewidth=1,
                            label=f"{k} p99 target")
        ax3.set_yscale("log")
        ax3.set_xlabel("events/s sent (the last point: half of (a)'s drained rate)")
        ax3.set_ylabel("ms, send → visible to read_committed (log)")
        ax3.set_title("profiles at fixed rates")
        ax3.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"sluice bench: {results['records']} telemetry records")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paced_rate(variants: dict[str, dict], given: float | None) -> float:
    """The paced variants' rate: ``given``, else half of (a)'s drained events/s this run."""
    if given is not None:
        if given <= 0:
            raise ValueError(f"the paced rate must be above 0 events/s, not {given}")
        return given
    a = (variants.get("rust_eo") or {}).get("events_per_s")
    if not a:
        raise ValueError("paced variants run at half of rust_eo's events/s: run rust_eo "
                         "in the same bench, or give the rate (--paced-rate)")
    return a / 2


def run(cfg: SluiceConfig, *, records: int, names: list[str], out_dir: Path,
        say: Callable[[str], None] = print, rate: float | None = None,
        paced_seconds: float = 20.0, warmup_seconds: float = 30.0,
        paced_steps: tuple[float, ...] = PACED_STEPS) -> dict:
    """The drained variants in ``names`` in order, then the paced ones (``rate``, or half
    of rust_eo's events/s), then the pyo3 micro timings; results.json and results.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in names if n not in VARIANTS and n not in PACED]
    if unknown:
        raise ValueError(f"unknown bench variants {unknown}; known: {[*VARIANTS, *PACED]}")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    base = bench_config(cfg, records, tag, out_dir)
    json_topic = f"{tag}.telemetry-json"
    say(f"producing {records} telemetry records to {base.topics.telemetry} (+ JSON copy)")
    n = produce_input(base, json_topic)
    variants: dict[str, dict] = {}
    for name in (x for x in names if x in VARIANTS):
        v = VARIANTS[name]
        say(f"running {name}: {v.label}")
        if v.script is None:
            variants[name] = run_kafka_limit(base, n)
        else:
            variants[name] = run_flink_variant(base, v, tag, n, out_dir, json_topic, say)
        f = variants[name]
        say(f"  {name}: {f['records_out']}/{n} records, {f['events_per_s']:.0f} ev/s, "
            f"{f['events_per_cpu_s']} ev/CPU-s")
    paced_names = [x for x in names if x in PACED]
    if paced_names:
        r = paced_rate(variants, rate)
        for name in paced_names:
            p = PACED[name]
            say(f"running {name}: {p.label}, {r:.0f} ev/s for {paced_seconds:.0f} s")
            if not p.profile:
                variants[name] = f = run_paced_kafka(base, p, tag, r, paced_seconds, out_dir, say,
                                                     steps=paced_steps)
            else:
                variants[name] = f = run_paced_variant(base, p, tag, r, paced_seconds, out_dir,
                                                       say, warmup_s=warmup_seconds,
                                                       steps=paced_steps)
            say(f"  {name}: {f['records_out']}/{f['records_in']} records, p50 "
                f"{f['latency_ms']['p50']} ms, p99 {f['latency_ms']['p99']} ms "
                f"(target {f['target_p99_ms']})")
    results = {
        "records": n, "input_topic": base.topics.telemetry, "machine_cpus": os.cpu_count(),
        "throughput": "records / (last - first processed_at in the output), per variant; "
                      "paced variants: the rate they were fed at",
        "variants": variants, "ratios": ratios(variants),
        "cpu_efficiency_ratios": efficiency_ratios(variants),
        "load_average_1m": os.getloadavg()[0],
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()},
    }
    from sluice.bench_micro import collect

    say("timing the Rust calls through pyo3 (criterion's figures: `make bench`)")
    results["micro"] = collect(out_dir / "micro-model.json")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    chart(results, out_dir / "results.png")
    return results


def ratio_table(results: dict) -> Any:
    from rich.table import Table

    t = Table(title=f"sluice bench: ratios against (a) rust_eo, {results['records']} records")
    t.add_column("variant (labels: results.json)")
    t.add_column("events/s", justify="right")
    t.add_column("ev/CPU-s", justify="right")
    t.add_column("p50 / p99 ms", justify="right")
    t.add_column("checkpoint ms", justify="right")
    t.add_column("(a) ÷ variant", justify="right")
    t.add_column("target", justify="right")
    a = results["variants"].get("rust_eo")
    row_ratio = {row: name for name, (_, _, row) in RATIOS.items()}
    for k, f in results["variants"].items():
        lat = f["latency_ms"]
        cp = f["checkpoint_ms"]
        ratio = results["ratios"].get(row_ratio.get(k, ""))
        if f.get("paced"):
            for st in f.get("steps", [])[:-1]:  # the lower rates, then the headline row
                t.add_row(f"  {k} @ {st['rate_eps']:,.0f}/s", f"{st['events_per_s']:,.0f}",
                          f"{st['events_per_cpu_s']:,.0f}" if st["events_per_cpu_s"] else "-",
                          _p50_p99(st["latency_ms"]), "",
                          f"paced ({st['records_out']}/{st['records_in']} out)",
                          _verdict(st))
            restarts = f.get("job_restarts") or 0
            ratio_s = (f"paced ({f['records_out']}/{f['records_in']} out"
                       + (f", {restarts} job restart{'s' if restarts > 1 else ''})" if restarts
                          else ")"))
            target = _verdict(f)
        else:
            if RATIOS.get(row_ratio.get(k, ""), ("", ""))[0] == k and ratio is not None:
                ratio_s = f"{k} ÷ (a) = {ratio:.2f}"
            else:
                ratio_s = f"{ratio:.2f}" if ratio is not None else ("1" if a is f else "")
            target = results["targets"].get(row_ratio.get(k, ""), "")
        t.add_row(k, f"{f['events_per_s']:,.0f}",
                  f"{f['events_per_cpu_s']:,.0f}" if f["events_per_cpu_s"] else "-",
                  _p50_p99(lat),
                  f"{cp['p50']:.0f} (n={cp['count']})" if cp["p50"] is not None else "-",
                  ratio_s, target)
    return t


def _p50_p99(lat: dict) -> str:
    return f"{lat['p50']:.0f} / {lat['p99']:.0f}" if lat.get("p50") is not None else "-"


def _verdict(f: dict) -> str:
    if f.get("target_p99_ms") is None:
        return ""
    return f"p99 ≤ {f['target_p99_ms']:,.0f} ms {'✓' if f['meets_target'] else '✗'}"


def micro_table(results: dict) -> Any:
    from rich.table import Table

    micro = results.get("micro") or {}
    t = Table(title="hot-path calls: Rust (criterion) vs the same call via pyo3 vs pure Python (ns)")
    for col in ("call", "rust", "pyo3", "python", "target"):
        t.add_column(col, justify="left" if col == "call" else "right")
    targets = micro.get("targets_ns", {})

    def ns(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    for name, c in (micro.get("calls") or {}).items():
        t.add_row(name, ns(c.get("rust_ns")), ns(c.get("pyo3_ns")), ns(c.get("python_ns")),
                  f"≤ {targets[name]:,}" if name in targets else "")
    return t
