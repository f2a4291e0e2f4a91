"""Submitting jobs with `flink run`: the command line, built one way for everyone."""

from __future__ import annotations

import sys
from pathlib import Path

from sluice.config import REPO_ROOT, SluiceConfig


def flink_binary() -> Path:
    """`flink` of the apache-flink wheel (any Flink 2.2 distribution's bin/flink works too)."""
    from sluice.stack.render import flink_home

    return flink_home() / "bin" / "flink"


def flink_run_command(
    cfg: SluiceConfig,
    cfg_path: Path,
    *,
    python: str = sys.executable,
    detached: bool = False,
    job: Path = REPO_ROOT / "jobs" / "pipeline.py",
    extra_args: list[str] | None = None,
    restore_path: str | None = None,
) -> list[str]:
    """``flink run`` for a sluice job on a cluster that shares this machine's venv.

    The TaskManagers' Python workers and the client use ``python``; for a remote
    cluster ship the venv instead (``-pyarch venv.zip -pyexec venv.zip/venv/bin/python``,
    docs/flink-run.md). Secrets stay in the environment, never on this command line.
    ``restore_path``: a retained checkpoint or savepoint to start from (``-s``); the
    job's parallelism may differ from the one that wrote it (up to its max parallelism).
    """
    cmd = [str(flink_binary()), "run"]
    if detached:
        cmd.append("-d")
    if restore_path:
        cmd += ["-s", restore_path]
    cmd += ["-pyexec", python, "-pyclientexec", python]
    for jar in cfg.job.jars:
        cmd += ["-j", str(cfg.path(jar).resolve())]
    return cmd + ["-py", str(job), "--config", str(cfg_path), *(extra_args or [])]
