"""Kafka helpers: topics, the broker's transaction limit, read_committed reads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from sluice.auth import check_kafka_login, check_registry_login, fail_fast
from sluice.config import SluiceConfig


class TransactionTimeoutError(ValueError):
    """The sink's transaction timeout does not fit the broker's maximum."""


def admin(cfg: SluiceConfig) -> AdminClient:
    return AdminClient(fail_fast(cfg.kafka.client_properties()))


def preflight(cfg: SluiceConfig, *, registry: bool = True, timeout: float = 15) -> None:
    """Log in to Kafka (and the registry) once: KafkaAuthError / RegistryAuthError
    within seconds on wrong credentials or certificates, TimeoutError naming the broker
    if it does not answer; nothing is retried silently."""
    check_kafka_login(cfg.kafka.client_properties(), timeout)
    if registry:
        check_registry_login(cfg.registry.client_conf())


def ensure_topics(cfg: SluiceConfig, topics: list[str] | None = None, timeout: float = 30) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are).

    The DLQ replay ledger (``topics.dlq_replays``) is compacted: one entry per dead
    letter, kept for as long as the topic exists; so is the device registry
    (``topics.devices``, the latest version per device), and ``topics.model_updates``
    (keyed by model name: the newest announcement per model, so a scoring job started
    from scratch does not score with versions that were replaced long ago).
    """
    client = admin(cfg)
    wanted = topics if topics is not None else cfg.topics.all()
    existing = set(client.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(
            t, cfg.topics.partitions, cfg.topics.replication_factor,
            config=_topic_config(cfg, t),
        )
        for t in wanted
        if t not in existing
    ]
    if not new:
        return
    for topic, fut in client.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {topic}: {exc}") from exc
    # The controller has created them; the broker that answers metadata requests may not
    # know them yet (a freshly started or busy broker), and a reader or describe_configs
    # would then fail with UNKNOWN_TOPIC_OR_PART. Wait until every one is served.
    deadline = time.monotonic() + timeout
    pending = {t.topic for t in new}
    while pending:
        md = client.list_topics(timeout=timeout).topics
        pending = {t for t in pending
                   if t not in md or md[t].error is not None or not md[t].partitions}
        if not pending:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {sorted(pending)} created but not in the broker's "
                               f"metadata after {timeout} s")
        time.sleep(0.1)


def _topic_config(cfg: SluiceConfig, topic: str) -> dict[str, str]:
    if topic in (cfg.topics.dlq_replays, cfg.topics.devices, cfg.topics.model_updates):
        return {"cleanup.policy": "compact"}
    return {}


def topic_config(cfg: SluiceConfig, topic: str, timeout: float = 15) -> dict[str, str]:
    """The effective configuration of one topic (broker defaults included)."""
    client = admin(cfg)  # keep it alive until the future resolves
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = client.describe_configs([res])[res].result(timeout=timeout)
    return {k: v.value for k, v in configs.items() if v.value is not None}


def delete_topics(cfg: SluiceConfig, topics: list[str], timeout: float = 30) -> None:
    client = admin(cfg)
    existing = set(client.list_topics(timeout=timeout).topics)
    doomed = [t for t in topics if t in existing]
    if not doomed:
        return
    for fut in client.delete_topics(doomed, operation_timeout=timeout).values():
        fut.result()
    # Deletion is asynchronous on the broker; wait until the names are gone.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not set(doomed) & set(client.list_topics(timeout=timeout).topics):
            return
        time.sleep(0.2)


def broker_max_transaction_timeout_ms(cfg: SluiceConfig, timeout: float = 15) -> int:
    check_kafka_login(cfg.kafka.client_properties(), timeout)  # fails fast on bad credentials
    client = admin(cfg)
    brokers = client.list_topics(timeout=timeout).brokers
    if not brokers:
        raise RuntimeError(f"no broker answered at {cfg.kafka.bootstrap_servers}")
    broker_id = str(next(iter(brokers)))
    res = ConfigResource(ResourceType.BROKER, broker_id)
    configs = client.describe_configs([res])[res].result(timeout=timeout)
    return int(configs["transaction.max.timeout.ms"].value)


