"""The online feature store: the latest FeatureVector per device and window, in Redis.

The Flink job writes FeatureVector records exactly-once to ``topics.features``; nothing in
the job touches Redis. This module's :class:`Materializer` (``sluice features
materialize``) consumes that topic ``read_committed`` in a consumer group, decodes each
record with confluent-kafka's AvroDeserializer (writer schema from the registry) and
upserts it with one Lua script per record, pipelined per batch:

* the script writes only if the incoming ``(window_end, window_start, computed_at)`` is
  newer than the stored one, so duplicates, replays and out-of-order windows never
  regress the store (a late firing of the same window has a later ``computed_at``);
* every write sets the TTL (``feature_store.ttl_s``) of the entry and of the device's
  window index;
* the batch's offsets are committed to Kafka only after Redis acknowledged the batch.

While Redis fails the consumer is paused and the batch is retried with bounded
exponential backoff, for as long as it takes; Kafka keeps the records. Redis also holds,
per partition, the next offset it has absorbed (``<prefix>m:offsets``): when that entry is
missing although the group had already committed past the partition's start, Redis lost
its data (a restart without persistence, a FLUSHALL, a failover to an empty replica) and
the partition is read again from the beginning. docs/feature-store.md has the details.

Keys (``<prefix>`` is ``feature_store.key_prefix``)::

    <prefix>v:<device_id>:<window>   hash: the vector's fields, features as f:<name>
    <prefix>d:<device_id>            set: the device's window names
    <prefix>m:offsets                hash: "<topic>:<partition>" -> next offset absorbed
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sluice.config import FeatureStoreConfig, SluiceConfig

if TYPE_CHECKING:
    import redis
    from confluent_kafka import Consumer, Message

log = logging.getLogger("sluice.feature_store")

#: KEYS[1] vector hash, KEYS[2] device index set.
#: ARGV: window_end, window_start, computed_at (epoch ms), ttl (ms), window name, then
#: field/value pairs of the vector. Returns 1 if written, 0 if the stored vector is as
#: new or newer (the incoming one is stale or a duplicate: nothing changes, TTL included).
UPSERT_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'window_end', 'window_start', 'computed_at')
local ne, ns, nc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if cur[1] then
  local e, s, c = tonumber(cur[1]), tonumber(cur[2]), tonumber(cur[3]) or 0
  if ne < e or (ne == e and (ns < s or (ns == s and nc <= c))) then
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'window_end', ARGV[1], 'window_start', ARGV[2],
           'computed_at', ARGV[3], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

#: KEYS[1] the absorbed-offsets hash; ARGV: triples (field, required, next). A field moves
#: to max(current, next) only if it already holds >= required (required -1: always).
#: Returns {advanced 0/1, previous or -1} per triple.
ADVANCE_LUA = """
local out = {}
for i = 1, #ARGV, 3 do
  local prev = redis.call('HGET', KEYS[1], ARGV[i])
  local p = tonumber(prev or '-1')
  local req, nxt = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if req < 0 or (prev and p >= req) then
    if nxt > p then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  out[#out + 1] = p
end
return out
"""

FEATURE_FIELD = "f:"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FeatureStoreError(RuntimeError):
    """A feature-store operation failed; the message is meant for the user as-is."""


class StoreUnavailable(FeatureStoreError):
    """Redis cannot be reached (or refuses writes for now)."""


class UnknownDevice(FeatureStoreError):
    """The store holds nothing for this device (or window)."""


# =======================================================================================
# Values
# =======================================================================================
def epoch_ms(v: Any) -> int:
    """Epoch milliseconds of an Avro timestamp-millis as fastavro returns it (aware
    datetime) or as a number; exact (no float rounding)."""
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return (v - _EPOCH) // timedelta(milliseconds=1)
    return int(v)


def order_key(vec: Mapping[str, Any]) -> tuple[int, int, int]:
    """What "newer" means for one (device, window): later end, then later start, then a
    later computation (a late firing of the same window)."""
    return (epoch_ms(vec["window_end"]), epoch_ms(vec["window_start"]),
            epoch_ms(vec.get("computed_at") or 0))


def _num(v: float) -> str:
    return repr(float(v))  # round-trips exactly; nan/inf as 'nan'/'inf'


@dataclass(frozen=True)
class StoredVector:
    """One (device, window) entry as read back from Redis."""

    device_id: str
    window: str
    window_kind: str
    site_id: str | None
    window_start: int
    window_end: int
    event_count: int
    computed_at: int
    materialized_at: int
    feature_spec_version: str
    source: str
    features: dict[str, float]
    ttl_left_s: float | None  # None: no expiry

    def age_s(self, now_ms: int | None = None) -> float:
        """Seconds since the window ended (event time against the wall clock)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return (now - self.window_end) / 1000

    def to_dict(self, now_ms: int | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["age_s"] = round(self.age_s(now_ms), 3)
        d["features"] = {k: (v if math.isfinite(v) else str(v)) for k, v in self.features.items()}
        return d


# =======================================================================================
# The store (Redis side)
# =======================================================================================
def redis_client(fs: FeatureStoreConfig) -> redis.Redis:
    import redis

    return redis.Redis.from_url(
        fs.redis_url,
        username=fs.username,
        password=fs.password.get_secret_value() if fs.password is not None else None,
        socket_timeout=fs.socket_timeout_s,
        socket_connect_timeout=fs.socket_timeout_s,
        decode_responses=True,
    )


def _transient(exc: BaseException) -> bool:
    """A Redis error that passes by itself: connection lost or refused, timeouts, a
    server still loading its data, out of memory, a replica that is read-only."""
    import redis.exceptions as rex

    if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
        return True  # includes BusyLoadingError
    if isinstance(exc, rex.ResponseError):
        msg = str(exc).upper()
        return msg.startswith(("OOM", "MISCONF", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN"))
    return False


class FeatureStore:
    """Reads and idempotent writes of the online store (one Redis)."""

    def __init__(self, fs: FeatureStoreConfig, client: redis.Redis | None = None):
        self.fs = fs
        self.r = client if client is not None else redis_client(fs)
        self.upsert_script = self.r.register_script(UPSERT_LUA)
        self.advance_script = self.r.register_script(ADVANCE_LUA)

    # -- keys ---------------------------------------------------------------------------
    def vector_key(self, device_id: str, window: str) -> str:
        # Window names have no ':' (docs/features.md), so the key is unambiguous.
        return f"{self.fs.key_prefix}v:{device_id}:{window}"

    def index_key(self, device_id: str) -> str:
        return f"{self.fs.key_prefix}d:{device_id}"

    @property
    def offsets_key(self) -> str:
        return f"{self.fs.key_prefix}m:offsets"

    # -- writing ------------------------------------------------------------------------
    def _args(self, vec: Mapping[str, Any], now_ms: int, source: str) -> tuple[list[str], list[Any]]:
        device, window = str(vec["device_id"]), str(vec["window"])
        end, start, computed = order_key(vec)
        pairs: list[Any] = [
            "device_id", device, "window", window,
            "window_kind", str(vec.get("window_kind") or "OTHER"),
            "event_count", int(vec.get("event_count") or 0),
            "feature_spec_version", str(vec.get("feature_spec_version") or ""),
            "materialized_at", now_ms, "source", source,
        ]
        if vec.get("site_id") is not None:
            pairs += ["site_id", str(vec["site_id"])]
        for name, value in sorted((vec.get("features") or {}).items()):
            pairs += [FEATURE_FIELD + name, _num(value)]
        args = [end, start, computed, self.fs.ttl_s * 1000, window, *pairs]
        return [self.vector_key(device, window), self.index_key(device)], args

    def upsert(self, vec: Mapping[str, Any], *, source: str = "", now_ms: int | None = None) -> bool:
        """Write one vector if it is newer than the stored one; True if written."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        keys, args = self._args(vec, now, source)
        return bool(self.upsert_script(keys=keys, args=args))

    def upsert_batch(
        self, items: list[tuple[Mapping[str, Any], str]], advance: Mapping[str, tuple[int, int]],
    ) -> tuple[list[bool], dict[str, tuple[bool, int | None]]]:
        """One round trip: upsert every ``(vector, source)`` in order, then advance the
        absorbed offset of each partition in ``advance`` (``partition -> (required,
        next)``): only if Redis already absorbed at least ``required`` (-1: nothing
        required, the batch starts at the partition's beginning). Returns (written? per
        item, partition -> (advanced?, absorbed offset before; None if none))."""
        now = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        for vec, source in items:
            keys, args = self._args(vec, now, source)
            self.upsert_script(keys=keys, args=args, client=pipe)
        parts = list(advance)
        if parts:
            flat = [x for p in parts for x in (p, advance[p][0], advance[p][1])]
            self.advance_script(keys=[self.offsets_key], args=flat, client=pipe)
        res = pipe.execute()
        moved: dict[str, tuple[bool, int | None]] = {}
        if parts:
            out = res[-1]
            for i, p in enumerate(parts):
                ok, prev = int(out[2 * i]), int(out[2 * i + 1])
                moved[p] = (bool(ok), prev if prev >= 0 else None)
        return [bool(x) for x in res[: len(items)]], moved

    def absorbed(self, partitions: list[str]) -> dict[str, int | None]:
        if not partitions:
            return {}
        vals = self.r.hmget(self.offsets_key, partitions)
        return {p: (int(v) if v is not None else None) for p, v in zip(partitions, vals, strict=True)}

    # -- reading ------------------------------------------------------------------------
    def get(self, device_id: str, window: str | None = None) -> list[StoredVector]:
        """The device's vectors (one per window, sorted by window name); UnknownDevice if
        there are none, StoreUnavailable if Redis cannot be reached."""
        import redis.exceptions as rex

        try:
            windows = [window] if window else sorted(self.r.smembers(self.index_key(device_id)))
            pipe = self.r.pipeline(transaction=False)
            for w in windows:
                pipe.hgetall(self.vector_key(device_id, w))
                pipe.pttl(self.vector_key(device_id, w))
            res = pipe.execute() if windows else []
        except rex.RedisError as exc:
            raise StoreUnavailable(
                f"the feature store's Redis at {self.fs.redis_url} is unreachable: {exc}"
            ) from None
        out = []
        for i, w in enumerate(windows):
            h, pttl = res[2 * i], res[2 * i + 1]
            if not h:
                continue  # expired since the index was written
            out.append(_stored(h, w, pttl))
        if not out:
            what = f"window {window!r} of device {device_id!r}" if window else f"device {device_id!r}"
            raise UnknownDevice(
                f"the feature store has no {what} (key prefix {self.fs.key_prefix!r} at "
                f"{self.fs.redis_url}): never materialised, or expired after "
                f"feature_store.ttl_s = {self.fs.ttl_s} s")
        return out

    def clear(self) -> int:
        """Delete every key under the prefix (the absorbed offsets included): what to do
        when the features topic is deleted and created again. Returns the keys deleted."""
        n = 0
        batch: list[str] = []
        for k in self.r.scan_iter(match=_glob_escape(self.fs.key_prefix) + "*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                n += int(self.r.unlink(*batch))
                batch = []
        if batch:
            n += int(self.r.unlink(*batch))
        return n

    def devices(self, limit: int = 1000) -> list[str]:
        """Device ids with an index entry (SCAN; for listings, not the hot path)."""
        pre = self.index_key("")
        out = []
        for k in self.r.scan_iter(match=_glob_escape(pre) + "*", count=500):
            out.append(k[len(pre):])
            if len(out) >= limit:
                break
        return sorted(out)


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def _stored(h: Mapping[str, str], window: str, pttl: int) -> StoredVector:
    feats = {k[len(FEATURE_FIELD):]: float(v) for k, v in h.items() if k.startswith(FEATURE_FIELD)}
    return StoredVector(
        device_id=h.get("device_id", ""), window=h.get("window", window),
        window_kind=h.get("window_kind", "OTHER"), site_id=h.get("site_id"),
        window_start=int(h["window_start"]), window_end=int(h["window_end"]),
        event_count=int(h.get("event_count", 0)), computed_at=int(h.get("computed_at", 0)),
        materialized_at=int(h.get("materialized_at", 0)),
        feature_spec_version=h.get("feature_spec_version", ""), source=h.get("source", ""),
        features=feats, ttl_left_s=(pttl / 1000 if pttl is not None and pttl >= 0 else None),
    )


# =======================================================================================
# The materializer (Kafka -> Redis)
# =======================================================================================
@dataclass
class Summary:
    read: int = 0  # committed records consumed (each counted once per time it was read)
    written: int = 0  # upserts that changed the store
    stale: int = 0  # upserts the script refused: as old as, or older than, the stored one
    undecodable: int = 0  # not a FeatureVector (logged with its position), skipped
    tombstones: int = 0  # null values, skipped
    batches: int = 0  # Redis pipelines that succeeded (and were committed)
    redis_retries: int = 0  # failed attempts at a batch (Redis or registry unavailable)
    outage_s: float = 0.0  # total time spent waiting for Redis / the registry
    store_resets: int = 0  # partitions re-read because Redis had lost what it absorbed
    commit_failures: int = 0  # Kafka offset commits that failed (retried by the next one)
    elapsed_s: float = 0.0
    stopped_by: str = ""  # end-offsets | signal | max-wait | idle
    offsets: dict[str, int] = field(default_factory=dict)  # committed, "topic:partition"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outage_s"] = round(self.outage_s, 3)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


class _Retry(Exception):
    """The batch must be tried again later (Redis or the registry is unavailable)."""


def _pkey(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class Materializer:
    """Consumes topics.features and keeps the store up to date; see the module doc."""

    def __init__(self, cfg: SluiceConfig, *,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 store: FeatureStore | None = None):
        self.cfg = cfg
        self.fs = cfg.feature_store
        self.store = store or FeatureStore(self.fs)
        self.topic = cfg.topics.features
        self.stop = threading.Event()
        self.on_event = on_event or (lambda kind, data: None)
        self.summary = Summary()
        self._assigned: set[int] = set()
        self._eof: set[int] = set()
        # Partitions whose state in Redis must be checked before reading on (just
        # assigned, or Redis was away).
        self._audit: set[int] = set()
        # Per partition: the position the next batch starts at, once known, and what
        # Redis must already have absorbed for that batch to extend it (-1: nothing,
        # the partition is read from its beginning).
        self._required: dict[int, int] = {}
        self._pending: list[Message] = []

    def request_stop(self, *_: Any) -> None:
        self.stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- Kafka --------------------------------------------------------------------------
    def _consumer(self) -> Consumer:
        from confluent_kafka import Consumer

        from sluice.auth import fail_fast

        return Consumer({
            **fail_fast(self.cfg.kafka.client_properties()),
            "group.id": self.fs.consumer_group,
            "isolation.level": "read_committed",  # only what the job's transactions committed
            "enable.auto.commit": False,  # committed after Redis acknowledged
            "auto.offset.reset": "earliest",  # Kafka is the source of truth
            "enable.partition.eof": True,  # the bounded mode's end
        })

    def _on_assign(self, consumer: Consumer, parts: list[Any]) -> None:
        ps = {p.partition for p in parts}
        self._assigned |= ps
        self._eof -= ps
        self._audit |= ps
        self.on_event("assigned", {"partitions": sorted(ps)})

    def _on_revoke(self, consumer: Consumer, parts: list[Any]) -> None:
        ps = {p.partition for p in parts}
        self._assigned -= ps
        self._eof -= ps
        self._audit -= ps
        for p in ps:
            self._required.pop(p, None)
        # The next owner starts at the committed offset; the upserts are idempotent.
        self._pending = [m for m in self._pending if m.partition() not in ps]
        self.on_event("revoked", {"partitions": sorted(ps)})

    def _rewind(self, consumer: Consumer, partition: int, to: int | None, why: str) -> None:
        """Read ``partition`` again from ``to`` (None: its beginning)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        consumer.seek(TopicPartition(self.topic, partition, OFFSET_BEGINNING if to is None else to))
        self._pending = [m for m in self._pending if m.partition() != partition]
        self._eof.discard(partition)
        self._audit.discard(partition)  # its state is known now
        self._required[partition] = -1 if to is None else to
        self.summary.store_resets += 1
        where = "the beginning" if to is None else f"offset {to}"
        log.warning("partition %s:%d: %s; reading it again from %s", self.topic, partition,
                    why, where)
        self.on_event("store-reset", {"partition": partition, "from": to, "why": why})

    def _run_audit(self, consumer: Consumer) -> None:
        """Compare, per partition to audit, the group's committed offset with what Redis
        has absorbed. Redis behind the group (it lost data): read again from where Redis
        is. Raises _Retry when Redis or Kafka does not answer."""
        from confluent_kafka import KafkaException, TopicPartition

        parts = sorted(self._audit & self._assigned)
        self._audit &= self._assigned
        if not parts:
            return
        try:
            absorbed = self.store.absorbed([_pkey(self.topic, p) for p in parts])
        except Exception as exc:
            if _transient(exc):
                raise _Retry(f"redis: {type(exc).__name__}: {exc}") from exc
            raise
        try:
            committed = consumer.committed([TopicPartition(self.topic, p) for p in parts],
                                           timeout=15)
        except KafkaException as exc:
            raise _Retry(f"kafka: cannot read the committed offsets: {exc}") from exc
        for tp in committed:
            p = tp.partition
            got = absorbed[_pkey(self.topic, p)]
            if tp.offset < 0:  # no commit yet: the group starts at the beginning
                self._required[p] = -1
            elif got is not None and got >= tp.offset:
                self._required[p] = tp.offset
            else:
                self._rewind(consumer, p, got,
                             f"the group committed offset {tp.offset} but Redis has absorbed "
                             f"{'nothing' if got is None else f'up to {got}'} (it lost data)")
            self._audit.discard(p)

    # -- decoding -----------------------------------------------------------------------
    def _decode(self, msgs: list[Message], deserialize: Any) -> list[tuple[Message, dict[str, Any] | None]]:
        from confluent_kafka.schema_registry.error import SchemaRegistryError
        from confluent_kafka.serialization import MessageField, SerializationContext

        out: list[tuple[Message, dict[str, Any] | None]] = []
        for m in msgs:
            if m.value() is None:
                out.append((m, None))
                continue
            try:
                vec = deserialize(m.value(), SerializationContext(m.topic(), MessageField.VALUE))
            except SchemaRegistryError as exc:
                code = exc.http_status_code
                if code is None or code < 0 or code >= 500 or code in (401, 403, 408, 429):
                    raise _Retry(f"schema registry: {exc}") from exc
                vec = _undecodable(m, exc)
            except Exception as exc:  # noqa: BLE001 - classified here
                if _registry_unreachable(exc):
                    raise _Retry(f"schema registry unreachable: {exc}") from exc
                vec = _undecodable(m, exc)
            if vec is not None and not _is_vector(vec):
                vec = _undecodable(m, ValueError("not a FeatureVector (device_id, window, "
                                                 "window_start or window_end missing)"))
            out.append((m, vec))
        return out

    # -- one batch ----------------------------------------------------------------------
    def _process(self, consumer: Consumer, msgs: list[Message], deserialize: Any) -> set[int]:
        """Decode, upsert, commit. Returns the partitions whose state in Redis the batch
        verified. Raises _Retry (nothing committed) when Redis or the registry is
        unavailable."""
        from confluent_kafka import KafkaException, TopicPartition

        decoded = self._decode(msgs, deserialize)
        items: list[tuple[Mapping[str, Any], str]] = []
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for m, vec in decoded:
            first.setdefault(m.partition(), m.offset())
            last[m.partition()] = m.offset()
            if vec is not None:
                items.append((vec, f"{m.topic()}/{m.partition()}/{m.offset()}"))
        # Redis must already hold everything before this batch: what it absorbed must
        # reach where the batch starts (-1: the partition is read from its beginning).
        advance = {_pkey(self.topic, p): (self._required.get(p, first[p]), o + 1)
                   for p, o in last.items()}
        try:
            written, moved = self.store.upsert_batch(items, advance)
        except Exception as exc:
            if _transient(exc):
                raise _Retry(f"redis: {type(exc).__name__}: {exc}") from exc
            raise FeatureStoreError(f"Redis refused the upsert: {exc}") from exc
        lost = []
        for p in last:
            ok, prev = moved[_pkey(self.topic, p)]
            if not ok:  # Redis lost data since the last batch (restart, flush, failover)
                lost.append(p)
                self._rewind(consumer, p, prev,
                             f"Redis has absorbed {'nothing' if prev is None else f'up to {prev}'}"
                             f" of it although offsets up to {first[p]} were written (it lost "
                             "data)")
            else:
                self._required[p] = last[p] + 1
        s = self.summary
        s.read += len(msgs)
        s.written += sum(written)
        s.stale += len(written) - sum(written)
        s.tombstones += sum(1 for m, _ in decoded if m.value() is None)
        s.undecodable += sum(1 for m, v in decoded if m.value() is not None and v is None)
        s.batches += 1
        commit = [TopicPartition(self.topic, p, o + 1) for p, o in last.items() if p not in lost]
        if commit:
            try:
                consumer.commit(offsets=commit, asynchronous=False)
                for tp in commit:
                    s.offsets[_pkey(tp.topic, tp.partition)] = tp.offset
            except KafkaException as exc:
                # Redis has the records; the next commit covers these offsets, and a
                # restart before it applies them again (idempotent).
                s.commit_failures += 1
                log.warning("offset commit failed (%s); the next batch's commit covers it", exc)
        self.on_event("batch", {"records": len(msgs), "written": sum(written),
                                "stale": len(written) - sum(written), "summary": s})
        return set(last)

    # -- the loop -----------------------------------------------------------------------
    def run(self, *, bounded: bool = False, max_wait_s: float | None = None,
            idle_s: float | None = None) -> Summary:
        """Materialise until stopped (SIGTERM/SIGINT, :meth:`request_stop`), or with
        ``bounded`` until every assigned partition reached its end (the last stable
        offset), or after ``max_wait_s``, or after ``idle_s`` without a record."""
        from confluent_kafka import KafkaError, TopicPartition
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        from sluice.kafka_util import admin

        t0 = time.monotonic()
        s = self.summary
        if self.topic not in admin(self.cfg).list_topics(timeout=15).topics:
            raise FeatureStoreError(f"the features topic {self.topic} does not exist (topics.features)")
        registry = SchemaRegistryClient(self.cfg.registry.client_conf())
        deserialize = AvroDeserializer(registry)
        consumer = self._consumer()
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        delay = 0.0
        outage_since: float | None = None
        attempts = 0
        last_record = time.monotonic()
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if max_wait_s is not None and now - t0 > max_wait_s:
                    s.stopped_by = "max-wait"
                    break
                if (bounded and not self._pending and not self._audit and self._assigned
                        and self._eof >= self._assigned):
                    s.stopped_by = "end-offsets"
                    break
                if idle_s is not None and not self._pending and self._assigned \
                        and now - last_record > idle_s:
                    s.stopped_by = "idle"
                    break
                wait = delay if outage_since is not None else 0.2
                want = max(1, self.fs.batch_size - len(self._pending))
                for m in consumer.consume(want, timeout=wait):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if m.topic() == self.topic:
                                self._eof.add(m.partition())
                            continue
                        if not err.fatal():  # broker away or similar: librdkafka retries
                            log.debug("consumer: %s", err)
                            continue
                        raise FeatureStoreError(f"consumer error on {self.topic}: {err}")
                    self._eof.discard(m.partition())
                    self._pending.append(m)
                    last_record = time.monotonic()
                if not self._pending and not self._audit:
                    continue
                batch: list[Message] = []
                verified: set[int] = set()
                try:
                    if self._audit:
                        self._run_audit(consumer)  # a rewind drops pending records it re-reads
                    batch, self._pending = self._pending, []
                    if batch:
                        verified = self._process(consumer, batch, deserialize)
                except _Retry as exc:
                    self._pending = batch + self._pending
                    attempts += 1
                    s.redis_retries += 1
                    if outage_since is None:
                        outage_since = time.monotonic()
                        consumer.pause(consumer.assignment())
                    delay = min(self.fs.backoff_max_ms,
                                self.fs.backoff_initial_ms * 2 ** (attempts - 1)) / 1000
                    log.warning("%s; keeping %d record(s) and the consumer's position, retry %d "
                                "in %.1f s (unavailable for %.1f s)", exc, len(self._pending),
                                attempts, delay, time.monotonic() - outage_since)
                    self.on_event("retry", {"error": str(exc), "attempt": attempts,
                                            "delay_s": delay, "pending": len(self._pending)})
                    continue
                if outage_since is not None:
                    took = time.monotonic() - outage_since
                    s.outage_s += took
                    log.warning("available again after %.1f s (%d retries); catching up",
                                took, attempts)
                    self.on_event("recovered", {"after_s": round(took, 3), "retries": attempts})
                    consumer.resume([TopicPartition(self.topic, p) for p in self._assigned])
                    outage_since, attempts, delay = None, 0, 0.0
                    # Redis may have come back empty: check the partitions this batch
                    # did not.
                    self._audit |= self._assigned - verified
            if self.stop.is_set() and not s.stopped_by:
                s.stopped_by = "signal"
        finally:
            if outage_since is not None:
                s.outage_s += time.monotonic() - outage_since
            consumer.close()
            registry.close()
            s.elapsed_s = time.monotonic() - t0
        return s


def _undecodable(m: Message, exc: BaseException) -> None:
    log.error("%s/%d/%d is not a decodable FeatureVector, skipped (%s: %s)",
              m.topic(), m.partition(), m.offset(), type(exc).__name__, exc)
    return None


def _is_vector(v: Any) -> bool:
    return isinstance(v, dict) and all(
        v.get(k) is not None for k in ("device_id", "window", "window_start", "window_end"))


def _registry_unreachable(exc: BaseException) -> bool:
    """Connection-level failures of the registry client (httpx or requests underneath)."""
    mod = type(exc).__module__ or ""
    return isinstance(exc, OSError | TimeoutError) or mod.startswith(("httpx", "httpcore",
                                                                       "requests", "urllib3"))


def materialize(cfg: SluiceConfig, bounded: bool = True, *, max_wait_s: float | None = 300.0,
                on_event: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the materializer (by default up to the end offsets) and return its counts:
    ``read``, ``written``, ``stale`` (skipped as not newer), ``undecodable``, ... and
    ``stopped_by``. What `sluice demo` calls after the job."""
    return Materializer(cfg, on_event=on_event).run(bounded=bounded, max_wait_s=max_wait_s).to_dict()
