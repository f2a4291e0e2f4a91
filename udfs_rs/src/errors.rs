//! The one error type of the crate ([`SluiceErr`]) and its mapping onto the
//! Python exception hierarchy exposed from `sluice._native`:
//!
//! ```text
//! SluiceError(Exception)
//! ├── SchemaError
//! ├── DecodeError            .reason .schema_id .offset
//! │   ├── EmptyMessageError  "empty"
//! │   ├── BadMagicError      "bad-magic"
//! │   ├── UnknownSchemaError "unknown-schema"
//! │   ├── TruncatedError     "truncated"
//! │   ├── TypeMismatchError  "type-mismatch"
//! │   ├── TrailingBytesError "trailing-bytes"
//! │   ├── UnsupportedVersionError "unsupported-version"   (sensor frames)
//! │   ├── BadCrcError        "bad-crc"                    (sensor frames)
//! │   ├── InvalidUtf8Error   "invalid-utf8"               (frames, JSON)
//! │   ├── OversizedError     "oversized"                  (JSON)
//! │   ├── TooDeepError       "too-deep"                   (JSON)
//! │   ├── MalformedJsonError "malformed-json"             (JSON)
//! │   └── MissingFieldError  "missing-field"              (JSON)
//! ├── EncodeError            .reason .path
//! ├── QualitySuiteError      (a great-expectations suite the Rust checks cannot compile)
//! ├── FeatureSpecError       (a feature spec that does not validate; a spec mismatch)
//! ├── StateError             (an accumulator state blob that cannot be read back)
//! └── ModelError             (a model export that does not load; the message names the field)
//! ```
//!
//! Bad call arguments of the feature accumulators (array lengths that
//! differ, an empty frame, a sample rate <= 0) are plain `ValueError`s.
//!
//! Python exceptions are only materialised in [`SluiceErr::into_pyerr`], which
//! takes the `Python` token of the calling `#[pymethods]` function (never
//! `Python::attach`), so the pure-Rust core stays testable without Python.

use std::fmt;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{create_exception, intern};

create_exception!(
    sluice.native,
    SluiceError,
    PyException,
    "Base class of every error raised by sluice's native module."
);
create_exception!(
    sluice.native,
    SchemaError,
    SluiceError,
    "A schema could not be parsed, or a writer schema cannot be resolved to the reader schema."
);
create_exception!(
    sluice.native,
    DecodeError,
    SluiceError,
    "A message could not be decoded. Attributes: reason (str), schema_id (int | None), offset (int | None)."
);
create_exception!(
    sluice.native,
    EmptyMessageError,
    DecodeError,
    "reason 'empty': the message has no bytes."
);
create_exception!(
    sluice.native,
    BadMagicError,
    DecodeError,
    "reason 'bad-magic': the first byte is not the Confluent magic byte 0x00."
);
create_exception!(
    sluice.native,
    UnknownSchemaError,
    DecodeError,
    "reason 'unknown-schema': no writer schema was added for the message's schema id."
);
create_exception!(
    sluice.native,
    TruncatedError,
    DecodeError,
    "reason 'truncated': the input ended before the value was complete."
);
create_exception!(
    sluice.native,
    TypeMismatchError,
    DecodeError,
    "reason 'type-mismatch': the bytes do not form a valid value of the writer schema, or a value cannot be resolved to the reader schema."
);
create_exception!(
    sluice.native,
    TrailingBytesError,
    DecodeError,
    "reason 'trailing-bytes': bytes are left over after the top-level value."
);
create_exception!(
    sluice.native,
    UnsupportedVersionError,
    DecodeError,
    "reason 'unsupported-version': the message declares a format version this decoder does not read."
);
create_exception!(
    sluice.native,
    BadCrcError,
    DecodeError,
    "reason 'bad-crc': the CRC-32 stored in the message does not match the one computed over its bytes."
);
create_exception!(
    sluice.native,
    InvalidUtf8Error,
    DecodeError,
    "reason 'invalid-utf8': text that must be UTF-8 is not (offset = first invalid byte)."
);
create_exception!(
    sluice.native,
    OversizedError,
    DecodeError,
    "reason 'oversized': the message is longer than the decoder's byte limit."
);
create_exception!(
    sluice.native,
    TooDeepError,
    DecodeError,
    "reason 'too-deep': JSON arrays/objects are nested deeper than the decoder's limit."
);
create_exception!(
    sluice.native,
    MalformedJsonError,
    DecodeError,
    "reason 'malformed-json': not valid JSON, top level not an object, or a duplicate object key."
);
create_exception!(
    sluice.native,
    MissingFieldError,
    DecodeError,
    "reason 'missing-field': a required field is absent."
);
create_exception!(
    sluice.native,
    EncodeError,
    SluiceError,
    "A Python value could not be encoded. Attributes: reason (str), path (str)."
);

