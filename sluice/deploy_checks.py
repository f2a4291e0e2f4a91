"""Static checks of the deployment files (docker/, k8s/): no Docker engine or cluster needed.

Each check takes parsed inputs and returns a list of problems (empty: fine), so tests can
run it on mutated copies (negative controls) as well as on the repo's files.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from sluice.config import REPO_ROOT, SluiceConfig

DOCKER_DIR = REPO_ROOT / "docker"
K8S_DIR = REPO_ROOT / "k8s"
COMPOSE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
DASHBOARD = DOCKER_DIR / "grafana" / "dashboards" / "sluice-pipeline.json"
CREATE_TOPICS = DOCKER_DIR / "kafka" / "create-topics.sh"
PROMETHEUS = DOCKER_DIR / "prometheus" / "prometheus.yml"
# What `sluice package` writes (sluice/package.py) and the Dockerfile may COPY.
PACKAGE_OUTPUTS = ("wheels", "jars", "jobs", "schemas", "reference", "features.yaml",
                   "sluice.yaml", "python-env.zip", "requirements.txt", "submit.sh",
                   "manifest.json", "models")
_VERSION_TAG = re.compile(r"\d+\.\d+")


# --- images -------------------------------------------------------------------------------
def image_problem(ref: str) -> str | None:
    """Why an image reference is not pinned (None if it is): a digest, or a tag that names
    a version (``2.2.1-java17``, ``v3.1.0``); no tag, ``latest`` or a bare name fail."""
    if "@sha256:" in ref:
        return None
    name, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
    if not tag:
        return f"{ref}: no tag (means latest)"
    if tag == "latest":
        return f"{ref}: tag latest"
    if not _VERSION_TAG.search(tag):
        return f"{ref}: tag {tag!r} names no version"
    return None


def compose_images(compose: dict) -> Iterator[tuple[str, str]]:
    for name, svc in (compose.get("services") or {}).items():
        if "image" not in svc:
            yield name, ""
        else:
            yield name, str(svc["image"])


def check_compose_images(compose: dict) -> list[str]:
    out = []
    for svc, ref in compose_images(compose):
        if not ref:
            out.append(f"service {svc}: no image")
        elif (p := image_problem(ref)) is not None:
            out.append(f"service {svc}: {p}")
    return out


def dockerfile_from_images(text: str) -> list[str]:
    """Base images of FROM lines (build-stage names excluded)."""
    stages: set[str] = set()
    images = []
    for line in _dockerfile_lines(text):
        words = line.split()
        if words and words[0].upper() == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            ref = args[0]
            if len(args) >= 3 and args[1].upper() == "AS":
                stages.add(args[2])
            if ref not in stages:
                images.append(ref)
    return images


def check_dockerfile_images(text: str) -> list[str]:
    return [f"Dockerfile FROM {p}" for r in dockerfile_from_images(text)
            if (p := image_problem(r)) is not None]


def k8s_images(docs: Iterable[dict]) -> Iterator[tuple[str, str]]:
    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    yield where, v
                else:
                    yield from walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{where}[{i}]")

    for doc in docs:
        yield from walk(doc, f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}")


def check_k8s_images(docs: list[dict]) -> list[str]:
    return [f"{w}: {p}" for w, ref in k8s_images(docs) if (p := image_problem(ref)) is not None]


# --- files that must exist ----------------------------------------------------------------
def _dockerfile_lines(text: str) -> list[str]:
    """Logical lines (continuations joined, comments dropped)."""
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    if cur:
        lines.append(cur)
    return lines


def dockerfile_copy_sources(text: str) -> list[str]:
    srcs = []
    for line in _dockerfile_lines(text):
        words = shlex.split(line)
        if words and words[0].upper() in ("COPY", "ADD"):
            if any(w.startswith("--from") for w in words[1:]):
                continue
            args = [w for w in words[1:] if not w.startswith("--")]
            srcs.extend(args[:-1])
    return srcs


def check_dockerfile_copies(text: str, context: Path = REPO_ROOT) -> list[str]:
    """COPY sources exist in the build context (the repo root), or are outputs of
    `sluice package` under out/package/ whose inputs exist in the repo."""
    out = []
    for src in dockerfile_copy_sources(text):
        rel = src.rstrip("/")
        if rel.startswith("out/package/"):
            part = rel.removeprefix("out/package/").split("/")[0]
            if part not in PACKAGE_OUTPUTS:
                out.append(f"COPY {src}: `sluice package` writes no {part}")
            elif part in ("schemas", "reference", "features.yaml") and not (context / part).exists():
                out.append(f"COPY {src}: its source {part} is not in the repo")
            continue
        if "*" in rel:
            if not list(context.glob(rel)):
                out.append(f"COPY {src}: matches nothing in {context}")
        elif not (context / rel).exists():
            out.append(f"COPY {src}: {context / rel} does not exist")
    return out


def compose_bind_mounts(compose: dict) -> Iterator[tuple[str, str]]:
    for name, svc in (compose.get("services") or {}).items():
        for vol in svc.get("volumes") or []:
            src = vol.get("source") if isinstance(vol, dict) else str(vol).split(":")[0]
            if src and (src.startswith((".", "/", "~"))):
                yield name, src


def check_compose_files(compose: dict, compose_dir: Path = DOCKER_DIR) -> list[str]:
    out = []
    for svc, src in compose_bind_mounts(compose):
        if not (compose_dir / src).resolve().exists():
            out.append(f"service {svc}: mounted {src} does not exist")
    for name, svc in (compose.get("services") or {}).items():
        build = svc.get("build")
        if isinstance(build, dict):
            ctx = (compose_dir / build.get("context", ".")).resolve()
            if not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
                out.append(f"service {name}: build dockerfile missing under {ctx}")
    return out


# --- pins ---------------------------------------------------------------------------------
_REQ = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)$")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins(pyproject: dict) -> dict[str, str]:
    """name → version of the runtime dependencies pinned with ``==``."""
    pins = {}
    for dep in pyproject["project"]["dependencies"]:
        m = _REQ.match(dep.replace(" ", ""))
        if m:
            pins[_canon(m.group(1))] = m.group(3)
    return pins


def dockerfile_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in _dockerfile_lines(text):
        if "pip" not in line or " install " not in line:
            continue
        for word in shlex.split(line.replace("&&", " ")):
            m = _REQ.match(word)
            if m:
                pins[_canon(m.group(1))] = m.group(3)
    return pins


def check_dockerfile_pins(text: str, pyproject: dict) -> list[str]:
    want, have = pyproject_pins(pyproject), dockerfile_pins(text)
    out = [f"Dockerfile pins {n}=={v}, pyproject.toml {n}=={want[n]}"
           for n, v in have.items() if n in want and want[n] != v]
    out += [f"Dockerfile pins {n}=={v}, not pinned in pyproject.toml"
            for n, v in have.items() if n not in want]
    out += [f"pyproject.toml pins {n}=={v}, the Dockerfile does not install it"
            for n, v in want.items() if n not in have]
    return out


# --- ports and topics ---------------------------------------------------------------------
def _published(svc: dict) -> dict[int, int]:
    """host port → container port."""
    out = {}
    for p in svc.get("ports") or []:
        parts = str(p).split(":")
        if len(parts) >= 2:
            out[int(parts[-2])] = int(parts[-1].split("/")[0])
    return out


def check_compose_ports(compose: dict, cfg: SluiceConfig) -> list[str]:
    """The default config's Kafka bootstrap and registry URL reach the compose services
    from the host; the job inside the network points at the brokers' internal listeners;
    Prometheus' Flink port is the one the containers expose."""
    out = []
    services = compose.get("services") or {}
    for server in cfg.kafka.bootstrap_servers.split(","):
        port = int(server.rsplit(":", 1)[1])
        brokers = [n for n, s in services.items()
                   if port in _published(s)
                   and f":{port}" in str((s.get("environment") or {}).get(
                       "KAFKA_ADVERTISED_LISTENERS", ""))]
        if not brokers:
            out.append(f"kafka.bootstrap_servers {server}: no broker publishes and advertises {port}")
    m = re.match(r"https?://[^:/]+:(\d+)(/.*)?$", cfg.registry.url)
    if not m:
        out.append(f"registry.url {cfg.registry.url}: no port")
    else:
        port, path = int(m.group(1)), m.group(2) or ""
        reg = services.get("registry") or {}
        if port not in _published(reg):
            out.append(f"registry.url port {port} is not published by the registry service")
        for name, svc in services.items():
            url = (svc.get("environment") or {}).get("SCHEMA_REGISTRY_URL")
            if url is None:
                continue
            container = _published(reg).get(port)
            if not str(url).endswith(f":{container}{path}"):
                out.append(f"service {name}: SCHEMA_REGISTRY_URL {url} is not the registry's "
                           f"port {container} with path {path}")
    internal = {f"{n}:9092" for n, s in services.items()
                if "INTERNAL://:9092" in str((s.get("environment") or {}).get("KAFKA_LISTENERS", ""))}
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for key in ("BOOTSTRAP_SERVERS", "BOOTSTRAP", "APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"):
            if key in env and set(str(env[key]).split(",")) != internal:
                out.append(f"service {name}: {key}={env[key]} is not the brokers' internal "
                           f"listeners {sorted(internal)}")
        tmax = env.get("KAFKA_TRANSACTION_MAX_TIMEOUT_MS")
        if "KAFKA_NODE_ID" in env and (tmax is None or int(tmax) < cfg.kafka.transaction_timeout_ms):
            out.append(f"service {name}: transaction.max.timeout.ms {tmax} < "
                       f"kafka.transaction_timeout_ms {cfg.kafka.transaction_timeout_ms}")
    return out


