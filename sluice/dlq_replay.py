"""`sluice dlq replay`: re-inject dead letters into their source topic after a fix,
each one at most once.

How "at most once per dead letter" holds, crashes and concurrent runs included:

* The ledger topic ``topics.dlq_replays`` (compacted) holds one entry per replayed
  dead letter, keyed ``<dlq topic>/<dlq partition>/<dlq offset>``, with where the
  replayed record landed.
* Records and their ledger entries are written in the same Kafka transaction by a
  transactional producer whose ``transactional.id`` is
  ``<job.transactional_id_prefix>-dlq-replay``: both commit or neither does.
* ``init_transactions()`` runs *before* the ledger is read. It fences any earlier
  producer with the same id and completes (commits or aborts) its open transaction,
  so the read_committed ledger read that follows sees every replay that will ever
  commit under that id. A crashed run's open transaction is aborted by the next run.
* Two replays running at the same time with the same config fence each other: the
  later one's ``init_transactions()`` makes the earlier one fail at its next
  transactional call (``ReplayFenced``); whatever the earlier one had committed is
  in the ledger and skipped by the later one. Replays with different
  ``transactional_id_prefix`` values but the same ledger are not fenced against each
  other: run one replay per ledger at a time.

Records are replayed in batches of ``batch_size`` per transaction; a failure aborts
the current batch only, earlier batches stay committed (and ledgered).
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import SluiceConfig
from sluice.kafka_util import admin, ensure_topics, read_to_end, topic_config

# Headers every replayed record carries.
HEADER_REPLAY_OF = "sluice.replay-of"
HEADER_REASON = "sluice.dead-lettered-reason"
# Only with timestamp="now": the original record timestamp (epoch ms, decimal).
HEADER_SOURCE_TS = "sluice.source-timestamp"

# Why a selected dead letter is not replayed.
SKIP_ALREADY = "already-replayed"
SKIP_TOMBSTONE = "tombstone"
SKIP_AGAIN = "dead-lettered-again-after-replay"
SKIP_NO_TOPIC = "target-topic-missing"
SKIP_TS_RANGE = "timestamp-rejected-by-topic"
SKIP_TS_RETENTION = "timestamp-older-than-retention"
SKIP_LIMIT = "over-limit"

TimestampPolicy = Literal["original", "now"]


class ReplayError(RuntimeError):
    """The replay could not run; nothing of the failed batch was committed."""


class ReplayFenced(ReplayError):
    """Another replay with the same transactional.id started and fenced this one."""


# --- selection ------------------------------------------------------------------------

_REL = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_when(text: str, now_ms: int | None = None) -> int:
    """A point in time as epoch milliseconds, from

    * a duration ago: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``;
    * epoch milliseconds: ``1767225600000``;
    * ISO 8601: ``2026-01-01``, ``2026-01-01T12:00``, ``2026-01-01T12:00:00+02:00``
      (without an offset: UTC).
    """
    s = text.strip()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    m = _REL.match(s)
    if m:
        return now - int(m.group(1)) * _UNIT_MS[m.group(2)]
    if s.isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: use a duration ago (30m, 2h, 7d), epoch "
            "milliseconds, or ISO 8601 (2026-01-01T12:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class Selection:
    """Which dead letters to replay. Empty fields select everything."""

    reasons: frozenset[str] = frozenset()
    source_topic: str | None = None
    # On the DLQ topic itself: one partition, and an inclusive offset range in it.
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    # dead_lettered_at in [since_ms, until_ms).
    since_ms: int | None = None
    until_ms: int | None = None
    # Replay at most this many (counted after skipping already-replayed ones, so
    # repeated limited runs walk through the DLQ).
    limit: int | None = None
    include_tombstones: bool = False

    def __post_init__(self) -> None:
        if (self.from_offset is not None or self.to_offset is not None) and self.partition is None:
            raise ValueError("--from-offset/--to-offset need --partition: offsets are per partition")
        for name in ("partition", "from_offset", "to_offset"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {v}")
        if (self.from_offset is not None and self.to_offset is not None
                and self.from_offset > self.to_offset):
            raise ValueError(f"--from-offset {self.from_offset} is after --to-offset {self.to_offset}")
        if self.since_ms is not None and self.until_ms is not None and self.since_ms >= self.until_ms:
            raise ValueError("--since must be before --until")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")

    @classmethod
    def parse(
        cls,
        *,
        reasons: Iterable[str] = (),
        source_topic: str | None = None,
        partition: int | None = None,
        from_offset: int | None = None,
        to_offset: int | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        include_tombstones: bool = False,
        now_ms: int | None = None,
    ) -> Selection:
        """From command-line style values (times as accepted by :func:`parse_when`)."""
        return cls(
            reasons=frozenset(r.strip() for r in reasons if r.strip()),
            source_topic=source_topic,
            partition=partition,
            from_offset=from_offset,
            to_offset=to_offset,
            since_ms=parse_when(since, now_ms) if since else None,
            until_ms=parse_when(until, now_ms) if until else None,
            limit=limit,
            include_tombstones=include_tombstones,
        )

    def matches(self, d: DeadLetter) -> bool:
        if self.reasons and d.reason not in self.reasons:
            return False
        if self.source_topic is not None and d.source_topic != self.source_topic:
            return False
        if self.partition is not None and d.dlq_partition != self.partition:
            return False
        if self.from_offset is not None and d.dlq_offset < self.from_offset:
            return False
        if self.to_offset is not None and d.dlq_offset > self.to_offset:
            return False
        if self.since_ms is not None and d.dead_lettered_at_ms < self.since_ms:
            return False
        return self.until_ms is None or d.dead_lettered_at_ms < self.until_ms


# --- dead letters and the ledger ------------------------------------------------------


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


@dataclass(frozen=True)
class DeadLetter:
    """One DLQ record, decoded (DeadLetter v1 or v2), with its own position."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    fields: dict[str, Any]

    @property
    def ledger_key(self) -> str:
        return ledger_key(self.dlq_topic, self.dlq_partition, self.dlq_offset)

    @property
    def reason(self) -> str:
        return str(self.fields["reason"])

    @property
    def source_topic(self) -> str:
        return str(self.fields["source_topic"])

    @property
    def source_partition(self) -> int:
        return int(self.fields["source_partition"])

    @property
    def source_offset(self) -> int:
        return int(self.fields["source_offset"])

    @property
    def source_timestamp_ms(self) -> int:
        return _ms(self.fields["source_timestamp"])

    @property
    def dead_lettered_at_ms(self) -> int:
        return _ms(self.fields["dead_lettered_at"])

    @property
    def value(self) -> bytes | None:
        return self.fields["original_value"]  # type: ignore[no-any-return]

    @property
    def key(self) -> bytes | None:
        # DeadLetter v1 has no original_key.
        return self.fields.get("original_key")


