"""Unit tests of sluice.config.load_config (env passed explicitly; os.environ untouched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sluice.config import DEFAULT_CONFIG, ConfigError, SluiceConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55w0rd-xyzzy"


def write(tmp_path: Path, data: object, name: str = "sluice.yaml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_repo_config_loads() -> None:
    assert DEFAULT_CONFIG == REPO / "sluice.yaml"
    cfg = load_config(REPO / "sluice.yaml", env={})
    raw = yaml.safe_load((REPO / "sluice.yaml").read_text())
    assert isinstance(cfg, SluiceConfig)
    assert cfg.base_dir == REPO
    # values from the file (not just the model defaults)
    assert cfg.kafka.bootstrap_servers == raw["kafka"]["bootstrap_servers"]
    assert cfg.window.size_ms == raw["window"]["size_ms"]
    assert cfg.job.startup_mode == raw["job"]["startup_mode"]
    names = ("telemetry", "sensor_frames", "maintenance", "enriched", "scores", "alerts", "dlq",
             "quality", "dlq_replays", "devices", "joined", "features", "late", "drift",
             "retrain_triggers", "model_updates", "action_dlq", "model_scores")
    assert cfg.topics.all() == [raw["topics"][k] for k in names]
    assert cfg.kafka.sasl_password is None
    # the schema files it points at exist
    for rel in (cfg.schemas.telemetry_reader, cfg.schemas.enriched, cfg.schemas.scores,
                cfg.schemas.alerts, cfg.schemas.dlq):
        assert cfg.schema_path(rel).is_file(), rel


def test_default_path_and_sluice_config_env(tmp_path: Path) -> None:
    assert load_config(env={}).base_dir == REPO
    p = write(tmp_path, {"job": {"name": "from-env-path"}})
    cfg = load_config(env={"SLUICE_CONFIG": str(p)})
    assert cfg.job.name == "from-env-path"
    assert cfg.base_dir == tmp_path


@pytest.mark.parametrize(
    ("data", "dotted"),
    [
        ({"kafka": {"bootstrap_server": "x:1"}}, "kafka.bootstrap_server"),
        ({"job": {"paralelism": 2}}, "job.paralelism"),
        ({"bogus": {"a": 1}}, "bogus"),
    ],
)
def test_unknown_key_names_dotted_key(tmp_path: Path, data: dict, dotted: str) -> None:
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    msg = str(ei.value)
    assert f"{dotted}:" in msg
    assert "unknown key" in msg
    assert str(p) in msg


def test_unknown_key_from_env_names_dotted_key(tmp_path: Path) -> None:
    p = write(tmp_path, {})
    with pytest.raises(ConfigError, match=r"job\.paralelism: unknown key"):
        load_config(p, env={"SLUICE__JOB__PARALELISM": "2"})


@pytest.mark.parametrize(
    ("data", "dotted"),
    [
        ({"job": {"parallelism": "many"}}, "job.parallelism"),
        ({"job": {"parallelism": 0}}, "job.parallelism"),
        ({"job": {"startup_mode": "sometimes"}}, "job.startup_mode"),
        ({"topics": {"partitions": [1]}}, "topics.partitions"),
        ({"kafka": {"properties": ["a", "b"]}}, "kafka.properties"),
        ({"generator": {"writer_weights": {"v1": -1}}}, "generator.writer_weights"),
    ],
)
def test_wrong_type_names_key(tmp_path: Path, data: dict, dotted: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, data), env={})
    assert f"{dotted}:" in str(ei.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kafka: [unclosed\n", "bad.yaml"), env={})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"), env={})
    with pytest.raises(ConfigError, match="SLUICE__<SECTION>__<KEY>"):
        load_config(write(tmp_path, {}), env={"SLUICE__JOB": "x"})


def test_env_overrides_apply() -> None:
    env = {
        "BOOTSTRAP_SERVERS": "broker-a:9092,broker-b:9092",
        "SCHEMA_REGISTRY_URL": "https://registry.example:8081",
        "SLUICE__JOB__PARALLELISM": "3",
        "SLUICE__JOB__BOUNDED": "true",
        "SLUICE__KAFKA__PROPERTIES": "{security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512}",
        "UNRELATED": "ignored",
    }
    cfg = load_config(REPO / "sluice.yaml", env=env)
    assert cfg.kafka.bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert cfg.registry.url == "https://registry.example:8081"
    assert cfg.job.parallelism == 3
    assert cfg.job.bounded is True
    assert cfg.kafka.properties == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    # keys not overridden keep the file's values
    assert cfg.job.name == "sluice-pipeline"
    assert cfg.window.size_ms == 5000
    assert cfg.registry.client_conf() == {"url": "https://registry.example:8081", "timeout": 30}
    props = cfg.kafka.client_properties()
    assert props["bootstrap.servers"] == "broker-a:9092,broker-b:9092"
    assert props["security.protocol"] == "SASL_SSL"


def test_env_override_of_nested_key_merges_with_file(tmp_path: Path) -> None:
    p = write(tmp_path, {"kafka": {"bootstrap_servers": "file:1", "transaction_timeout_ms": 600000}})
    cfg = load_config(p, env={"SLUICE__KAFKA__BOOTSTRAP_SERVERS": "env:2"})
    assert cfg.kafka.bootstrap_servers == "env:2"
    assert cfg.kafka.transaction_timeout_ms == 600000


@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password", "client.secret"])
def test_secret_in_kafka_properties_is_refused(tmp_path: Path, key: str) -> None:
    p = write(tmp_path, {"kafka": {"properties": {key: SECRET, "security.protocol": "SASL_SSL"}}})
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    msg = str(ei.value)
    assert "kafka.properties" in msg
    assert key in msg
    assert "SLUICE_KAFKA_SASL_PASSWORD" in msg
    assert SECRET not in msg


def test_secret_in_kafka_properties_from_env_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"sasl\.password") as ei:
        load_config(REPO / "sluice.yaml",
                    env={"SLUICE__KAFKA__PROPERTIES": f"{{sasl.password: {SECRET}}}"})
    assert SECRET not in str(ei.value)


def _assert_hidden(cfg: SluiceConfig) -> None:
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(cfg.kafka), str(cfg.kafka)):
        assert SECRET not in text


def test_sasl_password_from_env_is_secret() -> None:
    cfg = load_config(REPO / "sluice.yaml", env={"SLUICE_KAFKA_SASL_PASSWORD": SECRET})
    assert cfg.kafka.sasl_password is not None
    assert cfg.kafka.sasl_password.get_secret_value() == SECRET
    _assert_hidden(cfg)
    assert cfg.kafka.client_properties()["sasl.password"] == SECRET


def test_sasl_password_from_file_is_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "kafka.pw"
    secret_file.write_text(SECRET)
    cfg = load_config(
        REPO / "sluice.yaml",
        env={"SLUICE_KAFKA_SASL_PASSWORD_FILE": str(secret_file),
             "SLUICE__KAFKA__SASL_USERNAME": "svc-sluice",
             "SLUICE__KAFKA__PROPERTIES": "{sasl.mechanism: SCRAM-SHA-256}"},
    )
    assert cfg.kafka.sasl_password is not None
    assert cfg.kafka.sasl_password.get_secret_value() == SECRET
    assert cfg.kafka.sasl_password_file == secret_file
    _assert_hidden(cfg)
    # The Flink job's properties name the file, never the password (docs/security.md).
    jaas = cfg.kafka.java_properties()["sasl.jaas.config"]
    assert "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule" in jaas
    assert f'password="${{sluicedir:{tmp_path}:kafka.pw}}"' in jaas
    assert 'username="svc-sluice"' in jaas
    assert SECRET not in str(cfg.kafka.java_properties())


def test_secret_env_and_file_together_are_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "kafka.pw"
    secret_file.write_text("from-file")
    with pytest.raises(ConfigError, match="SLUICE_KAFKA_SASL_PASSWORD_FILE, not both") as ei:
        load_config(REPO / "sluice.yaml", env={"SLUICE_KAFKA_SASL_PASSWORD": SECRET,
                                               "SLUICE_KAFKA_SASL_PASSWORD_FILE": str(secret_file)})
    assert SECRET not in str(ei.value)


def test_registry_basic_auth_is_secret() -> None:
    cred = f"user:{SECRET}"
    cfg = load_config(REPO / "sluice.yaml", env={"SLUICE_REGISTRY_BASIC_AUTH": cred})
    assert cfg.registry.client_conf()["basic.auth.user.info"] == cred
    _assert_hidden(cfg)


def test_exactly_once_invariant(tmp_path: Path) -> None:
    p = write(tmp_path, {"checkpoint": {"interval_ms": 100_000},
                         "kafka": {"transaction_timeout_ms": 900_000}})
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    msg = str(ei.value)
    assert "kafka.transaction_timeout_ms" in msg
    assert "checkpoint.interval_ms" in msg


@pytest.mark.parametrize(
    ("interval", "timeout", "ok"),
    [(90_000, 900_000, True), (90_001, 900_000, False), (2_000, 20_000, True), (2_000, 19_999, False)],
)
def test_exactly_once_invariant_boundary(tmp_path: Path, interval: int, timeout: int, ok: bool) -> None:
    p = write(tmp_path, {})
    env = {"SLUICE__CHECKPOINT__INTERVAL_MS": str(interval),
           "SLUICE__KAFKA__TRANSACTION_TIMEOUT_MS": str(timeout)}
    if ok:
        cfg = load_config(p, env=env)
        assert (cfg.checkpoint.interval_ms, cfg.kafka.transaction_timeout_ms) == (interval, timeout)
    else:
        with pytest.raises(ConfigError, match="transaction_timeout_ms"):
            load_config(p, env=env)


@pytest.mark.parametrize(
    ("idle", "bundle", "ok"),
    [(30_000, 1_000, True), (5_000, 1_000, True), (4_999, 1_000, False), (1_000, 1_000, False),
     (2_000, 100, True), (1_399, 100, False), (0, 10_000, True)],
)
def test_idle_timeout_must_outlast_python_bundles(tmp_path: Path, idle: int, bundle: int,
                                                  ok: bool) -> None:
    """An idle timeout shorter than the Python bundles can hold a watermark stalls the
    joins and windows (docs/event-time.md): refused at load, naming both keys."""
    p = write(tmp_path, {})
    env = {"SLUICE__WINDOW__IDLE_TIMEOUT_MS": str(idle),
           "SLUICE__JOB__PYTHON_BUNDLE_TIME_MS": str(bundle)}
    if ok:
        cfg = load_config(p, env=env)
        assert (cfg.window.idle_timeout_ms, cfg.job.python_bundle_time_ms) == (idle, bundle)
    else:
        with pytest.raises(ConfigError, match=r"window.idle_timeout_ms.*job.python_bundle_time_ms"):
            load_config(p, env=env)


def test_devices_idle_timeout_follows_the_same_rule(tmp_path: Path) -> None:
    """Checked only where it is used: with the reference joins on."""
    p = write(tmp_path, {"reference": {"joins": True}})
    assert load_config(p, env={}).reference.devices_idle_timeout_ms == 5_000
    short = {"SLUICE__REFERENCE__DEVICES_IDLE_TIMEOUT_MS": "2000"}
    with pytest.raises(ConfigError, match=r"reference.devices_idle_timeout_ms \(2000\)"):
        load_config(p, env=short)
    cfg = load_config(p, env={**short, "SLUICE__JOB__PYTHON_BUNDLE_TIME_MS": "100"})
    assert cfg.reference.devices_idle_timeout_ms == 2_000
    assert load_config(write(tmp_path, {}), env=short).reference.joins is False


def test_relative_paths_resolve_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    write(tmp_path, {"schemas": {"dir": "my-schemas"},
                     "reference": {"devices_csv": "ref/devices.csv"},
                     "stack": {"run_dir": "/abs/run"}}, "deploy/sluice.yaml")
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config("../deploy/sluice.yaml", env={})
    deploy = (tmp_path / "deploy").resolve()
    assert cfg.base_dir == deploy
    assert cfg.base_dir.is_absolute()
    assert cfg.schema_path("telemetry-value/v2.avsc") == deploy / "my-schemas" / "telemetry-value" / "v2.avsc"
    assert cfg.path(cfg.reference.devices_csv) == deploy / "ref" / "devices.csv"
    assert cfg.path(cfg.stack.run_dir) == Path("/abs/run")  # absolute stays absolute


def test_with_overrides(tmp_path: Path) -> None:
    cfg = load_config(REPO / "sluice.yaml", env={"SLUICE_KAFKA_SASL_PASSWORD": SECRET})
    new = cfg.with_overrides(job={"bounded": True, "parallelism": 4}, topics={"dlq": "dlq-2"})
    assert (new.job.bounded, new.job.parallelism, new.topics.dlq) == (True, 4, "dlq-2")
    # untouched keys (in the same and other sections) survive, secret included
    assert new.job.name == cfg.job.name
    assert new.topics.telemetry == cfg.topics.telemetry
    assert new.window == cfg.window
    assert new.base_dir == cfg.base_dir
    assert new.kafka.sasl_password is not None
    assert new.kafka.sasl_password.get_secret_value() == SECRET
    # the original is unchanged (and frozen)
    assert (cfg.job.bounded, cfg.job.parallelism, cfg.topics.dlq) == (False, 1, "dlq")
    with pytest.raises(ValueError, match="frozen"):
        cfg.job.parallelism = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"job": {"parallelism": 0}}, "parallelism"),
        ({"job": {"no_such_key": 1}}, "no_such_key"),
        ({"checkpoint": {"interval_ms": 1_000_000}}, "transaction_timeout_ms"),
        ({"kafka": {"properties": {"sasl.password": "x"}}}, "sasl.password"),
    ],
)
def test_with_overrides_revalidates(overrides: dict, needle: str) -> None:
    cfg = load_config(REPO / "sluice.yaml", env={})
    # NB: with_overrides raises pydantic's ValidationError (a ValueError), not ConfigError.
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        cfg.with_overrides(**overrides)
