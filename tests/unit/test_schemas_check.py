"""`sluice schemas check`: the repo's schemas, and each kind of incompatible change
in throw-away schema trees (subjects.yaml + <subject>/v<N>.avsc, as in schemas/)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml
from typer.testing import CliRunner

from sluice.cli import app
from sluice.config import REPO_ROOT
from sluice.native import AvroDecoder
from sluice.schemas_check import (
    BAD_FILE_NAME,
    KEY_SCHEMA_CHANGED,
    NEW_VERSION,
    NO_VERSIONS,
    PARSE_ERROR,
    PUBLISHED_VERSION_MODIFIED,
    PUBLISHED_VERSION_REMOVED,
    SCHEMA_WARNING,
    UNLISTED_SUBJECT,
    VERSION_GAP,
    CheckResult,
    SchemasCheckError,
    check_schemas,
)

SCHEMAS = REPO_ROOT / "schemas"
SUBJECT = "things-value"


def rec(*fields: dict[str, Any], name: str = "Thing") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "dev.sluice.test", "fields": list(fields)}


def fld(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def write_tree(root: Path, subjects: dict[str, tuple[str | None, list[Any]]]) -> Path:
    """subjects: name -> (compatibility level or None for the default, [v1, v2, ...]).
    A version given as a str is written verbatim (for unparsable files)."""
    root.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"default_compatibility": "BACKWARD_TRANSITIVE", "subjects": {}}
    for subject, (level, versions) in subjects.items():
        entry: dict[str, Any] = {"topic": subject.rsplit("-", 1)[0],
                                 "part": "key" if subject.endswith("-key") else "value"}
        if level:
            entry["compatibility"] = level
        spec["subjects"][subject] = entry
        (root / subject).mkdir(exist_ok=True)
        for n, schema in enumerate(versions, start=1):
            text = schema if isinstance(schema, str) else json.dumps(schema, indent=2)
            (root / subject / f"v{n}.avsc").write_text(text)
    (root / "subjects.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def check_one(tmp_path: Path, level: str | None, *versions: Any, **kw: Any) -> CheckResult:
    return check_schemas(write_tree(tmp_path / "schemas", {SUBJECT: (level, list(versions))}), **kw)


def only_failure(result: CheckResult) -> Any:
    assert len(result.failures) == 1, [f.message for f in result.failures]
    return result.failures[0]


BASE = rec(fld("id", "string"), fld("count", "long"), fld("state", {
    "type": "enum", "name": "State", "symbols": ["ON", "OFF", "BROKEN"]}))


# ---------------------------------------------------------------------------------------
# the repository's schemas
# ---------------------------------------------------------------------------------------


def test_repo_schemas_pass() -> None:
    result = check_schemas(SCHEMAS)
    assert result.ok, [f.message for f in result.failures]
    assert result.versions["telemetry-value"] == [1, 2, 3]
    # BACKWARD_TRANSITIVE: v2 reads v1, v3 reads v1 and v2
    pairs = {(p.reader, p.writer) for p in result.pairs if p.subject == "telemetry-value"}
    assert pairs == {(2, 1), (3, 1), (3, 2)}
    assert all(p.compatible for p in result.pairs)


def _fa_write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def test_telemetry_v3_reads_v1_and_v2_data() -> None:
    """Not only the checker: v3 really decodes v1 and v2 records (fastavro and the Rust decoder)."""
    s = {n: json.loads((SCHEMAS / f"telemetry-value/v{n}.avsc").read_text()) for n in (1, 2, 3)}
    v1 = {"event_id": "e1", "device_id": "d1", "ts": 1_700_000_000_000, "temperature_c": 21.5,
          "vibration_rms": 0.25, "status": "WARN"}
    v2 = {**v1, "event_id": "e2", "status": "FAULT", "humidity_pct": 40.5, "firmware": "1.2.3",
          "sample_count": 2**31 - 1}
    expected = {
        1: {**{k: v for k, v in v1.items() if k != "vibration_rms"}, "vibration_rms_g": 0.25,
            "humidity_pct": None, "firmware": None, "sample_count": 1},
        2: {**{k: v for k, v in v2.items() if k != "vibration_rms"}, "vibration_rms_g": 0.25},
    }
    bodies = {1: _fa_write(s[1], v1), 2: _fa_write(s[2], v2)}

    dec = AvroDecoder(json.dumps(s[3]), record_as="dict")
    for n in (1, 2):
        dec.add_writer_schema(n, json.dumps(s[n]))
    for n in (1, 2):
        got_fa = fastavro.schemaless_reader(io.BytesIO(bodies[n]), fastavro.parse_schema(s[n]),
                                            fastavro.parse_schema(s[3]))
        got_fa["ts"] = int(got_fa["ts"].timestamp() * 1000)
        assert got_fa == expected[n]
        sid, got_rs = dec.decode(b"\x00" + n.to_bytes(4, "big") + bodies[n])
        assert sid == n and got_rs == expected[n]
        assert list(got_rs) == [f["name"] for f in s[3]["fields"]]
        assert isinstance(got_rs["temperature_c"], float)


# ---------------------------------------------------------------------------------------
# each kind of incompatible change
# ---------------------------------------------------------------------------------------


def test_removed_field_without_default_fails_forward(tmp_path: Path) -> None:
    v2 = rec(fld("id", "string"), BASE["fields"][2])  # drops 'count'
    f = only_failure(check_one(tmp_path, "FORWARD", BASE, v2))
    assert (f.rule, f.field, f.location, f.versions) == (
        "READER_FIELD_MISSING_DEFAULT_VALUE", "count", "/fields/1", (1, 2))
    assert f.message == (
        "things-value v1 cannot read v2 data (FORWARD): field 'count' missing from writer and has "
        "no default (READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1)"
    )
    # the same change is fine BACKWARD: the new reader simply ignores the field
    assert check_one(tmp_path / "b", "BACKWARD", BASE, v2).ok


def test_added_field_without_default_fails_backward(tmp_path: Path) -> None:
    v2 = rec(*BASE["fields"], fld("site", "string"))
    f = only_failure(check_one(tmp_path, "BACKWARD", BASE, v2))
    assert (f.rule, f.field, f.location, f.versions) == (
        "READER_FIELD_MISSING_DEFAULT_VALUE", "site", "/fields/3", (2, 1))
    assert f.message == (
        "things-value v2 cannot read v1 data (BACKWARD): field 'site' missing from writer and has "
        "no default (READER_FIELD_MISSING_DEFAULT_VALUE at /fields/3)"
    )


def test_added_optional_field_with_default_passes(tmp_path: Path) -> None:
    v2 = rec(*BASE["fields"], fld("site", ["null", "string"], default=None))
    for level in ("BACKWARD", "FORWARD", "FULL_TRANSITIVE"):
        result = check_one(tmp_path / level, level, BASE, v2)
        assert result.ok, [f.message for f in result.failures]
        assert result.pairs and all(p.compatible for p in result.pairs)


def test_type_narrowing_fails(tmp_path: Path) -> None:
    v2 = rec(fld("id", "string"), fld("count", "int"), BASE["fields"][2])
    f = only_failure(check_one(tmp_path, "BACKWARD", BASE, v2))
    assert (f.rule, f.field, f.location) == ("TYPE_MISMATCH", "count", "/fields/1/type")
    assert f.message == (
        "things-value v2 cannot read v1 data (BACKWARD): field 'count': writer type long cannot be "
        "read as int (narrowing long→int; Avro only promotes int→long→float→double) "
        "(TYPE_MISMATCH at /fields/1/type)"
    )


def test_promotion_passes(tmp_path: Path) -> None:
    v1 = rec(fld("n", "int"), fld("x", "float"))
    v2 = rec(fld("n", "long"), fld("x", "double"))
    assert check_one(tmp_path, "BACKWARD", v1, v2).ok
    f = check_one(tmp_path / "fwd", "FORWARD", v1, v2).failures
    assert {x.field for x in f} == {"n", "x"} and {x.rule for x in f} == {"TYPE_MISMATCH"}


def test_renamed_field_without_alias_fails(tmp_path: Path) -> None:
    renamed = rec(fld("id", "string"), fld("total", "long"), BASE["fields"][2])
    f = only_failure(check_one(tmp_path, "BACKWARD", BASE, renamed))
    assert (f.rule, f.field, f.location) == ("READER_FIELD_MISSING_DEFAULT_VALUE", "total", "/fields/1")
    assert f.message == (
        "things-value v2 cannot read v1 data (BACKWARD): field 'total' missing from writer and has "
        "no default; the writer's field(s) 'count' are not read: if 'total' is a rename, add "
        "\"aliases\": [\"count\"] to it (READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1)"
    )
    aliased = rec(fld("id", "string"), fld("total", "long", aliases=["count"]), BASE["fields"][2])
    assert check_one(tmp_path / "alias", "BACKWARD", BASE, aliased).ok


def test_enum_symbol_removed_fails_without_enum_default(tmp_path: Path) -> None:
    enum = {"type": "enum", "name": "State", "symbols": ["ON", "OFF"]}
    v2 = rec(*BASE["fields"][:2], fld("state", enum))
    f = only_failure(check_one(tmp_path, "BACKWARD", BASE, v2))
    assert (f.rule, f.field, f.location) == ("MISSING_ENUM_SYMBOLS", "state", "/fields/2/type/symbols")
    assert f.message == (
        "things-value v2 cannot read v1 data (BACKWARD): field 'state': the reader's enum "
        "dev.sluice.test.State lacks writer symbol(s) 'BROKEN' and has no enum \"default\" to read "
        "them as (MISSING_ENUM_SYMBOLS at /fields/2/type/symbols)"
    )
    # with an enum default the reader maps unknown symbols to it
    v2_default = rec(*BASE["fields"][:2], fld("state", {**enum, "default": "OFF"}))
    assert check_one(tmp_path / "default", "BACKWARD", BASE, v2_default).ok


def test_transitive_checks_all_predecessors(tmp_path: Path) -> None:
    v1 = rec(fld("a", "string"))
    v2 = rec(fld("b", "string", default="x"))  # reads v1 (default), drops a
    v3 = rec(fld("b", "string"))  # reads v2, but not v1 (no b there, no default)
    plain = check_one(tmp_path / "plain", "BACKWARD", v1, v2, v3)
    assert plain.ok, [f.message for f in plain.failures]
    assert {(p.reader, p.writer) for p in plain.pairs} == {(2, 1), (3, 2)}

    transitive = check_one(tmp_path / "transitive", "BACKWARD_TRANSITIVE", v1, v2, v3)
    f = only_failure(transitive)
    assert f.versions == (3, 1) and f.rule == "READER_FIELD_MISSING_DEFAULT_VALUE" and f.field == "b"
    assert f.message.startswith("things-value v3 cannot read v1 data (BACKWARD_TRANSITIVE): field 'b'")


def test_full_checks_both_directions(tmp_path: Path) -> None:
    v2 = rec(*BASE["fields"], fld("site", "string"))  # forward-compatible only
    f = only_failure(check_one(tmp_path, "FULL", BASE, v2))
    assert f.message.startswith("things-value v2 cannot read v1 data (FULL, backward): field 'site'")
    pairs = check_one(tmp_path / "x", "FULL", BASE, v2).pairs
    assert {(p.reader, p.writer) for p in pairs} == {(2, 1), (1, 2)}


def test_none_checks_nothing(tmp_path: Path) -> None:
    result = check_one(tmp_path, "NONE", BASE, rec(fld("other", "int")))
    assert result.ok and result.pairs == []


def test_union_branch_and_record_name(tmp_path: Path) -> None:
    v1 = rec(fld("v", ["null", "long"], default=None))
    v2 = rec(fld("v", ["null", "int"], default=None), name="Other")
    rules = {(f.rule, f.field) for f in check_one(tmp_path, "BACKWARD", v1, v2).failures}
    assert rules == {("MISSING_UNION_BRANCH", "v"), ("NAME_MISMATCH", None)}


def test_several_incompatibilities_are_reported_one_by_one(tmp_path: Path) -> None:
    v2 = rec(fld("id", "bytes"), fld("count", "int"), fld("state", {
        "type": "enum", "name": "State", "symbols": ["ON"]}), fld("extra", "int"))
    failures = check_one(tmp_path, "BACKWARD", BASE, v2).failures
    assert {(f.rule, f.field, f.location) for f in failures} == {
        ("TYPE_MISMATCH", "count", "/fields/1/type"),
        ("MISSING_ENUM_SYMBOLS", "state", "/fields/2/type/symbols"),
        ("READER_FIELD_MISSING_DEFAULT_VALUE", "extra", "/fields/3"),
    }  # string -> bytes is a legal promotion


def test_nested_field_path(tmp_path: Path) -> None:
    inner = {"type": "record", "name": "Inner", "fields": [fld("q", "int")]}
    v1 = rec(fld("items", {"type": "array", "items": {**inner, "fields": [fld("q", "long")]}}))
    v2 = rec(fld("items", {"type": "array", "items": inner}))
    f = only_failure(check_one(tmp_path, "BACKWARD", v1, v2))
    assert (f.rule, f.field, f.location) == (
        "TYPE_MISMATCH", "items[].q", "/fields/0/type/items/fields/0/type")


# ---------------------------------------------------------------------------------------
# keys, gaps, files
# ---------------------------------------------------------------------------------------


def test_key_schema_change_fails(tmp_path: Path) -> None:
    key = rec(fld("device_id", "string"), name="Key")
    # even a compatible change (a field with a default) changes the key bytes
    changed = rec(fld("device_id", "string"), fld("site", "string", default=""), name="Key")
    tree = write_tree(tmp_path / "s", {"things-key": ("BACKWARD", [key, changed])})
    f = only_failure(check_schemas(tree))
    assert (f.rule, f.subject, f.versions) == (KEY_SCHEMA_CHANGED, "things-key", (1, 2))
    assert f.message == (
        "things-key v2 changes the key schema of v1: key schemas never change (the key decides the "
        "partition); keep the key schema as it is"
    )
    # re-formatted but identical is not a change
    tree = write_tree(tmp_path / "same", {"things-key": ("BACKWARD", [key, json.dumps(key)])})
    assert check_schemas(tree).ok


def test_version_gap_fails(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "s", {SUBJECT: ("BACKWARD", [BASE, BASE, BASE])})
    (tree / SUBJECT / "v2.avsc").unlink()
    f = only_failure(check_schemas(tree))
    assert (f.rule, f.versions) == (VERSION_GAP, (2,))
    assert f.message == (
        "things-value: v2 missing (found v1, v3); versions are numbered v1, v2, ... without gaps")
    # v3 is still checked against v1
    assert {(p.reader, p.writer) for p in check_schemas(tree).pairs} == {(3, 1)}


def test_unparsable_schema_fails_naming_file(tmp_path: Path) -> None:
    bad_json = '{"type": "record", "name": "Thing", "fields": [}'
    bad_avro = json.dumps(rec(fld("x", "no_such_type")))
    bad_default = json.dumps(rec(fld("x", "int", default="three")))
    tree = write_tree(tmp_path / "schemas", {SUBJECT: ("BACKWARD", [BASE, bad_json, bad_avro, bad_default])})
    failures = check_schemas(tree).failures
    assert {f.rule for f in failures} == {PARSE_ERROR}
    by_version = {f.versions: f.message for f in failures}
    assert by_version[(2,)].startswith("schemas/things-value/v2.avsc does not parse: not valid JSON: ")
    assert by_version[(3,)].startswith(
        "schemas/things-value/v3.avsc does not parse: not a valid Avro schema: ")
    assert "no_such_type" in by_version[(3,)]
    assert "three" in by_version[(4,)] or "Default value" in by_version[(4,)]


def test_ignored_logical_type_is_a_warning(tmp_path: Path) -> None:
    odd = rec(fld("ts", {"type": "long", "logicalType": "timestamp-milis"}))
    result = check_one(tmp_path, "BACKWARD", odd)
    assert result.ok
    assert [f.rule for f in result.findings] == [SCHEMA_WARNING]
    assert "timestamp-milis" in result.findings[0].message


def test_tree_problems(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "s", {SUBJECT: ("BACKWARD", [BASE]), "empty-value": (None, [])})
    (tree / SUBJECT / "latest.avsc").write_text(json.dumps(BASE))
    (tree / "stray-value").mkdir()
    (tree / "stray-value" / "v1.avsc").write_text(json.dumps(BASE))
    rules = {(f.subject, f.rule) for f in check_schemas(tree).failures}
    assert rules == {
        (SUBJECT, BAD_FILE_NAME), ("empty-value", NO_VERSIONS), ("stray-value", UNLISTED_SUBJECT)}


def test_unknown_level_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SchemasCheckError, match="SIDEWAYS"):
        check_one(tmp_path, "SIDEWAYS", BASE)
    with pytest.raises(SchemasCheckError, match="does not exist"):
        check_schemas(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------
# --base: a real git repository
# ---------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=sluice-test", "-c", "user.email=test@sluice.invalid",
         "-c", "commit.gpgsign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo whose first commit publishes things-value v1 and v2."""
    root = tmp_path / "repo"
    v2 = rec(*BASE["fields"], fld("site", ["null", "string"], default=None))
    write_tree(root / "schemas", {SUBJECT: ("BACKWARD_TRANSITIVE", [BASE, v2])})
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "publish v1 v2")
    return root


