"""The metrics sluice's jobs register, and the names Flink's Prometheus reporter gives them.

Every per-stage counter comes from :func:`sluice.udfs.counters`: a Python UDF's metric
group → ``add_group("sluice").add_group(stage).counter(name)``. Flink scopes a user group
under the operator that runs the UDF, and the Prometheus reporter names the series
``flink_`` + the logical scope (``taskmanager_job_task_operator``) + the user groups +
the metric name, joined with ``_`` (the job, task, operator and subtask become labels).
Counters are exported as gauges of the running total, so rates are ``rate(...)``.

tests/unit/test_metrics_catalog.py checks this tuple against the job code (each
``counters(..., stage, (names...))`` call), both ways; the Grafana dashboard in
docker/grafana/ is checked against it by sluice.deploy_checks.
"""

from __future__ import annotations

import re

# (stage, counter) — in the order the stages run.
STAGE_COUNTERS: tuple[tuple[str, str], ...] = (
    ("ingest", "records_in"),
    ("ingest", "records_out"),
    ("ingest", "dead_letters"),
    ("ingest", "quality_blocked"),
    ("ingest", "quality_warnings"),
    ("ingest", "bad_sequence_header"),
    ("reference", "joined"),
    ("reference", "late_reference"),
    ("reference", "missing_reference"),
    ("reference", "unknown_device_dead_letters"),
    ("reference", "device_versions"),
    ("reference", "bad_device_records"),
    ("reference", "sites_reloads"),
    ("audit", "batches"),
    ("audit", "records"),
)

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
    return tuple(prometheus_name(s, n) for s, n in STAGE_COUNTERS)


def known_series() -> frozenset[str]:
    """Every metric name a dashboard may query."""
    return frozenset(prometheus_names()) | frozenset(FLINK_BUILTIN)
