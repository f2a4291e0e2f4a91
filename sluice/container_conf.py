"""Render flink-conf/config.yaml (the template the local stack uses) for a container.

The compose file mounts the repo's ``flink-conf/config.yaml`` read-only into every Flink
container; the image's entrypoint (docker/flink-entrypoint.sh) runs

    python3 -m sluice.container_conf --template /opt/sluice/flink-conf/config.yaml \\
        --dist $FLINK_HOME/conf/config.dist.yaml --out $FLINK_HOME/conf/config.yaml

before Flink's own entrypoint. The same ``${...}`` placeholders as `sluice stack up`
are filled with container values, and the settings that make the local cluster
loopback-only are replaced by the container's (bind to all interfaces, advertise the
container's host name, log to stdout). Everything else — memory, slots, state backend,
failover, metrics fetcher, the Prometheus reporter (on ``SLUICE_PROMETHEUS_PORT`` instead
of the local cluster's port range) — is the same file.
Values come from the environment (see ``ENV`` below), so one image serves the
JobManager and every TaskManager.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sluice.stack.render import render_template

# environment variable → (default, what it is)
ENV: dict[str, tuple[str, str]] = {
    "JOB_MANAGER_RPC_ADDRESS": ("flink-jobmanager", "the JobManager's host name"),
    "SLUICE_FLINK_REST_PORT": ("8081", "REST / web UI port"),
    "SLUICE_FLINK_RPC_PORT": ("6123", "JobManager RPC port"),
    "SLUICE_PYTHON": ("/usr/local/bin/python3", "Python of the UDF workers and the client"),
    "SLUICE_CHECKPOINT_URI": ("file:///flink-data/checkpoints",
                              "checkpoint storage every Flink process can reach (s3://…)"),
    "SLUICE_SAVEPOINT_URI": ("file:///flink-data/savepoints", "savepoint storage"),
    "SLUICE_PROMETHEUS_PORT": ("9249", "port of Flink's Prometheus reporter"),
    "TASK_MANAGER_NUMBER_OF_TASK_SLOTS": ("", "slots per TaskManager (template value if unset)"),
}
FLINK_HOME = Path(os.environ.get("FLINK_HOME", "/opt/flink"))


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name) or ENV[name][0]


def _set(conf: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested YAML, replacing a flat ``a.b.c`` key if the file has one."""
    conf.pop(dotted, None)
    node = conf
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _default_java_opts(dist: Path) -> str:
    """``env.java.opts.all`` of the image's own config (the --add-opens Flink needs)."""
    conf = yaml.safe_load(dist.read_text()) or {}
    if "env.java.opts.all" in conf:
        return str(conf["env.java.opts.all"])
    node: Any = conf
    for key in ("env", "java", "opts", "all"):
        if not isinstance(node, dict) or key not in node:
            return ""
        node = node[key]
    return str(node)


def render(template: Path, *, dist: Path | None, env: Mapping[str, str],
           hostname: str | None = None) -> dict[str, Any]:
    """The container's Flink configuration as a mapping (see the module docstring)."""
    tmp = Path("/tmp/flink")
    values = {
        "flink_rest_port": _env(env, "SLUICE_FLINK_REST_PORT"),
        "flink_rpc_port": _env(env, "SLUICE_FLINK_RPC_PORT"),
        "python": _env(env, "SLUICE_PYTHON"),
        "log_dir": str(FLINK_HOME / "log"),
        "pid_dir": str(tmp / "pid"),
        "tmp_dir": str(tmp / "io"),
        "web_tmp_dir": str(tmp / "web"),
        "checkpoint_uri": _env(env, "SLUICE_CHECKPOINT_URI"),
        "savepoint_uri": _env(env, "SLUICE_SAVEPOINT_URI"),
        # The template's reporter takes a port range (the local cluster's processes share
        # one host); a container is its own host, so every process uses the same port.
        "flink_prometheus_ports": _env(env, "SLUICE_PROMETHEUS_PORT"),
        "default_java_opts": _default_java_opts(dist) if dist and dist.is_file() else "",
    }
    conf = yaml.safe_load(render_template(template.read_text(), values, yaml_quote=True,
                                          source=str(template))) or {}
    jm = _env(env, "JOB_MANAGER_RPC_ADDRESS")
    host = hostname or socket.gethostname()
    overrides: dict[str, Any] = {
        "jobmanager.bind-host": "0.0.0.0",
        "jobmanager.rpc.address": jm,
        "taskmanager.bind-host": "0.0.0.0",
        "taskmanager.host": host,
        "rest.address": jm,
        "rest.bind-address": "0.0.0.0",
        # Containers log to stdout (docker logs / kubectl logs), not to files.
        "env.stdout-err.redirect-to-file": False,
    }
    if env.get("TASK_MANAGER_NUMBER_OF_TASK_SLOTS"):
        overrides["taskmanager.numberOfTaskSlots"] = int(env["TASK_MANAGER_NUMBER_OF_TASK_SLOTS"])
    for key, value in overrides.items():
        _set(conf, key, value)
    return conf


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template", type=Path, required=True)
    p.add_argument("--dist", type=Path, default=None,
                   help="the image's original conf/config.yaml (for env.java.opts.all)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    conf = render(args.template, dist=args.dist, env=os.environ)
    args.out.write_text("# Rendered by sluice.container_conf from " + str(args.template) + "\n"
                        + yaml.safe_dump(conf, sort_keys=False))
    print(f"sluice: wrote {args.out} from {args.template}")


if __name__ == "__main__":
    main()