def test_base_unchanged_and_new_version_pass(repo: Path) -> None:
    v2 = json.loads((repo / "schemas" / SUBJECT / "v2.avsc").read_text())
    (repo / "schemas" / SUBJECT / "v2.avsc").write_text(json.dumps(v2))  # re-formatted only
    v3 = rec(*v2["fields"], fld("note", "string", default=""))
    (repo / "schemas" / SUBJECT / "v3.avsc").write_text(json.dumps(v3))
    result = check_schemas(repo / "schemas", base="HEAD")
    assert result.ok, [f.message for f in result.failures]
    assert [(f.rule, f.versions) for f in result.findings] == [(NEW_VERSION, (3,))]


def test_base_modified_published_version_fails(repo: Path) -> None:
    v1 = rec(*BASE["fields"], fld("note", "string", default=""))
    (repo / "schemas" / SUBJECT / "v1.avsc").write_text(json.dumps(v1))
    result = check_schemas(repo / "schemas", base="HEAD")
    f = only_failure(result)
    assert (f.rule, f.versions) == (PUBLISHED_VERSION_MODIFIED, (1,))
    assert f.message == (
        "schemas/things-value/v1.avsc was modified since HEAD (added 'note'): published versions "
        "are immutable; revert it and add the change as a new version v3"
    )
    # without --base the same tree is fine: only the history knows v1 was published
    assert check_schemas(repo / "schemas").ok


