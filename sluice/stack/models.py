"""Data types shared by the local-stack manager (no I/O here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .security import SecureMaterial

#: Start order. `down` stops in the reverse order.
COMPONENTS: tuple[str, ...] = (
    "kafka", "registry", "redis", "flink-jobmanager", "flink-taskmanager",
)
FLINK_COMPONENTS: tuple[str, ...] = ("flink-jobmanager", "flink-taskmanager")

#: The Confluent-compatible API of Apicurio Registry, relative to its HTTP root.
CCOMPAT_PATH = "/apis/ccompat/v7"

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A stack operation failed; the message is meant for the user as-is."""

    def __init__(
        self, message: str, *, component: str | None = None, log_file: Path | None = None
    ) -> None:
        super().__init__(message)
        self.component = component
        self.log_file = log_file


@dataclass(frozen=True)
class StackPorts:
    """Loopback ports of the local stack (all bound on 127.0.0.1 only)."""

    kafka: int = 19092
    kafka_controller: int = 19093
    registry: int = 18081
    registry_management: int = 18091
    flink_rest: int = 18082
    flink_rpc: int = 18083
    #: redis-server: the online feature store (docs/feature-store.md).
    redis: int = 16379
    # First of the Prometheus reporter's ports (JobManager and TaskManager take the first
    # free ones of PROMETHEUS_PORTS from here). Flink 2.2's reporter binds every
    # interface, not only loopback (docs/observability.md).
    flink_prometheus: int = 18084

    #: How many ports the Prometheus reporter may try, from flink_prometheus on.
    PROMETHEUS_PORTS = 4

    @property
    def flink_prometheus_range(self) -> str:
        return f"{self.flink_prometheus}-{self.flink_prometheus + self.PROMETHEUS_PORTS - 1}"

    def for_component(self, component: str) -> dict[str, int]:
        """The ports a component listens on, by field name (empty for the TaskManager)."""
        return {
            "kafka": {"kafka": self.kafka, "kafka_controller": self.kafka_controller},
            "registry": {
                "registry": self.registry,
                "registry_management": self.registry_management,
            },
            "redis": {"redis": self.redis},
            "flink-jobmanager": {"flink_rest": self.flink_rest, "flink_rpc": self.flink_rpc},
            "flink-taskmanager": {},
        }[component]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @staticmethod
    def env_offset(env: dict[str, str] | None = None) -> int:
        """``SLUICE_STACK_PORT_OFFSET`` (default 0), validated."""
        import os

        raw = (env if env is not None else os.environ).get("SLUICE_STACK_PORT_OFFSET", "0")
        try:
            offset = int(raw)
        except ValueError:
            raise StackError(f"SLUICE_STACK_PORT_OFFSET must be an integer, not {raw!r}") from None
        if not 0 <= offset <= 40000:
            raise StackError(f"SLUICE_STACK_PORT_OFFSET must be between 0 and 40000, not {offset}")
        return offset

    def shifted(self, offset: int) -> StackPorts:
        """Every port moved up by ``offset``."""
        return type(self)(**{k: v + offset for k, v in asdict(self).items()})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StackPorts:
        """The default ports shifted by ``SLUICE_STACK_PORT_OFFSET`` (default 0), so a
        second stack (a clean clone's `make test` next to a developer's running stack)
        can live on the same machine: e.g. 1000 moves Kafka to 20092."""
        return cls().shifted(cls.env_offset(env))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StackPorts:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in (data or {}).items() if k in known})


@dataclass
class ComponentStatus:
    """What `status` knows about one process of the stack."""

    name: str
    running: bool = False
    healthy: bool = False
    pid: int | None = None
    port: int | None = None
    endpoint: str | None = None
    log_file: Path | None = None
    started_at: str | None = None
    startup_seconds: float | None = None
    reused: bool = False
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_file"] = str(self.log_file) if self.log_file else None
        return data


@dataclass
class StackStatus:
    """The state of the stack in one run dir."""

    run_dir: Path
    ports: StackPorts
    components: dict[str, ComponentStatus] = field(default_factory=dict)
    flink_conf_dir: Path | None = None
    #: Secured mode (``up(..., secure=True)``): where the CA and the secret files are.
    secrets: SecureMaterial | None = None

    @property
    def secure(self) -> bool:
        return self.secrets is not None

    # -- conveniences ---------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.ports.kafka}"

    @property
    def registry_url(self) -> str:
        """Base URL of the Confluent-compatible API (what Confluent clients call `url`)."""
        return f"{self.registry_root_url}{CCOMPAT_PATH}"

    @property
    def registry_root_url(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{LOOPBACK}:{self.ports.registry}"

    def client_env(self) -> dict[str, str]:
        """Environment that points sluice (CLI, jobs, tests) at this stack. In secured
        mode only paths of secret files, never a secret (docs/security.md)."""
        env = {"BOOTSTRAP_SERVERS": self.bootstrap_servers, "SCHEMA_REGISTRY_URL": self.registry_url}
        if self.components.get("redis", ComponentStatus("redis")).running:
            env["SLUICE__FEATURE_STORE__REDIS_URL"] = self.redis_url
        if self.secrets is None:
            return env
        from .security import KAFKA_CLIENT_USER, SCRAM_MECHANISM

        m = self.secrets
        env.update({
            "SLUICE__KAFKA__SASL_USERNAME": KAFKA_CLIENT_USER,
            "SLUICE__KAFKA__PROPERTIES":
                f"{{security.protocol: SASL_SSL, sasl.mechanism: {SCRAM_MECHANISM}}}",
            "SLUICE__KAFKA__SSL_CA_FILE": str(m.ca_pem),
            "SLUICE_KAFKA_SASL_PASSWORD_FILE": str(m.kafka_client_password),
            "SLUICE__REGISTRY__SSL_CA_FILE": str(m.ca_pem),
            "SLUICE_REGISTRY_BASIC_AUTH_FILE": str(m.registry_auth),
        })
        return env

    @property
    def redis_url(self) -> str:
        """The feature store's Redis (database 0), what ``feature_store.redis_url`` takes."""
        return f"redis://{LOOPBACK}:{self.ports.redis}/0"

    @property
    def flink_rest_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.flink_rest}"

    @property
    def running(self) -> list[str]:
        return [n for n, c in self.components.items() if c.running]

    @property
    def flink_running(self) -> bool:
        return any(self.components[n].running for n in FLINK_COMPONENTS if n in self.components)

    @property
    def healthy(self) -> bool:
        """Kafka and the registry are up and healthy, and so is every other running process."""
        core = all(
            self.components.get(n, ComponentStatus(n)).healthy for n in ("kafka", "registry")
        )
        return core and all(c.healthy for c in self.components.values() if c.running)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "ports": self.ports.to_dict(),
            "healthy": self.healthy,
            "bootstrap_servers": self.bootstrap_servers,
            "registry_url": self.registry_url,
            "redis_url": self.redis_url,
            "flink_rest_url": self.flink_rest_url,
            "flink_conf_dir": str(self.flink_conf_dir) if self.flink_conf_dir else None,
            "secure": self.secure,
            "secrets_dir": str(self.secrets.dir) if self.secrets else None,
            "components": {n: c.to_dict() for n, c in self.components.items()},
        }
