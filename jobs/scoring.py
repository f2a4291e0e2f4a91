"""The scoring job: FeatureVectors scored in the stream by the announced model versions.

    python jobs/scoring.py --config sluice.yaml                # Flink mini-cluster
    flink run -py jobs/scoring.py -pyexec .venv/bin/python \
        -j .deps/flink-jars/flink-sql-connector-kafka-5.0.0-2.2.jar -- --config sluice.yaml

    `features` (read_committed) ─► ScoreVectors ◄─ broadcast ─ `model-updates`
        ├→ `model-scores`  ModelScore, every vector × model of its window   exactly-once
        └→ `alerts`        Alert v2 (names the model version)              exactly-once

A separate job from the pipeline: the features topic is the source of truth, so scoring
restarts, rescales and rolls out models without touching ingestion and windows
(docs/scoring.md). sluice/scoring_job.py holds the operators.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StatementSet, StreamTableEnvironment

if __package__ in (None, ""):  # run as a script (python jobs/scoring.py, flink run -py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.pipeline import (  # noqa: E402
    _kafka_props,
    _sink_ddl,
    create_env,
    job_arguments,
    preflight_job,
    prepare_python_path,
    submitted_by_flink_run,
)
from sluice.config import SluiceConfig  # noqa: E402
from sluice.kafka_util import ensure_topics  # noqa: E402
from sluice.scoring_job import add_model_scoring  # noqa: E402


def job_config(cfg: SluiceConfig) -> SluiceConfig:
    """The scoring job's own name (and so its checkpoints and REST view)."""
    return cfg.with_overrides(job={"name": cfg.scoring.job_name})


def build_pipeline(env: StreamExecutionEnvironment, cfg: SluiceConfig) -> StatementSet:
    """Declare the scoring job on ``env``; the caller executes it."""
    t_env = StreamTableEnvironment.create(env)
    stmts = t_env.create_statement_set()
    add_model_scoring(t_env, stmts, cfg, _kafka_props(cfg), _sink_ddl)
    stmts.attach_as_datastream()
    return stmts


def main(argv: list[str] | None = None) -> None:
    cfg, rest_port = job_arguments(argv, __doc__.splitlines()[0])
    cfg = job_config(cfg)
    preflight_job(cfg)
    ensure_topics(cfg, [cfg.topics.features, cfg.topics.model_updates, cfg.topics.model_scores,
                        cfg.topics.alerts])
    if not submitted_by_flink_run():
        prepare_python_path()
    env = create_env(cfg, rest_port)
    build_pipeline(env, cfg)
    env.execute(cfg.job.name)


if __name__ == "__main__":
    main()
