"""Static validation of docker/ and k8s/ (no Docker engine, no cluster), with negative
controls: each check also runs on a mutated copy and must fail there."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from sluice import deploy_checks as dc
from sluice.config import REPO_ROOT, SluiceConfig, load_config
from sluice.container_conf import render


@pytest.fixture(scope="module")
def cfg() -> SluiceConfig:
    return load_config(REPO_ROOT / "sluice.yaml", env={})


@pytest.fixture()
def compose() -> dict:
    return yaml.safe_load(dc.COMPOSE.read_text())


@pytest.fixture()
def k8s() -> list[dict]:
    return [d for p in sorted(dc.K8S_DIR.glob("*.yaml")) for d in dc.load_yaml_docs(p)]


def test_every_deployment_file_parses() -> None:
    files = [*dc.DOCKER_DIR.rglob("*.yaml"), *dc.DOCKER_DIR.rglob("*.yml"), *dc.K8S_DIR.glob("*.yaml")]
    assert len(files) >= 7
    for f in files:
        assert list(yaml.safe_load_all(f.read_text())), f
    json.loads(dc.DASHBOARD.read_text())


def test_the_repo_files_pass_every_check(cfg: SluiceConfig) -> None:
    assert dc.all_problems(cfg) == []


@pytest.mark.parametrize("ref", ["redis", "redis:latest", "apache/kafka:latest",
                                 "registry:5000/team/img", "grafana/grafana:main"])
def test_unpinned_images_are_refused(ref: str) -> None:
    assert dc.image_problem(ref) is not None


@pytest.mark.parametrize("ref", ["apache/kafka:4.1.1", "flink:2.2.1-scala_2.12-java17",
                                 "prom/prometheus:v3.1.0", "registry:5000/img:1.2",
                                 "x@sha256:" + "a" * 64])
def test_pinned_images_pass(ref: str) -> None:
    assert dc.image_problem(ref) is None


def test_compose_with_latest_fails(compose: dict) -> None:
    assert dc.check_compose_images(compose) == []
    bad = copy.deepcopy(compose)
    bad["services"]["redis"]["image"] = "redis:latest"
    assert dc.check_compose_images(bad) == ["service redis: redis:latest: tag latest"]
    del bad["services"]["grafana"]["image"]
    assert "service grafana: no image" in dc.check_compose_images(bad)


def test_dockerfile_base_images_are_pinned() -> None:
    text = dc.DOCKERFILE.read_text()
    assert dc.dockerfile_from_images(text) == ["flink:2.2.1-scala_2.12-java17"] * 2
    assert dc.check_dockerfile_images(text) == []
    assert dc.check_dockerfile_images(text.replace("2.2.1-scala_2.12-java17", "latest", 1))


def test_k8s_images_are_pinned(k8s: list[dict]) -> None:
    assert [ref for _, ref in dc.k8s_images(k8s)] == ["sluice-flink:0.1.0"]
    bad = copy.deepcopy(k8s)
    next(d for d in bad if d["kind"] == "FlinkDeployment")["spec"]["image"] = "sluice-flink"
    assert dc.check_k8s_images(bad)


def test_mounted_files_exist(compose: dict) -> None:
    mounts = list(dc.compose_bind_mounts(compose))
    assert ("grafana", "./grafana/dashboards/sluice-pipeline.json") in mounts
    assert ("flink-jobmanager", "../flink-conf/config.yaml") in mounts
    bad = copy.deepcopy(compose)
    bad["services"]["prometheus"]["volumes"][0] = "./prometheus/missing.yml:/etc/p.yml:ro"
    assert dc.check_compose_files(bad) == [
        "service prometheus: mounted ./prometheus/missing.yml does not exist"]


def test_dockerfile_copies_exist() -> None:
    text = dc.DOCKERFILE.read_text()
    srcs = dc.dockerfile_copy_sources(text)
    assert "flink-conf/config.yaml" in srcs and "docker/flink-entrypoint.sh" in srcs
    assert dc.check_dockerfile_copies(text) == []
    bad = text + "\nCOPY docker/nope.sh /x\nCOPY out/package/nothing/ /y\n"
    assert dc.check_dockerfile_copies(bad) == [
        f"COPY docker/nope.sh: {REPO_ROOT / 'docker/nope.sh'} does not exist",
        "COPY out/package/nothing/: `sluice package` writes no nothing"]


def test_dockerfile_pins_match_pyproject() -> None:
    text, pyproject = dc.DOCKERFILE.read_text(), dc.load_pyproject()
    assert dc.pyproject_pins(pyproject)["apache-flink"] == "2.2.1"
    assert dc.dockerfile_pins(text) == dc.pyproject_pins(pyproject)
    assert dc.check_dockerfile_pins(text, pyproject) == []
    drifted = text.replace('"avro==1.12.2"', '"avro==1.11.3"')
    assert dc.check_dockerfile_pins(drifted, pyproject) == [
        "Dockerfile pins avro==1.11.3, pyproject.toml avro==1.12.2"]
    bumped = copy.deepcopy(pyproject)
    bumped["project"]["dependencies"].append("numpy==2.1.3")
    assert dc.check_dockerfile_pins(text, bumped) == [
        "pyproject.toml pins numpy==2.1.3, the Dockerfile does not install it"]


def test_ports_agree_with_the_default_config(compose: dict, cfg: SluiceConfig) -> None:
    assert dc.check_compose_ports(compose, cfg) == []
    moved = cfg.with_overrides(kafka={"bootstrap_servers": "127.0.0.1:9999"})
    assert dc.check_compose_ports(compose, moved) == [
        "kafka.bootstrap_servers 127.0.0.1:9999: no broker publishes and advertises 9999"]
    bad = copy.deepcopy(compose)
    bad["services"]["registry"]["ports"] = ["8080:8080"]
    assert any("registry.url port 18081" in p for p in dc.check_compose_ports(bad, cfg))
    bad = copy.deepcopy(compose)
    bad["services"]["kafka-2"]["environment"]["KAFKA_TRANSACTION_MAX_TIMEOUT_MS"] = 60000
    assert dc.check_compose_ports(bad, cfg) == [
        "service kafka-2: transaction.max.timeout.ms 60000 < kafka.transaction_timeout_ms 900000"]


def test_prometheus_scrapes_the_flink_reporter(compose: dict) -> None:
    prom = yaml.safe_load(dc.PROMETHEUS.read_text())
    assert dc.check_prometheus(prom, compose) == []
    prom["scrape_configs"][0]["static_configs"][0]["targets"] = ["jobmanager:9250"]
    assert len(dc.check_prometheus(prom, compose)) == 2


def test_topics_agree_with_the_default_config(cfg: SluiceConfig) -> None:
    script = dc.CREATE_TOPICS.read_text()
    assert set(dc.created_topics(script)) == set(cfg.topics.all())
    assert dc.check_topics(script, cfg) == []
    renamed = cfg.with_overrides(topics={"alerts": "alerts.v2"})
    assert dc.check_topics(script, renamed) == [
        "topic alerts.v2 of sluice.yaml is not created",
        "created topic alerts is not in sluice.yaml"]
    assert dc.check_topics(script.replace("create devices compact", "create devices"), cfg) == [
        "topic devices: compacted=False, the job expects True"]


def test_dashboard_metrics_are_registered_by_the_jobs() -> None:
    dash = json.loads(dc.DASHBOARD.read_text())
    assert dc.check_dashboard(dash) == []
    bad = json.loads(dc.DASHBOARD.read_text().replace("sluice_ingest_records_in",
                                                      "sluice_ingest_recordsIn"))
    problems = dc.check_dashboard(bad)
    assert ("dashboard queries flink_taskmanager_job_task_operator_sluice_ingest_recordsIn, which "
            "no sluice job registers (sluice.metrics_catalog)") in problems
    assert "dashboard does not show sluice.ingest.records_in" in problems
    # The scoring job's counters and the latency gauges are checked too.
    for name, problem in [
            ("sluice_scoring_model_switches", "dashboard does not show sluice.scoring.model_switches"),
            ("sluice_scoring_drift_events", "dashboard does not show sluice.scoring.drift_events"),
            ("sluice_ingest_decode_us_p99", "dashboard does not show the p99 of sluice.ingest.decode_us")]:
        assert problem in dc.check_dashboard(
            json.loads(dc.DASHBOARD.read_text().replace(name, name + "_gone")))


def test_flink_deployment(k8s: list[dict]) -> None:
    assert dc.check_k8s(k8s) == []
    dep = next(d for d in k8s if d["kind"] == "FlinkDeployment")
    assert dep["spec"]["flinkVersion"] == "v2_2"
    bad = copy.deepcopy(k8s)
    fd = next(d for d in bad if d["kind"] == "FlinkDeployment")
    fd["spec"]["job"]["upgradeMode"] = "stateless"
    fd["spec"]["flinkConfiguration"]["s3.secret-key"] = "hunter2"
    fd["spec"]["podTemplate"]["spec"]["containers"][0]["env"].append(
        {"name": "SLUICE_KAFKA_SASL_PASSWORD", "value": "hunter2"})
    fd["spec"]["job"]["args"] = ["-py", "/opt/sluice/jobs/missing.py"]
    bad.append({"kind": "Secret", "metadata": {"name": "creds"}, "data": {"p": "aHVudGVyMg=="}})
    assert sorted(dc.check_k8s(bad)) == sorted([
        "Secret/creds: literal secret values in the repo",
        "sluice-pipeline: job.upgradeMode is stateless, not savepoint",
        "sluice-pipeline: entry point /opt/sluice/jobs/missing.py is not a job the image ships",
        "sluice-pipeline: flinkConfiguration s3.secret-key holds a secret literally",
        "sluice-pipeline: env SLUICE_KAFKA_SASL_PASSWORD is a literal, not a secretKeyRef",
    ])


def test_container_config_is_the_flink_conf_template_opened_up(tmp_path: Path) -> None:
    """The compose containers' config is the repo's flink-conf/config.yaml, rendered: no
    placeholder left, loopback binds replaced, the Prometheus reporter on, the rest kept."""
    template = REPO_ROOT / "flink-conf" / "config.yaml"
    dist = tmp_path / "config.dist.yaml"
    dist.write_text("env:\n  java:\n    opts:\n      all: --add-opens=java.base/java.util=ALL-UNNAMED\n")
    conf = render(template, dist=dist, env={"TASK_MANAGER_NUMBER_OF_TASK_SLOTS": "4"},
                  hostname="tm-1")
    text = yaml.safe_dump(conf)
    assert "${" not in text and "127.0.0.1" not in text
    assert conf["jobmanager"]["rpc"]["address"] == "flink-jobmanager"
    assert conf["taskmanager"]["host"] == "tm-1"
    assert conf["taskmanager"]["numberOfTaskSlots"] == 4
    assert conf["rest"]["bind-address"] == "0.0.0.0"
    assert conf["env"]["java"]["opts"]["all"] == "--add-opens=java.base/java.util=ALL-UNNAMED"
    assert conf["metrics"]["reporter"]["prom"]["port"] == "9249"
    assert (conf["metrics"]["reporter"]["prom"]["factory"]["class"]
            == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory")
    assert conf["execution"]["checkpointing"]["dir"] == "file:///flink-data/checkpoints"
    template_conf = yaml.safe_load(template.read_text().replace("${", "x{"))
    assert conf["jobmanager"]["memory"] == template_conf["jobmanager"]["memory"]
    assert conf["state"] == template_conf["state"]
