"""`sluice verify`: an accounting check of a pipeline run, from Kafka alone.

It reads every input topic and every output topic ``read_committed``. It shares no code
with the job: Avro is decoded by confluent-kafka's deserializer (fastavro), not by the
Rust module. It reports:

* **missing**: input records (topic, partition, offset) that no canonical event and no
  dead letter accounts for;
* **duplicated**: input records accounted for more than once, and event ids that appear
  on ``telemetry.enriched`` more than once;
* **invented**: outputs whose source position is not an input record;
* **sequence**: every input record carries its producer's per-device sequence number
  in the ``ingest.sequence_header`` Kafka header. Per device (the record key) the
  numbers must run 0, 1, 2, … without a gap or a repeat (a gap means the input lost a
  record before sluice saw it), and the ``seq`` of every canonical event must be its
  input record's (``wrong_seq``); ``sequence_gaps`` lists, per device, the sequence
  numbers of input records nothing accounts for;
* **accounting**: ``in = out + dlq + late``. Late is 0 until the late side output of
  issue 4 exists. Per-record outputs come before any window, so they have no lateness;
* **wrong windows**: window scores that do not equal count, mean and max recomputed from
  the canonical events, windows missing or unexpected, and alerts that are not exactly
  the scores that crossed;
* **hanging transactions**: output partitions whose last stable offset is behind the
  high watermark once the job is done (Kafka's EosTestDriver check).

It checks the job against its own inputs, so it can verify any run: the demo, a live
stream, or a run after a fault. The tests add a stricter check against the generator's
oracle (`tests/oracle.py`) on top of it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import OffsetSpec
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from sluice.config import SluiceConfig
from sluice.kafka_util import Record, admin, read_committed

Position = tuple[str, int, int]  # input topic, partition, offset


@dataclass
class VerifyReport:
    inputs: dict[str, int] = field(default_factory=dict)
    enriched: int = 0
    dead_letters: int = 0
    late: int = 0
    missing: list[Position] = field(default_factory=list)
    duplicated: list[tuple[Position, int]] = field(default_factory=list)
    duplicate_event_ids: list[tuple[str, int]] = field(default_factory=list)
    invented: list[Position] = field(default_factory=list)
    windows: int = 0
    missing_windows: list[tuple[str, int]] = field(default_factory=list)
    unexpected_windows: list[tuple[str, int]] = field(default_factory=list)
    wrong_windows: list[dict[str, Any]] = field(default_factory=list)
    wrong_alerts: list[str] = field(default_factory=list)
    hanging_transactions: dict[str, tuple[int, int]] = field(default_factory=dict)
    dlq_by_reason: dict[str, int] = field(default_factory=dict)
    sequenced_inputs: int = 0
    input_sequence_errors: list[tuple[str, str]] = field(default_factory=list)
    sequence_gaps: list[tuple[str, int]] = field(default_factory=list)
    wrong_seq: list[tuple[Position, int | None, int | None]] = field(default_factory=list)

    @property
    def records_in(self) -> int:
        return sum(self.inputs.values())

    @property
    def balanced(self) -> bool:
        return self.records_in == self.enriched + self.dead_letters + self.late

    @property
    def ok(self) -> bool:
        return self.balanced and not (
            self.missing or self.duplicated or self.duplicate_event_ids or self.invented
            or self.missing_windows or self.unexpected_windows or self.wrong_windows
            or self.wrong_alerts or self.hanging_transactions or self.input_sequence_errors
            or self.sequence_gaps or self.wrong_seq
        )

    def as_dict(self, limit: int = 20) -> dict[str, Any]:
        """Machine-readable: counts, plus up to ``limit`` examples of each problem."""
        d = asdict(self)
        out: dict[str, Any] = {"ok": self.ok, "balanced": self.balanced, "records_in": self.records_in}
        for k, v in d.items():
            if isinstance(v, list):
                out[k] = {"count": len(v), "examples": v[:limit]}
            else:
                out[k] = v
        return out


class TransactionProbe:
    """Last stable offset (LSO, the end a read_committed consumer sees) and high
    watermark (HW) of every partition of some topics, both asked at once. Keeps its admin
    client, so it can be polled in a tight loop (the fault tests aim at open transactions)."""

    def __init__(self, cfg: SluiceConfig, topics: Sequence[str]):
        self.client = admin(cfg)
        md = self.client.list_topics(timeout=15).topics
        self.partitions = [TopicPartition(t, p) for t in topics if t in md
                           for p in md[t].partitions]

    def lag(self) -> dict[str, tuple[int, int]]:
        """{"topic-partition": (lso, hw)} for the partitions where LSO < HW, that is
        where a transaction is open (neither committed nor aborted)."""
        if not self.partitions:
            return {}
        wanted = {tp: OffsetSpec.latest() for tp in self.partitions}
        ends = {}
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
            futures = self.client.list_offsets(wanted, isolation_level=level, request_timeout=15)
            ends[level] = {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
        lso, hw = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
        return {f"{t}-{p}": (lso[(t, p)], hw[(t, p)]) for (t, p) in hw if lso[(t, p)] != hw[(t, p)]}


def open_transactions(cfg: SluiceConfig, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Kafka EosTestDriver's check: {"topic-partition": (LSO, HW)} where they differ;
    empty when no transaction hangs."""
    return TransactionProbe(cfg, topics).lag()


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


