"""The declarative feature spec: which windows to compute per device, and which aggregations.

A spec is a YAML file (``features.yaml`` at the repo root is the demo's; the config key
``features.spec`` names it, docs/features.md describes the format). Loading it checks
everything the job would otherwise find out at runtime, and every error names the file,
the line and column, and the path inside the spec::

    features.yaml:14:11: windows[1].features[0].aggs[3]: unknown aggregation 'meen' ...

The spec is parsed in two passes. The YAML is composed into nodes that keep their
positions; pydantic checks the shape (keys, types, durations, aggregation entries), and a
second pass checks the rules that span keys (window kind vs size/slide/gap, fields against
the EnrichedReading schema, duplicate names). Both report through :class:`FeatureSpecError`.

Nothing here imports the native module: the oracle in tests/ uses this model too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

SPEC_FORMAT_VERSION = 1
DEFAULT_SCHEMA = Path(__file__).resolve().parents[1] / "schemas/telemetry.enriched-value/v2.avsc"

SOURCES = ("TELEMETRY", "SENSOR_FRAME", "MAINTENANCE")
WINDOW_KINDS = ("tumble", "hop", "session")

# The waveform of a sensor frame. It is not a field of EnrichedReading (the canonical event
# carries only the frame's summary), but the job has the samples when it decodes the frame.
WAVEFORM_FIELD = "frame.samples"

SCALAR_AGGS = ("count", "sum", "mean", "std", "min", "max", "ewma", "slope", "quantile")
WAVEFORM_AGGS = ("rms", "peak", "crest_factor", "kurtosis", "band_energy")
# Parameters each aggregation requires (and the only ones it accepts).
AGG_PARAMS: dict[str, tuple[str, ...]] = {
    "ewma": ("half_life",), "quantile": ("q",), "band_energy": ("bands",),
}

# Numeric EnrichedReading fields that describe where a record came from, not the device.
METADATA_FIELDS = frozenset({"writer_schema_id", "source_partition", "source_offset"})
# Which inputs set which measurement (sluice/udfs.py builds the canonical event): a window
# that reads temperature_c from sensor frames only would never see a value. Fields not
# listed here are accepted from any source.
FIELD_SOURCES: dict[str, frozenset[str]] = {
    "temperature_c": frozenset({"TELEMETRY"}),
    "vibration_rms": frozenset({"TELEMETRY", "SENSOR_FRAME"}),
    "humidity_pct": frozenset({"TELEMETRY"}),
    "sample_count": frozenset({"TELEMETRY"}),
    "frame.sample_rate_hz": frozenset({"SENSOR_FRAME"}),
    "frame.n_samples": frozenset({"SENSOR_FRAME"}),
    "frame.peak_abs_g": frozenset({"SENSOR_FRAME"}),
    "frame.mean_g": frozenset({"SENSOR_FRAME"}),
    WAVEFORM_FIELD: frozenset({"SENSOR_FRAME"}),
}

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# --- errors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where (file, line, column, path inside the spec) and what."""

    source: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}:{self.line}:{self.column}: {where}{self.message}"


class FeatureSpecError(ValueError):
    """The feature spec is invalid; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = sorted(issues, key=lambda i: (i.line, i.column, i.path))
        n = len(self.issues)
        head = f"invalid feature spec ({n} problem{'s' if n != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  {i}" for i in self.issues)]))


Loc = tuple[str | int, ...]


def format_path(loc: Iterable[str | int]) -> str:
    """``("windows", 1, "aggs", 3)`` → ``windows[1].aggs[3]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# --- durations ------------------------------------------------------------------------------
def parse_duration(value: object) -> int:
    """``"30s"`` → 30000 (milliseconds). One integer and one unit: ms, s, m, h or d."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"bad duration {value!r}: write an integer with a unit (ms, s, m, h, d), e.g. 30s or 500ms"
        )
    m = _DURATION.match(value)
    if not m:
        raise ValueError(
            f"bad duration {value!r}: write an integer with a unit (ms, s, m, h, d), e.g. 30s or 500ms"
        )
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def format_duration(ms: int) -> str:
    """The largest unit that divides ``ms`` exactly: 60000 → ``1m``, 1500 → ``1500ms``."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def _positive_duration(value: object) -> int:
    ms = parse_duration(value)
    if ms <= 0:
        raise ValueError(f"bad duration {value!r}: must be greater than 0")
    return ms


