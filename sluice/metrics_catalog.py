"""The metrics sluice's jobs register, and the names Flink's Prometheus reporter gives them.

Every per-stage metric comes from :class:`sluice.metrics.StageMetrics` (directly, or via
:func:`sluice.metrics.counters`): a Python function's metric group →
``add_group("sluice").add_group(stage)``, then ``counter(name)`` for each counter and, for
each latency histogram, the gauges ``<name>_p50 / _p95 / _p99 / _max / _count``
(process mode only; sluice/metrics.py). Flink scopes a user group under the operator
that runs the function, and the Prometheus reporter names the series ``flink_`` + the
logical scope (``taskmanager_job_task_operator``) + the user groups + the metric name,
joined with ``_`` (the job, task, operator and subtask become labels). Counters are
exported as gauges of the running total, so rates are ``rate(...)``.

tests/unit/test_metrics_catalog.py checks these tuples against the job code (each
``counters(ctx, stage, (names...))`` and ``StageMetrics(ctx, stage, (counters...),
(latencies...))`` call), both ways; the Grafana dashboard in docker/grafana/ is checked
against them by sluice.deploy_checks.
"""

from __future__ import annotations

import re

from sluice.metrics import QUANTILES

# (stage, counter) — in the order the stages run, jobs/pipeline.py first, then the
# feature job (sluice/feature_job.py) and the scoring job (sluice/scoring_job.py).
STAGE_COUNTERS: tuple[tuple[str, str], ...] = (
    ("ingest", "records_in"),
    ("ingest", "records_out"),
    ("ingest", "dead_letters"),
    ("ingest", "quality_blocked"),
    ("ingest", "quality_warnings"),
    ("ingest", "bad_sequence_header"),
    ("dedup", "dead_letters"),
    ("reference", "joined"),
    ("reference", "late_reference"),
    ("reference", "missing_reference"),
    ("reference", "unknown_device_dead_letters"),
    ("reference", "device_versions"),
    ("reference", "device_deletions"),
    ("reference", "device_state_expired"),
    ("reference", "bad_device_records"),
    ("reference", "sites_reloads"),
    ("audit", "batches"),
    ("audit", "records"),
    ("score", "windows_in"),
    ("score", "alerts_out"),
    ("features", "records_in"),
    ("features", "vectors_out"),
    ("features", "late_records"),
    # ScoreVectors (the scoring job's model scoring)
    ("scoring", "vectors_in"),
    ("scoring", "scores_out"),
    ("scoring", "alerts_out"),
    ("scoring", "waiting_for_model"),
    ("scoring", "no_model_for_window"),
    ("scoring", "spec_mismatch"),
    ("scoring", "model_switches"),
    ("scoring", "updates_refused"),
    # DriftMonitor (same job, same metric group)
    ("scoring", "drift_events"),
    ("scoring", "drifted"),
    ("scoring", "retrain_triggers"),
    ("scoring", "stale_version"),
)

# (stage, histogram) — latency histograms; the unit is the name's suffix.
STAGE_LATENCIES: tuple[tuple[str, str], ...] = (
    ("ingest", "kafka_to_ingest_ms"),
    ("ingest", "decode_us"),
    ("ingest", "enrich_encode_us"),
    ("score", "window_end_to_score_ms"),
    ("features", "ingest_to_features_ms"),
    ("features", "window_end_to_vector_ms"),
)
#: The gauges each histogram exports (sluice.metrics._register_gauges).
GAUGE_SUFFIXES: tuple[str, ...] = (*QUANTILES, "max", "count")

USER_GROUP = "sluice"
OPERATOR_SCOPE = "flink_taskmanager_job_task_operator"
# Flink's own operator/task metrics the dashboard also shows (reporter names).
FLINK_BUILTIN: tuple[str, ...] = (
    "flink_taskmanager_job_task_operator_numRecordsInPerSecond",
    "flink_taskmanager_job_task_operator_numRecordsOutPerSecond",
    "flink_taskmanager_job_task_busyTimeMsPerSecond",
    "flink_taskmanager_job_task_backPressuredTimeMsPerSecond",
    "flink_jobmanager_job_lastCheckpointDuration",
    "flink_jobmanager_job_numberOfCompletedCheckpoints",
    "flink_jobmanager_job_numberOfFailedCheckpoints",
    "flink_jobmanager_job_numRestarts",
)

_FILTER = re.compile(r"[^a-zA-Z0-9:_]")


def prometheus_name(stage: str, name: str) -> str:
    """The series name of counter ``sluice.<stage>.<name>`` under Flink's reporter (which
    replaces characters Prometheus does not allow with ``_``)."""
    parts = [OPERATOR_SCOPE, USER_GROUP, stage, name]
    return "_".join(_FILTER.sub("_", p) for p in parts)


def prometheus_names() -> tuple[str, ...]:
    """The series of the counters."""
    return tuple(prometheus_name(s, n) for s, n in STAGE_COUNTERS)


def latency_gauge_names() -> tuple[str, ...]:
    """The series of the latency histograms' gauges (``..._<name>_p99`` and so on)."""
    return tuple(prometheus_name(s, f"{n}_{suffix}")
                 for s, n in STAGE_LATENCIES for suffix in GAUGE_SUFFIXES)


def known_series() -> frozenset[str]:
    """Every metric name a dashboard may query."""
    return (frozenset(prometheus_names()) | frozenset(latency_gauge_names())
            | frozenset(FLINK_BUILTIN))
