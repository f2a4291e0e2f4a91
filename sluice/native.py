"""Public import path of sluice's Rust extension module.

Thin re-export of :mod:`sluice._native` (built from ``udfs_rs/`` with maturin)::

    from sluice.native import AvroDecoder, AvroEncoder, DecodeError
    from sluice.native import EventDecoder, FrameDecoder, encode_frame
    from sluice.native import QualityChecker, QualitySuiteError
    from sluice.native import FeatureAccumulator, FeatureSpec, FeatureSpecError, StateError
    from sluice.native import IsolationForestModel, ModelError

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

# Sensor-frame and maintenance-event decoders. Imported separately so that a
# module built before they existed (e.g. a running job's .venv with an editable
# install) still serves the Avro names above; using one of these names then
# raises an ImportError that says to rebuild.
try:
    from sluice._native import (
        BadCrcError,
        EventDecoder,
        FrameDecoder,
        InvalidUtf8Error,
        MalformedJsonError,
        MissingFieldError,
        OversizedError,
        TooDeepError,
        UnsupportedVersionError,
        encode_frame,
    )
except ImportError as _exc:  # pragma: no cover - depends on the build state
    _STALE_BUILD = str(_exc)
else:
    _STALE_BUILD = ""

# Data-quality checks, added after the frame/event decoders (same stale-build handling).
try:
    from sluice._native import QualityChecker, QualitySuiteError
except ImportError as _exc:  # pragma: no cover - depends on the build state
    _STALE_BUILD = _STALE_BUILD or str(_exc)

# Window feature accumulators (issue 4), same stale-build handling.
try:
    from sluice._native import FeatureAccumulator, FeatureSpec, FeatureSpecError, StateError
except ImportError as _exc:  # pragma: no cover - depends on the build state
    _STALE_BUILD = _STALE_BUILD or str(_exc)

# Isolation-forest scoring (issue 5, docs/models.md), same stale-build handling.
try:
    from sluice._native import IsolationForestModel, ModelError
except ImportError as _exc:  # pragma: no cover - depends on the build state
    _STALE_BUILD = _STALE_BUILD or str(_exc)

if _STALE_BUILD:  # pragma: no cover - depends on the build state

    def __getattr__(name: str) -> object:
        if name in __all__:
            raise ImportError(
                f"sluice.native.{name} is not in the built sluice._native ({_STALE_BUILD}); "
                "the module predates it: run `make build` (maturin develop --release into .venv)"
            )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
