"""Type stubs for ``sluice._native``, the Rust extension module built from ``udfs_rs/``.

Import it through the public path :mod:`sluice.native`.

Avro values map to Python as follows (decoding):

=================  ==========================================================
Avro (reader)      Python
=================  ==========================================================
null               ``None``
boolean            ``bool``
int, long          ``int``
float, double      ``float``
bytes, fixed       ``bytes``
string             ``str``
enum               ``str`` (the reader's symbol)
array              ``list``
map                ``dict[str, ...]``
record             ``tuple`` in *reader* field order (``record_as="tuple"``)
                   or ``dict`` keyed by reader field name (``record_as="dict"``)
union              the value of the branch that was written
=================  ==========================================================

Logical types keep their underlying value: ``timestamp-*``/``time-*``/``date`` → ``int``,
``decimal`` → ``bytes`` (the unscaled two's-complement integer), ``uuid`` → ``str``,
``duration`` → ``bytes``.

Decode error reason codes (``DecodeError.reason``), a small fixed set:

* ``"empty"`` – the message has no bytes (:class:`EmptyMessageError`).
* ``"bad-magic"`` – first byte is not the Confluent magic byte ``0x00`` (:class:`BadMagicError`).
* ``"unknown-schema"`` – no writer schema was added for the message's schema id
  (:class:`UnknownSchemaError`, ``schema_id`` set, ``offset`` is ``None``).
* ``"truncated"`` – the input ended early: header shorter than 5 bytes, or the body ends
  inside a value (:class:`TruncatedError`).
* ``"type-mismatch"`` – the bytes are not a valid encoding of the writer schema, or the
  value cannot be resolved to the reader schema: invalid UTF-8, bad boolean byte, varint
  longer than 64 bits, int outside 32 bits, negative length / block size, union or enum
  index out of range, a writer enum symbol unknown to a reader enum without default, a
  writer union branch that matches no reader type, nesting deeper than 256 levels
  (:class:`TypeMismatchError`).
* ``"trailing-bytes"`` – bytes are left after the top-level value (:class:`TrailingBytesError`).

Sensor frames (:class:`FrameDecoder`, format in ``docs/formats.md``) and maintenance
events (:class:`EventDecoder`) use the same :class:`DecodeError` hierarchy (``schema_id`` is
always ``None`` for them) with these reasons in addition to the ones above:

* ``"unsupported-version"`` – the frame's version byte is not 1 (:class:`UnsupportedVersionError`).
* ``"bad-crc"`` – the frame's CRC-32 does not match its bytes (:class:`BadCrcError`).
* ``"invalid-utf8"`` – a frame's device id or an event document is not valid UTF-8; ``offset``
  is the first invalid byte (:class:`InvalidUtf8Error`).
* ``"oversized"`` – an event document is longer than ``max_bytes`` (:class:`OversizedError`).
* ``"too-deep"`` – an event document nests arrays/objects deeper than ``max_depth``
  (:class:`TooDeepError`).
* ``"malformed-json"`` – not valid JSON, top level not an object, a duplicate object key at
  any depth, a lone surrogate ``\\u`` escape, or a number outside the f64 range
  (:class:`MalformedJsonError`).
* ``"missing-field"`` – a required event field is absent (:class:`MissingFieldError`).

For frames and events ``"type-mismatch"`` means a field has a value outside its domain (frame
flags, lengths, rate, sample count; event field types, unknown ``kind``, non-positive ``qty``)
and the message names the field; ``"truncated"`` / ``"trailing-bytes"`` / ``"empty"`` /
``"bad-magic"`` mean what they mean for Avro.

Encode error reason codes (``EncodeError.reason``): ``"wrong-type"``, ``"out-of-range"``,
``"missing-field"``, ``"unknown-symbol"``.

Thread safety: all classes are immutable from Python's point of view except the
decoder's writer table, which is internally locked, and :class:`FeatureAccumulator`, which
is mutable and meant for one thread at a time; other instances may be shared across
threads. The module never acquires the GIL on its own (safe in PyFlink thread mode).
"""

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Self, final

