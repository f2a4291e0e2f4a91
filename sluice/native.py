"""Public import path of sluice's Rust extension module.

Thin re-export of :mod:`sluice._native` (built from ``udfs_rs/`` with maturin)::

    from sluice.native import AvroDecoder, AvroEncoder, DecodeError

See ``sluice/_native.pyi`` for the documented API.
"""

from __future__ import annotations

try:
    from sluice._native import (
        AvroDecoder,
        AvroEncoder,
        BadMagicError,
        DecodeError,
        EmptyMessageError,
        EncodeError,
        SchemaError,
        SluiceError,
        TrailingBytesError,
        TruncatedError,
        TypeMismatchError,
        UnknownSchemaError,
        __version__,
        parse_confluent_header,
    )
except ImportError as exc:  # pragma: no cover - depends on the build state
    raise ImportError(
        "sluice's Rust extension module sluice._native is not built or not importable "
        f"({exc}); run `make build` (maturin develop --release into .venv)"
    ) from exc

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