def ledger_key(dlq_topic: str, partition: int, offset: int) -> str:
    return f"{dlq_topic}/{partition}/{offset}"


def read_dlq(
    cfg: SluiceConfig, *, partition: int | None = None, from_offset: int | None = None,
    max_wait: float = 120.0,
) -> list[DeadLetter]:
    """Every committed dead letter on ``topics.dlq`` (optionally from one partition and
    offset on), decoded with the writer schema its id names."""
    topic = cfg.topics.dlq
    parts = None if partition is None else [partition]
    start = None if partition is None or from_offset is None else {partition: from_offset}
    recs = read_to_end(cfg, topic, start=start, partitions=parts, max_wait=max_wait)
    out = []
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        for r in recs:
            if r.value is None:
                continue
            out.append(DeadLetter(topic, r.partition, r.offset, de(r.value, None)))
    return out


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    target_topic: str
    target_partition: int
    target_offset: int
    replayed_at_ms: int
    who: str

    def to_json(self) -> bytes:
        return json.dumps({
            "target_topic": self.target_topic, "target_partition": self.target_partition,
            "target_offset": self.target_offset, "replayed_at": self.replayed_at_ms, "who": self.who,
        }, sort_keys=True).encode()

    @classmethod
    def from_record(cls, key: bytes, value: bytes) -> LedgerEntry:
        d = json.loads(value)
        return cls(key.decode(), d["target_topic"], int(d["target_partition"]),
                   int(d["target_offset"]), int(d["replayed_at"]), str(d.get("who", "?")))


