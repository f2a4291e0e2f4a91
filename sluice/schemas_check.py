"""`sluice schemas check`: every schema version against its predecessors.

For each subject of ``schemas/subjects.yaml`` the versions ``v1.avsc``, ``v2.avsc``, …
are checked pairwise under the subject's compatibility level, with the Avro
project's own checker (:class:`avro.compatibility.ReaderWriterCompatibilityChecker`):

* ``BACKWARD``: the new version, as reader, reads data of the previous one;
* ``FORWARD``: the previous version, as reader, reads data of the new one;
* ``FULL``: both; ``*_TRANSITIVE``: against every earlier version, not only the
  latest one; ``NONE``: no check.

It also refuses a key schema (``*-key`` subject, or ``part: key``) that changes at
all, a gap in the version numbers, a schema file that does not parse and a schema
folder that ``subjects.yaml`` does not list. Optionally:

* ``registry_conf``: ask a Confluent-API registry whether each subject's latest local
  version would be accepted (its compatibility endpoint, under the registry's level);
* ``base``: compare with the schemas at a git ref: published versions must not be
  modified or removed, and new versions are checked against the versions as they were
  published.

The result is a list of :class:`Finding` (subject, versions, rule, message); the
check fails if any finding has severity ``error``.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import avro.compatibility as avro_compat
import avro.errors
import avro.schema
import fastavro
import yaml
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityResult,
    SchemaCompatibilityType,
)

from sluice.registry import load_subjects

if TYPE_CHECKING:
    from sluice.config import SluiceConfig

LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)

# Rules of findings that are not Avro incompatibilities (those use the checker's
# names upper-cased: READER_FIELD_MISSING_DEFAULT_VALUE, TYPE_MISMATCH, ...).
PARSE_ERROR = "PARSE_ERROR"
BAD_FILE_NAME = "BAD_FILE_NAME"
VERSION_GAP = "VERSION_GAP"
NO_VERSIONS = "NO_VERSIONS"
UNLISTED_SUBJECT = "UNLISTED_SUBJECT"
KEY_SCHEMA_CHANGED = "KEY_SCHEMA_CHANGED"
SCHEMA_WARNING = "SCHEMA_WARNING"
PUBLISHED_VERSION_MODIFIED = "PUBLISHED_VERSION_MODIFIED"
PUBLISHED_VERSION_REMOVED = "PUBLISHED_VERSION_REMOVED"
NEW_VERSION = "NEW_VERSION"
REGISTRY_INCOMPATIBLE = "REGISTRY_INCOMPATIBLE"
REGISTRY_SUBJECT_UNKNOWN = "REGISTRY_SUBJECT_UNKNOWN"
REGISTRY_COMPATIBLE = "REGISTRY_COMPATIBLE"
REGISTRY_LEVEL_MISMATCH = "REGISTRY_LEVEL_MISMATCH"
REGISTRY_ERROR = "REGISTRY_ERROR"

Severity = Literal["error", "warning", "info"]
_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")
_NUMERIC_ORDER = {"int": 0, "long": 1, "float": 2, "double": 3}


class SchemasCheckError(ValueError):
    """The check cannot run at all (missing subjects.yaml, unknown level, bad git ref):
    a usage or configuration error, not a schema finding."""


@dataclass(frozen=True)
class Finding:
    """One problem (or, with severity info/warning, one remark) about a subject."""

    subject: str
    rule: str
    message: str
    versions: tuple[int, ...] = ()
    severity: Severity = "error"
    level: str | None = None
    field: str | None = None
    location: str | None = None
    file: str | None = None

    @property
    def failed(self) -> bool:
        return self.severity == "error"


@dataclass(frozen=True)
class PairCheck:
    """One reader/writer pair that was checked."""

    subject: str
    reader: int
    writer: int
    level: str
    compatible: bool
    source: str = "local"  # "local" or "base <ref>"


@dataclass
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    pairs: list[PairCheck] = field(default_factory=list)
    # subject -> the version numbers found on disk
    versions: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.failed]

    def by_rule(self, rule: str) -> list[Finding]:
        return [f for f in self.findings if f.rule == rule]

    def for_subject(self, subject: str) -> list[Finding]:
        return [f for f in self.findings if f.subject == subject]


@dataclass(frozen=True)
class Incompatibility:
    """One reason why a reader cannot read a writer's data, in plain words."""

    rule: str  # the avro checker's incompatibility type, upper-cased
    location: str  # JSON-pointer-like location in the reader schema, as the checker gives it
    field: str | None  # dotted reader field path, if the location is inside a field
    explanation: str

    def describe(self) -> str:
        return f"{self.explanation} ({self.rule} at {self.location})"