def check_transaction_timeout(cfg: SluiceConfig) -> int:
    """Validate ``checkpoint interval << transaction timeout <= broker max`` at job start."""
    broker_max = broker_max_transaction_timeout_ms(cfg)
    wanted = cfg.kafka.transaction_timeout_ms
    if wanted > broker_max:
        raise TransactionTimeoutError(
            f"kafka.transaction_timeout_ms is {wanted} ms but the broker allows at most "
            f"{broker_max} ms (transaction.max.timeout.ms): every exactly-once commit would "
            f"fail. Lower kafka.transaction_timeout_ms to <= {broker_max}, or raise the "
            "broker's transaction.max.timeout.ms"
        )
    return broker_max


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    read_at_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


def _consumer(cfg: SluiceConfig, group: str, *, partition_eof: bool = False) -> Consumer:
    return Consumer(
        {
            **fail_fast(cfg.kafka.client_properties()),
            "group.id": group,
            # Exactly-once output is visible only once its transaction commits.
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": partition_eof,
        }
    )


def transactional_producer(cfg: SluiceConfig, transactional_id: str,
                           error: type[Exception] = RuntimeError) -> Producer:
    """An idempotent, transactional producer, transactions initialised: this fences an
    earlier instance with the same ``transactional_id`` and aborts its open transaction.
    A broker that refuses raises ``error`` naming the id. The transaction timeout is the
    config's, at most 60 s (a crashed service's transaction must not block readers long)."""
    producer = Producer({
        **fail_fast(cfg.kafka.client_properties()),
        "transactional.id": transactional_id,
        "transaction.timeout.ms": min(60_000, cfg.kafka.transaction_timeout_ms),
        "enable.idempotence": True,
    })
    try:
        producer.init_transactions(30)
    except KafkaException as exc:
        raise error(f"cannot start transactions as {transactional_id}: {exc}") from exc
    return producer


def committed_consumer(cfg: SluiceConfig, group: str, **extra: object) -> Consumer:
    """A consumer in ``group`` that sees committed records only and commits its offsets
    itself (inside a producer's transaction); ``extra`` adds or overrides properties."""
    return Consumer({
        **fail_fast(cfg.kafka.client_properties()),
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **extra,
    })


def end_offsets(cfg: SluiceConfig, topic: str, timeout: float = 15) -> dict[int, int]:
    """The last stable offset per partition as a read_committed consumer sees it."""
    c = _consumer(cfg, "sluice-offsets")
    try:
        md = c.list_topics(topic, timeout=timeout).topics[topic]
        if md.error is not None:
            raise RuntimeError(f"topic {topic}: {md.error}")
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in md.partitions
        }
    finally:
        c.close()


def offsets_for_time(cfg: SluiceConfig, topic: str, ts_ms: int,
                     timeout: float = 15) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is at or after ``ts_ms``,
    or the partition's end offset when there is none (reading from it reads nothing)."""
    c = _consumer(cfg, "sluice-offsets")
    try:
        md = c.list_topics(topic, timeout=timeout).topics[topic]
        if md.error is not None:
            raise RuntimeError(f"topic {topic}: {md.error}")
        found = c.offsets_for_times(
            [TopicPartition(topic, p, int(ts_ms)) for p in md.partitions], timeout=timeout)
        out: dict[int, int] = {}
        for tp in found:
            if tp.error is not None:
                raise RuntimeError(f"{topic}[{tp.partition}]: offset for {ts_ms}: {tp.error}")
            out[tp.partition] = (tp.offset if tp.offset >= 0 else
                                 c.get_watermark_offsets(tp, timeout=timeout)[1])
        return out
    finally:
        c.close()


class LagProbe:
    """Consumer lag of a group: per input partition, the high watermark minus the
    group's committed offset (what Burrow or `kafka-consumer-groups --describe` show).
    A Flink Kafka source commits its offsets when a checkpoint completes, so this is the
    lag of what is durably done. Keeps one consumer, so it can be polled every second."""

    def __init__(self, cfg: SluiceConfig, group: str, topics: Sequence[str], timeout: float = 10):
        self.timeout = timeout
        self.consumer = Consumer({**cfg.kafka.client_properties(), "group.id": group,
                                  "enable.auto.commit": False})
        md = self.consumer.list_topics(timeout=timeout).topics
        self.partitions = [TopicPartition(t, p) for t in topics if t in md
                           for p in md[t].partitions]

    def lag(self) -> dict[str, int]:
        """{"topic-partition": records not yet committed by the group}; a partition the
        group never committed counts from its low watermark."""
        committed = self.consumer.committed(self.partitions, timeout=self.timeout)
        out = {}
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=self.timeout, cached=False)
            done = tp.offset if tp.offset >= 0 else low
            out[f"{tp.topic}-{tp.partition}"] = max(0, high - done)
        return out

    def close(self) -> None:
        self.consumer.close()


