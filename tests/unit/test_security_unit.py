"""Secured mode without a JVM: certificates, secret files, SCRAM credentials, the rendered
broker/registry settings, credential loading and the fail-fast error mapping."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest
import yaml
from confluent_kafka import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from sluice.auth import ErrorLog, KafkaAuthError, RegistryAuthError, registry_auth_error
from sluice.config import ConfigError, load_config
from sluice.stack import StackPorts, StackStatus, render
from sluice.stack.models import StackError
from sluice.stack.security import (
    add_scram_argument,
    ensure_material,
    material,
    registry_users_properties,
    scram_credential,
    write_secret,
)

REPO = Path(__file__).resolve().parents[2]
PW = "s3cr3t-Pa55word-unit-test"


@pytest.fixture(scope="module")
def mat(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return ensure_material(tmp_path_factory.mktemp("run"))


# ---------------------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------------------
def test_server_certificate_is_signed_by_the_ca_for_loopback(mat) -> None:  # type: ignore[no-untyped-def]
    ca = x509.load_pem_x509_certificate(mat.ca_pem.read_bytes())
    chain = x509.load_pem_x509_certificates(mat.server_pem.read_bytes())
    server = chain[0]
    assert chain[1] == ca
    server.verify_directly_issued_by(ca)  # raises if the signature does not verify
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # A certificate the CA did not sign is refused by the same check.
    other = ensure_material(mat.dir.parent.parent / f"{mat.dir.parent.name}-other")
    with pytest.raises(Exception):  # noqa: B017 (InvalidSignature or ValueError)
        server.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca_pem.read_bytes()))


def test_pkcs12_keystore_opens_with_its_password_only(mat) -> None:  # type: ignore[no-untyped-def]
    password = mat.keystore_password.read_bytes()
    key, cert, extra = pkcs12.load_key_and_certificates(mat.keystore.read_bytes(), password)
    assert key is not None and cert is not None
    assert cert == x509.load_pem_x509_certificates(mat.server_pem.read_bytes())[0]
    assert [c.subject for c in extra] == [x509.load_pem_x509_certificate(mat.ca_pem.read_bytes()).subject]
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(mat.keystore.read_bytes(), b"wrong")


def test_secret_files_are_private_and_without_newline(mat) -> None:  # type: ignore[no-untyped-def]
    assert mat.dir.stat().st_mode & 0o777 == 0o700
    for p in mat.secret_files():
        assert p.stat().st_mode & 0o777 == 0o600, p
    for value in mat.secret_values():
        assert len(value) >= 20 and "\n" not in value and ":" not in value and "}" not in value
    assert len(set(mat.secret_values())) == 4


def test_write_secret_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret(tmp_path / "s", "value")
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "s").read_bytes() == b"value"


def test_material_is_reused_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    first = ensure_material(tmp_path)
    values = first.secret_values()
    assert ensure_material(tmp_path).secret_values() == values  # same users, same broker storage
    first.kafka_client_password.chmod(0o644)
    with pytest.raises(StackError, match="readable by others"):
        ensure_material(tmp_path)


# ---------------------------------------------------------------------------------------
# SCRAM and registry users
# ---------------------------------------------------------------------------------------
def test_scram_salted_password_matches_rfc7677_example() -> None:
    """RFC 7677 §3: user "user", password "pencil": the client proof computed from our
    salted password must be the RFC's."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    _salt_b64, salted_b64, _ = scram_credential("pencil", salt=salt, iterations=4096,
                                                mechanism="SCRAM-SHA-256")
    salted = base64.b64decode(salted_b64)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                    f"c=biws,r={nonce}").encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert base64.b64encode(proof).decode() == "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


def test_add_scram_argument_holds_no_password() -> None:
    arg = add_scram_argument("sluice", PW)
    assert arg.startswith("SCRAM-SHA-512=[name=sluice,salt=")
    assert "saltedpassword=" in arg and "iterations=8192]" in arg
    assert PW not in arg
    salted = base64.b64decode(arg.split('saltedpassword="')[1].split('"')[0])
    assert len(salted) == 64  # SHA-512


def test_registry_users_are_digests_over_https_only(mat) -> None:  # type: ignore[no-untyped-def]
    text = registry_users_properties(mat, 29081)
    user, _, password = mat.registry_auth.read_text().partition(":")
    props = render.parse_properties(text)
    assert password not in text
    assert props[f"quarkus.security.users.embedded.users.{user}"] == hashlib.sha256(
        f"{user}:Quarkus:{password}".encode()).hexdigest()
    assert props["quarkus.security.users.embedded.algorithm"] == "digest-sha-256"
    assert props["quarkus.http.auth.basic"] == "true"
    assert props["quarkus.http.insecure-requests"] == "disabled"
    assert props["quarkus.http.ssl-port"] == "29081"