create_exception!(
    sluice.native,
    QualitySuiteError,
    SluiceError,
    "A great-expectations suite cannot be compiled into per-record checks (bad JSON, unsupported expectation type or kwarg, unknown column, a regex the Rust engine cannot run identically to Python's re.search). The message names the expectation."
);

create_exception!(
    sluice.native,
    FeatureSpecError,
    SluiceError,
    "A feature spec does not validate (unknown aggregation or parameter, a parameter out of range, two outputs with one name), or an accumulator is used with the wrong spec or input kind. The message names the aggregation (by index and kind) and the parameter."
);

create_exception!(
    sluice.native,
    StateError,
    SluiceError,
    "An accumulator state blob cannot be read back: too short, another format version, checksum mismatch, written for another feature spec, or contents that are inconsistent."
);

create_exception!(
    sluice.native,
    ModelError,
    SluiceError,
    "A model export cannot be loaded: not JSON, another format or format version, or a field that does not validate (the message names the field, e.g. estimators[3].children_left[7])."
);

/// Why a decode failed. `as_str` gives the stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeReason {
    Empty,
    BadMagic,
    UnknownSchema,
    Truncated,
    TypeMismatch,
    TrailingBytes,
    UnsupportedVersion,
    BadCrc,
    InvalidUtf8,
    Oversized,
    TooDeep,
    MalformedJson,
    MissingField,
}

impl DecodeReason {
    pub const ALL: [DecodeReason; 13] = [
        DecodeReason::Empty,
        DecodeReason::BadMagic,
        DecodeReason::UnknownSchema,
        DecodeReason::Truncated,
        DecodeReason::TypeMismatch,
        DecodeReason::TrailingBytes,
        DecodeReason::UnsupportedVersion,
        DecodeReason::BadCrc,
        DecodeReason::InvalidUtf8,
        DecodeReason::Oversized,
        DecodeReason::TooDeep,
        DecodeReason::MalformedJson,
        DecodeReason::MissingField,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecodeReason::Empty => "empty",
            DecodeReason::BadMagic => "bad-magic",
            DecodeReason::UnknownSchema => "unknown-schema",
            DecodeReason::Truncated => "truncated",
            DecodeReason::TypeMismatch => "type-mismatch",
            DecodeReason::TrailingBytes => "trailing-bytes",
            DecodeReason::UnsupportedVersion => "unsupported-version",
            DecodeReason::BadCrc => "bad-crc",
            DecodeReason::InvalidUtf8 => "invalid-utf8",
            DecodeReason::Oversized => "oversized",
            DecodeReason::TooDeep => "too-deep",
            DecodeReason::MalformedJson => "malformed-json",
            DecodeReason::MissingField => "missing-field",
        }
    }
}

/// Why an encode failed. `as_str` gives the stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeReason {
    /// The Python value has the wrong type for the schema (incl. wrong fixed
    /// size, wrong record tuple length, non-str map key, no union branch fits).
    WrongType,
    /// An int does not fit the schema's int/long, or a number is not finite
    /// where required.
    OutOfRange,
    /// A record field is missing and has no default.
    MissingField,
    /// A str is not a symbol of the enum.
    UnknownSymbol,
}

