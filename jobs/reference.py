"""The reference-data joins of the pipeline (``reference.joins: true``; issue 4).

    counted (first occurrences) ──key by device──┐
                                                 ├─ ReferenceJoin (Python, keyed co-process)
    `devices` (compacted, Device Avro upserts) ──┘    temporal join (event time, versioned)
                                                      + interval join with work orders
                                                      + sites file (refreshed, no restart)
      ├→ `telemetry.joined`  JoinedReading      exactly-once
      └→ `dlq`               unknown-device     (reference.unknown_device: dead-letter)

Everything here is appended after the pipeline's own statements, so their uids (and
savepoint state) stay as they are. docs/reference-data.md explains the choices.
"""

from __future__ import annotations

from pyflink.table import StatementSet, StreamTableEnvironment

from sluice.config import SluiceConfig
from sluice.reference import ReferenceJoin, output_type
from sluice.registry import RetryPolicy, output_schema, read_schema


def _devices_source_ddl(cfg: SluiceConfig, kafka_props: str) -> str:
    # Always from the earliest offset: the job needs the whole registry, whatever the
    # readings' startup mode (after a restore, the source resumes from its checkpoint).
    bounded = ",\n'scan.bounded.mode' = 'latest-offset'" if cfg.job.bounded else ""
    ooo = f"{cfg.window.out_of_orderness_ms / 1000:.3f}"
    # Its own idle timeout (FLIP-296 table option): versions are rare and far behind the
    # readings, so this source holds the join back until it is idle.
    idle = cfg.reference.devices_idle_timeout_ms
    idle_opt = f",\n'scan.watermark.idle-timeout' = '{idle} ms'" if idle else ""
    return f"""
        CREATE TEMPORARY TABLE devices_raw (
            `key` BYTES,
            `value` BYTES,
            `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
            WATERMARK FOR `ts` AS `ts` - INTERVAL '{ooo}' SECOND
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{cfg.topics.devices}',
            {kafka_props},
            'properties.group.id' = '{cfg.job.consumer_group}-devices',
            'properties.isolation.level' = 'read_committed',
            'key.format' = 'raw',
            'key.fields' = 'key',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY',
            'scan.startup.mode' = 'earliest-offset'{bounded}{idle_opt}
        )"""


def add_reference_joins(t_env: StreamTableEnvironment, stmts: StatementSet,
                        cfg: SluiceConfig, kafka_props: str, sink_ddl) -> None:  # type: ignore[no-untyped-def]
    """Append the joins: reads the view ``counted``, adds INSERTs to ``stmts``."""
    from pyflink.common import Types

    ref = cfg.reference
    enriched = output_schema(cfg, cfg.schemas.enriched)
    joined = output_schema(cfg, cfg.schemas.joined)
    dlq = output_schema(cfg, cfg.schemas.dlq)
    join = ReferenceJoin(
        enriched_schema=enriched.schema_str, enriched_id=enriched.schema_id,
        devices_schema=read_schema(cfg.schema_path(cfg.schemas.devices)),
        joined_schema=joined.schema_str, joined_id=joined.schema_id,
        dlq_schema=dlq.schema_str, dlq_id=dlq.schema_id,
        registry_conf=cfg.registry.client_conf(),
        registry_retry=RetryPolicy(cfg.registry.unknown_id_retry_ms,
                                   cfg.registry.retry_backoff_ms),
        sites_csv=str(cfg.path(ref.sites_csv).resolve()),
        sites_refresh_s=ref.sites_refresh_s, hold_ms=ref.unknown_device_hold_ms,
        unknown_device=ref.unknown_device, before_ms=ref.maintenance_before_ms,
        after_ms=ref.maintenance_after_ms,
        out_of_orderness_ms=cfg.window.out_of_orderness_ms, job_name=cfg.job.name,
        device_state_ttl_ms=ref.device_state_ttl_ms,
    )
    # A bad sites file must fail the job at submit time, not in a worker.
    from sluice.reference import load_sites

    load_sites(cfg.path(ref.sites_csv))

    t_env.execute_sql(_devices_source_ddl(cfg, kafka_props))
    t_env.execute_sql(sink_ddl(cfg, "joined_sink", cfg.topics.joined))
    events = t_env.to_data_stream(t_env.sql_query(
        "SELECT r.device_id, r.event_id, r.source, r.out_value, `key`, `value`, `topic`, "
        "`partition`, `offset`, rowtime FROM counted WHERE seen = 1"))
    devices = t_env.to_data_stream(t_env.sql_query("SELECT `key`, `value`, `ts` FROM devices_raw"))
    out = (
        events.connect(devices)
        .key_by(lambda r: r[0], lambda d: d[0].decode("utf-8", "replace") if d[0] else "",
                key_type=Types.STRING())
        .process(join, output_type=output_type())
        .uid("reference-join")
        .name("reference-join")
    )
    t_env.create_temporary_view("reference_out", t_env.from_data_stream(out))
    stmts.add_insert_sql("INSERT INTO joined_sink SELECT k, v FROM reference_out "
                         "WHERE kind = 'joined'")
    stmts.add_insert_sql("INSERT INTO dlq_sink SELECT k, v FROM reference_out WHERE kind = 'dlq'")
