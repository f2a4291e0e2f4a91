"""The feature spec (sluice.features): shape, every validation error with its line, the hash,
the output names, the export for the Rust aggregators, the config key and the CLI command."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluice.cli import app
from sluice.config import ConfigError, load_config
from sluice.features import (
    FeatureSpec,
    FeatureSpecError,
    format_duration,
    load_feature_spec,
    parse_duration,
    parse_feature_spec,
)

REPO = Path(__file__).resolve().parents[2]

# A valid spec; the error cases below are this text with one thing broken.
VALID = """\
version: 1
windows:
  - name: temp_1m
    kind: tumble
    size: 60s
    allowed_lateness: 5s
    source: TELEMETRY
    key: device_id
    features:
      - field: temperature_c
        aggs: [count, mean, std, min, max, {ewma: {half_life: 30s}}, slope, {quantile: {q: 0.95}}]
  - name: vib_hop
    kind: hop
    size: 5m
    slide: 1m
    source: [SENSOR_FRAME, TELEMETRY]
    features:
      - field: vibration_rms
        aggs: [mean, {quantile: {q: 0.999}}]
  - name: frames
    kind: session
    gap: 30s
    source: SENSOR_FRAME
    features:
      - field: frame.samples
        aggs: [rms, peak, crest_factor, kurtosis, {band_energy: {bands: [[0, 50], [50, 200.5]]}}]