__all__ = [
    "AvroDecoder",
    "AvroEncoder",
    "BadCrcError",
    "BadMagicError",
    "DecodeError",
    "EmptyMessageError",
    "EncodeError",
    "EventDecoder",
    "FeatureAccumulator",
    "FeatureSpec",
    "FeatureSpecError",
    "FrameDecoder",
    "InvalidUtf8Error",
    "IsolationForestModel",
    "MalformedJsonError",
    "MissingFieldError",
    "ModelError",
    "OversizedError",
    "QualityChecker",
    "QualitySuiteError",
    "SchemaError",
    "SluiceError",
    "StateError",
    "TooDeepError",
    "TrailingBytesError",
    "TruncatedError",
    "TypeMismatchError",
    "UnknownSchemaError",
    "UnsupportedVersionError",
    "__version__",
    "encode_frame",
    "parse_confluent_header",
]

__version__: Final[str]
"""Version of the ``udfs_rs`` crate the module was built from."""

class SluiceError(Exception):
    """Base class of every error raised by sluice's native module."""

class SchemaError(SluiceError):
    """A schema could not be parsed, or a writer schema cannot be resolved to the reader
    schema. The message names the field path and the resolution rule that failed, e.g.
    ``field 'reading.unit': reader field is missing from writer record ... and has no
    default``."""

class DecodeError(SluiceError):
    """A message could not be decoded.

    ``str(e)`` reads like ``truncated at offset 17 (schema id 3) in field 'reading.temp':
    need 4 bytes, 2 left``. Instances raised by the module always have ``reason`` set; a
    subclass constructed by hand has its own ``reason`` and ``None`` for the rest.
    """

    reason: str | None
    """One of ``"empty"``, ``"bad-magic"``, ``"unknown-schema"``, ``"truncated"``,
    ``"type-mismatch"``, ``"trailing-bytes"`` (Avro, frames, events), ``"unsupported-version"``,
    ``"bad-crc"`` (frames), ``"invalid-utf8"`` (frames, events), ``"oversized"``,
    ``"too-deep"``, ``"malformed-json"``, ``"missing-field"`` (events) (``None`` only on a
    bare ``DecodeError`` constructed by hand)."""
    schema_id: int | None
    """Writer schema id of the message, once known (``None`` for header errors)."""
    offset: int | None
    """Byte offset in the input where decoding failed (the start of the item that could
    not be read). For :meth:`AvroDecoder.decode` offsets count the 5 header bytes; for
    :meth:`AvroDecoder.decode_body` they are relative to the body; for frames and event
    documents they count from the first byte of ``data``. ``None`` for ``"unknown-schema"``
    and for a missing top-level event field."""

class EmptyMessageError(DecodeError):
    """reason ``"empty"``: the message has no bytes."""

    reason: str

class BadMagicError(DecodeError):
    """reason ``"bad-magic"``: the first byte is not the Confluent magic byte 0x00."""

    reason: str

class UnknownSchemaError(DecodeError):
    """reason ``"unknown-schema"``: no writer schema was added for the message's schema
    id (``schema_id`` holds it). Fetch the schema and call
    :meth:`AvroDecoder.add_writer_schema`, then retry."""

    reason: str

class TruncatedError(DecodeError):
    """reason ``"truncated"``: the input ended before the value was complete."""

    reason: str

class TypeMismatchError(DecodeError):
    """reason ``"type-mismatch"``: malformed bytes, or a value that cannot be resolved to
    the reader schema (see the module docstring for the full list)."""

    reason: str

class TrailingBytesError(DecodeError):
    """reason ``"trailing-bytes"``: bytes are left over after the top-level value."""

    reason: str

class UnsupportedVersionError(DecodeError):
    """reason ``"unsupported-version"``: the sensor frame's version byte (offset 2) is not 1."""

    reason: str

class BadCrcError(DecodeError):
    """reason ``"bad-crc"``: the CRC-32 stored at the end of the sensor frame does not match
    the one computed over the preceding bytes (``offset`` = the CRC field). The message shows
    the expected (computed) and the actual (stored) value."""

    reason: str

class InvalidUtf8Error(DecodeError):
    """reason ``"invalid-utf8"``: a frame's device id or an event document is not valid UTF-8
    (``offset`` = the first invalid byte)."""

    reason: str

class OversizedError(DecodeError):
    """reason ``"oversized"``: the event document is longer than the decoder's ``max_bytes``
    (checked before parsing; ``offset`` = ``max_bytes``)."""

    reason: str

