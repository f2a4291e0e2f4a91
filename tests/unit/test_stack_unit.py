"""Unit tests of sluice.stack that start no JVM (ports, rendering, pid ownership, down)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sluice.stack import (
    StackError,
    StackPorts,
    down,
    manager,
    port_in_use,
    port_owner,
    procs,
    render,
    status,
    up,
    wait_for_port,
)
from sluice.stack.java import find_jdk

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    """A socket listening on an ephemeral loopback port (owned by this test process)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def spawn_dummy(run_dir: Path, marker: str, *, ignore_term: bool = False) -> tuple[int, int]:
    """A harmless detached python process whose command line carries ``marker``."""
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "time.sleep(120)\n"
    env = {**os.environ, procs.OWNER_ENV: str(run_dir)}
    pid, pgid = procs.spawn(
        [sys.executable, "-c", code, marker], log_file=run_dir / "dummy.log", cwd=run_dir, env=env
    )
    deadline = time.monotonic() + 10
    while marker not in (procs.read_cmdline(pid) or ""):  # wait for the exec
        assert time.monotonic() < deadline, "dummy process did not start"
        time.sleep(0.02)
    return pid, pgid


def start_sleep() -> subprocess.Popen[bytes]:
    """A plain `sleep 60` child, returned once /proc shows its exec'd command line."""
    p = subprocess.Popen(["sleep", "60"])
    deadline = time.monotonic() + 10
    while "sleep 60" not in (procs.read_cmdline(p.pid) or ""):
        assert time.monotonic() < deadline, "sleep did not start"
        time.sleep(0.02)
    return p


