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

Encode error reason codes (``EncodeError.reason``): ``"wrong-type"``, ``"out-of-range"``,
``"missing-field"``, ``"unknown-symbol"``.

Thread safety: all classes are immutable from Python's point of view except the
decoder's writer table, which is internally locked; instances may be shared across
threads. The module never acquires the GIL on its own (safe in PyFlink thread mode).
"""

from typing import Any, Final, Literal, Self, final

__all__ = [
    "AvroDecoder",
    "AvroEncoder",
    "BadMagicError",
    "DecodeError",
    "EmptyMessageError",
    "EncodeError",
    "SchemaError",
    "SluiceError",
    "TrailingBytesError",
    "TruncatedError",
    "TypeMismatchError",
    "UnknownSchemaError",
    "__version__",
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
    ``"type-mismatch"``, ``"trailing-bytes"`` (``None`` only on a bare ``DecodeError``
    constructed by hand)."""
    schema_id: int | None
    """Writer schema id of the message, once known (``None`` for header errors)."""
    offset: int | None
    """Byte offset in the input where decoding failed (the start of the item that could
    not be read). For :meth:`AvroDecoder.decode` offsets count the 5 header bytes; for
    :meth:`AvroDecoder.decode_body` they are relative to the body. ``None`` for
    ``"unknown-schema"``."""

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
