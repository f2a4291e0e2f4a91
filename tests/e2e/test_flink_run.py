"""The same job submitted with `flink run` to the local standalone cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.config import REPO_ROOT, SluiceConfig
from sluice.stack.render import flink_home
from tests.conftest import PYTHON, run_job, unique_config, write_config
from tests.pipeline_checks import check_against_oracle, produce_input

pytestmark = pytest.mark.e2e


def flink_run_command(cfg: SluiceConfig, cfg_path: Path) -> list[str]:
    """What docs/flink-run.md tells users to type, for the local cluster."""
    jars = [str(cfg.path(j)) for j in cfg.job.jars]
    cmd = [str(flink_home() / "bin" / "flink"), "run",
           # The TaskManagers' Python workers and the client use the project venv
           # (on a remote cluster: -pyarch venv.zip -pyexec venv.zip/venv/bin/python).
           "-pyexec", PYTHON, "-pyclientexec", PYTHON]
    for jar in jars:
        cmd += ["-j", jar]
    return cmd + ["-py", str(REPO_ROOT / "jobs" / "pipeline.py"), "--config", str(cfg_path)]


def test_flink_run_on_standalone_cluster_matches_oracle(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    cfg = unique_config(
        stack, "flink-run", job={"bounded": True, "startup_mode": "earliest"},
        generator={"records": 800},
    )
    gen = produce_input(cfg)
    out = run_job(flink_run_command(cfg, write_config(cfg, tmp_path)), timeout=600,
                  env={"FLINK_CONF_DIR": str(flink_cluster)})
    assert "has finished" in out, out[-2000:]
    check_against_oracle(cfg, gen, cfg.path(cfg.reference.devices_csv))
