"""Reference data: the device registry on Kafka, the sites file, and the join operator.

* :func:`versions_from_csv` and :func:`publish_devices` (``sluice devices publish``)
  turn device rows into ``Device`` Avro upserts on the compacted ``devices`` topic,
  keyed by device id, with ``valid_from`` as the Kafka record timestamp.
* :class:`SitesTable` is the sites file, re-read when its mtime changes (checked at
  most every ``reference.sites_refresh_s``), so a change needs no restart.
* :class:`ReferenceJoin` is the keyed co-process function (readings of a device on one
  input, its versions on the other) that does the event-time temporal join with the
  devices, the interval join with maintenance work orders and the sites lookup.
  ``jobs/reference.py`` wires it into the job. Semantics: docs/reference-data.md.

Keep numpy out of here (thread mode, see sluice/udfs.py).
"""

from __future__ import annotations

import bisect
import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.config import SluiceConfig

# reference_status of a JoinedReading (schemas/telemetry.joined-value/v1.avsc).
VALID, LATE, MISSING = "VALID", "LATE", "MISSING"
READING_SOURCES = ("TELEMETRY", "SENSOR_FRAME")


@dataclass(frozen=True)
class DeviceVersion:
    """One version of a device's reference data (schemas/devices-value/v1.avsc)."""

    device_id: str
    valid_from: int  # epoch ms; also the Kafka record timestamp
    site_id: str | None = None
    device_model: str | None = None
    calibration_offset_c: float = 0.0
    max_temperature_c: float | None = None
    max_vibration_rms_g: float | None = None
    installed_at: int | None = None
    decommissioned: bool = False

    def as_avro(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceDeletion:
    """A tombstone (null value) for a device on the devices topic: the device is deleted
    from ``at`` (epoch ms; the record timestamp) on, until a later version."""

    device_id: str
    at: int


def _epoch_ms(text: str) -> int:
    """Epoch ms from an integer or an ISO date / datetime (UTC when no zone is given)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if len(text) == 10:
        d = date.fromisoformat(text)
        return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _float(row: dict[str, str], name: str) -> float | None:
    v = (row.get(name) or "").strip()
    return float(v) if v else None


def versions_from_csv(path: Path, valid_from: int | None = None) -> list[DeviceVersion]:
    """Device versions from a CSV with a header. Columns: ``device_id`` (required),
    ``site_id``, ``device_model``, ``max_temperature_c``, ``installed_at`` and optionally
    ``calibration_offset_c``, ``max_vibration_rms_g``, ``decommissioned``, ``valid_from``.

    ``valid_from`` of a row: the argument if given, else the row's ``valid_from``, else
    its ``installed_at``, else now. Several rows of one device are several versions."""
    out: list[DeviceVersion] = []
    now = int(time.time() * 1000)
    with path.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                device_id = (row.get("device_id") or "").strip()
                if not device_id:
                    raise ValueError("device_id is empty")
                installed = (row.get("installed_at") or "").strip()
                installed_ms = _epoch_ms(installed) if installed else None
                own = (row.get("valid_from") or "").strip()
                vf = (valid_from if valid_from is not None
                      else _epoch_ms(own) if own
                      else installed_ms if installed_ms is not None else now)
                out.append(DeviceVersion(
                    device_id=device_id, valid_from=vf,
                    site_id=(row.get("site_id") or "").strip() or None,
                    device_model=(row.get("device_model") or "").strip() or None,
                    calibration_offset_c=_float(row, "calibration_offset_c") or 0.0,
                    max_temperature_c=_float(row, "max_temperature_c"),
                    max_vibration_rms_g=_float(row, "max_vibration_rms_g"),
                    installed_at=installed_ms,
                    decommissioned=(row.get("decommissioned") or "").strip().lower()
                    in ("1", "true", "yes"),
                ))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{i}: bad device row {row!r}: {exc}") from exc
    return out


def publish_devices(cfg: SluiceConfig,
                    versions: Iterable[DeviceVersion | DeviceDeletion]) -> int:
    """Produce the versions as Device Avro upserts on ``topics.devices`` (key: device id,
    record timestamp: valid_from) and the deletions as tombstones (null value, record
    timestamp: the deletion time), in the order given. Returns how many were sent."""
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from sluice.auth import fail_fast
    from sluice.kafka_util import ensure_topics
    from sluice.registry import read_schema

    ensure_topics(cfg, [cfg.topics.devices])
    client = SchemaRegistryClient(cfg.registry.client_conf())
    # TopicNameStrategy outright (see sluice/generator.py: confluent-kafka 2.16's default
    # ASSOCIATED strategy asks an endpoint Apicurio 3.3 lacks).
    serializer = AvroSerializer(
        client, read_schema(cfg.schema_path(cfg.schemas.devices)), lambda obj, ctx: obj,
        {"auto.register.schemas": True, "subject.name.strategy.type": "TOPIC"})
    producer = Producer({**fail_fast(cfg.kafka.client_properties()), "enable.idempotence": True})
    ctx = SerializationContext(cfg.topics.devices, MessageField.VALUE)
    errors: list[str] = []

    def done(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors.append(str(err))

    n = 0
    try:
        for v in versions:
            if isinstance(v, DeviceDeletion):
                producer.produce(cfg.topics.devices, key=v.device_id.encode(), value=None,
                                 timestamp=v.at, on_delivery=done)
            else:
                producer.produce(cfg.topics.devices, key=v.device_id.encode(),
                                 value=serializer(v.as_avro(), ctx), timestamp=v.valid_from,
                                 on_delivery=done)
            producer.poll(0)
            n += 1
        left = producer.flush(60)
    finally:
        client.close()
    if left or errors:
        raise RuntimeError(f"{left} device records undelivered; errors: {errors[:3]}")
    return n


# -- sites ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    region: str | None
    timezone: str | None
    energy_price_per_kwh: float | None


def load_sites(path: Path) -> dict[str, Site]:
    """site_id,region,timezone,energy_price_per_kwh; ValueError naming the line if bad."""
    sites: dict[str, Site] = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                sid = (row.get("site_id") or "").strip()
                if not sid:
                    raise ValueError("site_id is empty")
                sites[sid] = Site((row.get("region") or "").strip() or None,
                                  (row.get("timezone") or "").strip() or None,
                                  _float(row, "energy_price_per_kwh"))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{i}: bad site row {row!r}: {exc}") from exc
    return sites


class SitesTable:
    """The sites file, refreshed without a restart: every lookup first checks (at most
    every ``refresh_s`` seconds) whether the file's mtime or size changed, and re-reads
    it if so. A file that became unreadable or invalid keeps the last good table (and
    counts a reload error) instead of failing the job."""

    def __init__(self, path: Path, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.refresh_s, self.clock = path, refresh_s, clock
        self.sites = load_sites(path)  # a bad file at start fails the job at start
        self.stamp = self._stamp()
        self.checked = clock()
        self.reloads = 0
        self.errors = 0

    def _stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        now = self.clock()
        if now - self.checked < self.refresh_s:
            return
        self.checked = now
        try:
            stamp = self._stamp()
            if stamp == self.stamp:
                return
            self.sites = load_sites(self.path)
            self.stamp = stamp
            self.reloads += 1
        except (OSError, ValueError):
            self.errors += 1

    def get(self, site_id: str | None) -> Site | None:
        self.refresh()
        return None if site_id is None else self.sites.get(site_id)


# -- the join rules (pure; the operator below keeps their inputs in Flink state) --------


def version_at(valid_froms: list[int], t: int, hold_ms: int,
               deleted_at: list[int] = ()) -> tuple[str, int | None]:  # type: ignore[assignment]
    """The device version for a reading at ``t``, from the sorted valid_from list and the
    sorted times of the device's deletions (tombstones on the devices topic):

    * (VALID, the latest valid_from <= t) unless a deletion at or before t is at least as
      recent (a deletion and a version at the same millisecond: the deletion wins);
    * else the device is unknown at t (never registered, or deleted): (LATE, the first
      valid_from after t) when that is within ``hold_ms`` after t;
    * else (MISSING, None)."""
    i = bisect.bisect_right(valid_froms, t)
    j = bisect.bisect_right(deleted_at, t)
    if i > 0 and (j == 0 or valid_froms[i - 1] > deleted_at[j - 1]):
        return VALID, valid_froms[i - 1]
    if i < len(valid_froms) and valid_froms[i] <= t + hold_ms:
        return LATE, valid_froms[i]
    return MISSING, None


def state_expired(last_access_ms: int | None, now_ms: int, ttl_ms: int, waiting: bool) -> bool:
    """Whether a device's reference state (versions, deletions, work orders) is cleared
    now: it has seen no record at all for ``ttl_ms`` of processing time and no reading of
    it is waiting (a waiting reading is never dropped; the clean-up waits for it).
    ``ttl_ms`` 0: never."""
    return (ttl_ms > 0 and last_access_ms is not None and not waiting
            and now_ms - last_access_ms >= ttl_ms)


def prune_before_deletions(valid_froms: list[int], deleted_at: list[int],
                           horizon: int) -> tuple[list[int], list[int]]:
    """What a deletion at d < ``horizon`` (no reading at or before it can still come)
    makes obsolete: every version valid from d or earlier, and the deletion itself.
    Returns (versions to remove, deletions to remove)."""
    gone = [d for d in deleted_at if d < horizon]
    if not gone:
        return [], []
    last = max(gone)
    return [v for v in valid_froms if v <= last], gone


def latest_maintenance(events: Iterable[tuple[int, str, str]], t: int, before_ms: int,
                       after_ms: int) -> tuple[int, str, str] | None:
    """The work order (ts, event_id, kind) with ts in [t - before, t + after] that is the
    latest by ts (ties: the greatest event id): one label per reading, never several."""
    best = None
    for e in events:
        if t - before_ms <= e[0] <= t + after_ms and (best is None or e[:2] > best[:2]):
            best = e
    return best


# -- the operator ------------------------------------------------------------------------

try:  # the operator needs PyFlink; the rest of this module (CLI, tests) does not
    from pyflink.common import Row, Types
    from pyflink.datastream import KeyedCoProcessFunction, TimeDomain
    from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
except ImportError:  # pragma: no cover
    KeyedCoProcessFunction = object  # type: ignore[misc,assignment]

# What ReferenceJoin emits: kind 'joined' (k: device id, v: JoinedReading) or 'dlq'
# (k: topic/partition/offset, v: DeadLetter with reason unknown-device).
JOINED, DEAD = "joined", "dlq"


class ReferenceJoin(KeyedCoProcessFunction):  # type: ignore[misc]
    """Keyed by device id. Input 1: the device's accepted canonical events (``counted``,
    first occurrences) with their raw input bytes; input 2: its Device upserts.

    A reading (telemetry or frame) at event time t is kept in state until the
    watermark (the minimum of both inputs': the device side holds readings back until
    it has passed t too) reaches t + maintenance_after_ms. Then it is joined with the
    version valid at t (VALID). Without one, it waits until the watermark reaches
    t + unknown_device_hold_ms: a first version valid by then is used (LATE), else
    it is emitted with reference_status MISSING or dead-lettered (``unknown-device``).
    A tombstone (null value) at time d deletes the device from d on: readings at or
    after d are unknown until a later version. Work orders are kept (ts, event_id, kind)
    for the interval join and pruned when no reading can match them any more; versions
    made obsolete by a deletion likewise. A device without any record for
    ``device_state_ttl_ms`` (processing time) and no waiting reading is forgotten
    (versions, deletions, work orders). See docs/reference-data.md."""

    def __init__(self, *, enriched_schema: str, enriched_id: int, devices_schema: str,
                 joined_schema: str, joined_id: int, dlq_schema: str, dlq_id: int,
                 registry_conf: dict[str, Any], registry_retry: Any, sites_csv: str,
                 sites_refresh_s: float, hold_ms: int, unknown_device: str, before_ms: int,
                 after_ms: int, out_of_orderness_ms: int, job_name: str,
                 device_state_ttl_ms: int = 0) -> None:
        self.enriched_schema, self.enriched_id = enriched_schema, enriched_id
        self.devices_schema = devices_schema
        self.joined_schema, self.joined_id = joined_schema, joined_id
        self.dlq_schema, self.dlq_id = dlq_schema, dlq_id
        self.registry_conf, self.registry_retry = registry_conf, registry_retry
        self.sites_csv, self.sites_refresh_s = sites_csv, sites_refresh_s
        self.hold_ms, self.unknown_device = hold_ms, unknown_device
        self.before_ms, self.after_ms = before_ms, after_ms
        self.ooo_ms = out_of_orderness_ms
        self.job_name = job_name
        self.ttl_ms = device_state_ttl_ms

    def open(self, runtime_context) -> None:  # type: ignore[no-untyped-def]
        from sluice.native import AvroDecoder, AvroEncoder
        from sluice.registry import WriterSchemaCache
        from sluice.udfs import counters

        self.events = AvroDecoder(self.enriched_schema, record_as="dict")
        self.events.add_writer_schema(self.enriched_id, self.enriched_schema)
        self.devices = AvroDecoder(self.devices_schema, record_as="dict")
        self.writers = WriterSchemaCache(self.registry_conf, self.registry_retry)
        self.joined_encoder = AvroEncoder(self.joined_schema, self.joined_id)
        self.dlq_encoder = AvroEncoder(self.dlq_schema, self.dlq_id)
        self.sites = SitesTable(Path(self.sites_csv), self.sites_refresh_s)
        pickled = Types.PICKLED_BYTE_ARRAY()
        # valid_from → the Device record (dict); pending: t → [reading]; maint: ts → [(id, kind)]
        self.versions = runtime_context.get_map_state(
            MapStateDescriptor("device-versions", Types.LONG(), pickled))
        self.pending = runtime_context.get_map_state(
            MapStateDescriptor("pending-readings", Types.LONG(), pickled))
        self.maint = runtime_context.get_map_state(
            MapStateDescriptor("maintenance", Types.LONG(), pickled))
        # deletion time (a tombstone's record timestamp) → True
        self.deleted = runtime_context.get_map_state(
            MapStateDescriptor("device-deletions", Types.LONG(), Types.BOOLEAN()))
        # The device-state TTL: the last record's processing time, and the clean-up timer.
        self.last_access = runtime_context.get_state(
            ValueStateDescriptor("last-access", Types.LONG()))
        self.ttl_timer = runtime_context.get_state(
            ValueStateDescriptor("ttl-timer", Types.LONG()))

        class _Ctx:
            def get_metric_group(self):  # type: ignore[no-untyped-def]
                return runtime_context.get_metrics_group()

        self.counters = counters(_Ctx(), "reference", (
            "joined", "late_reference", "missing_reference", "unknown_device_dead_letters",
            "device_versions", "device_deletions", "device_state_expired",
            "bad_device_records", "sites_reloads"))

    def close(self) -> None:
        self.writers.close()

    def _decode(self, decoder, value: bytes) -> dict:  # type: ignore[no-untyped-def]
        from sluice.native import UnknownSchemaError

        try:
            return decoder.decode(value)[1]
        except UnknownSchemaError as exc:
            text = self.writers.fetch_with_retry(exc.schema_id)
            if text is None:
                raise
            decoder.add_writer_schema(exc.schema_id, text)
            return decoder.decode(value)[1]

    def _touch(self, ctx) -> None:  # type: ignore[no-untyped-def]
        """Note a record of this device now, and make sure a TTL clean-up timer is set."""
        if self.ttl_ms <= 0:
            return
        now = ctx.timer_service().current_processing_time()
        self.last_access.update(now)
        if self.ttl_timer.value() is None:
            ctx.timer_service().register_processing_time_timer(now + self.ttl_ms)
            self.ttl_timer.update(now + self.ttl_ms)

    # input 1: Row(device_id, event_id, source, out_value, key, value, topic, partition,
    #              offset, rowtime)
    def process_element1(self, row, ctx):  # type: ignore[no-untyped-def]
        self._touch(ctx)
        t = ctx.timestamp()
        e = self._decode(self.events, row[3])
        source = e["source"]  # the EventSource symbol (row[2] is the input's name)
        if source == "MAINTENANCE":
            m = e["maintenance"]
            kind = m["kind"] if m else None
            entries = self.maint.get(t) or []
            entries.append((row[1], kind))
            self.maint.put(t, entries)
            return
        if source not in READING_SOURCES:
            return
        reading = {
            "event_id": row[1], "device_id": row[0], "ts": t, "source": source,
            "temperature_c": e.get("temperature_c"), "vibration_rms": e.get("vibration_rms"),
            "source_topic": row[6], "source_partition": row[7], "source_offset": row[8],
            # The raw input, for a dead letter; its Kafka timestamp is the event time t.
            "raw": (row[5], row[4], t),
        }
        entries = self.pending.get(t) or []
        entries.append(reading)
        self.pending.put(t, entries)
        ctx.timer_service().register_event_time_timer(t + self.after_ms)

    # input 2: Row(key, value, ts)
    def process_element2(self, row, ctx):  # type: ignore[no-untyped-def]
        from sluice.native import DecodeError

        self._touch(ctx)
        if row[1] is None:  # a tombstone: the device is deleted from its timestamp on
            d = ctx.timestamp()
            self.deleted.put(d, True)
            self.counters["device_deletions"].inc()
            # Prune what it makes obsolete once no reading before it can still come.
            ctx.timer_service().register_event_time_timer(d + self._prune_lag() + 1)
            return
        try:
            d = self._decode(self.devices, row[1])
        except DecodeError:
            self.counters["bad_device_records"].inc()
            return
        vf = d["valid_from"]
        vf = vf if isinstance(vf, int) else int(vf.timestamp() * 1000)
        self.versions.put(vf, d)
        self.counters["device_versions"].inc()

    def _prune_lag(self) -> int:
        """How far behind the watermark a reading can still be joined with state."""
        return self.before_ms + max(self.after_ms, self.hold_ms) + self.ooo_ms

    def _expire(self, timestamp: int, ctx) -> None:  # type: ignore[no-untyped-def]
        """The TTL timer (processing time): forget an idle device, or look again later."""
        last = self.last_access.value()
        waiting = any(True for _ in self.pending.keys())
        if state_expired(last, timestamp, self.ttl_ms, waiting):
            self.versions.clear()
            self.deleted.clear()
            self.maint.clear()
            self.last_access.clear()
            self.ttl_timer.clear()
            self.counters["device_state_expired"].inc()
            return
        # Still in use: look again one TTL after the last record; if it is only a waiting
        # reading that keeps the state, one TTL from now (so a device is forgotten between
        # one and two TTLs after its last record, never while a reading of it waits).
        nxt = (last or timestamp) + self.ttl_ms
        if nxt <= timestamp:
            nxt = timestamp + self.ttl_ms
        ctx.timer_service().register_processing_time_timer(nxt)
        self.ttl_timer.update(nxt)

    def on_timer(self, timestamp: int, ctx):  # type: ignore[no-untyped-def]
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._expire(timestamp, ctx)
            return
        wm = ctx.timer_service().current_watermark()
        now = max(timestamp, wm)
        deleted = sorted(self.deleted.keys())
        valid_froms = sorted(self.versions.keys())
        maint = [(ts, eid, kind) for ts, lst in self.maint.items() for eid, kind in lst]
        due = sorted(t for t in self.pending.keys() if t + self.after_ms <= now)
        for t in due:
            keep = []
            for reading in self.pending.get(t):
                status, vf = version_at(valid_froms, t, self.hold_ms, deleted)
                if status != VALID and now < t + self.hold_ms:
                    keep.append(reading)
                    continue
                out = self._emit(reading, t, status, vf, maint, deleted)
                if out is not None:
                    yield out
            if keep:
                self.pending.put(t, keep)
                ctx.timer_service().register_event_time_timer(t + self.hold_ms)
            else:
                self.pending.remove(t)
        # Work orders no pending or future (on-time) reading can match any more, and the
        # versions and deletions a deletion before that made obsolete.
        horizon = now - self._prune_lag()
        oldest = min(self.pending.keys(), default=None)
        if oldest is not None:
            horizon = min(horizon, oldest - self.before_ms)
        for ts in [ts for ts in self.maint.keys() if ts < horizon]:
            self.maint.remove(ts)
        old_versions, old_deletions = prune_before_deletions(valid_froms, deleted, horizon)
        for vf in old_versions:
            self.versions.remove(vf)
        for d in old_deletions:
            self.deleted.remove(d)

    def _emit(self, r: dict, t: int, status: str, vf: int | None, maint: list,
              deleted: list[int]) -> Row | None:
        if status == MISSING and self.unknown_device == "dead-letter":
            from sluice.udfs import dead_letter

            self.counters["unknown_device_dead_letters"].inc()
            value, key, kafka_ts = r["raw"]
            gone = [d for d in deleted if d <= t]
            why = (f"was deleted at {gone[-1]} (a tombstone on the devices topic) and "
                   if gone else "")
            out = dead_letter(
                self.dlq_encoder, value, key, r["source_topic"], r["source_partition"],
                r["source_offset"], kafka_ts, "UnknownDeviceError", "unknown-device",
                f"device {r['device_id']!r} {why}has no version valid at {t} on the devices "
                f"topic, nor one within reference.unknown_device_hold_ms ({self.hold_ms})",
                None, self.job_name)
            return Row(DEAD, f"{r['source_topic']}/{r['source_partition']}/{r['source_offset']}",
                       out)
        d = self.versions.get(vf) if vf is not None else None
        rec = {k: r[k] for k in ("event_id", "device_id", "ts", "source", "temperature_c",
                                 "vibration_rms", "source_topic", "source_partition",
                                 "source_offset")}
        rec["reference_status"] = status
        if d is not None:
            offset = d["calibration_offset_c"]
            rec.update(device_version=vf, site_id=d["site_id"], device_model=d["device_model"],
                       calibration_offset_c=offset, max_temperature_c=d["max_temperature_c"],
                       max_vibration_rms_g=d["max_vibration_rms_g"],
                       decommissioned=d["decommissioned"])
            if r["temperature_c"] is not None:
                rec["temperature_calibrated_c"] = r["temperature_c"] + offset
            reloads = self.sites.reloads
            site = self.sites.get(d["site_id"])
            if self.sites.reloads != reloads:
                self.counters["sites_reloads"].inc()
            if site is not None:
                rec.update(region=site.region, timezone=site.timezone,
                           energy_price_per_kwh=site.energy_price_per_kwh)
        m = latest_maintenance(maint, t, self.before_ms, self.after_ms)
        if m is not None:
            rec.update(maintenance_ts=m[0], maintenance_event_id=m[1], maintenance_kind=m[2])
        self.counters["joined"].inc()
        if status == LATE:
            self.counters["late_reference"].inc()
        elif status == MISSING:
            self.counters["missing_reference"].inc()
        return Row(JOINED, r["device_id"], self.joined_encoder.encode(rec))


def output_type():  # type: ignore[no-untyped-def]
    """The Flink type of what ReferenceJoin emits."""
    return Types.ROW_NAMED(["kind", "k", "v"],
                           [Types.STRING(), Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
