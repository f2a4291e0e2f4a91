"""The one typed configuration model of sluice.

A deployment is a YAML file (``sluice.yaml`` at the repo root is the local one)
validated by :class:`SluiceConfig`. Endpoints and secrets can be overridden from
the environment, so the same file serves the local stack, CI and a real cluster:

* ``SLUICE__<SECTION>__<KEY>`` for any key (``SLUICE__KAFKA__BOOTSTRAP_SERVERS``),
* the conventional ``BOOTSTRAP_SERVERS`` and ``SCHEMA_REGISTRY_URL``,
* secrets only from the environment or files: ``SLUICE_KAFKA_SASL_PASSWORD``,
  ``SLUICE_REGISTRY_BASIC_AUTH`` (``user:password``), or ``*_FILE`` variants
  naming a file that holds the value (also ``kafka.sasl_password_file`` /
  ``registry.basic_auth_file`` in the YAML: a path, never the secret itself).
  Secrets are ``SecretStr`` and never logged. The Flink job never carries them: its
  Kafka connector resolves the password from the file on the TaskManager (Kafka's
  ``DirectoryConfigProvider``), its UDFs read the registry credentials in ``open()``
  (docs/security.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from sluice.features import FeatureSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "sluice.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


#: flink-sql-connector-kafka relocates kafka-clients under this package: class names in
#: the Flink job's Kafka properties (JAAS login module, config providers) must carry it.
FLINK_KAFKA_SHADED = "org.apache.flink.kafka.shaded."

#: Secrets are refused in the YAML itself: these keys may only come from env or files.
SECRET_KEYS = {"kafka": ("sasl_password",), "registry": ("basic_auth",),
               "feature_store": ("password",)}


def read_secret_file(path: Path, what: str) -> str:
    """The content of a secret file, stripped; ConfigError naming ``what`` and the path
    (never the content) if it is missing, unreadable or empty."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what}: secret file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read secret file {path}: {exc.strerror}") from None
    if not text.strip():
        raise ConfigError(f"{what}: secret file {path} is empty")
    return text.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    # Extra librdkafka / Java client properties shared by every client
    # (security.protocol, sasl.mechanism, ...). Never put secrets here.
    properties: dict[str, str] = Field(default_factory=dict)
    sasl_username: str | None = None
    # From SLUICE_KAFKA_SASL_PASSWORD, or read from sasl_password_file at load time.
    sasl_password: SecretStr | None = None
    # A file holding only the password (no trailing newline): what the Flink job's Kafka
    # connector reads on the TaskManagers. SLUICE_KAFKA_SASL_PASSWORD_FILE sets it.
    sasl_password_file: Path | None = None
    # PEM file of the CA(s) that signed the brokers' certificates (TLS listeners).
    ssl_ca_file: Path | None = None
    # Kafka transaction timeout the exactly-once sinks ask for. Must be
    # <= the broker's transaction.max.timeout.ms and >> the checkpoint interval.
    transaction_timeout_ms: int = Field(default=900_000, gt=0)

    @field_validator("properties")
    @classmethod
    def _no_secrets_in_properties(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            lowered = f"{key} {value}".lower()
            if any(word in lowered for word in ("password", "secret", "jaas")):
                raise ValueError(
                    f"kafka.properties.{key}: secrets must not be in the config file; set "
                    "kafka.sasl_username and SLUICE_KAFKA_SASL_PASSWORD (or "
                    "SLUICE_KAFKA_SASL_PASSWORD_FILE): sluice builds sasl.jaas.config itself"
                )
        return v

    def client_properties(self) -> dict[str, str]:
        """librdkafka properties for confluent-kafka clients (secrets included)."""
        props = {"bootstrap.servers": self.bootstrap_servers, **self.properties}
        if self.sasl_username:
            props["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            props["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_file is not None:
            props["ssl.ca.location"] = str(self.ssl_ca_file)
        return props

    def java_properties(self, class_prefix: str = FLINK_KAFKA_SHADED) -> dict[str, str]:
        """Properties for the Flink Kafka connector (``properties.*`` options). They hold
        no secret: ``sasl.jaas.config`` names the password as
        ``${dir:<folder>:<file>}``, which Kafka's DirectoryConfigProvider resolves when
        the client is created on the TaskManager. ``class_prefix``: the package the
        connector relocated kafka-clients to (empty for an unshaded kafka-clients)."""
        props = {"bootstrap.servers": self.bootstrap_servers, **self.properties}
        if self.ssl_ca_file is not None:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(self.ssl_ca_file)
        if self.sasl_username and self.sasl_password is not None:
            if self.sasl_password_file is None:
                raise ConfigError(
                    "the Flink job reads the Kafka password from a file on the TaskManagers, "
                    "never from its own configuration: set SLUICE_KAFKA_SASL_PASSWORD_FILE (or "
                    "kafka.sasl_password_file) instead of SLUICE_KAFKA_SASL_PASSWORD"
                )
            pw = Path(self.sasl_password_file)
            mech = self.properties.get("sasl.mechanism", "PLAIN").upper()
            module = class_prefix + (
                "org.apache.kafka.common.security.scram.ScramLoginModule"
                if mech.startswith("SCRAM")
                else "org.apache.kafka.common.security.plain.PlainLoginModule"
            )
            props["config.providers"] = "sluicedir"
            props["config.providers.sluicedir.class"] = (
                class_prefix + "org.apache.kafka.common.config.provider.DirectoryConfigProvider")
            # The provider may read this one folder only.
            props["config.providers.sluicedir.param.allowed.paths"] = str(pw.parent)
            props["sasl.jaas.config"] = (
                f'{module} required username="{self.sasl_username}" '
                f'password="${{sluicedir:{pw.parent}:{pw.name}}}";'
            )
        return props


class RegistryConfig(_Section):
    # Any Confluent-API schema registry (Confluent SR, Karapace, Redpanda,
    # Apicurio's /apis/ccompat/v7).
    url: str = "http://127.0.0.1:18081/apis/ccompat/v7"
    # user:password, from SLUICE_REGISTRY_BASIC_AUTH or read from basic_auth_file at load.
    basic_auth: SecretStr | None = None
    # A file holding user:password; the job's UDFs read it in open() on the TaskManagers.
    basic_auth_file: Path | None = None
    # PEM file of the CA that signed the registry's certificate (https URLs).
    ssl_ca_file: Path | None = None
    # Register output schemas at job start; turn off where subjects are managed
    # by CI (`sluice schemas register`) and producers may not register.
    auto_register: bool = True
    # While the registry is unreachable, a record with a writer id the job has not
    # seen waits up to this long (retrying with backoff from retry_backoff_ms, doubling
    # up to 5 s), then goes to the DLQ as unknown-schema. Ids already seen keep flowing.
    unknown_id_retry_ms: int = Field(default=30_000, ge=0)
    retry_backoff_ms: int = Field(default=200, gt=0)
    # After giving up on an id, later records with it are dead-lettered at once for
    # this long (no stall per record), then the registry is asked again.
    unknown_id_cooldown_ms: int = Field(default=10_000, ge=0)

    # Seconds one registry request may take: without it a lost answer blocks forever.
    timeout_s: int = Field(default=30, gt=0)

    def client_conf(self, *, secret: bool = True) -> dict[str, Any]:
        """confluent-kafka SchemaRegistryClient settings; ``secret=False`` leaves the
        credentials out (what the job's UDFs carry; they read :attr:`basic_auth_file`)."""
        conf: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s}
        if self.ssl_ca_file is not None:
            conf["ssl.ca.location"] = str(self.ssl_ca_file)
        if secret and self.basic_auth is not None:
            conf["basic.auth.user.info"] = self.basic_auth.get_secret_value()
        return conf

    def udf_auth_file(self) -> str | None:
        """The credentials file the job's UDFs read at open(); ConfigError if the
        credentials came from the environment only (the TaskManagers cannot see it)."""
        if self.basic_auth is None:
            return None
        if self.basic_auth_file is None:
            raise ConfigError(
                "the Flink job's UDFs read the registry credentials from a file on the "
                "TaskManagers, never from the job: set SLUICE_REGISTRY_BASIC_AUTH_FILE (or "
                "registry.basic_auth_file) instead of SLUICE_REGISTRY_BASIC_AUTH"
            )
        return str(self.basic_auth_file)


class TopicsConfig(_Section):
    telemetry: str = "telemetry"
    enriched: str = "telemetry.enriched"
    scores: str = "scores"
    alerts: str = "alerts"
    dlq: str = "dlq"
    # Binary sensor frames and JSON maintenance work orders (docs/formats.md).
    sensor_frames: str = "sensor-frames"
    maintenance: str = "maintenance-events"
    # QualityResult events of the great-expectations audit path.
    quality: str = "quality"
    # Compacted ledger of dead letters already replayed by `sluice dlq replay`.
    dlq_replays: str = "dlq.replays"
    # Issues 4-5 (schemas registered now, jobs to come): the compacted device registry,
    # window features, drift events, retraining requests and model rollouts.
    devices: str = "devices"
    # Readings joined with devices, sites and maintenance (reference.joins; issue 4).
    joined: str = "telemetry.joined"
    features: str = "features"
    # Events later than a feature window's allowed lateness, one LateRecord per window.
    late: str = "late"
    drift: str = "drift"
    retrain_triggers: str = "retrain-triggers"
    model_updates: str = "model-updates"
    # Feature vectors scored by a model in the stream (ModelScore; docs/scoring.md).
    model_scores: str = "model-scores"
    # `sluice actions`: actions that could not be delivered (ActionDeadLetter Avro).
    action_dlq: str = "action-dlq"
    partitions: int = Field(default=2, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def inputs(self) -> list[str]:
        """The topics the pipeline reads, one per wire format."""
        return [self.telemetry, self.sensor_frames, self.maintenance]

    def all(self) -> list[str]:
        return [
            *self.inputs(), self.enriched, self.scores, self.alerts, self.dlq, self.quality,
            self.dlq_replays, self.devices, self.joined, self.features, self.late, self.drift,
            self.retrain_triggers, self.model_updates, self.action_dlq, self.model_scores,
        ]


class SchemasConfig(_Section):
    dir: Path = Path("schemas")
    # The job's reader schema for telemetry: every writer version resolves to it.
    telemetry_reader: str = "telemetry-value/v3.avsc"
    enriched: str = "telemetry.enriched-value/v3.avsc"
    scores: str = "scores-value/v1.avsc"
    alerts: str = "alerts-value/v1.avsc"
    dlq: str = "dlq-value/v2.avsc"
    quality: str = "quality-value/v1.avsc"
    # Reference data (docs/reference-data.md): the Device upserts on `devices`, and the
    # JoinedReading on `telemetry.joined`.
    devices: str = "devices-value/v1.avsc"
    joined: str = "telemetry.joined-value/v1.avsc"
    features: str = "features-value/v1.avsc"
    late: str = "late-value/v1.avsc"
    # The scoring job (docs/scoring.md): ModelScore out, Alert v2 (names the model) out,
    # ModelUpdate in.
    model_scores: str = "model-scores-value/v1.avsc"
    model_alerts: str = "alerts-value/v2.avsc"
    model_updates: str = "model-updates-value/v1.avsc"
    drift: str = "drift-value/v1.avsc"
    retrain_triggers: str = "retrain-triggers-value/v1.avsc"


class CheckpointConfig(_Section):
    interval_ms: int = Field(default=2_000, gt=0)
    min_pause_ms: int = Field(default=500, ge=0)
    timeout_ms: int = Field(default=120_000, gt=0)
    # None: the cluster's execution.checkpointing.dir; a job run as a script (its own
    # mini-cluster) uses <stack.run_dir>/checkpoints/<job.name> (jobs/pipeline.py).
    dir: str | None = None
    # Where keyed state lives: hashmap (JVM heap; small state) or rocksdb (local disk;
    # state larger than memory), set by the job on top of the cluster's flink-conf.
    # rocksdb_incremental: checkpoints upload only the new RocksDB files.
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    rocksdb_incremental: bool = True


#: The folder of the performance profiles (flink-conf/profiles/<name>.yaml, docs/performance.md).
PROFILES_DIR = REPO_ROOT / "flink-conf" / "profiles"
#: The Flink option behind job.python_bundle_time_ms (a profile's value is its default).
BUNDLE_TIME_OPTION = "python.fn-execution.bundle.time"
Profile = Literal["default", "low-latency", "throughput"]


class JobConfig(_Section):
    name: str = "sluice-pipeline"
    # A performance profile (flink-conf/profiles/<profile>.yaml): Flink options the job
    # sets (bundle size and time, Arrow batch size, buffer timeout, watermark interval)
    # plus defaults for sluice keys (checkpoint.interval_ms, job.delivery_guarantee) that
    # the config file does not set itself. default: no profile.
    profile: Profile = "default"
    parallelism: int = Field(default=1, ge=1)
    python_execution_mode: Literal["process", "thread"] = "process"
    consumer_group: str = "sluice-pipeline"
    # Stable per job: the exactly-once sinks derive one prefix per output topic.
    transactional_id_prefix: str = "sluice-pipeline"
    # exactly-once: Kafka transactions committed by checkpoints (consumers read
    # read_committed; latency ~ checkpoint interval). at-least-once: flushed on
    # checkpoints, visible at once, duplicated after a failure (idempotent consumers).
    delivery_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    # earliest: read the topic from the start; group-offsets: resume from the
    # group's committed offsets (earliest where there are none).
    startup_mode: Literal["earliest", "group-offsets", "latest"] = "group-offsets"
    # True: stop at the end offsets seen at start (batch-like runs, tests).
    bounded: bool = False
    restart_attempts: int = Field(default=3, ge=0)
    # python.fn-execution.bundle.time: a process-mode Python operator sends its records to
    # the Python worker in bundles finished at least this often, and holds back every
    # watermark until the bundle is finished. window.idle_timeout_ms must be well above it
    # (see _idleness_outlasts_bundles and docs/event-time.md). A profile's
    # python.fn-execution.bundle.time is the default when this key is not set.
    python_bundle_time_ms: int = Field(default=1_000, gt=0)
    jars: list[Path] = Field(
        default_factory=lambda: [Path(".deps/flink-jars/flink-sql-connector-kafka-5.0.0-2.2.jar")]
    )


class WindowConfig(_Section):
    size_ms: int = Field(default=10_000, gt=0)
    out_of_orderness_ms: int = Field(default=2_000, ge=0)
    # A partition without records for this long stops holding the watermark back.
    # Not shorter: a source that is idle when the job is stopped with --drain loses its
    # final MAX_WATERMARK in Flink 2.2 (FLINK-40499), and the last windows never fire.
    idle_timeout_ms: int = Field(default=30_000, ge=0)


class IngestConfig(_Section):
    # Larger values go to the DLQ as `oversized` before any decoding (every format).
    max_record_bytes: int = Field(default=65_536, gt=0)
    # Maintenance JSON nested deeper than this goes to the DLQ as `too-deep`.
    max_json_depth: int = Field(default=32, ge=1, le=127)
    # Sensor frames with more samples go to the DLQ as `type-mismatch`.
    max_frame_samples: int = Field(default=4_096, ge=1, le=4_096)
    # Event timestamps before this (epoch ms; default 2000-01-01) or further than
    # max_ts_skew_ms from the Kafka record timestamp go to the DLQ as `ts-out-of-range`.
    min_ts_ms: int = 946_684_800_000
    max_ts_skew_ms: int = Field(default=86_400_000, gt=0)
    # A second record with an event id seen within this time goes to the DLQ as
    # `duplicate-event-id` (Flink state TTL; later repeats are not detected).
    dedup_ttl_ms: int = Field(default=3_600_000, gt=0)
    # Kafka header with the producer's per-device sequence number (decimal ASCII);
    # copied to the canonical event's `seq` (null when absent or not a number).
    # `sluice verify` uses it to find gaps per device. None: not read.
    sequence_header: str | None = Field(default="sluice-seq", min_length=1,
                                        pattern=r"^[A-Za-z0-9._-]+$")


class QualityConfig(_Section):
    # great-expectations suites, one per input (telemetry.json, sensor-frames.json,
    # maintenance-events.json): the per-record expectations are compiled to Rust.
    suites_dir: Path = Path("schemas/expectations")
    # Audit path: every audit_window_ms of event time, a batch per input is validated
    # by great-expectations itself and a QualityResult goes to the quality topic.
    audit: bool = True
    audit_window_ms: int = Field(default=10_000, gt=0)


class FeaturesConfig(_Section):
    # The window feature spec (docs/features.md), relative to the config file's folder.
    # None: the job computes no window features. Loaded and validated by load_config.
    spec: Path | None = None


class ScoreConfig(_Section):
    metric: Literal["temperature_c", "vibration_rms_g"] = "temperature_c"
    # Used for devices whose reference row has no max_temperature_c.
    default_threshold: float = 80.0
    model_version: str = "threshold-v0"


class ScoringConfig(_Section):
    """The scoring job (jobs/scoring.py, docs/scoring.md): FeatureVectors from
    ``topics.features`` scored by the model versions announced on ``topics.model_updates``."""

    job_name: str = "sluice-scoring"
    consumer_group: str = "sluice-scoring"
    transactional_id_prefix: str = "sluice-scoring"
    # Models to score with, by name; empty: every model announced on model-updates.
    models: list[str] = Field(default_factory=list)
    # Per-device adaptive threshold: an EWMA (weight ``alpha``) of the device's recent
    # non-alert scores; once ``warmup`` scores are in, the threshold is
    # min(model threshold, mean - k * std), so a device that is noisy by nature does not
    # page all day, and no device is ever held to a stricter bar than the model's.
    alpha: float = Field(default=0.1, gt=0, le=1)
    k: float = Field(default=3.0, gt=0)
    warmup: int = Field(default=5, ge=0)
    # An alert is CRITICAL when the score is this far below the threshold applied.
    critical_margin: float = Field(default=0.05, ge=0)
    # Vectors that arrive before any model is announced wait in keyed state; the wait is
    # retried on a processing-time timer this often.
    pending_retry_ms: int = Field(default=1_000, gt=0)
    # Per-device threshold state not updated for this long is dropped (0: never).
    state_ttl_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=0)


class ModelsConfig(_Section):
    # The model registry (docs/models.md): models/<name>/<version>/, relative to the config
    # file's folder. `sluice model train` writes there; `sluice model list|show` reads it.
    dir: Path = Path("models")


class DriftConfig(_Section):
    """Drift of the scored features against the model's training reference, and when it
    asks for a retrain (sluice/drift.py, docs/drift.md). Times are event time."""

    # A window drifted for a feature when PSI > psi_threshold or KS > ks_threshold.
    # PSI: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a shift (a mean shift of ~0.45 sd).
    psi_threshold: float = Field(default=0.2, gt=0)
    # KS statistic (largest CDF gap): 0.2 is a mean shift of ~0.5 sd of a normal feature.
    ks_threshold: float = Field(default=0.2, gt=0, le=1)
    # Sliding windows of window_ms every slide_ms (window_ms a multiple of slide_ms).
    window_ms: int = Field(default=600_000, gt=0)
    slide_ms: int = Field(default=120_000, gt=0)
    # A window with fewer values of a feature is not evaluated for it (no DriftEvent).
    min_samples: int = Field(default=200, ge=1)
    # Retrain when a feature drifted in k_windows consecutive windows...
    k_windows: int = Field(default=3, ge=1)
    # ...and no retrain of the same model was triggered in the last cooldown_ms.
    cooldown_ms: int = Field(default=3_600_000, ge=0)

    @model_validator(mode="after")
    def _windows_line_up(self) -> DriftConfig:
        if self.window_ms % self.slide_ms:
            raise ValueError(f"drift.window_ms ({self.window_ms}) must be a multiple of "
                             f"drift.slide_ms ({self.slide_ms})")
        return self


class RetrainConfig(_Section):
    """`jobs/retrain.py`: retrain triggers -> a candidate model -> published or refused
    (docs/drift.md)."""

    # Consumer group on topics.retrain_triggers; also the transactional.id of the producer
    # that writes ModelUpdates and commits the trigger's offset in one transaction.
    consumer_group: str = Field(default="sluice-retrain", min_length=1,
                                pattern=r"^[A-Za-z0-9._-]+$")
    # Training rows: the model window's FeatureVectors with window_start >= the trigger's
    # window_start - lookback_ms (the drifted period onwards), at most max_rows newest.
    lookback_ms: int = Field(default=0, ge=0)
    max_rows: int = Field(default=200_000, gt=0)
    # Fewer rows: the trigger is refused (too-few-rows), nothing is trained.
    min_rows: int = Field(default=200, ge=2)
    # Refuse the candidate when its holdout metric is worse than the active model's on the
    # same holdout by more than this (labels: ROC AUC, else calibration error
    # |anomaly_rate - contamination|; docs/drift.md).
    max_regression: float = Field(default=0.02, ge=0)
    # Where handled trigger ids are remembered (relative to the config's folder; default
    # <models.dir>/.retrain/ledger.jsonl).
    ledger: Path | None = None


class ReferenceConfig(_Section):
    # The device table the Ingest UDF enriches `telemetry.enriched` with, and the input
    # of `sluice devices publish` (docs/reference-data.md).
    devices_csv: Path = Path("reference/devices.csv")
    # True: the job also joins readings with the device versions on `topics.devices`
    # (event-time temporal join), the sites file and maintenance work orders (interval
    # join) and writes JoinedReading records to `topics.joined`. False: no such operator.
    joins: bool = False
    # A reading whose device has no version valid at its event time waits (in event
    # time) this long for one; then it is emitted with reference_status MISSING or
    # dead-lettered as `unknown-device` (unknown_device).
    unknown_device_hold_ms: int = Field(default=60_000, ge=0)
    unknown_device: Literal["flag", "dead-letter"] = "flag"
    # site_id,region,timezone,energy_price_per_kwh; re-read when its mtime changes,
    # checked at most every sites_refresh_s seconds (no restart needed).
    sites_csv: Path = Path("reference/sites.csv")
    sites_refresh_s: float = Field(default=10.0, gt=0)
    # Interval join: a reading is labelled with the latest work order of its device with
    # ts in [reading ts - maintenance_before_ms, reading ts + maintenance_after_ms].
    # The reading waits for the watermark to pass ts + maintenance_after_ms.
    maintenance_before_ms: int = Field(default=3_600_000, ge=0)
    maintenance_after_ms: int = Field(default=0, ge=0)
    # State TTL of the join, per device (processing time): a device without any record
    # (reading, version, tombstone, work order) for this long, and no reading waiting,
    # is forgotten: its versions, deletions and work orders are cleared, and its next
    # readings are unknown devices until a version is published again. 0: never.
    device_state_ttl_ms: int = Field(default=30 * 86_400_000, ge=0)
    # The devices source's own idle timeout (its watermark, valid_from - out-of-orderness,
    # is usually far behind the readings, and holds the join back until it is idle).
    # Same rule as window.idle_timeout_ms against job.python_bundle_time_ms. 0: the
    # window.idle_timeout_ms of every source.
    devices_idle_timeout_ms: int = Field(default=5_000, ge=0)


class AnomalyConfig(_Section):
    """Labelled anomalies the generator injects (docs/evaluation.md). Off unless
    ``generator.anomalies`` is set: without it every plan is exactly what it was before."""

    # Labelled anomalies per device and hour of event time (rounded over the whole plan).
    rate: float = Field(default=0.5, gt=0, le=60)
    # Which kinds, used in turn: a spike (temperature jumps for seconds), slow drift
    # (temperature ramps up over tens of minutes), a stuck sensor (temperature, vibration
    # and humidity frozen), bearing wear (vibration harmonics at a defect frequency in
    # the sensor frames, growing; telemetry vibration RMS rises with them).
    kinds: tuple[Literal["spike", "drift", "stuck", "bearing"], ...] = Field(
        default=("spike", "drift", "stuck", "bearing"), min_length=1)
    # Randomness of the anomalies only (kinds, devices, spans, magnitudes).
    seed: int = 0
    # Event time kept clear between two anomalies of one device (and before the first).
    min_gap_ms: int = Field(default=600_000, ge=0)

    @field_validator("kinds")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"kinds must be distinct, got {list(v)}")
        return v


