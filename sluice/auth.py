"""Failing fast on bad credentials.

librdkafka treats a failed SASL login like a broker that is away: it reports the error to
``error_cb`` (``_AUTHENTICATION``) and keeps retrying, so without a callback a client
with a wrong password just waits until its own timeout (or forever, in ``flush()``).
:func:`fail_fast` adds an ``error_cb`` that remembers such errors, and
:func:`check_kafka_login` turns them into :class:`KafkaAuthError` within seconds.
A registry that answers 401/403 becomes :class:`RegistryAuthError`.

The messages name the endpoint and say "authentication failed"; they never contain a
secret (librdkafka's and the registry's error strings do not either).
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException


class SluiceAuthError(RuntimeError):
    """A service refused sluice's credentials (or its TLS certificate did not verify)."""


class KafkaAuthError(SluiceAuthError):
    def __init__(self, broker: str, detail: str):
        super().__init__(
            f"Kafka at {broker}: authentication failed: {detail}. Check kafka.sasl_username, "
            "the password (SLUICE_KAFKA_SASL_PASSWORD[_FILE] / kafka.sasl_password_file), "
            "kafka.properties (security.protocol, sasl.mechanism) and kafka.ssl_ca_file"
        )
        self.broker = broker
        self.detail = detail


class RegistryAuthError(SluiceAuthError):
    def __init__(self, url: str, detail: str):
        super().__init__(
            f"schema registry at {url}: authentication failed: {detail}. Check the "
            "credentials (SLUICE_REGISTRY_BASIC_AUTH[_FILE] / registry.basic_auth_file) and "
            "registry.ssl_ca_file"
        )
        self.url = url
        self.detail = detail


#: librdkafka errors that retrying cannot fix: wrong credentials, or a TLS handshake that
#: failed (untrusted certificate, wrong host name, plaintext client on a TLS port).
FATAL_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})


class ErrorLog:
    """The ``error_cb`` of one client: remembers the first fatal error."""

    def __init__(self, broker: str, raise_in_callback: bool = False):
        self.broker = broker
        self.fatal: KafkaError | None = None
        self.raise_in_callback = raise_in_callback

    def __call__(self, err: KafkaError) -> None:
        if err.code() in FATAL_CODES:
            if self.fatal is None:
                self.fatal = err
            if self.raise_in_callback:
                # confluent-kafka re-raises an exception from a callback in the caller of
                # poll()/flush()/consume(): the client stops instead of retrying silently.
                raise self.error()

    def error(self) -> KafkaAuthError:
        assert self.fatal is not None
        return KafkaAuthError(self.broker, self.fatal.str())

    def check(self) -> None:
        if self.fatal is not None:
            raise self.error()


def fail_fast(conf: dict[str, Any], *, raise_in_callback: bool = True) -> dict[str, Any]:
    """``conf`` plus an ``error_cb`` that raises :class:`KafkaAuthError` from the next
    poll()/flush()/consume() after an authentication or TLS failure."""
    log = ErrorLog(str(conf.get("bootstrap.servers", "?")), raise_in_callback)
    return {**conf, "error_cb": log}


def check_kafka_login(conf: dict[str, Any], timeout: float = 15.0) -> Any:
    """Connect with ``conf`` and fetch the cluster metadata; KafkaAuthError as soon as
    librdkafka reports a failed login or TLS handshake, TimeoutError (naming the broker)
    if the broker does not answer within ``timeout``. Returns the metadata."""
    from confluent_kafka.admin import AdminClient

    broker = str(conf.get("bootstrap.servers", "?"))
    log = ErrorLog(broker)
    admin_conf: dict[str, Any] = {**conf, "error_cb": log}
    admin = AdminClient(admin_conf)  # type: ignore[arg-type]  # stubs: str values only
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            md = admin.list_topics(timeout=min(0.25, max(0.05, deadline - time.monotonic())))
            if md.brokers:
                return md
        except KafkaException as exc:
            last = exc
        admin.poll(0)  # serves error_cb
        log.check()
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Kafka at {broker} did not answer within {timeout:.0f} s"
                + (f" ({last.args[0] if last.args else last})" if last else "")
            )


# ---------------------------------------------------------------------------------------
# Schema registry
# ---------------------------------------------------------------------------------------
def registry_auth_error(exc: BaseException, url: str) -> RegistryAuthError | None:
    """The RegistryAuthError an exception of confluent-kafka's SchemaRegistryClient
    stands for (HTTP 401/403, or a TLS certificate that does not verify), else None."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError) and exc.http_status_code in (401, 403):
        reason = {401: "Unauthorized", 403: "Forbidden"}[exc.http_status_code]
        return RegistryAuthError(url, f"HTTP {exc.http_status_code} {reason}")
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return RegistryAuthError(url, f"TLS certificate did not verify ({type(exc).__name__})")
    return None


def check_registry_login(conf: dict[str, Any]) -> list[str]:
    """List the subjects with ``conf``; RegistryAuthError on 401/403 or a TLS failure
    (one request, the client's own timeout; no retries)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    url = str(conf.get("url", "?"))
    with SchemaRegistryClient({**conf, "max.retries": 0}) as client:
        try:
            return list(client.get_subjects())
        except Exception as exc:
            err = registry_auth_error(exc, url)
            if err is not None:
                raise err from None
            raise
