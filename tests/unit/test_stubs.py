"""The .pyi stubs of the Rust module match what the built module really exposes."""

from __future__ import annotations

import subprocess
import sys


def test_native_stubs_match_the_built_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "sluice._native"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
