"""The same job submitted with `flink run` to the local standalone cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.flink import flink_run_command
from tests.conftest import PYTHON, run_job, unique_config, write_config
from tests.pipeline_checks import check_against_oracle, produce_input

pytestmark = pytest.mark.e2e


def test_flink_run_on_standalone_cluster_matches_oracle(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    cfg = unique_config(
        stack, "flink-run", job={"bounded": True, "startup_mode": "earliest"},
        generator={"records": 800},
    )
    gen = produce_input(cfg)
    out = run_job(flink_run_command(cfg, write_config(cfg, tmp_path), python=PYTHON), timeout=600,
                  env={"FLINK_CONF_DIR": str(flink_cluster)})
    assert "has finished" in out, out[-2000:]
    check_against_oracle(cfg, gen, cfg.path(cfg.reference.devices_csv))
