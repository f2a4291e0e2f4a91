"""`sluice demo`: the main job end to end on the local stack, live.

1. start the local stack (Kafka + registry) unless it already runs,
2. register the schemas, reset the demo topics,
3. start ``jobs/pipeline.py`` on a Flink mini-cluster (unbounded, exactly-once),
4. produce a seeded live telemetry stream (v1 + v2 writers, some corrupt records)
   through the registry, while a read_committed consumer watches the outputs,
5. when every input record is accounted for (out + dlq), stop the job with
   drain (final checkpoint: windows fire, transactions commit),
6. print the summary, write ``out/demo/summary.json`` and a latency chart,
   and stop what it started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sluice.config import REPO_ROOT, SluiceConfig, dump_config
from sluice.generator import Generated, plan, produce, topic_of
from sluice.kafka_util import Record, check_transaction_timeout, delete_topics, ensure_topics, read_committed
from sluice.registry import register_all


class DemoError(RuntimeError):
    pass


@dataclass
class _Watch:
    """Output records as a read_committed consumer sees them, with arrival times."""

    records: dict[str, list[Record]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rec: Record) -> None:
        with self.lock:
            self.records.setdefault(rec.topic, []).append(rec)

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.records.get(topic, []))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


class _Job:
    """jobs/<script> in a child process, controlled through its REST endpoint."""

    def __init__(self, cfg_path: Path, log: Path, script: str = "pipeline.py"):
        self.port = _free_port()
        self.log = log
        self._log_f = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "jobs" / script), "--config", str(cfg_path),
             "--rest-port", str(self.port)],
            cwd=REPO_ROOT, stdout=self._log_f, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        self.session.trust_env = False

    def _fail(self, what: str) -> DemoError:
        tail = self.log.read_text(errors="replace").splitlines()[-30:]
        return DemoError(f"{what}; job log {self.log}:\n" + "\n".join(tail))

    def wait_running(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"the job exited with code {self.proc.returncode} before running")
            try:
                jobs = self.session.get(f"{self.url}/jobs/overview", timeout=2).json()["jobs"]
                for j in jobs:
                    if j["state"] == "RUNNING" and j["tasks"]["running"] == j["tasks"]["total"]:
                        return str(j["jid"])
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise self._fail(f"the job was not running after {timeout:.0f} s")

    def checkpoint_state(self, jid: str) -> dict[str, Any]:
        """The latest completed checkpoint's id and state sizes, as Flink reports them."""
        try:
            latest = self.session.get(f"{self.url}/jobs/{jid}/checkpoints", timeout=5).json()
            done = (latest.get("latest") or {}).get("completed") or {}
        except (requests.RequestException, ValueError):
            return {}
        return {k: done.get(k) for k in ("id", "state_size", "checkpointed_size")
                if done.get(k) is not None}

    def stop_with_drain(self, jid: str, savepoint_dir: Path, timeout: float = 180) -> None:
        """Stop with a final savepoint and MAX_WATERMARK: windows fire, transactions commit."""
        r = self.session.post(
            f"{self.url}/jobs/{jid}/stop",
            json={"drain": True, "targetDirectory": savepoint_dir.resolve().as_uri()},
            timeout=10,
        )
        r.raise_for_status()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"the job did not stop within {timeout:.0f} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.session.close()
        self._log_f.close()


def _decode_all(cfg: SluiceConfig, recs: list[Record]) -> list[dict[str, Any]]:
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        return [de(r.value, None) for r in recs]