def test_secured_broker_properties(mat, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ports = StackPorts(kafka=29999, kafka_controller=29998)
    plain = render.parse_properties(render.kafka_server_properties(ports, tmp_path))
    text = render.kafka_server_properties(ports, tmp_path, secure=mat)
    props = render.parse_properties(text)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:29999,CONTROLLER://127.0.0.1:29998"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:29999"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.location"] == str(mat.keystore)
    assert props["ssl.keystore.type"] == "PKCS12"
    assert "PLAINTEXT://" not in text  # no plaintext client listener left
    # everything else is the plain broker's
    for k, v in plain.items():
        if k not in ("listeners", "advertised.listeners", "listener.security.protocol.map",
                     "inter.broker.listener.name"):
            assert props[k] == v, k


# ---------------------------------------------------------------------------------------
# credentials in the config
# ---------------------------------------------------------------------------------------
def _yaml(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "sluice.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(("section", "key"), [("kafka", "sasl_password"), ("registry", "basic_auth")])
def test_secret_in_the_yaml_is_refused(tmp_path: Path, section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{section}.{key}_file") as ei:
        load_config(_yaml(tmp_path, {section: {key: PW}}), env={})
    assert PW not in str(ei.value)


def test_secret_files_from_yaml_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "kafka.pw").write_text(PW)
    (tmp_path / "secrets" / "registry.auth").write_text(f"svc:{PW}\n")
    (tmp_path / "ca.pem").write_text("x")
    cfg = load_config(_yaml(tmp_path, {
        "kafka": {"sasl_username": "svc", "sasl_password_file": "secrets/kafka.pw",
                  "ssl_ca_file": "ca.pem",
                  "properties": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}},
        "registry": {"basic_auth_file": "secrets/registry.auth", "ssl_ca_file": "ca.pem"},
    }), env={})
    assert cfg.kafka.sasl_password is not None and cfg.kafka.sasl_password.get_secret_value() == PW
    assert cfg.kafka.sasl_password_file == tmp_path / "secrets" / "kafka.pw"
    client = cfg.kafka.client_properties()
    assert client["sasl.password"] == PW and client["ssl.ca.location"] == str(tmp_path / "ca.pem")
    java = cfg.kafka.java_properties()
    assert PW not in str(java)
    assert java["ssl.truststore.type"] == "PEM"
    assert java["ssl.truststore.location"] == str(tmp_path / "ca.pem")
    assert java["config.providers.sluicedir.class"] == (
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.config.provider.DirectoryConfigProvider")
    assert java["config.providers.sluicedir.param.allowed.paths"] == str(tmp_path / "secrets")
    assert f"${{sluicedir:{tmp_path / 'secrets'}:kafka.pw}}" in java["sasl.jaas.config"]
    assert cfg.registry.client_conf()["basic.auth.user.info"] == f"svc:{PW}"  # stripped
    assert cfg.registry.client_conf()["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert "basic.auth.user.info" not in cfg.registry.client_conf(secret=False)
    assert cfg.registry.udf_auth_file() == str(tmp_path / "secrets" / "registry.auth")
    # the dumped config (what `flink run` gets) names the files, holds no secret
    from sluice.config import dump_config

    dumped = dump_config(cfg, tmp_path / "out.yaml").read_text()
    assert PW not in dumped and "kafka.pw" in dumped and "registry.auth" in dumped


def test_kafka_password_file_with_a_newline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PW + "\n")
    with pytest.raises(ConfigError, match="verbatim") as ei:
        load_config(REPO / "sluice.yaml", env={"SLUICE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw")})
    assert PW not in str(ei.value)


@pytest.mark.parametrize("var", ["SLUICE_KAFKA_SASL_PASSWORD_FILE", "SLUICE_REGISTRY_BASIC_AUTH_FILE"])
def test_missing_secret_file_fails_at_load_naming_key_and_path(tmp_path: Path, var: str) -> None:
    with pytest.raises(ConfigError, match="does not exist") as ei:
        load_config(REPO / "sluice.yaml", env={var: str(tmp_path / "absent")})
    assert str(tmp_path / "absent") in str(ei.value)
    assert ("kafka.sasl_password_file" if "KAFKA" in var else "registry.basic_auth_file") in str(ei.value)


def test_job_needs_files_not_env_secrets() -> None:
    cfg = load_config(REPO / "sluice.yaml", env={
        "SLUICE_KAFKA_SASL_PASSWORD": PW, "SLUICE__KAFKA__SASL_USERNAME": "svc",
        "SLUICE_REGISTRY_BASIC_AUTH": f"svc:{PW}"})
    assert cfg.kafka.client_properties()["sasl.password"] == PW  # CLI clients may use env
    with pytest.raises(ConfigError, match="SLUICE_KAFKA_SASL_PASSWORD_FILE"):
        cfg.kafka.java_properties()
    with pytest.raises(ConfigError, match="SLUICE_REGISTRY_BASIC_AUTH_FILE"):
        cfg.registry.udf_auth_file()


def test_ingest_udf_refuses_pickling_credentials() -> None:
    from sluice.udfs import Ingest

    with pytest.raises(ValueError, match="registry_auth_file"):
        Ingest(topics={}, reader_schema="", enriched_schema="", enriched_id=1, dlq_schema="", dlq_id=2,
               registry_conf={"url": "https://r", "basic.auth.user.info": f"u:{PW}"},
               registry_retry=None, unknown_id_cooldown_ms=0, devices={}, job_name="j",  # type: ignore[arg-type]
               metric="temperature_c", default_threshold=1.0, limits=None)  # type: ignore[arg-type]


def test_client_env_of_a_secured_stack_names_files_only(mat) -> None:  # type: ignore[no-untyped-def]
    st = StackStatus(run_dir=mat.dir.parent, ports=StackPorts(kafka=29092, registry=29081), secrets=mat)
    env = st.client_env()
    assert env["SCHEMA_REGISTRY_URL"] == "https://127.0.0.1:29081/apis/ccompat/v7"
    text = repr(env)
    assert not any(s in text for s in mat.secret_values())
    cfg = load_config(REPO / "sluice.yaml", env=env)
    assert cfg.kafka.sasl_password is not None
    assert cfg.kafka.sasl_password.get_secret_value() == mat.kafka_client_password.read_text()
    assert cfg.kafka.properties["security.protocol"] == "SASL_SSL"


# ---------------------------------------------------------------------------------------
# fail fast
# ---------------------------------------------------------------------------------------
def test_error_cb_raises_on_authentication_errors_only() -> None:
    log = ErrorLog("127.0.0.1:1", raise_in_callback=True)
    log(KafkaError(KafkaError._TRANSPORT, "broker down"))  # transient: ignored
    log(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all down"))
    assert log.fatal is None
    with pytest.raises(KafkaAuthError, match=r"Kafka at 127\.0\.0\.1:1: authentication failed: bad login"):
        log(KafkaError(KafkaError._AUTHENTICATION, "bad login"))
    quiet = ErrorLog("b:1")
    quiet(KafkaError(KafkaError._SSL, "certificate verify failed"))
    with pytest.raises(KafkaAuthError, match="certificate verify failed"):
        quiet.check()


def test_registry_errors_map_to_auth_errors() -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    err = registry_auth_error(SchemaRegistryError(401, 401, "unauthorized"), "https://r")
    assert isinstance(err, RegistryAuthError)
    assert "schema registry at https://r: authentication failed: HTTP 401" in str(err)
    assert isinstance(registry_auth_error(SchemaRegistryError(403, 403, "x"), "u"), RegistryAuthError)
    assert registry_auth_error(SchemaRegistryError(404, 40401, "not found"), "u") is None
    assert registry_auth_error(SchemaRegistryError(500, 500, "boom"), "u") is None
    tls = registry_auth_error(OSError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), "u")
    assert isinstance(tls, RegistryAuthError)


def test_material_of_a_run_dir() -> None:
    assert material(Path("/x")).dir == Path("/x/secrets")


def test_secured_up_refuses_new_secrets_over_old_broker_storage(tmp_path: Path) -> None:
    """Fresh passwords would not match the SCRAM users already formatted into the broker
    storage: refused at once (not a 60 s health-check timeout), nothing started."""
    from sluice.stack import up

    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(StackError, match="would not match the SCRAM users"):
        up(tmp_path, StackPorts(kafka=29991, kafka_controller=29992, registry=29993,
                                registry_management=29994), secure=True)
    assert not (tmp_path / "secrets").exists()


def test_job_table_options_hold_references_not_secrets(tmp_path: Path) -> None:
    """The Kafka source and sink DDL of jobs/pipeline.py (the table options Flink keeps in
    the job graph): the password file is referenced, the password is not there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sluice_pipeline_job", REPO / "jobs" / "pipeline.py")
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    (tmp_path / "pw").write_text(PW)
    (tmp_path / "auth").write_text(f"svc:{PW}")
    cfg = load_config(REPO / "sluice.yaml", env={
        "SLUICE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"), "SLUICE__KAFKA__SASL_USERNAME": "svc",
        "SLUICE__KAFKA__PROPERTIES": "{security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512}",
        "SLUICE_REGISTRY_BASIC_AUTH_FILE": str(tmp_path / "auth")})
    for ddl in (job._source_ddl(cfg), job._sink_ddl(cfg, "t", "topic")):
        assert PW not in ddl
        assert f"${{sluicedir:{tmp_path}:pw}}" in ddl
        assert "'properties.security.protocol' = 'SASL_SSL'" in ddl
    # Without a password file the options are not built at all (no inline password).
    leaky = cfg.with_overrides(kafka={"sasl_password_file": None})
    with pytest.raises(ConfigError):
        job._source_ddl(leaky)