class GeneratorConfig(_Section):
    @field_validator("writer_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError("weights must be >= 0 and at least one > 0, e.g. {v1: 1, v2: 1, v3: 1}")
        return v

    seed: int = 42
    records: int = Field(default=6_000, ge=0)
    devices: int = Field(default=20, ge=1)
    # Events per second for live runs (demo); 0 means as fast as possible.
    rate_eps: float = Field(default=1_000.0, ge=0)
    # Relative weights of the writer schema versions producing at the same time.
    writer_weights: dict[Literal["v1", "v2", "v3"], float] = Field(
        default_factory=lambda: {"v1": 0.3, "v2": 0.4, "v3": 0.3}
    )
    # Fraction of devices that overheat (produce alerts).
    hot_device_share: float = Field(default=0.15, ge=0, le=1)
    corrupt_non_avro: int = Field(default=3, ge=0)
    corrupt_unknown_schema: int = Field(default=3, ge=0)
    corrupt_truncated: int = Field(default=3, ge=0)
    # How many of each rarer kind (sluice.generator.RARE_KINDS): magic byte 1, empty
    # value, tombstone, a body that does not match its schema, trailing bytes, NaN/inf
    # readings, timestamps far in the past/future, oversized values, a duplicate event
    # id, bad frame CRC/version/length, malformed/invalid-UTF-8/deep JSON, ...
    corrupt_each_rare_kind: int = Field(default=1, ge=0)
    # Binary sensor frames (sensor-frames topic) and JSON maintenance work orders
    # (maintenance-events topic), as a share of `records` telemetry readings.
    frame_share: float = Field(default=0.1, ge=0)
    frame_samples: int = Field(default=64, ge=1, le=4_096)
    maintenance_share: float = Field(default=0.02, ge=0)
    # Labelled anomalies (spikes, slow drift, stuck sensor, bearing wear) for `sluice eval`
    # and `sluice generate --labels`; None (the default) injects none.
    anomalies: AnomalyConfig | None = None


#: Header names that carry credentials: their values come from headers_from_env or
#: headers_from_file, never from the YAML.
_SECRET_HEADER_WORDS = ("authorization", "token", "secret", "password", "cookie", "api-key",
                        "apikey", "signature")


class WebhookConfig(_Section):
    """One HTTP endpoint every alert is POSTed to (JSON body, ``Idempotency-Key``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", min_length=1, max_length=64)
    url: str = Field(pattern=r"^https?://\S+$")
    # Plain headers (no credentials: refused by name).
    headers: dict[str, str] = Field(default_factory=dict)
    # Header name -> environment variable holding its value (e.g. Authorization ->
    # OPS_WEBHOOK_AUTH); read when the service starts, a missing one stops it.
    headers_from_env: dict[str, str] = Field(default_factory=dict)
    # Header name -> file holding its value (stripped); relative to the config's folder.
    headers_from_file: dict[str, Path] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if any(word in key.lower() for word in _SECRET_HEADER_WORDS):
                raise ValueError(
                    f"header {key}: credentials must not be in the config file; use "
                    f"headers_from_env ({{{key}: ENV_VAR}}) or headers_from_file "
                    "(docs/actions.md)"
                )
            if key.lower() == "idempotency-key":
                raise ValueError("Idempotency-Key is set by the service (the alert id)")
        return v


class RetryPolicyConfig(_Section):
    # Attempts per webhook and alert, the first one included.
    max_attempts: int = Field(default=5, ge=1)
    # Delay before attempt n+1: min(cap, base * 2**(n-1)), minus up to `jitter` of it
    # at random (0: none; 1: "full jitter"). A Retry-After header (seconds) is honoured
    # up to the cap.
    backoff_base_ms: int = Field(default=200, ge=0)
    backoff_cap_ms: int = Field(default=10_000, ge=0)
    jitter: float = Field(default=0.5, ge=0, le=1)


class ActionsConfig(_Section):
    """`sluice actions`: alerts -> webhook calls, effectively once (docs/actions.md)."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    # Connect and read timeout of one HTTP request, seconds.
    timeout_s: float = Field(default=5.0, gt=0)
    retry: RetryPolicyConfig = RetryPolicyConfig()
    # Consumer group on topics.alerts; the transactional.id is
    # `<consumer_group>-<instance_id>` (Kafka KIP-447 fencing by group generation).
    consumer_group: str = Field(default="sluice-actions", min_length=1)
    # This instance's static group membership id (Kafka group.instance.id) and the
    # suffix of its transactional.id. Default: the host name. A restart with the same id
    # takes its partitions back at once (no wait for the dead member's session to
    # expire) and fences its predecessor; instances on other hosts share the alerts.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    # A member that stops heart-beating loses its partitions after this long.
    session_timeout_ms: int = Field(default=15_000, ge=6_000)
    # Where a group without committed offsets starts.
    start_from: Literal["earliest", "latest"] = "earliest"
    # SQLite file recording every (alert, webhook) delivered; relative to the config's
    # folder. Local to the host: see docs/actions.md for what it does and does not cover.
    state_db: Path = Path(".run/actions/state.sqlite")

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, v: list[WebhookConfig]) -> list[WebhookConfig]:
        names = [w.name for w in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"webhook names must be unique: {', '.join(dup)} repeated")
        return v


