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
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
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
        self.received: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.consumer.consume(1000, timeout=0.05):
                if m.error() is None:
                    self.received.append((time.time() * 1000, m.value()))
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


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def _processed_at_avro(cfg: SluiceConfig) -> Callable[[bytes], int]:
    from sluice.native import AvroDecoder
    from sluice.registry import output_schema

    enriched = output_schema(cfg, cfg.schemas.enriched)
    dec = AvroDecoder(enriched.schema_str, "dict")
    dec.add_writer_schema(enriched.schema_id, enriched.schema_str)
    return lambda v: int(dec.decode(v)[1]["processed_at"])


def _processed_at_json(v: bytes) -> int:
    return int(datetime.fromisoformat(json.loads(v)["processed_at"]).timestamp() * 1000)


def run_flink_variant(base: SluiceConfig, v: Variant, tag: str, n: int, out_dir: Path,
                      json_topic: str, say: Callable[[str], None], timeout_s: float = 420) -> dict:
    from sluice.kafka_util import ensure_topics

    vt = f"{tag}.{v.name}"
    topics = {k: f"{vt}.{k}" for k in ("enriched", "scores", "alerts", "dlq", "quality")}
    if v.json_input:
        topics["telemetry"] = json_topic
    jars = [*base.job.jars, *(REPO_ROOT / j for j in v.jars)]
    cfg = base.with_overrides(topics=topics, job={
        "name": f"sluice-bench-{v.name}", "consumer_group": f"sluice-{vt}",
        "transactional_id_prefix": f"sluice-{vt}", "jars": jars, **v.job})
    ensure_topics(cfg, [cfg.topics.enriched, cfg.topics.scores, cfg.topics.alerts,
                        cfg.topics.dlq, cfg.topics.quality])
    conf_path = dump_config(cfg, out_dir / f"{v.name}.yaml")
    reader = OutputReader(cfg, cfg.topics.enriched)
    reader.start()
    port = _free_port()
    args = [sys.executable, str(REPO_ROOT / v.script), "--config", str(conf_path),  # type: ignore[operator]
            "--rest-port", str(port), *v.args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    log_path = out_dir / f"{v.name}.log"
    broker = broker_pid(cfg)
    t_start = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    sampler = CpuSampler([proc.pid], [broker] if broker else [])
    rest = FlinkRest(f"http://127.0.0.1:{port}", timeout=1)
    job_id, checkpoints, job_info = None, {}, {}
    try:
        while proc.poll() is None:
            if time.monotonic() - t_start > timeout_s:
                raise TimeoutError(f"{v.name} did not finish in {timeout_s:.0f} s (log: {log_path})")
            sampler.sample()
            try:
                if job_id is None:
                    jobs = rest.get("/jobs/overview").get("jobs", [])
                    job_id = jobs[0]["jid"] if jobs else None
                if job_id is not None:
                    job_info = rest.get(f"/jobs/{job_id}")
                    cps = rest.get(f"/jobs/{job_id}/checkpoints")
                    for c in cps.get("history") or []:
                        if c.get("status") == "COMPLETED":
                            checkpoints[c["id"]] = c["end_to_end_duration"]
            except Exception:  # REST not up yet, or gone at the end  # noqa: BLE001, S110
                pass
            time.sleep(0.25)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        reader.stop.set()
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"variant {v.name} exited {proc.returncode} (log {log_path}):\n{tail}")
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
                    sampler, sorted(checkpoints.values()), job_info, time.monotonic() - t_start)


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


# ---------------------------------------------------------------------------- results
def ratios(variants: dict[str, dict]) -> dict[str, float | None]:
    def r(a: str, b: str) -> float | None:
        if a in variants and b in variants and variants[b]["events_per_s"]:
            return round(variants[a]["events_per_s"] / variants[b]["events_per_s"], 3)
        return None

    out = {"rust_vs_python": r("rust_eo", "python"), "rust_vs_sql": r("rust_eo", "sql"),
           "eo_vs_alo": r("rust_eo", "rust_alo"), "rust_vs_kafka_limit": r("rust_eo", "kafka"),
           "thread_vs_process": r("rust_thread", "rust_eo"),
           "rust_vs_sql_json": r("rust_eo", "sql_json")}
    return {k: v for k, v in out.items() if v is not None}


def efficiency_ratios(variants: dict[str, dict]) -> dict[str, float]:
    """The same ratios on events per CPU-second: less sensitive than throughput to other
    load on a shared machine."""
    def r(a: str, b: str) -> float | None:
        x = (variants.get(a) or {}).get("events_per_cpu_s")
        y = (variants.get(b) or {}).get("events_per_cpu_s")
        return round(x / y, 3) if x and y else None

    out = {"rust_vs_python": r("rust_eo", "python"), "rust_vs_sql": r("rust_eo", "sql"),
           "eo_vs_alo": r("rust_eo", "rust_alo"), "rust_vs_kafka_limit": r("rust_eo", "kafka"),
           "thread_vs_process": r("rust_thread", "rust_eo"),
           "rust_vs_sql_json": r("rust_eo", "sql_json")}
    return {k: v for k, v in out.items() if v is not None}


def chart(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = results["variants"]
    names = list(vs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
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
    fig.suptitle(f"sluice bench: {results['records']} telemetry records")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: SluiceConfig, *, records: int, names: list[str], out_dir: Path,
        say: Callable[[str], None] = print) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown bench variants {unknown}; known: {list(VARIANTS)}")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    base = bench_config(cfg, records, tag, out_dir)
    json_topic = f"{tag}.telemetry-json"
    say(f"producing {records} telemetry records to {base.topics.telemetry} (+ JSON copy)")
    n = produce_input(base, json_topic)
    variants: dict[str, dict] = {}
    for name in names:
        v = VARIANTS[name]
        say(f"running {name}: {v.label}")
        if v.script is None:
            variants[name] = run_kafka_limit(base, n)
        else:
            variants[name] = run_flink_variant(base, v, tag, n, out_dir, json_topic, say)
        f = variants[name]
        say(f"  {name}: {f['records_out']}/{n} records, {f['events_per_s']:.0f} ev/s, "
            f"{f['events_per_cpu_s']} ev/CPU-s")
    results = {
        "records": n, "input_topic": base.topics.telemetry, "machine_cpus": os.cpu_count(),
        "throughput": "records / (last - first processed_at in the output), per variant",
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
    names = {"python": "rust_vs_python", "sql": "rust_vs_sql", "sql_json": "rust_vs_sql_json",
             "rust_alo": "eo_vs_alo",
             "kafka": "rust_vs_kafka_limit", "rust_thread": "thread_vs_process"}
    for k, f in results["variants"].items():
        lat = f["latency_ms"]
        cp = f["checkpoint_ms"]
        ratio = results["ratios"].get(names.get(k, ""))
        if k == "rust_thread" and ratio is not None:
            ratio_s = f"thread ÷ (a) = {ratio:.2f}"
        else:
            ratio_s = f"{ratio:.2f}" if ratio is not None else ("1" if a is f else "")
        t.add_row(k, f"{f['events_per_s']:,.0f}",
                  f"{f['events_per_cpu_s']:,.0f}" if f["events_per_cpu_s"] else "-",
                  f"{lat['p50']:.0f} / {lat['p99']:.0f}" if lat["p50"] is not None else "-",
                  f"{cp['p50']:.0f} (n={cp['count']})" if cp["p50"] is not None else "-",
                  ratio_s, results["targets"].get(names.get(k, ""), ""))
    return t


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
