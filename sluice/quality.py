"""Data quality from one source of truth: great-expectations suites.

One suite per input lives in ``schemas/expectations/<source>.json`` in
great-expectations' own (1.x) ``ExpectationSuite`` format. Two consumers:

* **Hot path** — :func:`compile_suite` turns the per-record expectations into a
  Rust :class:`~sluice.native.QualityChecker`. ``checker.check(record)`` is
  ``None`` when the record passes, else ``(blocking, non_blocking)`` failed
  expectation names; a record with blocking failures belongs in the DLQ
  (``DeadLetter.failed_expectations``), non-blocking ones are only counted.
* **Audit path** — :func:`validate_batch` validates a batch with
  great-expectations itself and returns a ``QualityResult`` dict
  (``schemas/quality-value/v1.avsc``); :class:`AuditBatch` is the PyFlink pandas
  UDAF that does it per window and returns the Avro-encoded result, and
  :class:`AuditBatcher` cuts batches per event-time window or every N records.

great-expectations imports slowly (~3 s) and pandas is not thread-mode safe
under pemja: both are imported lazily, only by the audit path. Semantics and the
naming scheme: ``docs/quality.md``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflink.table import AggregateFunction
from pyflink.table.udf import FunctionContext

from sluice.native import QualityChecker, QualitySuiteError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Record layout the pipeline hands to the checker, per input (= suite file stem).
COLUMNS: dict[str, tuple[str, ...]] = {
    # Decoded telemetry, reader schema v3 field order (AvroDecoder record_as="tuple").
    "telemetry": (
        "event_id", "device_id", "ts", "temperature_c", "vibration_rms_g", "status",
        "humidity_pct", "firmware", "sample_count",
    ),
    # FrameDecoder.decode: (device_id, ts_ms, sample_rate_hz, n_samples, rms, peak_abs, mean).
    "sensor-frames": ("device_id", "ts", "sample_rate_hz", "n_samples", "rms", "peak_abs", "mean"),
    # EventDecoder.decode, with n_parts = len(parts).
    "maintenance-events": ("event_id", "device_id", "ts", "kind", "technician", "notes", "n_parts"),
}

SOURCES = tuple(COLUMNS)

#: Expectation types with a per-record verdict (compiled to Rust); every other type is
#: batch-level and only the audit path evaluates it.
ROW_TYPES = frozenset({
    "expect_column_values_to_not_be_null", "expect_column_values_to_be_null",
    "expect_column_values_to_be_between", "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set", "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex", "expect_column_value_lengths_to_be_between",
    "expect_column_value_lengths_to_equal",
})

__all__ = [
    "COLUMNS",
    "ROW_TYPES",
    "SOURCES",
    "AuditBatch",
    "AuditBatcher",
    "QualityChecker",
    "QualitySuiteError",
    "compile_suite",
    "expectation_name",
    "load_suite",
    "suite_path",
    "to_dataframe",
    "validate_batch",
]


def suite_path(suites_dir: str | os.PathLike[str], source: str) -> Path:
    """``<suites_dir>/<source>.json`` (``cfg.base_dir / cfg.quality.suites_dir``)."""
    return Path(suites_dir) / f"{source}.json"


def expectation_name(expectation: Mapping[str, Any]) -> str:
    """The stable name of an expectation, the same the Rust checker uses:
    ``meta.name`` if set, else ``<type>(<column>)`` (``<type>`` without a column)."""
    meta = expectation.get("meta") or {}
    if meta.get("name"):
        return str(meta["name"])
    column = (expectation.get("kwargs") or {}).get("column")
    kind = str(expectation.get("type"))
    return f"{kind}({column})" if column is not None else kind


def load_suite(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check a suite file (GE 1.x ExpectationSuite JSON).

    Raises :class:`QualitySuiteError` naming the file and the expectation: not
    JSON, no ``name`` / ``expectations``, an expectation without ``type``, a
    non-boolean ``meta.blocking``, duplicate names, a regex Python cannot compile.
    The per-record compiler (:func:`compile_suite`) checks the rest.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QualitySuiteError(f"{p}: cannot read suite: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise QualitySuiteError(f"{p}: suite is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise QualitySuiteError(f"{p}: suite needs a non-empty string 'name'")
    exps = doc.get("expectations")
    if not isinstance(exps, list):
        raise QualitySuiteError(f"{p}: suite '{doc['name']}': 'expectations' must be a list")
    seen: set[str] = set()
    for i, e in enumerate(exps):
        if not isinstance(e, dict) or not isinstance(e.get("type"), str):
            raise QualitySuiteError(f"{p}: expectation #{i} needs a string 'type'")
        name = expectation_name(e)
        if name in seen:
            raise QualitySuiteError(f"{p}: expectation '{name}': the name is used twice; set meta.name")
        seen.add(name)
        blocking = (e.get("meta") or {}).get("blocking", False)
        if not isinstance(blocking, bool):
            raise QualitySuiteError(f"{p}: expectation '{name}': meta.blocking must be true or false")
        regex = (e.get("kwargs") or {}).get("regex")
        if isinstance(regex, str):
            try:
                re.compile(regex)
            except re.error as exc:
                raise QualitySuiteError(f"{p}: expectation '{name}': invalid regex {regex!r}: {exc}") from exc
    return doc


def compile_suite(path: str | os.PathLike[str], columns: Sequence[str]) -> QualityChecker:
    """Load the suite at ``path`` and compile its per-record expectations against
    the record layout ``columns`` (e.g. ``COLUMNS["telemetry"]``)."""
    suite = load_suite(path)
    try:
        return QualityChecker(json.dumps(suite), list(columns))
    except QualitySuiteError as exc:
        raise QualitySuiteError(f"{path}: {exc}") from None


def is_blocking(expectation: Mapping[str, Any]) -> bool:
    return bool((expectation.get("meta") or {}).get("blocking", False))


# ------------------------------------------------------------------ audit path


class _Gx:
    """One ephemeral great-expectations context per process (created on first use)."""

    def __init__(self) -> None:
        # No usage statistics from inside a streaming job.
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas("sluice-audit")
        self.batch_definition = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe(
            "whole"
        )
        self.suites: dict[str, Any] = {}

    def suite(self, suite: Mapping[str, Any]) -> Any:
        key = json.dumps(suite, sort_keys=True)
        got = self.suites.get(key)
        if got is None:
            # GE mutates what it is given (meta gains great_expectations_version).
            doc = copy.deepcopy(dict(suite))
            # Each distinct document gets its own name in the context.
            doc["name"] = f"{suite['name']}#{len(self.suites)}"
            doc.pop("id", None)
            got = self.context.suites.add(self.gx.ExpectationSuite(**doc))
            self.suites[key] = got
        return got


_GX: _Gx | None = None


def _gx() -> _Gx:
    global _GX
    if _GX is None:
        _GX = _Gx()
    return _GX


def to_dataframe(
    batch: pd.DataFrame | Iterable[Sequence[Any]] | Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The batch as a DataFrame of ``object`` columns with a 0..n-1 index.

    ``object`` dtype keeps every value the Python object the Rust checker sees,
    so great-expectations evaluates it row by row with Python semantics (exact
    int/float comparison, ``str(v)`` for regexes); a typed int64/float64 column
    would, e.g., turn ``5`` into ``"5.0"`` for a regex once the column has a null.
    """
    import pandas as pd

    if isinstance(batch, pd.DataFrame):
        df = batch if columns is None else batch.loc[:, list(columns)]
        return pd.DataFrame(
            {c: pd.Series(df[c].tolist(), dtype=object) for c in df.columns}
        )
    rows = list(batch)
    if rows and isinstance(rows[0], Mapping):
        cols = list(columns) if columns is not None else list(rows[0])
        data = {c: pd.Series([r.get(c) for r in rows], dtype=object) for c in cols}  # type: ignore[union-attr]
    else:
        if columns is None:
            raise ValueError("columns are required for a batch of tuples")
        cols = list(columns)
        data = {c: pd.Series([r[i] for r in rows], dtype=object) for i, c in enumerate(cols)}  # type: ignore[index]
    return pd.DataFrame(data, columns=cols)