class FeatureStoreConfig(_Section):
    """The online feature store: the latest FeatureVector per device and window in Redis,
    written by `sluice features materialize` from topics.features (docs/feature-store.md)."""

    # redis://host:port/db (rediss:// for TLS, unix:///path.sock). No credentials here:
    # feature_store.username plus SLUICE_REDIS_PASSWORD / SLUICE_REDIS_PASSWORD_FILE (or
    # feature_store.password_file).
    redis_url: str = Field(default="redis://127.0.0.1:16379/0",
                           pattern=r"^(redis|rediss|unix)://\S+$")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # Every key starts with this: <prefix><device_id>:<window> (a hash) and
    # <prefix><device_id> (the set of the device's windows).
    key_prefix: str = Field(default="sluice:fv:", min_length=1)
    # An entry expires this long after it was last written (also after a catch-up).
    ttl_s: int = Field(default=86_400, gt=0)
    # The materializer's consumer group on topics.features (read_committed). A new group
    # starts at the earliest offset: Kafka is the source of truth.
    consumer_group: str = Field(default="sluice-feature-store", min_length=1)
    # Records per Redis pipeline round trip; their offsets are committed after it.
    batch_size: int = Field(default=500, ge=1, le=100_000)
    # While Redis (or the registry) fails: retry after backoff_initial_ms, doubling up to
    # backoff_max_ms, for as long as it takes; the consumer is paused meanwhile.
    backoff_initial_ms: int = Field(default=200, gt=0)
    backoff_max_ms: int = Field(default=5_000, gt=0)
    # Connect and read timeout of one Redis call.
    socket_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        if urlsplit(v).password is not None:
            raise ValueError(
                "the Redis password must not be in the config file: set feature_store.username "
                "and SLUICE_REDIS_PASSWORD (or SLUICE_REDIS_PASSWORD_FILE)")
        return v

    @model_validator(mode="after")
    def _backoff_order(self) -> FeatureStoreConfig:
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError("feature_store.backoff_max_ms must be >= backoff_initial_ms")
        return self


