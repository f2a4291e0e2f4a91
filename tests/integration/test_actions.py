"""`sluice actions` on the real stack: alerts committed the way the job writes them, a
local HTTP receiver that fails, times out and rejects, the service SIGKILLed mid-run
and restarted. Every alert reaches every webhook once from the receiver's point of
view; the undeliverable ones are in the action DLQ; nothing is lost. A negative
control restarts without the service's state and shows the receiver absorbing repeats.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.actions import ATTEMPT_HEADER, IDEMPOTENCY_HEADER
from sluice.config import REPO_ROOT, SluiceConfig
from sluice.kafka_util import end_offsets, ensure_topics, read_to_end
from sluice.registry import output_schema
from tests.conftest import PYTHON, unique_config, write_config

pytestmark = pytest.mark.integration

N = 30
TIMEOUT_S = 0.5
MAX_ATTEMPTS = 4
POISON = 4  # /audit answers 400 for this alert: dead-lettered at once
DOOMED = 9  # /audit answers 503 for this one every time: dead-lettered after MAX_ATTEMPTS
FLAKY = {i for i in range(N) if i % 5 == 1}  # /ops: 503 twice, then 200
SLOW = {i for i in range(N) if i % 7 == 3}  # /ops: the first attempt outlives the timeout
T0 = 1_767_225_600_000


def alert(i: int) -> dict[str, Any]:
    device, start = f"dev-{i:03d}", T0 + i * 5_000
    return {
        "alert_id": f"{device}@{start}", "device_id": device, "site_id": "site-a",
        "window_start": start, "window_end": start + 5_000, "metric": "temperature_c",
        "mean": 90.0 + i / 8, "threshold": 80.0, "score": 1.0 + i / 100, "severity": "CRITICAL",
        "model_version": "threshold-v0",
    }


def index_of(alert_id: str) -> int:
    return int(alert_id.split("@")[0].removeprefix("dev-"))


@dataclass
class Receiver:
    """A webhook receiver that de-duplicates by Idempotency-Key, as the design asks of
    receivers: the first accepted request per (path, key) takes effect; a later one with
    the same key is answered 200 and only counted (``absorbed``)."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    absorbed: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, key: str, attempt: str, body: dict[str, Any]) -> tuple[int, str]:
        i = index_of(body["alert_id"])
        with self.lock:
            n = 1 + sum(1 for r in self.requests if r["path"] == path and r["key"] == key)
            self.requests.append({"path": path, "key": key, "attempt": attempt, "t": time.time()})
        time.sleep(0.015)  # a receiver does some work
        if path == "/audit" and i == POISON:
            return 400, '{"error": "unknown device for audit"}'
        if path == "/audit" and i == DOOMED:
            return 503, '{"error": "audit store down"}'
        if path == "/ops" and i in FLAKY and n <= 2:
            return 503, '{"error": "busy"}'
        if path == "/ops" and i in SLOW and n == 1:
            time.sleep(TIMEOUT_S + 0.7)  # the client gave up; the work still happens
        with self.lock:
            if (path, key) in self.accepted:
                self.absorbed[(path, key)] += 1
            else:
                self.accepted[(path, key)] = body
        return 200, '{"ok": true}'

    def keys(self, path: str) -> set[str]:
        with self.lock:
            return {k for p, k in self.accepted if p == path}


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, text = rec.handle(self.path, self.headers.get(IDEMPOTENCY_HEADER, ""),
                                      self.headers.get(ATTEMPT_HEADER, ""), body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(text.encode())
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return rec, server


def actions_config(stack: SluiceConfig, port: int, tmp_path: Path, name: str) -> SluiceConfig:
    cfg = unique_config(stack, name)
    tag = cfg.topics.alerts.removesuffix(".alerts")
    base = f"http://127.0.0.1:{port}"
    return cfg.with_overrides(
        topics={"action_dlq": f"{tag}.action-dlq"},
        actions={
            "webhooks": [{"name": "ops", "url": f"{base}/ops", "headers": {"X-Team": "ops"}},
                         {"name": "audit", "url": f"{base}/audit"}],
            "timeout_s": TIMEOUT_S,
            "retry": {"max_attempts": MAX_ATTEMPTS, "backoff_base_ms": 50, "backoff_cap_ms": 300,
                      "jitter": 0.5},
            "consumer_group": f"sluice-{tag}-actions",
            "state_db": str(tmp_path / "state.sqlite"),
        },
    )


def produce_alerts(cfg: SluiceConfig) -> dict[str, bytes]:
    """N alerts in one committed Kafka transaction, Avro with the registered Alert
    schema (subject alerts-value, Confluent framing), keyed by device: as the job
    writes them. Returns alert id -> value bytes."""
    ensure_topics(cfg, [cfg.topics.alerts])
    sch = output_schema(cfg, cfg.schemas.alerts)
    parsed = fastavro.parse_schema(json.loads(sch.schema_str))

    def ser(a: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\x00" + struct.pack(">I", sch.schema_id))
        fastavro.schemaless_writer(buf, parsed, a)
        return buf.getvalue()

    values = {alert(i)["alert_id"]: ser(alert(i)) for i in range(N)}
    p = Producer({**cfg.kafka.client_properties(), "transactional.id": f"{cfg.job.name}-alerts"})
    p.init_transactions(30)
    p.begin_transaction()
    for aid, v in values.items():
        p.produce(cfg.topics.alerts, key=aid.split("@")[0].encode(), value=v)
    p.commit_transaction(30)
    return values


def service(cfg_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [PYTHON, "-m", "sluice.cli", "actions", "-c", str(cfg_path), "--until-idle", "4",
         "--json", "--log", *extra],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def summary_of(out: str) -> dict[str, Any]:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON summary in the output:\n{out[-4000:]}"
    return json.loads(lines[-1])


def kill_after(proc: subprocess.Popen[str], rec: Receiver, deliveries: int, wait: float = 90) -> int:
    """SIGKILL the service once the receiver accepted ``deliveries`` /ops calls."""
    deadline = time.monotonic() + wait
    while len(rec.keys("/ops")) < deliveries:
        if proc.poll() is not None:
            pytest.fail(f"the service ended before the kill:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"only {len(rec.keys('/ops'))} deliveries in {wait} s")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return len(rec.keys("/ops"))


def run_to_idle(cfg_path: Path) -> tuple[dict[str, Any], float, str]:
    t = time.monotonic()
    proc = service(cfg_path)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-4000:]}"
    return summary_of(out), time.monotonic() - t, out


def read_action_dlq(cfg: SluiceConfig) -> list[dict[str, Any]]:
    recs = read_to_end(cfg, cfg.topics.action_dlq)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        return [de(r.value, None) for r in recs]


def check_effectively_once(rec: Receiver, values: dict[str, bytes],
                           dlq: list[dict[str, Any]]) -> dict[str, int]:
    """Every alert reached each webhook once or is in the DLQ (never both, never neither);
    the bodies are the alerts; the only repeats the receiver had to absorb are the
    timed-out first attempts of SLOW alerts (their retry) plus at most one from the kill
    (the delivery between the receiver's 2xx and the ledger row). Returns the counts."""
    ids = set(values)
    dead = {(d["webhook"], d["alert_id"]) for d in dlq}
    assert len(dead) == len(dlq), f"an action was dead-lettered twice: {dlq}"
    for name in ("ops", "audit"):
        got = rec.keys(f"/{name}")
        lettered = {a for w, a in dead if w == name}
        assert not got & lettered, f"{name}: delivered and dead-lettered: {got & lettered}"
        assert got | lettered == ids, f"{name}: lost {sorted(ids - got - lettered)}"
        assert len(got) + len(lettered) == N
    for (path, key), body in rec.accepted.items():
        assert body == {**alert(index_of(key)), "alert_id": key}, f"{path} {key}: body {body}"
    slow_keys = {alert(i)["alert_id"] for i in SLOW}
    after_timeout = sum(n for (p, k), n in rec.absorbed.items() if p == "/ops" and k in slow_keys)
    from_restart = sum(rec.absorbed.values()) - after_timeout
    assert from_restart <= 1, (
        f"the receiver absorbed {from_restart} repeats after the restart (at most the one "
        f"in-flight delivery may repeat): {dict(rec.absorbed)}")
    return {"absorbed_total": sum(rec.absorbed.values()), "absorbed_after_timeout": after_timeout,
            "absorbed_from_restart": from_restart}


def check_dlq(dlq: list[dict[str, Any]], values: dict[str, bytes], cfg: SluiceConfig) -> None:
    by = {(d["webhook"], index_of(d["alert_id"])): d for d in dlq}
    assert set(by) == {("audit", POISON), ("audit", DOOMED)}, sorted(by)
    p = by[("audit", POISON)]
    assert (p["reason"], p["status_code"], p["attempts"]) == ("rejected", 400, 1)
    assert "unknown device for audit" in p["last_error"]
    d = by[("audit", DOOMED)]
    assert (d["reason"], d["status_code"], d["attempts"]) == ("retries-exhausted", 503, MAX_ATTEMPTS)
    assert "audit store down" in d["last_error"]
    for x in dlq:
        assert x["original_value"] == values[x["alert_id"]]
        assert json.loads(x["alert_json"])["alert_id"] == x["alert_id"]
        assert x["url"].endswith("/audit") and x["source_topic"] == cfg.topics.alerts
        assert x["service"] == cfg.actions.consumer_group


def left_after_committed(cfg: SluiceConfig) -> list[int]:
    """Offsets of committed alerts after the group's committed positions (the end
    offset itself is no measure: a transaction's commit marker takes an offset)."""
    parts = list(end_offsets(cfg, cfg.topics.alerts))
    c = Consumer({**cfg.kafka.client_properties(), "group.id": cfg.actions.consumer_group})
    try:
        got = c.committed([TopicPartition(cfg.topics.alerts, p) for p in parts], timeout=15)
    finally:
        c.close()
    start = {tp.partition: max(tp.offset, 0) for tp in got}
    return [r.offset for r in read_to_end(cfg, cfg.topics.alerts, start=start)]


def test_kill_and_restart_every_alert_once(stack: SluiceConfig, tmp_path: Path) -> None:
    rec, server = start_receiver()
    try:
        cfg = actions_config(stack, server.server_address[1], tmp_path, "actions")
        cfg_path = write_config(cfg, tmp_path)
        values = produce_alerts(cfg)

        first = service(cfg_path)
        at_kill = kill_after(first, rec, deliveries=12)
        assert len(rec.keys("/ops")) < N, "the kill came too late to prove anything"
        summary, took, out = run_to_idle(cfg_path)
        dlq = read_action_dlq(cfg)

        counts = check_effectively_once(rec, values, dlq)
        check_dlq(dlq, values, cfg)
        assert left_after_committed(cfg) == [], "alerts after the group's committed offsets"
        assert summary["stopped_by"] == "idle"
        # The restart resumed from the committed offsets, not from the beginning.
        assert summary["alerts"] < N, summary
        print(f"\nactions: {N} alerts x 2 webhooks; killed after {at_kill} /ops deliveries; "
              f"restart took {took:.1f} s: {json.dumps(summary)}; receiver: "
              f"{len(rec.requests)} requests, {json.dumps(counts)}; dlq {len(dlq)}")
    finally:
        server.shutdown()
        server.server_close()


def test_control_without_state_the_receiver_absorbs_repeats(stack: SluiceConfig,
                                                           tmp_path: Path) -> None:
    """The same kill, then a restart that has lost the service's state (a fresh consumer
    group, hence a fresh transactional id, and a fresh ledger): the receiver must absorb
    every delivery made before the kill, and the check above must fail."""
    rec, server = start_receiver()
    try:
        cfg = actions_config(stack, server.server_address[1], tmp_path, "actions-ctl")
        values = produce_alerts(cfg)
        first = service(write_config(cfg, tmp_path))
        at_kill = kill_after(first, rec, deliveries=12)
        fresh = cfg.with_overrides(actions={
            "consumer_group": cfg.actions.consumer_group + "-fresh",
            "state_db": str(tmp_path / "fresh.sqlite")})
        fresh_dir = tmp_path / "fresh"
        fresh_dir.mkdir()
        summary, _, _ = run_to_idle(write_config(fresh, fresh_dir))
        assert summary["already_delivered"] == 0
        repeats = sum(rec.absorbed.values())
        assert repeats >= at_kill, (at_kill, dict(rec.absorbed))
        with pytest.raises(AssertionError, match="absorbed .* repeats after the restart|dead-lettered twice"):
            check_effectively_once(rec, values, read_action_dlq(fresh))
        print(f"\ncontrol: killed after {at_kill} /ops deliveries; without state the receiver "
              f"absorbed {repeats} repeats")
    finally:
        server.shutdown()
        server.server_close()


def test_sigterm_finishes_the_call_commits_and_exits_0(stack: SluiceConfig, tmp_path: Path) -> None:
    """SIGTERM mid-run: exit 0 within seconds, summary says so; the restart then
    completes the rest with no repeat caused by the stop."""
    rec, server = start_receiver()
    try:
        cfg = actions_config(stack, server.server_address[1], tmp_path, "actions-term")
        cfg_path = write_config(cfg, tmp_path)
        values = produce_alerts(cfg)
        proc = service(cfg_path)
        deadline = time.monotonic() + 90
        while len(rec.keys("/ops")) < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t
        assert proc.returncode == 0, out[-4000:]
        first = summary_of(out)
        assert first["stopped_by"] == "signal" and first["alerts"] < N, first
        summary, _, _ = run_to_idle(cfg_path)
        counts = check_effectively_once(rec, values, read_action_dlq(cfg))
        assert counts["absorbed_from_restart"] == 0, counts
        assert first["alerts"] + summary["alerts"] >= N, (first, summary)
        assert left_after_committed(cfg) == []
        print(f"\nsigterm: stopped in {stopped_in:.2f} s after {first['alerts']} alerts; "
              f"restart {summary['alerts']} alerts; {json.dumps(counts)}")
    finally:
        server.shutdown()
        server.server_close()
