"""Start-up guards of the exactly-once set-up, against the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.config import SluiceConfig
from sluice.kafka_util import (
    TransactionTimeoutError,
    broker_max_transaction_timeout_ms,
    check_transaction_timeout,
)
from tests.conftest import PYTHON, unique_config, write_config

pytestmark = pytest.mark.integration


def test_transaction_timeout_within_broker_max_passes(stack: SluiceConfig) -> None:
    broker_max = broker_max_transaction_timeout_ms(stack)
    assert stack.kafka.transaction_timeout_ms <= broker_max
    assert check_transaction_timeout(stack) == broker_max


def test_transaction_timeout_above_broker_max_is_refused_with_the_fix(stack: SluiceConfig) -> None:
    broker_max = broker_max_transaction_timeout_ms(stack)
    too_long = stack.with_overrides(kafka={"transaction_timeout_ms": broker_max + 1})
    with pytest.raises(TransactionTimeoutError) as err:
        check_transaction_timeout(too_long)
    msg = str(err.value)
    assert "kafka.transaction_timeout_ms" in msg and str(broker_max) in msg
    assert "transaction.max.timeout.ms" in msg


def test_job_refuses_to_start_with_a_too_long_transaction_timeout(
    stack: SluiceConfig, tmp_path: Path
) -> None:
    import subprocess

    broker_max = broker_max_transaction_timeout_ms(stack)
    cfg = unique_config(stack, "txguard", kafka={"transaction_timeout_ms": broker_max * 2},
                        job={"bounded": True})
    proc = subprocess.run(
        [PYTHON, "jobs/pipeline.py", "--config", str(write_config(cfg, tmp_path))],
        capture_output=True, text=True, timeout=120, cwd=cfg.base_dir,
    )
    assert proc.returncode != 0
    assert "TransactionTimeoutError" in proc.stderr
    assert f"at most {broker_max} ms" in proc.stderr
