"""The fused sluice pipeline: telemetry → decode + enrich (Rust) → windows → score → Kafka.

    python jobs/pipeline.py --config sluice.yaml            # Flink mini-cluster
    flink run -py jobs/pipeline.py -pyexec .venv/bin/python \
        -j .deps/flink-jars/flink-sql-connector-kafka-5.0.0-2.2.jar -- --config sluice.yaml

Data flow (one Python crossing per input record):

    Kafka `telemetry` (raw bytes + topic/partition/offset/timestamp, per-partition
    watermarks on the record timestamp)
      → Ingest UDF: Rust decode (writer id → reader schema), enrich from the device
        table, Rust encode EnrichedReading or DeadLetter
      ├→ `telemetry.enriched`   (ok records)          exactly-once
      ├→ `dlq`                  (undecodable records) exactly-once
      └→ tumbling event-time window per device: count, mean, max (Flink SQL)
           → ScoreWindow UDF (Rust encode) → `scores` (every window), `alerts` (crossed)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import site
import sys
from collections.abc import Callable
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import DataTypes, Schema, StatementSet, StreamTableEnvironment
from pyflink.table.udf import udaf, udf

if __package__ in (None, ""):  # run as a script (python jobs/pipeline.py, flink run -py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sluice.config import (  # noqa: E402
    BUNDLE_TIME_OPTION,
    SluiceConfig,
    load_config,
    profile_flink_options,
)
from sluice.feature_job import add_feature_windows  # noqa: E402
from sluice.kafka_util import check_transaction_timeout, preflight  # noqa: E402
from sluice.quality import load_suite, suite_path  # noqa: E402
from sluice.registry import RetryPolicy, output_schema, read_schema  # noqa: E402
from sluice.udfs import (  # noqa: E402
    FRAMES,
    INGEST_RESULT,
    MAINTENANCE,
    SCORE_RESULT,
    TELEMETRY,
    AuditWindow,
    DeviceRef,
    DuplicateEvent,
    Ingest,
    IngestLimits,
    ScoreWindow,
)


def load_devices(path: Path) -> dict[str, DeviceRef]:
    """The device reference table (issue 4 replaces it with a temporal join on `devices`)."""
    devices: dict[str, DeviceRef] = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                devices[row["device_id"]] = DeviceRef(
                    site_id=row.get("site_id") or None,
                    device_model=row.get("device_model") or None,
                    max_temperature_c=float(row["max_temperature_c"])
                    if row.get("max_temperature_c")
                    else None,
                )
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{i}: bad device row {row!r}: {exc}") from exc
    return devices


def flink_options(cfg: SluiceConfig) -> dict[str, str]:
    """Everything the job sets on the execution environment, from the one config model
    (plain strings: no JVM needed to build or check them)."""
    conf: dict[str, str] = {}
    jars = ";".join(cfg.path(j).resolve().as_uri() for j in cfg.job.jars)
    for jar in cfg.job.jars:
        if not cfg.path(jar).exists():
            raise FileNotFoundError(f"job.jars: {cfg.path(jar)} is missing; run `make deps`")
    conf["pipeline.jars"] = jars
    conf["pipeline.name"] = cfg.job.name
    conf["python.execution-mode"] = cfg.job.python_execution_mode
    conf["execution.checkpointing.interval"] = f"{cfg.checkpoint.interval_ms} ms"
    conf["execution.checkpointing.mode"] = "EXACTLY_ONCE"
    conf["execution.checkpointing.min-pause"] = f"{cfg.checkpoint.min_pause_ms} ms"
    conf["execution.checkpointing.timeout"] = f"{cfg.checkpoint.timeout_ms} ms"
    conf["execution.checkpointing.externalized-checkpoint-retention"] = "RETAIN_ON_CANCELLATION"
    if cfg.checkpoint.dir:
        conf["execution.checkpointing.dir"] = cfg.checkpoint.dir
    conf["state.backend.type"] = cfg.checkpoint.state_backend
    if cfg.checkpoint.state_backend == "rocksdb":
        conf["execution.checkpointing.incremental"] = (
            str(cfg.checkpoint.rocksdb_incremental).lower())
    # A job that fails for good must fail visibly, not restart forever.
    conf["restart-strategy.type"] = "fixed-delay"
    conf["restart-strategy.fixed-delay.attempts"] = str(cfg.job.restart_attempts)
    conf["restart-strategy.fixed-delay.delay"] = "2 s"
    # Deterministic uids for every SQL transformation, so savepoints map back.
    conf["table.exec.uid.generation"] = "ALWAYS"
    # Periodic watermarks, explicitly: under `flink run` the interval otherwise comes from
    # the client's context environment, where it was 0 (no watermark ever left the source,
    # so windows fired only at the end of input or on stop-with-drain).
    conf["pipeline.auto-watermark-interval"] = "200 ms"
    if cfg.window.idle_timeout_ms:
        conf["table.exec.source.idle-timeout"] = f"{cfg.window.idle_timeout_ms} ms"
    # A mini-cluster's REST answers metrics from a cache refreshed this often (default
    # 10 s; `sluice report` samples counters over seconds). A cluster sets its own.
    conf["metrics.fetcher.update-interval"] = "1000"
    # The performance profile last: its options win over the settings above, except the
    # Python bundle time. That one is always job.python_bundle_time_ms, the value the idle
    # timeouts are validated against (sluice/config.py); a profile's bundle time is that
    # key's default, so an explicit key wins over it and both agree.
    conf.update(profile_flink_options(cfg.job.profile))
    conf[BUNDLE_TIME_OPTION] = str(cfg.job.python_bundle_time_ms)
    return conf


def flink_configuration(cfg: SluiceConfig) -> Configuration:
    """:func:`flink_options` as the Flink Configuration the environment is created with."""
    conf = Configuration()
    for key, value in flink_options(cfg).items():
        conf.set_string(key, value)
    return conf


def _kafka_props(cfg: SluiceConfig) -> str:
    return ",\n".join(
        f"'properties.{k}' = '{v}'" for k, v in cfg.kafka.java_properties().items()
    )


def _sink_ddl(cfg: SluiceConfig, table: str, topic: str) -> str:
    if cfg.job.delivery_guarantee == "exactly-once":
        delivery = f"""'sink.delivery-guarantee' = 'exactly-once',
            'sink.transactional-id-prefix' = '{cfg.job.transactional_id_prefix}-{table}',
            'properties.transaction.timeout.ms' = '{cfg.kafka.transaction_timeout_ms}'"""
    else:
        delivery = "'sink.delivery-guarantee' = 'at-least-once'"
    return f"""
        CREATE TEMPORARY TABLE `{table}` (
            `k` STRING,
            `v` BYTES
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{topic}',
            {_kafka_props(cfg)},
            'key.format' = 'raw',
            'key.fields' = 'k',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY',
            {delivery}
        )"""


def _source_ddl(cfg: SluiceConfig) -> str:
    """One Kafka source over the three input topics (one watermark per partition)."""
    startup = {
        "earliest": "'scan.startup.mode' = 'earliest-offset'",
        "latest": "'scan.startup.mode' = 'latest-offset'",
        "group-offsets": "'scan.startup.mode' = 'group-offsets',\n"
        "'properties.auto.offset.reset' = 'earliest'",
    }[cfg.job.startup_mode]
    bounded = ",\n'scan.bounded.mode' = 'latest-offset'" if cfg.job.bounded else ""
    ooo = f"{cfg.window.out_of_orderness_ms / 1000:.3f}"
    # Event time is the Kafka record timestamp, which producers set to the reading's
    # ts: it lets the source keep one watermark per partition (docs/event-time.md).
    return f"""
        CREATE TEMPORARY TABLE inputs_raw (
            `key` BYTES,
            `value` BYTES,
            `topic` STRING METADATA VIRTUAL,
            `partition` INT METADATA VIRTUAL,
            `offset` BIGINT METADATA VIRTUAL,
            `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
            `headers` MAP<STRING, BYTES> METADATA VIRTUAL,
            WATERMARK FOR `ts` AS `ts` - INTERVAL '{ooo}' SECOND
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{";".join(cfg.topics.inputs())}',
            {_kafka_props(cfg)},
            'properties.group.id' = '{cfg.job.consumer_group}',
            'properties.isolation.level' = 'read_committed',
            'key.format' = 'raw',
            'key.fields' = 'key',
            'value.format' = 'raw',
            'value.fields-include' = 'EXCEPT_KEY',
            {startup}{bounded}
        )"""


def _with_source_time(t_env: StreamTableEnvironment, query: str, name: str,  # type: ignore[no-untyped-def]
                      proctime: bool = False):
    """Materialise a query once as a DataStream and re-enter it with the source's
    record timestamps and watermarks. Every branch then reads the same stream, so
    the Python UDF in ``query`` runs once per record, not once per branch."""
    ds = t_env.to_data_stream(t_env.sql_query(query))
    schema = (
        Schema.new_builder()
        .column_by_metadata("rowtime", "TIMESTAMP_LTZ(3)")
        .watermark("rowtime", "SOURCE_WATERMARK()")
    )
    if proctime:
        schema = schema.column_by_expression("proc", "PROCTIME()")
    table = t_env.from_data_stream(ds, schema.build())
    t_env.create_temporary_view(name, table)


def load_suites(cfg: SluiceConfig) -> dict[str, dict]:
    """The great-expectations suite of each input that has one, validated (a broken
    suite fails the job at submit time, naming the file and the expectation)."""
    folder = cfg.path(cfg.quality.suites_dir)
    return {
        src: load_suite(suite_path(folder, src))
        for src in (TELEMETRY, FRAMES, MAINTENANCE)
        if suite_path(folder, src).is_file()
    }


Extension = Callable[[StreamTableEnvironment, StatementSet, SluiceConfig], None]


def build_pipeline(env: StreamExecutionEnvironment, cfg: SluiceConfig,
                   extend: Extension | None = None, *, ingest_cls: type[Ingest] | None = None,
                   score_cls: type[ScoreWindow] | None = None) -> StatementSet:
    """Declare the whole job on ``env``; the caller executes it.

    ``extend`` adds operators of a later job version: it sees the views ``ingested``,
    ``counted`` and ``scored`` and adds its INSERTs after all of ours. Savepoints
    map operator state by uid, which the planner derives from its numbering of the
    plan; appending keeps every existing uid (tests/e2e/test_upgrade.py proves it),
    editing or reordering existing statements is not covered.

    ``ingest_cls`` / ``score_cls``: the UDF classes (the pure-Python baseline of
    `sluice bench`, sluice/bench_udfs.py, swaps in subclasses; the graph is the same)."""
    t_env = StreamTableEnvironment.create(env)
    # Per-event-id dedup state lives this long (a repeat after that is not detected).
    t_env.get_config().set("table.exec.state.ttl", f"{cfg.ingest.dedup_ttl_ms} ms")
    reader = read_schema(cfg.schema_path(cfg.schemas.telemetry_reader))
    enriched = output_schema(cfg, cfg.schemas.enriched)
    dlq = output_schema(cfg, cfg.schemas.dlq)
    scores = output_schema(cfg, cfg.schemas.scores)
    alerts = output_schema(cfg, cfg.schemas.alerts)
    lim = cfg.ingest
    suites = load_suites(cfg)

    # Looked up at call time: tests/e2e/jobs/fail_once_pipeline.py replaces the module's
    # Ingest (a default argument would have bound the original at import).
    ingest_cls = ingest_cls or Ingest
    score_cls = score_cls or ScoreWindow
    ingest = ingest_cls(
        topics={cfg.topics.telemetry: TELEMETRY, cfg.topics.sensor_frames: FRAMES,
                cfg.topics.maintenance: MAINTENANCE},
        reader_schema=reader,
        enriched_schema=enriched.schema_str,
        enriched_id=enriched.schema_id,
        dlq_schema=dlq.schema_str,
        dlq_id=dlq.schema_id,
        # Credentials stay out of the pickled UDF: it reads them in open() from this file.
        registry_conf=cfg.registry.client_conf(secret=False),
        registry_auth_file=cfg.registry.udf_auth_file(),
        registry_retry=RetryPolicy(cfg.registry.unknown_id_retry_ms, cfg.registry.retry_backoff_ms),
        unknown_id_cooldown_ms=cfg.registry.unknown_id_cooldown_ms,
        devices=load_devices(cfg.path(cfg.reference.devices_csv)),
        job_name=cfg.job.name,
        metric=cfg.score.metric,
        default_threshold=cfg.score.default_threshold,
        limits=IngestLimits(
            max_record_bytes=lim.max_record_bytes, max_json_depth=lim.max_json_depth,
            max_frame_samples=lim.max_frame_samples, min_ts_ms=lim.min_ts_ms,
            max_ts_skew_ms=lim.max_ts_skew_ms,
        ),
        suites={src: json.dumps(doc) for src, doc in suites.items()},
    )
    t_env.create_temporary_function("sluice_ingest", udf(ingest, result_type=INGEST_RESULT))
    duplicate = DuplicateEvent(dlq_schema=dlq.schema_str, dlq_id=dlq.schema_id,
                               job_name=cfg.job.name, ttl_ms=lim.dedup_ttl_ms)
    t_env.create_temporary_function("sluice_duplicate",
                                    udf(duplicate, result_type=DataTypes.BYTES()))
    score = score_cls(
        score_schema=scores.schema_str,
        score_id=scores.schema_id,
        alert_schema=alerts.schema_str,
        alert_id=alerts.schema_id,
        metric=cfg.score.metric,
        model_version=cfg.score.model_version,
    )
    t_env.create_temporary_function("sluice_score", udf(score, result_type=SCORE_RESULT))

    audit = cfg.quality.audit and bool(suites)
    if audit:
        quality = output_schema(cfg, cfg.schemas.quality)
        auditor = AuditWindow(
            suites=suites, enriched_schema=enriched.schema_str, enriched_id=enriched.schema_id,
            quality_schema=quality.schema_str, quality_id=quality.schema_id,
            window_ms=cfg.quality.audit_window_ms,
            registry_conf=cfg.registry.client_conf(),
            registry_retry=RetryPolicy(cfg.registry.unknown_id_retry_ms,
                                       cfg.registry.retry_backoff_ms),
        )
        t_env.create_temporary_function(
            "sluice_audit", udaf(auditor, result_type=DataTypes.BYTES(), func_type="pandas"))

    t_env.execute_sql(_source_ddl(cfg))
    for table, topic in (
        ("enriched_sink", cfg.topics.enriched),
        ("dlq_sink", cfg.topics.dlq),
        ("scores_sink", cfg.topics.scores),
        ("alerts_sink", cfg.topics.alerts),
        ("quality_sink", cfg.topics.quality),
    ):
        t_env.execute_sql(_sink_ddl(cfg, table, topic))

    seq = (f"`headers`['{cfg.ingest.sequence_header}']" if cfg.ingest.sequence_header
           else "CAST(NULL AS BYTES)")
    _with_source_time(
        t_env,
        f"SELECT sluice_ingest(`value`, `key`, `topic`, `partition`, `offset`, `ts`, {seq}) "
        "AS r, `key`, `value`, `topic`, `partition`, `offset`, `ts` FROM inputs_raw",
        "ingested",
        proctime=True,
    )
    # Dedup on the canonical event id: a running count per id in arrival order (an
    # append-only OVER aggregation on processing time, state kept dedup_ttl_ms). The
    # first occurrence passes; repeats are dead-lettered (per partition the earlier
    # offset arrives first, and a device's records share a partition).
    t_env.create_temporary_view("counted", t_env.sql_query("""
        SELECT r, `key`, `value`, `topic`, `partition`, `offset`, `ts`, rowtime,
               COUNT(*) OVER (PARTITION BY r.event_id ORDER BY proc
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS seen
        FROM ingested WHERE r.ok"""))
    size = f"{cfg.window.size_ms / 1000:.3f}"
    _with_source_time(
        t_env,
        f"""
        SELECT sluice_score(device_id, site_id, window_start, window_end, cnt, mean, mx, thr) AS s,
               device_id, window_start, window_time
        FROM (
            SELECT r.device_id AS device_id, r.site_id AS site_id, window_start, window_end,
                   window_time, COUNT(*) AS cnt, AVG(r.metric) AS mean, MAX(r.metric) AS mx,
                   MAX(r.threshold) AS thr
            FROM TABLE(TUMBLE(TABLE counted, DESCRIPTOR(rowtime), INTERVAL '{size}' SECOND))
            WHERE seen = 1 AND r.metric IS NOT NULL
            GROUP BY r.device_id, r.site_id, window_start, window_end, window_time
        )""",
        "scored",
    )

    stmts = t_env.create_statement_set()
    stmts.add_insert_sql("INSERT INTO enriched_sink SELECT r.out_key, r.out_value FROM counted "
                         "WHERE seen = 1")
    stmts.add_insert_sql("INSERT INTO dlq_sink SELECT r.out_key, r.out_value FROM ingested WHERE NOT r.ok")
    stmts.add_insert_sql(
        "INSERT INTO dlq_sink SELECT CONCAT(`topic`, '/', CAST(`partition` AS STRING), '/', "
        "CAST(`offset` AS STRING)), sluice_duplicate(`value`, `key`, `topic`, "
        "`partition`, `offset`, `ts`, r.event_id, seen) FROM counted WHERE seen > 1")
    stmts.add_insert_sql("INSERT INTO scores_sink SELECT device_id, s.score_value FROM scored")
    if audit:
        # The audit path: per input and event-time window, great-expectations validates
        # every record that reached the quality checks (accepted or blocked).
        every = f"{cfg.quality.audit_window_ms / 1000:.3f}"
        stmts.add_insert_sql(f"""
            INSERT INTO quality_sink
            SELECT src, sluice_audit(ev) FROM (
                SELECT r.source AS src, COALESCE(r.audit, r.out_value) AS ev, rowtime
                FROM ingested WHERE r.ok OR r.audit IS NOT NULL)
            GROUP BY src, TUMBLE(rowtime, INTERVAL '{every}' SECOND)""")
    stmts.add_insert_sql(
        "INSERT INTO alerts_sink SELECT device_id, s.alert_value FROM scored WHERE s.is_alert"
    )
    # Window features (sluice/feature_job.py), after every earlier statement: appending
    # keeps the existing operators' uids.
    add_feature_windows(t_env, stmts, cfg, _sink_ddl)
    if cfg.reference.joins:  # appended: every uid above stays as it was
        from jobs.reference import add_reference_joins

        add_reference_joins(t_env, stmts, cfg, _kafka_props(cfg), _sink_ddl)
    if extend is not None:
        extend(t_env, stmts, cfg)
    stmts.attach_as_datastream()
    return stmts


def prepare_python_path() -> None:
    """Thread mode runs the UDFs in an embedded interpreter (pemja) that does not see
    the venv's site-packages unless PYTHONPATH names it; set it before the JVM starts."""
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    current = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([current] if current else []))


def submitted_by_flink_run() -> bool:
    """`flink run` starts this script with a gateway into its own JVM already open."""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def mini_cluster_options(cfg: SluiceConfig, rest_port: int = 0) -> dict[str, str]:
    """What a job run as a script (its own mini-cluster) sets on top of :func:`flink_options`."""
    conf = {
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        # The mini-cluster's REST endpoint (job status, stop-with-drain): loopback only,
        # and a free port unless one is asked for, so it never collides with a real 8081.
        "rest.bind-address": "127.0.0.1",
        "rest.address": "127.0.0.1",
        "rest.port": str(rest_port),
    }
    if not cfg.checkpoint.dir:
        # Without a directory a mini-cluster keeps checkpoints in the JobManager's memory,
        # capped at 5 MB: the dedup state alone outgrows that after about 70,000 event ids
        # within dedup_ttl_ms, and every checkpoint then fails and the job restarts.
        conf["execution.checkpointing.dir"] = (
            cfg.path(cfg.stack.run_dir) / "checkpoints" / cfg.job.name).resolve().as_uri()
    return conf


def create_env(cfg: SluiceConfig, rest_port: int = 0) -> StreamExecutionEnvironment:
    """The job's environment: a mini-cluster when run as a script; under `flink run`,
    the cluster's (its address, -pyexec/-pyarch) with the job's own settings on top."""
    conf = flink_configuration(cfg)
    if submitted_by_flink_run():
        env = StreamExecutionEnvironment.get_execution_environment(conf)
        env.set_parallelism(cfg.job.parallelism)
        return env
    for key, value in mini_cluster_options(cfg, rest_port).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.job.parallelism)
    return env


def job_arguments(argv: list[str] | None, description: str) -> tuple[SluiceConfig, int]:
    """The command line every sluice job shares: ``--config``, ``--bounded``,
    ``--startup-mode`` and ``--rest-port``. Returns the config (with the overrides) and
    the mini-cluster REST port."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="sluice YAML config (default: sluice.yaml)")
    parser.add_argument("--bounded", action="store_true",
                        help="stop at the end offsets seen at start (overrides job.bounded)")
    parser.add_argument("--startup-mode", choices=["earliest", "group-offsets", "latest"])
    parser.add_argument("--rest-port", type=int, default=0,
                        help="mini-cluster REST port (default: any free port)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    overrides: dict[str, object] = {}
    if args.bounded:
        overrides["bounded"] = True
    if args.startup_mode:
        overrides["startup_mode"] = args.startup_mode
    if overrides:
        cfg = cfg.with_overrides(job=overrides)
    return cfg, args.rest_port


def preflight_job(cfg: SluiceConfig) -> None:
    """Fail fast, before anything is submitted: wrong credentials or certificates raise
    KafkaAuthError / RegistryAuthError naming the endpoint, within seconds; an
    exactly-once job whose transaction timeout the broker would refuse stops here."""
    preflight(cfg)
    if cfg.job.delivery_guarantee == "exactly-once":
        check_transaction_timeout(cfg)


def main(argv: list[str] | None = None, extend: Extension | None = None, *,
         ingest_cls: type[Ingest] | None = None, score_cls: type[ScoreWindow] | None = None) -> None:
    cfg, rest_port = job_arguments(argv, __doc__.splitlines()[0])
    preflight_job(cfg)
    if not submitted_by_flink_run():
        prepare_python_path()
    env = create_env(cfg, rest_port)
    build_pipeline(env, cfg, extend, ingest_cls=ingest_cls, score_cls=score_cls)
    env.execute(cfg.job.name)


if __name__ == "__main__":
    main()