class PricesConfig(_Section):
    """What one unit of the measured resources costs (`sluice report`). Defaults: AWS
    Fargate on-demand, Linux/x86, us-east-1 (per vCPU-hour and per GB-hour)."""

    currency: str = "USD"
    cpu_per_hour: float = Field(default=0.04048, ge=0)
    memory_gb_per_hour: float = Field(default=0.004445, ge=0)


class ReportConfig(_Section):
    """`sluice report` (docs/observability.md): prices, alert thresholds, where alerts go."""

    prices: PricesConfig = PricesConfig()
    # Alert when the consumer lag of the job's group (all input partitions) exceeds this
    # many records; None: no lag alert.
    lag_records_max: int | None = Field(default=100_000, ge=0)
    # Alert when the measured cost per million events exceeds this (in prices.currency);
    # None: no cost alert.
    cost_per_million_max: float | None = Field(default=1.0, ge=0)
    # Every alert is appended as one JSON line to this file (relative to the config's
    # folder) and, when set, produced as JSON to this Kafka topic.
    alerts_file: Path = Path("out/report/alerts.jsonl")
    alerts_topic: str | None = None
    # How long `sluice report` samples CPU, memory, lag and counters of a running job.
    sample_s: float = Field(default=10.0, gt=0)
    # At most this many output records are read to break latency down by component.
    latency_sample_records: int = Field(default=20_000, ge=1)


