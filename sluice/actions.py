"""`sluice actions`: alerts become webhook calls that happen effectively once.

The service consumes ``topics.alerts`` (``read_committed``: only alerts the job's
exactly-once transactions committed) and POSTs each alert, as JSON, to every webhook of
``actions.webhooks``. How "effectively once" holds (docs/actions.md has the reasoning):

1. **Kafka offsets are the progress record, committed only when an alert is done.** An
   alert is done when every webhook either took it (2xx) or it was dead-lettered. The
   offset is committed with ``send_offsets_to_transaction`` in a Kafka transaction
   (``transactional.id = <actions.consumer_group>-<instance id>``) that also holds the
   alert's dead letters on ``topics.action_dlq``: the dead letters and the progress
   commit together or not at all, so a crash neither loses an alert nor dead-letters it
   twice for a ``read_committed`` reader. Starting the producer fences the previous
   incarnation; static group membership (``group.instance.id``) gives the restarted
   instance its partitions back at once.
2. **A durable local ledger of deliveries** (SQLite, ``actions.state_db``): one row per
   (alert id, webhook), written and fsynced right after the 2xx and before anything
   else. An alert read again after a restart (its offset was not committed yet) is not
   sent again to the webhooks that already took it. This matters for an alert with
   several webhooks, one of them in a long retry when the process dies.
3. **An idempotency key on every request**: ``Idempotency-Key: <alert_id>``
   (``device@window_start``, deterministic). The one window the service cannot close
   is between the receiver's 2xx and the ledger row (a kill there, or a timeout after
   the receiver processed the request): the retry carries the same key and the
   receiver de-duplicates it.

Outcomes: 2xx delivered; 408, 429, 5xx, timeouts and connection errors are retried with
capped exponential backoff and jitter, then dead-lettered as ``retries-exhausted``;
any other 4xx (and 3xx: redirects are not followed) is dead-lettered at once as
``rejected``; an alert that cannot be decoded is dead-lettered as ``undecodable``.
"""

from __future__ import annotations