class TooDeepError(DecodeError):
    """reason ``"too-deep"``: the event document nests arrays/objects deeper than the
    decoder's ``max_depth`` (``offset`` = the bracket that went one level too deep)."""

    reason: str

class MalformedJsonError(DecodeError):
    """reason ``"malformed-json"``: the event document is not valid JSON, its top level is
    not an object, an object (at any depth) has a duplicate key (``"duplicate key 'x'"``,
    keys compared after unescaping), a string has a lone surrogate ``\\u`` escape, or a
    number does not fit an f64. The message has the line and column, ``offset`` the byte."""

    reason: str

class MissingFieldError(DecodeError):
    """reason ``"missing-field"``: a required event field (``event_id``, ``device_id``, ``ts``,
    ``kind``; ``part_no`` / ``qty`` in a part) is absent; the message names it. ``offset`` is
    ``None`` for top-level fields and the part's offset for part keys."""

    reason: str

class EncodeError(SluiceError):
    """A Python value could not be encoded."""

    reason: str | None
    """One of ``"wrong-type"`` (wrong Python type, wrong fixed size, wrong record tuple
    length, non-str map key, no union branch fits), ``"out-of-range"`` (int does not fit
    int/long, number does not fit float), ``"missing-field"`` (record field absent from
    the dict and without default), ``"unknown-symbol"`` (str not an enum symbol)."""
    path: str | None
    """Where it failed: dot-separated field names with ``[i]`` for array items and
    ``[key]`` for map values, e.g. ``"reading.temperature_c"`` or ``"items[3].tags[k]"``;
    ``""`` for the top-level value."""

class QualitySuiteError(SluiceError):
    """A great-expectations suite cannot be compiled into per-record checks: not JSON, not
    the GE 1.x layout, an unsupported expectation type or kwarg, an unknown column, invalid
    bounds, a suite parameter, or a regex the Rust engine cannot run exactly like Python's
    ``re.search``. The message names the suite and the expectation."""

class FeatureSpecError(SluiceError):
    """A feature spec does not validate, or an accumulator is used against its spec.

    Raised by :class:`FeatureSpec` for an unknown aggregation or parameter, a parameter of
    the wrong type or out of range, an invalid output name, or two aggregations producing
    one output name; the message names the aggregation by position and kind and the
    parameter, e.g. ``aggregation 3 ("quantile"): parameter "q" must be a number in [0, 1],
    got 1.5``. Also raised by :meth:`FeatureAccumulator.merge` for accumulators of
    different specs, and by the ``update*`` methods when the spec has no aggregation of
    that input kind (values vs frames)."""

class ModelError(SluiceError):
    """A model export (:class:`IsolationForestModel`) cannot be loaded: not JSON, another
    ``format`` / ``format_version``, or a field that does not validate; the message names
    the field (``model JSON: field 'estimators[3].children_left[7]': ...``)."""

class StateError(SluiceError):
    """A :meth:`FeatureAccumulator.to_bytes` blob cannot be read back: shorter than any
    valid blob, another format version, a checksum mismatch (corruption), written for a
    different spec (fingerprint mismatch), or contents that are inconsistent (counts that
    disagree, a negative second moment, bytes left over)."""

