"""Render the configuration files of the stack from the templates in the repo."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from .models import StackError, StackPorts
from .security import SecureMaterial

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = Path(__file__).resolve().parents[2]

KAFKA_SERVER_TEMPLATE = PACKAGE_DIR / "kafka-server.properties"
KAFKA_LOG4J_TEMPLATE = PACKAGE_DIR / "kafka-log4j2.properties"
FLINK_CONF_TEMPLATE = REPO_ROOT / "flink-conf" / "config.yaml"

_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")


def render_template(
    text: str, values: Mapping[str, object], *, yaml_quote: bool = False, source: str = "template"
) -> str:
    """Replace ``${name}`` placeholders (lower-case identifiers only, so log4j's
    ``${sys:...}`` lookups pass through). Comment lines (``#``) are copied verbatim.
    With ``yaml_quote`` string values are emitted as YAML double-quoted scalars.
    An unknown placeholder is an error."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise StackError(f"{source}: unknown placeholder ${{{key}}}")
        v = values[key]
        if isinstance(v, Path):
            v = str(v)
        if yaml_quote and isinstance(v, str):
            return json.dumps(v)  # JSON strings are valid YAML double-quoted scalars
        return str(v)

    out = []
    for line in text.splitlines(keepends=True):
        out.append(line if line.lstrip().startswith("#") else _PLACEHOLDER.sub(sub, line))
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """Minimal Java-properties reader (key=value lines, # comments) for checks and tests."""
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


# ---------------------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------------------
def kafka_server_properties(
    ports: StackPorts,
    data_dir: Path,
    template: Path = KAFKA_SERVER_TEMPLATE,
    *,
    secure: SecureMaterial | None = None,
) -> str:
    """The broker's server.properties; with ``secure`` the client listener is SASL_SSL
    (SCRAM-SHA-512 over TLS) and the file holds the broker's own SCRAM password and its
    keystore password: write it with mode 0600."""
    text = render_template(
        template.read_text(),
        {
            "kafka_port": ports.kafka,
            "controller_port": ports.kafka_controller,
            "data_dir": data_dir,
        },
        source=str(template),
    )
    if secure is None:
        return text
    return override_properties(text, kafka_secure_overrides(ports, secure))


def kafka_secure_overrides(ports: StackPorts, m: SecureMaterial) -> dict[str, str]:
    """Secured mode: clients and the broker's own inter-broker traffic (transaction
    markers go from the broker to itself) use the SASL_SSL listener with SCRAM-SHA-512.
    The KRaft controller listener stays PLAINTEXT on 127.0.0.1: KRaft cannot
    authenticate controllers with SCRAM (the SCRAM credentials live in the metadata
    log the controller serves), and it speaks only the controller protocol."""
    from .security import KAFKA_ADMIN_USER, SCRAM_MECHANISM, read_secret

    admin_pw = read_secret(m.kafka_admin_password)
    mech = SCRAM_MECHANISM.lower()
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{ports.kafka},CONTROLLER://127.0.0.1:{ports.kafka_controller}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{ports.kafka}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.sasl_ssl.{mech}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{KAFKA_ADMIN_USER}" password="{admin_pw}";'
        ),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(m.keystore),
        "ssl.keystore.password": read_secret(m.keystore_password),
        "ssl.client.auth": "none",
        # The broker's own client (inter-broker) verifies the certificate and its name.
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(m.ca_pem),
        "ssl.endpoint.identification.algorithm": "https",
        # Fail a bad login fast instead of letting clients retry against a delay.
        "connection.failed.authentication.delay.ms": "100",
    }


