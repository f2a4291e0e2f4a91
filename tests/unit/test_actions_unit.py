"""`sluice actions` without Kafka: backoff schedule, HTTP outcome classification, the
request headers, one delivery against a loopback HTTP server, the ledger, the DLQ record."""

from __future__ import annotations

import io
import json
import random
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest
import requests
from pydantic import ValidationError

from sluice.actions import (
    IDEMPOTENCY_HEADER,
    REASON_EXHAUSTED,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    ConfluentAvroEncoder,
    DeliveryLedger,
    alert_body,
    backoff_delay,
    classify_exception,
    classify_response,
    dead_letter_record,
    deliver,
    request_headers,
    resolve_headers,
    retry_schedule,
)
from sluice.config import REPO_ROOT, ConfigError, RetryPolicyConfig, SluiceConfig, WebhookConfig


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    p = RetryPolicyConfig(max_attempts=7, backoff_base_ms=100, backoff_cap_ms=1_000, jitter=0)
    assert retry_schedule(p) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert retry_schedule(RetryPolicyConfig(max_attempts=1)) == []


def test_jitter_stays_within_its_share_and_varies() -> None:
    p = RetryPolicyConfig(max_attempts=4, backoff_base_ms=1_000, backoff_cap_ms=10_000, jitter=0.5)
    rng = random.Random(7)
    seen = [backoff_delay(2, p, rng) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in seen)
    assert max(seen) - min(seen) > 0.5


def test_retry_after_raises_the_delay_but_not_past_the_cap() -> None:
    p = RetryPolicyConfig(backoff_base_ms=100, backoff_cap_ms=3_000, jitter=0)
    assert backoff_delay(1, p, retry_after_s=2) == 2
    assert backoff_delay(1, p, retry_after_s=60) == 3
    assert classify_response(429, "", "5").retry_after_s == 5
    with pytest.raises(ValueError):
        backoff_delay(0, p)


@pytest.mark.parametrize(("status", "kind"), [
    (200, "delivered"), (201, "delivered"), (204, "delivered"),
    (400, "reject"), (401, "reject"), (404, "reject"), (409, "reject"), (422, "reject"),
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (504, "retry"),
    (301, "reject"), (302, "reject"), (100, "reject"),
])
def test_http_status_classification(status: int, kind: str) -> None:
    out = classify_response(status, '{"error":  "why\nnot"}')
    assert out.kind == kind and out.status == status
    if kind != "delivered":
        assert out.error.startswith(f"HTTP {status}: ") and 'why not' in out.error


def test_exception_classification() -> None:
    assert classify_exception(requests.ReadTimeout("slow")).kind == "retry"
    assert classify_exception(requests.ConnectTimeout("slow")).kind == "retry"
    assert classify_exception(requests.ConnectionError("refused")).kind == "retry"
    assert classify_exception(requests.exceptions.InvalidURL("x")).kind == "reject"
    assert classify_exception(requests.exceptions.MissingSchema("x")).kind == "reject"


def test_idempotency_key_is_the_alert_id_and_cannot_be_overridden() -> None:
    h = request_headers("dev-1@1000", 3, {"X-Team": "ops", IDEMPOTENCY_HEADER: "forged"})
    assert h[IDEMPOTENCY_HEADER] == "dev-1@1000"
    assert h["X-Sluice-Attempt"] == "3" and h["X-Team"] == "ops"
    assert h["Content-Type"] == "application/json"
    with pytest.raises(ValidationError, match="set by the service"):
        WebhookConfig(name="a", url="http://x/", headers={"Idempotency-Key": "k"})


def test_secret_headers_only_from_env_or_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="credentials must not be in the config file"):
        WebhookConfig(name="a", url="http://x/", headers={"Authorization": "Bearer s3cret"})
    f = tmp_path / "token"
    f.write_text("tok-from-file\n")
    w = WebhookConfig(name="a", url="http://x/", headers_from_env={"Authorization": "OPS_AUTH"},
                      headers_from_file={"X-Api-Key": Path("token")})
    got = resolve_headers(w, {"OPS_AUTH": "Bearer e"}, tmp_path)
    assert got == {"Authorization": "Bearer e", "X-Api-Key": "tok-from-file"}
    with pytest.raises(ConfigError, match="OPS_AUTH is not set") as exc:
        resolve_headers(w, {}, tmp_path)
    assert "tok-from-file" not in str(exc.value)


def test_actions_config_section() -> None:
    cfg = SluiceConfig().with_overrides(actions={"webhooks": [{"name": "a", "url": "http://x/"}]})
    assert cfg.topics.action_dlq in cfg.topics.all()
    with pytest.raises(ConfigError, match="unique"):
        SluiceConfig().with_overrides(actions={"webhooks": [{"name": "a", "url": "http://x/"},
                                                            {"name": "a", "url": "http://y/"}]})
    with pytest.raises(ConfigError):
        SluiceConfig().with_overrides(actions={"webhooks": [{"name": "a", "url": "ftp://x/"}]})


