"""`up` / `down` / `status` of the local stack: Kafka (KRaft), Apicurio Registry and,
optionally, a Flink standalone cluster - all as detached child processes bound to
127.0.0.1, with their state recorded in ``<run_dir>/stack.json``.

Run dir layout::

    run_dir/stack.json                  what is up: ports, pids, process groups, markers
    run_dir/kafka/{data/, server.properties, log4j2.properties, cluster.id, kafka.log,
                   kafka.out, format.log, pid}
    run_dir/registry/{data/ (H2 database), tmp/, registry.log, pid}
    run_dir/redis/{redis.conf, redis.log, pid}   (the feature store; nothing persisted)
    run_dir/flink/{conf/, log/, pid/, tmp/, checkpoints/, savepoints/}
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import procs
from .java import find_jdk
from .models import (
    CCOMPAT_PATH,
    COMPONENTS,
    FLINK_COMPONENTS,
    LOOPBACK,
    ComponentStatus,
    StackError,
    StackPorts,
    StackStatus,
)
from .render import (
    FLINK_CONF_TEMPLATE,
    REPO_ROOT,
    _atomic_write,
    default_python,
    flink_dirs,
    flink_home,
    kafka_log4j2_properties,
    kafka_server_properties,
    write_flink_conf_dir,
    write_flink_lib_dir,
)
from .security import (
    KAFKA_ADMIN_USER,
    KAFKA_CLIENT_USER,
    SecureMaterial,
    add_scram_argument,
    ensure_material,
    kafka_client_security,
    material,
    read_secret,
    registry_users_properties,
    write_secret,
)

Progress = Callable[[str], None]

DEFAULT_DEPS_DIR = REPO_ROOT / ".deps"
DEFAULT_RUN_DIR = REPO_ROOT / ".run"
STATE_FILE = "stack.json"
STATE_VERSION = 1

#: Seconds from launch until the component must be healthy.
DEFAULT_TIMEOUTS: dict[str, float] = {
    "kafka": 60.0,
    "registry": 90.0,
    "redis": 20.0,
    "flink-jobmanager": 90.0,
    "flink-taskmanager": 90.0,
}
#: Seconds `down` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 20

_FLINK_IDENT = "sluice"
_FLINK_HOST = "localhost"  # only names Flink's log files (flink-console.sh uses $HOSTNAME)
_FLINK_SERVICE = {"flink-jobmanager": "standalonesession", "flink-taskmanager": "taskexecutor"}
_FLINK_SCRIPT = {"flink-jobmanager": "jobmanager.sh", "flink-taskmanager": "taskmanager.sh"}


# =======================================================================================
# Paths
# =======================================================================================
def component_dir(run_dir: Path, name: str) -> Path:
    return run_dir / ("flink" if name in FLINK_COMPONENTS else name)


def log_files(run_dir: Path, name: str) -> list[Path]:
    """Main log first, then secondary files worth showing when the component fails."""
    if name == "kafka":
        d = run_dir / "kafka"
        return [d / "kafka.log", d / "kafka.out"]
    if name == "registry":
        return [run_dir / "registry" / "registry.log"]
    if name == "redis":
        return [run_dir / "redis" / "redis.log"]
    log_dir = run_dir / "flink" / "log"
    prefix = log_dir / f"flink-{_FLINK_IDENT}-{_FLINK_SERVICE[name]}-0-{_FLINK_HOST}"
    short = name.removeprefix("flink-")
    return [
        prefix.with_suffix(".log"),
        prefix.with_suffix(".out"),
        prefix.with_suffix(".err"),
        log_dir / f"{short}.launch.log",
    ]


def _endpoint(name: str, ports: StackPorts, secure: bool = False) -> tuple[int | None, str | None]:
    if name == "kafka":
        return ports.kafka, f"{LOOPBACK}:{ports.kafka}"
    if name == "registry":
        scheme = "https" if secure else "http"
        return ports.registry, f"{scheme}://{LOOPBACK}:{ports.registry}{CCOMPAT_PATH}"
    if name == "redis":
        return ports.redis, f"redis://{LOOPBACK}:{ports.redis}/0"
    if name == "flink-jobmanager":
        return ports.flink_rest, f"http://{LOOPBACK}:{ports.flink_rest}"
    return None, None


# =======================================================================================
# State file and lock
# =======================================================================================
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _empty_state(run_dir: Path) -> dict[str, Any]:
    return {"version": STATE_VERSION, "run_dir": str(run_dir), "ports": None, "components": {}}


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return _empty_state(run_dir)
    except (OSError, ValueError) as exc:
        raise StackError(
            f"{path} is unreadable ({exc}); check `ps` for leftover java "
            "processes of this run dir before deleting it"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        raise StackError(
            f"{path} has an unexpected shape; check `ps` for leftover java "
            "processes of this run dir before deleting it"
        )
    return data


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    state["updated_at"] = _now()
    if state["components"]:
        _atomic_write(run_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / STATE_FILE).unlink()


@contextlib.contextmanager
def _locked(run_dir: Path, timeout: float = 180.0) -> Iterator[None]:
    """Serialise `up`/`down` on one run dir (across processes)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".stack.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"another `sluice stack` command is still working on "
                        f"{run_dir} (lock held for {timeout:.0f} s)"
                    ) from None
                time.sleep(0.25)
        yield
    finally:
        os.close(fd)  # also releases the lock