# Consumer errors that only say the broker is unreachable for now.
_TRANSIENT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
              KafkaError._TIMED_OUT}


def read_committed(
    cfg: SluiceConfig,
    topics: list[str],
    *,
    until: Callable[[dict[str, int]], bool] | None = None,
    idle_timeout: float = 5.0,
    max_wait: float = 120.0,
    on_record: Callable[[Record], None] | None = None,
) -> dict[str, list[Record]]:
    """Read the topics from the beginning with a read_committed consumer.

    Stops when ``until(counts)`` is true, else after ``idle_timeout`` seconds
    without a new record while every partition is at its end (the last stable
    offset), and never later than ``max_wait``. The idle clock does not run while
    a partition has not reported its end: a slow first fetch on a busy machine is
    not mistaken for "no more output".
    """
    out: dict[str, list[Record]] = {t: [] for t in topics}
    c = _consumer(cfg, f"sluice-reader-{time.time_ns()}", partition_eof=True)
    try:
        parts = []
        for t in topics:
            md = c.list_topics(t, timeout=15).topics[t]
            if md.error is not None:
                raise RuntimeError(f"topic {t}: {md.error}")
            parts += [TopicPartition(t, p, 0) for p in md.partitions]
        c.assign(parts)
        at_end: set[tuple[str, int]] = set()
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            if now - start > max_wait:
                break
            counts = {t: len(v) for t, v in out.items()}
            if until is not None and until(counts):
                break
            if until is None and len(at_end) == len(parts) and now - last > idle_timeout:
                break
            batch: list[Message] = c.consume(1000, timeout=0.2)
            read_at = int(time.time() * 1000)
            for m in batch:
                if m.error():
                    err = m.error()
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (m.topic(), m.partition()) not in at_end:
                            at_end.add((m.topic(), m.partition()))
                            last = time.monotonic()  # idle from the moment all are at end
                        continue
                    if err.code() in _TRANSIENT and not err.fatal():
                        continue  # the broker is away (restarting): librdkafka reconnects
                    raise RuntimeError(f"consumer error: {err}")
                rec = Record(
                    m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                    read_at, tuple(m.headers() or ()),
                )
                out[rec.topic].append(rec)
                at_end.discard((rec.topic, rec.partition))
                if on_record is not None:
                    on_record(rec)
            if batch:
                last = time.monotonic()
    finally:
        c.close()
    return out


def read_to_end(
    cfg: SluiceConfig,
    topic: str,
    *,
    start: dict[int, int] | None = None,
    partitions: list[int] | None = None,
    max_wait: float = 120.0,
) -> list[Record]:
    """Every committed record of ``topic`` from ``start`` (per partition; default the
    beginning) up to the end as it is when the call starts.

    No idle-timeout guess: each partition is read until librdkafka reports its end
    (for a read_committed consumer, the last stable offset). Raises ``TimeoutError``
    when that takes longer than ``max_wait`` seconds.
    """
    c = Consumer(
        {
            **fail_fast(cfg.kafka.client_properties()),
            "group.id": f"sluice-reader-{time.time_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    out: list[Record] = []
    try:
        md = c.list_topics(topic, timeout=15).topics[topic]
        if md.error is not None:
            raise RuntimeError(f"topic {topic}: {md.error}")
        wanted = sorted(md.partitions) if partitions is None else sorted(partitions)
        missing = set(wanted) - set(md.partitions)
        if missing:
            raise ValueError(f"topic {topic} has no partition {sorted(missing)}")
        begin = start or {}
        c.assign([TopicPartition(topic, p, begin.get(p, 0)) for p in wanted])
        pending = set(wanted)
        deadline = time.monotonic() + max_wait
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: partitions {sorted(pending)} not read to the end in {max_wait} s"
                )
            read_at = int(time.time() * 1000)
            for m in c.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise RuntimeError(f"consumer error on {topic}: {err}")
                out.append(Record(
                    m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                    read_at, tuple(m.headers() or ()),
                ))
    finally:
        c.close()
    return out


def iter_partitions(cfg: SluiceConfig, topic: str) -> Iterator[int]:
    c = _consumer(cfg, "sluice-meta")
    try:
        yield from c.list_topics(topic, timeout=15).topics[topic].partitions
    finally:
        c.close()