@final
class AvroDecoder:
    """Decodes Avro written with any registered writer schema into values shaped like
    one reader schema.

    For every writer schema id a resolution plan (Avro 1.11 schema resolution: field
    matching by name/alias, defaults, promotions, enum defaults, union branch mapping,
    skipping removed fields) is compiled once by :meth:`add_writer_schema`; decoding
    then just executes the plan and builds Python objects directly.
    """

    def __new__(cls, reader_schema: str, record_as: Literal["tuple", "dict"] = "tuple") -> Self:
        """Create a decoder for ``reader_schema`` (Avro schema JSON text).

        ``record_as`` selects how records are returned: ``"tuple"`` (reader field order,
        fastest) or ``"dict"`` (keyed by reader field name, in reader field order).

        Raises :class:`SchemaError` if the schema cannot be parsed and ``ValueError`` for an
        unknown ``record_as``.
        """

    def add_writer_schema(self, schema_id: int, writer_schema: str) -> None:
        """Register writer schema ``schema_id`` (Avro schema JSON text) and compile its
        resolution plan to the reader schema.

        Idempotent: adding the same schema (same Parsing Canonical Form) again for an id is a
        no-op. Raises :class:`SchemaError` if the schema cannot be parsed, cannot be resolved
        to the reader schema (the message names the field and the rule), or if the id was
        already added with a *different* schema. ``OverflowError`` if ``schema_id`` is not a
        u32.
        """

    def has_writer(self, schema_id: int) -> bool:
        """Whether a writer schema was added for ``schema_id``."""

    def writer_ids(self) -> list[int]:
        """The registered writer schema ids, ascending."""

    @property
    def reader_field_names(self) -> list[str]:
        """Top-level reader record field names, in order (the tuple positions of decoded
        records); empty if the reader schema is not a record."""

    @property
    def record_as(self) -> Literal["tuple", "dict"]:
        """How records are returned (as passed to the constructor)."""

    def decode(self, data: bytes) -> tuple[int, Any]:
        """Decode one Confluent-framed message (``0x00``, 4-byte big-endian schema id,
        Avro binary body) and return ``(writer schema id, value)``.

        Raises a :class:`DecodeError` subclass: :class:`EmptyMessageError`,
        :class:`BadMagicError`, :class:`TruncatedError`, :class:`UnknownSchemaError`,
        :class:`TypeMismatchError` or :class:`TrailingBytesError`. ``data`` must be
        ``bytes`` (``TypeError`` otherwise).
        """

    def decode_body(self, schema_id: int, body: bytes) -> Any:
        """Decode an unframed Avro binary ``body`` written with writer schema
        ``schema_id``. Errors as for :meth:`decode` (offsets relative to ``body``)."""

@final
class AvroEncoder:
    """Encodes Python values with one Avro schema, Confluent-framed with a fixed id.

    Records may be given as a tuple/list in schema field order or as a dict by field name
    (missing keys take the field default; extra keys are ignored). For unions the first
    branch the value fits is used: ``None``→null, ``bool``→boolean, ``int``→int/long
    (range-checked), ``float``→float/double, ``str``→string/enum (symbol must exist),
    ``bytes``/``bytearray``→bytes/fixed (size must match), ``dict``→map/record,
    ``list``/``tuple``→array/record (tuple length must match); an ``int`` falls back to a
    float/double branch only if no int/long branch fits. If a fitting branch fails deeper
    down, later fitting branches are tried before the first failure is reported.
    ``bool`` is never accepted as an int.
    """

    def __new__(cls, schema: str, schema_id: int) -> Self:
        """Compile an encoder for ``schema`` (Avro schema JSON text); field defaults are
        pre-encoded. Raises :class:`SchemaError` for an unparsable schema or an invalid
        field default."""

    @property
    def schema_id(self) -> int:
        """The schema id written into the Confluent header (read-only)."""

    @property
    def field_names(self) -> list[str]:
        """Top-level record field names in schema order (tuple positions)."""

    def encode(self, record: tuple[Any, ...] | list[Any] | dict[str, Any]) -> bytes:
        """Confluent framing (``0x00`` + big-endian schema id) followed by the Avro binary
        encoding of ``record``. Raises :class:`EncodeError` (``reason``, ``path``)."""

    def encode_body(self, record: tuple[Any, ...] | list[Any] | dict[str, Any]) -> bytes:
        """The Avro binary encoding of ``record`` without framing. Raises
        :class:`EncodeError`."""

def parse_confluent_header(data: bytes) -> tuple[int, int]:
    """Parse the 5-byte Confluent header of ``data`` and return ``(schema_id, 5)`` (the
    body offset). Raises :class:`EmptyMessageError`, :class:`BadMagicError` or
    :class:`TruncatedError` (all :class:`DecodeError`)."""