def _owned(rec: Mapping[str, Any]) -> bool:
    return procs.owns(rec.get("pid"), rec.get("markers", []), rec.get("pgid"))


# =======================================================================================
# Health checks: (healthy?, detail)
# =======================================================================================
_QUIET = logging.getLogger("sluice.stack.kafka-client")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _http_get(url: str, timeout: float, **kwargs: Any) -> Any:
    import requests

    with requests.Session() as s:
        s.trust_env = False  # never send loopback traffic through an HTTP(S)_PROXY
        return s.get(url, timeout=timeout, **kwargs)


def check_kafka(
    port: int, timeout: float = 5.0, secure: SecureMaterial | None = None
) -> tuple[bool, str]:
    if not procs.wait_for_port(port, timeout=min(timeout, 1.0)):
        return False, f"nothing listens on {LOOPBACK}:{port}"
    from sluice.auth import KafkaAuthError, check_kafka_login

    conf: dict[str, Any] = {
        "bootstrap.servers": f"{LOOPBACK}:{port}",
        "socket.timeout.ms": max(1000, int(timeout * 1000)),
        "logger": _QUIET,  # librdkafka's connection-refused chatter stays out of the CLI
        **(kafka_client_security(secure) if secure else {}),
    }
    try:
        md = check_kafka_login(conf, timeout)
    except KafkaAuthError as exc:
        return False, str(exc)
    except TimeoutError as exc:
        return False, f"metadata request failed: {exc}"
    user_topics = [t for t in md.topics if not t.startswith("__")]
    return bool(md.brokers), f"{len(md.brokers)} broker(s), {len(user_topics)} topic(s)"