def run_demo(cfg: SluiceConfig, *, out_dir: Path, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    check_transaction_timeout(cfg)
    register_all(cfg)
    topics = cfg.topics.all()
    delete_topics(cfg, topics)
    ensure_topics(cfg)
    if cfg.reference.joins:
        # The join needs the device registry on the (just re-created) devices topic:
        # the CSV's devices, each valid from its installation date.
        from sluice.reference import publish_devices, versions_from_csv

        publish_devices(cfg, versions_from_csv(cfg.path(cfg.reference.devices_csv)))
    cfg_path = dump_config(cfg, out_dir / "sluice.yaml")

    items = plan(cfg, start_ms=0, step_ms=0)  # live: each reading is stamped when sent
    n_in = len(items)
    watch = _Watch()
    stop_reading = threading.Event()
    out_topics = [cfg.topics.enriched, cfg.topics.dlq, cfg.topics.scores, cfg.topics.alerts,
                  cfg.topics.quality, cfg.topics.features, cfg.topics.late]
    if cfg.reference.joins:
        out_topics.append(cfg.topics.joined)

    def reader() -> None:
        read_committed(cfg, out_topics, until=lambda _: stop_reading.is_set(), max_wait=3600,
                       on_record=watch.add)

    job = _Job(cfg_path, out_dir / "job.log")
    gen: Generated
    try:
        with Progress(
            TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False,
        ) as bar:
            t_job = bar.add_task("starting Flink mini-cluster + job", total=1)
            jid = job.wait_running()
            bar.update(t_job, completed=1, description="job running (exactly-once)")
            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            t_prod = bar.add_task("producing avro+frames+json (+bad)", total=n_in)
            t_out = bar.add_task("committed out + dlq (read_committed)", total=n_in)
            result: dict[str, Generated] = {}

            def producer() -> None:
                result["gen"] = produce(cfg, items, live=True,
                                        on_progress=lambda n: bar.update(t_prod, completed=n))

            t_first_in = time.time()
            pthread = threading.Thread(target=producer, daemon=True)
            pthread.start()
            deadline = time.monotonic() + max(120.0, 3 * n_in / max(cfg.generator.rate_eps, 1))
            while True:
                done = watch.count(cfg.topics.enriched) + watch.count(cfg.topics.dlq)
                bar.update(t_out, completed=done)
                if done >= n_in and not pthread.is_alive():
                    break
                if job.proc.poll() is not None:
                    raise job._fail("the job stopped before consuming the input")
                if time.monotonic() > deadline:
                    raise DemoError(f"only {done} of {n_in} records came out before the deadline")
                time.sleep(0.2)
            pthread.join()
            gen = result["gen"]
            t_all_out = time.time()
            t_stop = bar.add_task("stop with drain (final checkpoint)", total=1)
            state = job.checkpoint_state(jid)
            job.stop_with_drain(jid, out_dir / "savepoints")
            bar.update(t_stop, completed=1)
        # The final checkpoint committed the last windows; give the reader a moment.
        time.sleep(3)
    finally:
        stop_reading.set()
        job.kill()

    enriched = _decode_all(cfg, watch.records.get(cfg.topics.enriched, []))
    dlq_all = _decode_all(cfg, watch.records.get(cfg.topics.dlq, []))
    # The join's unknown-device dead letters (reference.unknown_device: dead-letter) are
    # accepted readings, already counted in telemetry.enriched: not part of in = out + dlq.
    dlq = [d for d in dlq_all if d["reason"] != "unknown-device"]
    joined = _decode_all(cfg, watch.records.get(cfg.topics.joined, []))
    latencies = [
        rec.read_at_ms - int(e["ts"].timestamp() * 1000)
        for rec, e in zip(watch.records.get(cfg.topics.enriched, []), enriched, strict=True)
    ]
    ids = {e["event_id"] for e in enriched}
    span = max(t_all_out - t_first_in, 1e-3)
    quality = _decode_all(cfg, watch.records.get(cfg.topics.quality, []))
    features = _decode_all(cfg, watch.records.get(cfg.topics.features, []))
    late = _decode_all(cfg, watch.records.get(cfg.topics.late, []))
    store = demo_feature_store(cfg, console)
    savepoint_bytes = sum(f.stat().st_size for f in (out_dir / "savepoints").rglob("*")
                          if f.is_file())
    scoring = scoring_phase(cfg, cfg_path, out_dir, features, console)
    rule_alerts = _decode_all(cfg, watch.records.get(cfg.topics.alerts, []))
    summary: dict[str, Any] = {
        "records_in": gen.total,
        "inputs": {topic_of(cfg, src): n for src, n in gen.by_input().items()},
        "records_out_by_source": dict(Counter(e["source"] for e in enriched)),
        "records_out": len(enriched),
        "dlq": len(dlq),
        "dlq_by_reason": dict(Counter(d["reason"] for d in dlq)),
        "corrupt_injected": len(gen.corrupt),
        "corrupt_kinds": len({c.kind for c in gen.corrupt}),
        "quality": quality_summary(enriched, dlq, quality),
        "duplicates_out": len(enriched) - len(ids),
        "balanced": gen.total == len(enriched) + len(dlq) and len(ids) == len(enriched),
        "window_scores": watch.count(cfg.topics.scores),
        "features": feature_summary(features),
        "feature_store": store,
        "late": {"records": len(late), "by_window": dict(Counter(r["window"] for r in late))},
        "state": {"last_checkpoint": state, "final_savepoint_bytes": savepoint_bytes},
        "alerts": {
            "total": len(rule_alerts) + len(scoring["alerts"]),
            "threshold_rule": len(rule_alerts),
            "model": len(scoring["alerts"]),
            "by_severity": dict(Counter(a["severity"] for a in rule_alerts + scoring["alerts"])),
        },
        "model_version": scoring["model_version"],
        "model_scores": scoring["scores"],
        "model_training": scoring["training"],
        "drift_events": scoring["drift_events"],
        "joined": ({"records": len(joined),
                    "by_status": dict(Counter(j["reference_status"] for j in joined)),
                    "unknown_device_dead_letters": len(dlq_all) - len(dlq)}
                   if cfg.reference.joins else None),
        "throughput_eps": round(gen.total / span, 1),
        "input_rate_eps": cfg.generator.rate_eps,
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p99": _percentile(latencies, 99),
        "latency_ms_max": max(latencies) if latencies else None,
        "checkpoint_interval_ms": cfg.checkpoint.interval_ms,
        "delivery": f"{cfg.job.delivery_guarantee} (read_committed consumer)",
        "python_execution_mode": cfg.job.python_execution_mode,
        "wall_seconds": round(time.monotonic() - t_start, 1),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _latency_chart(latencies, cfg, out_dir / "latency.png")
    _print_summary(console, summary, out_dir)
    return summary


def _last_per_window(vectors: list[dict], window: str) -> list[dict]:
    """The final vector of each (device, window start): a late firing replaces the first."""
    last: dict[tuple[str, Any], dict] = {}
    for v in vectors:
        if v["window"] == window:
            last[(v["device_id"], v["window_start"])] = v
    return list(last.values())


def scoring_phase(cfg: SluiceConfig, cfg_path: Path, out_dir: Path, vectors: list[dict],
                  console: Console) -> dict[str, Any]:
    """Issue 5 in the demo: the model of the first tumbling window (the registry's latest
    version for the current feature spec, else one trained now on this run's vectors) is
    announced on model-updates, and jobs/scoring.py scores the features topic with it."""
    from sluice.model import Registry, train
    from sluice.model_updates import announce
    from sluice.scoring import model_ref

    spec = cfg.feature_spec()
    none = {"model_version": None, "scores": 0, "alerts": [], "training": None,
            "drift_events": {"events": 0, "drifted": 0, "retrain_triggers": 0}}
    if spec is None:
        return none
    tumbles = [w.name for w in spec.windows if w.kind == "tumble"]
    if not tumbles:
        return none
    window = tumbles[0]
    rows = _last_per_window(vectors, window)
    reg = Registry(cfg.path(cfg.models.dir))
    name = f"iforest-{window}"
    current = [v for v in reg.versions(name)
               if v.metadata.get("feature_spec_version") == spec.spec_version()]
    if current:
        mv, training = current[-1], f"registry ({current[-1].path})"
    elif len(rows) >= 2:
        mv = train(rows, spec, window, reg, name)
        training = f"trained now on this run's {len(rows)} {window} vectors"
    else:
        return none
    announce(cfg, mv)
    expected = sum(1 for v in vectors if v["window"] == window)
    job = _Job(cfg_path, out_dir / "scoring.log", script="scoring.py")
    got: dict[str, list[Record]] = {}
    try:
        with Progress(TextColumn("[bold]{task.description:<34}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            t_job = bar.add_task("starting the scoring job", total=1)
            jid = job.wait_running()
            bar.update(t_job, completed=1, description=f"scoring with {model_ref(mv.name, mv.version)}")
            t_sc = bar.add_task("vectors scored (read_committed)", total=expected)

            def progress(counts: dict[str, int]) -> bool:
                bar.update(t_sc, completed=counts[cfg.topics.model_scores])
                return counts[cfg.topics.model_scores] >= expected or job.proc.poll() is not None

            got = read_committed(cfg, [cfg.topics.model_scores, cfg.topics.alerts,
                                       cfg.topics.drift, cfg.topics.retrain_triggers],
                                 until=progress, max_wait=180)
            if job.proc.poll() is not None:
                raise job._fail("the scoring job stopped")
            job.stop_with_drain(jid, out_dir / "savepoints-scoring")
    finally:
        job.kill()
    alerts = [a for a in _decode_all(cfg, got.get(cfg.topics.alerts, []))
              if a.get("model_name")]
    drift = _decode_all(cfg, got.get(cfg.topics.drift, []))
    return {
        "model_version": model_ref(mv.name, mv.version),
        "scores": len(got.get(cfg.topics.model_scores, [])),
        "alerts": alerts,
        "training": training,
        "drift_events": {"events": len(drift), "drifted": sum(1 for d in drift if d["drifted"]),
                         "retrain_triggers": len(got.get(cfg.topics.retrain_triggers, []))},
    }


def demo_feature_store(cfg: SluiceConfig, console: Console) -> dict[str, Any]:
    """Materialise the demo's features topic into Redis (bounded) after the job; the
    counts, or the error (the demo's pipeline result does not depend on Redis)."""
    from sluice.feature_store import FeatureStore, FeatureStoreError, materialize

    try:
        with console.status(f"materialising {cfg.topics.features} into Redis "
                            f"({cfg.feature_store.redis_url})"):
            # The demo recreated the topic: the store's entries of the last run go too.
            FeatureStore(cfg.feature_store).clear()
            counts = materialize(cfg, bounded=True, max_wait_s=120)
            store = FeatureStore(cfg.feature_store)
            devices = store.devices()
    except (FeatureStoreError, OSError) as exc:
        return {"error": str(exc)}
    except Exception as exc:  # redis-py's errors: the demo goes on without the store
        if type(exc).__module__.startswith("redis"):
            return {"error": f"{type(exc).__name__}: {exc}"}
        raise
    keep = ("read", "written", "stale", "undecodable", "redis_retries", "stopped_by", "elapsed_s")
    return {**{k: counts[k] for k in keep}, "devices": len(devices),
            "example_device": devices[0] if devices else None,
            "redis_url": cfg.feature_store.redis_url}


def feature_summary(vectors: list[dict]) -> dict[str, Any]:
    """FeatureVectors written, and the distinct windows they describe (a late firing
    re-emits a window's vector under the same key: the last one is final)."""
    final = {(v["device_id"], v["window"], v["window_start"]) for v in vectors}
    by_window = Counter(w for _, w, _ in final)
    return {
        "vectors": len(vectors),
        "windows": len(final),
        "by_window": dict(sorted(by_window.items())),
        "feature_values": sum(len(v["features"]) for v in vectors),
        "feature_spec_version": sorted({v["feature_spec_version"] for v in vectors}),
    }


def quality_summary(enriched: list[dict], dlq: list[dict], results: list[dict]) -> dict[str, Any]:
    """What the quality checks did: records dead-lettered by a blocking expectation,
    records passed with warnings (non-blocking), and the great-expectations audit."""
    warned = Counter(w for e in enriched for w in e.get("quality_warnings") or [])
    blocked = Counter(x for d in dlq if d["reason"] == "quality"
                      for x in d.get("failed_expectations") or [])
    ratios = [r["success_ratio"] for r in results if r.get("success_ratio") is not None]
    return {
        "blocked_records": sum(1 for d in dlq if d["reason"] == "quality"),
        "blocked_by_expectation": dict(blocked.most_common()),
        "warned_records": sum(1 for e in enriched if e.get("quality_warnings")),
        "warnings_by_expectation": dict(warned.most_common()),
        "audit_results": len(results),
        "audit_success_ratio_min": min(ratios) if ratios else None,
        "audit_success_ratio_mean": round(sum(ratios) / len(ratios), 4) if ratios else None,
    }


def _latency_chart(latencies: list[int], cfg: SluiceConfig, path: Path) -> None:
    if not latencies:
        return
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(latencies, bins=60, color="#3b7dd8")
    for q, style in ((50, "--"), (99, ":")):
        v = _percentile([float(x) for x in latencies], q)
        ax.axvline(v, color="black", linestyle=style, label=f"p{q} = {v:.0f} ms")
    ax.set_xlabel("end-to-end latency (event time → visible to read_committed), ms")
    ax.set_ylabel("records")
    ax.set_title(f"sluice demo: exactly-once, checkpoint every {cfg.checkpoint.interval_ms} ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _store_row(fs: dict[str, Any]) -> tuple[str, str]:
    if "error" in fs:
        return ("feature store (Redis)", f"[red]not materialised: {fs['error']}[/red]")
    return ("feature store: read / written / stale",
            f'{fs["read"]} / {fs["written"]} / {fs["stale"]} ({fs["devices"]} devices)')


def _print_summary(console: Console, s: dict[str, Any], out_dir: Path) -> None:
    t = Table(title="sluice demo summary", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [
        ("records in", s["records_in"]),
        *((f"  from {topic}", n) for topic, n in s["inputs"].items()),
        ("records out (telemetry.enriched)", s["records_out"]),
        *((f"  {src.lower()}", n) for src, n in s["records_out_by_source"].items()),
        ("dead letters (dlq)", s["dlq"]),
        *((f"  {reason}", n) for reason, n in s["dlq_by_reason"].items()),
        ("corrupt records injected", f'{s["corrupt_injected"]} ({s["corrupt_kinds"]} kinds)'),
        ("in = out + dlq, no duplicates", "yes" if s["balanced"] else "NO"),
        ("quality: blocked / warned records",
         f'{s["quality"]["blocked_records"]} / {s["quality"]["warned_records"]}'),
        ("quality: GE audit results (min ratio)",
         f'{s["quality"]["audit_results"]} ({s["quality"]["audit_success_ratio_min"]})'),
        ("window scores / threshold alerts",
         f'{s["window_scores"]} / {s["alerts"]["threshold_rule"]}'),
        ("model (in-stream scoring)", s["model_version"]),
        ("model scores / model alerts", f'{s["model_scores"]} / {s["alerts"]["model"]}'),
        ("drift events (drifted)",
         f'{s["drift_events"]["events"]} ({s["drift_events"]["drifted"]})'),
        ("feature vectors (windows)", f'{s["features"]["vectors"]} ({s["features"]["windows"]})'),
        *((f"  {w}", n) for w, n in s["features"]["by_window"].items()),
        ("late records (feature windows)", s["late"]["records"]),
        _store_row(s["feature_store"]),
        *((("joined readings (telemetry.joined)", s["joined"]["records"]),
           *((f"  {st.lower()}", n) for st, n in s["joined"]["by_status"].items()))
          if s.get("joined") else ()),
        ("state: last checkpoint / final savepoint",
         f'{s["state"]["last_checkpoint"].get("state_size", "?")} B / '
         f'{s["state"]["final_savepoint_bytes"]} B'),
        ("throughput (input rate-limited)", f'{s["throughput_eps"]:.0f} events/s'),
        ("latency p50 / p99", f'{s["latency_ms_p50"]:.0f} / {s["latency_ms_p99"]:.0f} ms'),
        ("delivery", s["delivery"]),
        ("wall time", f'{s["wall_seconds"]} s'),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"summary: {out_dir / 'summary.json'}   chart: {out_dir / 'latency.png'}")
    if s["feature_store"].get("example_device"):
        console.print("online features: sluice features get "
                      f"{s['feature_store']['example_device']}", markup=False)