@final
class FrameDecoder:
    """Decodes binary sensor frames (``sensor-frames`` topic, format v1; the byte layout is
    in ``docs/formats.md``): magic ``b"SF"``, version 1, flags 0, device id (1..64 bytes of
    UTF-8), ``ts_ms`` (i64), ``sample_rate_hz`` (u32 > 0), ``n_samples`` (u16) big-endian f32
    samples and a CRC-32 (``zlib.crc32``) of all preceding bytes, everything big-endian.

    The CRC is verified before any field value is trusted: only magic, version and the two
    length fields are read first (a corrupted length gives ``"truncated"`` /
    ``"trailing-bytes"``, a corrupted payload ``"bad-crc"``).
    """

    def __new__(cls, max_samples: int = 4096) -> Self:
        """``max_samples`` (1..=4096, ``ValueError`` otherwise) is the largest ``n_samples``
        accepted; larger frames raise :class:`TypeMismatchError`."""

    @property
    def max_samples(self) -> int:
        """The limit passed to the constructor."""

    def decode(self, data: bytes) -> tuple[str, int, int, int, float, float, float]:
        """Decode one frame → ``(device_id, ts_ms, sample_rate_hz, n_samples, rms, peak_abs,
        mean)``.

        The statistics are computed in one pass in f64, in sample order: ``s += x``,
        ``q += x * x``, ``rms = sqrt(q / n)``, ``mean = s / n``, ``peak_abs = max |x|``.
        NaN/inf samples are accepted: a NaN makes all three NaN, infinities propagate as IEEE
        754 says (``+inf`` with ``-inf`` gives a NaN mean).

        Raises :class:`EmptyMessageError`, :class:`BadMagicError`,
        :class:`UnsupportedVersionError`, :class:`TruncatedError`,
        :class:`TrailingBytesError`, :class:`BadCrcError`, :class:`TypeMismatchError`
        (non-zero flags, ``device_id_len`` 0 or > 64, ``sample_rate_hz`` 0, ``n_samples`` 0
        or > ``max_samples``) or :class:`InvalidUtf8Error`. ``data`` must be ``bytes``.
        """

    def samples(self, data: bytes) -> list[float]:
        """The samples of a frame (validated exactly like :meth:`decode`), widened from f32
        to float exactly."""

def encode_frame(
    device_id: str,
    ts_ms: int,
    sample_rate_hz: int,
    samples: Sequence[float],
    version: int = 1,
) -> bytes:
    """Encode a v1 sensor frame (CRC included).

    ``samples`` is a ``list`` or ``tuple`` of 1..4096 ``float``/``int`` (not ``bool``), each
    rounded to the nearest f32 (NaN/inf kept). Raises :class:`EncodeError` with ``path`` set
    to the argument: ``"wrong-type"`` (not a str / int / list or tuple of numbers,
    ``"samples[3]"`` for an item), ``"out-of-range"`` (device id not 1..64 bytes of UTF-8,
    ``ts_ms`` not an i64, ``sample_rate_hz`` not 1..2**32-1, 0 or more than 4096 samples, a
    finite sample too large for f32, ``version`` other than 1).
    """