def check_prometheus(prom: dict, compose: dict) -> list[str]:
    out = []
    services = compose.get("services") or {}
    ports = {str((s.get("environment") or {}).get("SLUICE_PROMETHEUS_PORT"))
             for s in services.values() if (s.get("environment") or {}).get("SLUICE_PROMETHEUS_PORT")}
    for job in prom.get("scrape_configs") or []:
        targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        targets += [f"{n}:{sd.get('port')}" for sd in job.get("dns_sd_configs") or []
                    for n in sd.get("names") or []]
        for t in targets:
            host, _, port = t.rpartition(":")
            if host not in services:
                out.append(f"prometheus {job.get('job_name')}: {host} is no compose service")
            if port not in ports:
                out.append(f"prometheus {job.get('job_name')}: port {port} is not the reporter "
                           f"port {sorted(ports)}")
    return out


def created_topics(script: str) -> dict[str, bool]:
    """topic → compacted, from the ``create NAME [compact]`` lines of create-topics.sh."""
    out = {}
    for line in script.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "create":
            out[words[1]] = "compact" in words[2:]
    return out


def check_topics(script: str, cfg: SluiceConfig) -> list[str]:
    have, want = created_topics(script), set(cfg.topics.all())
    out = [f"topic {t} of sluice.yaml is not created" for t in sorted(want - set(have))]
    out += [f"created topic {t} is not in sluice.yaml" for t in sorted(set(have) - want)]
    compact = {cfg.topics.dlq_replays, cfg.topics.devices, cfg.topics.model_updates}
    out += [f"topic {t}: compacted={c}, the job expects {t in compact}"
            for t, c in have.items() if t in want and c != (t in compact)]
    return out