def verify(cfg: SluiceConfig, *, idle_timeout: float = 5.0, max_wait: float = 600.0) -> VerifyReport:
    """Read inputs and outputs and check the run; see the module docstring."""
    t = cfg.topics
    outputs = [t.enriched, t.dlq, t.scores, t.alerts]
    got = read_committed(cfg, [*t.inputs(), *outputs], idle_timeout=idle_timeout, max_wait=max_wait)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)

        def decode(recs: list[Record]) -> list[dict[str, Any]]:
            return [de(r.value, None) for r in recs]

        enriched, dlq = decode(got[t.enriched]), decode(got[t.dlq])
        scores, alerts = decode(got[t.scores]), decode(got[t.alerts])

    rep = VerifyReport(inputs={topic: len(got[topic]) for topic in t.inputs()})
    rep.enriched, rep.dead_letters = len(enriched), len(dlq)
    rep.dlq_by_reason = dict(Counter(d["reason"] for d in dlq).most_common())

    inputs = {(r.topic, r.partition, r.offset) for topic in t.inputs() for r in got[topic]}
    accounted = Counter(
        (o["source_topic"], o["source_partition"], o["source_offset"]) for o in (*enriched, *dlq)
    )
    rep.missing = sorted(inputs - set(accounted))
    rep.duplicated = sorted((p, n) for p, n in accounted.items() if n > 1)
    rep.invented = sorted(set(accounted) - inputs)
    ids = Counter(e["event_id"] for e in enriched)
    rep.duplicate_event_ids = sorted((i, n) for i, n in ids.items() if n > 1)
    rep.hanging_transactions = open_transactions(cfg, outputs)
    if cfg.ingest.sequence_header:
        _check_sequences(cfg.ingest.sequence_header, rep,
                         [r for topic in t.inputs() for r in got[topic]], enriched, accounted)
    _check_windows(cfg, rep, enriched, scores, alerts)
    return rep


def _header(rec: Record, name: str) -> int | None:
    for k, v in rec.headers:
        if k == name and v is not None:
            try:
                return int(v.decode("ascii")) if v.isdigit() else None
            except UnicodeDecodeError:
                return None
    return None


def _check_sequences(header: str, rep: VerifyReport, inputs: list[Record],
                     enriched: list[dict], accounted: Counter[Position]) -> None:
    """Per device, the producer's sequence numbers 0..n-1 each once; each input
    record's number found again on its canonical event (or the record dead-lettered)."""
    seq_at: dict[Position, int] = {}
    by_device: dict[str, list[int]] = defaultdict(list)
    for r in inputs:
        seq = _header(r, header)
        if seq is None:
            continue
        device = r.key.decode(errors="replace") if r.key is not None else "<no key>"
        seq_at[(r.topic, r.partition, r.offset)] = seq
        by_device[device].append(seq)
        if (r.topic, r.partition, r.offset) not in accounted:
            rep.sequence_gaps.append((device, seq))
    rep.sequenced_inputs = len(seq_at)
    for device, seqs in sorted(by_device.items()):
        have = Counter(seqs)
        repeated = sorted(s for s, n in have.items() if n > 1)
        missing = sorted(set(range(max(have) + 1)) - set(have))
        if repeated:
            rep.input_sequence_errors.append((device, f"repeated {repeated[:10]}"))
        if missing:
            rep.input_sequence_errors.append((device, f"never produced {missing[:10]}"))
    rep.sequence_gaps.sort()
    for e in enriched:
        pos = (e["source_topic"], e["source_partition"], e["source_offset"])
        if "seq" in e and pos in seq_at and e["seq"] != seq_at[pos]:
            rep.wrong_seq.append((pos, e["seq"], seq_at[pos]))


def _check_windows(cfg: SluiceConfig, rep: VerifyReport, enriched: list[dict], scores: list[dict],
                   alerts: list[dict]) -> None:
    """Scores must be count/mean/max of the canonical events' metric per device and
    tumbling window; alerts exactly the scores that crossed."""
    size = cfg.window.size_ms
    metric = "temperature_c" if cfg.score.metric == "temperature_c" else "vibration_rms"
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for e in enriched:
        value = e.get(metric)
        if value is not None:
            ts = _ms(e["ts"])
            groups[(e["device_id"], ts - ts % size)].append(value)
    by_key: dict[tuple[str, int], dict] = {}
    for s in scores:
        key = (s["device_id"], _ms(s["window_start"]))
        if key in by_key:
            rep.wrong_windows.append({"window": key, "problem": "scored twice"})
        by_key[key] = s
    rep.windows = len(by_key)
    rep.missing_windows = sorted(set(groups) - set(by_key))
    rep.unexpected_windows = sorted(set(by_key) - set(groups))
    for key in sorted(set(groups) & set(by_key)):
        values, s = groups[key], by_key[key]
        want = (len(values), sum(values) / len(values), max(values))
        if s["count"] != want[0] or s["max"] != want[2] or not math.isclose(
                s["mean"], want[1], rel_tol=1e-9):
            rep.wrong_windows.append({"window": key, "got": (s["count"], s["mean"], s["max"]),
                                      "want": want})
    crossed = {f"{d}@{w}" for (d, w), s in by_key.items() if s["is_alert"]}
    alert_ids = Counter(a["alert_id"] for a in alerts)
    rep.wrong_alerts = sorted(
        [f"{i} (twice)" for i, n in alert_ids.items() if n > 1]
        + [f"{i} (not crossed)" for i in set(alert_ids) - crossed]
        + [f"{i} (missing)" for i in crossed - set(alert_ids)]
    )
