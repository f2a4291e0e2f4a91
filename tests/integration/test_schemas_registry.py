"""`sluice schemas check --registry` and `sluice.registry.register_all` against the live
registry (Apicurio's Confluent API at /apis/ccompat/v7 on the local stack).

Apicurio only enforces compatibility on a subject once a level is set for it, so every
subject here gets its level explicitly. Subjects are unique per test and deleted after.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from typer.testing import CliRunner

from sluice.cli import app
from sluice.config import SluiceConfig, dump_config
from sluice.registry import read_schema, register_all, schema_versions
from sluice.schemas_check import (
    REGISTRY_COMPATIBLE,
    REGISTRY_ERROR,
    REGISTRY_INCOMPATIBLE,
    REGISTRY_LEVEL_MISMATCH,
    REGISTRY_SUBJECT_UNKNOWN,
    check,
    check_schemas,
)

pytestmark = pytest.mark.integration


def rec(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Thing", "namespace": "dev.sluice.test", "fields": list(fields)}


V1 = rec({"name": "id", "type": "string"})
V2_OPTIONAL = rec({"name": "id", "type": "string"},
                  {"name": "site", "type": ["null", "string"], "default": None})
V2_REQUIRED = rec({"name": "id", "type": "string"}, {"name": "site", "type": "string"})


def text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))


def tree(root: Path, subject: str, level: str, *versions: dict[str, Any]) -> Path:
    (root / subject).mkdir(parents=True)
    (root / "subjects.yaml").write_text(yaml.safe_dump({"subjects": {subject: {"compatibility": level}}}))
    for n, schema in enumerate(versions, start=1):
        (root / subject / f"v{n}.avsc").write_text(json.dumps(schema, indent=2))
    return root


@pytest.fixture
def client(stack: SluiceConfig) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient(stack.registry.client_conf()) as c:
        yield c


@pytest.fixture
def subjects(client: SchemaRegistryClient) -> Iterator[list[str]]:
    """Unique subject names; deleted (soft, then permanently) after the test."""
    made: list[str] = []
    yield made
    for s in made:
        for permanent in (False, True):
            try:
                client.delete_subject(s, permanent=permanent)
            except SchemaRegistryError:
                pass


def new_subject(subjects: list[str]) -> str:
    s = f"sluice-check-{uuid.uuid4().hex[:10]}-value"
    subjects.append(s)
    return s


def publish(client: SchemaRegistryClient, subject: str, level: str, *versions: dict[str, Any]) -> None:
    for v in versions:
        client.register_schema(subject, Schema(text(v), "AVRO"))
    client.set_compatibility(subject_name=subject, level=level)
    assert client.get_compatibility(subject) == level


def test_registry_rejects_incompatible_and_accepts_compatible(
    stack: SluiceConfig, client: SchemaRegistryClient, subjects: list[str], tmp_path: Path
) -> None:
    subject = new_subject(subjects)
    publish(client, subject, "BACKWARD", V1)
    conf = stack.registry.client_conf()

    # incompatible candidate: a required field v2 cannot fill from v1 data
    bad = check_schemas(tree(tmp_path / "bad", subject, "BACKWARD", V1, V2_REQUIRED), registry_conf=conf)
    assert {f.rule for f in bad.failures} == {"READER_FIELD_MISSING_DEFAULT_VALUE", REGISTRY_INCOMPATIBLE}
    reg = bad.by_rule(REGISTRY_INCOMPATIBLE)[0]
    assert reg.subject == subject and reg.versions == (2,) and reg.level == "BACKWARD"
    assert f"{subject} v2: the registry at {conf['url']} says it is incompatible (BACKWARD, against " \
           "registered version 1) and would refuse to register it: v2 cannot read registry version 1: " \
           "field 'site' missing from writer and has no default " \
           "(READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1)" == reg.message

    # the registry catches it on its own: locally NONE checks nothing
    alone = check_schemas(tree(tmp_path / "none", subject, "NONE", V1, V2_REQUIRED), registry_conf=conf)
    assert [f.rule for f in alone.failures] == [REGISTRY_INCOMPATIBLE]
    assert [f.rule for f in alone.findings if f.severity == "warning"] == [REGISTRY_LEVEL_MISMATCH]

    # ... and really refuses to register it
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(text(V2_REQUIRED), "AVRO"))
    assert refused.value.http_status_code == 409

    # compatible candidate: an optional field with a default
    good = check_schemas(tree(tmp_path / "good", subject, "BACKWARD", V1, V2_OPTIONAL), registry_conf=conf)
    assert good.ok, [f.message for f in good.failures]
    assert [(f.rule, f.versions) for f in good.findings] == [(REGISTRY_COMPATIBLE, (2,))]
    client.register_schema(subject, Schema(text(V2_OPTIONAL), "AVRO"))
    assert client.get_versions(subject) == [1, 2]


def test_registry_transitive_level_checks_all_versions(
    stack: SluiceConfig, client: SchemaRegistryClient, subjects: list[str], tmp_path: Path
) -> None:
    v1 = rec({"name": "a", "type": "string"})
    v2 = rec({"name": "b", "type": "string", "default": "x"})
    v3 = rec({"name": "b", "type": "string"})  # reads v2, not v1
    conf = stack.registry.client_conf()
    for level, accepted in (("BACKWARD", True), ("BACKWARD_TRANSITIVE", False)):
        subject = new_subject(subjects)
        publish(client, subject, level, v1, v2)
        result = check_schemas(tree(tmp_path / level, subject, "NONE", v1, v2, v3), registry_conf=conf)
        rules = {f.rule for f in result.findings if f.rule.startswith("REGISTRY_")}
        rules.discard(REGISTRY_LEVEL_MISMATCH)
        assert rules == ({REGISTRY_COMPATIBLE} if accepted else {REGISTRY_INCOMPATIBLE}), level
        if not accepted:
            assert "v3 cannot read registry version 1: field 'b' missing from writer" in (
                result.by_rule(REGISTRY_INCOMPATIBLE)[0].message)


def test_apicurio_subject_without_level(
    stack: SluiceConfig, client: SchemaRegistryClient, subjects: list[str], tmp_path: Path
) -> None:
    """Apicurio quirk: without a subject level, GET /config says NONE and registration
    accepts anything, but the test endpoint still judges as BACKWARD."""
    if "/apis/ccompat/" not in stack.registry.url:
        pytest.skip("Apicurio-specific behaviour")
    subject = new_subject(subjects)
    client.register_schema(subject, Schema(text(V1), "AVRO"))
    result = check_schemas(tree(tmp_path / "s", subject, "NONE", V1, V2_REQUIRED),
                           registry_conf=stack.registry.client_conf())
    [f] = result.failures
    assert (f.rule, f.level) == (REGISTRY_INCOMPATIBLE, "NONE")
    assert "although its level is NONE" in f.message
    client.register_schema(subject, Schema(text(V2_REQUIRED), "AVRO"))  # not enforced
    assert client.get_versions(subject) == [1, 2]


def test_unknown_subject_is_treated_as_compatible(
    stack: SluiceConfig, subjects: list[str], tmp_path: Path
) -> None:
    subject = new_subject(subjects)  # never registered
    result = check_schemas(tree(tmp_path / "s", subject, "BACKWARD", V1, V2_OPTIONAL),
                           registry_conf=stack.registry.client_conf())
    assert result.ok
    [f] = result.findings
    assert (f.rule, f.severity, f.versions) == (REGISTRY_SUBJECT_UNKNOWN, "info", (2,))
    assert f.message == (f"{subject} is not in the registry at {stack.registry.url} yet: nothing to be "
                         "compatible with, v2 treated as compatible")


def test_cli_registry_exit_codes(
    stack: SluiceConfig, client: SchemaRegistryClient, subjects: list[str], tmp_path: Path
) -> None:
    subject = new_subject(subjects)
    publish(client, subject, "BACKWARD", V1)
    runner = CliRunner()
    for name, candidate, code in (("bad", V2_REQUIRED, 1), ("good", V2_OPTIONAL, 0)):
        schemas = tree(tmp_path / name / "schemas", subject, "NONE", V1, candidate)
        # no feature spec: its fields are checked against schemas.dir, which holds only this subject
        cfg = dump_config(stack.with_overrides(schemas={"dir": schemas}, features={"spec": None}),
                          tmp_path / name / "sluice.yaml")
        res = runner.invoke(app, ["schemas", "check", "--config", str(cfg), "--registry", stack.registry.url])
        assert res.exit_code == code, res.output
    # an unreachable registry is a failure, not a pass
    res = runner.invoke(app, ["schemas", "check", "--config", str(cfg), "--registry", "http://127.0.0.1:9/x"])
    assert res.exit_code == 1, res.output
    [f] = check_schemas(tmp_path / "good" / "schemas", registry_conf={"url": "http://127.0.0.1:9/x"}).failures
    assert f.rule == REGISTRY_ERROR
    assert f.message.startswith("cannot reach the registry at http://127.0.0.1:9/x: ")


def test_register_all_registers_telemetry_v1_to_v3(stack: SluiceConfig, client: SchemaRegistryClient) -> None:
    # the repo's subjects are shared with other tests: registration is idempotent
    ids = register_all(stack)
    assert len(ids["telemetry-value"]) == 3
    assert register_all(stack) == ids
    assert client.get_compatibility("telemetry-value") == "BACKWARD_TRANSITIVE"
    schemas_dir = stack.path(stack.schemas.dir)
    for n, path in enumerate(schema_versions(schemas_dir, "telemetry-value"), start=1):
        registered = client.lookup_schema("telemetry-value", Schema(read_schema(path), "AVRO"))
        assert registered.schema_id == ids["telemetry-value"][n - 1]
    # now the registry holds every local version: the check against it passes
    result = check(stack, registry_url=stack.registry.url)
    assert result.ok, [f.message for f in result.failures]
    assert {f.subject for f in result.by_rule(REGISTRY_COMPATIBLE)} == set(ids)


def test_auto_registering_a_later_version_registers_the_history_first(
    stack: SluiceConfig, client: SchemaRegistryClient, subjects: list[str], tmp_path: Path
) -> None:
    """A job that registers its output schema v2 on a fresh subject registers v1 first, so
    `sluice schemas register` afterwards finds the history in order. Negative control:
    v2 alone, then v1, is refused under BACKWARD (v1 cannot read v2's data). This is the
    order a fresh registry saw when a job ran before `sluice schemas register`."""
    from sluice.registry import output_schema

    v1 = rec({"name": "x", "type": "double"})
    v2 = rec({"name": "x", "type": ["null", "double"], "default": None})
    ours, control = new_subject(subjects), new_subject(subjects)
    schemas = tree(tmp_path / "schemas", ours, "BACKWARD", v1, v2)
    cfg = stack.with_overrides(schemas={"dir": str(schemas)})
    client.set_compatibility(subject_name=ours, level="BACKWARD")
    out = output_schema(cfg, f"{ours}/v2.avsc")
    assert len(client.get_versions(ours)) == 2
    first = client.lookup_schema(ours, Schema(text(v1), "AVRO"))
    assert first.version == 1 and first.schema_id != out.schema_id
    assert register_all(cfg)[ours][1] == out.schema_id

    client.set_compatibility(subject_name=control, level="BACKWARD")
    client.register_schema(control, Schema(text(v2), "AVRO"))
    with pytest.raises(SchemaRegistryError):
        client.register_schema(control, Schema(text(v1), "AVRO"))