class StackConfig(_Section):
    run_dir: Path = Path(".run")
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    registry_port: int = 18081
    registry_management_port: int = 18091
    flink_rest_port: int = 18082
    flink_rpc_port: int = 18083
    redis_port: int = 16379


class SluiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka: KafkaConfig = KafkaConfig()
    registry: RegistryConfig = RegistryConfig()
    topics: TopicsConfig = TopicsConfig()
    schemas: SchemasConfig = SchemasConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    job: JobConfig = JobConfig()
    window: WindowConfig = WindowConfig()
    ingest: IngestConfig = IngestConfig()
    quality: QualityConfig = QualityConfig()
    features: FeaturesConfig = FeaturesConfig()
    score: ScoreConfig = ScoreConfig()
    scoring: ScoringConfig = ScoringConfig()
    models: ModelsConfig = ModelsConfig()
    drift: DriftConfig = DriftConfig()
    retrain: RetrainConfig = RetrainConfig()
    reference: ReferenceConfig = ReferenceConfig()
    generator: GeneratorConfig = GeneratorConfig()
    actions: ActionsConfig = ActionsConfig()
    feature_store: FeatureStoreConfig = FeatureStoreConfig()
    report: ReportConfig = ReportConfig()
    stack: StackConfig = StackConfig()
    # Relative paths in the file are resolved against this folder.
    base_dir: Path = REPO_ROOT

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """The profile's sluice keys fill in what the config does not set itself."""
        if not isinstance(data, dict) or not isinstance(data.get("job"), dict):
            return data
        name = data["job"].get("profile", "default")
        if not isinstance(name, str) or name == "default":
            return data
        out = dict(data)
        for section, values in profile_defaults(name).items():
            sec = dict(out.get(section) or {})
            for key, value in values.items():
                sec.setdefault(key, value)
            out[section] = sec
        return out

    @model_validator(mode="before")
    @classmethod
    def _resolve_files(cls, data: Any) -> Any:
        """Relative secret/CA file paths resolve against base_dir, like every other path;
        a password file is read here, so a missing one fails at load, naming the key."""
        if not isinstance(data, dict):
            return data
        base = Path(data.get("base_dir") or REPO_ROOT)
        out = dict(data)
        for section, key, secret in (("kafka", "sasl_password_file", "sasl_password"),
                                     ("kafka", "ssl_ca_file", None),
                                     ("registry", "basic_auth_file", "basic_auth"),
                                     ("registry", "ssl_ca_file", None),
                                     ("feature_store", "password_file", "password")):
            sec = out.get(section)
            if not isinstance(sec, dict) or sec.get(key) in (None, ""):
                continue
            sec = dict(sec)
            path = Path(sec[key])
            path = path if path.is_absolute() else base / path
            sec[key] = path
            if secret is not None:
                what = f"{section}.{key}"
                value = read_secret_file(path, what)
                if section == "kafka" and path.read_text() != value:
                    raise ConfigError(
                        f"{what}: {path} has leading or trailing whitespace (a newline?): the "
                        "Kafka Java client in the Flink job reads the file verbatim. Write it "
                        "with `printf '%s' \"$PASSWORD\" > FILE`"
                    )
                if sec.get(secret) is None:
                    sec[secret] = value
            elif not path.is_file():
                raise ConfigError(f"{section}.{key}: {path} does not exist")
            out[section] = sec
        return out

    @model_validator(mode="after")
    def _registry_wait_fits_checkpoints(self) -> SluiceConfig:
        wait, limit = self.registry.unknown_id_retry_ms, self.checkpoint.timeout_ms
        if wait >= limit:
            raise ValueError(
                f"registry.unknown_id_retry_ms ({wait}) must be below checkpoint.timeout_ms "
                f"({limit}): a record waiting for the registry holds back the checkpoint "
                "barrier behind it. Lower the wait or raise the checkpoint timeout"
            )
        return self

    @model_validator(mode="after")
    def _audit_needs_process_mode(self) -> SluiceConfig:
        if self.quality.audit and self.job.python_execution_mode == "thread":
            raise ValueError(
                "quality.audit runs great-expectations in a pandas UDAF, which PyFlink runs in "
                "process mode only: set job.python_execution_mode: process, or quality.audit: "
                "false (the per-record Rust checks run in both modes)"
            )
        return self

    @model_validator(mode="after")
    def _idleness_outlasts_bundles(self) -> SluiceConfig:
        """A process-mode Python operator holds each watermark until its bundle is
        finished, but passes an IDLE status on at once; the watermark it emits after that
        is dropped (Flink drops watermarks on an output announced idle) and is never sent
        again, so everything waiting for it stalls (docs/event-time.md). The bundle must
        therefore end, at every Python operator in a row, before a source can go idle:
        a bundle ends within 2 bundle times, two Python operators are in a row before
        the join and the windows, plus 1 s for the watermark interval and the network."""
        bundle = self.job.python_bundle_time_ms
        need = 4 * bundle + 1_000
        checks = [("window.idle_timeout_ms", self.window.idle_timeout_ms)]
        if self.reference.joins:
            checks.append(("reference.devices_idle_timeout_ms",
                           self.reference.devices_idle_timeout_ms))
        for key, idle in checks:
            if not idle or idle >= need:
                continue
            raise ValueError(
                f"{key} ({idle}) must be 0 or at least 4 x "
                f"job.python_bundle_time_ms + 1000 ms ({need}): a shorter idle timeout lets "
                "a source go idle while a Python operator still holds its last watermark, "
                "which Flink then drops, and windows and the reference join stall until "
                "newer data arrives (docs/event-time.md). Raise the idle timeout or lower "
                "the bundle time"
            )
        return self

    @model_validator(mode="after")
    def _exactly_once_invariant(self) -> SluiceConfig:
        interval = self.checkpoint.interval_ms
        timeout = self.kafka.transaction_timeout_ms
        if timeout < 10 * interval:
            raise ValueError(
                f"kafka.transaction_timeout_ms ({timeout}) must be much larger than "
                f"checkpoint.interval_ms ({interval}): a transaction stays open for a whole "
                "checkpoint interval (and longer while a checkpoint is slow). Use at least "
                f"{10 * interval}, or lower checkpoint.interval_ms"
            )
        return self

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.base_dir / p)

    def schema_path(self, rel: str) -> Path:
        return self.path(self.schemas.dir) / rel

    def feature_spec(self) -> FeatureSpec | None:
        """The validated window feature spec ``features.spec`` names, or None without one.

        Raises :class:`ConfigError` naming the key, the file, the line and the spec path."""
        if self.features.spec is None:
            return None
        from sluice.features import FeatureSpecError, load_feature_spec

        path = self.path(self.features.spec)
        if not path.is_file():
            raise ConfigError(
                f"features.spec: the feature spec {path} does not exist (the path is relative to "
                "the config file's folder; see docs/features.md)"
            )
        schema = self.schema_path(self.schemas.enriched)
        if not schema.is_file():
            raise ConfigError(
                f"features.spec: fields are checked against the EnrichedReading schema, and "
                f"{schema} (schemas.dir / schemas.enriched) does not exist"
            )
        try:
            return load_feature_spec(path, schema_path=schema)
        except FeatureSpecError as exc:
            raise ConfigError(f"features.spec: {exc}") from None

    def with_overrides(self, **sections: dict[str, Any]) -> SluiceConfig:
        """A copy with some keys replaced: ``cfg.with_overrides(job={"bounded": True})``."""
        data = self.model_dump()
        for section, values in sections.items():
            if isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        try:
            return SluiceConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, "overrides")) from None


