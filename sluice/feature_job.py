"""The declarative window features in the Flink job (issue 4, items 4-6).

Per window of the feature spec (docs/features.md), from the deduplicated canonical
events (view ``counted``, ``seen = 1``):

    counted ──SQL──► to_data_stream (record timestamp = rowtime, the source's watermarks)
      → DecodeEvent (Python map, once per event: the Rust AvroDecoder reads the
        EnrichedReading; the window fields and, for frames, the raw frame bytes)
      → per spec window: filter(sources) → key_by(device_id)
          → window(Tumbling / Sliding / Session EventTimeWindows)
            .allowed_lateness(spec) .side_output_late_data(tag)
            .aggregate(FeatureAggregate: accumulator = Rust FeatureAccumulator blobs,
                       FeatureWindow: FeatureVector encoded by the Rust AvroEncoder)
          → union → from_data_stream → INSERT INTO features_sink (Kafka, exactly-once)
        late side output → LateRecordEncoder (watermark at arrival) → late_sink (exactly-once)

Every stateful DataStream operator has a uid (``features-<window>``); the SQL sinks get
theirs from ``table.exec.uid.generation``. Nothing here imports numpy: these functions
also run in thread mode (docs/architecture.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import (
    AggregateFunction,
    FilterFunction,
    KeySelector,
    MapFunction,
    ProcessFunction,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.window import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
)

from sluice.features import WAVEFORM_FIELD, WindowSpec
from sluice.metrics import StageMetrics
from sluice.native import AvroDecoder, AvroEncoder, FeatureAccumulator
from sluice.native import FeatureSpec as NativeSpec
from sluice.udfs import _SOURCE_SYMBOL

# The spec's aggregation names where the Rust module spells them differently.
_RUST_AGG = {"crest_factor": "crest"}
# Rust gives NaN where the spec defines 0 (docs/features.md): slope with fewer than two
# distinct times, crest factor of an all-zero signal, kurtosis of a constant signal.
_NAN_IS_ZERO = frozenset({"slope", "crest_factor", "kurtosis"})
# With no value in the window, a scalar field still reports these (as 0); the others are
# absent from the map.
_EMPTY_IS_ZERO = frozenset({"count", "sum"})

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])

# The positions of a decoded event (a plain tuple: pickled between Python operators).
EVENT_ID, DEVICE_ID, SITE_ID, SOURCE, TS, VALUES, FRAME, TOPIC, PARTITION, OFFSET = range(10)


@dataclass(frozen=True)
class FieldPlan:
    """One field of one window, as a Rust FeatureSpec: ``aggs`` is what ``NativeSpec``
    takes (every output named ``o<i>``), ``outputs`` the spec's feature name and
    aggregation of each ``o<i>``, in order."""

    field: str
    index: int  # position in the decoded event's values (-1: the waveform)
    aggs: tuple[dict[str, Any], ...]
    outputs: tuple[tuple[str, str], ...]

    @property
    def waveform(self) -> bool:
        return self.field == WAVEFORM_FIELD


def scalar_fields(windows: Iterable[WindowSpec]) -> tuple[str, ...]:
    """Every scalar field any window reads, in first-use order (the decoded event's values)."""
    out: dict[str, None] = {}
    for w in windows:
        for f in w.features:
            if f.field != WAVEFORM_FIELD:
                out.setdefault(f.field)
    return tuple(out)


def field_plans(window: WindowSpec, fields: tuple[str, ...]) -> tuple[FieldPlan, ...]:
    """The spec's aggregations of each field of ``window`` mapped onto the Rust ones.

    The Rust module and the spec were written apart and name some things differently
    (``crest`` / ``crest_factor``, ``band_0_50hz`` / ``band_energy_0_50hz``, ``p99p9`` /
    ``p99.9``); every Rust output gets a neutral name here and the spec's name is put
    back on it, so neither side's names leak into the other."""
    plans = []
    for f in window.features:
        aggs: list[dict[str, Any]] = []
        outputs: list[tuple[str, str]] = []
        for agg in f.aggs:
            names = agg.output_names(f.field)
            if agg.name == "band_energy":
                assert agg.bands is not None
                for (lo, hi), name in zip(agg.bands, names, strict=True):
                    aggs.append({"agg": "band", "lo_hz": float(lo), "hi_hz": float(hi)})
                    outputs.append((name, agg.name))
                continue
            (name,) = names
            item: dict[str, Any] = {"agg": _RUST_AGG.get(agg.name, agg.name)}
            if agg.name == "ewma":
                item["half_life_ms"] = agg.half_life_ms
            elif agg.name == "quantile":
                item["q"] = agg.q
            aggs.append(item)
            outputs.append((name, agg.name))
        for i, item in enumerate(aggs):
            item["name"] = f"o{i}"
        index = -1 if f.field == WAVEFORM_FIELD else fields.index(f.field)
        plans.append(FieldPlan(f.field, index, tuple(aggs), tuple(outputs)))
    return tuple(plans)


def field_features(plan: FieldPlan, acc: FeatureAccumulator) -> dict[str, float]:
    """The FeatureVector entries of one field from its Rust accumulator, with the spec's
    rules for empty fields and degenerate values (docs/features.md)."""
    if plan.waveform:
        if acc.frames == 0:
            return {}
    elif acc.count == 0:
        return {name: 0.0 for name, kind in plan.outputs if kind in _EMPTY_IS_ZERO}
    res = acc.result()
    out = {}
    for i, (name, kind) in enumerate(plan.outputs):
        v = res[f"o{i}"]
        if math.isnan(v) and kind in _NAN_IS_ZERO:
            v = 0.0
        out[name] = v
    return out


def field_value(record: dict[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else int(v)


class DecodeEvent(MapFunction):
    """A canonical event (EnrichedReading bytes) → the tuple the windows read."""

    def __init__(self, schema: str, schema_id: int, fields: tuple[str, ...]):
        self.schema, self.schema_id, self.fields = schema, schema_id, fields

    def open(self, runtime_context: RuntimeContext) -> None:
        self.decoder = AvroDecoder(self.schema, record_as="dict")
        self.decoder.add_writer_schema(self.schema_id, self.schema)
        # processed_at (the Ingest call) → here: dedup, the SQL→DataStream hop, queues.
        self.metrics = StageMetrics(runtime_context, "features", ("records_in",),
                                    ("ingest_to_features_ms",))

    def map(self, row: Row) -> tuple:
        _, rec = self.decoder.decode(row["ev"])
        self.metrics.counter["records_in"].inc()
        self.metrics.latency["ingest_to_features_ms"].observe(
            time.time() * 1000 - _ms(rec["processed_at"]))
        frame = row["frame"] if rec["source"] == "SENSOR_FRAME" else None
        values = tuple(field_value(rec, f) for f in self.fields)
        return (rec["event_id"], rec["device_id"], rec.get("site_id"), rec["source"],
                _ms(rec["ts"]), values, frame, row["topic"], row["partition"], row["offset"])


class SourceFilter(FilterFunction):
    def __init__(self, sources: tuple[str, ...]):
        self.sources = frozenset(sources)

    def filter(self, value: tuple) -> bool:
        return value[SOURCE] in self.sources


class ByDevice(KeySelector):
    def get_key(self, value: tuple) -> str:
        return value[DEVICE_ID]


# The accumulator: (event_count, ts of the latest event, its site_id, one Rust state blob
# per field). A plain tuple, pickled into Flink state (PICKLED_BYTE_ARRAY).
Acc = tuple[int, int, str | None, tuple[bytes, ...]]


class FeatureAggregate(AggregateFunction):
    """Incremental aggregation of one window's events into Rust FeatureAccumulators.

    PyFlink keeps the accumulator in keyed state and hands it to ``add`` / ``merge``
    deserialised, so each call reads the blobs back (``FeatureAccumulator.from_bytes``),
    updates them and writes them out (``to_bytes``). ``merge`` serves session windows."""

    def __init__(self, plans: tuple[FieldPlan, ...]):
        self.plans = plans
        self._specs: list[NativeSpec] | None = None

    def specs(self) -> list[NativeSpec]:
        if self._specs is None:  # built in the worker: Rust objects do not pickle
            self._specs = [NativeSpec(list(p.aggs)) for p in self.plans]
        return self._specs

    def __getstate__(self) -> dict[str, Any]:
        return {"plans": self.plans, "_specs": None}

    def create_accumulator(self) -> Acc:
        return 0, 0, None, tuple(FeatureAccumulator(s).to_bytes() for s in self.specs())

    def add(self, value: tuple, accumulator: Acc) -> Acc:
        n, site_ts, site, blobs = accumulator
        out = []
        for plan, spec, blob in zip(self.plans, self.specs(), blobs, strict=True):
            if plan.waveform:
                frame = value[FRAME]
                if frame is None:
                    out.append(blob)
                    continue
                acc = FeatureAccumulator.from_bytes(spec, blob)
                acc.update_sensor_frame(frame)
            else:
                v = value[VALUES][plan.index]
                if v is None:
                    out.append(blob)
                    continue
                acc = FeatureAccumulator.from_bytes(spec, blob)
                acc.update(value[TS], float(v))
            out.append(acc.to_bytes())
        ts, s = value[TS], value[SITE_ID]
        if n == 0 or (ts, s or "") > (site_ts, site or ""):
            site_ts, site = ts, s
        return n + 1, site_ts, site, tuple(out)

    def get_result(self, accumulator: Acc) -> Acc:
        return accumulator

    def merge(self, acc_a: Acc, acc_b: Acc) -> Acc:
        blobs = []
        for spec, a, b in zip(self.specs(), acc_a[3], acc_b[3], strict=True):
            x = FeatureAccumulator.from_bytes(spec, a)
            x.merge(FeatureAccumulator.from_bytes(spec, b))
            blobs.append(x.to_bytes())
        if acc_a[0] == 0:
            site_ts, site = acc_b[1], acc_b[2]
        elif acc_b[0] == 0 or (acc_a[1], acc_a[2] or "") >= (acc_b[1], acc_b[2] or ""):
            site_ts, site = acc_a[1], acc_a[2]
        else:
            site_ts, site = acc_b[1], acc_b[2]
        return acc_a[0] + acc_b[0], site_ts, site, tuple(blobs)


def vector_key(device_id: str, window: str, window_start: int) -> str:
    """The Kafka key of a FeatureVector: one per device, spec window and window start. A
    late firing re-emits the same key with a later ``computed_at`` (and a later offset
    in the same partition), so the last record of a key is the window's final vector."""
    return f"{device_id}@{window}@{window_start}"


class FeatureWindow(ProcessWindowFunction):
    """A fired window's accumulator → FeatureVector (Avro, Rust encoder), keyed."""

    def __init__(self, window: WindowSpec, plans: tuple[FieldPlan, ...], spec_version: str,
                 schema: str, schema_id: int):
        self.name, self.kind = window.name, window.window_kind
        self.plans, self.spec_version = plans, spec_version
        self.schema, self.schema_id = schema, schema_id
        self._specs: list[NativeSpec] | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.encoder = AvroEncoder(self.schema, self.schema_id)
        self._specs = [NativeSpec(list(p.aggs)) for p in self.plans]
        # How long after its end (wall clock) a window fires: watermark delay + operator.
        self.metrics = StageMetrics(runtime_context, "features", ("vectors_out",),
                                    ("window_end_to_vector_ms",))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("encoder", "_specs", "metrics")}

    def process(self, key: str, context: ProcessWindowFunction.Context,
                elements: Iterable[Acc]) -> Iterable[Row]:
        assert self._specs is not None
        for n, _, site, blobs in elements:
            w = context.window()
            features: dict[str, float] = {}
            for plan, spec, blob in zip(self.plans, self._specs, blobs, strict=True):
                features.update(field_features(plan, FeatureAccumulator.from_bytes(spec, blob)))
            value = self.encoder.encode((
                key, site, self.name, self.kind, w.start, w.end, n, features,
                self.spec_version, int(time.time() * 1000)))
            self.metrics.counter["vectors_out"].inc()
            self.metrics.latency["window_end_to_vector_ms"].observe(time.time() * 1000 - w.end)
            yield Row(vector_key(key, self.name, w.start), value)


class LateRecordEncoder(ProcessFunction):
    """An event the window dropped as too late → LateRecord (Avro), keyed by event id.
    The watermark is this operator's when the event arrives: the window operator's that
    judged it late (the event follows that watermark on the one channel between them)."""

    def __init__(self, window: WindowSpec, schema: str, schema_id: int):
        self.name, self.lateness = window.name, window.allowed_lateness
        self.schema, self.schema_id = schema, schema_id

    def open(self, runtime_context: RuntimeContext) -> None:
        self.encoder = AvroEncoder(self.schema, self.schema_id)
        self.metrics = StageMetrics(runtime_context, "features", ("late_records",))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("encoder", "metrics")}

    def process_element(self, value: tuple, ctx: ProcessFunction.Context) -> Iterable[Row]:
        self.metrics.counter["late_records"].inc()
        wm = ctx.timer_service().current_watermark()
        yield Row(value[EVENT_ID], self.encoder.encode((
            value[EVENT_ID], value[DEVICE_ID], value[SOURCE], value[TS], self.name,
            self.lateness, wm, value[TOPIC], value[PARTITION], value[OFFSET],
            int(time.time() * 1000))))


def _assigner(w: WindowSpec) -> Any:
    if w.kind == "tumble":
        assert w.size is not None
        return TumblingEventTimeWindows(w.size, 0)
    if w.kind == "hop":
        assert w.size is not None and w.slide is not None
        return SlidingEventTimeWindows(w.size, w.slide, 0)
    assert w.gap is not None
    return EventTimeSessionWindows(w.gap)


class UnsupportedWindowError(ValueError):
    """A spec window the job cannot run correctly in the configured Python execution mode."""


def check_execution_mode(spec: Any, mode: str) -> None:
    """Session windows need process mode. In PyFlink 2.2 thread mode, the Python window
    operator keeps its merging-window set in keyed state under VoidNamespace while the
    operator's state table serialises namespaces as TimeWindow, so the first checkpoint
    taken while a session is open fails (ClassCastException: VoidNamespace cannot be cast
    to TimeWindow, in CopyOnWriteStateMapSnapshot) and the job restarts until it gives up.
    Refuse at build time rather than fail at the first checkpoint."""
    sessions = [w.name for w in spec.windows if w.kind == "session"]
    if mode == "thread" and sessions:
        raise UnsupportedWindowError(
            f"features.spec: session window(s) {', '.join(sessions)} need "
            "job.python_execution_mode: process (PyFlink 2.2 thread mode cannot checkpoint "
            "merging windows: VoidNamespace cannot be cast to TimeWindow; docs/features.md)")


def add_feature_windows(t_env: Any, stmts: Any, cfg: Any,
                        sink_ddl: Callable[[Any, str, str], str]) -> bool:
    """Declare the window features of ``cfg.feature_spec()`` on ``t_env`` and add their
    two INSERTs to ``stmts``; False (and nothing declared) without a spec."""
    from sluice.registry import output_schema

    spec = cfg.feature_spec()
    if spec is None:
        return False
    check_execution_mode(spec, cfg.job.python_execution_mode)
    enriched = output_schema(cfg, cfg.schemas.enriched)
    vectors_schema = output_schema(cfg, cfg.schemas.features)
    late_schema = output_schema(cfg, cfg.schemas.late)
    t_env.execute_sql(sink_ddl(cfg, "features_sink", cfg.topics.features))
    t_env.execute_sql(sink_ddl(cfg, "late_sink", cfg.topics.late))

    # The Ingest UDF's r.source is the input's logical name (sluice.udfs.TELEMETRY, ...);
    # the spec and the canonical event use the EnrichedReading symbol (TELEMETRY, ...).
    logical = {symbol: name for name, symbol in _SOURCE_SYMBOL.items()}
    sources = sorted({logical[s] for w in spec.windows for s in w.source})
    in_list = ", ".join(f"'{s}'" for s in sources)
    table = t_env.sql_query(f"""
        SELECT r.out_value AS ev,
               CASE WHEN r.source = '{logical["SENSOR_FRAME"]}' THEN `value` END AS frame,
               `topic`, `partition`, `offset`, rowtime
        FROM counted WHERE seen = 1 AND r.source IN ({in_list})""")
    fields = scalar_fields(spec.windows)
    events = (t_env.to_data_stream(table)
              .map(DecodeEvent(enriched.schema_str, enriched.schema_id, fields),
                   output_type=Types.PICKLED_BYTE_ARRAY())
              .name("features-decode").uid("features-decode"))
    version = spec.spec_version()
    vectors, lates = [], []
    for w in spec.windows:
        plans = field_plans(w, fields)
        tag = OutputTag(f"late-{w.name}", Types.PICKLED_BYTE_ARRAY())
        out = (events.filter(SourceFilter(w.source)).name(f"features-{w.name}-source")
               .uid(f"features-{w.name}-source")
               .key_by(ByDevice(), key_type=Types.STRING())
               .window(_assigner(w))
               .allowed_lateness(w.allowed_lateness)
               .side_output_late_data(tag)
               .aggregate(FeatureAggregate(plans),
                          FeatureWindow(w, plans, version, vectors_schema.schema_str,
                                        vectors_schema.schema_id),
                          accumulator_type=Types.PICKLED_BYTE_ARRAY(), output_type=KV_TYPE)
               .name(f"features-{w.name}").uid(f"features-{w.name}"))
        vectors.append(out)
        lates.append(out.get_side_output(tag)
                     .process(LateRecordEncoder(w, late_schema.schema_str, late_schema.schema_id),
                              output_type=KV_TYPE)
                     .name(f"late-{w.name}").uid(f"late-{w.name}"))
    all_vectors = vectors[0].union(*vectors[1:]) if len(vectors) > 1 else vectors[0]
    all_late = lates[0].union(*lates[1:]) if len(lates) > 1 else lates[0]
    t_env.create_temporary_view("feature_vectors", t_env.from_data_stream(all_vectors))
    t_env.create_temporary_view("late_records", t_env.from_data_stream(all_late))
    stmts.add_insert_sql("INSERT INTO features_sink SELECT k, v FROM feature_vectors")
    stmts.add_insert_sql("INSERT INTO late_sink SELECT k, v FROM late_records")
    return True