import io
import json
import random
import signal
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import fastavro
import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from sluice.config import (
    ConfigError,
    RetryPolicyConfig,
    SluiceConfig,
    WebhookConfig,
    read_secret_file,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
ATTEMPT_HEADER = "X-Sluice-Attempt"
ACTION_DLQ_SCHEMA = "action-dlq-value/v1.avsc"

REASON_REJECTED = "rejected"
REASON_EXHAUSTED = "retries-exhausted"
REASON_UNDECODABLE = "undecodable"

# Statuses in the 4xx range that say "try again later", not "this request is wrong".
RETRYABLE_4XX = frozenset({408, 429})


class ActionsError(RuntimeError):
    """The service cannot run (configuration, Kafka transaction, topic missing)."""


# --- retry policy ----------------------------------------------------------------------


def backoff_delay(failed_attempt: int, policy: RetryPolicyConfig,
                  rng: random.Random | None = None, retry_after_s: float | None = None) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (1-based) failed.

    ``min(cap, base * 2**(failed_attempt-1))``, then up to ``jitter`` of it taken off at
    random, so many services retrying at once spread out. A ``Retry-After`` the
    receiver sent raises the delay to that value, still capped."""
    if failed_attempt < 1:
        raise ValueError("failed_attempt is 1-based")
    cap = policy.backoff_cap_ms / 1000
    delay = min(cap, policy.backoff_base_ms / 1000 * 2 ** (failed_attempt - 1))
    if policy.jitter > 0:
        delay -= delay * policy.jitter * (rng or random).random()
    if retry_after_s is not None:
        delay = max(delay, min(cap, retry_after_s))
    return delay


def retry_schedule(policy: RetryPolicyConfig, rng: random.Random | None = None) -> list[float]:
    """The waits between the ``max_attempts`` attempts (``max_attempts - 1`` of them)."""
    return [backoff_delay(n, policy, rng) for n in range(1, policy.max_attempts)]


# --- classification --------------------------------------------------------------------

Kind = Literal["delivered", "retry", "reject"]


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    status: int | None
    error: str  # empty when delivered
    retry_after_s: float | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify_response(status: int, body: str = "", retry_after: str | None = None) -> Outcome:
    """2xx delivered; 408/429/5xx retried; any other status (4xx, 3xx, 1xx) rejected."""
    if 200 <= status < 300:
        return Outcome("delivered", status, "")
    snippet = " ".join(body.split())[:200]
    error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if status in RETRYABLE_4XX or 500 <= status < 600:
        return Outcome("retry", status, error, _retry_after(retry_after))
    if 300 <= status < 400:
        error += " (redirects are not followed: configure the final URL)"
    return Outcome("reject", status, error)


def classify_exception(exc: BaseException) -> Outcome:
    """Timeouts and connection errors are retried; a request that cannot be built
    (bad URL, bad header) is rejected: no retry makes it right."""
    name = type(exc).__name__
    if isinstance(exc, requests.Timeout):
        return Outcome("retry", None, f"timeout: {exc}")
    if isinstance(exc, requests.ConnectionError):
        return Outcome("retry", None, f"connection error: {name}: {exc}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader)):
        return Outcome("reject", None, f"{name}: {exc}")
    return Outcome("retry", None, f"{name}: {exc}")


# --- requests ----------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return int(v.timestamp() * 1000)
    return v


def alert_body(alert: Mapping[str, Any]) -> bytes:
    """The request body: the alert as JSON, timestamps as epoch milliseconds."""
    return json.dumps({k: _jsonable(v) for k, v in alert.items()}, sort_keys=True).encode()


def resolve_headers(webhook: WebhookConfig, env: Mapping[str, str], base_dir: Path) -> dict[str, str]:
    """The webhook's static headers plus the secret ones from the environment or files;
    ConfigError naming the webhook, header and variable/file (never the value)."""
    out = dict(webhook.headers)
    for header, var in webhook.headers_from_env.items():
        value = env.get(var)
        if not value:
            raise ConfigError(
                f"actions.webhooks[{webhook.name}].headers_from_env.{header}: environment "
                f"variable {var} is not set"
            )
        out[header] = value
    for header, path in webhook.headers_from_file.items():
        p = path if path.is_absolute() else base_dir / path
        out[header] = read_secret_file(p, f"actions.webhooks[{webhook.name}].headers_from_file.{header}")
    return out


def request_headers(alert_id: str, attempt: int, extra: Mapping[str, str]) -> dict[str, str]:
    """Headers of one attempt: the configured ones, then the ones the service owns."""
    return {
        **extra,
        "Content-Type": "application/json",
        "User-Agent": "sluice-actions",
        IDEMPOTENCY_HEADER: alert_id,
        ATTEMPT_HEADER: str(attempt),
    }


@dataclass
class Delivery:
    """What happened to one alert at one webhook."""

    webhook: str
    url: str
    delivered: bool
    attempts: int
    first_attempt_ms: int
    last: Outcome
    interrupted: bool = False  # stopped (SIGTERM) before an answer worth committing

    @property
    def reason(self) -> str:
        return REASON_REJECTED if self.last.kind == "reject" else REASON_EXHAUSTED


def deliver(
    session: requests.Session,
    webhook: WebhookConfig,
    headers: Mapping[str, str],
    alert_id: str,
    body: bytes,
    *,
    policy: RetryPolicyConfig,
    timeout_s: float,
    stop: threading.Event | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[int, Outcome, float], None] | None = None,
) -> Delivery:
    """POST ``body`` until a 2xx, a rejection, or ``policy.max_attempts``. Waits between
    attempts wake early on ``stop``; then the delivery is ``interrupted`` (the alert is
    not done and its offset must not be committed)."""
    first = int(time.time() * 1000)
    attempt = 0
    while True:
        attempt += 1
        try:
            resp = session.post(
                webhook.url, data=body, headers=request_headers(alert_id, attempt, headers),
                timeout=(timeout_s, timeout_s), allow_redirects=False,
            )
            with resp:
                out = classify_response(resp.status_code, resp.text[:1000],
                                        resp.headers.get("Retry-After"))
        except requests.RequestException as exc:
            out = classify_exception(exc)
        if out.kind != "retry" or attempt >= policy.max_attempts:
            return Delivery(webhook.name, webhook.url, out.kind == "delivered", attempt, first, out)
        delay = backoff_delay(attempt, policy, rng, out.retry_after_s)
        if on_retry is not None:
            on_retry(attempt, out, delay)
        if stop is not None and (stop.is_set() or stop.wait(delay)):
            return Delivery(webhook.name, webhook.url, False, attempt, first, out, interrupted=True)
        if stop is None:
            time.sleep(delay)


# --- the delivery ledger -----------------------------------------------------------------


class DeliveryLedger:
    """SQLite record of (alert id, webhook) pairs a webhook took. Each row is committed
    (WAL, ``synchronous=FULL``: on disk when ``record`` returns) before the service does
    anything else, so a restart does not send it again."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (alert_id TEXT NOT NULL, webhook TEXT NOT NULL, "
            "url TEXT NOT NULL, status INTEGER, attempts INTEGER NOT NULL, delivered_at INTEGER "
            "NOT NULL, source TEXT NOT NULL, PRIMARY KEY (alert_id, webhook))"
        )

    def delivered(self, alert_id: str, webhook: str) -> bool:
        row = self.db.execute("SELECT 1 FROM deliveries WHERE alert_id = ? AND webhook = ?",
                              (alert_id, webhook)).fetchone()
        return row is not None

    def record(self, alert_id: str, d: Delivery, source: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alert_id, d.webhook, d.url, d.last.status, d.attempts, int(time.time() * 1000), source),
        )

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM deliveries").fetchone()[0])

    def close(self) -> None:
        self.db.close()


