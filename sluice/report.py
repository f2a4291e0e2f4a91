"""`sluice report`: throughput, lag, latency per stage, checkpoints, dead letters and
cost per million events of a running or finished job (docs/observability.md).

Where each figure comes from:

* throughput per partition: Kafka offsets at the start and end of the time range
  (``offsets_for_times``) of every input and output topic: what was written, per second;
* consumer lag: the job's consumer group, sampled through the sample window (LagProbe);
* latency per component, from timestamps every output record carries:
  event time (``ts``) → ``processed_at`` (the Ingest UDF) → the output record's Kafka
  timestamp (written by the sink); FeatureVectors: ``window_end`` → ``computed_at`` → sink.
  For a running job also the Python-side stage histograms (Flink REST, sluice/metrics.py);
* checkpoints: Flink REST ``/jobs/<id>/checkpoints`` (history: duration, size);
* dead letters and quality: the DLQ records of the range by reason, warnings carried by
  the output records;
* cost: CPU-seconds and memory-GB-seconds of the job's processes (the Flink JVMs and
  every Python worker below them, read from /proc) during the sample window, divided by
  the events the Ingest UDF counted in the same window, times ``report.prices``.
  A finished job has no processes to measure: its cost is reported as not measured.

Thresholds (``report.lag_records_max``, ``report.cost_per_million_max``) raise alert
events: a log line, a JSON line in ``report.alerts_file`` and, if configured, a JSON
record on ``report.alerts_topic``.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from sluice.config import SluiceConfig

log = logging.getLogger("sluice.report")

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------
# cost arithmetic and thresholds (pure)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    events: int
    cpu_seconds: float
    memory_gb_seconds: float
    cpu_cost: float
    memory_cost: float
    currency: str

    @property
    def total(self) -> float:
        return self.cpu_cost + self.memory_cost

    @property
    def per_million(self) -> float | None:
        return self.total / self.events * 1e6 if self.events > 0 else None

    @property
    def cpu_seconds_per_million(self) -> float | None:
        return self.cpu_seconds / self.events * 1e6 if self.events > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "per_million": self.per_million,
                "cpu_seconds_per_million": self.cpu_seconds_per_million}


def cost_of(events: int, cpu_seconds: float, memory_gb_seconds: float, prices: Any) -> Cost:
    """What ``cpu_seconds`` and ``memory_gb_seconds`` cost at ``prices`` (per hour)."""
    if events < 0 or cpu_seconds < 0 or memory_gb_seconds < 0:
        raise ValueError("events, CPU-seconds and GB-seconds cannot be negative")
    return Cost(events, cpu_seconds, memory_gb_seconds,
                cpu_seconds / 3600 * prices.cpu_per_hour,
                memory_gb_seconds / 3600 * prices.memory_gb_per_hour, prices.currency)


@dataclass(frozen=True)
class AlertEvent:
    kind: str  # "lag" | "cost"
    value: float
    threshold: float
    message: str
    job: str
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def check_thresholds(cfg: SluiceConfig, *, lag_records: int | None,
                     cost: Cost | None) -> list[AlertEvent]:
    """The alert events the measured lag and cost raise (strictly above a threshold)."""
    r, out = cfg.report, []
    if r.lag_records_max is not None and lag_records is not None and lag_records > r.lag_records_max:
        out.append(AlertEvent(
            "lag", lag_records, r.lag_records_max,
            f"consumer lag of group {cfg.job.consumer_group} is {lag_records} records, above "
            f"report.lag_records_max = {r.lag_records_max}", cfg.job.name))
    per_m = cost.per_million if cost is not None else None
    if r.cost_per_million_max is not None and per_m is not None and per_m > r.cost_per_million_max:
        out.append(AlertEvent(
            "cost", per_m, r.cost_per_million_max,
            f"cost is {per_m:.4f} {cost.currency} per million events, above "  # type: ignore[union-attr]
            f"report.cost_per_million_max = {r.cost_per_million_max}", cfg.job.name))
    return out


def emit_alerts(cfg: SluiceConfig, alerts: list[AlertEvent]) -> Path | None:
    """Log each alert, append it to ``report.alerts_file`` (JSON lines) and produce it to
    ``report.alerts_topic`` when one is set (JSON value, key = job/kind)."""
    if not alerts:
        return None
    path = cfg.path(cfg.report.alerts_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for a in alerts:
            log.warning("ALERT %s: %s", a.kind, a.message)
            f.write(json.dumps(asdict(a), sort_keys=True) + "\n")
    if cfg.report.alerts_topic:
        from confluent_kafka import Producer

        p = Producer(cfg.kafka.client_properties())
        for a in alerts:
            p.produce(cfg.report.alerts_topic, key=f"{a.job}/{a.kind}",
                      value=json.dumps(asdict(a), sort_keys=True))
        if p.flush(15) > 0:
            raise RuntimeError(f"alerts not delivered to {cfg.report.alerts_topic} in 15 s")
    return path


# --------------------------------------------------------------------------------------
# processes: CPU-seconds and memory from /proc
# --------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU-seconds user+system, RSS bytes) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    rest = raw[raw.rindex(")") + 2:].split()  # fields after "pid (comm)"
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICKS, rss_pages * _PAGE


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their live descendants (the Python workers of a TaskManager)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st is not None:
                children.setdefault(st[0], []).append(int(d.name))
    out, todo = [], [r for r in roots if Path(f"/proc/{r}").exists()]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo += children.get(pid, [])
    return out


@dataclass
class Usage:
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    processes: int = 0


def usage(roots: list[int]) -> Usage:
    u = Usage()
    for pid in process_tree(roots):
        st = _stat(pid)
        if st is not None:
            u.cpu_seconds += st[1]
            u.rss_bytes += st[2]
            u.processes += 1
    return u


def stack_pids(cfg: SluiceConfig) -> list[int]:
    """The Flink JobManager and TaskManager of the local stack (their pid files)."""
    folder = cfg.path(cfg.stack.run_dir) / "flink"
    out = []
    for name in ("jobmanager.pid", "taskmanager.pid"):
        try:
            m = re.search(r"\d+", (folder / name).read_text())
        except OSError:
            continue
        if m:
            out.append(int(m.group()))
    return out


# --------------------------------------------------------------------------------------
# Flink REST
# --------------------------------------------------------------------------------------
class FlinkRest:
    def __init__(self, url: str, timeout: float = 5) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def get(self, path: str, **params: Any) -> Any:
        r = self.session.get(f"{self.url}{path}", params=params or None, timeout=self.timeout)
        r.raise_for_status()
        return r.json()

    def find_job(self, name: str) -> str | None:
        """The running job called ``name`` (else the newest job of that name)."""
        jobs = [j for j in self.get("/jobs/overview")["jobs"] if j["name"] == name]
        jobs.sort(key=lambda j: (j["state"] == "RUNNING", j["start-time"]), reverse=True)
        return str(jobs[0]["jid"]) if jobs else None

    def job(self, jid: str) -> dict[str, Any]:
        return self.get(f"/jobs/{jid}")  # type: ignore[no-any-return]

    def checkpoints(self, jid: str) -> list[dict[str, Any]]:
        hist = self.get(f"/jobs/{jid}/checkpoints").get("history") or []
        return sorted(
            ({"id": c["id"], "status": c["status"], "trigger_ms": c.get("trigger_timestamp"),
              "duration_ms": c.get("end_to_end_duration"),
              "state_bytes": c.get("checkpointed_size", c.get("state_size"))} for c in hist),
            key=lambda c: c["id"])

    def sluice_metrics(self, jid: str) -> dict[str, dict[str, float]]:
        """Every ``sluice.<stage>.<name>`` metric of the job, summed (counters) or maxed
        (latency gauges) over subtasks: {"<stage>.<name>": {"sum":..., "max":...}}."""
        out: dict[str, dict[str, float]] = {}
        for v in self.job(jid).get("vertices", []):
            base = f"/jobs/{jid}/vertices/{v['id']}/subtasks/metrics"
            ids = [m["id"] for m in self.get(base) if ".sluice." in f".{m['id']}"]
            for i in range(0, len(ids), 40):
                for m in self.get(base, get=",".join(ids[i:i + 40]), agg="sum,max"):
                    key = m["id"][m["id"].index("sluice.") + len("sluice."):]
                    agg = out.setdefault(key, {"sum": 0.0, "max": 0.0})
                    agg["sum"] += float(m.get("sum") or 0)
                    agg["max"] = max(agg["max"], float(m.get("max") or 0))
        return out


# --------------------------------------------------------------------------------------
# Kafka: throughput per partition, records of a time range
# --------------------------------------------------------------------------------------
def offsets_at(cfg: SluiceConfig, topics: list[str], at_ms: int | None) -> dict[tuple[str, int], int]:
    """Per partition, the first offset with a timestamp >= ``at_ms`` (the end offset when
    there is none, or when ``at_ms`` is None)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**cfg.kafka.client_properties(), "group.id": f"sluice-report-{time.time_ns()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        md = c.list_topics(timeout=15).topics
        parts = [TopicPartition(t, p, at_ms if at_ms is not None else -1)
                 for t in topics if t in md for p in md[t].partitions]
        ends = {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=15)[1] for tp in parts}
        if at_ms is None:
            return ends
        found = c.offsets_for_times(parts, timeout=15)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else ends[(tp.topic, tp.partition)]
                for tp in found}
    finally:
        c.close()


