"""Shared fixtures: the real local stack (or an already running one) and job runners.

Set BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL to test against a stack you run
yourself; otherwise the session starts the project's own (`sluice stack up`) and
stops it again if it started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.config import REPO_ROOT, SluiceConfig, dump_config, load_config

RUN_DIR = REPO_ROOT / ".run"


def stack_ports():  # type: ignore[no-untyped-def]
    """The local stack's ports (SLUICE_STACK_PORT_OFFSET shifts them)."""
    from sluice.stack import StackPorts

    return StackPorts.from_env()


def _external_stack() -> bool:
    return bool(os.environ.get("BOOTSTRAP_SERVERS") and os.environ.get("SCHEMA_REGISTRY_URL"))


@pytest.fixture(scope="session")
def base_config() -> SluiceConfig:
    return load_config(REPO_ROOT / "sluice.yaml")


@pytest.fixture(scope="session")
def stack(base_config: SluiceConfig) -> Iterator[SluiceConfig]:
    """Kafka + registry + Redis (the feature store): an external one from the environment
    (SLUICE__FEATURE_STORE__REDIS_URL names its Redis), else the local stack."""
    if _external_stack():
        yield base_config
        return
    from sluice.stack import down, status, up

    already = status(RUN_DIR).healthy
    st = up(RUN_DIR, stack_ports(), flink=False)
    cfg = base_config.with_overrides(
        kafka={"bootstrap_servers": st.bootstrap_servers}, registry={"url": st.registry_url},
        feature_store={"redis_url": st.redis_url},
    )
    yield cfg
    if not already:
        down(RUN_DIR)


@pytest.fixture(scope="session")
def flink_cluster(stack: SluiceConfig) -> Path:
    """A local standalone Flink cluster; its FLINK_CONF_DIR. Stopped with the stack.
    With an external stack, FLINK_CONF_DIR names the cluster to submit to."""
    from sluice.stack import up

    if _external_stack():
        if not os.environ.get("FLINK_CONF_DIR"):
            pytest.skip("external stack without FLINK_CONF_DIR: no Flink cluster to submit to")
        return Path(os.environ["FLINK_CONF_DIR"])

    st = up(RUN_DIR, stack_ports(), flink=True)
    assert st.flink_conf_dir is not None
    return Path(st.flink_conf_dir)


def unique_config(cfg: SluiceConfig, name: str, **sections: dict) -> SluiceConfig:
    """A config whose topics, group and transactional ids belong to this test alone."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    names = ("telemetry", "sensor_frames", "maintenance", "enriched", "scores", "alerts", "dlq",
             "quality", "dlq_replays", "devices", "joined", "features", "late", "drift",
             "retrain_triggers", "model_updates", "model_scores")
    topics = {k: f"{tag}.{k}" for k in names}
    job = {
        "name": f"sluice-{tag}",
        "consumer_group": f"sluice-{tag}",
        "transactional_id_prefix": f"sluice-{tag}",
        **sections.pop("job", {}),
    }
    scoring = {
        "job_name": f"sluice-{tag}-scoring",
        "consumer_group": f"sluice-{tag}-scoring",
        "transactional_id_prefix": f"sluice-{tag}-scoring",
        **sections.pop("scoring", {}),
    }
    return cfg.with_overrides(topics=topics, job=job, scoring=scoring, **sections)


def write_config(cfg: SluiceConfig, tmp_path: Path) -> Path:
    return dump_config(cfg, tmp_path / "sluice.yaml")


def run_job(args: list[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; fail the test with its output if it fails."""
    t0 = time.monotonic()
    proc = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode} after "
                    f"{time.monotonic() - t0:.0f} s:\n{out[-6000:]}")
    return out


PYTHON = sys.executable