def load_profile(name: str) -> dict[str, dict[str, Any]]:
    """flink-conf/profiles/<name>.yaml: ``{"flink": {option: value}, "sluice": {section:
    {key: value}}}``; ConfigError naming the file if it is missing or malformed."""
    if name == "default":
        return {"flink": {}, "sluice": {}}
    path = PROFILES_DIR / f"{name}.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"job.profile: {name}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"job.profile: {path} is not valid YAML: {exc}") from None
    flink, sluice = doc.get("flink") or {}, doc.get("sluice") or {}
    if not isinstance(flink, dict) or not isinstance(sluice, dict) or set(doc) - {"flink", "sluice"}:
        raise ConfigError(f"job.profile: {path} must hold the mappings `flink` and `sluice` only")
    return {"flink": {str(k): str(v) for k, v in flink.items()}, "sluice": sluice}


def profile_flink_options(name: str) -> dict[str, str]:
    """The Flink options of a profile, as the job sets them on its Configuration."""
    return load_profile(name)["flink"]


def profile_sluice_keys(name: str) -> dict[str, dict[str, Any]]:
    return load_profile(name)["sluice"]


def profile_defaults(name: str) -> dict[str, dict[str, Any]]:
    """What a profile fills in of the sluice config (``{section: {key: value}}``): its
    ``sluice`` keys, and its Python bundle time as job.python_bundle_time_ms, the one
    value the job sets (jobs/pipeline.py) and the idle timeouts are checked against
    (_idleness_outlasts_bundles). Applied with setdefault: an explicit key wins."""
    out = {section: dict(values) for section, values in profile_sluice_keys(name).items()}
    bundle = profile_flink_options(name).get(BUNDLE_TIME_OPTION)
    if bundle is not None:
        try:
            bundle_ms = int(bundle)
        except ValueError:
            raise ConfigError(
                f"job.profile: {PROFILES_DIR / f'{name}.yaml'}: {BUNDLE_TIME_OPTION} must "
                f"be a whole number of milliseconds, not {bundle!r}") from None
        out.setdefault("job", {})["python_bundle_time_ms"] = bundle_ms
    return out