def test_base_removed_published_version_fails(repo: Path) -> None:
    (repo / "schemas" / SUBJECT / "v2.avsc").unlink()
    f = only_failure(check_schemas(repo / "schemas", base="HEAD"))
    assert (f.rule, f.versions) == (PUBLISHED_VERSION_REMOVED, (2,))
    assert f.message == (
        "things-value v2 exists at HEAD but was removed: published versions are never removed "
        "(restore schemas/things-value/v2.avsc)"
    )


def test_base_new_version_checked_against_published_text(repo: Path) -> None:
    # v1 is edited in place to add 'extra' (one error) and new v3 requires 'extra':
    # fine against the edited v1, but it cannot read v1 data as it was published.
    folder = repo / "schemas" / SUBJECT
    v1_edited = rec(*BASE["fields"], fld("extra", "int", default=0))
    folder.joinpath("v1.avsc").write_text(json.dumps(v1_edited))
    v2 = json.loads(folder.joinpath("v2.avsc").read_text())
    folder.joinpath("v2.avsc").write_text(json.dumps(rec(*v2["fields"], fld("extra", "int", default=0))))
    folder.joinpath("v3.avsc").write_text(json.dumps(rec(*v2["fields"], fld("extra", "int"))))
    result = check_schemas(repo / "schemas", base="HEAD")
    assert {f.rule for f in result.failures} == {
        PUBLISHED_VERSION_MODIFIED, "READER_FIELD_MISSING_DEFAULT_VALUE"}
    compat = result.by_rule("READER_FIELD_MISSING_DEFAULT_VALUE")
    assert {f.versions for f in compat} == {(3, 1), (3, 2)}
    assert all("as published at HEAD" in f.message for f in compat)
    assert compat[0].message.startswith(
        "things-value v3 cannot read data of v1 as published at HEAD (BACKWARD_TRANSITIVE): field 'extra'")