def test_alert_body_is_json_with_epoch_ms() -> None:
    from datetime import UTC, datetime

    body = json.loads(alert_body({"alert_id": "d@1", "window_start": datetime(2026, 1, 1, tzinfo=UTC)}))
    assert body == {"alert_id": "d@1", "window_start": 1_767_225_600_000}


class _Server:
    """Loopback server answering from a script of (status, delay_s) per request."""

    def __init__(self, script: list[tuple[int, float]]):
        self.script, self.seen = list(script), []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.seen.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                status, delay = outer.script.pop(0) if outer.script else (200, 0)
                threading.Event().wait(delay)
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"bad alert" if status == 400 else b"")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


FAST = RetryPolicyConfig(max_attempts=4, backoff_base_ms=1, backoff_cap_ms=5, jitter=0)


@pytest.mark.parametrize(("script", "delivered", "attempts", "reason"), [
    ([(200, 0)], True, 1, None),
    ([(503, 0), (500, 0), (200, 0)], True, 3, None),
    ([(200, 0.6), (200, 0)], True, 2, None),  # the first answer comes after the timeout
    ([(400, 0), (200, 0)], False, 1, REASON_REJECTED),
    ([(503, 0)] * 5, False, 4, REASON_EXHAUSTED),
])
def test_deliver_against_a_loopback_server(script: list[tuple[int, float]], delivered: bool,
                                           attempts: int, reason: str | None) -> None:
    srv = _Server(script)
    try:
        w = WebhookConfig(name="ops", url=srv.url)
        with requests.Session() as s:
            d = deliver(s, w, {"X-Team": "ops"}, "dev-1@1000", b'{"a": 1}', policy=FAST, timeout_s=0.3)
        assert (d.delivered, d.attempts) == (delivered, attempts)
        if reason:
            assert d.reason == reason
        assert len(srv.seen) == attempts
        assert [h[IDEMPOTENCY_HEADER] for h, _ in srv.seen] == ["dev-1@1000"] * attempts
        assert [h["X-Sluice-Attempt"] for h, _ in srv.seen] == [str(n) for n in range(1, attempts + 1)]
        assert all(b == b'{"a": 1}' and h["X-Team"] == "ops" for h, b in srv.seen)
    finally:
        srv.close()


def test_a_stop_during_backoff_interrupts_without_giving_up() -> None:
    srv = _Server([(503, 0)] * 5)
    stop = threading.Event()
    stop.set()
    try:
        with requests.Session() as s:
            d = deliver(s, WebhookConfig(name="ops", url=srv.url), {}, "k", b"{}", policy=FAST,
                        timeout_s=1, stop=stop)
        assert d.interrupted and not d.delivered and d.attempts == 1
    finally:
        srv.close()


def test_ledger_survives_reopening(tmp_path: Path) -> None:
    from sluice.actions import Delivery, Outcome

    db = tmp_path / "x" / "state.sqlite"
    led = DeliveryLedger(db)
    d = Delivery("ops", "http://x/", True, 2, 0, Outcome("delivered", 200, ""))
    led.record("dev-1@1000", d, "alerts/0/5")
    led.record("dev-1@1000", d, "alerts/0/5")  # a second record is harmless
    led.close()
    led = DeliveryLedger(db)
    assert led.delivered("dev-1@1000", "ops")
    assert not led.delivered("dev-1@1000", "audit") and not led.delivered("dev-2@1000", "ops")
    assert led.count() == 1
    led.close()


def test_dead_letter_record_matches_the_schema_and_carries_everything() -> None:
    from sluice.actions import Delivery, Outcome

    schema_text = (REPO_ROOT / "schemas/action-dlq-value/v1.avsc").read_text()
    d = Delivery("audit", "http://x/audit", False, 1, 111, Outcome("reject", 400, "HTTP 400: bad alert"))
    rec = dead_letter_record(delivery=d, alert_id="dev-1@1000", alert_json='{"alert_id": "dev-1@1000"}',
                             value=b"\x00raw", topic="alerts", partition=1, offset=7,
                             service="sluice-actions", now_ms=222)
    assert rec["reason"] == REASON_REJECTED and rec["status_code"] == 400 and rec["attempts"] == 1
    assert rec["webhook"] == "audit" and rec["last_error"] == "HTTP 400: bad alert"
    assert (rec["first_attempt_at"], rec["dead_lettered_at"]) == (111, 222)
    raw = ConfluentAvroEncoder(schema_text, 42)(rec)
    assert raw[:5] == b"\x00" + struct.pack(">I", 42)
    back = fastavro.schemaless_reader(io.BytesIO(raw[5:]), fastavro.parse_schema(json.loads(schema_text)))
    assert back["alert_id"] == "dev-1@1000" and back["original_value"] == b"\x00raw"
    assert back["source_offset"] == 7 and back["service"] == "sluice-actions"

    bad = dead_letter_record(delivery=None, alert_id=None, alert_json=None, value=b"junk",
                             topic="alerts", partition=0, offset=1, service="s",
                             reason=REASON_UNDECODABLE, error="SerializationError: bad magic")
    assert bad["reason"] == REASON_UNDECODABLE and bad["attempts"] == 0 and bad["webhook"] == ""
    ConfluentAvroEncoder(schema_text, 1)(bad)
