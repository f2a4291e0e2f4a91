"""Data quality: the Rust per-record checks against great-expectations itself.

The differential tests feed one seeded, edge-case-heavy dataset to both the
Rust :class:`QualityChecker` (row by row) and great-expectations (the whole
batch, ``result_format`` COMPLETE) and require identical per-row verdicts for
every per-record expectation of every suite, plus an edge-case suite.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sluice.config import REPO_ROOT, load_config
from sluice.native import AvroDecoder, QualityChecker, QualitySuiteError, SluiceError
from sluice.quality import (
    COLUMNS,
    ROW_TYPES,
    SOURCES,
    AuditBatch,
    AuditBatcher,
    _exception,
    compile_suite,
    expectation_name,
    load_suite,
    run_great_expectations,
    suite_path,
    to_dataframe,
    validate_batch,
)

SUITES = REPO_ROOT / "schemas" / "expectations"
QUALITY_SCHEMA = (REPO_ROOT / "schemas" / "quality-value" / "v1.avsc").read_text()
N_ROWS = 3000


# ------------------------------------------------------------------ datasets

NAN, INF = float("nan"), float("inf")
ULP = math.ulp


def _near(*xs: float) -> list[Any]:
    """Each bound, exactly and one ulp either side, as int and float where exact."""
    out: list[Any] = []
    for x in xs:
        out += [x, float(x), math.nextafter(float(x), INF), math.nextafter(float(x), -INF)]
        if float(x).is_integer():
            out += [int(x), int(x) + 1, int(x) - 1]
    return out


NULLS: list[Any] = [None, NAN, -NAN]
NUM_EDGES: list[Any] = [
    INF, -INF, 0, -0.0, 0.0, True, False, 1, -1, 1e16, 1e-5, 123456789012345678.0, 5e-324,
    2**53, 2**53 + 1, -(2**53), 1e300, -1e300, 0.1, 2.5, 1.5,
]
STR_EDGES: list[Any] = [
    "", " ", "OK", "ok", "OK ", " OK", "OK\n", "WARN", "FAULT", "MAINTENANCE", "1", "1.0", "True",
    "dev-0007", "dev-0007\n", "dev-0007\n\n", "\ndev-0007", "xdev-0007", "dev-00071", "dev-000",
    "dev-abcd", "DEV-0007", "dev-٠١٢٣", "dev-０１２３", "1.4.2", "1.4.2\n", "01.4.2", "1.4", "fw-1.2.3",
    "1.4.2.5", "١.٤.٢", "é", "e\u0301", "😀", "😀😀😀", "a" * 64, "a" * 65, "a" * 128, "a" * 129,
    "tab\there", "nul\x00byte", "ctrl\x1fchar", "line\nbreak", "ünïcödé", "repair", "Repair",
    "part_replaced", "inspection", "$", "^", "a$b", "[x]", "ab", "abc", "abcd", "b", "czz", "d",
]


def _pick(rng: random.Random, normal: Any, *pools: Sequence[Any], p_edge: float = 0.35) -> Any:
    if rng.random() < p_edge:
        pool = pools[rng.randrange(len(pools))]
        return pool[rng.randrange(len(pool))]
    return normal() if callable(normal) else normal


def telemetry_rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(n):
        rows.append((
            _pick(rng, f"7-{i:08d}", NULLS[:1], ["", "x" * 128, "x" * 129, "é" * 128]),
            _pick(rng, lambda: f"dev-{rng.randrange(10000):04d}", NULLS[:1], STR_EDGES),
            _pick(rng, lambda: 1_700_000_000_000 + rng.randrange(10**9), NULLS[:1],
                  _near(946684800000, 4102444800000), [True, 0, -1]),
            _pick(rng, lambda: round(rng.uniform(15, 110), 2), NULLS, NUM_EDGES, _near(-60, 150, -20, 120)),
            _pick(rng, lambda: abs(rng.gauss(1.5, 0.4)), NULLS, NUM_EDGES, _near(0, 100, 5)),
            _pick(rng, lambda: rng.choice(["OK", "WARN", "FAULT", "MAINTENANCE"]), NULLS[:1], STR_EDGES),
            _pick(rng, lambda: round(rng.uniform(20, 80), 1), NULLS, NUM_EDGES, _near(0, 100)),
            _pick(rng, lambda: rng.choice(["1.4.2", "1.5.0", None]), NULLS[:1], STR_EDGES),
            _pick(rng, lambda: rng.randint(1, 64), NULLS, NUM_EDGES, _near(1, 10000)),
        ))
    return rows


def frame_rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    return [
        (
            _pick(rng, lambda: f"dev-{rng.randrange(10000):04d}", NULLS[:1], STR_EDGES),
            _pick(rng, lambda: 1_700_000_000_000 + rng.randrange(10**9), NULLS[:1],
                  _near(946684800000, 4102444800000)),
            _pick(rng, lambda: rng.choice([100, 1000, 4000]), NULLS, _near(1, 1000000), NUM_EDGES),
            _pick(rng, lambda: rng.randint(1, 4096), NULLS, _near(1, 16, 4096), [True, False, 0]),
            _pick(rng, lambda: abs(rng.gauss(1, 0.5)), NULLS, NUM_EDGES, _near(0, 5, 1000)),
            _pick(rng, lambda: abs(rng.gauss(3, 1)), NULLS, NUM_EDGES, _near(0, 1000)),
            _pick(rng, lambda: rng.gauss(0, 0.2), NULLS, NUM_EDGES, _near(-1000, 1000)),
        )
        for _ in range(n)
    ]


def event_rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    return [
        (
            _pick(rng, lambda: f"m-{rng.randrange(10**6)}", NULLS[:1], ["", "x" * 128, "x" * 129]),
            _pick(rng, lambda: f"dev-{rng.randrange(10000):04d}", NULLS[:1], STR_EDGES),
            _pick(rng, lambda: 1_700_000_000_000 + rng.randrange(10**9), NULLS[:1],
                  _near(946684800000, 4102444800000)),
            _pick(rng, lambda: rng.choice(["repair", "inspection", "part_replaced"]), NULLS[:1], STR_EDGES),
            _pick(rng, lambda: rng.choice(["Ana", "Bo", None]), NULLS[:1], STR_EDGES),
            _pick(rng, lambda: rng.choice(["ok", "replaced bearing", None, "x" * 2000, "x" * 2001]),
                  NULLS[:1], STR_EDGES),
            _pick(rng, lambda: rng.randint(0, 5), NULLS, _near(0, 1000), [True, False, 2.5]),
        )
        for _ in range(n)
    ]


EDGE_COLUMNS = ("x", "s", "n")


def _exp(t: str, col: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"blocking": bool(len(kw) % 2)}
    if name:
        meta["name"] = name
    return {"type": t, "kwargs": {"column": col, **kw}, "meta": meta}


#: x: numbers of every kind (+ nulls), s: strings (+ nulls), n: small ints/bools/floats.
EDGE_SUITE: dict[str, Any] = {
    "name": "edge-cases",
    "expectations": [
        _exp("expect_column_values_to_not_be_null", "x"),
        _exp("expect_column_values_to_be_null", "x"),
        _exp("expect_column_values_to_be_between", "x", "x-closed", min_value=-60, max_value=150),
        _exp("expect_column_values_to_be_between", "x", "x-open", min_value=0, max_value=1.5,
             strict_min=True, strict_max=True),
        _exp("expect_column_values_to_be_between", "x", "x-min-only", min_value=0.1),
        _exp("expect_column_values_to_be_between", "x", "x-max-only-strict", max_value=2**53,
             strict_max=True),
        _exp("expect_column_values_to_be_in_set", "x", "x-in", value_set=[0, 1, 2.5, "1", True, 1e300, None]),
        _exp("expect_column_values_to_not_be_in_set", "x", "x-not-in", value_set=[-0.0, 5e-324, 2**53]),
        _exp("expect_column_values_to_match_regex", "x", "x-repr-exp", regex="e[+-]0?[0-9]"),
        _exp("expect_column_values_to_match_regex", "x", "x-repr-int", regex="^-?[0-9]+$"),
        _exp("expect_column_value_lengths_to_be_between", "x", "x-len", min_value=3, max_value=5),
        _exp("expect_column_value_lengths_to_equal", "x", "x-len3", value=3),
        _exp("expect_column_values_to_match_regex", "s", "s-dev", regex="^dev-[0-9]{4}$"),
        _exp("expect_column_values_to_match_regex", "s", "s-contains", regex="OK|é"),
        _exp("expect_column_values_to_match_regex", "s", "s-anchor-Z", regex="\\Adev-[0-9]{4}\\Z"),
        _exp("expect_column_values_to_match_regex", "s", "s-class", regex="^[^a-z\\n]*$|[\\]\\[]"),
        _exp("expect_column_values_to_match_regex", "s", "s-rep", regex="^(?:a{2,}|b{,1}c?)(?P<t>z+)?$"),
        _exp("expect_column_values_to_match_regex", "s", "s-brace-literal", regex="a{x}|^{$|\\$|\\^"),
        _exp("expect_column_values_to_not_match_regex", "s", "s-ctrl",
             regex="[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]"),
        _exp("expect_column_values_to_not_match_regex", "s", "s-dot", regex="^.$"),
        _exp("expect_column_values_to_be_in_set", "s", "s-in", value_set=["OK", "WARN", "1", 1, ""]),
        _exp("expect_column_values_to_not_be_in_set", "s", "s-not-in", value_set=["é", "e\u0301"]),
        _exp("expect_column_value_lengths_to_be_between", "s", "s-len", min_value=1, max_value=64,
             strict_min=True),
        _exp("expect_column_value_lengths_to_be_between", "s", "s-len-max", max_value=3, strict_max=True),
        _exp("expect_column_value_lengths_to_equal", "s", "s-len1", value=1),
        _exp("expect_column_values_to_be_between", "n", "n-bool", min_value=0, max_value=1, mostly=0.5),
        _exp("expect_column_values_to_be_in_set", "n", "n-in", value_set=[True, 2]),
    ],
    "meta": {"notes": "edge cases for the differential test"},
}


def edge_rows(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    xs = NULLS + NUM_EDGES + _near(-60, 150, 0, 1.5, 0.1, 2**53, 2.5)
    strs = [s for s in STR_EDGES] + [None]
    return [
        (
            _pick(rng, lambda: rng.choice([rng.uniform(-100, 200), rng.randint(-100, 200),
                                           rng.uniform(-1e-6, 1e-6), rng.uniform(1e15, 1e17)]),
                  xs, p_edge=0.6),
            _pick(rng, lambda: "".join(rng.choice("ab$^[]{}\n-dev0123456789é")
                                       for _ in range(rng.randrange(6))), strs, p_edge=0.7),
            _pick(rng, lambda: rng.choice([0, 1, 2, True, False, 0.5, 1.0, None, NAN]), p_edge=0.0),
        )
        for _ in range(n)
    ]


CASES = {
    "telemetry": (COLUMNS["telemetry"], telemetry_rows),
    "sensor-frames": (COLUMNS["sensor-frames"], frame_rows),
    "maintenance-events": (COLUMNS["maintenance-events"], event_rows),
}


# ------------------------------------------------------------------ helpers


def rust_verdicts(checker: QualityChecker, rows: Sequence[Sequence[Any]]) -> dict[str, set[int]]:
    """Expectation name → indices of the rows the Rust checks fail."""
    out: dict[str, set[int]] = {n: set() for n in checker.names}
    for i, row in enumerate(rows):
        got = checker.check(tuple(row))
        if got is not None:
            for name in got[0] + got[1]:
                out[name].add(i)
    return out


def ge_verdicts(
    suite: dict[str, Any], rows: Sequence[Sequence[Any]], columns: Sequence[str]
) -> dict[str, set[int]]:
    """Expectation name → indices great-expectations reports unexpected (COMPLETE)."""
    res = run_great_expectations(suite, to_dataframe(rows, columns), "COMPLETE")
    out: dict[str, set[int]] = {}
    for r in res.results:
        cfg = r.expectation_config
        if cfg.type not in ROW_TYPES:
            continue
        name = expectation_name({"type": cfg.type, "kwargs": cfg.kwargs, "meta": cfg.meta})
        assert _exception(r) is None, (name, _exception(r))
        idx = r.result["unexpected_index_list"]
        assert len(idx) == r.result["unexpected_count"], name
        out[name] = set(idx)
    return out


def diff(rust: dict[str, set[int]], ge: dict[str, set[int]]) -> dict[str, tuple[list[int], list[int]]]:
    """Per expectation: (rows only Rust fails, rows only GE fails), non-empty ones."""
    assert rust.keys() == ge.keys()
    return {
        n: (sorted(rust[n] - ge[n])[:10], sorted(ge[n] - rust[n])[:10])
        for n in rust
        if rust[n] != ge[n]
    }


# ------------------------------------------------------------------ suites


@pytest.mark.parametrize("source", SOURCES)
def test_suite_files_are_great_expectations_suites(source: str) -> None:
    import great_expectations as gx

    doc = load_suite(suite_path(SUITES, source))
    suite = gx.ExpectationSuite(**doc)
    assert suite.name == source
    assert len(suite.expectations) == len(doc["expectations"])
    # Round trip through GE's own serialisation keeps types, columns and meta.blocking.
    again = suite.to_json_dict()["expectations"]
    assert [(e["type"], e["kwargs"].get("column"), e["meta"].get("blocking")) for e in again] == [
        (e["type"], e["kwargs"].get("column"), e["meta"].get("blocking")) for e in doc["expectations"]
    ]
    checker = compile_suite(suite_path(SUITES, source), COLUMNS[source])
    assert checker.suite_name == source and checker.blocking


def test_generator_data_passes_every_telemetry_expectation() -> None:
    from sluice.generator import Reading, plan

    cfg = load_config(REPO_ROOT / "sluice.yaml", env={}).with_overrides(generator={"records": 5000})
    checker = compile_suite(suite_path(SUITES, "telemetry"), COLUMNS["telemetry"])
    readings = [r for r in plan(cfg, start_ms=1_700_000_000_000, step_ms=10) if isinstance(r, Reading)]
    assert len(readings) >= 4000
    failures = [
        (r, got)
        for r in readings
        if (got := checker.check((r.event_id, r.device_id, r.ts, r.temperature_c, r.vibration_rms,
                                  r.status, r.humidity_pct, r.firmware, r.sample_count))) is not None
    ]
    assert failures == []


# ------------------------------------------------------------------ differential


@pytest.mark.parametrize("source", SOURCES)
def test_rust_and_great_expectations_agree_on_every_row(source: str) -> None:
    columns, gen = CASES[source]
    suite = load_suite(suite_path(SUITES, source))
    rows = gen(random.Random(f"quality-{source}"), N_ROWS)
    checker = QualityChecker(json.dumps(suite), list(columns))
    rust, ge = rust_verdicts(checker, rows), ge_verdicts(suite, rows, columns)
    assert diff(rust, ge) == {}
    # The data really exercises the checks: every expectation fails somewhere and passes somewhere.
    for name, bad in rust.items():
        assert 0 < len(bad) < N_ROWS, name


def test_rust_and_great_expectations_agree_on_the_edge_case_suite() -> None:
    rows = edge_rows(random.Random("quality-edges"), N_ROWS)
    checker = QualityChecker(json.dumps(EDGE_SUITE), list(EDGE_COLUMNS))
    rust, ge = rust_verdicts(checker, rows), ge_verdicts(EDGE_SUITE, rows, EDGE_COLUMNS)
    assert diff(rust, ge) == {}
    for name, bad in rust.items():
        assert 0 < len(bad) < N_ROWS, name


def test_negative_control_a_flipped_semantic_is_detected() -> None:
    """The comparison can fail: GE runs a copy with strict_max flipped on one
    between and a regex without its anchor; the Rust side keeps the original."""
    rows = edge_rows(random.Random("quality-edges"), N_ROWS)
    checker = QualityChecker(json.dumps(EDGE_SUITE), list(EDGE_COLUMNS))
    flipped = copy.deepcopy(EDGE_SUITE)
    for e in flipped["expectations"]:
        if e["meta"].get("name") == "x-closed":
            e["kwargs"]["strict_max"] = True
        if e["meta"].get("name") == "s-dev":
            e["kwargs"]["regex"] = "dev-[0-9]{4}"
    d = diff(rust_verdicts(checker, rows), ge_verdicts(flipped, rows, EDGE_COLUMNS))
    assert set(d) == {"x-closed", "s-dev"}
    assert d["x-closed"] == ([], sorted(i for i, r in enumerate(rows) if r[0] == 150)[:10])


def test_between_on_incomparable_values_fails_the_row_where_ge_fails_the_column() -> None:
    suite = {"name": "t", "expectations": [_exp("expect_column_values_to_be_between", "x", "b", min_value=0,
                                                max_value=10)]}
    rows = [(1,), ("5",), (None,)]
    assert QualityChecker(json.dumps(suite), ["x"]).check(("5",)) == ([], ["b"])
    res = run_great_expectations(suite, to_dataframe(rows, ["x"]), "COMPLETE")
    assert res.results[0].success is False
    assert "must either be None or of the same type" in str(_exception(res.results[0]))


# ------------------------------------------------------------------ regex translation fuzz


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    atoms = ["a", "b", "é", ".", "[ab]", "[^a]", "[a-c]", "[-a]", "\\.", "\\n", "\\$", "x{2}", "{", "}"]
    parts = []
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.15 and depth < 2:
            a = "(" + _random_pattern(rng, depth + 1) + ")"
        elif r < 0.25 and depth < 2:
            a = "(?:" + _random_pattern(rng, depth + 1) + "|" + _random_pattern(rng, depth + 1) + ")"
        else:
            a = rng.choice(atoms)
        if rng.random() < 0.3 and not a.endswith("}"):
            a += rng.choice(["*", "+", "?", "{1,2}", "{,2}", "{2,}", "*?", "+?"])
        parts.append(a)
    p = "".join(parts)
    if depth == 0:
        p = rng.choice(["", "^", "\\A"]) + p + rng.choice(["", "$", "\\Z"])
    return p


def test_regex_translation_matches_python_re_search() -> None:
    rng = random.Random("regex-fuzz")
    alphabet = "abé.\n$x{}-c"
    strings = ["", "\n", "a\n", "a\n\n", "\na"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(7))) for _ in range(150)
    ]
    checked = 0
    for _ in range(400):
        pat = _random_pattern(rng)
        suite = {"name": "r", "expectations": [
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "s", "regex": pat}}]}
        try:
            checker = QualityChecker(json.dumps(suite), ["s"])
        except QualitySuiteError:
            continue
        checked += 1
        compiled = re.compile(pat)
        for s in strings:
            want = compiled.search(s) is not None
            assert (checker.check((s,)) is None) == want, (pat, s)
    assert checked > 300


# ------------------------------------------------------------------ errors


def _write(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "suite.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_suite_loading_errors(tmp_path: Path) -> None:
    assert issubclass(QualitySuiteError, SluiceError)
    with pytest.raises(QualitySuiteError, match="cannot read"):
        load_suite(tmp_path / "missing.json")
    with pytest.raises(QualitySuiteError, match="not valid JSON"):
        load_suite(_write(tmp_path, "{nope"))
    with pytest.raises(QualitySuiteError, match="name"):
        load_suite(_write(tmp_path, {"expectations": []}))
    with pytest.raises(QualitySuiteError, match="must be a list"):
        load_suite(_write(tmp_path, {"name": "s", "expectations": {}}))
    with pytest.raises(QualitySuiteError, match="blocking must be true or false"):
        load_suite(_write(tmp_path, {"name": "s", "expectations": [
            _exp("expect_column_values_to_not_be_null", "x") | {"meta": {"blocking": "yes"}}]}))
    with pytest.raises(QualitySuiteError, match="invalid regex"):
        load_suite(_write(tmp_path, {"name": "s", "expectations": [
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "("}}]}))
    with pytest.raises(QualitySuiteError, match="0.x format"):
        QualityChecker(json.dumps({"expectation_suite_name": "s", "expectations": []}), ["x"])


def test_unsupported_expectation_type_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, {"name": "s", "expectations": [
        {"type": "expect_column_values_to_be_dateutil_parseable", "kwargs": {"column": "x"}}]})
    name = "expect_column_values_to_be_dateutil_parseable(x)"
    with pytest.raises(QualitySuiteError, match=re.escape(name)):
        compile_suite(p, ["x"])


def test_string_bounds_are_rejected_like_great_expectations_does() -> None:
    import great_expectations as gx

    exp = {"type": "expect_column_values_to_be_between",
           "kwargs": {"column": "x", "min_value": "b", "max_value": "d"}}
    with pytest.raises(Exception, match="not a valid float"):
        gx.ExpectationSuite(name="s", expectations=[exp])
    with pytest.raises(QualitySuiteError, match="must be a number"):
        QualityChecker(json.dumps({"name": "s", "expectations": [exp]}), ["x"])


def test_unknown_column_and_untranslatable_regex(tmp_path: Path) -> None:
    p = _write(tmp_path, {"name": "s", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "y"}}]})
    with pytest.raises(QualitySuiteError, match="unknown column 'y'"):
        compile_suite(p, ["x"])
    p = _write(tmp_path, {"name": "s", "expectations": [
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "^\\d+$"},
         "meta": {"name": "digits"}}]})
    with pytest.raises(QualitySuiteError, match="'digits'.*\\\\d"):
        compile_suite(p, ["x"])


def test_checker_api() -> None:
    checker = compile_suite(suite_path(SUITES, "telemetry"), COLUMNS["telemetry"])
    good = ("e", "dev-0001", 1_700_000_000_000, 50.0, 1.0, "OK", None, None, 1)
    assert checker.check(good) is None
    assert checker.check(dict(zip(COLUMNS["telemetry"], good, strict=True))) is None
    bad = ("e", "dev-0001", 1_700_000_000_000, 50.0, 7.0, "OK", 120.0, None, 1)
    assert checker.check(bad) == (
        [], ["vibration_rms_g-alarm", "expect_column_values_to_be_between(humidity_pct)"])
    assert checker.check(list(bad[:3]) + [None] + list(bad[4:]))[0] == [  # type: ignore[index]
        "expect_column_values_to_not_be_null(temperature_c)"]
    with pytest.raises(ValueError, match="9"):
        checker.check(good[:3])
    with pytest.raises(TypeError):
        checker.check("nope")  # type: ignore[arg-type]
    assert checker.stats() == {"records": 4, "blocked": 1, "flagged": 1}
    assert checker.failure_counts()["vibration_rms_g-alarm"] == 2
    assert set(checker.blocking) | set(checker.non_blocking) == set(checker.names)
    assert checker.audit_only == ["expect_column_values_to_be_unique(event_id)",
                                  "expect_column_mean_to_be_between(temperature_c)"]


# ------------------------------------------------------------------ audit path


KNOWN_BATCH = [
    ("e1", "dev-0001", 1_700_000_000_000, 50.0, 1.0, "OK", 40.0, "1.4.2", 3),
    ("e2", "dev-0002", 1_700_000_001_000, 95.0, 6.0, "WARN", None, "fw-1", 3),
    ("e2", "bad", 1_700_000_002_000, None, 1.0, "OK", 140.0, None, 0),
    ("e4", "dev-0004", 1_700_000_003_000, 20.0, 1.0, "NOPE", 50.0, None, 3),
]


def _outcomes(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in result["expectations"]}


def test_validate_batch_counts_a_known_batch() -> None:
    suite = load_suite(suite_path(SUITES, "telemetry"))
    res = validate_batch(suite, KNOWN_BATCH, source="telemetry", window_start=10, window_end=20,
                         validated_at=123)
    assert (res["source"], res["suite"], res["window_start"], res["window_end"], res["record_count"],
            res["validated_at"]) == ("telemetry", "telemetry", 10, 20, 4, 123)
    assert res["evaluated_expectations"] == len(suite["expectations"]) == 19
    o = _outcomes(res)
    assert [o[n]["name"] for n in o] == [expectation_name(e) for e in suite["expectations"]]
    failed = {n for n, x in o.items() if not x["success"]}
    assert failed == {
        "expect_column_values_to_not_be_null(temperature_c)",
        "expect_column_values_to_match_regex(device_id)",
        "expect_column_values_to_be_in_set(status)",
        "vibration_rms_g-alarm",
        "expect_column_values_to_be_between(humidity_pct)",
        "expect_column_values_to_match_regex(firmware)",
        "expect_column_values_to_be_between(sample_count)",
        "expect_column_values_to_be_unique(event_id)",
    }
    assert res["successful_expectations"] == 19 - 8
    assert res["success_ratio"] == pytest.approx(11 / 19)
    assert res["success"] is False
    assert (o["expect_column_values_to_not_be_null(temperature_c)"]["unexpected_count"],
            o["expect_column_values_to_not_be_null(temperature_c)"]["element_count"]) == (1, 4)
    hum = o["expect_column_values_to_be_between(humidity_pct)"]
    assert (hum["unexpected_count"], hum["element_count"], hum["missing_count"]) == (1, 4, 1)
    assert o["expect_column_values_to_be_unique(event_id)"]["unexpected_count"] == 2
    assert o["expect_column_mean_to_be_between(temperature_c)"]["observed_value"] == "55.0"
    assert o["expect_column_values_to_be_in_set(status)"]["blocking"] is True
    assert o["vibration_rms_g-alarm"]["blocking"] is False
    # The Rust checks count the same rows for the per-record expectations.
    checker = compile_suite(suite_path(SUITES, "telemetry"), COLUMNS["telemetry"])
    for row in KNOWN_BATCH:
        checker.check(row)
    for name, n in checker.failure_counts().items():
        assert o[name]["unexpected_count"] == n, name


def test_audit_batch_udaf_end_to_end_through_its_methods() -> None:
    import pandas as pd

    udaf = AuditBatch(suite_path(SUITES, "telemetry"), COLUMNS["telemetry"], "telemetry",
                      QUALITY_SCHEMA, 42, window_ms=10_000)
    udaf.open(None)
    acc = udaf.create_accumulator()
    # As PyFlink hands them over: typed Series (floats with NaN for nulls, ints, objects).
    series = [pd.Series([r[i] for r in KNOWN_BATCH]) for i in range(len(COLUMNS["telemetry"]))]
    udaf.accumulate(acc, *series)
    value = udaf.get_value(acc)
    assert isinstance(value, bytes) and value[:5] == b"\x00" + (42).to_bytes(4, "big")
    dec = AvroDecoder(QUALITY_SCHEMA, record_as="dict")
    dec.add_writer_schema(42, QUALITY_SCHEMA)
    sid, rec = dec.decode(value)
    assert sid == 42
    assert (rec["source"], rec["record_count"], rec["window_start"], rec["window_end"]) == (
        "telemetry", 4, 1_700_000_000_000, 1_700_000_010_000)
    assert rec["successful_expectations"] == 11 and rec["evaluated_expectations"] == 19
    assert {o["name"] for o in rec["expectations"] if not o["success"]} >= {
        "expect_column_values_to_be_in_set(status)", "expect_column_values_to_be_unique(event_id)"}
    # Explicit window bounds as two trailing series.
    acc2 = udaf.create_accumulator()
    udaf.accumulate(acc2, *series, pd.Series([5] * 4), pd.Series([6] * 4))
    _, rec2 = dec.decode(udaf.get_value(acc2))
    assert (rec2["window_start"], rec2["window_end"]) == (5, 6)


def test_audit_batcher_cuts_per_window_and_every_n_records() -> None:
    b = AuditBatcher(suite_path(SUITES, "telemetry"), "telemetry", window_ms=2_000)
    out = [r for row in KNOWN_BATCH for r in b.add(row)] + b.flush()
    assert [(r["window_start"], r["record_count"]) for r in out] == [
        (1_700_000_000_000, 2), (1_700_000_002_000, 2)]
    b = AuditBatcher(suite_path(SUITES, "telemetry"), "telemetry", every_records=3)
    out = [r for row in KNOWN_BATCH for r in b.add(row)] + b.flush()
    assert [r["record_count"] for r in out] == [3, 1]
    assert out[0]["window_start"] == 1_700_000_000_000 and out[0]["window_end"] == 1_700_000_002_001
