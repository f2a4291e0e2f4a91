"""`sluice bench` variant (c): what Flink SQL built-ins (Java, no Python UDF) can express
of the ingest path, on the same telemetry.

    python jobs/bench_sql.py --config CONFIG [--rest-port N] [--format avro|json]

Reads ``topics.telemetry``, bounded from the earliest offset: with ``--format avro`` (the
default) the same Confluent-framed Avro the Rust variant reads, decoded by Flink's
``avro-confluent`` format against the registry with our reader schema (writer schemas
v1-v3 resolved to it by Avro's rules, aliases and promotions included); with
``--format json`` a JSON copy in the reader schema's field names. Then it filters,
enriches from the device table (a CASE lookup compiled into the plan: stateless, keeps
the rowtime), dedups on the event id (the same OVER count as jobs/pipeline.py) and writes

- every accepted reading as JSON, with ``processed_at`` (CURRENT_TIMESTAMP, evaluated per
  record) to ``topics.enriched``;
- a tumbling event-time window per device (count, mean, max) to ``topics.scores``.

The avro format needs ``flink-sql-avro-confluent-registry`` in ``job.jars`` (the bench
adds it; docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.pipeline import _kafka_props, create_env, load_devices  # noqa: E402
from sluice.config import SluiceConfig, load_config  # noqa: E402
from sluice.registry import read_schema  # noqa: E402


def _quote(s: str | None) -> str:
    return "CAST(NULL AS STRING)" if s is None else "'" + s.replace("'", "''") + "'"


def _lookup(devices: dict, attr: str, sql_type: str) -> str:
    cases = " ".join(
        f"WHEN {_quote(dev)} THEN "
        + (_quote(getattr(ref, attr)) if sql_type == "STRING"
           else ("CAST(NULL AS DOUBLE)" if getattr(ref, attr) is None else repr(float(getattr(ref, attr)))))
        for dev, ref in devices.items())
    return f"CAST(CASE device_id {cases} ELSE NULL END AS {sql_type})"


def _sink(cfg: SluiceConfig, table: str, topic: str, columns: str) -> str:
    if cfg.job.delivery_guarantee == "exactly-once":
        delivery = f"""'sink.delivery-guarantee' = 'exactly-once',
            'sink.transactional-id-prefix' = '{cfg.job.transactional_id_prefix}-{table}',
            'properties.transaction.timeout.ms' = '{cfg.kafka.transaction_timeout_ms}'"""
    else:
        delivery = "'sink.delivery-guarantee' = 'at-least-once'"
    return f"""CREATE TEMPORARY TABLE `{table}` ({columns}) WITH (
        'connector' = 'kafka', 'topic' = '{topic}', {_kafka_props(cfg)},
        'format' = 'json', 'json.timestamp-format.standard' = 'ISO-8601', {delivery})"""


def _source_ddl(cfg: SluiceConfig, fmt: str) -> str:
    ooo = f"{cfg.window.out_of_orderness_ms / 1000:.3f}"
    meta = f"""`partition` INT METADATA VIRTUAL,
            `offset` BIGINT METADATA VIRTUAL,
            rowtime TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
            proc AS PROCTIME(),
            WATERMARK FOR rowtime AS rowtime - INTERVAL '{ooo}' SECOND"""
    if fmt == "json":
        columns = """event_id STRING, device_id STRING, ts BIGINT, temperature_c DOUBLE,
            vibration_rms_g DOUBLE, status STRING, humidity_pct DOUBLE, firmware STRING,
            sample_count INT"""
        format_opts = "'format' = 'json', 'json.ignore-parse-errors' = 'false'"
    else:
        # Our reader schema, given to the format: the schema it would derive from the DDL
        # cannot read our writers (an enum, v1/v2's vibration_rms alias, v3's long). Flink
        # reads the record's fields by position, so the physical columns are exactly the
        # schema's fields: the same names, order, nullability and the types Flink derives
        # from it (the format refuses anything else).
        schema = read_schema(cfg.schema_path(cfg.schemas.telemetry_reader))
        columns = """event_id STRING NOT NULL, device_id STRING NOT NULL,
            ts TIMESTAMP(3) NOT NULL, temperature_c DOUBLE NOT NULL,
            vibration_rms_g FLOAT NOT NULL, status STRING NOT NULL, humidity_pct DOUBLE,
            firmware STRING, sample_count BIGINT NOT NULL"""
        registry = cfg.registry.url.replace("'", "''")
        escaped = schema.replace("'", "''")
        format_opts = (f"'format' = 'avro-confluent', 'avro-confluent.url' = '{registry}', "
                       f"'avro-confluent.schema' = '{escaped}'")
    return f"""
        CREATE TEMPORARY TABLE readings_raw (
            {columns},
            {meta}
        ) WITH (
            'connector' = 'kafka', 'topic' = '{cfg.topics.telemetry}', {_kafka_props(cfg)},
            'properties.group.id' = '{cfg.job.consumer_group}',
            'properties.isolation.level' = 'read_committed',
            {format_opts},
            'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset'
        )"""


def build(env: StreamExecutionEnvironment, cfg: SluiceConfig, fmt: str = "avro") -> None:
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.exec.state.ttl", f"{cfg.ingest.dedup_ttl_ms} ms")
    t_env.execute_sql(_source_ddl(cfg, fmt))
    if fmt == "json":
        t_env.create_temporary_view("readings", t_env.sql_query("SELECT * FROM readings_raw"))
    else:
        # ts is the record timestamp too (the schema says so): its epoch millis come from
        # the rowtime column, without a time-zone round trip.
        t_env.create_temporary_view("readings", t_env.sql_query("""
            SELECT event_id, device_id, UNIX_TIMESTAMP(CAST(rowtime AS STRING)) * 1000
                       + EXTRACT(MILLISECOND FROM rowtime) AS ts,
                   temperature_c, CAST(vibration_rms_g AS DOUBLE) AS vibration_rms_g, status,
                   humidity_pct, firmware, CAST(sample_count AS INT) AS sample_count,
                   `partition`, `offset`, rowtime, proc
            FROM readings_raw"""))
    devices = load_devices(cfg.path(cfg.reference.devices_csv))
    lim = cfg.ingest
    t_env.create_temporary_view("counted", t_env.sql_query(f"""
        SELECT event_id, device_id, ts, temperature_c, vibration_rms_g, status, humidity_pct,
               firmware, sample_count, `partition`, `offset`, rowtime,
               {_lookup(devices, 'site_id', 'STRING')} AS site_id,
               {_lookup(devices, 'device_model', 'STRING')} AS device_model,
               {_lookup(devices, 'max_temperature_c', 'DOUBLE')} AS max_temperature_c,
               COUNT(*) OVER (PARTITION BY event_id ORDER BY proc
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS seen
        FROM readings
        WHERE event_id IS NOT NULL AND device_id IS NOT NULL AND ts >= {lim.min_ts_ms}
          AND temperature_c BETWEEN -1e308 AND 1e308"""))
    t_env.execute_sql(_sink(cfg, "enriched_sink", cfg.topics.enriched, """
        event_id STRING, device_id STRING, ts BIGINT, source STRING, temperature_c DOUBLE,
        vibration_rms_g DOUBLE, status STRING, humidity_pct DOUBLE, firmware STRING,
        sample_count INT, site_id STRING, device_model STRING, max_temperature_c DOUBLE,
        `partition` INT, `offset` BIGINT, processed_at TIMESTAMP_LTZ(3)"""))
    t_env.execute_sql(_sink(cfg, "scores_sink", cfg.topics.scores, """
        device_id STRING, window_start TIMESTAMP(3), window_end TIMESTAMP(3), cnt BIGINT,
        mean DOUBLE, mx DOUBLE, thr DOUBLE, score DOUBLE"""))
    size = f"{cfg.window.size_ms / 1000:.3f}"
    thr = cfg.score.default_threshold
    stmts = t_env.create_statement_set()
    stmts.add_insert_sql("""
        INSERT INTO enriched_sink
        SELECT event_id, device_id, ts, 'TELEMETRY', temperature_c, vibration_rms_g, status,
               humidity_pct, firmware, sample_count, site_id, device_model, max_temperature_c,
               `partition`, `offset`, CURRENT_TIMESTAMP
        FROM counted WHERE seen = 1""")
    stmts.add_insert_sql(f"""
        INSERT INTO scores_sink
        SELECT device_id, window_start, window_end, cnt, mean, mx, thr, mean / thr
        FROM (
            SELECT device_id, window_start, window_end, COUNT(*) AS cnt,
                   AVG(temperature_c) AS mean, MAX(temperature_c) AS mx,
                   COALESCE(MAX(max_temperature_c), {thr}) AS thr
            FROM TABLE(TUMBLE(TABLE counted, DESCRIPTOR(rowtime), INTERVAL '{size}' SECOND))
            WHERE seen = 1
            GROUP BY device_id, window_start, window_end)""")
    stmts.execute().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--rest-port", type=int, default=0)
    parser.add_argument("--format", choices=["avro", "json"], default="avro",
                        help="the input: Confluent-framed Avro (avro-confluent) or its JSON copy")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    env = create_env(cfg, args.rest_port)
    build(env, cfg, args.format)


if __name__ == "__main__":
    main()
