"""Schemas on disk and in a Confluent-API schema registry.

The code speaks only the Confluent Schema Registry REST API (through
confluent-kafka's client), so it works against Confluent SR, Karapace, Redpanda
and Apicurio's ``/apis/ccompat/v7``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from sluice.auth import registry_auth_error
from sluice.config import SluiceConfig


class RegistryUnavailable(RuntimeError):
    """The registry could not be reached or answered with a server error."""


@dataclass(frozen=True)
class OutputSchema:
    """An output schema with the registry id the job stamps into its framing."""

    subject: str
    schema_str: str
    schema_id: int


def read_schema(path: Path) -> str:
    """The schema's canonical JSON text (parsed and re-serialised, so whitespace never differs)."""
    try:
        return json.dumps(json.loads(path.read_text()), separators=(",", ":"))
    except FileNotFoundError:
        raise FileNotFoundError(f"schema file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"schema file {path} is not valid JSON: {exc}") from exc


def subject_of(schema_rel: str) -> str:
    """``telemetry-value/v2.avsc`` → ``telemetry-value``."""
    return schema_rel.split("/", 1)[0]


def load_subjects(schemas_dir: Path) -> dict[str, dict[str, str]]:
    data = yaml.safe_load((schemas_dir / "subjects.yaml").read_text())
    default = data.get("default_compatibility", "BACKWARD_TRANSITIVE")
    return {
        name: {"compatibility": default, **(spec or {})}
        for name, spec in data.get("subjects", {}).items()
    }


_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


def schema_versions(schemas_dir: Path, subject: str) -> list[Path]:
    """``v1.avsc``, ``v2.avsc``, … of a subject in version order."""
    files = sorted((schemas_dir / subject).glob("*.avsc"))
    for f in files:
        if not _VERSION_FILE.match(f.name):
            raise ValueError(
                f"{f}: schema files are named v<N>.avsc (v1.avsc, v2.avsc, ...); rename or move it"
            )
    return sorted(files, key=lambda p: int(_VERSION_FILE.match(p.name).group(1)))  # type: ignore[union-attr]


def registry_client(cfg: SluiceConfig) -> SchemaRegistryClient:
    return SchemaRegistryClient(cfg.registry.client_conf())


def _url(client: SchemaRegistryClient) -> str:
    rest = getattr(client, "_rest_client", None)
    urls = getattr(rest, "base_urls", None)
    return ", ".join(urls) if urls else "the schema registry"


def register(client: SchemaRegistryClient, subject: str, schema_str: str) -> int:
    try:
        return int(client.register_schema(subject, Schema(schema_str, "AVRO")))
    except Exception as exc:
        auth = registry_auth_error(exc, _url(client))
        if auth is not None:
            raise auth from None
        if not isinstance(exc, SchemaRegistryError):
            raise RegistryUnavailable(
                f"cannot reach the registry to register {subject}: {exc}") from exc
        if exc.http_status_code in (409, 422):
            raise ValueError(
                f"the registry refused {subject}: {exc.error_message} "
                f"(HTTP {exc.http_status_code}, error {exc.error_code})"
            ) from exc
        raise RegistryUnavailable(f"registry error registering {subject}: {exc}") from exc


def lookup(client: SchemaRegistryClient, subject: str, schema_str: str) -> int:
    """Id of an already registered schema (for deployments where the job may not register)."""
    try:
        return int(client.lookup_schema(subject, Schema(schema_str, "AVRO")).schema_id)
    except SchemaRegistryError as exc:
        auth = registry_auth_error(exc, _url(client))
        if auth is not None:
            raise auth from None
        if exc.http_status_code == 404:
            raise ValueError(
                f"{subject}: this schema is not registered and registry.auto_register is off; "
                "run `sluice schemas register` first"
            ) from exc
        raise RegistryUnavailable(f"registry error looking up {subject}: {exc}") from exc


def output_schema(cfg: SluiceConfig, schema_rel: str) -> OutputSchema:
    """The id of an output schema: registered (``registry.auto_register``) or looked up.

    Registering also registers the subject's earlier versions first, oldest first, so
    the registry's history has the order of the files. Registering v2 alone would make
    a later ``sluice schemas register`` add v1 *after* v2, which a BACKWARD registry
    rightly refuses (v1 cannot read v2's data)."""
    subject = subject_of(schema_rel)
    path = cfg.schema_path(schema_rel)
    text = read_schema(path)
    with registry_client(cfg) as client:
        if not cfg.registry.auto_register:
            return OutputSchema(subject, text, lookup(client, subject, text))
        versions = schema_versions(cfg.path(cfg.schemas.dir), subject)
        earlier = versions[: versions.index(path)] if path in versions else []
        for p in earlier:
            register(client, subject, read_schema(p))
        sid = register(client, subject, text)
    return OutputSchema(subject, text, sid)


def register_all(cfg: SluiceConfig) -> dict[str, list[int]]:
    """Register every version of every subject, oldest first; set each subject's level."""
    schemas_dir = cfg.path(cfg.schemas.dir)
    ids: dict[str, list[int]] = {}
    with registry_client(cfg) as client:
        for subject, spec in load_subjects(schemas_dir).items():
            try:
                client.set_compatibility(subject_name=subject, level=spec["compatibility"])
            except Exception as exc:
                auth = registry_auth_error(exc, _url(client))
                if auth is not None:
                    raise auth from None
                if not isinstance(exc, SchemaRegistryError):
                    raise
                raise RegistryUnavailable(f"cannot set compatibility of {subject}: {exc}") from exc
            ids[subject] = [
                register(client, subject, read_schema(p))
                for p in schema_versions(schemas_dir, subject)
            ]
    return ids


@dataclass(frozen=True)
class RetryPolicy:
    """How long an unseen writer id may wait for an unreachable registry."""

    bound_ms: int = 30_000
    backoff_ms: int = 200
    max_backoff_ms: int = 5_000


class WriterSchemaCache:
    """Writer schemas by id, fetched once per id from the registry.

    Used inside the Python UDF worker: the Rust decoder asks for an id it has
    not seen, this fetches it once and hands the text to Rust.
    """

    def __init__(
        self,
        client_conf: dict[str, Any],
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._conf = client_conf
        self._client: SchemaRegistryClient | None = None
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self.attempts = 0

    def fetch_with_retry(self, schema_id: int) -> str | None:
        """:meth:`fetch`, retried with exponential backoff while the registry is
        unreachable; RegistryUnavailable once ``policy.bound_ms`` has passed."""
        deadline = self._clock() + self.policy.bound_ms / 1000
        pause = self.policy.backoff_ms / 1000
        while True:
            self.attempts += 1
            try:
                return self.fetch(schema_id)
            except RegistryUnavailable as exc:
                left = deadline - self._clock()
                if left <= 0:
                    raise RegistryUnavailable(
                        f"{exc} (gave up after {self.policy.bound_ms} ms, {self.attempts} attempts)"
                    ) from exc
                self._sleep(min(pause, left))
                pause = min(pause * 2, self.policy.max_backoff_ms / 1000)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> SchemaRegistryClient:
        if self._client is None:
            # Retries and their bound are this class's (RetryPolicy), not the client's
            # own (3 retries with ~1 s waits), so one attempt is one request.
            timeout = max(1, min(10, self.policy.bound_ms // 1000 or 1))
            self._client = SchemaRegistryClient({**self._conf, "max.retries": 0, "timeout": timeout})
        return self._client

    def fetch(self, schema_id: int) -> str | None:
        """The schema text, or None if the registry does not know the id (404).
        RegistryAuthError (not retried: waiting does not fix credentials) on 401/403."""
        try:
            schema = self.client.get_schema(schema_id)
        except Exception as exc:
            auth = registry_auth_error(exc, str(self._conf.get("url", "?")))
            if auth is not None:
                raise auth from None
            if not isinstance(exc, SchemaRegistryError):
                raise RegistryUnavailable(
                    f"cannot reach the registry for schema id {schema_id}: {exc}") from exc
            if exc.http_status_code == 404:
                return None
            raise RegistryUnavailable(f"registry error fetching schema id {schema_id}: {exc}") from exc
        if schema.schema_type not in (None, "AVRO"):
            return None
        return schema.schema_str


