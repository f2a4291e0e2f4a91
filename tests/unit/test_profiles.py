"""Performance profiles (job.profile, flink-conf/profiles/): the Flink options the job sets
(jobs/pipeline.py flink_options, which flink_configuration copies into the Configuration
one to one) and the sluice keys they default. No JVM here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.pipeline import flink_options
from sluice.config import PROFILES_DIR, ConfigError, load_config, load_profile

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, job: dict, **sections: dict):  # type: ignore[no-untyped-def]
    raw = yaml.safe_load((REPO / "sluice.yaml").read_text())
    raw["job"] = {**raw["job"], **job}
    raw.update(sections)
    raw["base_dir"] = str(REPO)
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, env={})


@pytest.mark.parametrize("name", ["low-latency", "throughput"])
def test_profile_options_land_in_the_configuration(tmp_path: Path, name: str) -> None:
    profile = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    cfg = _config(tmp_path, {"profile": name})
    opts = flink_options(cfg)
    for key, value in profile["flink"].items():
        assert opts[key] == str(value), key
    # Every profile names the knobs the issue asks for.
    for key in ("python.fn-execution.bundle.size", "python.fn-execution.bundle.time",
                "python.fn-execution.arrow.batch.size", "execution.buffer-timeout.interval",
                "execution.runtime-mode"):
        assert key in profile["flink"], key
    # PyFlink refuses an Arrow batch larger than a bundle.
    assert (int(profile["flink"]["python.fn-execution.arrow.batch.size"])
            <= int(profile["flink"]["python.fn-execution.bundle.size"]))
    # The profile's sluice keys became the config's values, and the checkpoint interval
    # the job sets is the profile's.
    for section, keys in profile["sluice"].items():
        for key, value in keys.items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    assert opts["execution.checkpointing.interval"] == f"{cfg.checkpoint.interval_ms} ms"


def test_low_latency_is_at_least_once_and_throughput_exactly_once(tmp_path: Path) -> None:
    low = _config(tmp_path, {"profile": "low-latency"})
    high = _config(tmp_path, {"profile": "throughput"})
    assert low.job.delivery_guarantee == "at-least-once"
    assert high.job.delivery_guarantee == "exactly-once"
    lo, hi = flink_options(low), flink_options(high)
    assert int(lo["python.fn-execution.bundle.size"]) < int(hi["python.fn-execution.bundle.size"])
    assert low.checkpoint.interval_ms < high.checkpoint.interval_ms


def test_default_profile_sets_none_of_the_profile_options(tmp_path: Path) -> None:
    """Negative control: without a profile the job leaves these to Flink's defaults."""
    cfg = _config(tmp_path, {"profile": "default"})
    opts = flink_options(cfg)
    for key in ("python.fn-execution.bundle.size", "python.fn-execution.bundle.time",
                "execution.buffer-timeout.interval"):
        assert key not in opts
    assert cfg.job.delivery_guarantee == "exactly-once"
    assert opts["execution.checkpointing.interval"] == "2000 ms"


def test_explicit_keys_win_over_the_profile(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"profile": "low-latency", "delivery_guarantee": "exactly-once"},
                  checkpoint={"interval_ms": 1500})
    assert cfg.job.delivery_guarantee == "exactly-once"
    assert cfg.checkpoint.interval_ms == 1500
    assert flink_options(cfg)["python.fn-execution.bundle.size"] == "100"


def test_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job.profile"):
        _config(tmp_path, {"profile": "turbo"})
    assert load_profile("default") == {"flink": {}, "sluice": {}}