def read_ledger(cfg: SluiceConfig, max_wait: float = 120.0) -> dict[str, LedgerEntry]:
    """The committed ledger: dead-letter key → where and when it was replayed."""
    out: dict[str, LedgerEntry] = {}
    for r in read_to_end(cfg, cfg.topics.dlq_replays, max_wait=max_wait):
        if r.key is None:
            continue
        if r.value is None:  # a deleted entry (tombstone): replayable again
            out.pop(r.key.decode(), None)
            continue
        e = LedgerEntry.from_record(r.key, r.value)
        out.setdefault(e.key, e)  # the first replay is the one that counts
    return out


# --- the report -----------------------------------------------------------------------


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    topic: str
    partition: int
    offset: int  # -1 in a dry run
    timestamp_ms: int


@dataclass
class ReplayReport:
    dlq_topic: str
    ledger_topic: str
    dry_run: bool
    selected: int = 0
    replayed: list[Replayed] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)
    transactions: int = 0
    warnings: list[str] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(why for _, why in self.skipped).most_common())

    def summary(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.dlq_topic, "ledger_topic": self.ledger_topic, "dry_run": self.dry_run,
            "selected": self.selected,
            ("would_replay" if self.dry_run else "replayed"): len(self.replayed),
            "skipped": self.skipped_by_reason(), "transactions": self.transactions,
            "warnings": self.warnings,
        }


# --- the replay -----------------------------------------------------------------------


def transactional_id(cfg: SluiceConfig) -> str:
    return f"{cfg.job.transactional_id_prefix}-dlq-replay"


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class _TopicInfo:
    partitions: int
    ts_before_max_ms: int | None  # None: no limit (LogAppendTime, or Long.MAX_VALUE)
    ts_after_max_ms: int | None
    retention_ms: int | None  # None: infinite or compacted


def _topic_info(cfg: SluiceConfig, topic: str, cache: dict[str, _TopicInfo | None]) -> _TopicInfo | None:
    if topic in cache:
        return cache[topic]
    md = admin(cfg).list_topics(topic, timeout=15).topics.get(topic)
    if md is None or md.error is not None:
        cache[topic] = None
        return None
    conf = topic_config(cfg, topic)
    long_max = 2**63 - 1

    def limit(name: str) -> int | None:
        v = int(conf.get(name, long_max))
        return None if v >= long_max or v < 0 else v

    log_append = conf.get("message.timestamp.type") == "LogAppendTime"
    deletes = "delete" in conf.get("cleanup.policy", "delete")
    info = _TopicInfo(
        partitions=len(md.partitions),
        ts_before_max_ms=None if log_append else limit("message.timestamp.before.max.ms"),
        ts_after_max_ms=None if log_append else limit("message.timestamp.after.max.ms"),
        retention_ms=limit("retention.ms") if deletes and not log_append else None,
    )
    cache[topic] = info
    return info


# A replayed record must outlive the run that replays it by at least this much
# before time-based retention may delete it.
RETENTION_MARGIN_MS = 3_600_000


def _timestamp_problem(ts: int, now: int, info: _TopicInfo) -> str | None:
    if info.ts_before_max_ms is not None and ts < now - info.ts_before_max_ms:
        return SKIP_TS_RANGE
    if info.ts_after_max_ms is not None and ts > now + info.ts_after_max_ms:
        return SKIP_TS_RANGE
    if info.retention_ms is not None and ts < now - info.retention_ms + RETENTION_MARGIN_MS:
        return SKIP_TS_RETENTION
    return None