def check_registry(
    port: int, management_port: int, timeout: float = 3.0, secure: SecureMaterial | None = None
) -> tuple[bool, str]:
    import requests

    try:
        ready = _http_get(f"http://{LOOPBACK}:{management_port}/health/ready", timeout)
        if ready.status_code != 200:
            return False, f"/health/ready answered {ready.status_code}"
        if secure is None:
            subjects = _http_get(f"http://{LOOPBACK}:{port}{CCOMPAT_PATH}/subjects", timeout)
        else:
            user, _, password = read_secret(secure.registry_auth).partition(":")
            subjects = _http_get(f"https://{LOOPBACK}:{port}{CCOMPAT_PATH}/subjects", timeout,
                                 verify=str(secure.ca_pem), auth=(user, password))
        if subjects.status_code != 200:
            return False, f"{CCOMPAT_PATH}/subjects answered {subjects.status_code}"
        return True, f"{len(subjects.json())} subject(s)"
    except (requests.RequestException, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


def check_redis(port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """PING and DBSIZE over RESP with a plain socket (no client library in the manager)."""
    import socket

    data = b""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(b"PING\r\nDBSIZE\r\n")
            deadline = time.monotonic() + timeout
            while data.count(b"\r\n") < 2 and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return False, f"nothing answers on {LOOPBACK}:{port} ({exc.strerror or exc})"
    lines = data.split(b"\r\n")
    if lines[0] != b"+PONG":  # e.g. -LOADING while it starts
        return False, f"PING answered {lines[0].decode(errors='replace') or 'nothing'!r}"
    keys = lines[1][1:].decode() if len(lines) > 1 and lines[1][:1] == b":" else "?"
    return True, f"PONG, {keys} key(s)"


def flink_overview(rest_port: int, timeout: float = 3.0) -> dict[str, Any] | None:
    import requests

    try:
        r = _http_get(f"http://{LOOPBACK}:{rest_port}/overview", timeout)
        return r.json() if r.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def check_flink(name: str, rest_port: int, timeout: float = 3.0) -> tuple[bool, str]:
    ov = flink_overview(rest_port, timeout)
    if ov is None:
        return False, f"REST /overview on port {rest_port} not answering"
    tms, total, avail = (
        ov.get("taskmanagers", 0),
        ov.get("slots-total", 0),
        ov.get("slots-available", 0),
    )
    detail = (
        f"{tms} taskmanager(s), {avail}/{total} slots available, "
        f"{ov.get('jobs-running', 0)} job(s) running"
    )
    if name == "flink-jobmanager":
        return True, detail
    return tms >= 1 and total >= 1, detail


def check_component(
    name: str, ports: StackPorts, timeout: float = 3.0, secure: SecureMaterial | None = None
) -> tuple[bool, str]:
    try:
        if name == "kafka":
            return check_kafka(ports.kafka, timeout, secure)
        if name == "registry":
            return check_registry(ports.registry, ports.registry_management, timeout, secure)
        if name == "redis":
            return check_redis(ports.redis, timeout)
    except OSError as exc:  # secured mode: a secret file went missing
        return False, f"cannot read the secured mode's secrets: {exc}"
    return check_flink(name, ports.flink_rest, timeout)


# =======================================================================================
# Launch specs
# =======================================================================================
@dataclass
class _Spec:
    name: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    markers: list[str]
    log_file: Path  # where the launcher sends stdout/stderr
    extra: dict[str, Any] = field(default_factory=dict)


def _base_env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[procs.OWNER_ENV] = str(run_dir)
    return env


def _rotate(path: Path) -> None:
    """Keep one previous copy, so a failure's log tail shows only this start."""
    if path.exists() and path.stat().st_size:
        os.replace(path, path.with_name(path.name + ".prev"))


def _kafka_cluster_id(kdir: Path) -> str:
    f = kdir / "cluster.id"
    if f.exists() and f.read_text().strip():
        return f.read_text().strip()
    while True:  # Kafka's Uuid string form: url-safe base64 of 16 bytes, unpadded
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            break
    f.write_text(cid + "\n")
    return cid


def _kafka_spec(
    run_dir: Path, ports: StackPorts, deps_dir: Path, say: Progress,
    secure: SecureMaterial | None = None,
) -> _Spec:
    jars = deps_dir / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise StackError(f"Kafka jars not found in {jars} (run `make deps`)", component="kafka")
    jdk = find_jdk(17, env_var="SLUICE_KAFKA_JAVA_HOME", purpose="kafka")
    kdir = run_dir / "kafka"
    data, tmp = kdir / "data", kdir / "tmp"
    for d in (kdir, data, tmp):
        d.mkdir(parents=True, exist_ok=True)
    props, log4j, log = kdir / "server.properties", kdir / "log4j2.properties", kdir / "kafka.log"
    if secure is not None:  # holds the broker's SCRAM and keystore passwords
        write_secret(props, kafka_server_properties(ports, data, secure=secure))
    else:
        _atomic_write(props, kafka_server_properties(ports, data))
    _atomic_write(log4j, kafka_log4j2_properties(log))
    scram_marker = kdir / "scram-users"
    formatted = (data / "meta.properties").exists()
    if secure is not None and formatted and not scram_marker.exists():
        raise StackError(
            f"the broker storage in {data} was formatted without SCRAM users (a plain "
            "`sluice stack up` used this run dir); secured mode needs its own run dir, or "
            f"delete {data} to start empty",
            component="kafka",
        )
    jvm = [
        str(jdk.java),
        "-Xmx512m",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={tmp}",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{jars}/*",
    ]
    env = _base_env(run_dir)
    extra: dict[str, Any] = {"java": str(jdk.home)}
    if not formatted:
        cid = _kafka_cluster_id(kdir)
        say(f"kafka: formatting storage (cluster id {cid})")
        scram: list[str] = []
        if secure is not None:
            # Salted credentials only: no password on this command line.
            for user, pw_file in ((KAFKA_ADMIN_USER, secure.kafka_admin_password),
                                  (KAFKA_CLIENT_USER, secure.kafka_client_password)):
                scram += ["--add-scram", add_scram_argument(user, read_secret(pw_file))]
        t0 = time.monotonic()
        with open(kdir / "format.log", "w") as out:
            res = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    "-t",
                    cid,
                    "-c",
                    str(props),
                    *scram,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=kdir,
                env=env,
                timeout=DEFAULT_TIMEOUTS["kafka"],
                check=False,
            )
        if res.returncode != 0:
            raise _failure(
                "kafka",
                f"storage format failed (exit {res.returncode})",
                [kdir / "format.log", log],
            )
        extra["format_seconds"] = round(time.monotonic() - t0, 2)
        if secure is not None:
            scram_marker.write_text(f"{KAFKA_ADMIN_USER}\n{KAFKA_CLIENT_USER}\n")
    _rotate(log)
    _rotate(kdir / "kafka.out")
    return _Spec(
        "kafka",
        [*jvm, "kafka.Kafka", str(props)],
        kdir,
        env,
        ["kafka.Kafka", str(props)],
        kdir / "kafka.out",
        extra,
    )


def _registry_spec(
    run_dir: Path, ports: StackPorts, deps_dir: Path, secure: SecureMaterial | None = None
) -> _Spec:
    app = deps_dir / "apicurio" / "quarkus-run.jar"
    if not app.exists():
        raise StackError(
            f"Apicurio Registry not found at {app} (run `make deps`)", component="registry"
        )
    jdk = find_jdk(21, env_var="SLUICE_REGISTRY_JAVA_HOME", purpose="registry")
    rdir = run_dir / "registry"
    data, tmp = rdir / "data", rdir / "tmp"
    for d in (rdir, data, tmp):
        d.mkdir(parents=True, exist_ok=True)
    db_url = f"jdbc:h2:file:{data / 'registry'}"
    # Quarkus reads <working dir>/config/application.properties: the secured mode's users
    # (as digests) and TLS settings go there (0600), never onto the command line.
    quarkus_file = rdir / "config" / "application.properties"
    if secure is not None:
        write_secret(quarkus_file, registry_users_properties(secure, ports.registry))
    else:
        with contextlib.suppress(FileNotFoundError):
            quarkus_file.unlink()
    props = {
        "quarkus.http.host": LOOPBACK,
        "quarkus.http.port": ports.registry,
        # The management interface (health, metrics) is enabled at build time and would
        # otherwise listen on 0.0.0.0:9000; it can only be moved, not switched off.
        "quarkus.management.host": LOOPBACK,
        "quarkus.management.port": ports.registry_management,
        # File-based H2 so schemas (and their ids) survive down/up.
        "apicurio.storage.kind": "sql",
        "apicurio.storage.sql.kind": "h2",
        "apicurio.datasource.url": db_url,
        "apicurio.datasource.username": "sa",
        "apicurio.datasource.password": "sa",
        "apicurio.storage.snapshot.location": tmp,
        "apicurio.import.work-dir": tmp,
        # Dev stack: allow deleting subjects/versions (tests clean up after themselves).
        "apicurio.rest.deletion.group.enabled": "true",
        "apicurio.rest.deletion.artifact.enabled": "true",
        "apicurio.rest.deletion.artifact-version.enabled": "true",
        # Like Confluent: the same schema in another formatting is the same version.
        "apicurio.ccompat.use-canonical-hash": "true",
        "quarkus.log.console.format": "%d{yyyy-MM-dd HH:mm:ss,SSS} %-5p [%c{3.}] (%t) %s%e%n",
    }
    cmd = [
        str(jdk.java),
        "-Xmx512m",
        "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={tmp}",
        *(f"-D{k}={v}" for k, v in props.items()),
        "-jar",
        str(app),
    ]
    log = rdir / "registry.log"
    _rotate(log)
    return _Spec(
        "registry",
        cmd,
        rdir,
        _base_env(run_dir),
        ["quarkus-run.jar", f"-Dapicurio.datasource.url={db_url}"],
        log,
        {"java": str(jdk.home)},
    )


def redis_conf(ports: StackPorts, rdir: Path) -> str:
    """redis.conf of the local feature store. Nothing is persisted (``save ""``, no AOF):
    the store is a cache derived from the ``features`` topic, and the materializer rebuilds
    it from Kafka when it finds it empty (docs/feature-store.md). ``dir`` is the run dir
    anyway, so even a manual SAVE never writes to a system path."""
    return "\n".join([
        "# Written by `sluice stack up`; the online feature store (docs/feature-store.md).",
        f"bind {LOOPBACK}",
        f"port {ports.redis}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',  # stdout, which the launcher appends to redis.log
        f"dir {rdir}",
        'save ""',
        "appendonly no",
        # Keep argv as launched: `down` recognises the process by its config path.
        "set-proc-title no",
        "maxmemory 256mb",
        # A cache of Kafka: evict the entries closest to expiry rather than refuse writes.
        "maxmemory-policy volatile-ttl",
        "",
    ])


def _redis_spec(run_dir: Path, ports: StackPorts) -> _Spec:
    import shutil

    exe = shutil.which("redis-server")
    if exe is None:
        raise StackError(
            "redis-server not found on PATH: the feature store needs Debian's redis-server "
            "(`make setup` installs it: apt-get install -y redis-server)", component="redis")
    rdir = run_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    conf = rdir / "redis.conf"
    _atomic_write(conf, redis_conf(ports, rdir))
    log = rdir / "redis.log"
    _rotate(log)
    return _Spec("redis", [exe, str(conf)], rdir, _base_env(run_dir), ["redis-server", str(conf)],
                 log, {"redis_server": exe})


def _flink_env(run_dir: Path, conf_dir: Path, jdk_home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in _base_env(run_dir).items()
        if not k.startswith(("FLINK_", "_FLINK")) and k not in ("JVM_ARGS",)
    }
    d = flink_dirs(run_dir / "flink")
    env.update(
        {
            "JAVA_HOME": str(jdk_home),
            "FLINK_CONF_DIR": str(conf_dir),
            "FLINK_LOG_DIR": str(d["log"]),
            "FLINK_PID_DIR": str(d["pid"]),
            "FLINK_IDENT_STRING": _FLINK_IDENT,
            "HOSTNAME": _FLINK_HOST,
        }
    )
    return env


def _site_packages(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import os, site; print(os.pathsep.join(site.getsitepackages()))"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return out.stdout.strip()


def _flink_specs(
    run_dir: Path, ports: StackPorts, names: list[str], *, python: Path, conf_template: Path
) -> list[_Spec]:
    home = flink_home()
    jdk = find_jdk(11, 21, env_var="SLUICE_FLINK_JAVA_HOME", purpose="flink")
    fdir = run_dir / "flink"
    conf = write_flink_conf_dir(ports, fdir, home=home, python=python, template=conf_template)
    env = _flink_env(run_dir, conf, jdk.home)
    # Thread-mode UDFs run in an interpreter embedded in the TaskManager (pemja), which
    # finds the venv's packages only through PYTHONPATH.
    env["PYTHONPATH"] = _site_packages(python)
    env["FLINK_LIB_DIR"] = str(write_flink_lib_dir(home, flink_dirs(fdir)["lib"]))
    specs = []
    for name in names:
        short = name.removeprefix("flink-")
        tmp = fdir / "tmp" / short
        tmp.mkdir(parents=True, exist_ok=True)
        # flink-console.sh numbers its log files by the live pids in this file.
        with contextlib.suppress(FileNotFoundError):
            (fdir / "pid" / f"flink-{_FLINK_IDENT}-{_FLINK_SERVICE[name]}.pid").unlink()
        launch_log = fdir / "log" / f"{short}.launch.log"
        _rotate(launch_log)
        # A distinct -D io.tmp.dirs per process: a real setting, and a marker that is on the
        # command line both while the start script runs and after it exec'd the JVM.
        cmd = [
            "/bin/bash",
            str(home / "bin" / _FLINK_SCRIPT[name]),
            "start-foreground",
            "-D",
            f"io.tmp.dirs={tmp}",
        ]
        specs.append(
            _Spec(
                name,
                cmd,
                fdir,
                env,
                [f"io.tmp.dirs={tmp}"],
                launch_log,
                {"java": str(jdk.home), "conf_dir": str(conf)},
            )
        )
    return specs


# =======================================================================================
# Failures
# =======================================================================================
def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


def _failure(name: str, reason: str, logs: list[Path]) -> StackError:
    main = logs[0]
    parts = [f"{name} {reason}. Log: {main}"]
    for p in logs:
        t = tail(p)
        if t:
            parts.append(f"--- last {len(t)} lines of {p} ---")
            parts.extend(t)
    if len(parts) == 1:
        parts.append("(the log is empty)")
    return StackError("\n".join(parts), component=name, log_file=main)


# =======================================================================================
# Public API
# =======================================================================================
def status(run_dir: Path, *, timeout: float = 3.0) -> StackStatus:
    """What is running in ``run_dir`` and whether it is healthy (no side effects)."""
    run_dir = Path(run_dir).resolve()
    state = load_state(run_dir)
    ports = StackPorts.from_dict(state.get("ports"))
    secure = material(run_dir) if state.get("secure") else None
    result = StackStatus(run_dir=run_dir, ports=ports, secrets=secure)
    for name in COMPONENTS:
        rec = state["components"].get(name)
        cports = StackPorts.from_dict({**ports.to_dict(), **(rec or {}).get("ports", {})})
        port, endpoint = _endpoint(name, cports, secure is not None)
        cs = ComponentStatus(
            name=name, port=port, endpoint=endpoint, log_file=log_files(run_dir, name)[0]
        )
        if rec:
            cs.pid = rec.get("pid")
            cs.started_at = rec.get("started_at")
            cs.startup_seconds = rec.get("startup_seconds")
            cs.running = _owned(rec)
            if cs.running:
                cs.healthy, cs.detail = check_component(name, cports, timeout, secure)
            else:
                cs.detail = f"recorded pid {cs.pid} is not running (stale record)"
        else:
            cs.detail = "not started"
        result.components[name] = cs
    if any(n in state["components"] for n in FLINK_COMPONENTS):
        result.flink_conf_dir = flink_dirs(run_dir / "flink")["conf"]
    return result


def up(
    run_dir: Path,
    ports: StackPorts | None = None,
    *,
    flink: bool = False,
    deps_dir: Path = DEFAULT_DEPS_DIR,
    progress: Progress | None = None,
    timeouts: Mapping[str, float] | None = None,
    python: Path | None = None,
    flink_conf_template: Path = FLINK_CONF_TEMPLATE,
    secure: bool = False,
    redis: bool = True,
) -> StackStatus:
    """Start (or reuse) Kafka + registry + Redis (+ Flink when ``flink``) and wait until
    healthy. ``redis=False`` leaves the feature store's redis-server out.

    ``secure``: the broker listens with SASL_SSL (SCRAM-SHA-512 over TLS) and the registry
    with HTTPS + basic auth; certificates and passwords are generated into
    ``<run_dir>/secrets`` (see :mod:`sluice.stack.security`). ``StackStatus.client_env()``
    gives the environment that points sluice's clients at it.

    Raises StackError - naming the component, its log file and the log's last lines - if a
    port is taken by a foreign process, or something does not become healthy in time; in
    that case everything this call started is stopped again."""
    run_dir = Path(run_dir).resolve()
    ports = ports or StackPorts.from_env()
    say: Progress = progress or (lambda _msg: None)
    limits = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
    wanted = ["kafka", "registry", *(["redis"] if redis else []),
              *(FLINK_COMPONENTS if flink else ())]
    reused: list[str] = []

    with _locked(run_dir):
        state = load_state(run_dir)
        comps: dict[str, Any] = state["components"]
        running = [n for n in ("kafka", "registry") if n in comps and _owned(comps[n])]
        if running and bool(state.get("secure")) != secure:
            mode = "secured" if state.get("secure") else "plain"
            raise StackError(
                f"{', '.join(running)} already run(s) in {mode} mode in {run_dir}; run "
                "`sluice stack down` first to switch modes (or use another run dir)",
                component=running[0],
            )
        if secure and not material(run_dir).complete() and (
            run_dir / "kafka" / "data" / "meta.properties"
        ).exists():
            raise StackError(
                f"the broker storage in {run_dir / 'kafka' / 'data'} already exists but "
                f"{material(run_dir).dir} is missing or incomplete: new passwords would not "
                "match the SCRAM users stored in it. Restore the secrets, or delete the data "
                "folder to start empty (or use another run dir)",
                component="kafka",
            )
        sec = ensure_material(run_dir) if secure else None

        # 1. What is already up (and ours)?
        to_start: list[str] = []
        for name in wanted:
            rec = comps.get(name)
            if rec and _owned(rec):
                want = ports.for_component(name)
                have = {k: rec.get("ports", {}).get(k) for k in want}
                if have != want:
                    raise StackError(
                        f"{name} is already running (pid {rec['pid']}) with ports {have}, "
                        f"not the requested {want}; run `sluice stack down` first to change "
                        "ports",
                        component=name,
                    )
                reused.append(name)
            else:
                if rec:
                    say(f"{name}: dropping stale record (pid {rec.get('pid')} is gone)")
                    _kill_orphans(name, rec, run_dir, say)
                    comps.pop(name)
                to_start.append(name)
        _save_state(run_dir, state)

        # 2. Ports: distinct, and free for everything we are about to start.
        _check_ports(run_dir, ports, wanted, to_start)

        launched: list[tuple[str, float]] = []
        try:
            # 3. Launch everything first (the JVMs start in parallel), then wait.
            specs: list[_Spec] = []
            for name in to_start:
                if name == "kafka":
                    specs.append(_kafka_spec(run_dir, ports, deps_dir, say, sec))
                elif name == "registry":
                    specs.append(_registry_spec(run_dir, ports, deps_dir, sec))
                elif name == "redis":
                    specs.append(_redis_spec(run_dir, ports))
            fl = [n for n in to_start if n in FLINK_COMPONENTS]
            if fl:
                specs += _flink_specs(
                    run_dir,
                    ports,
                    fl,
                    python=python or default_python(),
                    conf_template=flink_conf_template,
                )
            for spec in specs:
                say(f"{spec.name}: starting")
                pid, pgid = procs.spawn(
                    spec.cmd, log_file=spec.log_file, cwd=spec.cwd, env=spec.env
                )
                launched.append((spec.name, time.monotonic()))
                state["secure"] = secure
                comps[spec.name] = {
                    "pid": pid,
                    "pgid": pgid,
                    "markers": spec.markers,
                    "ports": ports.for_component(spec.name),
                    "started_at": _now(),
                    "log_file": str(log_files(run_dir, spec.name)[0]),
                    "cmd": spec.cmd,
                    **spec.extra,
                }
                _pidfile(run_dir, spec.name).write_text(f"{pid}\n")
                _save_state(run_dir, state)  # recorded at once: `down` can always find it

            # 4. Reused components must be healthy too.
            for name in reused:
                ok, detail = check_component(name, ports, secure=sec)
                if not ok:
                    say(f"{name}: running (pid {comps[name]['pid']}) but not healthy yet; waiting")
                    _wait_healthy(
                        run_dir, name, comps[name], ports, time.monotonic(), limits[name], say,
                        sec,
                    )
                say(f"{name}: already running (pid {comps[name]['pid']}), reused")

            # 5. Wait for the new ones.
            for name, t0 in launched:
                took = _wait_healthy(run_dir, name, comps[name], ports, t0, limits[name], say,
                                     sec)
                comps[name]["startup_seconds"] = round(took, 2)
                say(f"{name}: healthy after {took:.1f} s")
            state["ports"] = ports.to_dict()
            _save_state(run_dir, state)
        except BaseException:
            if launched:
                names = [n for n, _ in launched]
                say(f"stopping what this call started: {', '.join(reversed(names))}")
                _done, left = _stop(run_dir, state, list(reversed(names)), say, timeout=10.0)
                if left:  # keep the original error; report this one too
                    say(f"cleanup failed: could not stop {', '.join(left)}")
            raise

    result = status(run_dir)
    for name in reused:
        result.components[name].reused = True
    return result


def down(
    run_dir: Path, *, progress: Progress | None = None, timeout: float = STOP_TIMEOUT
) -> list[str]:
    """Stop every process recorded in ``run_dir/stack.json`` (SIGTERM to its process group,
    SIGKILL after ``timeout``). Returns the names of the components it stopped."""
    run_dir = Path(run_dir).resolve()
    say: Progress = progress or (lambda _msg: None)
    if not (run_dir / STATE_FILE).exists():
        return []
    with _locked(run_dir):
        state = load_state(run_dir)
        stopped: list[str] = []
        # Flink first (its jobs talk to Kafka/registry), then the rest.
        alive: list[str] = []
        for group in (("flink-taskmanager", "flink-jobmanager"), ("redis", "registry", "kafka")):
            done, left = _stop(run_dir, state, list(group), say, timeout=timeout)
            stopped += done
            alive += left
        if alive:
            raise StackError(
                f"could not stop {', '.join(alive)} even with SIGKILL"
                + (f" (stopped: {', '.join(stopped)})" if stopped else "")
            )
        return stopped


# =======================================================================================
# Internals of up/down
# =======================================================================================
def _pidfile(run_dir: Path, name: str) -> Path:
    if name in FLINK_COMPONENTS:
        return run_dir / "flink" / f"{name.removeprefix('flink-')}.pid"
    return component_dir(run_dir, name) / "pid"


def _check_ports(run_dir: Path, ports: StackPorts, wanted: list[str], to_start: list[str]) -> None:
    seen: dict[int, str] = {}
    for name in wanted:
        for key, port in ports.for_component(name).items():
            if not 0 < port < 65536:
                raise StackError(
                    f"port {port} for {name} ({key}) is not a valid TCP port", component=name
                )
            if port in seen:
                raise StackError(
                    f"port {port} is requested twice ({seen[port]} and {key})", component=name
                )
            seen[port] = key
    for name in to_start:
        for key, port in ports.for_component(name).items():
            if procs.port_in_use(port):
                owner = procs.port_owner(port)
                raise StackError(
                    f"cannot start {name}: port {port} ({key}) on {LOOPBACK} is already in "
                    f"use by {owner or 'another process'}, which `sluice stack` did not start "
                    f"for {run_dir}; stop it or choose another port",
                    component=name,
                )


def _wait_healthy(
    run_dir: Path,
    name: str,
    rec: Mapping[str, Any],
    ports: StackPorts,
    t0: float,
    limit: float,
    say: Progress,
    secure: SecureMaterial | None = None,
) -> float:
    deadline = t0 + limit
    detail = "not checked yet"
    said_waiting = False
    while True:
        if not _owned(rec):
            raise _failure(
                name, f"exited during startup (pid {rec['pid']})", log_files(run_dir, name)
            )
        ok, detail = check_component(name, ports, timeout=2.0, secure=secure)
        if ok:
            return time.monotonic() - t0
        if time.monotonic() >= deadline:
            raise _failure(
                name,
                f"did not become healthy within {limit:.0f} s (last check: {detail})",
                log_files(run_dir, name),
            )
        if not said_waiting:
            say(f"{name}: waiting until healthy (up to {limit:.0f} s)")
            said_waiting = True
        time.sleep(0.5)


def _kill_orphans(name: str, rec: Mapping[str, Any], run_dir: Path, say: Progress) -> None:
    """Children a crashed component left behind in its process group (a killed
    TaskManager's Python UDF workers): ours by the run-dir marker in their environment."""
    orphans = procs.owned_orphans(int(rec.get("pgid", rec.get("pid", 0)) or 0), str(run_dir))
    if not orphans:
        return
    pgid = int(rec.get("pgid", rec.get("pid", 0)) or 0)
    say(f"{name}: ending {len(orphans)} orphaned process(es) of the dead component: {orphans}")
    for sig in (procs.SIGTERM, procs.SIGKILL):
        for pid in procs.owned_orphans(pgid, str(run_dir)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if not procs.wait_gone([(0, pgid, ["\0never"])], timeout=5, run_dir=str(run_dir)):
            return


def _stop(
    run_dir: Path, state: dict[str, Any], names: list[str], say: Progress, *, timeout: float
) -> tuple[list[str], list[str]]:
    """SIGTERM the recorded groups of ``names``, SIGKILL leftovers, verify, update state.
    Returns (names stopped, "name (pid N)" of those still alive)."""
    comps: dict[str, Any] = state["components"]
    rs = str(run_dir)
    targets: dict[str, tuple[int, int, list[str]]] = {}
    for name in names:
        rec = comps.get(name)
        if not rec:
            continue
        pid, pgid, markers = rec["pid"], rec.get("pgid", rec["pid"]), rec.get("markers", [])
        if procs.kill_group(pid, pgid, markers, procs.SIGTERM, rs):
            say(f"{name}: stopping (pid {pid})")
            targets[name] = (pid, pgid, markers)
        else:
            if procs.pid_alive(pid):
                say(f"{name}: pid {pid} no longer runs what was started; not signalling it")
            else:
                say(f"{name}: was not running (stale record)")
            comps.pop(name)
            with contextlib.suppress(FileNotFoundError):
                _pidfile(run_dir, name).unlink()
    left = procs.wait_gone(targets.values(), timeout, rs)
    if left:
        for name, (pid, pgid, markers) in targets.items():
            if pgid in left:
                say(f"{name}: still alive after {timeout:.0f} s, sending SIGKILL")
                procs.kill_group(pid, pgid, markers, procs.SIGKILL, rs)
        left = procs.wait_gone(targets.values(), 10.0, rs)
    stopped = []
    for name, (_pid, pgid, _m) in targets.items():
        if pgid in left:
            continue
        stopped.append(name)
        comps.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            _pidfile(run_dir, name).unlink()
    _save_state(run_dir, state)
    alive = [f"{n} (pid {t[0]})" for n, t in targets.items() if t[1] in left]
    return stopped, alive