Duration = Annotated[int, BeforeValidator(_positive_duration)]
NonNegativeDuration = Annotated[int, BeforeValidator(parse_duration)]


# --- aggregations ---------------------------------------------------------------------------
def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, not {value!r}")
    return float(value)


def _fmt_number(x: float) -> str:
    """Shortest decimal form without exponent or trailing zeros: 50.0 → 50, 12.5 → 12.5."""
    d = Decimal(repr(float(x))).normalize()
    return format(d, "f")


class Agg(BaseModel):
    """One aggregation with its parameters, normalised (durations in ms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    half_life_ms: int | None = None
    q: float | None = None
    bands: tuple[tuple[float, float], ...] | None = None

    @property
    def waveform(self) -> bool:
        return self.name in WAVEFORM_AGGS

    def suffixes(self) -> list[str]:
        """The feature-name suffix of each value this aggregation produces."""
        if self.name == "ewma":
            assert self.half_life_ms is not None
            return [f"ewma_{format_duration(self.half_life_ms)}"]
        if self.name == "quantile":
            assert self.q is not None
            return ["p" + format((Decimal(repr(self.q)) * 100).normalize(), "f")]
        if self.name == "band_energy":
            assert self.bands is not None
            return [f"band_energy_{_fmt_number(lo)}_{_fmt_number(hi)}hz" for lo, hi in self.bands]
        return [self.name]

    def output_names(self, field: str) -> list[str]:
        return [f"{field}.{s}" for s in self.suffixes()]

    def params(self) -> dict[str, Any]:
        """Parameters as the Rust side takes them (``half_life_ms``, ``q``, ``bands``)."""
        if self.name == "ewma":
            return {"half_life_ms": self.half_life_ms}
        if self.name == "quantile":
            return {"q": self.q}
        if self.name == "band_energy":
            assert self.bands is not None
            return {"bands": [[lo, hi] for lo, hi in self.bands]}
        return {}


def _parse_agg(entry: object) -> Agg:
    """``mean`` or ``{ewma: {half_life: 30s}}`` → :class:`Agg`."""
    known = ", ".join(SCALAR_AGGS + WAVEFORM_AGGS)
    if isinstance(entry, str):
        name, params = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        ((name, params),) = entry.items()
        if not isinstance(name, str):
            raise ValueError(f"aggregation name must be a string, not {name!r}")
        if not isinstance(params, dict):
            raise ValueError(
                f"parameters of {name} must be a mapping, e.g. {{{name}: {{...}}}}, not {params!r}"
            )
    else:
        raise ValueError(
            "an aggregation is a name (mean) or a one-key mapping of name to parameters "
            f"({{ewma: {{half_life: 30s}}}}), not {entry!r}"
        )
    if name not in SCALAR_AGGS and name not in WAVEFORM_AGGS:
        raise ValueError(f"unknown aggregation {name!r}; known: {known}")
    wanted = AGG_PARAMS.get(name, ())
    given = params or {}
    if params is not None and not wanted:
        raise ValueError(f"{name} takes no parameters; write it as a plain name: {name}")
    unknown = sorted(set(given) - set(wanted), key=str)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for {name}; it takes: {', '.join(wanted)}"
        )
    missing = [p for p in wanted if p not in given]
    if missing:
        example = {"ewma": "{ewma: {half_life: 30s}}", "quantile": "{quantile: {q: 0.95}}",
                   "band_energy": "{band_energy: {bands: [[0, 50], [50, 200]]}}"}[name]
        raise ValueError(f"{name} needs parameter {missing[0]!r}, e.g. {example}")
    if name == "ewma":
        return Agg(name=name, half_life_ms=_positive_duration(given["half_life"]))
    if name == "quantile":
        q = _number(given["q"], "quantile q")
        if not 0 < q < 1:
            raise ValueError(f"quantile q must be strictly between 0 and 1, not {given['q']!r}")
        return Agg(name=name, q=q)
    if name == "band_energy":
        return Agg(name=name, bands=_parse_bands(given["bands"]))
    return Agg(name=name)


def _parse_bands(value: object) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"band_energy bands must be a non-empty list of [low_hz, high_hz] pairs, not {value!r}"
        )
    bands = []
    for i, band in enumerate(value):
        if not isinstance(band, list) or len(band) != 2:
            raise ValueError(f"band_energy bands[{i}] must be a [low_hz, high_hz] pair, not {band!r}")
        lo, hi = _number(band[0], f"bands[{i}] low_hz"), _number(band[1], f"bands[{i}] high_hz")
        if not 0 <= lo < hi:
            raise ValueError(f"band_energy bands[{i}] = {band!r}: need 0 <= low_hz < high_hz")
        bands.append((lo, hi))
    return tuple(bands)


AggEntry = Annotated[Agg, BeforeValidator(_parse_agg)]


def _parse_sources(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"source must name at least one of {', '.join(SOURCES)}")
    for s in items:
        if s not in SOURCES:
            raise ValueError(f"unknown source {s!r}; use one or a list of {', '.join(SOURCES)}")
    return tuple(sorted(set(items), key=SOURCES.index))


def _parse_kind(value: object) -> str:
    if value not in WINDOW_KINDS:
        raise ValueError(f"unknown window kind {value!r}; use tumble, hop or session")
    return str(value)


def _parse_key(value: object) -> str:
    if value != "device_id":
        raise ValueError(
            f"key must be device_id, not {value!r}: a FeatureVector is the features of one device"
        )
    return "device_id"


def _parse_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"window name {value!r} must start with a letter and use only letters, digits, _ and -"
        )
    return value


# --- the spec model -------------------------------------------------------------------------
class FieldFeatures(BaseModel):
    """The aggregations of one field (``frame.samples`` for the waveform ones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str
    aggs: tuple[AggEntry, ...] = Field(min_length=1)

    def names(self) -> list[str]:
        return [n for a in self.aggs for n in a.output_names(self.field)]


class WindowSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, BeforeValidator(_parse_name)]
    kind: Annotated[Literal["tumble", "hop", "session"], BeforeValidator(_parse_kind)]
    size: Duration | None = None
    slide: Duration | None = None
    gap: Duration | None = None
    allowed_lateness: NonNegativeDuration = 0
    source: Annotated[tuple[str, ...], BeforeValidator(_parse_sources)]
    key: Annotated[str, BeforeValidator(_parse_key)] = "device_id"
    features: tuple[FieldFeatures, ...] = Field(min_length=1)

    @property
    def window_kind(self) -> str:
        """The FeatureVector enum symbol: TUMBLE, HOP or SESSION."""
        return self.kind.upper()

    def feature_names(self) -> list[str]:
        return [n for f in self.features for n in f.names()]

    def rust_aggregations(self) -> list[dict[str, Any]]:
        """Per field, the aggregations as ``[name, params]`` pairs and their output names."""
        return [
            {"field": f.field, "aggs": [[a.name, a.params()] for a in f.aggs], "outputs": f.names()}
            for f in self.features
        ]

    def normalised(self) -> dict[str, Any]:
        """Everything that decides this window's output, independent of order and spelling."""
        feats = sorted(
            ((n, a.name, a.params(), f.field)
             for f in self.features for a in f.aggs for n in a.output_names(f.field)),
            key=lambda x: x[0],
        )
        return {
            "name": self.name, "kind": self.kind, "size_ms": self.size, "slide_ms": self.slide,
            "gap_ms": self.gap, "allowed_lateness_ms": self.allowed_lateness,
            "sources": sorted(self.source), "key": self.key, "features": feats,
        }


class FeatureSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    windows: tuple[WindowSpec, ...] = Field(min_length=1)

    def window(self, name: str) -> WindowSpec:
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(f"no window {name!r} in the feature spec; it has {[w.name for w in self.windows]}")

    def feature_names(self) -> dict[str, list[str]]:
        """Output feature names (FeatureVector.features keys) per window name."""
        return {w.name: w.feature_names() for w in self.windows}

    def rust_aggregations(self) -> dict[str, list[dict[str, Any]]]:
        """Per window, the aggregation lists in the JSON form the Rust aggregators take::

            {"temp_1m": [{"field": "temperature_c",
                          "aggs": [["mean", {}], ["ewma", {"half_life_ms": 30000}], ...],
                          "outputs": ["temperature_c.mean", "temperature_c.ewma_30s", ...]}]}

        ``outputs`` lists the feature names in the order the aggregations produce values
        (band_energy gives one per band).
        """
        return {w.name: w.rust_aggregations() for w in self.windows}

    def to_json(self) -> str:
        return json.dumps(self.rust_aggregations(), sort_keys=True)

    def normalised(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "windows": sorted((w.normalised() for w in self.windows), key=lambda w: w["name"]),
        }

    def spec_version(self) -> str:
        """Stable hash of the normalised spec: comments, formatting, key order, the order of
        windows and aggregations and the spelling of durations (60s = 1m) do not change it;
        anything that changes an output does. FeatureVector.feature_spec_version carries it."""
        blob = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- YAML with positions --------------------------------------------------------------------