def read_range(cfg: SluiceConfig, topic: str, start: dict[tuple[str, int], int],
               end: dict[tuple[str, int], int], limit: int) -> list[Any]:
    """Committed records of ``topic`` between two offset maps, at most ``limit`` (spread
    evenly over the partitions)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    parts = [(p, start[(t, p)], end[(t, p)]) for (t, p) in start
             if t == topic and end[(t, p)] > start[(t, p)]]
    if not parts:
        return []
    share = max(1, limit // len(parts))
    c = Consumer({**cfg.kafka.client_properties(), "group.id": f"sluice-report-{time.time_ns()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True})
    out: list[Any] = []
    try:
        stop = {p: min(e, max(s, e - share)) for p, s, e in parts}  # the newest `share`
        c.assign([TopicPartition(topic, p, stop[p]) for p, _, _ in parts])
        todo = {p: e for p, _, e in parts}
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        todo.pop(m.partition(), None)
                    continue
                if m.offset() < todo.get(m.partition(), -1):
                    out.append(m)
                if m.offset() + 1 >= todo.get(m.partition(), 0):
                    todo.pop(m.partition(), None)
    finally:
        c.close()
    return out


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)

    def q(x: float) -> float:
        return float(s[min(len(s) - 1, max(0, round(x * (len(s) - 1))))])

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": float(s[-1]), "n": len(s)}


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------
def parse_time(text: str | None, now_ms: int) -> int | None:
    """``15m`` / ``2h`` / ``30s`` ago, an ISO date-time, or epoch milliseconds."""
    if text is None or text == "now":
        return None if text is None else now_ms
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return now_ms - int(float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000)
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def collect(cfg: SluiceConfig, *, since_ms: int, until_ms: int | None, flink_url: str | None,
            job_id: str | None, sample_s: float, pids: list[int],
            on_progress: Any = None) -> dict[str, Any]:
    """Gather every figure of the report (see the module docstring)."""
    from sluice.kafka_util import LagProbe

    step = on_progress or (lambda _msg: None)
    t_collect = int(time.time() * 1000)
    rep: dict[str, Any] = {"job": cfg.job.name, "profile": cfg.job.profile,
                           "delivery_guarantee": cfg.job.delivery_guarantee,
                           "generated_at_ms": t_collect, "since_ms": since_ms,
                           "until_ms": until_ms or t_collect, "notes": []}
    rest = FlinkRest(flink_url) if flink_url else None
    state = None
    if rest is not None:
        step("Flink REST: job, checkpoints")
        try:
            job_id = job_id or rest.find_job(cfg.job.name)
            if job_id is None:
                rep["notes"].append(f"no job named {cfg.job.name} at {flink_url}")
            else:
                state = rest.job(job_id)["state"]
        except requests.RequestException as exc:
            rep["notes"].append(f"Flink REST at {flink_url} did not answer: {exc}")
            rest = None
    rep["job_id"], rep["job_state"] = job_id, state
    running = state == "RUNNING"

    # -- the sample window: lag series, CPU/memory, counters ---------------------------
    inputs = cfg.topics.inputs()
    probe = LagProbe(cfg, cfg.job.consumer_group, inputs)
    roots = stack_pids(cfg) + pids
    lag_series: list[dict[str, Any]] = []
    metrics0 = rest.sluice_metrics(job_id) if (rest and job_id and running) else {}
    u0, t0 = usage(roots), time.monotonic()
    mem_samples = [u0.rss_bytes]
    step(f"sampling {sample_s:.0f} s: lag, CPU, memory")
    deadline = t0 + (sample_s if running or roots else 0)
    # Flink REST serves the Python counters as the TaskManager last reported them, which can
    # lag the job by seconds; a busy job whose counter has not moved yet is sampled longer
    # (up to 4 x sample_s) rather than reported as having processed nothing.
    hard_deadline = t0 + 4 * sample_s
    while True:
        lag_series.append({"t_s": round(time.monotonic() - t0, 2), "lag": probe.lag()})
        if time.monotonic() >= deadline:
            if not (running and rest and job_id) or time.monotonic() >= hard_deadline:
                break
            now_in = rest.sluice_metrics(job_id).get("ingest.records_in", {}).get("sum", 0)
            if now_in != metrics0.get("ingest.records_in", {}).get("sum", 0):
                break
            deadline = min(hard_deadline, time.monotonic() + 2.0)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        mem_samples.append(usage(roots).rss_bytes)
    u1, elapsed = usage(roots), max(time.monotonic() - t0, 1e-9)
    mem_samples.append(u1.rss_bytes)
    probe.close()
    metrics1 = rest.sluice_metrics(job_id) if (rest and job_id and running) else {}
    rep["lag"] = {"series": lag_series, "latest": lag_series[-1]["lag"],
                  "total": sum(lag_series[-1]["lag"].values())}

    events = None
    if "ingest.records_in" in metrics1:
        events = int(metrics1["ingest.records_in"]["sum"]
                     - metrics0.get("ingest.records_in", {"sum": 0})["sum"])
    rep["resources"] = {"processes": u1.processes, "pids": roots, "window_s": round(elapsed, 2),
                        "cpu_seconds": round(u1.cpu_seconds - u0.cpu_seconds, 3),
                        "rss_gb_mean": sum(mem_samples) / len(mem_samples) / 1e9,
                        "events": events}
    cost = None
    if not roots or u1.processes == 0:
        rep["notes"].append("cost not measured: no job process to measure (pass --pid, or run "
                            "the job on the local stack's cluster)")
    elif not events:
        rep["notes"].append("cost not measured: the job processed no events during the sample "
                            "window" + ("" if running else " (it is not running)"))
    else:
        gb_s = rep["resources"]["rss_gb_mean"] * elapsed
        cost = cost_of(events, rep["resources"]["cpu_seconds"], gb_s, cfg.report.prices)
    rep["cost"] = cost.to_dict() if cost else None
    rep["stage_metrics"] = metrics1

    # -- Kafka: throughput per partition and the records of the range -------------------
    step("Kafka: offsets of the time range")
    outputs = [cfg.topics.enriched, cfg.topics.dlq, cfg.topics.features, cfg.topics.scores,
               cfg.topics.alerts, cfg.topics.late]
    topics = inputs + outputs
    start = offsets_at(cfg, topics, since_ms)
    end = offsets_at(cfg, topics, until_ms)
    span_s = max((rep["until_ms"] - since_ms) / 1000, 1e-3)
    rep["throughput"] = [
        {"topic": t, "partition": p, "records": end[(t, p)] - start[(t, p)],
         "per_s": (end[(t, p)] - start[(t, p)]) / span_s, "input": t in inputs}
        for (t, p) in sorted(start)]

    step("Kafka: output records (latency by component, dead letters)")
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        limit = cfg.report.latency_sample_records
        enriched = [(m, de(m.value(), None)) for m in read_range(cfg, cfg.topics.enriched, start, end, limit)]
        vectors = [(m, de(m.value(), None)) for m in read_range(cfg, cfg.topics.features, start, end, limit)]
        dead = [de(m.value(), None) for m in read_range(cfg, cfg.topics.dlq, start, end, limit)]
    comp: dict[str, list[float]] = {"event → ingest": [], "ingest → sink": [], "event → sink": [],
                                    "window end → vector": [], "vector → sink": []}
    for m, e in enriched:
        ts, ingest, sink = _ms(e["ts"]), _ms(e["processed_at"]), m.timestamp()[1]
        comp["event → ingest"].append(ingest - ts)
        comp["ingest → sink"].append(sink - ingest)
        comp["event → sink"].append(sink - ts)
    for m, v in vectors:
        computed = _ms(v["computed_at"])
        comp["window end → vector"].append(computed - _ms(v["window_end"]))
        comp["vector → sink"].append(m.timestamp()[1] - computed)
    rep["latency_records"] = {k: percentiles(v) for k, v in comp.items()}
    rep["latency_stages"] = stage_latencies(metrics1)

    by_reason: dict[str, int] = {}
    for d in dead:
        by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
    n_in = sum(r["records"] for r in rep["throughput"] if r["input"])
    n_dlq = sum(r["records"] for r in rep["throughput"] if r["topic"] == cfg.topics.dlq)
    warned = sum(1 for _, e in enriched if e.get("quality_warnings"))
    rep["dead_letters"] = {
        "records": n_dlq, "input_records": n_in, "rate": n_dlq / n_in if n_in else None,
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "sampled": len(dead),
        "quality_blocked_rate": by_reason.get("quality", 0) / len(dead) * (n_dlq / n_in)
        if dead and n_in else None,
        "quality_warned_rate": warned / len(enriched) if enriched else None}

    rep["checkpoints"] = []
    if rest is not None and job_id is not None:
        step("Flink REST: checkpoint history")
        try:
            rep["checkpoints"] = rest.checkpoints(job_id)
        except requests.RequestException as exc:
            rep["notes"].append(f"checkpoint history unavailable: {exc}")
    rep["alerts"] = [asdict(a) for a in check_thresholds(cfg, lag_records=rep["lag"]["total"], cost=cost)]
    return rep


def stage_latencies(metrics: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The stage histograms' gauges grouped: [{"stage", "name", "p50", "p95", "p99", "max"}];
    the worst subtask (max) of each."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, agg in metrics.items():
        m = re.fullmatch(r"([a-z_-]+)\.([a-z_]+)_(p50|p95|p99|max|count)", key)
        if m:
            row = rows.setdefault((m.group(1), m.group(2)), {"stage": m.group(1), "name": m.group(2)})
            row[m.group(3)] = agg["sum"] if m.group(3) == "count" else agg["max"]
    return [rows[k] for k in sorted(rows)]


# --------------------------------------------------------------------------------------
# output: rich tables and the HTML page (inline SVG charts, no JavaScript)
# --------------------------------------------------------------------------------------
def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    # The RDF metadata block (creator, date) names namespace URIs only; drop it.
    return re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)


def charts(rep: dict[str, Any]) -> dict[str, str]:
    """One inline SVG per section that has data, by section name."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, selectable
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    tp = [r for r in rep["throughput"] if r["records"] > 0]
    if tp:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(tp) + 1.2))
        ax.barh([f'{r["topic"]}-{r["partition"]}' for r in tp], [r["per_s"] for r in tp],
                color=["#3b7dd8" if r["input"] else "#59a14f" for r in tp])
        ax.invert_yaxis()
        ax.set_xlabel("records/s written in the range (blue: inputs, green: outputs)")
        out["throughput"] = _svg(fig)
    series = rep["lag"]["series"]
    if series and series[0]["lag"]:
        fig, ax = plt.subplots(figsize=(8, 3))
        for part in series[0]["lag"]:
            ax.plot([s["t_s"] for s in series], [s["lag"].get(part, 0) for s in series],
                    marker="o", label=part)
        ax.set_xlabel("seconds into the sample window")
        ax.set_ylabel("records behind")
        ax.legend(fontsize=7, ncol=3)
        out["lag"] = _svg(fig)
    lat = [(k, v) for k, v in rep["latency_records"].items() if v]
    stages = [s for s in rep["latency_stages"] if "p99" in s]
    if lat or stages:
        rows = [(k, v["p50"], v["p99"]) for k, v in lat]
        rows += [(f'{s["stage"]}: {s["name"]}', s.get("p50", 0), s.get("p99", 0)) for s in stages]
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
        y = range(len(rows))
        ax.barh([i + 0.2 for i in y], [max(r[1], 1e-3) for r in rows], 0.4, label="p50")
        ax.barh([i - 0.2 for i in y], [max(r[2], 1e-3) for r in rows], 0.4, label="p99")
        ax.set_yticks(list(y), [r[0] for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms; stage histograms in the unit of their name)")
        ax.invert_yaxis()
        ax.legend()
        out["latency"] = _svg(fig)
    cps = [c for c in rep["checkpoints"] if c.get("duration_ms") is not None]
    if cps:
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar([c["id"] for c in cps], [c["duration_ms"] for c in cps],
               color=["#3b7dd8" if c["status"] == "COMPLETED" else "#e15759" for c in cps])
        ax.set_xlabel("checkpoint id")
        ax.set_ylabel("end-to-end duration, ms")
        out["checkpoints"] = _svg(fig)
    dl = rep["dead_letters"]
    if dl["by_reason"]:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(dl["by_reason"]) + 1.2))
        ax.barh(list(dl["by_reason"]), list(dl["by_reason"].values()), color="#e15759")
        ax.invert_yaxis()
        ax.set_xlabel(f'dead letters by reason (of {dl["sampled"]} read)')
        out["dead_letters"] = _svg(fig)
    c = rep["cost"]
    if c and c["per_million"] is not None:
        fig, ax = plt.subplots(figsize=(8, 2))
        cpu_m, mem_m = c["cpu_cost"] / c["events"] * 1e6, c["memory_cost"] / c["events"] * 1e6
        ax.barh(["per million events"], [cpu_m], color="#3b7dd8", label="CPU")
        ax.barh(["per million events"], [mem_m], left=[cpu_m], color="#f28e2b", label="memory")
        ax.set_xlabel(c["currency"])
        ax.legend()
        out["cost"] = _svg(fig)
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.2f} %"


