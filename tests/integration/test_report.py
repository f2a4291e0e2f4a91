"""`sluice report` on a live job, and the job's Python-side metrics (docs/observability.md).

A short unbounded job on a Flink mini-cluster reads a live
input stream; while it runs, the test reads the job's sluice metrics from Flink REST,
runs `sluice report`, then opens the page in real headless
Chromium and checks that its charts rendered (DOM and screenshot pixels)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.demo import _Job
from sluice.generator import plan, produce
from sluice.kafka_util import ensure_topics, read_committed
from tests.conftest import PYTHON, run_job, unique_config, write_config

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True, text=True, timeout=120, check=True)


def rendered_charts(dom: str) -> int:
    """Charts in a DOM Chromium produced: <svg> elements holding at least one drawn path."""
    charts = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    return sum(1 for svg in charts if re.search(r'<path\b[^>]*\bd="M[^"]+"', svg))


@pytest.fixture(scope="module")
def live_job(stack: SluiceConfig, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("report")
    cfg = unique_config(
        stack, "report", job={"startup_mode": "earliest"},
        # 60 s of live input per round (corrupt records included), fed round after round
        # until the module's tests are done: `sluice report` samples last, and a job whose
        # input had run out by then (one round) processed nothing in its sample window while
        # its JVM still burned CPU (the JIT compiler's first minute), so no cost per event
        # could be measured.
        generator={"records": 12_000, "rate_eps": 200},
        # Any measured cost is above 0: the cost alert must fire. Lag stays far below.
        report={"alerts_file": str(tmp / "alerts.jsonl"), "cost_per_million_max": 0.0,
                "lag_records_max": 10**9, "sample_s": 8},
    )
    ensure_topics(cfg)
    cfg_path = write_config(cfg, tmp)
    job = _Job(cfg_path, tmp / "job.log")
    producer: threading.Thread | None = None
    try:
        jid = job.wait_running()
        stop = threading.Event()

        def feed() -> None:  # in chunks of 2 s, so that the teardown can stop it
            for r in range(5):  # new event ids each round (the generator's seed)
                items = plan(cfg.with_overrides(generator={"seed": cfg.generator.seed + r}),
                             start_ms=0, step_ms=0)
                for i in range(0, len(items), 400):
                    if stop.is_set():
                        return
                    produce(cfg, items[i:i + 400], live=True)

        producer = threading.Thread(target=feed, daemon=True)
        producer.start()
        # Wait for committed output: the job runs end to end.
        got = read_committed(cfg, [cfg.topics.enriched], until=lambda c: sum(c.values()) >= 200,
                             max_wait=180)
        assert sum(len(v) for v in got.values()) >= 200, job.log.read_text()[-3000:]
        yield cfg, cfg_path, job, jid, tmp
    finally:
        if producer is not None:
            stop.set()
            producer.join(30)
        job.kill()


def test_python_metrics_in_flink_rest_and_prometheus(live_job) -> None:  # type: ignore[no-untyped-def]
    cfg, _, job, jid, _ = live_job
    from sluice.report import FlinkRest

    rest = FlinkRest(job.url)
    deadline = time.monotonic() + 60
    metrics: dict = {}
    while time.monotonic() < deadline:
        metrics = rest.sluice_metrics(jid)
        if metrics.get("ingest.records_in", {}).get("sum", 0) > 0 and "ingest.decode_us_p99" in metrics:
            break
        time.sleep(2)
    for name in ("ingest.records_in", "ingest.records_out", "ingest.dead_letters",
                 "ingest.kafka_to_ingest_ms_p99", "ingest.decode_us_p50", "ingest.decode_us_p99",
                 "ingest.enrich_encode_us_p99", "features.records_in",
                 "features.ingest_to_features_ms_p99"):
        assert name in metrics, sorted(metrics)
    assert metrics["ingest.records_in"]["sum"] >= metrics["ingest.records_out"]["sum"] > 0
    assert metrics["ingest.decode_us_count"]["sum"] > 0
    assert 0 < metrics["ingest.decode_us_p50"]["max"] <= metrics["ingest.decode_us_max"]["max"]
    # Negative control: a metric no stage registers is not there.
    assert "ingest.no_such_metric" not in metrics


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_report_page_renders_in_headless_chromium(live_job) -> None:  # type: ignore[no-untyped-def]
    cfg, cfg_path, job, jid, tmp = live_job
    out_dir = tmp / "out"
    out = run_job([PYTHON, "-m", "sluice.cli", "report", "--config", str(cfg_path),
                   "--flink-url", job.url, "--job-id", jid, "--pid", str(job.proc.pid),
                   "--since", "10m", "--sample-seconds", "8", "--out", str(out_dir)], timeout=300)
    assert "Cost per million events" in out and "ALERT cost" in out, out
    rep = json.loads((out_dir / "report.json").read_text())
    inputs = [r for r in rep["throughput"] if r["input"] and r["topic"] == cfg.topics.telemetry]
    assert sum(r["records"] for r in inputs) > 0 and len(inputs) == cfg.topics.partitions
    lat = rep["latency_records"]
    assert lat["event → sink"]["n"] > 0 and lat["event → sink"]["p50"] >= lat["event → ingest"]["p50"]
    assert {s["name"] for s in rep["latency_stages"]} >= {"decode_us", "kafka_to_ingest_ms"}
    assert rep["checkpoints"] and all(c["duration_ms"] is not None for c in rep["checkpoints"])
    assert rep["dead_letters"]["records"] > 0  # the generator injects corrupt records
    assert rep["resources"]["cpu_seconds"] > 0 and rep["resources"]["events"] > 0
    assert rep["cost"]["per_million"] > 0
    alerts = [json.loads(x) for x in Path(cfg.report.alerts_file).read_text().splitlines()]
    assert [a["kind"] for a in alerts] == ["cost"]

    page = out_dir / "report.html"
    dom = chromium(page, "--dump-dom").stdout
    assert "<h1>sluice report" in dom
    assert rendered_charts(dom) >= 6, dom[:3000]  # throughput, lag, latency, checkpoints, DLQ, cost
    shot = tmp / "shot.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1000,3000")
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels[..., :3].std() > 0.05
    # Negative control: the same page without its charts does not pass the DOM check.
    bare = tmp / "bare.html"
    bare.write_text(re.sub(r"<svg\b.*?</svg>", "", page.read_text(), flags=re.S))
    assert rendered_charts(chromium(bare, "--dump-dom").stdout) == 0