# --- dead letters ------------------------------------------------------------------------


def dead_letter_record(
    *, delivery: Delivery | None, alert_id: str | None, alert_json: str | None,
    value: bytes | None, topic: str, partition: int, offset: int, service: str,
    reason: str | None = None, error: str | None = None, now_ms: int | None = None,
) -> dict[str, Any]:
    """One ActionDeadLetter (schemas/action-dlq-value/v1.avsc)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return {
        "alert_id": alert_id,
        "webhook": delivery.webhook if delivery else "",
        "url": delivery.url if delivery else "",
        "reason": reason or (delivery.reason if delivery else REASON_UNDECODABLE),
        "status_code": delivery.last.status if delivery else None,
        "last_error": error if error is not None else (delivery.last.error if delivery else ""),
        "attempts": delivery.attempts if delivery else 0,
        "first_attempt_at": delivery.first_attempt_ms if delivery else now,
        "dead_lettered_at": now,
        "alert_json": alert_json,
        "original_value": value,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "service": service,
    }


class ConfluentAvroEncoder:
    """Avro with Confluent framing (magic 0, schema id, body) for a schema whose id is
    known: what the job's sinks write. The subject is the schema folder's
    (``action-dlq-value``), whatever the topic is called (sluice.registry.output_schema)."""

    def __init__(self, schema_str: str, schema_id: int):
        self.schema = fastavro.parse_schema(json.loads(schema_str))
        self.prefix = b"\x00" + struct.pack(">I", schema_id)

    def __call__(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.prefix)
        fastavro.schemaless_writer(buf, self.schema, dict(record))
        return buf.getvalue()


# --- the service -------------------------------------------------------------------------


@dataclass
class Summary:
    alerts: int = 0  # alerts consumed and completed (offset committed)
    delivered: int = 0  # webhook calls that got a 2xx in this run
    already_delivered: int = 0  # skipped: the ledger had them
    dead_lettered: int = 0
    retries: int = 0
    transactions: int = 0
    stopped_by: str = ""
    interrupted_alert: str | None = None
    elapsed_s: float = 0.0
    by_webhook: Counter[str] = field(default_factory=Counter)
    dlq_reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "alerts": self.alerts, "delivered": self.delivered,
            "already_delivered": self.already_delivered, "dead_lettered": self.dead_lettered,
            "retries": self.retries, "transactions": self.transactions,
            "stopped_by": self.stopped_by, "interrupted_alert": self.interrupted_alert,
            "elapsed_s": round(self.elapsed_s, 3), "by_webhook": dict(self.by_webhook),
            "dlq_reasons": dict(self.dlq_reasons),
        }


# Consumer errors that only say the broker is unreachable for now.
_TRANSIENT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
              KafkaError._TIMED_OUT, KafkaError._PARTITION_EOF}


class ActionService:
    def __init__(self, cfg: SluiceConfig, *, env: Mapping[str, str] | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None):
        import os

        a = cfg.actions
        if not a.webhooks:
            raise ConfigError("actions.webhooks is empty: configure at least one webhook")
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        self.headers = {w.name: resolve_headers(w, self.env, cfg.base_dir) for w in a.webhooks}
        self.stop = threading.Event()
        self.on_event = on_event or (lambda kind, data: None)
        self.rng = random.Random()
        self.summary = Summary()

    def request_stop(self, *_: Any) -> None:
        self.stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def instance_id(self) -> str:
        import socket

        return self.cfg.actions.instance_id or socket.gethostname()

    def transactional_id(self) -> str:
        """One per (group, instance): a restarted instance fences its own predecessor;
        instances elsewhere are fenced by the group generation (KIP-447)."""
        return f"{self.cfg.actions.consumer_group}-{self.instance_id()}"

    def run(self, until_idle: float | None = None) -> Summary:
        from sluice.kafka_util import admin, committed_consumer, ensure_topics, transactional_producer
        from sluice.registry import output_schema

        cfg, a = self.cfg, self.cfg.actions
        t0 = time.monotonic()
        topic = cfg.topics.alerts
        if topic not in admin(cfg).list_topics(timeout=15).topics:
            raise ActionsError(f"the alerts topic {topic} does not exist (topics.alerts)")
        ensure_topics(cfg, [cfg.topics.action_dlq])
        dlq_schema = output_schema(cfg, ACTION_DLQ_SCHEMA)
        ledger = DeliveryLedger(cfg.path(a.state_db))
        registry = SchemaRegistryClient(cfg.registry.client_conf())
        deserialize = AvroDeserializer(registry)
        serialize = ConfluentAvroEncoder(dlq_schema.schema_str, dlq_schema.schema_id)
        # Fences an earlier instance with the same group and aborts its open transaction.
        producer = transactional_producer(cfg, self.transactional_id(), ActionsError)
        assigned = threading.Event()
        consumer = committed_consumer(cfg, a.consumer_group, **{
            "group.instance.id": self.instance_id(),
            "session.timeout.ms": a.session_timeout_ms,
            "auto.offset.reset": a.start_from,
        })
        consumer.subscribe([topic], on_assign=lambda c, ps: assigned.set())
        sessions = {w.name: requests.Session() for w in a.webhooks}
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                msg = consumer.poll(0.2)
                now = time.monotonic()
                if msg is None:
                    waited_from = last if assigned.is_set() else t0
                    grace = 0.0 if assigned.is_set() else 30.0
                    if until_idle is not None and now - waited_from > until_idle + grace:
                        self.summary.stopped_by = "idle"
                        break
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() in _TRANSIENT and not err.fatal():
                        continue
                    raise ActionsError(f"consumer error on {topic}: {err}")
                last = now
                done = self._process(msg, deserialize, serialize, ledger, sessions, producer,
                                     consumer)
                if not done:
                    break
                last = time.monotonic()
            if self.stop.is_set() and not self.summary.stopped_by:
                self.summary.stopped_by = "signal"
        finally:
            for s in sessions.values():
                s.close()
            consumer.close()
            producer.flush(10)
            ledger.close()
            self.summary.elapsed_s = time.monotonic() - t0
        return self.summary

    def _process(self, msg: Message, deserialize: AvroDeserializer,
                 serialize: ConfluentAvroEncoder, ledger: DeliveryLedger,
                 sessions: dict[str, requests.Session], producer: Producer,
                 consumer: Consumer) -> bool:
        """Deliver one alert to every webhook, then commit its dead letters and its
        offset in one transaction. False if stopped before the alert was done."""
        a, s = self.cfg.actions, self.summary
        src = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        common = {"value": msg.value(), "topic": msg.topic(), "partition": msg.partition(),
                  "offset": msg.offset(), "service": a.consumer_group}
        dead: list[dict[str, Any]] = []
        try:
            alert = deserialize(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
            if not isinstance(alert, dict) or not alert.get("alert_id"):
                raise ValueError("not an Alert record (no alert_id)")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a dead letter
            dead.append(dead_letter_record(delivery=None, alert_id=None, alert_json=None,
                                           reason=REASON_UNDECODABLE,
                                           error=f"{type(exc).__name__}: {exc}", **common))
            alert = None
        if alert is not None:
            alert_id = str(alert["alert_id"])
            body = alert_body(alert)
            for w in a.webhooks:
                if ledger.delivered(alert_id, w.name):
                    s.already_delivered += 1
                    self.on_event("already", {"alert_id": alert_id, "webhook": w.name})
                    continue

                def on_retry(n: int, out: Outcome, delay: float, _w: str = w.name) -> None:
                    s.retries += 1
                    self.on_event("retry", {"alert_id": alert_id, "webhook": _w, "attempt": n,
                                            "error": out.error, "delay_s": round(delay, 3)})

                d = deliver(sessions[w.name], w, self.headers[w.name], alert_id, body,
                            policy=a.retry, timeout_s=a.timeout_s, stop=self.stop, rng=self.rng,
                            on_retry=on_retry)
                if d.delivered:
                    ledger.record(alert_id, d, src)  # before anything else can fail
                    s.delivered += 1
                    s.by_webhook[w.name] += 1
                    self.on_event("delivered", {"alert_id": alert_id, "webhook": w.name,
                                                "attempts": d.attempts})
                elif d.interrupted:
                    s.interrupted_alert = alert_id
                    self.on_event("interrupted", {"alert_id": alert_id, "webhook": w.name})
                    return False
                else:
                    dead.append(dead_letter_record(delivery=d, alert_id=alert_id,
                                                   alert_json=body.decode(), **common))
                    self.on_event("dead-lettered", {"alert_id": alert_id, "webhook": w.name,
                                                    "reason": d.reason, "error": d.last.error})
                if self.stop.is_set() and w is not a.webhooks[-1]:
                    s.interrupted_alert = alert_id
                    return False
        self._commit(msg, dead, serialize, producer, consumer)
        s.alerts += 1
        s.dead_lettered += len(dead)
        for d in dead:
            s.dlq_reasons[d["reason"]] += 1
        return True

    def _commit(self, msg: Message, dead: list[dict[str, Any]], serialize: ConfluentAvroEncoder,
                producer: Producer, consumer: Consumer) -> None:
        try:
            producer.begin_transaction()
            for d in dead:
                key = (d["alert_id"] or "").encode() or None
                producer.produce(self.cfg.topics.action_dlq, key=key, value=serialize(d))
            producer.send_offsets_to_transaction(
                [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        except KafkaException as exc:
            try:
                producer.abort_transaction(10)
            except KafkaException:
                pass
            raise ActionsError(
                f"could not commit alert {msg.topic()}/{msg.partition()}/{msg.offset()}: "
                f"{exc.args[0]}. Nothing of it was committed; a restart redoes it (webhooks that "
                "already took it are skipped by the ledger)") from exc
        self.summary.transactions += 1