def test_base_bad_ref_is_a_usage_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SchemasCheckError, match="no-such-ref"):
        check_schemas(repo / "schemas", base="no-such-ref")
    lone = write_tree(tmp_path / "not-a-repo" / "schemas", {SUBJECT: (None, [BASE])})
    with pytest.raises(SchemasCheckError, match="git"):
        check_schemas(lone, base="HEAD")


# ---------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------


def _cli_config(tmp_path: Path, schemas_dir: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "sluice.yaml"
    cfg.write_text(yaml.safe_dump({"schemas": {"dir": str(schemas_dir)}}))
    return cfg


def test_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = write_tree(tmp_path / "good", {SUBJECT: ("BACKWARD", [BASE])})
    res = runner.invoke(app, ["schemas", "check", "--config", str(_cli_config(tmp_path / "g", good))])
    assert res.exit_code == 0, res.output
    assert "0 failures" in " ".join(res.output.split())

    bad = write_tree(tmp_path / "bad", {SUBJECT: ("BACKWARD", [BASE, rec(fld("x", "int"))])})
    res = runner.invoke(app, ["schemas", "check", "--config", str(_cli_config(tmp_path / "b", bad))])
    assert res.exit_code == 1, res.output
    assert "things-value" in res.output and "failures" in res.output

    res = runner.invoke(app, ["schemas", "check", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2, res.output
    res = runner.invoke(app, ["schemas", "check", "--config", str(_cli_config(tmp_path / "g", good)),
                              "--base", "HEAD"])
    assert res.exit_code == 2, res.output  # not a git repository


def test_cli_repo_schemas_pass() -> None:
    res = CliRunner().invoke(app, ["schemas", "check"])
    assert res.exit_code == 0, res.output
