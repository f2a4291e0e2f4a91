"""Scoring in the stream with hot model swap (issue 5 items 3-4; docs/scoring.md).

    features (Kafka, read_committed) ──SQL──► to_data_stream → DecodeVector (Rust Avro)
        → key_by(device_id) ─┐
    model-updates (Kafka) ──► DecodeUpdate → broadcast(MapState "models": name → update)
                             └► connect → ScoreVectors (KeyedBroadcastProcessFunction)
                                   main output  → ModelScore  → model_scores_sink (exactly-once)
                                   side "alerts" → Alert v2    → model_alerts_sink (exactly-once)

``ScoreVectors`` keeps, per model name, the newest announcement it has seen (broadcast
state, checkpointed), loads that version's Rust model once per worker (its sha256
checked), and scores each vector of the model's window with exactly one version: the one
active when the vector is processed. A switch shows in the output as the first record
that names the new version; the operator also counts switches and logs them.

Per device (keyed state, with TTL): the adaptive-threshold baseline per model, and the
vectors that arrived before any model was announced (retried on a timer, never dropped).
Every stateful operator has a uid; the SQL sinks get theirs from
``table.exec.uid.generation``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    KeySelector,
    MapFunction,
    RuntimeContext,
)
from pyflink.datastream.state import (
    ListStateDescriptor,
    MapStateDescriptor,
    StateTtlConfig,
    ValueStateDescriptor,
)

from sluice.metrics import counters
from sluice.registry import RetryPolicy, WriterSchemaCache
from sluice.scoring import (
    AdaptivePolicy,
    Baseline,
    LoadedModel,
    ModelLoadError,
    alert_id,
    load_announced,
    score_id,
    version_number,
)

log = logging.getLogger("sluice.scoring")

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
PICKLED = Types.PICKLED_BYTE_ARRAY()
MODELS = MapStateDescriptor("models", Types.STRING(), PICKLED)
ALERTS = OutputTag("alerts", KV_TYPE)
# What the drift monitor sees of each scored vector: (model name, version, window,
# window_start, features, features topic partition).
SCORED = OutputTag("scored", PICKLED)
TRIGGERS = OutputTag("retrain-triggers", KV_TYPE)

# A decoded FeatureVector (a plain tuple, pickled between Python operators); PARTITION is
# the features topic partition it was read from.
DEVICE, SITE, WINDOW, START, END, COUNT, FEATURES, SPEC, COMPUTED, PARTITION = range(10)


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


class _RegistryDecoder:
    """Rust Avro decoder for one reader schema; writer schemas it has not seen are fetched
    from the registry once per id (a later FeatureVector or ModelUpdate version decodes)."""

    def __init__(self, reader: str, reader_id: int, registry_conf: dict[str, Any] | None,
                 retry: RetryPolicy):
        from sluice.native import AvroDecoder

        self.decoder = AvroDecoder(reader, record_as="dict")
        self.decoder.add_writer_schema(reader_id, reader)
        self.writers = (WriterSchemaCache(registry_conf, retry)
                        if registry_conf is not None else None)

    def decode(self, value: bytes) -> dict[str, Any]:
        from sluice.native import UnknownSchemaError, parse_confluent_header

        try:
            return self.decoder.decode(value)[1]
        except UnknownSchemaError:
            if self.writers is None:
                raise
            sid = parse_confluent_header(value)
            text = self.writers.fetch_with_retry(sid)
            if text is None:
                raise
            self.decoder.add_writer_schema(sid, text)
            return self.decoder.decode(value)[1]

    def close(self) -> None:
        if self.writers is not None:
            self.writers.close()


class _Decode(MapFunction):
    def __init__(self, schema: str, schema_id: int, registry_conf: dict[str, Any] | None,
                 registry_auth_file: str | None, retry: RetryPolicy):
        self.schema, self.schema_id = schema, schema_id
        self.registry_conf, self.registry_auth_file, self.retry = (
            registry_conf, registry_auth_file, retry)

    def open(self, runtime_context: RuntimeContext) -> None:
        conf = self.registry_conf
        if conf is not None and self.registry_auth_file:
            from sluice.auth import read_secret_file

            conf = {**conf, "basic.auth.user.info": read_secret_file(
                Path(self.registry_auth_file), "registry.basic_auth_file")}
        self.reader = _RegistryDecoder(self.schema, self.schema_id, conf, self.retry)

    def close(self) -> None:
        self.reader.close()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "reader"}


class DecodeVector(_Decode):
    """FeatureVector bytes → the tuple ScoreVectors reads."""

    def map(self, row: Row) -> tuple:
        r = self.reader.decode(row["v"])
        return (r["device_id"], r.get("site_id"), r["window"], _ms(r["window_start"]),
                _ms(r["window_end"]), int(r["event_count"]), dict(r["features"]),
                r["feature_spec_version"], _ms(r["computed_at"]), row["partition"])


class DecodeUpdate(_Decode):
    """ModelUpdate bytes → a dict (the broadcast state's value)."""

    def map(self, row: Row) -> dict[str, Any]:
        r = self.reader.decode(row["v"])
        r["published_at"] = _ms(r["published_at"])
        r["holdout_metrics"] = dict(r.get("holdout_metrics") or {})
        return r


class ByDevice(KeySelector):
    def get_key(self, value: tuple) -> str:
        return value[DEVICE]


class ScoreVectors(KeyedBroadcastProcessFunction):
    """Scores each FeatureVector with the active version of every model of its window."""

    def __init__(self, *, models_root: str, wanted: tuple[str, ...], policy: AdaptivePolicy,
                 score_schema: str, score_id_: int, alert_schema: str, alert_id_: int,
                 pending_retry_ms: int, state_ttl_ms: int):
        self.models_root, self.wanted, self.policy = models_root, wanted, policy
        self.score_schema, self.score_schema_id = score_schema, score_id_
        self.alert_schema, self.alert_schema_id = alert_schema, alert_id_
        self.pending_retry_ms, self.state_ttl_ms = pending_retry_ms, state_ttl_ms

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("loaded", "score_encoder", "alert_encoder", "baselines", "pending",
                             "timer", "counters", "active_refs")}

    def open(self, runtime_context: RuntimeContext) -> None:
        from pyflink.common.time import Time

        from sluice.native import AvroEncoder

        self.score_encoder = AvroEncoder(self.score_schema, self.score_schema_id)
        self.alert_encoder = AvroEncoder(self.alert_schema, self.alert_schema_id)
        self.loaded: dict[tuple[str, int], LoadedModel] = {}
        self.active_refs: dict[str, str] = {}
        baselines = MapStateDescriptor("baselines", Types.STRING(), PICKLED)
        if self.state_ttl_ms:
            baselines.enable_time_to_live(
                StateTtlConfig.new_builder(Time.milliseconds(self.state_ttl_ms))
                .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .build())
        self.baselines = runtime_context.get_map_state(baselines)
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", PICKLED))
        self.timer = runtime_context.get_state(ValueStateDescriptor("retry-at", Types.LONG()))
        self.counters = counters(runtime_context, "scoring", (
            "vectors_in", "scores_out", "alerts_out", "waiting_for_model", "no_model_for_window",
            "spec_mismatch", "model_switches", "updates_refused"))

    # --- models ----------------------------------------------------------------------------
    def _model(self, update: dict[str, Any]) -> LoadedModel:
        key = (str(update["model_name"]), version_number(update["version"]))
        m = self.loaded.get(key)
        if m is None:
            m = load_announced(update, Path(self.models_root))
            self.loaded = {k: v for k, v in self.loaded.items() if k[0] != key[0]}
            self.loaded[key] = m
        return m

    def process_broadcast_element(self, value: dict[str, Any],
                                  ctx: KeyedBroadcastProcessFunction.Context) -> Iterable[Any]:
        name = str(value["model_name"])
        if self.wanted and name not in self.wanted:
            return
        try:
            self._model(value)  # refuse what cannot be loaded, before it becomes active
        except ModelLoadError as exc:
            self.counters["updates_refused"].inc()
            log.error("scoring: model update refused, %s keeps its version: %s", name, exc)
            return
        state = ctx.get_broadcast_state(MODELS)
        current = state.get(name) if state.contains(name) else None
        # The newest announcement wins (a rollback is a new announcement of an older
        # version); replays of older announcements after a restore change nothing.
        if current is not None and (current["published_at"], version_number(current["version"])) \
                >= (value["published_at"], version_number(value["version"])):
            return
        state.put(name, value)
        log.warning("scoring: %s now v%s (was %s)", name, value["version"],
                    "none" if current is None else f"v{current['version']}")
        if current is not None:
            self.counters["model_switches"].inc()
        return
        yield  # a generator, as PyFlink expects

    def _active(self, ctx: Any) -> list[dict[str, Any]] | None:
        """The announcements to score with, or None while a wanted model is missing."""
        state = ctx.get_broadcast_state(MODELS)
        updates = [u for _, u in state.items()]
        names = {u["model_name"] for u in updates}
        if not updates or any(w not in names for w in self.wanted):
            return None
        return updates

    # --- vectors ---------------------------------------------------------------------------
    def process_element(self, value: tuple,
                        ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Iterable[Any]:
        self.counters["vectors_in"].inc()
        active = self._active(ctx)
        if active is None:
            self.counters["waiting_for_model"].inc()
            self.pending.add(value)
            if self.timer.value() is None:
                at = ctx.timer_service().current_processing_time() + self.pending_retry_ms
                ctx.timer_service().register_processing_time_timer(at)
                self.timer.update(at)
            return
        yield from self._flush(active)
        yield from self._score(value, active)

    def on_timer(self, timestamp: int,
                 ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterable[Any]:
        self.timer.clear()
        active = self._active(ctx)
        if active is None:
            at = timestamp + self.pending_retry_ms
            ctx.timer_service().register_processing_time_timer(at)
            self.timer.update(at)
            return
        yield from self._flush(active)

    def _flush(self, active: list[dict[str, Any]]) -> Iterable[Any]:
        waiting = list(self.pending.get() or [])
        if waiting:
            self.pending.clear()
            for v in waiting:
                yield from self._score(v, active)

    def _score(self, v: tuple, active: list[dict[str, Any]]) -> Iterable[Any]:
        matched = False
        for update in active:
            try:
                model = self._model(update)
            except ModelLoadError as exc:  # the artifact vanished after it was accepted
                raise RuntimeError(f"scoring: active model unusable: {exc}") from exc
            if model.window != v[WINDOW]:
                continue
            matched = True
            if model.feature_spec_version and v[SPEC] != model.feature_spec_version:
                # Trained on other features: scoring would compare apples and pears.
                self.counters["spec_mismatch"].inc()
                continue
            if self.active_refs.get(model.name) != model.ref:
                self.active_refs[model.name] = model.ref
            base = Baseline.from_tuple(self.baselines.get(model.name)
                                       if self.baselines.contains(model.name) else None)
            verdict = self.policy.judge(model.score(v[FEATURES]), model, base)
            self.baselines.put(model.name, verdict.baseline.to_tuple())
            now = int(time.time() * 1000)
            sid = score_id(v[DEVICE], v[WINDOW], v[START], model.name)
            self.counters["scores_out"].inc()
            yield Row(sid, self.score_encoder.encode((
                sid, v[DEVICE], v[SITE], v[WINDOW], v[START], v[END], v[COUNT], model.name,
                model.ref, v[SPEC], verdict.score, model.threshold, verdict.threshold,
                verdict.baseline_mean, verdict.baseline_std, verdict.is_alert, v[COMPUTED],
                now)))
            yield SCORED, (model.name, model.version, v[WINDOW], v[START], v[FEATURES],
                           v[PARTITION])
            if verdict.is_alert:
                self.counters["alerts_out"].inc()
                aid = alert_id(v[DEVICE], v[WINDOW], v[START], model.name)
                yield ALERTS, Row(v[DEVICE], self.alert_encoder.encode((
                    aid, v[DEVICE], v[SITE], v[START], v[END], f"{model.name}.score",
                    verdict.score, verdict.threshold, verdict.threshold - verdict.score,
                    verdict.severity, model.ref, model.name, v[WINDOW])))
        if not matched:
            self.counters["no_model_for_window"].inc()


class ByModel(KeySelector):
    def get_key(self, value: tuple) -> str:
        return value[0]


class DriftMonitor(KeyedProcessFunction):
    """Per model (keyed by name): sliding-window PSI and KS of the scored vectors against
    the active version's training reference (sluice.drift.DriftDetector), and the retrain
    policy (K drifted windows in a row, then a cool-down; sluice.drift.RetrainPolicy).

    Event time is the vector's window start. The features topic's partitions are read at
    their own pace (one can be minutes ahead of another), and within one partition the
    pipeline writes windows in about window order; so the monitor keeps, per partition
    it has read from, the newest window start, and its watermark is the oldest of those
    minus one slide (``drift.slide_ms``): Flink's per-partition watermark, by hand, since
    the vectors' event time is inside their Avro. A window closes when that passes its
    end; a vector older than a closed window is counted late by the detector and not used.
    A partition that stops receiving vectors holds the watermark back (drift is evaluated
    on continuous streams; docs/drift.md). A new version of the model starts a new detector
    (its reference is another one); a vector of an older version arriving after the
    switch (from another scoring subtask) is not counted."""

    def __init__(self, models_root: str, drift_cfg: Any, drift_schema: str, drift_id: int,
                 trigger_schema: str, trigger_id_: int):
        self.models_root, self.drift_cfg = models_root, drift_cfg
        self.drift_schema, self.drift_schema_id = drift_schema, drift_id
        self.trigger_schema, self.trigger_schema_id = trigger_schema, trigger_id_

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("state", "drift_encoder", "trigger_encoder", "counters", "cache")}

    def open(self, runtime_context: RuntimeContext) -> None:
        from sluice.native import AvroEncoder

        self.drift_encoder = AvroEncoder(self.drift_schema, self.drift_schema_id)
        self.trigger_encoder = AvroEncoder(self.trigger_schema, self.trigger_schema_id)
        self.state = runtime_context.get_state(ValueStateDescriptor("drift", PICKLED))
        self.counters = counters(runtime_context, "scoring", (
            "drift_events", "drifted", "retrain_triggers", "stale_version"))
        self.cache: dict[str, Any] = {}

    def _meta(self, name: str, version: int) -> dict[str, Any]:
        from sluice.model import Registry

        return Registry(self.models_root).get(name, version).metadata

    def process_element(self, value: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        from sluice.drift import DriftDetector, RetrainPolicy

        name, version, window, start, features, partition = value
        st = self.state.value()
        if st is None or version > st["version"]:
            meta = self._meta(name, version)
            det = DriftDetector(meta, self.drift_cfg)
            policy = (RetrainPolicy(self.drift_cfg) if st is None
                      else RetrainPolicy.restore(self.drift_cfg, st["policy"]))
            st = {"version": version, "marks": {}}
        elif version < st["version"]:
            self.counters["stale_version"].inc()
            return
        else:
            det = self.cache.get("det")
            if det is None or self.cache.get("key") != (name, version):
                det = DriftDetector.restore(self._meta(name, version), self.drift_cfg,
                                            st["detector"])
            policy = RetrainPolicy.restore(self.drift_cfg, st["policy"])
        marks = dict(st["marks"])
        marks[partition] = max(marks.get(partition, start), start)
        events = det.add({"window": window, "features": features}, start,
                         watermark_ms=min(marks.values()) - self.drift_cfg.slide_ms)
        triggers = policy.observe(events)
        self.cache = {"det": det, "key": (name, version)}
        self.state.update({"version": version, "marks": marks,
                           "detector": det.snapshot_bytes(), "policy": policy.snapshot_bytes()})
        for e in events:
            self.counters["drift_events"].inc()
            if e["drifted"]:
                self.counters["drifted"].inc()
            yield Row(f"{e['model_name']}@{e['feature']}", self.drift_encoder.encode(e))
        for t in triggers:
            self.counters["retrain_triggers"].inc()
            log.warning("drift: retrain %s v%s (%s)", t["model_name"], t["model_version"],
                        ", ".join(t["drifted_features"]))
            yield TRIGGERS, Row(t["trigger_id"], self.trigger_encoder.encode(t))


def _source_ddl(cfg: Any, table: str, topic: str, group: str, props: str,
                startup: str, bounded: bool) -> str:
    start = {
        "earliest": "'scan.startup.mode' = 'earliest-offset'",
        "latest": "'scan.startup.mode' = 'latest-offset'",
        "group-offsets": "'scan.startup.mode' = 'group-offsets',\n"
        "'properties.auto.offset.reset' = 'earliest'",
    }[startup]
    bound = ",\n'scan.bounded.mode' = 'latest-offset'" if bounded else ""
    return f"""
        CREATE TEMPORARY TABLE `{table}` (
            `k` BYTES,
            `v` BYTES,
            `partition` INT METADATA VIRTUAL
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{topic}',
            {props},
            'properties.group.id' = '{group}',
            'properties.isolation.level' = 'read_committed',
            'key.format' = 'raw',
            'key.fields' = 'k',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY',
            {start}{bound}
        )"""


def add_model_scoring(t_env: Any, stmts: Any, cfg: Any, kafka_props: str,
                      sink_ddl: Callable[[Any, str, str], str]) -> None:
    """Declare the scoring job on ``t_env`` and add its two INSERTs to ``stmts``.

    The features source follows ``job.startup_mode`` / ``job.bounded``; the model-updates
    source always reads from the earliest offset on a fresh start (every announcement,
    oldest first: the newest wins) and never bounds itself, unless the job is bounded, in
    which case it reads what is there when the job starts."""
    from sluice.registry import output_schema

    if cfg.job.python_execution_mode != "process":
        raise ValueError("the scoring job needs job.python_execution_mode: process (PyFlink "
                         "runs broadcast state only in process mode)")
    vectors_schema = output_schema(cfg, cfg.schemas.features)
    updates_schema = output_schema(cfg, cfg.schemas.model_updates)
    score_schema = output_schema(cfg, cfg.schemas.model_scores)
    alert_schema = output_schema(cfg, cfg.schemas.model_alerts)
    group = cfg.scoring.consumer_group
    t_env.execute_sql(_source_ddl(cfg, "vectors_src", cfg.topics.features, group, kafka_props,
                                  cfg.job.startup_mode, cfg.job.bounded))
    t_env.execute_sql(_source_ddl(cfg, "updates_src", cfg.topics.model_updates,
                                  f"{group}-updates", kafka_props, "earliest", cfg.job.bounded))
    scoring_cfg = cfg.with_overrides(
        job={"transactional_id_prefix": cfg.scoring.transactional_id_prefix})
    t_env.execute_sql(sink_ddl(scoring_cfg, "model_scores_sink", cfg.topics.model_scores))
    t_env.execute_sql(sink_ddl(scoring_cfg, "model_alerts_sink", cfg.topics.alerts))

    reg = (cfg.registry.client_conf(secret=False), cfg.registry.udf_auth_file(),
           RetryPolicy(cfg.registry.unknown_id_retry_ms, cfg.registry.retry_backoff_ms))
    vectors = (t_env.to_data_stream(t_env.sql_query("SELECT k, v, `partition` FROM vectors_src"))
               .map(DecodeVector(vectors_schema.schema_str, vectors_schema.schema_id, *reg),
                    output_type=PICKLED)
               .name("scoring-decode-vectors").uid("scoring-decode-vectors"))
    updates = (t_env.to_data_stream(t_env.sql_query("SELECT k, v FROM updates_src"))
               .map(DecodeUpdate(updates_schema.schema_str, updates_schema.schema_id, *reg),
                    output_type=PICKLED)
               .name("scoring-decode-updates").uid("scoring-decode-updates"))
    scored = (vectors.key_by(ByDevice(), key_type=Types.STRING())
              .connect(updates.broadcast(MODELS))
              .process(ScoreVectors(
                  models_root=str(cfg.path(cfg.models.dir).resolve()),
                  wanted=tuple(cfg.scoring.models),
                  policy=AdaptivePolicy.from_config(cfg.scoring),
                  score_schema=score_schema.schema_str, score_id_=score_schema.schema_id,
                  alert_schema=alert_schema.schema_str, alert_id_=alert_schema.schema_id,
                  pending_retry_ms=cfg.scoring.pending_retry_ms,
                  state_ttl_ms=cfg.scoring.state_ttl_ms), output_type=KV_TYPE)
              .name("scoring").uid("scoring"))
    drift_schema = output_schema(cfg, cfg.schemas.drift)
    trigger_schema = output_schema(cfg, cfg.schemas.retrain_triggers)
    t_env.execute_sql(sink_ddl(scoring_cfg, "drift_sink", cfg.topics.drift))
    t_env.execute_sql(sink_ddl(scoring_cfg, "retrain_triggers_sink", cfg.topics.retrain_triggers))
    drift = (scored.get_side_output(SCORED)
             .key_by(ByModel(), key_type=Types.STRING())
             .process(DriftMonitor(str(cfg.path(cfg.models.dir).resolve()), cfg.drift,
                                   drift_schema.schema_str, drift_schema.schema_id,
                                   trigger_schema.schema_str, trigger_schema.schema_id),
                      output_type=KV_TYPE)
             .name("drift").uid("drift"))
    t_env.create_temporary_view("model_scores", t_env.from_data_stream(scored))
    t_env.create_temporary_view("model_alerts",
                                t_env.from_data_stream(scored.get_side_output(ALERTS)))
    t_env.create_temporary_view("drift_events", t_env.from_data_stream(drift))
    t_env.create_temporary_view("retrain_triggers",
                                t_env.from_data_stream(drift.get_side_output(TRIGGERS)))
    stmts.add_insert_sql("INSERT INTO model_scores_sink SELECT k, v FROM model_scores")
    stmts.add_insert_sql("INSERT INTO model_alerts_sink SELECT k, v FROM model_alerts")
    stmts.add_insert_sql("INSERT INTO drift_sink SELECT k, v FROM drift_events")
    stmts.add_insert_sql("INSERT INTO retrain_triggers_sink SELECT k, v FROM retrain_triggers")


__all__ = ["ALERTS", "DecodeUpdate", "DecodeVector", "MODELS", "ScoreVectors",
           "add_model_scoring"]