def _secret_env(env: dict[str, str], name: str) -> tuple[str | None, str | None]:
    """(value of NAME, path in NAME_FILE); both at once is ambiguous and refused."""
    value, path = env.get(name), env.get(f"{name}_FILE")
    if value is not None and path is not None:
        raise ConfigError(f"set either {name} or {name}_FILE, not both")
    return value, path


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("SLUICE__"):
            continue
        parts = [p.lower() for p in key[len("SLUICE__") :].split("__") if p]
        if len(parts) < 2:
            raise ConfigError(f"{key}: expected SLUICE__<SECTION>__<KEY>")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        # Mappings and lists are YAML (SLUICE__KAFKA__PROPERTIES='{a: b}'); everything
        # else stays a string for pydantic to coerce, so a topic named "on" stays "on".
        node[parts[-1]] = yaml.safe_load(value) if value[:1] in ("{", "[") else value
    if "BOOTSTRAP_SERVERS" in env:
        out.setdefault("kafka", {})["bootstrap_servers"] = env["BOOTSTRAP_SERVERS"]
    if "SCHEMA_REGISTRY_URL" in env:
        out.setdefault("registry", {})["url"] = env["SCHEMA_REGISTRY_URL"]
    for var, section, key in (("SLUICE_KAFKA_SASL_PASSWORD", "kafka", "sasl_password"),
                              ("SLUICE_REGISTRY_BASIC_AUTH", "registry", "basic_auth"),
                              ("SLUICE_REDIS_PASSWORD", "feature_store", "password")):
        secret, secret_file = _secret_env(env, var)
        if secret is not None:
            out.setdefault(section, {})[key] = secret
        if secret_file is not None:
            out.setdefault(section, {})[f"{key}_file"] = secret_file
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against docs/configuration.md"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(
    path: Path | str | None = None, env: dict[str, str] | None = None
) -> SluiceConfig:
    """Load and validate a YAML config, then apply environment overrides."""
    env = dict(os.environ if env is None else env)
    cfg_path = Path(path) if path is not None else Path(env.get("SLUICE_CONFIG", DEFAULT_CONFIG))
    if not cfg_path.exists():
        raise ConfigError(f"config file {cfg_path} does not exist (pass --config PATH)")
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{cfg_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping of sections")
    for section, keys in SECRET_KEYS.items():
        for key in keys:
            if isinstance(raw.get(section), dict) and key in raw[section]:
                raise ConfigError(
                    f"{cfg_path}: {section}.{key}: secrets are never read from the config file; "
                    f"name a file with {section}.{key}_file or set the environment (see "
                    "docs/security.md)"
                )
    raw.setdefault("base_dir", str(cfg_path.resolve().parent))
    data = _merge(raw, _env_overrides(env))
    try:
        cfg = SluiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, str(cfg_path))) from None
    except ConfigError as exc:  # from a validator: add the file
        raise ConfigError(f"invalid configuration in {cfg_path}: {exc}") from None
    # The job builds its windows from the spec: a bad one must stop it here, at start.
    cfg.feature_spec()
    return cfg


def dump_config(cfg: SluiceConfig, path: Path) -> Path:
    """Write a config as YAML (secrets left out: they come from the environment)."""
    data = cfg.model_dump(mode="json", exclude={"kafka": {"sasl_password"}, "registry": {"basic_auth"},
                                                "feature_store": {"password"}})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