Positions = dict[Loc, tuple[int, int]]


class _YamlIssue(Exception):
    def __init__(self, line: int, column: int, message: str, loc: Loc = ()) -> None:
        super().__init__(message)
        self.line, self.column, self.loc = line, column, loc


def _compose(text: str) -> tuple[Any, Positions]:
    """Plain data from YAML text, and (line, column) of every key and item by path."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        bad = exc.problem_mark or exc.context_mark
        line, col = (bad.line + 1, bad.column + 1) if bad else (1, 1)
        raise _YamlIssue(line, col, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise _YamlIssue(1, 1, f"not valid YAML: {exc}") from None
    positions: Positions = {}
    if root is None:
        return None, positions
    constructor = yaml.constructor.SafeConstructor()

    def mark(node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def build(node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if isinstance(key, list | dict):
                    raise _YamlIssue(*mark(key_node), "a key must be a plain name", loc)
                if key in out:
                    first = positions[(*loc, key)]
                    raise _YamlIssue(*mark(key_node),
                                     f"duplicate key {key!r} (first at line {first[0]})", (*loc, key))
                positions[(*loc, key)] = mark(key_node)
                out[key] = build(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                positions[(*loc, i)] = mark(item)
                items.append(build(item, (*loc, i)))
            return items
        return constructor.construct_object(node, deep=True)

    positions[()] = mark(root)
    return build(root, ()), positions


def _where(positions: Positions, loc: Loc) -> tuple[int, int]:
    """Position of the deepest part of ``loc`` the file has (a missing key: its parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in positions:
            return positions[loc[:n]]
    return 1, 1


# --- the schema's fields --------------------------------------------------------------------
@dataclass(frozen=True)
class FieldInfo:
    path: str
    avro_type: str
    numeric: bool


_NUMERIC = {"int", "long", "float", "double"}


@cache
def schema_fields(schema_path: Path = DEFAULT_SCHEMA) -> dict[str, FieldInfo]:
    """Every leaf field of the EnrichedReading schema by dotted path (records flattened)."""
    schema = json.loads(Path(schema_path).read_text())
    out: dict[str, FieldInfo] = {}

    def walk(record: dict[str, Any], prefix: str) -> None:
        for f in record["fields"]:
            path = f"{prefix}{f['name']}"
            branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
            branches = [b for b in branches if b != "null"]
            t = branches[0] if len(branches) == 1 else "union"
            if isinstance(t, dict) and t.get("type") == "record":
                walk(t, f"{path}.")
                continue
            name = t if isinstance(t, str) else str(t.get("type"))
            # Logical types (timestamp-millis) are instants, not measurements.
            numeric = name in _NUMERIC and not (isinstance(t, dict) and "logicalType" in t)
            out[path] = FieldInfo(path, name if not isinstance(t, dict) or "logicalType" not in t
                                  else f"{name} ({t['logicalType']})", numeric)

    walk(schema, "")
    return out


# --- rules across keys ----------------------------------------------------------------------
def _rule_issues(spec: FeatureSpec, fields: dict[str, FieldInfo]) -> Iterator[tuple[Loc, str]]:
    if spec.version != SPEC_FORMAT_VERSION:
        yield ("version",), f"unsupported spec format version {spec.version}; this sluice reads version 1"
    seen_windows: dict[str, int] = {}
    for wi, w in enumerate(spec.windows):
        at: Loc = ("windows", wi)
        if w.name in seen_windows:
            yield (*at, "name"), (f"duplicate window name {w.name!r} "
                                  f"(also windows[{seen_windows[w.name]}]); window names must be unique")
        seen_windows.setdefault(w.name, wi)
        yield from _window_rules(w, at)
        produced: dict[str, Loc] = {}
        for fi, f in enumerate(w.features):
            floc: Loc = (*at, "features", fi)
            yield from _field_rules(w, f, floc, fields)
            for ai, a in enumerate(f.aggs):
                for n in a.output_names(f.field):
                    if n in produced:
                        yield (*floc, "aggs", ai), (
                            f"feature name {n!r} is also produced by {format_path(produced[n])}; "
                            "each feature of a window needs a distinct name")
                    else:
                        produced[n] = (*floc, "aggs", ai)


def _window_rules(w: WindowSpec, at: Loc) -> Iterator[tuple[Loc, str]]:
    needs = {"tumble": ("size",), "hop": ("size", "slide"), "session": ("gap",)}[w.kind]
    for key in ("size", "slide", "gap"):
        value = getattr(w, key)
        if key in needs and value is None:
            example = {"size": "size: 1m", "slide": "slide: 10s", "gap": "gap: 30s"}[key]
            yield (*at, key), f"a {w.kind} window needs {key} (e.g. {example})"
        elif key not in needs and value is not None:
            yield (*at, key), f"{key} does not apply to a {w.kind} window (it takes {', '.join(needs)})"
    if w.kind == "hop" and w.size is not None and w.slide is not None:
        size, slide = format_duration(w.size), format_duration(w.slide)
        if w.slide > w.size:
            yield (*at, "slide"), (
                f"slide ({slide}) is larger than size ({size}): events between windows would "
                "belong to none; use slide <= size")
        elif w.size % w.slide != 0:
            yield (*at, "slide"), (
                f"size ({size}) must be a whole multiple of slide ({slide}), as Flink SQL's HOP "
                "window requires; e.g. size 5m with slide 1m")


def _field_rules(w: WindowSpec, f: FieldFeatures, at: Loc,
                 fields: dict[str, FieldInfo]) -> Iterator[tuple[Loc, str]]:
    if f.field == WAVEFORM_FIELD:
        for ai, a in enumerate(f.aggs):
            if not a.waveform:
                yield (*at, "aggs", ai), (
                    f"{a.name} is not a waveform aggregation; {WAVEFORM_FIELD} takes "
                    f"{', '.join(WAVEFORM_AGGS)}")
    else:
        info = fields.get(f.field)
        numeric = sorted(p for p, i in fields.items() if i.numeric and p not in METADATA_FIELDS)
        if info is None:
            yield (*at, "field"), (
                f"unknown field {f.field!r}; EnrichedReading's numeric fields are "
                f"{', '.join(numeric)}, and {WAVEFORM_FIELD} for the waveform aggregations")
            return
        if not info.numeric:
            yield (*at, "field"), (
                f"field {f.field!r} is {info.avro_type}, not numeric; numeric fields are "
                f"{', '.join(numeric)}")
            return
        if f.field in METADATA_FIELDS:
            yield (*at, "field"), (
                f"field {f.field!r} describes where a record came from, not the device; "
                f"numeric measurements are {', '.join(numeric)}")
            return
        for ai, a in enumerate(f.aggs):
            if a.waveform:
                yield (*at, "aggs", ai), (
                    f"{a.name} is a waveform aggregation: it applies to {WAVEFORM_FIELD} only")
    carried = FIELD_SOURCES.get(f.field)
    if carried is not None and not carried & set(w.source):
        yield (*at, "field"), (
            f"field {f.field!r} is never set on {' or '.join(w.source)} events; it comes "
            f"with {' or '.join(s for s in SOURCES if s in carried)} (set the window's source)")


# --- loading --------------------------------------------------------------------------------
def _pydantic_issues(err: ValidationError) -> Iterator[tuple[Loc, str]]:
    errors = err.errors()
    for e in errors:
        loc: Loc = tuple(e["loc"])
        # pydantic also reports a list whose items all failed as too short: noise.
        if e["type"] == "too_short" and any(
            len(o["loc"]) > len(loc) and tuple(o["loc"][: len(loc)]) == loc for o in errors
        ):
            continue
        cause = (e.get("ctx") or {}).get("error")
        if e["type"] == "value_error":
            yield loc, str(cause) if cause is not None else e["msg"]
        elif e["type"] == "missing":
            yield loc, f"required key {loc[-1]!r} is missing"
        elif e["type"] == "extra_forbidden":
            parent = format_path(loc[:-1]) or "the top level"
            yield loc, f"unknown key {loc[-1]!r} in {parent}; see docs/features.md for the keys"
        elif e["type"] == "too_short":
            yield loc, f"must not be empty ({e['msg']})"
        else:
            yield loc, f"{e['msg']} (got {e.get('input')!r})"


def parse_feature_spec(text: str, source: str = "<spec>", *,
                       schema_path: Path | None = None) -> FeatureSpec:
    """Parse and validate a spec from YAML text; ``source`` names it in error messages."""

    def issue(loc: Loc, message: str, positions: Positions) -> SpecIssue:
        line, col = _where(positions, loc)
        return SpecIssue(source, line, col, format_path(loc), message)

    try:
        data, positions = _compose(text)
    except _YamlIssue as exc:
        where = format_path(exc.loc)
        raise FeatureSpecError([SpecIssue(source, exc.line, exc.column, where, str(exc))]) from None
    if data is None:
        raise FeatureSpecError([issue((), "the feature spec is empty; it needs `version: 1` and `windows:`",
                                      positions)])
    if not isinstance(data, dict):
        raise FeatureSpecError([issue((), "a feature spec is a mapping with `version: 1` and `windows:` "
                                      f"(got {type(data).__name__})", positions)])
    try:
        spec = FeatureSpec.model_validate(data)
    except ValidationError as exc:
        raise FeatureSpecError([issue(loc, msg, positions) for loc, msg in _pydantic_issues(exc)]) from None
    fields = schema_fields(schema_path or DEFAULT_SCHEMA)
    issues = [issue(loc, msg, positions) for loc, msg in _rule_issues(spec, fields)]
    if issues:
        raise FeatureSpecError(issues)
    return spec


def load_feature_spec(path: Path | str, *, schema_path: Path | None = None) -> FeatureSpec:
    """Load and validate a spec file (errors name the file, line and path)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        why = f"cannot read the feature spec: {exc.strerror}"
        raise FeatureSpecError([SpecIssue(str(p), 0, 0, "", why)]) from None
    return parse_feature_spec(text, str(p), schema_path=schema_path)


__all__ = [
    "AGG_PARAMS", "Agg", "FeatureSpec", "FeatureSpecError", "FieldFeatures", "SCALAR_AGGS",
    "SPEC_FORMAT_VERSION", "SpecIssue", "WAVEFORM_AGGS", "WAVEFORM_FIELD", "WindowSpec",
    "format_duration", "load_feature_spec", "parse_duration", "parse_feature_spec", "schema_fields",
]
