"""Unit tests of sluice.flink: the `flink run` command line (no JVM is started)."""

from __future__ import annotations

from pathlib import Path

from sluice.config import REPO_ROOT, load_config
from sluice.flink import flink_run_command


def test_flink_run_command_plain() -> None:
    cfg = load_config(REPO_ROOT / "sluice.yaml")
    cmd = flink_run_command(cfg, Path("/tmp/c.yaml"), python="/venv/bin/python")
    assert cmd[1] == "run" and "-s" not in cmd and "-d" not in cmd
    assert cmd[cmd.index("-pyexec") + 1] == "/venv/bin/python"
    assert cmd[-4:] == ["-py", str(REPO_ROOT / "jobs" / "pipeline.py"), "--config", "/tmp/c.yaml"]


def test_flink_run_command_restores_from_a_retained_checkpoint() -> None:
    cfg = load_config(REPO_ROOT / "sluice.yaml")
    path = "file:///tmp/cp/0123abcd/chk-7"
    job = Path("/x/job.py")
    cmd = flink_run_command(cfg, Path("/tmp/c.yaml"), detached=True, restore_path=path, job=job,
                            extra_args=["--fault-dir", "/tmp/f"])
    # `-s` is an option of `run`: it must come before the program and its arguments.
    assert cmd[cmd.index("-s") + 1] == path
    assert cmd.index("-s") < cmd.index("-py")
    assert "-d" in cmd
    assert cmd[cmd.index("-py") + 1:] == [str(job), "--config", "/tmp/c.yaml", "--fault-dir",
                                          "/tmp/f"]
