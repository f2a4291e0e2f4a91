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
    """Negative control: without a profile the job leaves these to Flink's defaults. The
    bundle time is the exception: the job always sets job.python_bundle_time_ms (the
    idle timeouts are validated against it), Flink's default of 1000 unless configured."""
    cfg = _config(tmp_path, {"profile": "default"})
    opts = flink_options(cfg)
    for key in ("python.fn-execution.bundle.size", "python.fn-execution.arrow.batch.size",
                "execution.buffer-timeout.interval"):
        assert key not in opts
    assert cfg.job.python_bundle_time_ms == 1000
    assert opts["python.fn-execution.bundle.time"] == "1000"
    assert cfg.job.delivery_guarantee == "exactly-once"
    assert opts["execution.checkpointing.interval"] == "2000 ms"


@pytest.mark.parametrize("name", ["low-latency", "throughput"])
def test_the_profile_bundle_time_is_the_validated_one(tmp_path: Path, name: str) -> None:
    """The job runs with exactly the bundle time the config validated: a profile's is
    job.python_bundle_time_ms's default, an explicit key wins over it."""
    profile = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    cfg = _config(tmp_path, {"profile": name})
    assert cfg.job.python_bundle_time_ms == int(profile["flink"]["python.fn-execution.bundle.time"])
    assert flink_options(cfg)["python.fn-execution.bundle.time"] == str(cfg.job.python_bundle_time_ms)
    explicit = _config(tmp_path, {"profile": name, "python_bundle_time_ms": 250})
    assert explicit.job.python_bundle_time_ms == 250
    assert flink_options(explicit)["python.fn-execution.bundle.time"] == "250"


def _slow_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle_ms: int) -> None:
    """A `throughput` profile whose bundle time is `bundle_ms` (in a folder of its own)."""
    import sluice.config

    doc = yaml.safe_load((PROFILES_DIR / "throughput.yaml").read_text())
    doc["flink"]["python.fn-execution.bundle.time"] = bundle_ms
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "throughput.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(sluice.config, "PROFILES_DIR", folder)


def test_a_profile_bundle_time_above_the_idle_timeout_rule_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle-timeout rule (4 x bundle time + 1 s) uses the profile's bundle time when it
    is larger than the key's own default: 3000 ms needs an idle timeout of 13000 ms."""
    _slow_profile(tmp_path, monkeypatch, 3_000)
    with pytest.raises(ConfigError, match=r"window.idle_timeout_ms \(5000\).*\(13000\)"):
        _config(tmp_path, {"profile": "throughput"}, window={"idle_timeout_ms": 5_000})
    cfg = _config(tmp_path, {"profile": "throughput"}, window={"idle_timeout_ms": 13_000})
    assert flink_options(cfg)["python.fn-execution.bundle.time"] == "3000"
    # Negative control: the same idle timeout without the profile (bundle time 1000) is fine.
    assert _config(tmp_path, {"profile": "default"},
                   window={"idle_timeout_ms": 5_000}).job.python_bundle_time_ms == 1000


def test_a_profile_bundle_time_must_be_whole_milliseconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_profile(tmp_path, monkeypatch, "1 s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bundle.time must be a whole number of milliseconds"):
        _config(tmp_path, {"profile": "throughput"})


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


def test_a_mini_cluster_checkpoints_to_files_unless_told_otherwise(tmp_path: Path) -> None:
    """A mini-cluster without a checkpoint directory keeps checkpoints in the JobManager's
    memory (5 MB at most; the dedup state outgrew it in a paced bench and every checkpoint
    failed), so a job run as a script gets one under the stack's run dir."""
    from jobs.pipeline import mini_cluster_options

    cfg = _config(tmp_path, {"name": "my-job"})
    opts = mini_cluster_options(cfg, 8089)
    assert opts["rest.port"] == "8089" and opts["rest.bind-address"] == "127.0.0.1"
    uri = opts["execution.checkpointing.dir"]
    assert uri == (cfg.path(cfg.stack.run_dir) / "checkpoints" / "my-job").resolve().as_uri()
    assert uri.startswith("file:///")
    # An explicit directory is the job's own setting (flink_options), not replaced.
    explicit = _config(tmp_path, {"name": "my-job"}, checkpoint={"dir": "file:///ckpt"})
    assert "execution.checkpointing.dir" not in mini_cluster_options(explicit)
    assert flink_options(explicit)["execution.checkpointing.dir"] == "file:///ckpt"