def run_great_expectations(
    suite: Mapping[str, Any], df: pd.DataFrame, result_format: str = "SUMMARY"
) -> Any:
    """Validate ``df`` with great-expectations itself → its
    ``ExpectationSuiteValidationResult`` (``result_format`` COMPLETE gives each
    expectation's ``unexpected_index_list``)."""
    g = _gx()
    batch = g.batch_definition.get_batch(batch_parameters={"dataframe": df})
    with warnings.catch_warnings():
        # pandas' str.contains warns on every regex with a capture group; under
        # -W error (pytest here) GE would report that warning as the expectation's exception.
        warnings.filterwarnings(
            "ignore", message="This pattern is interpreted as a regular expression, and has match groups",
            category=UserWarning,
        )
        return batch.validate(g.suite(suite), result_format={"result_format": result_format})


def _exception(r: Any) -> str | None:
    info = r.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for v in info.values():  # keyed by metric id when a metric raised
        if isinstance(v, dict) and v.get("raised_exception"):
            return str(v.get("exception_message"))
    return None


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


def validate_batch(
    suite: Mapping[str, Any] | str | os.PathLike[str],
    batch: pd.DataFrame | Iterable[Sequence[Any]] | Iterable[Mapping[str, Any]],
    *,
    source: str,
    window_start: int,
    window_end: int,
    columns: Sequence[str] | None = None,
    validated_at: int | None = None,
) -> dict[str, Any]:
    """Validate one batch with great-expectations → a ``QualityResult`` dict
    (field names and order of ``schemas/quality-value/v1.avsc``).

    ``batch``: a DataFrame, a list of dicts, or a list of tuples in ``columns``
    order (default ``COLUMNS[source]``). ``window_start``/``window_end``: epoch ms.
    """
    doc = load_suite(suite) if isinstance(suite, str | os.PathLike) else suite
    if columns is None and source in COLUMNS and not _is_frame(batch):
        columns = COLUMNS[source]
    df = to_dataframe(batch, columns)
    res = run_great_expectations(doc, df, "SUMMARY")
    import great_expectations as gx

    by_name = {expectation_name(e): e for e in doc["expectations"]}
    outcomes = []
    for r in res.results:
        cfg = r.expectation_config
        name = expectation_name({"type": cfg.type, "kwargs": cfg.kwargs, "meta": cfg.meta})
        result = r.result or {}
        observed = result.get("observed_value")
        outcomes.append(
            {
                "name": name,
                "type": cfg.type,
                "column": cfg.kwargs.get("column"),
                "blocking": is_blocking(by_name.get(name, {})),
                "success": bool(r.success),
                "unexpected_count": _int_or_none(result.get("unexpected_count")),
                "element_count": _int_or_none(result.get("element_count")),
                "missing_count": _int_or_none(result.get("missing_count")),
                "observed_value": None if observed is None else str(observed),
                "exception": _exception(r),
            }
        )
    order = {n: i for i, n in enumerate(by_name)}
    outcomes.sort(key=lambda o: order.get(o["name"], len(order)))
    evaluated = int(res.statistics["evaluated_expectations"])
    successful = int(res.statistics["successful_expectations"])
    return {
        "source": source,
        "suite": str(doc["name"]),
        "window_start": int(window_start),
        "window_end": int(window_end),
        "record_count": len(df),
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "success_ratio": successful / evaluated if evaluated else 1.0,
        "success": bool(res.success),
        "expectations": outcomes,
        "validated_at": int(time.time() * 1000) if validated_at is None else int(validated_at),
        "ge_version": str(gx.__version__),
    }