# --- dashboard ----------------------------------------------------------------------------
_SERIES = re.compile(r"\bflink_[A-Za-z0-9_:]+")


def dashboard_series(dashboard: dict) -> set[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                names.update(_SERIES.findall(node["expr"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    return names


def check_dashboard(dashboard: dict) -> list[str]:
    """Every series the dashboard queries exists; every counter is shown, and every
    latency histogram at least by its p99 gauge."""
    from sluice.metrics_catalog import (
        STAGE_COUNTERS,
        STAGE_LATENCIES,
        known_series,
        prometheus_name,
    )

    used = dashboard_series(dashboard)
    if not used:
        return ["the dashboard queries no flink_ series"]
    out = [f"dashboard queries {n}, which no sluice job registers (sluice.metrics_catalog)"
           for n in sorted(used - known_series())]
    out += [f"dashboard does not show sluice.{s}.{n}" for s, n in STAGE_COUNTERS
            if prometheus_name(s, n) not in used]
    out += [f"dashboard does not show the p99 of sluice.{s}.{n}" for s, n in STAGE_LATENCIES
            if prometheus_name(s, f"{n}_p99") not in used]
    return out


# --- Kubernetes ---------------------------------------------------------------------------
_SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|KEY", re.I)


def check_k8s(docs: list[dict], repo: Path = REPO_ROOT) -> list[str]:
    out = []
    deployments = [d for d in docs if d.get("kind") == "FlinkDeployment"]
    if not deployments:
        return ["no FlinkDeployment"]
    for d in docs:
        if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
            out.append(f"Secret/{d['metadata']['name']}: literal secret values in the repo")
    for d in deployments:
        spec, name = d.get("spec") or {}, d["metadata"]["name"]
        job = spec.get("job") or {}
        conf = spec.get("flinkConfiguration") or {}
        if job.get("upgradeMode") != "savepoint":
            out.append(f"{name}: job.upgradeMode is {job.get('upgradeMode')}, not savepoint")
        if job.get("entryClass") != "org.apache.flink.client.python.PythonDriver":
            out.append(f"{name}: entryClass is not PythonDriver")
        if not str(job.get("jarURI", "")).startswith("local:///opt/flink/opt/flink-python-"):
            out.append(f"{name}: jarURI is not the image's flink-python jar")
        args = job.get("args") or []
        if "-py" not in args:
            out.append(f"{name}: no -py entry point in job.args")
        else:
            script = args[args.index("-py") + 1]
            if not script.startswith("/opt/sluice/jobs/") or not (
                    repo / "jobs" / Path(script).name).is_file():
                out.append(f"{name}: entry point {script} is not a job the image ships")
        if not isinstance(job.get("parallelism"), int) or job["parallelism"] < 1:
            out.append(f"{name}: job.parallelism missing")
        for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir",
                    "high-availability.type", "high-availability.storageDir"):
            if not conf.get(key):
                out.append(f"{name}: flinkConfiguration {key} missing")
        if str(conf.get("execution.checkpointing.dir", "")).startswith("file:"):
            out.append(f"{name}: checkpoints on a pod's local disk do not survive it")
        for key in conf:
            if _SECRETISH.search(key) and "factory" not in key:
                out.append(f"{name}: flinkConfiguration {key} holds a secret literally")
        containers = (((spec.get("podTemplate") or {}).get("spec") or {}).get("containers") or [])
        for c in containers:
            for env in c.get("env") or []:
                if (_SECRETISH.search(env["name"]) and "value" in env
                        and not env["name"].endswith("_FILE")):
                    out.append(f"{name}: env {env['name']} is a literal, not a secretKeyRef")
    return out


# --- loading ------------------------------------------------------------------------------
def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_pyproject(path: Path = REPO_ROOT / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text())


def all_problems(cfg: SluiceConfig) -> list[str]:
    compose = yaml.safe_load(COMPOSE.read_text())
    dockerfile = DOCKERFILE.read_text()
    k8s = [d for p in sorted(K8S_DIR.glob("*.yaml")) for d in load_yaml_docs(p)]
    return [
        *check_compose_images(compose), *check_compose_files(compose),
        *check_compose_ports(compose, cfg),
        *check_prometheus(yaml.safe_load(PROMETHEUS.read_text()), compose),
        *check_topics(CREATE_TOPICS.read_text(), cfg),
        *check_dockerfile_images(dockerfile), *check_dockerfile_copies(dockerfile),
        *check_dockerfile_pins(dockerfile, load_pyproject()),
        *check_dashboard(json.loads(DASHBOARD.read_text())),
        *check_k8s_images(k8s), *check_k8s(k8s),
    ]