@final
class EventDecoder:
    """Decodes maintenance-event JSON documents (``maintenance-events`` topic) with serde_json.

    Required: ``event_id`` and ``device_id`` (non-empty strings), ``ts`` (integer epoch ms:
    a JSON integer literal that fits i64, ``1.0``/``1e3`` are rejected), ``kind``
    (``"repair"``, ``"inspection"`` or ``"part_replaced"``). Optional: ``technician`` and
    ``notes`` (string or null, default ``None``), ``parts`` (array of ``{"part_no": str,
    "qty": positive int}`` objects with exactly these keys, default ``[]``). Every other
    top-level key goes to ``extra``.
    """

    def __new__(cls, max_bytes: int = 65536, max_depth: int = 32) -> Self:
        """``max_bytes`` >= 1; ``max_depth`` 1..=127 (the top-level object is depth 1; capped
        below serde_json's own limit of 128 so the decoder's check always fires first).
        ``ValueError`` otherwise."""

    @property
    def max_bytes(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    def decode(
        self, data: bytes
    ) -> tuple[str, str, int, str, str | None, str | None, list[tuple[str, int]], dict[str, str]]:
        """Decode one document → ``(event_id, device_id, ts_ms, kind, technician, notes,
        parts, extra)``.

        ``parts`` is ``[(part_no, qty), ...]`` in document order. ``extra`` maps every other
        top-level key (document order) to that value's JSON text exactly as written minus the
        whitespace between tokens (numbers, escapes and key order preserved), so
        ``json.loads(extra[k])`` gives the original value.

        Checks in this order: :class:`EmptyMessageError`, :class:`OversizedError`,
        :class:`InvalidUtf8Error`, :class:`TooDeepError` (bracket pre-scan that skips
        strings), :class:`MalformedJsonError`, then per field in document order
        :class:`TypeMismatchError` (the message names the field, ``offset`` is the value)
        or :class:`MalformedJsonError` (duplicate keys / bad escapes inside a value), and
        finally :class:`MissingFieldError`. ``data`` must be ``bytes``.
        """

@final
class QualityChecker:
    """A great-expectations (1.x) ``ExpectationSuite`` compiled into per-record checks.

    Supported per-record types: ``expect_column_values_to_not_be_null``, ``..._to_be_null``,
    ``..._to_be_between`` (``min_value``/``max_value`` optional, ``strict_min``/``strict_max``),
    ``..._to_be_in_set``, ``..._to_not_be_in_set``, ``..._to_match_regex``,
    ``..._to_not_match_regex``, ``expect_column_value_lengths_to_be_between``,
    ``expect_column_value_lengths_to_equal``. Batch-level types (``..._to_be_unique``,
    ``expect_column_mean_to_be_between``, ``expect_table_row_count_to_be_between``, ...) are
    kept for the audit path only (:attr:`audit_only`) and cannot be blocking; any other type
    raises :class:`QualitySuiteError`.

    Verdicts equal great-expectations' pandas engine on an ``object`` column, row by row:
    ``None`` and float NaN are null and only the two null expectations look at them;
    ``mostly`` is ignored (it only changes the batch verdict); between uses Python
    comparison (``bool`` as 0/1, exact int/float, a str only against str bounds, an
    incomparable value fails); sets use Python equality (``True == 1 == 1.0``); regexes
    are ``re.search(regex, str(v))``; lengths are ``len(str(v))``.

    Expectation names: ``meta.name`` if given, else ``"<type>(<column>)"``; unique per suite.
    ``meta.blocking`` (default ``false``) decides the group a failure is reported in.
    Counters are atomic; an instance may be shared across threads.
    """

    def __new__(cls, suite_json: str, columns: Sequence[str]) -> Self:
        """Compile ``suite_json`` against the record layout ``columns`` (the order of the
        tuples :meth:`check` receives). :class:`QualitySuiteError` if it cannot."""

    def check(
        self, record: tuple[Any, ...] | list[Any] | dict[str, Any]
    ) -> tuple[list[str], list[str]] | None:
        """``None`` if every per-record expectation passes, else ``(blocking, non_blocking)``
        names of the failed ones in suite order. ``record`` is a tuple/list in column order
        (``ValueError`` if its length differs) or a dict (a missing key reads as ``None``)."""

    @property
    def suite_name(self) -> str:
        """The suite's ``name``."""

    @property
    def columns(self) -> list[str]:
        """The record layout the suite was compiled against."""

    @property
    def names(self) -> list[str]:
        """Names of the per-record expectations, in suite order."""

    @property
    def blocking(self) -> list[str]:
        """Names of the blocking per-record expectations."""

    @property
    def non_blocking(self) -> list[str]:
        """Names of the per-record expectations that are only counted."""

    @property
    def audit_only(self) -> list[str]:
        """Names of the batch-level expectations only the audit path evaluates."""

    def describe(self) -> list[tuple[str, str, str, bool]]:
        """``[(name, type, column, blocking)]`` of the per-record expectations."""

    def stats(self) -> dict[str, int]:
        """Counters since construction: ``records`` checked, ``blocked`` (a blocking
        expectation failed), ``flagged`` (only non-blocking ones failed)."""

    def failure_counts(self) -> dict[str, int]:
        """Failed records per expectation name since construction."""

@final
class FeatureSpec:
    """The validated aggregations of one window: build once, share across accumulators.

    ``aggs`` is a list whose items are a kind name (``"mean"``) or a mapping with ``"agg"``
    (the kind), the kind's parameters and an optional ``"name"`` for the output (1..64
    characters ``[A-Za-z0-9_]``, not starting with a digit) — the shape a YAML list
    loads into::

        FeatureSpec(["count", "mean", "std", {"agg": "quantile", "q": 0.95},
                     {"agg": "ewma", "half_life_ms": 60000}, "slope"])

    Value aggregations, fed by :meth:`FeatureAccumulator.update` / ``update_many``:

    =========  ===========================================  ======================  =========
    kind       parameters                                   output name             empty
    =========  ===========================================  ======================  =========
    count      –                                            ``count``               0
    sum        –  (Neumaier-compensated)                    ``sum``                 0
    mean       –                                            ``mean``                NaN
    std        –  population, ddof = 0 (as ``np.std``);     ``std``                 NaN
               one value gives 0
    min, max   –                                            ``min``, ``max``        NaN
    ewma       ``half_life_ms`` > 0                         ``ewma``                NaN
    slope      –  least squares, value units per second     ``slope``               NaN
    quantile   ``q`` in [0, 1], ``accuracy`` in [1e-6, 0.5]  ``p95``, ``p99p9``,     NaN
               (default 0.01), ``max_bins`` in [64, 65536]  ``p50``
               (default 2048)
    =========  ===========================================  ======================  =========

    Frame aggregations, fed by :meth:`FeatureAccumulator.update_frame` /
    ``update_sensor_frame`` (a window's frames pooled as one population of samples):

    =========  ===========================================  ======================  =========
    frames     –  frames aggregated                         ``frames``              0
    rms        –  ``sqrt(mean(x**2))``                      ``rms``                 NaN
    peak       –  ``max |x|``                               ``peak``                NaN
    crest      –  ``peak / rms``                            ``crest``               NaN
    kurtosis   –  Pearson's ``m4 / m2**2`` (3 for a          ``kurtosis``            NaN
               normal distribution; not the excess)
    band       ``lo_hz`` >= 0, ``hi_hz`` > ``lo_hz``        ``band_0_50hz``,        NaN
                                                            ``band_12p5_50hz``
    =========  ===========================================  ======================  =========

    Definitions:

    * ``ewma``: ``sum(w_i x_i) / sum(w_i)`` with ``w_i = 2 ** (-(T - t_i) / half_life_ms)``;
      ``T`` cancels out, so the value depends only on the window's set of values, not their
      order: the time-decayed mean as of the window's last event time (pandas
      ``ewm(halflife=..., times=..., adjust=True).mean()`` at the last row).
    * ``slope``: ``np.polyfit(t_ms / 1000, x, 1)[0]``; NaN with fewer than two distinct times.
    * ``quantile``: a DDSketch; within relative error ``accuracy`` of the lower-rank order
      statistic ``sorted(x)[floor(q * (n - 1))]`` (``np.quantile(x, q, method="lower")``),
      exact for ``q`` 0 and 1, clamped to [min, max]. Values below 2.2e-308 in magnitude
      count as 0; when the magnitudes span more than ``gamma ** max_bins`` (~1e17 at the
      defaults) the smallest ones share one bin and lose the guarantee.
    * ``band``: per frame of ``N`` samples at ``fs`` Hz (rectangular window, no detrending),
      ``P_k = c_k |rfft(x)_k| ** 2 / N ** 2`` with ``c_k = 1`` for the DC and (even ``N``)
      Nyquist bins, 2 otherwise; the band sums the bins with ``lo_hz <= k * fs / N <
      hi_hz``. Bands tiling [0, fs/2] add up to ``rms ** 2`` (Parseval); over a window, the
      sample-weighted mean of the frames' band powers.
    * Outputs with no defined value are NaN (empty window, ``crest`` of an all-zero signal).
      Moments of magnitudes above ~1e154 overflow to inf, as numpy's do.
    * Non-finite values (NaN, ±inf) and frames holding one are skipped and counted
      (:attr:`FeatureAccumulator.skipped_values` / ``skipped_frames``), never aggregated.

    Frozen and thread-safe.
    """

    def __new__(cls, aggs: Sequence[str | Mapping[str, Any]]) -> Self:
        """Validate ``aggs``; :class:`FeatureSpecError` naming the aggregation and the
        parameter if it does not."""

    @property
    def names(self) -> list[str]:
        """Output names in spec order (the keys of :meth:`FeatureAccumulator.result`)."""

    @property
    def fingerprint(self) -> int:
        """CRC-32 of :meth:`to_json`; stored in every state blob, so a blob is only read
        back with a spec of equal canonical form (a renamed output changes it)."""

    def to_json(self) -> str:
        """The spec in canonical JSON: every item a mapping with ``agg``, ``name`` and all
        parameters (defaults filled in), keys sorted. ``FeatureSpec(json.loads(s.to_json()))
        == s``."""

    def __eq__(self, value: object, /) -> bool:
        """Equal canonical form."""

    def __hash__(self) -> int: ...

@final
class FeatureAccumulator:
    """The mergeable state of one key and window for a :class:`FeatureSpec`.

    Feed it values (``update``, ``update_many``) or frames (``update_frame``,
    ``update_sensor_frame``), ``merge`` other accumulators of an equal spec into it
    (session windows), keep it in Flink state as :meth:`to_bytes`, read the outputs with
    :meth:`result`. Not thread-safe: use one accumulator from one thread at a time
    (concurrent use raises ``RuntimeError``, it cannot corrupt the state).
    """

    def __new__(cls, spec: FeatureSpec) -> Self:
        """An empty accumulator."""

    @staticmethod
    def from_bytes(spec: FeatureSpec, data: bytes) -> FeatureAccumulator:
        """Read back a :meth:`to_bytes` blob written for an equal ``spec``;
        :class:`StateError` otherwise (never a crash)."""

    @property
    def spec(self) -> FeatureSpec:
        """The spec it was created with."""

    @property
    def count(self) -> int:
        """Finite values aggregated."""

    @property
    def frames(self) -> int:
        """Frames aggregated."""

    @property
    def skipped_values(self) -> int:
        """Non-finite values seen and not aggregated."""

    @property
    def skipped_frames(self) -> int:
        """Frames seen and not aggregated because a sample was not finite."""

    def update(self, ts_ms: int, value: float) -> None:
        """Add one value at event time ``ts_ms`` (epoch ms)."""

    def update_many(self, ts_ms: Sequence[int] | Any, values: Sequence[float] | Any) -> None:
        """Add ``values[i]`` at ``ts_ms[i]`` for all ``i``: one call per batch. Fast path: 1-D
        numpy ``int64`` / ``float64`` arrays (read through the buffer protocol); any other
        sequence of ints / numbers is converted item by item. ``ValueError`` if the lengths
        differ (nothing is added), ``TypeError`` for float timestamps or non-numbers."""

    def update_frame(self, samples: Sequence[float] | Any, sample_rate_hz: float) -> None:
        """Add one vibration frame: 1-D numpy ``float32`` / ``float64`` array or a sequence
        of numbers (1..65536 samples), ``sample_rate_hz`` finite and > 0 (``ValueError``
        otherwise)."""

    def update_sensor_frame(self, data: bytes) -> None:
        """Decode one binary sensor frame (as :meth:`FrameDecoder.decode`, up to 4096
        samples; its :class:`DecodeError` subclasses on bad input) and add it, without
        building Python floats."""

    def merge(self, other: FeatureAccumulator) -> None:
        """Fold ``other`` into this accumulator (``other`` is unchanged; ``a.merge(a)``
        doubles ``a``). :class:`FeatureSpecError` if the specs differ."""

    def to_bytes(self) -> bytes:
        """The state as a compact blob: format version byte, spec fingerprint, the state
        the spec needs (varints and little-endian f64), CRC-32."""

    def result(self) -> dict[str, float]:
        """Output name → value, in spec order (all names always present; NaN where
        undefined)."""


@final
class IsolationForestModel:
    """An isolation forest exported by :mod:`sluice.model` (``model.json``, format
    ``sluice-isolation-forest`` v1, docs/models.md), scored exactly like scikit-learn's
    ``IsolationForest.score_samples``: lower = more abnormal. NaN inputs are replaced by the
    exported training medians (``impute``); values are compared as float32, like sklearn.

    :class:`ModelError` if the JSON does not load (the message names the field)."""

    def __new__(cls, json_text: str) -> Self: ...
    def score(self, features: Sequence[float] | Any) -> float:
        """Score one vector (a sequence of numbers or a 1-D float64 array) of
        :attr:`n_features` values in the export's feature order. ``ValueError`` for another
        length, ``TypeError`` for non-numbers."""

    def score_many(self, rows: Sequence[Sequence[float]] | Any) -> list[float]:
        """Score every row of a 2-D float64 array of shape ``(n, n_features)`` (or a sequence
        of sequences); releases the GIL while it scores."""

    @property
    def n_features(self) -> int: ...
    @property
    def n_estimators(self) -> int: ...
    @property
    def max_samples(self) -> float: ...
    @property
    def offset(self) -> float:
        """sklearn's ``offset_``: ``decision_function = score - offset``."""

    @property
    def threshold(self) -> float | None:
        """The decision threshold (anomaly when ``score < threshold``), if exported."""

    @property
    def feature_names(self) -> list[str] | None: ...
    @property
    def impute(self) -> list[float]:
        """Per feature, the value a NaN input is replaced with (the training median)."""