# ----------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Version:
    number: int
    file: str  # for messages: path relative to the schemas dir's parent when possible
    text: str
    data: Any | None = None  # parsed JSON
    schema: avro.schema.Schema | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


def parse_schema_text(text: str) -> tuple[Any, avro.schema.Schema, list[str]]:
    """Parse Avro schema JSON with the avro package (and fastavro, which also validates
    field defaults); returns (JSON data, avro schema, warnings). Raises ValueError with
    the parser's message."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    with warnings.catch_warnings(record=True) as caught:
        # avro warns (IgnoredLogicalType) instead of failing on unknown or misused
        # logical types; record those instead of letting a warnings filter decide.
        warnings.simplefilter("always")
        try:
            schema = avro.schema.parse(text)
        except (avro.errors.AvroException, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a valid Avro schema: {exc}") from None
    try:
        # avro 1.12 accepts field defaults that do not match the field type; fastavro does not.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            fastavro.parse_schema(data)
    except Exception as exc:  # fastavro raises several exception types
        raise ValueError(f"not a valid Avro schema: {exc}") from None
    return data, schema, [str(w.message) for w in caught]


def _load_version(number: int, file: str, text: str) -> _Version:
    try:
        data, schema, warns = parse_schema_text(text)
    except ValueError as exc:
        return _Version(number, file, text, error=str(exc))
    return _Version(number, file, text, data=data, schema=schema, warnings=tuple(warns))


def _same_schema(a: _Version, b: _Version) -> bool:
    """Same JSON (whitespace and key order do not count); raw text if either is not JSON."""
    if a.data is not None and b.data is not None:
        return bool(a.data == b.data)
    return a.text == b.text


# ----------------------------------------------------------------------------------------
# compatibility of one reader/writer pair, with the avro checker
# ----------------------------------------------------------------------------------------


def _rule(t: Any) -> str:
    return str(t.name).upper()


def _incompatible(result: SchemaCompatibilityResult) -> bool:
    return result.compatibility is SchemaCompatibilityType.incompatible


def _msg_rule(message: str) -> str:
    """Which incompatibility type produced a checker message (the checker's result keeps
    types, messages and locations in separate collections)."""
    if message.startswith("reader type: "):
        return "TYPE_MISMATCH"
    if message.startswith("reader union lacking writer type"):
        return "MISSING_UNION_BRANCH"
    if message.startswith("{"):
        return "MISSING_ENUM_SYMBOLS"
    if message.startswith("expected: ") and ", found: " in message:
        return "FIXED_SIZE_MISMATCH"
    if message.startswith("expected: "):
        return "NAME_MISMATCH"
    return "READER_FIELD_MISSING_DEFAULT_VALUE"


def _loc_rule(location: str) -> str | None:
    parts = location.strip("/").split("/")
    last = parts[-1]
    if last == "symbols":
        return "MISSING_ENUM_SYMBOLS"
    if last == "name":
        return "NAME_MISMATCH"
    if last == "size":
        return "FIXED_SIZE_MISMATCH"
    if last.isdigit():
        if len(parts) >= 2 and parts[-2] == "fields":
            return "READER_FIELD_MISSING_DEFAULT_VALUE"
        return "MISSING_UNION_BRANCH"
    return None  # TYPE_MISMATCH or MISSING_UNION_BRANCH (reader union, writer not a union)


def _walk(reader: avro.schema.Schema, location: str) -> tuple[str | None, avro.schema.Schema | None]:
    """Dotted reader field path and the reader sub-schema at a checker location."""
    node: Any = reader
    names: list[str] = []
    parts = [p for p in location.split("/") if p]
    i = 0
    while i < len(parts):
        p = parts[i]
        if p == "fields" and i + 1 < len(parts) and parts[i + 1].isdigit() and hasattr(node, "fields"):
            idx = int(parts[i + 1])
            if idx >= len(node.fields):
                break
            f = node.fields[idx]
            names.append(f.name)
            node = f.type
            i += 2
        elif p == "type":
            i += 1
        elif p == "items" and hasattr(node, "items"):
            node = node.items
            if names:
                names[-1] += "[]"
            i += 1
        elif p == "values" and hasattr(node, "values"):
            node = node.values
            if names:
                names[-1] += "{}"
            i += 1
        else:
            break
    return (".".join(names) or None), node


def _explain(
    rule: str, messages: list[str], location: str, field_path: str | None, node: Any
) -> str:
    where = f"field '{field_path}'" if field_path else "the schema"
    if rule == "READER_FIELD_MISSING_DEFAULT_VALUE":
        return f"field '{field_path or ', '.join(messages)}' missing from writer and has no default"
    if rule == "TYPE_MISMATCH":
        parts = []
        for m in messages:
            mm = re.match(r"reader type: (\S+) not compatible with writer type: (\S+)", m)
            if not mm:
                parts.append(m)
                continue
            r, w = mm.group(1), mm.group(2)
            text = f"writer type {w} cannot be read as {r}"
            if r in _NUMERIC_ORDER and w in _NUMERIC_ORDER and _NUMERIC_ORDER[w] > _NUMERIC_ORDER[r]:
                text += f" (narrowing {w}→{r}; Avro only promotes int→long→float→double)"
            elif r in ("string", "bytes") or w in ("string", "bytes") or r in _NUMERIC_ORDER:
                text += " (Avro only promotes int→long→float→double and string↔bytes)"
            parts.append(text)
        return f"{where}: " + "; ".join(parts)
    if rule == "MISSING_ENUM_SYMBOLS":
        symbols: list[str] = []
        for m in messages:
            try:
                symbols += sorted(str(s) for s in ast.literal_eval(m))
            except (ValueError, SyntaxError, TypeError):
                symbols.append(m)
        enum_name = getattr(node, "fullname", None) if getattr(node, "type", None) == "enum" else None
        what = f"the reader's enum {enum_name}" if enum_name else "the reader's enum"
        listed = ", ".join(f"'{s}'" for s in symbols)
        return f"{where}: {what} lacks writer symbol(s) {listed} and has no enum \"default\" to read them as"
    if rule == "MISSING_UNION_BRANCH":
        types = []
        for m in messages:
            mm = re.match(r"reader union lacking writer type:? (\S+)", m)
            types.append(mm.group(1).lower() if mm else m)
        return f"{where}: the reader's union has no branch for writer type {', '.join(types)}"
    if rule == "NAME_MISMATCH":
        expected = ", ".join(m.removeprefix("expected: ") for m in messages)
        reader_name = getattr(node, "fullname", None)
        mine = f" {reader_name}" if reader_name else ""
        return (f"{where}: named type{mine} does not match the writer's {expected} "
                f"(add \"aliases\": [\"{expected}\"] to the reader's type)")
    if rule == "FIXED_SIZE_MISMATCH":
        return f"{where}: fixed size differs ({'; '.join(messages)})"
    return f"{where}: " + "; ".join(messages)


def _from_result(
    result: SchemaCompatibilityResult, reader: avro.schema.Schema, prefix: str = "/"
) -> list[Incompatibility]:
    """Turn one checker result into Incompatibility items: pair messages and locations
    with their incompatibility type by shape (exact when there is one of each)."""
    rules = list(dict.fromkeys(_rule(t) for t in result.incompatibilities))
    inside = prefix.rstrip("/") + "/"
    locations = sorted(
        loc for loc in result.locations if loc != "/" and (loc == prefix or loc.startswith(inside))
    )
    messages = sorted(result.messages)
    out: list[Incompatibility] = []
    for rule in rules:
        if len(rules) == 1:
            msgs, locs = messages, locations
        else:
            msgs = [m for m in messages if _msg_rule(m) == rule]
            locs = [loc for loc in locations if _loc_rule(loc) == rule]
            if not locs and rule in ("TYPE_MISMATCH", "MISSING_UNION_BRANCH"):
                locs = [loc for loc in locations if _loc_rule(loc) is None]
        locs = locs or [prefix.rstrip("/") + "/type" if prefix != "/" else "/"]
        location = ", ".join(locs)
        field_path, node = _walk(reader, locs[0])
        if rule == "MISSING_ENUM_SYMBOLS":
            _, node = _walk(reader, locs[0].removesuffix("/symbols"))
        elif rule == "NAME_MISMATCH":
            _, node = _walk(reader, locs[0].removesuffix("/name"))
        out.append(Incompatibility(rule, location, field_path,
                                   _explain(rule, msgs, location, field_path, node)))
    return out


def compatibility(
    reader: avro.schema.Schema, writer: avro.schema.Schema, *, reader_is_newer: bool = True
) -> list[Incompatibility]:
    """Why ``reader`` cannot read data written with ``writer`` (empty: it can).

    The verdict is the avro checker's. For records the explanation is attributed field by
    field, also with the checker (each top-level field's type against the writer field the
    reader would resolve it to), because the checker's result keeps types, messages and
    locations in separate, unordered collections.
    """
    full = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if not _incompatible(full):
        return []
    out: list[Incompatibility] = []
    if isinstance(reader, avro.schema.RecordSchema) and isinstance(writer, avro.schema.RecordSchema):
        if "/name" in full.locations:
            msgs = [m for m in full.messages if _msg_rule(m) == "NAME_MISMATCH"]
            out.append(Incompatibility(
                "NAME_MISMATCH", "/name", None,
                f"record {reader.fullname} does not match the writer's record "
                f"{', '.join(m.removeprefix('expected: ') for m in msgs) or writer.fullname} "
                f"(add \"aliases\": [\"{writer.fullname}\"] to the reader record)",
            ))
        matched: set[str] = set()
        missing: list[int] = []
        for i, rf in enumerate(reader.fields):
            wf = avro_compat.lookup_writer_field(writer_schema=writer, reader_field=rf)
            prefix = f"/fields/{i}"
            if wf is None:
                if not rf.has_default:
                    missing.append(len(out))
                    out.append(Incompatibility(
                        "READER_FIELD_MISSING_DEFAULT_VALUE", prefix, rf.name,
                        f"field '{rf.name}' missing from writer and has no default",
                    ))
                continue
            matched.add(wf.name)
            sub = ReaderWriterCompatibilityChecker().get_compatibility(
                rf.type, wf.type, "type", ["/", "fields", str(i)]
            )
            if _incompatible(sub):
                for inc in _from_result(sub, reader, prefix):
                    # locations inside unions restart at "/" in the checker: keep the field
                    out.append(inc if inc.field else Incompatibility(
                        inc.rule, inc.location, rf.name,
                        inc.explanation.replace("the schema", f"field '{rf.name}'", 1)))
        unread = [wf.name for wf in writer.fields if wf.name not in matched]
        if reader_is_newer and unread and missing:
            hint = ", ".join(f"'{n}'" for n in unread)
            fix = (f"add \"aliases\": [{json.dumps(unread[0])}] to it" if len(unread) == 1
                   else "add the old name to its \"aliases\"")
            for idx in missing:
                inc = out[idx]
                out[idx] = Incompatibility(
                    inc.rule, inc.location, inc.field,
                    f"{inc.explanation}; the writer's field(s) {hint} are not read: if "
                    f"'{inc.field}' is a rename, {fix}",
                )
    if not out:
        out = _from_result(full, reader)
    return out


# ----------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------


def _directions(level: str) -> list[str]:
    if level.startswith("BACKWARD"):
        return ["backward"]
    if level.startswith("FORWARD"):
        return ["forward"]
    if level.startswith("FULL"):
        return ["backward", "forward"]
    return []


def _predecessors(level: str, earlier: list[int]) -> list[int]:
    if level.endswith("_TRANSITIVE"):
        return earlier
    return earlier[-1:]


def _is_key(subject: str, spec: dict[str, Any]) -> bool:
    return subject.endswith("-key") or str(spec.get("part", "")).lower() == "key"


def _rel(schemas_dir: Path, path: Path) -> str:
    try:
        return str(path.relative_to(schemas_dir.parent))
    except ValueError:
        return str(path)


def _subjects(schemas_dir: Path) -> dict[str, dict[str, Any]]:
    if not schemas_dir.is_dir():
        raise SchemasCheckError(f"schemas folder {schemas_dir} does not exist (schemas.dir in the config)")
    try:
        subjects = load_subjects(schemas_dir)
    except FileNotFoundError:
        raise SchemasCheckError(f"{schemas_dir / 'subjects.yaml'} does not exist") from None
    except (yaml.YAMLError, AttributeError, TypeError) as exc:
        raise SchemasCheckError(
            f"{schemas_dir / 'subjects.yaml'} is not a valid subjects file: {exc}"
        ) from None
    for subject, spec in subjects.items():
        level = str(spec.get("compatibility", "")).upper()
        if level not in LEVELS:
            raise SchemasCheckError(
                f"{schemas_dir / 'subjects.yaml'}: subject {subject} has compatibility "
                f"{spec.get('compatibility')!r}; use one of {', '.join(LEVELS)}"
            )
        spec["compatibility"] = level
    return subjects


def _pair_findings(
    subject: str, level: str, new: _Version, old: _Version, direction: str, *, old_label: str = ""
) -> tuple[PairCheck, list[Finding]]:
    if direction == "backward":
        reader, writer, reader_is_newer = new, old, True
    else:
        reader, writer, reader_is_newer = old, new, False
    assert reader.schema is not None and writer.schema is not None
    incs = compatibility(reader.schema, writer.schema, reader_is_newer=reader_is_newer)
    source = old_label.strip() or "local"
    pair = PairCheck(subject, reader.number, writer.number, level, not incs, source)
    rl = f"v{reader.number}{old_label if reader is old else ''}"
    what = f"data of v{writer.number}{old_label}" if writer is old and old_label else f"v{writer.number} data"
    label = level if not level.startswith("FULL") else f"{level}, {direction}"
    findings = [
        Finding(
            subject=subject, rule=inc.rule, level=level, field=inc.field, location=inc.location,
            versions=(new.number, old.number) if direction == "backward" else (old.number, new.number),
            message=f"{subject} {rl} cannot read {what} ({label}): {inc.describe()}",
        )
        for inc in incs
    ]
    return pair, findings


def _check_subject(
    result: CheckResult, schemas_dir: Path, subject: str, spec: dict[str, Any]
) -> dict[int, _Version]:
    folder = schemas_dir / subject
    level = spec["compatibility"]
    files = sorted(folder.glob("*.avsc")) if folder.is_dir() else []
    versions: dict[int, _Version] = {}
    for f in files:
        m = _VERSION_FILE.match(f.name)
        if not m:
            result.findings.append(Finding(
                subject, BAD_FILE_NAME, file=_rel(schemas_dir, f),
                message=f"{_rel(schemas_dir, f)}: schema files are named v<N>.avsc (v1.avsc, v2.avsc, ...)",
            ))
            continue
        versions[int(m.group(1))] = _load_version(int(m.group(1)), _rel(schemas_dir, f), f.read_text())
    numbers = sorted(versions)
    result.versions[subject] = numbers
    if not numbers:
        result.findings.append(Finding(
            subject, NO_VERSIONS, level=level,
            message=f"{subject} is listed in subjects.yaml but {_rel(schemas_dir, folder)}/ has no v1.avsc",
        ))
        return versions
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    if missing:
        have = ", ".join(f"v{n}" for n in numbers)
        result.findings.append(Finding(
            subject, VERSION_GAP, versions=tuple(missing), level=level,
            message=f"{subject}: {', '.join(f'v{n}' for n in missing)} missing (found {have}); "
                    "versions are numbered v1, v2, ... without gaps",
        ))
    for v in versions.values():
        if v.error:
            result.findings.append(Finding(
                subject, PARSE_ERROR, versions=(v.number,), file=v.file, level=level,
                message=f"{v.file} does not parse: {v.error}",
            ))
        for w in v.warnings:
            result.findings.append(Finding(
                subject, SCHEMA_WARNING, versions=(v.number,), file=v.file, severity="warning",
                message=f"{v.file}: {w}",
            ))
    good = [n for n in numbers if versions[n].schema is not None]
    if _is_key(subject, spec):
        for prev, cur in zip(good, good[1:], strict=False):
            if not _same_schema(versions[prev], versions[cur]):
                result.findings.append(Finding(
                    subject, KEY_SCHEMA_CHANGED, versions=(prev, cur), level=level,
                    file=versions[cur].file,
                    message=f"{subject} v{cur} changes the key schema of v{prev}: key schemas never "
                            "change (the key decides the partition); keep the key schema as it is",
                ))
    for i, n in enumerate(good):
        for old in _predecessors(level, good[:i]):
            for direction in _directions(level):
                pair, findings = _pair_findings(subject, level, versions[n], versions[old], direction)
                result.pairs.append(pair)
                result.findings.extend(findings)
    return versions


# ---- git base ---------------------------------------------------------------------------


def _git(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SchemasCheckError("--base needs git, which is not installed") from None
    if proc.returncode != 0:
        raise SchemasCheckError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def base_versions(schemas_dir: Path, ref: str) -> dict[str, dict[int, str]]:
    """The schema texts at a git ref: subject -> version -> text."""
    top = Path(_git(["rev-parse", "--show-toplevel"], schemas_dir).strip()).resolve()
    try:
        _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], top)
    except SchemasCheckError:
        raise SchemasCheckError(f"--base {ref}: not a commit in the git repository at {top}") from None
    prefix = schemas_dir.resolve().relative_to(top).as_posix()
    listing = _git(["ls-tree", "-r", "--name-only", ref, "--", prefix], top)
    out: dict[str, dict[int, str]] = {}
    for line in listing.splitlines():
        rel = line[len(prefix) + 1:] if prefix not in ("", ".") else line
        parts = rel.split("/")
        if len(parts) != 2:
            continue
        m = _VERSION_FILE.match(parts[1])
        if m:
            out.setdefault(parts[0], {})[int(m.group(1))] = _git(["show", f"{ref}:{line}"], top)
    return out


def _changes(old: _Version, new: _Version) -> str:
    """A short summary of what changed in a record schema."""
    if not (isinstance(old.data, dict) and isinstance(new.data, dict)):
        return ""
    of = {f.get("name"): f for f in old.data.get("fields", []) if isinstance(f, dict)}
    nf = {f.get("name"): f for f in new.data.get("fields", []) if isinstance(f, dict)}
    bits = []
    if added := [n for n in nf if n not in of]:
        bits.append("added " + ", ".join(f"'{n}'" for n in added))
    if removed := [n for n in of if n not in nf]:
        bits.append("removed " + ", ".join(f"'{n}'" for n in removed))
    if changed := [n for n in nf if n in of and nf[n] != of[n]]:
        bits.append("changed " + ", ".join(f"'{n}'" for n in changed))
    rest = {k for k in set(old.data) | set(new.data) if k != "fields" and old.data.get(k) != new.data.get(k)}
    if rest:
        bits.append("changed " + ", ".join(sorted(rest)))
    return f" ({'; '.join(bits)})" if bits else ""


def _check_base(
    result: CheckResult, schemas_dir: Path, ref: str, subjects: dict[str, dict[str, Any]],
    local: dict[str, dict[int, _Version]],
) -> None:
    at_base = base_versions(schemas_dir, ref)
    for subject in sorted(at_base):
        published = at_base[subject]
        spec = subjects.get(subject)
        level: str = spec["compatibility"] if spec else "NONE"
        here = local.get(subject, {})
        folder = _rel(schemas_dir, schemas_dir / subject)
        base_v: dict[int, _Version] = {}
        for n in sorted(published):
            base_v[n] = _load_version(n, f"{folder}/v{n}.avsc@{ref}", published[n])
            if not (schemas_dir / subject / f"v{n}.avsc").exists():
                result.findings.append(Finding(
                    subject, PUBLISHED_VERSION_REMOVED, versions=(n,), level=level,
                    file=f"{folder}/v{n}.avsc",
                    message=f"{subject} v{n} exists at {ref} but was removed: published versions are "
                            f"never removed (restore {folder}/v{n}.avsc)",
                ))
            elif n not in here:
                continue  # subject no longer in subjects.yaml: reported as UNLISTED_SUBJECT
            elif not _same_schema(base_v[n], here[n]):
                result.findings.append(Finding(
                    subject, PUBLISHED_VERSION_MODIFIED, versions=(n,), level=level, file=here[n].file,
                    message=f"{here[n].file} was modified since {ref}{_changes(base_v[n], here[n])}: "
                            f"published versions are immutable; revert it and add the change as a new "
                            f"version v{max(set(here) | set(published)) + 1}",
                ))
        if spec is None:
            continue
        differs = {n for n, v in base_v.items() if n not in here or not _same_schema(v, here[n])}
        if fresh := sorted(set(here) - set(published)):
            unchanged = ", ".join(f"v{n}" for n in sorted(published) if n not in differs)
            result.findings.append(Finding(
                subject, NEW_VERSION, versions=tuple(fresh), level=level, severity="info",
                message=f"{subject}: {', '.join(f'v{n}' for n in fresh)} new since {ref}"
                        + (f" (published {unchanged} unchanged)" if unchanged else ""),
            ))
        # New versions against the versions as published at the base. Where the published
        # text equals the working copy the local check already covered the pair.
        all_numbers = sorted(set(here) | set(published))
        for n in sorted(set(here) - set(published)):
            new = here[n]
            if new.schema is None:
                continue
            earlier = [m for m in all_numbers if m < n]
            for old_n in _predecessors(level, earlier):
                old = base_v.get(old_n)
                if old_n not in differs or old is None or old.schema is None:
                    continue
                for direction in _directions(level):
                    pair, findings = _pair_findings(subject, level, new, old, direction,
                                                    old_label=f" as published at {ref}")
                    result.pairs.append(pair)
                    result.findings.extend(findings)


# ---- registry ---------------------------------------------------------------------------


def _check_registry(
    result: CheckResult, subjects: dict[str, dict[str, Any]], local: dict[str, dict[int, _Version]],
    registry_conf: dict[str, str],
) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    url = registry_conf.get("url", "?")
    with SchemaRegistryClient(registry_conf) as client:
        for subject, spec in subjects.items():
            good = [n for n in sorted(local.get(subject, {})) if local[subject][n].schema is not None]
            if not good:
                continue
            latest = local[subject][good[-1]]
            candidate = Schema(json.dumps(latest.data, separators=(",", ":")), "AVRO")
            try:
                try:
                    registered = client.get_versions(subject)
                except SchemaRegistryError as exc:
                    if exc.http_status_code == 404:
                        result.findings.append(Finding(
                            subject, REGISTRY_SUBJECT_UNKNOWN, versions=(latest.number,), severity="info",
                            message=f"{subject} is not in the registry at {url} yet: nothing to be "
                                    f"compatible with, v{latest.number} treated as compatible",
                        ))
                        continue
                    raise
                try:
                    reg_level = str(client.get_compatibility(subject)).upper()
                except SchemaRegistryError as exc:
                    if exc.http_status_code != 404:
                        raise
                    reg_level = str(client.get_compatibility()).upper()
                if reg_level != spec["compatibility"]:
                    result.findings.append(Finding(
                        subject, REGISTRY_LEVEL_MISMATCH, severity="warning", level=reg_level,
                        message=f"{subject}: the registry's compatibility level is {reg_level}, "
                                f"subjects.yaml says {spec['compatibility']} "
                                "(`sluice schemas register` sets it)",
                    ))
                transitive = reg_level.endswith("_TRANSITIVE")
                # versions/latest checks one version only (also under *_TRANSITIVE);
                # registration checks all of them under a transitive level.
                if transitive:
                    ok = client.test_compatibility_all_versions(subject, candidate)
                else:
                    ok = client.test_compatibility(subject, candidate)
                against = "all registered versions" if transitive else f"registered version {registered[-1]}"
                if ok:
                    result.findings.append(Finding(
                        subject, REGISTRY_COMPATIBLE, versions=(latest.number,), level=reg_level,
                        severity="info",
                        message=f"{subject} v{latest.number}: the registry accepts it "
                                f"({reg_level}, against {against})",
                    ))
                    continue
                # The ccompat endpoints give no reasons: explain with the local checker
                # against the registered versions the registry compared with.
                targets = registered if transitive else registered[-1:]
                reasons: list[str] = []
                for rv in targets:
                    text = client.get_version(subject, rv).schema.schema_str
                    try:
                        _, reg_schema, _ = parse_schema_text(text)
                    except ValueError:
                        continue
                    assert latest.schema is not None
                    for direction in _directions(reg_level) or ["backward"]:
                        r, w = ((latest.schema, reg_schema) if direction == "backward"
                                else (reg_schema, latest.schema))
                        who = (f"v{latest.number} cannot read registry version {rv}"
                               if direction == "backward"
                               else f"registry version {rv} cannot read v{latest.number}")
                        reasons += [f"{who}: {inc.describe()}"
                                    for inc in compatibility(r, w, reader_is_newer=direction == "backward")]
                why = ("; ".join(reasons) if reasons else
                       "the local Avro checker finds no incompatibility against those versions, "
                       "so the registry applies other rules")
                verdict = (
                    f"says it is incompatible ({reg_level}, against {against}) and would refuse to "
                    "register it" if reg_level != "NONE" else
                    f"says it is incompatible (against {against}) although its level is NONE "
                    "(Apicurio's test endpoint applies BACKWARD to a subject without a level of its own, "
                    "registration then enforces nothing; `sluice schemas register` sets the level)"
                )
                result.findings.append(Finding(
                    subject, REGISTRY_INCOMPATIBLE, versions=(latest.number,), level=reg_level,
                    message=f"{subject} v{latest.number}: the registry at {url} {verdict}: {why}",
                ))
            except SchemaRegistryError as exc:
                result.findings.append(Finding(
                    subject, REGISTRY_ERROR, versions=(latest.number,),
                    message=f"{subject}: the registry at {url} answered HTTP {exc.http_status_code} "
                            f"(error {exc.error_code}): {exc.error_message}",
                ))
            except Exception as exc:  # connection refused, DNS, TLS, timeouts
                result.findings.append(Finding(
                    subject, REGISTRY_ERROR, message=f"cannot reach the registry at {url}: {exc}",
                ))
                return


# ---- entry points -----------------------------------------------------------------------


def check_schemas(
    schemas_dir: Path,
    *,
    registry_conf: dict[str, str] | None = None,
    base: str | None = None,
) -> CheckResult:
    """Check every subject of ``schemas_dir/subjects.yaml``; see the module docstring.

    Raises :class:`SchemasCheckError` if the check cannot run (usage/config errors).
    """
    schemas_dir = Path(schemas_dir)
    subjects = _subjects(schemas_dir)
    result = CheckResult()
    local: dict[str, dict[int, _Version]] = {}
    for subject, spec in subjects.items():
        local[subject] = _check_subject(result, schemas_dir, subject, spec)
    for folder in sorted(p for p in schemas_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in subjects and any(folder.glob("*.avsc")):
            result.findings.append(Finding(
                folder.name, UNLISTED_SUBJECT, file=_rel(schemas_dir, folder),
                message=f"{_rel(schemas_dir, folder)}/ holds schemas but subjects.yaml does not list "
                        f"{folder.name}: it would never be checked or registered",
            ))
    if base is not None:
        _check_base(result, schemas_dir, base, subjects, local)
    if registry_conf is not None:
        _check_registry(result, subjects, local, registry_conf)
    return result


def check(cfg: SluiceConfig, *, registry_url: str | None = None, base: str | None = None) -> CheckResult:
    """:func:`check_schemas` for a :class:`~sluice.config.SluiceConfig` (its schemas dir;
    with ``registry_url``, the config's registry credentials with that URL)."""
    conf = None
    if registry_url is not None:
        conf = {**cfg.registry.client_conf(), "url": registry_url}
    return check_schemas(cfg.path(cfg.schemas.dir), registry_conf=conf, base=base)


def summary(result: CheckResult) -> str:
    n_versions = sum(len(v) for v in result.versions.values())
    bad = len({(p.subject, p.reader, p.writer) for p in result.pairs if not p.compatible})
    return (f"{len(result.versions)} subjects, {n_versions} versions, {len(result.pairs)} reader/writer "
            f"pairs checked, {bad} incompatible, {len(result.failures)} failures")


__all__ = [
    "LEVELS", "CheckResult", "Finding", "Incompatibility", "PairCheck", "SchemasCheckError",
    "base_versions", "check", "check_schemas", "compatibility", "parse_schema_text", "summary",
]