impl EncodeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EncodeReason::WrongType => "wrong-type",
            EncodeReason::OutOfRange => "out-of-range",
            EncodeReason::MissingField => "missing-field",
            EncodeReason::UnknownSymbol => "unknown-symbol",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    pub reason: DecodeReason,
    pub schema_id: Option<u32>,
    pub offset: Option<usize>,
    /// Reader-side field path (`reading.temperature_c`, `items[3]`), may be empty.
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeFailure {
    pub reason: EncodeReason,
    /// Field path (`reading.temperature_c`, `tags[k]`, `items[3]`); empty = the top-level value.
    pub path: String,
    pub detail: String,
}

/// The crate's single error type.
#[derive(Debug)]
pub enum SluiceErr {
    /// Unparsable schema, or writer schema not resolvable to the reader schema.
    Schema(String),
    Decode(Box<DecodeFailure>),
    Encode(Box<EncodeFailure>),
    /// A data-quality suite that cannot be compiled (see `quality.rs`).
    QualitySuite(String),
    /// An invalid feature spec, or an accumulator used against its spec (`features.rs`).
    FeatureSpec(String),
    /// An accumulator state blob that cannot be read back (`features.rs`).
    State(String),
    /// A model export that does not load (`model.rs`).
    Model(String),
    /// A bad call argument (Python `ValueError`).
    Value(String),
    /// A Python error raised while building / reading Python objects.
    Python(PyErr),
}

impl SluiceErr {
    pub fn schema(msg: impl Into<String>) -> Self {
        SluiceErr::Schema(msg.into())
    }

    #[cold]
    pub fn decode(reason: DecodeReason, offset: usize, detail: impl Into<String>) -> Self {
        SluiceErr::Decode(Box::new(DecodeFailure {
            reason,
            schema_id: None,
            offset: Some(offset),
            path: String::new(),
            detail: detail.into(),
        }))
    }

    /// A decode error without a byte offset (e.g. a required field that is absent).
    #[cold]
    pub fn decode_no_offset(reason: DecodeReason, detail: impl Into<String>) -> Self {
        SluiceErr::Decode(Box::new(DecodeFailure {
            reason,
            schema_id: None,
            offset: None,
            path: String::new(),
            detail: detail.into(),
        }))
    }

    #[cold]
    pub fn truncated(offset: usize, detail: impl Into<String>) -> Self {
        Self::decode(DecodeReason::Truncated, offset, detail)
    }

    #[cold]
    pub fn mismatch(offset: usize, detail: impl Into<String>) -> Self {
        Self::decode(DecodeReason::TypeMismatch, offset, detail)
    }

    #[cold]
    pub fn encode(reason: EncodeReason, detail: impl Into<String>) -> Self {
        SluiceErr::Encode(Box::new(EncodeFailure {
            reason,
            path: String::new(),
            detail: detail.into(),
        }))
    }

    /// Decode reason, if this is a decode error.
    pub fn decode_reason(&self) -> Option<DecodeReason> {
        match self {
            SluiceErr::Decode(d) => Some(d.reason),
            _ => None,
        }
    }

    /// Encode reason, if this is an encode error.
    pub fn encode_reason(&self) -> Option<EncodeReason> {
        match self {
            SluiceErr::Encode(e) => Some(e.reason),
            _ => None,
        }
    }

    /// Attach the writer schema id to a decode error (no-op otherwise).
    pub fn with_schema_id(mut self, id: u32) -> Self {
        if let SluiceErr::Decode(d) = &mut self {
            d.schema_id = Some(id);
        }
        self
    }

    /// Shift decode offsets by `base` (body offset → offset in the framed input).
    pub fn shift_offset(mut self, base: usize) -> Self {
        if let SluiceErr::Decode(d) = &mut self {
            d.offset = d.offset.map(|o| o + base);
        }
        self
    }