def replay_dead_letters(
    cfg: SluiceConfig,
    selection: Selection | None = None,
    *,
    to_topic: str | None = None,
    timestamp: TimestampPolicy = "original",
    again: bool = False,
    dry_run: bool = False,
    batch_size: int = 500,
    on_progress: Callable[[int, int], None] | None = None,
    max_wait: float = 120.0,
) -> ReplayReport:
    """Replay the selected dead letters of ``topics.dlq`` into their source topic
    (or ``to_topic``), each at most once across runs (see the module docstring).

    * ``timestamp="original"`` (default): the record keeps the original record
      timestamp (the pipeline compares event time with it, so a fresh one could make
      old readings fail again as ts-out-of-range). A dead letter whose timestamp the
      target topic would reject (``message.timestamp.before/after.max.ms``) or delete
      at once (older than ``retention.ms`` minus an hour) is skipped with that reason;
      ``timestamp="now"`` replays it with the replay time instead and keeps the
      original in the ``sluice.source-timestamp`` header.
    * ``again``: also replay dead letters that are themselves replays that failed
      again (their source position is a target in the ledger); skipped by default,
      so that replaying before the fix does not loop.
    * ``dry_run``: plan only; reads the ledger without fencing a running replay.
    * ``on_progress(done, total)`` is called after each record is handed to the
      producer; if it raises, the open transaction is aborted and the error re-raised.
    """
    sel = selection or Selection()
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ledger_topic = cfg.topics.dlq_replays
    report = ReplayReport(cfg.topics.dlq, ledger_topic, dry_run)
    if not dry_run:
        ensure_topics(cfg, [ledger_topic])
    ledger_exists = _exists(cfg, ledger_topic)
    policy = topic_config(cfg, ledger_topic).get("cleanup.policy", "") if ledger_exists else "compact"
    if "compact" not in policy:
        report.warnings.append(
            f"ledger topic {ledger_topic} has cleanup.policy={policy}: entries older than its "
            "retention will be forgotten and their dead letters replayed again"
        )

    letters = [d for d in read_dlq(cfg, partition=sel.partition, from_offset=sel.from_offset,
                                   max_wait=max_wait) if sel.matches(d)]
    report.selected = len(letters)

    producer: Producer | None = None
    if not dry_run and letters:
        producer = Producer({
            **cfg.kafka.client_properties(),
            "transactional.id": transactional_id(cfg),
            # Short: an open transaction left by a killed replay blocks read_committed
            # readers of the source topic until the broker aborts it (or the next run does).
            "transaction.timeout.ms": min(60_000, cfg.kafka.transaction_timeout_ms),
            "enable.idempotence": True,
            "linger.ms": 5,
        })
        try:
            # Before reading the ledger: fences and completes earlier runs (see above).
            producer.init_transactions(30)
        except KafkaException as exc:
            raise ReplayError(f"cannot start a transaction as {transactional_id(cfg)}: {exc}") from exc

    try:
        ledger = read_ledger(cfg, max_wait=max_wait) if ledger_exists else {}
    except Exception:
        _close(producer)
        raise
    targets = {(e.target_topic, e.target_partition, e.target_offset) for e in ledger.values()}

    now = int(time.time() * 1000)
    infos: dict[str, _TopicInfo | None] = {}
    plan: list[tuple[DeadLetter, str, int | None, int]] = []
    for d in letters:
        topic = to_topic or d.source_topic
        if d.ledger_key in ledger:
            report.skipped.append((d, SKIP_ALREADY))
            continue
        if not again and (d.source_topic, d.source_partition, d.source_offset) in targets:
            report.skipped.append((d, SKIP_AGAIN))
            continue
        if d.value is None and not sel.include_tombstones:
            report.skipped.append((d, SKIP_TOMBSTONE))
            continue
        info = _topic_info(cfg, topic, infos)
        if info is None:
            report.skipped.append((d, SKIP_NO_TOPIC))
            continue
        ts = d.source_timestamp_ms if timestamp == "original" else now
        problem = _timestamp_problem(ts, now, info) if timestamp == "original" else None
        if problem is not None:
            report.skipped.append((d, problem))
            continue
        if sel.limit is not None and len(plan) >= sel.limit:
            report.skipped.append((d, SKIP_LIMIT))
            continue
        # Same partition as the original when replaying into its own topic: per-key
        # order and partitioning stay as the original producer chose, whatever its
        # partitioner (librdkafka's CRC32 and Java's murmur2 differ). Elsewhere the key decides.
        same = to_topic is None or to_topic == d.source_topic
        partition = d.source_partition if same and d.source_partition < info.partitions else None
        plan.append((d, topic, partition, ts))

    if dry_run or producer is None:
        report.replayed = [Replayed(d, t, p if p is not None else -1, -1, ts) for d, t, p, ts in plan]
        _close(producer)
        return report

    who = _who()
    try:
        for start in range(0, len(plan), batch_size):
            batch = plan[start:start + batch_size]
            report.replayed += _replay_batch(producer, cfg, batch, who, timestamp, start,
                                             len(plan), on_progress)
            report.transactions += 1
    finally:
        _close(producer)
    return report