def record(
    run_dir: Path,
    name: str,
    pid: int,
    pgid: int | None,
    markers: list[str],
    ports: dict[str, int] | None = None,
) -> None:
    state = manager.load_state(run_dir)
    state["components"][name] = {"pid": pid, "pgid": pgid, "markers": markers, "ports": ports or {}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / manager.STATE_FILE).write_text(json.dumps(state))


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while procs.pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def cleanup_pids() -> Iterator[list[int]]:
    """pids a test spawned; SIGKILLed at the end if a test failed half-way."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if procs.pid_alive(pid) and "sluice-unit-" in (procs.read_cmdline(pid) or ""):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------------------


def test_port_in_use_detects_listener_and_free_port(listener: int) -> None:
    assert port_in_use(listener)
    (free,) = free_ports(1)
    assert not port_in_use(free)


def test_port_in_use_detects_bound_but_not_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        assert port_in_use(s.getsockname()[1])


def test_wait_for_port(listener: int) -> None:
    assert wait_for_port(listener, timeout=2)
    (free,) = free_ports(1)
    t0 = time.monotonic()
    assert not wait_for_port(free, timeout=0.5, interval=0.1)
    assert time.monotonic() - t0 < 3


def test_port_owner_names_this_process(listener: int) -> None:
    owner = port_owner(listener)
    assert owner is not None and owner.startswith(f"pid {os.getpid()} ")


def test_up_refuses_foreign_port_naming_port_and_component(tmp_path: Path, listener: int) -> None:
    kc, reg, regm, rest, rpc = free_ports(5)
    ports = StackPorts(
        kafka=listener,
        kafka_controller=kc,
        registry=reg,
        registry_management=regm,
        flink_rest=rest,
        flink_rpc=rpc,
    )
    with pytest.raises(StackError) as exc:
        up(tmp_path / "run", ports, deps_dir=tmp_path / "no-deps")
    msg = str(exc.value)
    assert f"port {listener}" in msg and "kafka" in msg and "already in use" in msg
    assert f"pid {os.getpid()}" in msg  # the owner is identified
    assert exc.value.component == "kafka"
    assert not (tmp_path / "run" / "stack.json").exists()  # nothing was started/recorded


def test_up_refuses_foreign_registry_management_port(tmp_path: Path, listener: int) -> None:
    k, kc, reg, rest, rpc = free_ports(5)
    ports = StackPorts(
        kafka=k,
        kafka_controller=kc,
        registry=reg,
        registry_management=listener,
        flink_rest=rest,
        flink_rpc=rpc,
    )
    with pytest.raises(StackError, match=rf"registry: port {listener} \(registry_management\)"):
        up(tmp_path / "run", ports, deps_dir=tmp_path / "no-deps")


def test_up_refuses_duplicate_ports(tmp_path: Path) -> None:
    k, kc, rest, rpc = free_ports(4)
    ports = StackPorts(
        kafka=k,
        kafka_controller=kc,
        registry=k,
        registry_management=kc,
        flink_rest=rest,
        flink_rpc=rpc,
    )
    with pytest.raises(StackError, match=rf"port {k} is requested twice"):
        up(tmp_path / "run", ports, deps_dir=tmp_path / "no-deps")


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------


def test_kafka_server_properties(tmp_path: Path) -> None:
    ports = StackPorts(kafka=29999, kafka_controller=29998)
    props = render.parse_properties(render.kafka_server_properties(ports, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["transaction.max.timeout.ms"] == "3600000"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29999,CONTROLLER://127.0.0.1:29998"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29999"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29998"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert int(props["log.retention.hours"]) >= 24 * 365
    # every address in the file is loopback
    addrs = set(re.findall(r"//([^:/]+):", render.kafka_server_properties(ports, tmp_path)))
    assert addrs == {"127.0.0.1"}


def test_kafka_log4j2_properties(tmp_path: Path) -> None:
    text = render.kafka_log4j2_properties(tmp_path / "kafka.log")
    props = render.parse_properties(text)
    assert props["appender.file.fileName"] == str(tmp_path / "kafka.log")
    assert props["rootLogger.level"] == "INFO"
    assert props["logger.request.name"] == "kafka.request.logger"
    assert props["logger.request.level"] == "WARN"
    assert props["shutdownHook"] == "disable"
    assert "${" not in text


def test_render_template_rules() -> None:
    text = "# ${not_replaced}\na=${x}\nb=${sys:log.file}\n"
    assert render.render_template(text, {"x": 5}) == "# ${not_replaced}\na=5\nb=${sys:log.file}\n"
    with pytest.raises(StackError, match=r"unknown placeholder \$\{y\}"):
        render.render_template("a=${y}\n", {"x": 1})
    assert (
        render.render_template("p: ${p}\n", {"p": Path("/a b")}, yaml_quote=True) == 'p: "/a b"\n'
    )


def test_flink_config_yaml_substitutes_ports_and_paths(tmp_path: Path) -> None:
    run = tmp_path / "run dir"  # a space must survive YAML
    python = tmp_path / "venv" / "bin" / "python"
    ports = StackPorts(flink_rest=28182, flink_rpc=28183)
    text = render.flink_config_yaml(
        ports,
        run / "flink",
        python=python,
        default_java_opts="--add-opens=java.base/java.lang=ALL-UNNAMED",
    )
    conf = yaml.safe_load(text)
    assert conf["rest"] == {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": 28182}
    assert conf["jobmanager"]["rpc"] == {"address": "localhost", "port": 28183}
    assert conf["jobmanager"]["bind-host"] == "127.0.0.1"
    assert conf["taskmanager"]["bind-host"] == "127.0.0.1"
    assert conf["taskmanager"]["numberOfTaskSlots"] == 2
    assert conf["python"] == {"executable": str(python), "client": {"executable": str(python)}}
    assert conf["state"]["backend"]["type"] == "hashmap"
    assert conf["execution"]["checkpointing"]["dir"] == f"file://{run / 'flink' / 'checkpoints'}"
    assert conf["env"]["log"]["dir"] == str(run / "flink" / "log")
    assert conf["env"]["java"]["opts"]["all"].startswith("--add-opens")
    assert conf["io"]["tmp"]["dirs"].startswith(str(run))
    assert "${" not in "".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def test_write_flink_conf_dir(tmp_path: Path) -> None:
    home = render.flink_home()
    conf = render.write_flink_conf_dir(
        StackPorts(flink_rest=28282), tmp_path / "flink", home=home, python=Path(sys.executable)
    )
    assert (conf / "log4j-console.properties").exists()  # needed by flink-console.sh
    loaded = yaml.safe_load((conf / "config.yaml").read_text())
    assert loaded["rest"]["port"] == 28282
    # the wheel's JVM flags for Java 17 are carried over
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in loaded["env"]["java"]["opts"]["all"]


def test_kafka_cluster_id_is_generated_once(tmp_path: Path) -> None:
    cid = manager._kafka_cluster_id(tmp_path)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid)
    assert manager._kafka_cluster_id(tmp_path) == cid


# ---------------------------------------------------------------------------------------
# pid ownership and down
# ---------------------------------------------------------------------------------------


def test_signal_refuses_pid_whose_cmdline_does_not_match() -> None:
    p = start_sleep()
    try:
        assert procs.owns(p.pid, ["sleep", "60"])
        assert not procs.owns(p.pid, ["kafka.Kafka"])
        with pytest.raises(StackError, match=f"refusing to signal kafka pid {p.pid}"):
            procs.signal_owned(
                p.pid, ["kafka.Kafka", "/run/kafka/server.properties"], signal.SIGTERM, what="kafka"
            )
        time.sleep(0.2)
        assert p.poll() is None  # still alive: it was not signalled
    finally:
        p.kill()
        p.wait()


def test_owns_checks_process_group(tmp_path: Path, cleanup_pids: list[int]) -> None:
    marker = f"sluice-unit-{uuid.uuid4().hex}"
    pid, pgid = spawn_dummy(tmp_path, marker)
    cleanup_pids.append(pid)
    assert pgid != os.getpgid(0)  # detached into its own group
    assert procs.owns(pid, [marker], pgid)
    assert not procs.owns(pid, [marker], pgid + 100000)  # recycled pid in another group
    os.killpg(pgid, signal.SIGKILL)
    assert wait_dead(pid)
    assert not procs.owns(pid, [marker], pgid)


def test_down_does_not_signal_foreign_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = start_sleep()
    try:
        record(run, "kafka", p.pid, None, ["kafka.Kafka", str(run / "kafka/server.properties")])
        assert down(run) == []
        time.sleep(0.2)
        assert p.poll() is None
        assert not (run / "stack.json").exists()  # the stale record is dropped
    finally:
        p.kill()
        p.wait()


def test_down_stops_recorded_process_group(tmp_path: Path, cleanup_pids: list[int]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    marker = f"sluice-unit-{uuid.uuid4().hex}"
    pid, pgid = spawn_dummy(run, marker)
    cleanup_pids.append(pid)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"{procs.OWNER_ENV}={run}".encode() in environ
    record(run, "registry", pid, pgid, [marker])
    st = status(run)
    assert st.components["registry"].running and st.components["registry"].pid == pid
    assert down(run) == ["registry"]
    assert wait_dead(pid, 1)
    assert not (run / "stack.json").exists()
    assert down(run) == []  # idempotent


def test_down_escalates_to_sigkill(tmp_path: Path, cleanup_pids: list[int]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    marker = f"sluice-unit-{uuid.uuid4().hex}"
    pid, pgid = spawn_dummy(run, marker, ignore_term=True)
    cleanup_pids.append(pid)
    time.sleep(0.3)  # let it install the SIGTERM handler
    record(run, "kafka", pid, pgid, [marker])
    msgs: list[str] = []
    t0 = time.monotonic()
    assert down(run, progress=msgs.append, timeout=1.0) == ["kafka"]
    assert time.monotonic() - t0 < 10
    assert any("SIGKILL" in m for m in msgs)
    assert wait_dead(pid, 1)


def test_up_refuses_to_change_ports_of_running_component(
    tmp_path: Path, cleanup_pids: list[int]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    marker = f"sluice-unit-{uuid.uuid4().hex}"
    pid, pgid = spawn_dummy(run, marker)
    cleanup_pids.append(pid)
    record(run, "kafka", pid, pgid, [marker], {"kafka": 1, "kafka_controller": 2})
    try:
        with pytest.raises(StackError, match="kafka is already running .* down"):
            up(run, StackPorts(), deps_dir=tmp_path / "no-deps")
        assert procs.pid_alive(pid)  # left alone
    finally:
        assert down(run) == ["kafka"]


# ---------------------------------------------------------------------------------------
# status, models, misc
# ---------------------------------------------------------------------------------------


def test_status_of_empty_run_dir(tmp_path: Path) -> None:
    st = status(tmp_path)
    assert not st.healthy and st.running == []
    assert set(st.components) == {"kafka", "registry", "redis", "flink-jobmanager",
                                  "flink-taskmanager"}
    assert st.bootstrap_servers == "127.0.0.1:19092"
    assert st.registry_url == "http://127.0.0.1:18081/apis/ccompat/v7"
    assert st.flink_rest_url == "http://127.0.0.1:18082"
    assert st.components["kafka"].log_file == tmp_path.resolve() / "kafka" / "kafka.log"
    json.dumps(st.to_dict())  # serialisable for `sluice stack status --json`


def test_status_reports_stale_record(tmp_path: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    record(tmp_path, "kafka", p.pid, p.pid, ["kafka.Kafka"], {"kafka": 29092})
    st = status(tmp_path)
    assert not st.components["kafka"].running
    assert "stale" in st.components["kafka"].detail
    assert st.components["kafka"].port == 29092


def test_stack_ports_helpers() -> None:
    ports = StackPorts.from_dict({"kafka": "20000", "unknown": 5})
    assert ports.kafka == 20000 and ports.registry == 18081
    assert ports.for_component("registry") == {"registry": 18081, "registry_management": 18091}
    assert ports.for_component("flink-taskmanager") == {}


def test_failure_message_has_component_log_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    err = manager._failure("kafka", "did not become healthy within 60 s", [log])
    msg = str(err)
    assert msg.startswith("kafka did not become healthy") and str(log) in msg
    assert "line 99" in msg and "line 80" in msg and "line 79" not in msg  # last 20 lines
    assert err.component == "kafka" and err.log_file == log


def test_find_jdk_prefers_explicit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    (home / "bin" / "java").chmod(0o755)
    (home / "release").write_text('JAVA_VERSION="21.0.4"\n')
    monkeypatch.setenv("SLUICE_TEST_JAVA_HOME", str(home))
    jdk = find_jdk(21, 21, env_var="SLUICE_TEST_JAVA_HOME")
    assert jdk.home == home and jdk.version == 21
    with pytest.raises(StackError, match="needs Java 99"):
        find_jdk(99, env_var="SLUICE_TEST_JAVA_HOME", purpose="registry")


def test_port_offset_from_the_environment_moves_every_port() -> None:
    from sluice.stack import StackPorts
    from sluice.stack.models import StackError

    base, moved = StackPorts.from_env({}), StackPorts.from_env({"SLUICE_STACK_PORT_OFFSET": "1000"})
    assert base == StackPorts()
    assert moved.kafka == 20092 and moved.registry == base.registry + 1000
    assert all(moved.to_dict()[k] == v + 1000 for k, v in base.to_dict().items())
    for bad in ("x", "-1", "50000"):
        with pytest.raises(StackError, match="SLUICE_STACK_PORT_OFFSET"):
            StackPorts.from_env({"SLUICE_STACK_PORT_OFFSET": bad})


def test_cli_stack_ports_follow_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sluice stack up` shifts the config's ports like the test suite does."""
    from sluice.cli import _ports
    from sluice.config import load_config

    cfg = load_config()
    monkeypatch.delenv("SLUICE_STACK_PORT_OFFSET", raising=False)
    base = _ports(cfg)
    assert base.kafka == cfg.stack.kafka_port and base.redis == cfg.stack.redis_port
    monkeypatch.setenv("SLUICE_STACK_PORT_OFFSET", "1000")
    moved = _ports(cfg)
    assert moved.to_dict() == {k: v + 1000 for k, v in base.to_dict().items()}
    monkeypatch.setenv("SLUICE_STACK_PORT_OFFSET", "x")
    with pytest.raises(Exception, match="must be an integer"):
        _ports(cfg)