    /// Prepend a path segment while an error propagates outwards: a field name
    /// (`"reading"`) or an index / key segment (`"[3]"`).
    #[cold]
    pub fn in_path(mut self, seg: &str) -> Self {
        let path = match &mut self {
            SluiceErr::Decode(d) => &mut d.path,
            SluiceErr::Encode(e) => &mut e.path,
            _ => return self,
        };
        if path.is_empty() {
            *path = seg.to_owned();
        } else if path.starts_with('[') || seg.is_empty() {
            path.insert_str(0, seg);
        } else {
            path.insert(0, '.');
            path.insert_str(0, seg);
        }
        self
    }

    /// Materialise the Python exception (with `reason` / `schema_id` /
    /// `offset` / `path` attributes set on the instance).
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let msg = self.to_string();
        match self {
            SluiceErr::Python(e) => e,
            SluiceErr::Schema(_) => SchemaError::new_err(msg),
            SluiceErr::QualitySuite(_) => QualitySuiteError::new_err(msg),
            SluiceErr::FeatureSpec(_) => FeatureSpecError::new_err(msg),
            SluiceErr::State(_) => StateError::new_err(msg),
            SluiceErr::Model(_) => ModelError::new_err(msg),
            SluiceErr::Value(_) => pyo3::exceptions::PyValueError::new_err(msg),
            SluiceErr::Decode(d) => {
                let err = match d.reason {
                    DecodeReason::Empty => EmptyMessageError::new_err(msg),
                    DecodeReason::BadMagic => BadMagicError::new_err(msg),
                    DecodeReason::UnknownSchema => UnknownSchemaError::new_err(msg),
                    DecodeReason::Truncated => TruncatedError::new_err(msg),
                    DecodeReason::TypeMismatch => TypeMismatchError::new_err(msg),
                    DecodeReason::TrailingBytes => TrailingBytesError::new_err(msg),
                    DecodeReason::UnsupportedVersion => UnsupportedVersionError::new_err(msg),
                    DecodeReason::BadCrc => BadCrcError::new_err(msg),
                    DecodeReason::InvalidUtf8 => InvalidUtf8Error::new_err(msg),
                    DecodeReason::Oversized => OversizedError::new_err(msg),
                    DecodeReason::TooDeep => TooDeepError::new_err(msg),
                    DecodeReason::MalformedJson => MalformedJsonError::new_err(msg),
                    DecodeReason::MissingField => MissingFieldError::new_err(msg),
                };
                let set = || -> PyResult<()> {
                    let v = err.value(py);
                    v.setattr(intern!(py, "reason"), d.reason.as_str())?;
                    v.setattr(intern!(py, "schema_id"), d.schema_id)?;
                    v.setattr(intern!(py, "offset"), d.offset)?;
                    Ok(())
                };
                match set() {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }
            SluiceErr::Encode(e) => {
                let err = EncodeError::new_err(msg);
                let set = || -> PyResult<()> {
                    let v = err.value(py);
                    v.setattr(intern!(py, "reason"), e.reason.as_str())?;
                    v.setattr(intern!(py, "path"), e.path.as_str())?;
                    Ok(())
                };
                match set() {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }
        }
    }
}

impl fmt::Display for SluiceErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SluiceErr::Schema(m)
            | SluiceErr::QualitySuite(m)
            | SluiceErr::FeatureSpec(m)
            | SluiceErr::State(m)
            | SluiceErr::Model(m)
            | SluiceErr::Value(m) => f.write_str(m),
            SluiceErr::Python(e) => write!(f, "{e}"),
            SluiceErr::Decode(d) => {
                write!(f, "{}", d.reason.as_str())?;
                if let Some(o) = d.offset {
                    write!(f, " at offset {o}")?;
                }
                if let Some(id) = d.schema_id {
                    write!(f, " (schema id {id})")?;
                }
                if !d.path.is_empty() {
                    write!(f, " in field '{}'", d.path)?;
                }
                if !d.detail.is_empty() {
                    write!(f, ": {}", d.detail)?;
                }
                Ok(())
            }
            SluiceErr::Encode(e) => {
                write!(f, "{}", e.reason.as_str())?;
                if e.path.is_empty() {
                    write!(f, " at top level")?;
                } else {
                    write!(f, " at '{}'", e.path)?;
                }
                if !e.detail.is_empty() {
                    write!(f, ": {}", e.detail)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SluiceErr {}

impl From<PyErr> for SluiceErr {
    fn from(e: PyErr) -> Self {
        SluiceErr::Python(e)
    }
}

impl From<apache_avro::Error> for SluiceErr {
    fn from(e: apache_avro::Error) -> Self {
        SluiceErr::Schema(format!("cannot parse Avro schema: {e}"))
    }
}

impl From<DecodeFailure> for SluiceErr {
    fn from(d: DecodeFailure) -> Self {
        SluiceErr::Decode(Box::new(d))
    }
}

impl From<EncodeFailure> for SluiceErr {
    fn from(e: EncodeFailure) -> Self {
        SluiceErr::Encode(Box::new(e))
    }
}

/// `Result<T, SluiceErr>` → `PyResult<T>` with the caller's `Python` token.
pub trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, SluiceErr> {
    #[inline]
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| e.into_pyerr(py))
    }
}

/// Register the exception classes on the module and give every class the
/// attribute defaults (`reason` is the subclass' reason code).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let none = py.None();
    m.add("SluiceError", py.get_type::<SluiceError>())?;
    m.add("SchemaError", py.get_type::<SchemaError>())?;