def override_properties(text: str, overrides: Mapping[str, str]) -> str:
    """Replace the value of each key of ``overrides`` in a properties text (in place),
    append the keys it did not have."""
    out, seen = [], set()
    for line in text.splitlines():
        key = line.partition("=")[0].strip()
        if not line.lstrip().startswith(("#", "!")) and "=" in line and key in overrides:
            out.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            out.append(line)
    rest = [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    if rest:
        out += ["", "# secured mode (sluice stack up --secure)", *rest]
    return "\n".join(out) + "\n"


def kafka_log4j2_properties(log_file: Path, template: Path = KAFKA_LOG4J_TEMPLATE) -> str:
    return render_template(template.read_text(), {"log_file": log_file}, source=str(template))


# ---------------------------------------------------------------------------------------
# Flink
# ---------------------------------------------------------------------------------------
def flink_home() -> Path:
    """The Flink distribution shipped inside the apache-flink wheel (bin/, lib/, conf/)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.origin:
        raise StackError(
            "apache-flink (pyflink) is not installed in this environment", component="flink"
        )
    home = Path(spec.origin).resolve().parent
    if not (home / "bin" / "jobmanager.sh").exists():
        raise StackError(
            f"{home} has no bin/jobmanager.sh; is apache-flink complete?", component="flink"
        )
    return home


def default_python() -> Path:
    """The repo's venv python if present, else the running interpreter (not resolved:
    resolving a venv's symlink would lose the venv)."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return venv_python if venv_python.exists() else Path(sys.executable)


def flink_default_java_opts(home: Path) -> str:
    """``env.java.opts.all`` of the wheel's own conf/config.yaml ('' if absent)."""
    import yaml

    try:
        conf = yaml.safe_load((home / "conf" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    node: object = conf
    for key in ("env", "java", "opts", "all"):
        if not isinstance(node, dict) or key not in node:
            return ""
        node = node[key]
    return str(node)


def write_flink_lib_dir(home: Path, lib_dir: Path) -> Path:
    """The cluster's classpath: the wheel's lib/ plus opt/flink-python, without which a
    JobManager cannot even deserialize a Python job (ClassNotFoundException on
    PythonScalarFunctionOperator). Symlinks, so the installed wheel stays untouched."""
    lib_dir.mkdir(parents=True, exist_ok=True)
    for old in lib_dir.glob("*.jar"):
        old.unlink()
    jars = sorted((home / "lib").glob("*.jar")) + sorted((home / "opt").glob("flink-python-*.jar"))
    if not any(j.name.startswith("flink-python-") for j in jars):
        raise StackError(f"{home}/opt has no flink-python jar; is apache-flink complete?",
                         component="flink")
    for jar in jars:
        (lib_dir / jar.name).symlink_to(jar)
    return lib_dir


def flink_dirs(flink_dir: Path) -> dict[str, Path]:
    return {
        "conf": flink_dir / "conf",
        "lib": flink_dir / "lib",
        "log": flink_dir / "log",
        "pid": flink_dir / "pid",
        "tmp": flink_dir / "tmp",
        "web_tmp": flink_dir / "tmp" / "web",
        "checkpoints": flink_dir / "checkpoints",
        "savepoints": flink_dir / "savepoints",
    }


def flink_config_yaml(
    ports: StackPorts,
    flink_dir: Path,
    *,
    python: Path,
    default_java_opts: str = "",
    template: Path = FLINK_CONF_TEMPLATE,
) -> str:
    d = flink_dirs(flink_dir)
    return render_template(
        template.read_text(),
        {
            "flink_rest_port": ports.flink_rest,
            "flink_rpc_port": ports.flink_rpc,
            "flink_prometheus_ports": ports.flink_prometheus_range,
            "python": python,
            "log_dir": d["log"],
            "pid_dir": d["pid"],
            "tmp_dir": d["tmp"],
            "web_tmp_dir": d["web_tmp"],
            # Flink's Path quotes the URI itself: pass the raw path, not as_uri()'s %-escapes.
            "checkpoint_uri": f"file://{d['checkpoints'].resolve()}",
            "savepoint_uri": f"file://{d['savepoints'].resolve()}",
            "default_java_opts": default_java_opts,
        },
        yaml_quote=True,
        source=str(template),
    )


def write_flink_conf_dir(
    ports: StackPorts,
    flink_dir: Path,
    *,
    home: Path,
    python: Path,
    template: Path = FLINK_CONF_TEMPLATE,
) -> Path:
    """Create FLINK_CONF_DIR under ``flink_dir``: the rendered config.yaml plus the wheel's
    log4j/logback files (the start scripts and the CLI expect them next to it)."""
    d = flink_dirs(flink_dir)
    for p in d.values():
        p.mkdir(parents=True, exist_ok=True)
    conf = d["conf"]
    for src in sorted((home / "conf").iterdir()):
        if src.name.startswith(("log4j", "logback")) and src.is_file():
            shutil.copyfile(src, conf / src.name)
    text = flink_config_yaml(
        ports,
        flink_dir,
        python=python,
        default_java_opts=flink_default_java_opts(home),
        template=template,
    )
    _atomic_write(conf / "config.yaml", text)
    return conf


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