def _is_frame(batch: object) -> bool:
    return type(batch).__name__ == "DataFrame"


def window_bounds(ts: Iterable[int], window_ms: int | None) -> tuple[int, int]:
    """Tumbling-window bounds of a batch from its event times: the window of the
    earliest one when ``window_ms`` is set, else ``[min ts, max ts + 1)``."""
    values = [int(t) for t in ts if t is not None]
    if not values:
        return 0, 0
    lo = min(values)
    if window_ms:
        start = lo - lo % window_ms
        return start, start + window_ms
    return lo, max(values) + 1


class AuditBatch(AggregateFunction):
    """PyFlink pandas UDAF: one window group of one input → its Avro-encoded
    QualityResult (Confluent-framed with ``schema_id``)::

        audit = udaf(AuditBatch(suite_path, COLUMNS["telemetry"], "telemetry",
                                quality_schema_json, schema_id, window_ms=10_000),
                     result_type=DataTypes.BYTES(), func_type="pandas")
        t.window(Tumble.over(lit(10).seconds).on(col("rowtime")).alias("w")) \\
         .group_by(col("w")).select(audit(*[col(c) for c in COLUMNS["telemetry"]]))

    Arguments are the ``columns`` as pandas Series, optionally followed by two
    Series ``window_start``/``window_end`` (epoch ms; their first value is used).
    Without them the bounds come from the ``time_column`` values
    (:func:`window_bounds`). Pandas UDFs run in process mode only.
    """

    def __init__(
        self,
        suite: str | os.PathLike[str] | Mapping[str, Any],
        columns: Sequence[str],
        source: str,
        schema_json: str,
        schema_id: int,
        *,
        window_ms: int | None = None,
        time_column: str = "ts",
    ) -> None:
        # The suite travels with the function (a dict pickles; the file may not exist on a worker).
        self.suite = dict(suite) if isinstance(suite, Mapping) else load_suite(suite)
        self.columns = tuple(columns)
        self.source = source
        self.schema_json = schema_json
        self.schema_id = int(schema_id)
        self.window_ms = window_ms
        self.time_column = time_column
        self._encoder: Any = None

    def open(self, function_context: FunctionContext | None) -> None:
        from sluice.native import AvroEncoder

        self._encoder = AvroEncoder(self.schema_json, self.schema_id)

    def create_accumulator(self) -> list[bytes]:
        return []

    def accumulate(self, accumulator: list[bytes], *args: Any) -> None:
        accumulator.append(self.audit(*args))

    def get_value(self, accumulator: list[bytes]) -> bytes | None:
        return accumulator[0] if accumulator else None

    def result(self, *series: Any) -> dict[str, Any]:
        """The QualityResult dict of one group (not encoded)."""
        import pandas as pd

        n = len(self.columns)
        if len(series) not in (n, n + 2):
            raise ValueError(f"AuditBatch expects {n} column series (+2 window bounds), got {len(series)}")
        cols = zip(self.columns, series, strict=False)
        df = pd.DataFrame(
            {c: pd.Series(s, dtype=object).reset_index(drop=True) for c, s in cols},
            columns=list(self.columns),
        )
        if len(series) == n + 2:
            start, end = int(series[n].iloc[0]), int(series[n + 1].iloc[0])
        elif self.time_column in df:
            start, end = window_bounds(df[self.time_column], self.window_ms)
        else:
            start, end = 0, 0
        return validate_batch(
            self.suite, df, source=self.source, window_start=start, window_end=end
        )

    def audit(self, *series: Any) -> bytes:
        if self._encoder is None:
            self.open(None)
        return bytes(self._encoder.encode(self.result(*series)))


