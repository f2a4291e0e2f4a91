"""The retraining loop's consumer (``jobs/retrain.py``; docs/drift.md).

For each RetrainTrigger on ``topics.retrain_triggers`` (``read_committed``, Avro):

1. **Idempotency** by ``trigger_id``: a registry version whose metadata names the trigger
   (``retrain.trigger_id``) means it was trained already; it is announced unless the
   ``model-updates`` topic has its ModelUpdate (a crash between publishing and committing),
   else nothing happens. A trigger the ledger (``retrain.ledger``) recorded as refused is not
   retrained either.
2. **Training data**: the FeatureVectors of the active model's window and feature spec
   version on ``topics.features`` with ``window_start >= trigger.window_start -
   retrain.lookback_ms`` (the drifted period onwards), at most ``retrain.max_rows`` newest;
   fewer than ``retrain.min_rows`` → refused (``too-few-rows``).
3. **Candidate**: :func:`sluice.model.fit` with the active version's hyper-parameters, on
   the older rows; the newest ``holdout`` share is the holdout.
4. **Regression guard**: the active version (the trigger's ``model_version``) scores the
   same holdout. With labels of both classes on the holdout the metric is ROC AUC (higher is
   better), else the **calibration error** ``|anomaly_rate - contamination|`` (a model of the
   data it sees flags about ``contamination`` of it). The candidate is refused
   (``holdout-regression``) when its metric is worse than the active's by more than
   ``retrain.max_regression``.
5. Otherwise the candidate is **published** as the next registry version and its
   ModelUpdate is produced to ``topics.model_updates`` in a Kafka transaction that also
   commits the trigger's offset (``send_offsets_to_transaction``): the announcement and the
   progress commit together or not at all.

Every decision is appended to the ledger (JSON lines) and reported by ``on_event``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sluice.config import SluiceConfig
from sluice.model import (
    ModelError,
    ModelVersion,
    Registry,
    TrainParams,
    _metrics,
    fit,
    impute,
    package,
    split,
    to_dataset,
)

TRIGGER_SCHEMA = "retrain-triggers-value/v1.avsc"

PUBLISHED = "published"
REFUSED = "refused"
DUPLICATE = "duplicate"
RECOVERED = "recovered"  # trained before a crash, announced now
UNDECODABLE = "undecodable"


class RetrainError(RuntimeError):
    """The service cannot run (topic missing, transactions unavailable)."""


@dataclass
class Decision:
    trigger_id: str
    model_name: str
    action: str  # published | refused | duplicate | recovered | undecodable
    reason: str = ""
    version: int | None = None
    previous_version: str | None = None
    rows: int = 0
    guard: dict[str, Any] = field(default_factory=dict)
    decided_at: int = 0

    @property
    def announces(self) -> bool:
        return self.action in (PUBLISHED, RECOVERED)


# --- the ledger ------------------------------------------------------------------------------
class Ledger:
    """Decisions, one JSON object per line, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def decisions(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
        return out

    def refused(self, trigger_id: str) -> bool:
        return any(d.get("trigger_id") == trigger_id and d.get("action") == REFUSED
                   for d in self.decisions())

    def append(self, d: Decision) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(asdict(d), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def ledger_path(cfg: SluiceConfig) -> Path:
    return cfg.path(cfg.retrain.ledger or cfg.models.dir / ".retrain" / "ledger.jsonl")


# --- the guard -------------------------------------------------------------------------------
def regression_guard(candidate: Mapping[str, float], active: Mapping[str, float],
                     contamination: float, max_regression: float) -> dict[str, Any]:
    """Compare holdout metrics of candidate and active model (docs/drift.md). Returns
    ``{"metric", "candidate", "active", "regression", "bound", "ok"}``: ``regression`` is
    how much worse the candidate is (negative: better)."""
    if "roc_auc" in candidate and "roc_auc" in active:
        metric, cand, act = "roc_auc", candidate["roc_auc"], active["roc_auc"]
        regression = act - cand
    else:
        metric = "calibration_error"
        cand = abs(candidate["anomaly_rate"] - contamination)
        act = abs(active["anomaly_rate"] - contamination)
        regression = cand - act
    return {"metric": metric, "candidate": float(cand), "active": float(act),
            "regression": float(regression), "bound": float(max_regression),
            "ok": bool(regression <= max_regression)}


def _params(meta: Mapping[str, Any]) -> TrainParams:
    p = meta.get("params") or {}
    tr = meta.get("training") or {}
    rows, hold = tr.get("rows", 0), tr.get("holdout_rows", 0)
    holdout = round(hold / (rows + hold), 3) if rows + hold and hold else TrainParams.holdout
    return TrainParams(n_estimators=int(p.get("n_estimators", TrainParams.n_estimators)),
                       max_samples=p.get("max_samples", TrainParams.max_samples),
                       max_features=float(p.get("max_features", TrainParams.max_features)),
                       contamination=float(p.get("contamination", TrainParams.contamination)),
                       holdout=holdout if 0 < holdout < 1 else TrainParams.holdout,
                       seed=int(p.get("random_state", TrainParams.seed)))


def _epoch(v: Any) -> int:
    from sluice.model import _epoch_ms

    return _epoch_ms(v)


def retrain(cfg: SluiceConfig, trigger: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
            registry: Registry, *, now_ms: int | None = None) -> tuple[Decision, ModelVersion | None]:
    """Train and guard one trigger's candidate; publish it when it passes. No Kafka here
    (the caller announces). Returns the decision and the published version."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    tid, name = str(trigger["trigger_id"]), str(trigger["model_name"])
    d = Decision(tid, name, REFUSED, previous_version=str(trigger["model_version"]), decided_at=now)
    try:
        active = registry.get(name, int(trigger["model_version"]))
    except (ModelError, ValueError) as exc:
        d.reason = f"unknown-model: {exc}"
        return d, None
    meta = active.metadata
    r = cfg.retrain
    since = _epoch(trigger["window_start"]) - r.lookback_ms
    mine = [row for row in rows
            if row.get("window") == meta.get("window")
            and row.get("feature_spec_version") == meta.get("feature_spec_version")
            and _epoch(row["window_start"]) >= since]
    mine.sort(key=lambda row: _epoch(row["window_start"]))
    mine = mine[-r.max_rows:]
    d.rows = len(mine)
    if len(mine) < r.min_rows:
        d.reason = (f"too-few-rows: {len(mine)} FeatureVectors of window {meta.get('window')!r} "
                    f"since {since} (retrain.min_rows {r.min_rows})")
        return d, None
    params = _params(meta)
    ds = to_dataset(mine, meta["feature_names"])
    try:
        model, medians, cand_meta = fit(ds, params)
    except ModelError as exc:
        d.reason = f"training failed: {exc}"
        return d, None
    _, hold_idx = split(ds, params.holdout)
    if len(hold_idx) == 0:
        d.reason = "no holdout rows to compare on"
        return d, None
    Xh = ds.X[hold_idx]
    labels = None if ds.labels is None else ds.labels[hold_idx]
    act_scores = active.sklearn().score_samples(impute(Xh, np.asarray(meta["impute"]["values"])))
    act_metrics = _metrics(act_scores, float(meta["threshold"]), labels)
    cand_metrics = cand_meta["holdout_metrics"]
    d.guard = {**regression_guard(cand_metrics, act_metrics, params.contamination, r.max_regression),
               "contamination": params.contamination, "holdout_rows": int(len(hold_idx)),
               "candidate_anomaly_rate": cand_metrics["anomaly_rate"],
               "active_anomaly_rate": act_metrics["anomaly_rate"]}
    if not d.guard["ok"]:
        g = d.guard
        d.reason = (f"holdout-regression: {g['metric']} candidate {g['candidate']:.4f} vs active "
                    f"{g['active']:.4f} (worse by {g['regression']:.4f} > {g['bound']})")
        return d, None
    files, new_meta = package(model, medians, cand_meta, name=name, window=meta["window"],
                              spec_version=meta["feature_spec_version"])
    new_meta["retrain"] = {"trigger_id": tid, "trigger": {k: trigger[k] for k in trigger},
                           "previous_version": active.version, "rows": len(mine),
                           "guard": d.guard, "active_holdout_metrics": act_metrics}
    mv = registry.publish(name, files, _jsonable(new_meta))
    d.action, d.version = PUBLISHED, mv.version
    d.reason = f"{d.guard['metric']} candidate {d.guard['candidate']:.4f} vs active {d.guard['active']:.4f}"
    return d, mv


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "timestamp"):  # a datetime from a timestamp-millis field
        return int(v.timestamp() * 1000)
    return v


def version_of_trigger(registry: Registry, name: str, tid: str) -> ModelVersion | None:
    for mv in registry.versions(name):
        if (mv.metadata.get("retrain") or {}).get("trigger_id") == tid:
            return mv
    return None


# --- the service -------------------------------------------------------------------------------
#: How much earlier than a vector's window start its Kafka record may have been written
#: and still be read (see read_features).
WRITE_TIME_MARGIN_MS = 3_600_000


def read_features(cfg: SluiceConfig, since_ms: int | None = None) -> list[dict[str, Any]]:
    """The committed FeatureVectors on ``topics.features`` (to the end as of now).

    With ``since_ms``, each partition is read from the first record written at or after
    ``since_ms`` minus one hour (``WRITE_TIME_MARGIN_MS``), not from the beginning: the
    features job's records carry their write time, which is after their window's start,
    so no vector with ``window_start >= since_ms`` is skipped unless it was written more
    than an hour before its own window began (a clock that far ahead). The caller still
    filters by ``window_start``."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from sluice.kafka_util import offsets_for_time, read_to_end

    start = (None if since_ms is None else
             offsets_for_time(cfg, cfg.topics.features, since_ms - WRITE_TIME_MARGIN_MS))
    recs = read_to_end(cfg, cfg.topics.features, start=start)
    with SchemaRegistryClient(cfg.registry.client_conf()) as client:
        de = AvroDeserializer(client)
        return [de(r.value, None) for r in recs if r.value is not None]


@dataclass
class Summary:
    triggers: int = 0
    decisions: list[Decision] = field(default_factory=list)
    stopped_by: str = ""
    elapsed_s: float = 0.0

    def count(self, action: str) -> int:
        return sum(1 for d in self.decisions if d.action == action)


class RetrainService:
    def __init__(self, cfg: SluiceConfig,
                 on_event: Callable[[Decision], None] | None = None) -> None:
        self.cfg = cfg
        self.registry = Registry(cfg.path(cfg.models.dir))
        self.ledger = Ledger(ledger_path(cfg))
        self.on_event = on_event or (lambda d: None)
        self.stop = threading.Event()
        self.summary = Summary()

    def request_stop(self, *_: Any) -> None:
        self.stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def transactional_id(self) -> str:
        return f"{self.cfg.retrain.consumer_group}-{socket.gethostname()}"

    def run(self, *, once: bool = False, assign_timeout: float = 30.0) -> Summary:
        """Handle triggers until stopped; ``once``: until every partition of the trigger
        topic is read to its end (as a read_committed consumer sees it), then return."""
        from confluent_kafka import KafkaError
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        from sluice.kafka_util import committed_consumer, ensure_topics, transactional_producer
        from sluice.model_updates import encoder

        cfg = self.cfg
        t0 = time.monotonic()
        topic = cfg.topics.retrain_triggers
        ensure_topics(cfg, [topic, cfg.topics.model_updates, cfg.topics.features])
        enc = encoder(cfg)
        producer = transactional_producer(cfg, self.transactional_id(), RetrainError)
        assigned: set[int] = set()
        at_end: set[int] = set()
        got_assignment = threading.Event()

        def on_assign(_c: Any, parts: list[Any]) -> None:
            assigned.update(p.partition for p in parts)
            got_assignment.set()

        consumer = committed_consumer(cfg, cfg.retrain.consumer_group,
                                      **{"enable.partition.eof": True})
        consumer.subscribe([topic], on_assign=on_assign)
        client = SchemaRegistryClient(cfg.registry.client_conf())
        de = AvroDeserializer(client)
        try:
            while not self.stop.is_set():
                if once and got_assignment.is_set() and assigned <= at_end:
                    self.summary.stopped_by = "end of topic"
                    break
                if once and not got_assignment.is_set() and time.monotonic() - t0 > assign_timeout:
                    raise RetrainError(f"no partition of {topic} assigned within {assign_timeout} s")
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    if not err.fatal() and err.retriable():
                        continue
                    raise RetrainError(f"consumer error on {topic}: {err}")
                at_end.discard(msg.partition())
                self.summary.triggers += 1
                d, mv = self._handle(msg, de)
                self._commit(msg, d, mv, producer, consumer, enc)
                self.ledger.append(d)
                self.summary.decisions.append(d)
                self.on_event(d)
            if self.stop.is_set() and not self.summary.stopped_by:
                self.summary.stopped_by = "signal"
        finally:
            consumer.close()
            producer.flush(10)
            self.summary.elapsed_s = time.monotonic() - t0
        return self.summary

    def _handle(self, msg: Any, de: Any) -> tuple[Decision, ModelVersion | None]:
        from confluent_kafka.serialization import MessageField, SerializationContext

        from sluice.model_updates import read_updates

        now = int(time.time() * 1000)
        try:
            trig = de(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
            if not isinstance(trig, dict) or not trig.get("trigger_id"):
                raise ValueError("not a RetrainTrigger (no trigger_id)")
        except Exception as exc:  # noqa: BLE001 - a bad record is skipped with its reason
            return Decision(f"{msg.topic()}/{msg.partition()}/{msg.offset()}", "", UNDECODABLE,
                            reason=f"{type(exc).__name__}: {exc}", decided_at=now), None
        tid, name = str(trig["trigger_id"]), str(trig["model_name"])
        done = version_of_trigger(self.registry, name, tid)
        if done is not None:
            announced = any(u["model_name"] == name and u["version"] == str(done.version)
                            for u in read_updates(self.cfg))
            prev = str((done.metadata.get("retrain") or {}).get("previous_version", "")) or None
            if announced:
                return Decision(tid, name, DUPLICATE, reason=f"version {done.version} was trained "
                                "and announced for this trigger already", version=done.version,
                                previous_version=prev, decided_at=now), None
            return Decision(tid, name, RECOVERED, reason=f"version {done.version} was trained for "
                            "this trigger but not announced: announcing it", version=done.version,
                            previous_version=prev, decided_at=now), done
        if self.ledger.refused(tid):
            return Decision(tid, name, DUPLICATE, reason="refused already (see the ledger)",
                            decided_at=now), None
        since = _epoch(trig["window_start"]) - self.cfg.retrain.lookback_ms
        return retrain(self.cfg, trig, read_features(self.cfg, since), self.registry, now_ms=now)

    def _commit(self, msg: Any, d: Decision, mv: ModelVersion | None, producer: Any,
                consumer: Any, enc: Any) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        from sluice.model_updates import model_update_record, producer_send

        try:
            producer.begin_transaction()
            if d.announces and mv is not None:
                extra = {f"guard.{k}": float(v) for k, v in d.guard.items()
                         if isinstance(v, int | float)}  # bool ok -> 1.0 / 0.0
                producer_send(producer, self.cfg, enc,
                              model_update_record(mv, d.previous_version, extra_metrics=extra))
            producer.send_offsets_to_transaction(
                [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        except KafkaException as exc:
            try:
                producer.abort_transaction(10)
            except KafkaException:
                pass
            raise RetrainError(
                f"could not commit trigger {d.trigger_id} ({msg.topic()}/{msg.partition()}/"
                f"{msg.offset()}): {exc.args[0]}. A restart redoes it: a published version is "
                "found by its trigger id and announced then") from exc


__all__ = ["Decision", "Ledger", "RetrainError", "RetrainService", "Summary", "ledger_path",
           "read_features", "regression_guard", "retrain", "version_of_trigger"]