    let base = py.get_type::<DecodeError>();
    base.setattr("reason", &none)?;
    base.setattr("schema_id", &none)?;
    base.setattr("offset", &none)?;
    m.add("DecodeError", base)?;
    let subs = [
        (
            "EmptyMessageError",
            py.get_type::<EmptyMessageError>(),
            DecodeReason::Empty,
        ),
        (
            "BadMagicError",
            py.get_type::<BadMagicError>(),
            DecodeReason::BadMagic,
        ),
        (
            "UnknownSchemaError",
            py.get_type::<UnknownSchemaError>(),
            DecodeReason::UnknownSchema,
        ),
        (
            "TruncatedError",
            py.get_type::<TruncatedError>(),
            DecodeReason::Truncated,
        ),
        (
            "TypeMismatchError",
            py.get_type::<TypeMismatchError>(),
            DecodeReason::TypeMismatch,
        ),
        (
            "TrailingBytesError",
            py.get_type::<TrailingBytesError>(),
            DecodeReason::TrailingBytes,
        ),
        (
            "UnsupportedVersionError",
            py.get_type::<UnsupportedVersionError>(),
            DecodeReason::UnsupportedVersion,
        ),
        (
            "BadCrcError",
            py.get_type::<BadCrcError>(),
            DecodeReason::BadCrc,
        ),
        (
            "InvalidUtf8Error",
            py.get_type::<InvalidUtf8Error>(),
            DecodeReason::InvalidUtf8,
        ),
        (
            "OversizedError",
            py.get_type::<OversizedError>(),
            DecodeReason::Oversized,
        ),
        (
            "TooDeepError",
            py.get_type::<TooDeepError>(),
            DecodeReason::TooDeep,
        ),
        (
            "MalformedJsonError",
            py.get_type::<MalformedJsonError>(),
            DecodeReason::MalformedJson,
        ),
        (
            "MissingFieldError",
            py.get_type::<MissingFieldError>(),
            DecodeReason::MissingField,
        ),
    ];
    for (name, ty, reason) in subs {
        ty.setattr("reason", reason.as_str())?;
        m.add(name, ty)?;
    }

    let enc = py.get_type::<EncodeError>();
    enc.setattr("reason", &none)?;
    enc.setattr("path", &none)?;
    m.add("EncodeError", enc)?;
    m.add("QualitySuiteError", py.get_type::<QualitySuiteError>())?;
    m.add("FeatureSpecError", py.get_type::<FeatureSpecError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    Ok(())
}