def tables(rep: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The same sections as rows: {section: (header, rows)} (terminal and page)."""
    t: dict[str, tuple[list[str], list[list[str]]]] = {}
    t["throughput"] = (["topic-partition", "records", "records/s"], [
        [f'{r["topic"]}-{r["partition"]}', _fmt(r["records"]), _fmt(r["per_s"])]
        for r in rep["throughput"]])
    t["lag"] = (["partition", "lag (records)"],
                [[k, _fmt(v)] for k, v in rep["lag"]["latest"].items()]
                + [["total", _fmt(rep["lag"]["total"])]])
    lat = [[k, _fmt(v["p50"], 0), _fmt(v["p95"], 0), _fmt(v["p99"], 0), _fmt(v["max"], 0), _fmt(v["n"])]
           for k, v in rep["latency_records"].items() if v]
    lat += [[f'{s["stage"]}: {s["name"]}', _fmt(s.get("p50"), 0), _fmt(s.get("p95"), 0),
             _fmt(s.get("p99"), 0), _fmt(s.get("max"), 0), _fmt(s.get("count"), 0)]
            for s in rep["latency_stages"]]
    t["latency"] = (["component (ms unless named)", "p50", "p95", "p99", "max", "n"], lat)
    t["checkpoints"] = (["id", "status", "duration ms", "size bytes"], [
        [str(c["id"]), c["status"], _fmt(c["duration_ms"]), _fmt(c["state_bytes"])]
        for c in rep["checkpoints"]])
    dl = rep["dead_letters"]
    t["dead_letters"] = (["what", "value"], [
        ["dead letters in range", _fmt(dl["records"])], ["input records in range", _fmt(dl["input_records"])],
        ["DLQ rate", _pct(dl["rate"])],
        ["quality-blocked rate", _pct(dl["quality_blocked_rate"])],
        ["quality-warned rate (outputs)", _pct(dl["quality_warned_rate"])],
        *[[f"  {k}", _fmt(v)] for k, v in dl["by_reason"].items()]])
    c, r = rep["cost"], rep["resources"]
    rows = [["processes measured", _fmt(r["processes"])], ["sample window s", _fmt(r["window_s"])],
            ["events (ingest.records_in)", _fmt(r["events"])], ["CPU-seconds", _fmt(r["cpu_seconds"], 2)],
            ["memory GB (mean RSS)", _fmt(r["rss_gb_mean"], 3)]]
    if c:
        rows += [["CPU-seconds per million events", _fmt(c["cpu_seconds_per_million"], 1)],
                 [f'cost per million events ({c["currency"]})', _fmt(c["per_million"], 4)]]
    t["cost"] = (["what", "value"], rows)
    return t


TITLES = {"throughput": "Throughput per partition", "lag": "Consumer lag",
          "latency": "Latency per stage", "checkpoints": "Checkpoints",
          "dead_letters": "Dead letters and quality", "cost": "Cost per million events"}


def write_html(rep: dict[str, Any], path: Path) -> Path:
    """A self-contained page: inline SVG charts and tables, no script, no external URL."""
    svgs, tabs = charts(rep), tables(rep)
    when = datetime.fromtimestamp(rep["generated_at_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sluice report: {html.escape(rep['job'])}</title><style>",
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        ".alert{background:#fde2e1;border:1px solid #e15759;padding:.5em}"
        "figure{margin:0}.note{color:#666}",
        "</style></head><body>",
        f"<h1>sluice report: {html.escape(rep['job'])}</h1>",
        f"<p>job {html.escape(str(rep['job_id']))} ({html.escape(str(rep['job_state']))}), profile "
        f"{html.escape(rep['profile'])}, {html.escape(rep['delivery_guarantee'])}; generated {when}</p>",
    ]
    for a in rep["alerts"]:
        parts.append(f"<p class='alert'>ALERT ({html.escape(a['kind'])}): {html.escape(a['message'])}</p>")
    for n in rep["notes"]:
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    for key, title in TITLES.items():
        parts.append(f"<section id='{key}'><h2>{title}</h2>")
        if key in svgs:
            parts.append(f"<figure class='chart'>{svgs[key]}</figure>")
        else:
            parts.append("<p class='note'>no data for a chart</p>")
        head, rows = tabs[key]
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table></section>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def print_report(console: Any, rep: dict[str, Any]) -> None:
    from rich.table import Table

    for key, (head, rows) in tables(rep).items():
        t = Table(title=TITLES[key])
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    for n in rep["notes"]:
        console.print(f"[dim]{n}[/dim]")
    for a in rep["alerts"]:
        console.print(f"[bold red]ALERT {a['kind']}[/bold red]: {a['message']}")