"""


def parse(text: str) -> FeatureSpec:
    return parse_feature_spec(textwrap.dedent(text), "spec.yaml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(FeatureSpecError) as ei:
        parse(text)
    return [str(i) for i in ei.value.issues]


def line_of(text: str, needle: str) -> int:
    """1-based number of the line holding ``needle`` (the case marks it with ``# <-``)."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_valid_spec_parses_to_the_model() -> None:
    spec = parse(VALID)
    temp, hop, sess = spec.windows
    assert (temp.name, temp.kind, temp.size, temp.slide, temp.gap, temp.allowed_lateness) == (
        "temp_1m", "tumble", 60_000, None, None, 5_000)
    assert temp.source == ("TELEMETRY",) and temp.key == "device_id"
    assert (hop.size, hop.slide, hop.allowed_lateness) == (300_000, 60_000, 0)
    # a list of sources is kept in the schema's enum order, whatever order the file has
    assert hop.source == ("TELEMETRY", "SENSOR_FRAME")
    assert (sess.gap, sess.size) == (30_000, None)
    assert [w.window_kind for w in spec.windows] == ["TUMBLE", "HOP", "SESSION"]
    ewma = temp.features[0].aggs[5]
    assert (ewma.name, ewma.half_life_ms) == ("ewma", 30_000)
    assert sess.features[0].aggs[4].bands == ((0.0, 50.0), (50.0, 200.5))


def test_feature_names_per_window() -> None:
    assert parse(VALID).feature_names() == {
        "temp_1m": ["temperature_c.count", "temperature_c.mean", "temperature_c.std",
                    "temperature_c.min", "temperature_c.max", "temperature_c.ewma_30s",
                    "temperature_c.slope", "temperature_c.p95"],
        "vib_hop": ["vibration_rms.mean", "vibration_rms.p99.9"],
        "frames": ["frame.samples.rms", "frame.samples.peak", "frame.samples.crest_factor",
                   "frame.samples.kurtosis", "frame.samples.band_energy_0_50hz",
                   "frame.samples.band_energy_50_200.5hz"],
    }


@pytest.mark.parametrize(("q", "name"), [(0.5, "p50"), (0.95, "p95"), (0.999, "p99.9"),
                                         (0.01, "p1"), (0.125, "p12.5"), (0.0001, "p0.01")])
def test_quantile_names(q: float, name: str) -> None:
    spec = parse(VALID.replace("q: 0.95", f"q: {q}"))
    assert spec.feature_names()["temp_1m"][-1] == f"temperature_c.{name}"


def test_rust_export_is_json_of_name_and_params() -> None:
    spec = parse(VALID)
    exported = json.loads(spec.to_json())
    assert exported["temp_1m"] == [{
        "field": "temperature_c",
        "aggs": [["count", {}], ["mean", {}], ["std", {}], ["min", {}], ["max", {}],
                 ["ewma", {"half_life_ms": 30000}], ["slope", {}], ["quantile", {"q": 0.95}]],
        "outputs": spec.feature_names()["temp_1m"],
    }]
    assert exported["frames"][0]["aggs"][4] == ["band_energy", {"bands": [[0.0, 50.0], [50.0, 200.5]]}]
    assert exported["frames"][0]["outputs"][-2:] == ["frame.samples.band_energy_0_50hz",
                                                     "frame.samples.band_energy_50_200.5hz"]
    assert spec.window("vib_hop").rust_aggregations()[0]["aggs"][1] == ["quantile", {"q": 0.999}]


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("30s", 30_000), ("1m", 60_000),
                                          ("2h", 7_200_000), ("1d", 86_400_000), (" 0s ", 0)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(("ms", "text"), [(60_000, "1m"), (90_000, "90s"), (1_500, "1500ms"),
                                          (3_600_000, "1h"), (0, "0ms")])
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


# --- every validation error: message, path and line --------------------------------------------
def window_case(body: str) -> str:
    """A spec with one window (named w) whose other keys are ``body``."""
    return "version: 1\nwindows:\n  - name: w\n" + textwrap.indent(textwrap.dedent(body), "    ")


def agg_case(*aggs: str, field: str = "temperature_c", source: str = "TELEMETRY") -> str:
    """One tumbling window with one field whose aggregations are written one per line."""
    items = "".join(f"        - {a}\n" for a in aggs)
    return window_case(f"kind: tumble\nsize: 10s\nsource: {source}\nfeatures:\n"
                       f"  - field: {field}\n    aggs:\n") + items


ERROR_CASES = {
    "unknown kind": (
        window_case("""\
            kind: tumbel  # <-
            size: 10s
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].kind", "unknown window kind 'tumbel'; use tumble, hop or session"),
    "tumble without size": (
        "version: 1\nwindows:\n  - name: w  # <-\n    kind: tumble\n    source: TELEMETRY\n"
        "    features: [{field: temperature_c, aggs: [mean]}]\n",
        "windows[0].size", "a tumble window needs size (e.g. size: 1m)"),
    "hop without slide": (
        "version: 1\nwindows:\n  - name: w  # <-\n    kind: hop\n    size: 1m\n    source: TELEMETRY\n"
        "    features: [{field: temperature_c, aggs: [mean]}]\n",
        "windows[0].slide", "a hop window needs slide (e.g. slide: 10s)"),
    "session without gap": (
        "version: 1\nwindows:\n  - name: w  # <-\n    kind: session\n    source: TELEMETRY\n"
        "    features: [{field: temperature_c, aggs: [mean]}]\n",
        "windows[0].gap", "a session window needs gap (e.g. gap: 30s)"),
    "slide on a tumble window": (
        window_case("""\
            kind: tumble
            size: 10s
            slide: 5s  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].slide", "slide does not apply to a tumble window (it takes size)"),
    "size on a session window": (
        window_case("""\
            kind: session
            gap: 10s
            size: 5s  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].size", "size does not apply to a session window (it takes gap)"),
    "slide larger than size": (
        window_case("""\
            kind: hop
            size: 10s
            slide: 1m  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].slide", "slide (1m) is larger than size (10s)"),
    "size not a multiple of slide": (
        window_case("""\
            kind: hop
            size: 1m
            slide: 25s  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].slide", "size (1m) must be a whole multiple of slide (25s), as Flink SQL's HOP"),
    "duration without unit": (
        window_case("""\
            kind: tumble
            size: 60  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].size", "bad duration 60: write an integer with a unit (ms, s, m, h, d)"),
    "fractional duration": (
        window_case("""\
            kind: tumble
            size: 1.5m  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].size", "bad duration '1.5m'"),
    "zero size": (
        window_case("""\
            kind: tumble
            size: 0s  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].size", "bad duration '0s': must be greater than 0"),
    "negative lateness": (
        window_case("""\
            kind: tumble
            size: 1m
            allowed_lateness: -5s  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].allowed_lateness", "bad duration '-5s'"),
    "unknown aggregation": (
        agg_case("count", "meen  # <-"),
        "windows[0].features[0].aggs[1]", "unknown aggregation 'meen'; known: count, sum, mean"),
    "unknown field": (
        agg_case("mean", field="temprature_c  # <-"),
        "windows[0].features[0].field", "unknown field 'temprature_c'; EnrichedReading's numeric "
        "fields are frame.mean_g, frame.n_samples"),
    "string field": (
        agg_case("mean", field="status  # <-"),
        "windows[0].features[0].field", "field 'status' is string, not numeric"),
    "timestamp field": (
        agg_case("mean", field="ts  # <-"),
        "windows[0].features[0].field", "field 'ts' is long (timestamp-millis), not numeric"),
    "metadata field": (
        agg_case("mean", field="source_offset  # <-"),
        "windows[0].features[0].field", "field 'source_offset' describes where a record came from"),
    "waveform aggregation on a scalar field": (
        agg_case("mean", "kurtosis  # <-"),
        "windows[0].features[0].aggs[1]", "kurtosis is a waveform aggregation: it applies to "
        "frame.samples only"),
    "scalar aggregation on the samples": (
        agg_case("rms", "mean  # <-", field="frame.samples", source="SENSOR_FRAME"),
        "windows[0].features[0].aggs[1]", "mean is not a waveform aggregation; frame.samples takes rms"),
    "field the source never sets": (
        agg_case("mean", field="temperature_c  # <-", source="SENSOR_FRAME"),
        "windows[0].features[0].field", "field 'temperature_c' is never set on SENSOR_FRAME events; "
        "it comes with TELEMETRY"),
    "samples from telemetry": (
        agg_case("rms", field="frame.samples  # <-", source="TELEMETRY"),
        "windows[0].features[0].field", "field 'frame.samples' is never set on TELEMETRY events"),
    "unknown parameter": (
        agg_case("mean", "{ewma: {half_lfe: 30s}}  # <-"),
        "windows[0].features[0].aggs[1]", "unknown parameter 'half_lfe' for ewma; it takes: half_life"),
    "missing parameter": (
        agg_case("mean", "ewma  # <-"),
        "windows[0].features[0].aggs[1]", "ewma needs parameter 'half_life', e.g. {ewma: {half_life: 30s}}"),
    "parameter on a plain aggregation": (
        agg_case("{mean: {x: 1}}  # <-"),
        "windows[0].features[0].aggs[0]", "mean takes no parameters"),
    "bad half-life": (
        agg_case("{ewma: {half_life: 30}}  # <-"),
        "windows[0].features[0].aggs[0]", "bad duration 30"),
    "quantile of 1": (
        agg_case("{quantile: {q: 1}}  # <-"),
        "windows[0].features[0].aggs[0]", "quantile q must be strictly between 0 and 1, not 1"),
    "quantile not a number": (
        agg_case("{quantile: {q: high}}  # <-"),
        "windows[0].features[0].aggs[0]", "quantile q must be a number, not 'high'"),
    "band with low >= high": (
        agg_case("{band_energy: {bands: [[0, 50], [90, 60]]}}  # <-", field="frame.samples",
                 source="SENSOR_FRAME"),
        "windows[0].features[0].aggs[0]", "band_energy bands[1] = [90, 60]: need 0 <= low_hz < high_hz"),
    "band not a pair": (
        agg_case("{band_energy: {bands: [50]}}  # <-", field="frame.samples", source="SENSOR_FRAME"),
        "windows[0].features[0].aggs[0]", "band_energy bands[0] must be a [low_hz, high_hz] pair"),
    "aggregation entry with two names": (
        agg_case("{ewma: {half_life: 1s}, quantile: {q: 0.5}}  # <-"),
        "windows[0].features[0].aggs[0]", "an aggregation is a name (mean) or a one-key mapping"),
    "duplicate window names": (
        VALID.replace("name: vib_hop", "name: temp_1m  # <-"),
        "windows[1].name", "duplicate window name 'temp_1m' (also windows[0])"),
    "same aggregation twice": (
        agg_case("mean", "min", "mean  # <-"),
        "windows[0].features[0].aggs[2]", "feature name 'temperature_c.mean' is also produced by "
        "windows[0].features[0].aggs[0]"),
    "same half-life spelt twice": (
        agg_case("{ewma: {half_life: 1m}}", "{ewma: {half_life: 60000ms}}  # <-"),
        "windows[0].features[0].aggs[1]", "feature name 'temperature_c.ewma_1m' is also produced"),
    "same field listed twice": (
        window_case("""\
            kind: tumble
            size: 1m
            source: TELEMETRY
            features:
              - {field: temperature_c, aggs: [mean, max]}
              - {field: temperature_c, aggs: [max]}  # <-"""),
        "windows[0].features[1].aggs[0]", "feature name 'temperature_c.max' is also produced by "
        "windows[0].features[0].aggs[1]"),
    "duplicate YAML key": (
        window_case("""\
            kind: tumble
            size: 1m
            size: 2m  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].size", "duplicate key 'size' (first at line 5)"),
    "unknown source": (
        window_case("""\
            kind: tumble
            size: 1m
            source: [TELEMETRY, FRAMES]  # <-
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].source", "unknown source 'FRAMES'; use one or a list of TELEMETRY, SENSOR_FRAME"),
    "key other than device_id": (
        window_case("""\
            kind: tumble
            size: 1m
            source: TELEMETRY
            key: site_id  # <-
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].key", "key must be device_id, not 'site_id'"),
    "unknown window key": (
        window_case("""\
            kind: tumble
            size: 1m
            sizee: 1m  # <-
            source: TELEMETRY
            features: [{field: temperature_c, aggs: [mean]}]"""),
        "windows[0].sizee", "unknown key 'sizee' in windows[0]"),
    "unknown top-level key": (
        VALID + "window: []  # <-\n", "window", "unknown key 'window' in the top level"),
    "missing features": (
        "version: 1\nwindows:\n  - name: w  # <-\n    kind: tumble\n    size: 1m\n    source: TELEMETRY\n",
        "windows[0].features", "required key 'features' is missing"),
    "no aggregations": (
        agg_case().replace("aggs:", "aggs: []  # <-"),
        "windows[0].features[0].aggs", "must not be empty"),
    "no windows": (
        "version: 1\nwindows: []  # <-\n", "windows", "must not be empty"),
    "bad window name": (
        VALID.replace("name: frames", "name: 'my window'  # <-"),
        "windows[2].name", "window name 'my window' must start with a letter"),
    "format version 2": (
        VALID.replace("version: 1", "version: 2  # <-"),
        "version", "unsupported spec format version 2; this sluice reads version 1"),
    "not YAML": (
        VALID.replace("    size: 5m", "    size: [5m  # <-"),
        "", "not valid YAML"),
    "a list, not a mapping": (
        "- name: w  # <-\n", "", "a feature spec is a mapping with `version: 1` and `windows:` (got list)"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_validation_error_names_file_line_and_path(case: str) -> None:
    text, path, message = ERROR_CASES[case]
    text = textwrap.dedent(text)
    errors = errors_of(text)
    assert len(errors) == 1, errors
    m = re.match(r"^spec\.yaml:(\d+):(\d+): (.*)$", errors[0])
    assert m, errors[0]
    line, rest = int(m.group(1)), m.group(3)
    expected_line = line_of(text, "# <-")
    if case == "not YAML":
        # the parser notices the unclosed [ where the flow sequence should have ended
        assert line > expected_line
    else:
        assert line == expected_line, errors[0]
    assert rest.startswith(f"{path}: " if path else message), rest
    assert message in rest, rest


def test_empty_file() -> None:
    with pytest.raises(FeatureSpecError, match=r"spec\.yaml:1:1: the feature spec is empty"):
        parse("# nothing here\n")


def test_every_problem_is_reported_in_file_order() -> None:
    text = (VALID.replace("kind: session", "kind: sesion")
            .replace("[mean, {quantile", "[meen, {quantile")
            .replace("slope,", "slope, ewma,"))
    errors = errors_of(text)
    assert [e.split(": ")[1] for e in errors] == [
        "windows[0].features[0].aggs[7]", "windows[1].features[0].aggs[0]", "windows[2].kind"]
    assert [int(e.split(":")[1]) for e in errors] == [11, 19, 21]
    # and the message of the exception lists them all
    with pytest.raises(FeatureSpecError) as ei:
        parse(text)
    assert str(ei.value).startswith("invalid feature spec (3 problems):\n  spec.yaml:11:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FeatureSpecError, match=r"nope\.yaml:0:0: cannot read the feature spec"):
        load_feature_spec(tmp_path / "nope.yaml")


# --- the hash ---------------------------------------------------------------------------------
REFORMATTED = """\
# the same spec, written differently: comments, flow style, other key order,
# other duration spellings, windows and aggregations reordered
windows:
  - {name: frames, kind: session, gap: 30000ms, source: [SENSOR_FRAME],
     features: [{field: frame.samples,
                 aggs: [{band_energy: {bands: [[0.0, 50], [50, 200.5]]}},
                        kurtosis, crest_factor, peak, rms]}]}
  - name: vib_hop
    source: [TELEMETRY, SENSOR_FRAME, TELEMETRY]
    slide: 60s
    size: 300s
    kind: hop
    allowed_lateness: 0ms
    features:
      - aggs:
          - {quantile: {q: 0.9990}}
          - mean
        field: vibration_rms
  - features:
      - field: temperature_c
        aggs: [max, min, {quantile: {q: 0.95}}, slope, {ewma: {half_life: 30000ms}}, std, mean, count]
    kind: tumble
    name: temp_1m
    size: 1m
    allowed_lateness: 5000ms
    source: TELEMETRY
version: 1
"""


def test_hash_ignores_formatting_order_and_spelling() -> None:
    assert parse(REFORMATTED).spec_version() == parse(VALID).spec_version()
    # splitting a field's aggregations over two entries produces the same features
    split = VALID.replace(
        "        aggs: [mean, {quantile: {q: 0.999}}]",
        "        aggs: [mean]\n      - field: vibration_rms\n        aggs: [{quantile: {q: 0.999}}]")
    assert parse(split).spec_version() == parse(VALID).spec_version()


def test_hash_is_pinned() -> None:
    # The normalisation must not drift between releases: models name the version they were
    # trained on. Change this only together with a note that every spec version changed.
    assert parse(VALID).spec_version() == "beb284575cf5ce8f"


@pytest.mark.parametrize(("old", "new"), [
    ("size: 60s", "size: 2m"),
    ("allowed_lateness: 5s", "allowed_lateness: 6s"),
    ("half_life: 30s", "half_life: 31s"),
    ("q: 0.95", "q: 0.9"),
    ("slide: 1m", "slide: 30s"),
    ("gap: 30s", "gap: 20s"),
    ("[50, 200.5]", "[50, 200]"),
    ("name: vib_hop", "name: vib_hop2"),
    ("source: [SENSOR_FRAME, TELEMETRY]", "source: SENSOR_FRAME"),
    ("aggs: [mean, {quantile", "aggs: [mean, max, {quantile"),
    ("field: vibration_rms", "field: humidity_pct"),
])
def test_hash_changes_with_meaning(old: str, new: str) -> None:
    assert old in VALID
    assert parse(VALID.replace(old, new)).spec_version() != parse(VALID).spec_version()


# --- the repo's spec, the config key and the CLI --------------------------------------------
def test_repo_spec_is_the_configured_one_and_valid() -> None:
    cfg = load_config(REPO / "sluice.yaml", env={})
    assert cfg.features.spec == Path("features.yaml")
    spec = cfg.feature_spec()
    assert spec is not None
    assert spec == load_feature_spec(REPO / "features.yaml")
    kinds = {w.name: w.kind for w in spec.windows}
    assert sorted(kinds.values()) == ["hop", "session", "tumble"]
    temp = spec.window("temp_1m")
    assert (temp.kind, temp.size) == ("tumble", 60_000)
    hop = spec.window("vib_5m")
    assert (hop.size, hop.slide) == (300_000, 60_000)
    sess = spec.window("vib_session")
    assert sess.source == ("SENSOR_FRAME",)
    assert {a.name for a in sess.features[0].aggs} == {
        "rms", "peak", "crest_factor", "kurtosis", "band_energy"}


def _config_with_spec(tmp_path: Path, spec_text: str | None, spec_rel: str = "conf/feat.yaml") -> Path:
    cfg = tmp_path / "sluice.yaml"
    cfg.write_text(f"features:\n  spec: {spec_rel}\nschemas:\n  dir: {REPO / 'schemas'}\n")
    if spec_text is not None:
        (tmp_path / spec_rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / spec_rel).write_text(spec_text)
    return cfg


def test_config_loads_spec_relative_to_the_config(tmp_path: Path) -> None:
    cfg = load_config(_config_with_spec(tmp_path, VALID), env={})
    spec = cfg.feature_spec()
    assert spec is not None and spec.spec_version() == parse(VALID).spec_version()


def test_config_refuses_a_bad_spec_at_load(tmp_path: Path) -> None:
    path = _config_with_spec(tmp_path, VALID.replace("kind: hop", "kind: slide"))
    with pytest.raises(ConfigError) as ei:
        load_config(path, env={})
    msg = str(ei.value)
    assert msg.startswith("features.spec: invalid feature spec (1 problem):")
    assert f"{tmp_path / 'conf/feat.yaml'}:13:5: windows[1].kind: unknown window kind 'slide'" in msg


def test_config_refuses_a_missing_spec(tmp_path: Path) -> None:
    with pytest.raises(ConfigError,
                       match=r"features\.spec: the feature spec .*/conf/feat\.yaml does not exist"):
        load_config(_config_with_spec(tmp_path, None), env={})


def test_config_refuses_a_spec_without_its_schema(tmp_path: Path) -> None:
    path = _config_with_spec(tmp_path, VALID)
    path.write_text(path.read_text().replace(str(REPO / "schemas"), str(tmp_path)))
    with pytest.raises(ConfigError, match=r"features\.spec: fields are checked against the "
                       r"EnrichedReading schema, and .*telemetry\.enriched-value/v\d+\.avsc "
                       r".* does not exist"):
        load_config(path, env={})


def test_config_without_spec_has_no_features(tmp_path: Path) -> None:
    (tmp_path / "sluice.yaml").write_text("job: {name: x}\n")
    cfg = load_config(tmp_path / "sluice.yaml", env={})
    assert cfg.features.spec is None and cfg.feature_spec() is None


def test_cli_check_lists_windows_and_features() -> None:
    result = CliRunner().invoke(app, ["features", "check", "-c", str(REPO / "sluice.yaml")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    spec = load_feature_spec(REPO / "features.yaml")
    assert f"feature_spec_version {spec.spec_version()}" in result.output
    for w in spec.windows:
        assert w.name in result.output and w.window_kind in result.output
    assert "ewma_30s" in result.output and "band_energy_50_200hz" in result.output
    n = sum(len(v) for v in spec.feature_names().values())
    assert f"OK: {n} features" in result.output


def test_cli_check_prints_errors_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("slope,", "slop,"))
    result = CliRunner().invoke(app, ["features", "check", str(bad)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"{bad}:11:" in result.output
    assert "windows[0].features[0].aggs[6]: unknown aggregation 'slop'" in result.output


def test_cli_check_json_is_the_rust_export(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    result = CliRunner().invoke(app, ["features", "check", str(good), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == parse(VALID).rust_aggregations()


def test_normalised_form_is_what_the_hash_covers() -> None:
    spec = parse("""\
        version: 1
        windows:
          - name: t
            kind: hop
            size: 1m
            slide: 30s
            source: [SENSOR_FRAME, TELEMETRY]
            features:
              - field: vibration_rms
                aggs: [{ewma: {half_life: 1m}}, count]
        """)
    assert spec.normalised() == {"version": 1, "windows": [{
        "name": "t", "kind": "hop", "size_ms": 60_000, "slide_ms": 30_000, "gap_ms": None,
        "allowed_lateness_ms": 0, "sources": ["SENSOR_FRAME", "TELEMETRY"], "key": "device_id",
        "features": [("vibration_rms.count", "count", {}, "vibration_rms"),
                     ("vibration_rms.ewma_1m", "ewma", {"half_life_ms": 60_000}, "vibration_rms")],
    }]}