class AuditBatcher:
    """Cuts a record stream into audit batches: a batch closes when a record's
    event time falls into a later tumbling window of ``window_ms``, or after
    ``every_records`` records (either or both). :meth:`add` returns the
    QualityResult dicts of the batches it closed; :meth:`flush` closes the open one.
    For a DataStream ``KeyedProcessFunction``/``flat_map`` on one input."""

    def __init__(
        self,
        suite: str | os.PathLike[str] | Mapping[str, Any],
        source: str,
        *,
        columns: Sequence[str] | None = None,
        window_ms: int | None = None,
        every_records: int | None = None,
        time_column: str = "ts",
    ) -> None:
        if not window_ms and not every_records:
            raise ValueError("set window_ms, every_records or both")
        self.suite = dict(suite) if isinstance(suite, Mapping) else load_suite(suite)
        self.source = source
        self.columns = tuple(columns if columns is not None else COLUMNS[source])
        self.window_ms = window_ms
        self.every_records = every_records
        self._ts_idx = self.columns.index(time_column)
        self._rows: list[Sequence[Any]] = []
        self._window: int | None = None

    def add(self, record: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        ts = int(record[self._ts_idx])
        if self.window_ms:
            w = ts - ts % self.window_ms
            if self._window is not None and w != self._window and self._rows:
                out.extend(self.flush())
            self._window = w
        self._rows.append(record)
        if self.every_records and len(self._rows) >= self.every_records:
            out.extend(self.flush())
        return out

    def flush(self) -> list[dict[str, Any]]:
        if not self._rows:
            return []
        rows, self._rows = self._rows, []
        if self.window_ms and self._window is not None:
            start, end = self._window, self._window + self.window_ms
        else:
            start, end = window_bounds((r[self._ts_idx] for r in rows), None)
        return [
            validate_batch(
                self.suite, rows, source=self.source, columns=self.columns,
                window_start=start, window_end=end,
            )
        ]
