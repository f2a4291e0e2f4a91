"""`sluice package` output, copied out of the source tree, runs with the printed `flink run`.

The job is submitted from a temp folder with exactly the lines `sluice package` prints, a
PYTHONPATH without the source tree; the client Python is the package's own archive.
While it runs, /proc shows which interpreter and which Rust module the TaskManager's
Python workers use: both must come from the shipped archive. The output is checked
against the oracle (tests/pipeline_checks.py), as test_flink_run.py does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sluice.config import REPO_ROOT, SluiceConfig
from sluice.deploy_checks import PACKAGE_OUTPUTS
from sluice.package import ENV_ARCHIVE, verify_manifest
from sluice.stack.render import flink_home
from tests.conftest import PYTHON, unique_config, write_config
from tests.pipeline_checks import check_against_oracle, produce_input

pytestmark = pytest.mark.e2e

NATIVE = "_native.cpython-311-x86_64-linux-gnu.so"


def _archive_workers() -> dict[int, tuple[str, list[str]]]:
    """pid → (executable, mapped paths of sluice's Rust module) of every process whose
    interpreter was extracted from a shipped python-env.zip."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            if f"{ENV_ARCHIVE}/venv/bin/python" not in exe:
                continue
            maps = (proc / "maps").read_text()
        except OSError:
            continue
        natives = sorted({line.split()[-1] for line in maps.splitlines() if NATIVE in line})
        found[int(proc.name)] = (exe, natives)
    return found


class _Watch(threading.Thread):
    """Polls /proc while the job runs and keeps what it saw."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, tuple[str, list[str]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid, (exe, natives) in _archive_workers().items():
                if natives or pid not in self.seen:
                    self.seen[pid] = (exe, natives)
            time.sleep(0.3)


def test_packaged_job_runs_from_outside_the_source_tree(
    stack: SluiceConfig, flink_cluster: Path, tmp_path: Path
) -> None:
    cfg = unique_config(
        stack, "package", job={"bounded": True, "startup_mode": "earliest"},
        generator={"records": 800},
    )
    cfg_file = write_config(cfg, tmp_path)
    build = REPO_ROOT / "out" / "package-e2e"
    t0 = time.monotonic()
    proc = subprocess.run(
        [PYTHON, "-m", "sluice.cli", "package", "--config", str(cfg_file), "--out", str(build)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    package_s = time.monotonic() - t0

    dest = tmp_path / "deploy" / "sluice-package"
    shutil.copytree(build, dest)
    assert not dest.resolve().is_relative_to(REPO_ROOT)
    assert verify_manifest(dest) == []
    assert {p.name for p in dest.iterdir()} <= set(PACKAGE_OUTPUTS)  # what the Dockerfile may COPY
    manifest = json.loads((dest / "manifest.json").read_text())
    lines = manifest["command"]
    printed = proc.stdout.splitlines()
    assert all(line in printed for line in lines), proc.stdout[-2000:]
    assert lines[-1].startswith("flink run ")

    gen = produce_input(cfg)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{flink_home() / 'bin'}{os.pathsep}/usr/bin:/bin"
    env["FLINK_CONF_DIR"] = str(flink_cluster)
    watch = _Watch()
    watch.start()
    t0 = time.monotonic()
    try:
        run = subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=dest, env=env,
                             capture_output=True, text=True, timeout=600)
    finally:
        watch.stop.set()
        watch.join()
    run_s = time.monotonic() - t0
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "has finished" in out, out[-2000:]
    print(f"package {package_s:.0f} s, flink run {run_s:.0f} s, "
          f"archive workers seen: {len(watch.seen)}")

    # The TaskManager's Python workers ran the shipped archive, Rust module included.
    assert watch.seen, "no Python worker ran from the shipped python-env.zip"
    natives = [n for _, ns in watch.seen.values() for n in ns]
    assert natives, f"no archive worker loaded sluice's Rust module: {watch.seen}"
    for path in natives:
        assert f"{ENV_ARCHIVE}/venv/lib/python3.11/site-packages/sluice/" in path, path
        # The TaskManager's extraction (python-dist-*/python-archives/), not a source tree.
        assert "/python-archives/" in path, path
        assert not Path(path).resolve().is_relative_to(REPO_ROOT / "sluice"), path

    check_against_oracle(cfg, gen, cfg.path(cfg.reference.devices_csv))