def _exists(cfg: SluiceConfig, topic: str) -> bool:
    return topic in admin(cfg).list_topics(timeout=15).topics


def _close(producer: Producer | None) -> None:
    if producer is not None:
        producer.flush(10)


def _raise_txn(exc: KafkaException, what: str) -> None:
    err = exc.args[0]
    if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
        raise ReplayFenced(
            f"{what}: fenced by another replay with the same transactional.id (or a fatal "
            f"producer error): {err}. Nothing of this batch was committed; rerun when the "
            "other replay has finished, already replayed dead letters are skipped"
        ) from exc
    raise ReplayError(f"{what}: {err}") from exc


def _replay_batch(
    producer: Producer,
    cfg: SluiceConfig,
    batch: list[tuple[DeadLetter, str, int | None, int]],
    who: str,
    timestamp: TimestampPolicy,
    done_before: int,
    total: int,
    on_progress: Callable[[int, int], None] | None,
) -> list[Replayed]:
    delivered: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def on_delivery(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{batch[i][0].ledger_key}: {err}")
            else:
                delivered[i] = (msg.partition(), msg.offset())
        return cb

    try:
        producer.begin_transaction()
    except KafkaException as exc:
        _raise_txn(exc, "begin transaction")
    try:
        for i, (d, topic, partition, ts) in enumerate(batch):
            headers = [(HEADER_REPLAY_OF, d.ledger_key.encode()), (HEADER_REASON, d.reason.encode())]
            if timestamp == "now":
                headers.append((HEADER_SOURCE_TS, str(d.source_timestamp_ms).encode()))
            kwargs: dict[str, Any] = {"partition": partition} if partition is not None else {}
            _produce(producer, topic, key=d.key, value=d.value, headers=headers, timestamp=ts,
                     on_delivery=on_delivery(i), **kwargs)
            if on_progress is not None:
                on_progress(done_before + i + 1, total)
        # Delivered (not yet committed) records have offsets: the ledger names them.
        producer.flush()
        if errors or len(delivered) != len(batch):
            raise ReplayError(f"{len(errors)} record(s) not written: {'; '.join(errors[:3])}")
        replayed_at = int(time.time() * 1000)
        out = []
        for i, (d, topic, _, ts) in enumerate(batch):
            p, off = delivered[i]
            entry = LedgerEntry(d.ledger_key, topic, p, off, replayed_at, who)
            _produce(producer, cfg.topics.dlq_replays, key=d.ledger_key.encode(),
                     value=entry.to_json())
            out.append(Replayed(d, topic, p, off, ts))
        producer.commit_transaction()
    except BaseException as exc:
        try:
            producer.abort_transaction()
        except KafkaException as abort_exc:
            if isinstance(exc, KafkaException):
                _raise_txn(exc, "commit")
            _raise_txn(abort_exc, "abort after a failure")
        if isinstance(exc, KafkaException):
            _raise_txn(exc, "replay")
        raise
    return out


def _produce(producer: Producer, topic: str, **kwargs: Any) -> None:
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.1)
