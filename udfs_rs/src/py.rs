//! The Python-facing classes and functions of `sluice._native`.
//!
//! Also the decoders of the two non-Avro topics: `FrameDecoder` /
//! `encode_frame` (binary sensor frames, `frames.rs`) and `EventDecoder`
//! (maintenance-event JSON, `events.rs`), and `QualityChecker` (a
//! great-expectations suite compiled to per-record checks, `quality.rs`), and
//! `FeatureSpec` / `FeatureAccumulator` (window features, `features.rs`).
//!
//! Thread-safety: every entry point uses the `Python` token pyo3 hands to the
//! `#[pymethods]` (the module never calls `Python::attach` / `with_gil`, which
//! deadlocks in PyFlink thread mode), makes no Python callbacks, and never
//! releases the GIL while holding a lock. Classes are `frozen` and `Sync`:
//! the per-decoder writer table is an `RwLock<HashMap<u32, Arc<_>>>` that is
//! only held for a lookup / insert, never while Python objects are built.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};

use crate::decode::{self, Sink};
use crate::encode::{EncCtx, EncPlan, EntryFn, Kind};
use crate::errors::{DecodeReason, FeatureSpecError, IntoPyResult, SchemaError, SluiceErr};
use crate::resolve::{Plan, RecordPlan};
use crate::schema::{NamedKind, SchemaIr};
use crate::value::Value;
use crate::quality::{self, Cell};
use crate::{events, features, frames, framing};

/// Per named type of a schema: record field names or enum symbols as
/// interned Python strings (empty for fixed).
type NameTable = Vec<Vec<Py<PyString>>>;

fn name_table(py: Python<'_>, ir: &SchemaIr) -> NameTable {
    ir.named
        .iter()
        .map(|n| match &n.kind {
            NamedKind::Record { fields } => fields
                .iter()
                .map(|f| PyString::intern(py, &f.name).unbind())
                .collect(),
            NamedKind::Enum { symbols, .. } => symbols
                .iter()
                .map(|s| PyString::intern(py, s).unbind())
                .collect(),
            NamedKind::Fixed { .. } => Vec::new(),
        })
        .collect()
}

// ---------------------------------------------------------------- decoding

/// Builds Python objects straight from the plan.
struct PySink<'a, 'py> {
    py: Python<'py>,
    names: &'a NameTable,
    as_dict: bool,
}

impl<'py> PySink<'_, 'py> {
    fn value(&self, v: &Value) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        Ok(match v {
            Value::Null => py.None().into_bound(py),
            Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
            Value::Long(x) => {
                let Ok(i) = x.into_pyobject(py);
                i.into_any()
            }
            Value::Double(x) => PyFloat::new(py, *x).into_any(),
            Value::Bytes(b) => PyBytes::new(py, b).into_any(),
            Value::String(s) | Value::Enum(s) => PyString::new(py, s).into_any(),
            Value::Array(items) => PyList::new(
                py,
                items
                    .iter()
                    .map(|x| self.value(x))
                    .collect::<PyResult<Vec<_>>>()?,
            )?
            .into_any(),
            Value::Map(entries) => {
                let d = PyDict::new(py);
                for (k, x) in entries {
                    d.set_item(k, self.value(x)?)?;
                }
                d.into_any()
            }
            Value::Record(fields) => {
                if self.as_dict {
                    let d = PyDict::new(py);
                    for (k, x) in fields {
                        d.set_item(k, self.value(x)?)?;
                    }
                    d.into_any()
                } else {
                    PyTuple::new(
                        py,
                        fields
                            .iter()
                            .map(|(_, x)| self.value(x))
                            .collect::<PyResult<Vec<_>>>()?,
                    )?
                    .into_any()
                }
            }
        })
    }
}

impl<'py> Sink for PySink<'_, 'py> {
    type Out = Bound<'py, PyAny>;
    type Map = Bound<'py, PyDict>;

    #[inline]
    fn null(&mut self) -> Result<Self::Out, SluiceErr> {
        Ok(self.py.None().into_bound(self.py))
    }
    #[inline]
    fn boolean(&mut self, v: bool) -> Result<Self::Out, SluiceErr> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }
    #[inline]
    fn long(&mut self, v: i64) -> Result<Self::Out, SluiceErr> {
        let Ok(i) = v.into_pyobject(self.py);
        Ok(i.into_any())
    }
    #[inline]
    fn double(&mut self, v: f64) -> Result<Self::Out, SluiceErr> {
        Ok(PyFloat::new(self.py, v).into_any())
    }
    #[inline]
    fn bytes(&mut self, v: &[u8]) -> Result<Self::Out, SluiceErr> {
        Ok(PyBytes::new(self.py, v).into_any())
    }
    #[inline]
    fn string(&mut self, v: &str) -> Result<Self::Out, SluiceErr> {
        Ok(PyString::new(self.py, v).into_any())
    }
    #[inline]
    fn enum_symbol(
        &mut self,
        enum_id: usize,
        idx: usize,
        symbol: &str,
    ) -> Result<Self::Out, SluiceErr> {
        match self.names.get(enum_id).and_then(|s| s.get(idx)) {
            Some(s) => Ok(s.bind(self.py).clone().into_any()),
            None => Ok(PyString::new(self.py, symbol).into_any()),
        }
    }
    #[inline]
    fn array(&mut self, items: Vec<Self::Out>) -> Result<Self::Out, SluiceErr> {
        Ok(PyList::new(self.py, items)?.into_any())
    }
    #[inline]
    fn map_begin(&mut self) -> Result<Self::Map, SluiceErr> {
        Ok(PyDict::new(self.py))
    }
    #[inline]
    fn map_insert(&mut self, m: &mut Self::Map, key: &str, v: Self::Out) -> Result<(), SluiceErr> {
        m.set_item(PyString::new(self.py, key), v)?;
        Ok(())
    }
    #[inline]
    fn map_end(&mut self, m: Self::Map) -> Result<Self::Out, SluiceErr> {
        Ok(m.into_any())
    }
    #[inline]
    fn record(&mut self, rec: &RecordPlan, fields: Vec<Self::Out>) -> Result<Self::Out, SluiceErr> {
        if !self.as_dict {
            return Ok(PyTuple::new(self.py, fields)?.into_any());
        }
        let d = PyDict::new(self.py);
        let names = &self.names[rec.reader_id];
        for (k, v) in names.iter().zip(fields) {
            d.set_item(k.bind(self.py), v)?;
        }
        Ok(d.into_any())
    }
    fn default(&mut self, v: &Value) -> Result<Self::Out, SluiceErr> {
        Ok(self.value(v)?)
    }
}

struct WriterEntry {
    plan: Plan,
    canonical: String,
}

/// Decodes Confluent-framed (or bare) Avro written with any registered writer
/// schema into values shaped like one reader schema.
#[pyclass(frozen, module = "sluice._native")]
pub struct AvroDecoder {
    reader: SchemaIr,
    as_dict: bool,
    names: NameTable,
    writers: RwLock<HashMap<u32, Arc<WriterEntry>>>,
}

impl AvroDecoder {
    fn entry(&self, id: u32) -> Option<Arc<WriterEntry>> {
        let map = self.writers.read().unwrap_or_else(|e| e.into_inner());
        map.get(&id).cloned()
    }

    fn plan_for(&self, id: u32) -> Result<Arc<WriterEntry>, SluiceErr> {
        self.entry(id).ok_or_else(|| {
            let mut e = SluiceErr::decode(
                DecodeReason::UnknownSchema,
                0,
                format!("no writer schema added for schema id {id} (call add_writer_schema first)"),
            )
            .with_schema_id(id);
            if let SluiceErr::Decode(d) = &mut e {
                d.offset = None;
            }
            e
        })
    }

    fn run<'py>(
        &self,
        py: Python<'py>,
        entry: &WriterEntry,
        buf: &[u8],
        start: usize,
    ) -> Result<Bound<'py, PyAny>, SluiceErr> {
        let mut sink = PySink {
            py,
            names: &self.names,
            as_dict: self.as_dict,
        };
        decode::decode(&entry.plan, buf, start, &mut sink)
    }
}

#[pymethods]
impl AvroDecoder {
    #[new]
    #[pyo3(signature = (reader_schema, record_as = "tuple"))]
    fn new(py: Python<'_>, reader_schema: &str, record_as: &str) -> PyResult<Self> {
        let as_dict = match record_as {
            "tuple" => false,
            "dict" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "record_as must be 'tuple' or 'dict', got {other:?}"
                )))
            }
        };
        let reader = SchemaIr::parse(reader_schema)
            .map_err(|e| SluiceErr::schema(format!("reader schema: {e}")))
            .py_err(py)?;
        let names = name_table(py, &reader);
        Ok(AvroDecoder {
            reader,
            as_dict,
            names,
            writers: RwLock::new(HashMap::new()),
        })
    }

    /// Compile the resolution plan for writer schema `schema_id` (once).
    fn add_writer_schema(
        &self,
        py: Python<'_>,
        schema_id: u32,
        writer_schema: &str,
    ) -> PyResult<()> {
        let writer = SchemaIr::parse(writer_schema)
            .map_err(|e| SluiceErr::schema(format!("writer schema {schema_id}: {e}")))
            .py_err(py)?;
        let same = |e: &WriterEntry| -> PyResult<()> {
            if e.canonical == writer.canonical {
                Ok(())
            } else {
                Err(SchemaError::new_err(format!(
                    "schema id {schema_id} was already added with a different writer schema"
                )))
            }
        };
        if let Some(e) = self.entry(schema_id) {
            return same(&e);
        }
        let plan = Plan::compile(&writer, &self.reader)
            .map_err(|e| {
                SluiceErr::schema(format!(
                    "writer schema {schema_id} cannot be resolved to the reader schema: {e}"
                ))
            })
            .py_err(py)?;
        let mut map = self.writers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(&schema_id) {
            return same(e);
        }
        map.insert(
            schema_id,
            Arc::new(WriterEntry {
                plan,
                canonical: writer.canonical,
            }),
        );
        Ok(())
    }

    fn has_writer(&self, schema_id: i64) -> bool {
        u32::try_from(schema_id).is_ok_and(|id| self.entry(id).is_some())
    }

    fn writer_ids(&self) -> Vec<u32> {
        let map = self.writers.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u32> = map.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    #[getter]
    fn reader_field_names(&self) -> Vec<String> {
        self.reader.root_field_names()
    }

    #[getter]
    fn record_as(&self) -> &'static str {
        if self.as_dict {
            "dict"
        } else {
            "tuple"
        }
    }

    /// Decode a Confluent-framed message → `(schema_id, value)`.
    fn decode<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<(u32, Bound<'py, PyAny>)> {
        let (id, start) = framing::parse_header(data).py_err(py)?;
        let entry = self.plan_for(id).py_err(py)?;
        let v = self
            .run(py, &entry, data, start)
            .map_err(|e| e.with_schema_id(id))
            .py_err(py)?;
        Ok((id, v))
    }

    /// Decode an unframed Avro body written with writer schema `schema_id`.
    fn decode_body<'py>(
        &self,
        py: Python<'py>,
        schema_id: u32,
        body: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let entry = self.plan_for(schema_id).py_err(py)?;
        self.run(py, &entry, body, 0)
            .map_err(|e| e.with_schema_id(schema_id))
            .py_err(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "AvroDecoder(reader={}, record_as={:?}, writer_ids={:?})",
            self.reader.type_name(&self.reader.root),
            self.record_as(),
            self.writer_ids()
        )
    }
}

// ---------------------------------------------------------------- encoding

struct PyCtx<'a, 'py> {
    py: Python<'py>,
    names: &'a NameTable,
}

fn wrong_type(msg: impl Into<String>) -> SluiceErr {
    SluiceErr::encode(crate::errors::EncodeReason::WrongType, msg)
}

impl<'py> EncCtx for PyCtx<'_, 'py> {
    type V = Bound<'py, PyAny>;

    #[inline]
    fn kind(&self, v: &Self::V) -> Kind {
        if v.is_none() {
            Kind::Null
        } else if v.is_instance_of::<PyBool>() {
            Kind::Bool
        } else if v.is_instance_of::<PyInt>() {
            Kind::Int
        } else if v.is_instance_of::<PyFloat>() {
            Kind::Float
        } else if v.is_instance_of::<PyString>() {
            Kind::Str
        } else if v.is_instance_of::<PyBytes>() || v.is_instance_of::<PyByteArray>() {
            Kind::Bytes
        } else if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
            Kind::Seq
        } else if v.is_instance_of::<PyDict>() {
            Kind::Dict
        } else {
            Kind::Other
        }
    }
    fn type_name(&self, v: &Self::V) -> String {
        v.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into())
    }
    fn to_bool(&self, v: &Self::V) -> bool {
        v.is_truthy().unwrap_or(false)
    }
    fn to_i64(&self, v: &Self::V) -> Option<i64> {
        v.extract::<i64>().ok()
    }
    fn to_f64(&self, v: &Self::V) -> Option<f64> {
        v.extract::<f64>().ok()
    }
    fn with_bytes<R>(&self, v: &Self::V, f: impl FnOnce(&[u8]) -> R) -> Result<R, SluiceErr> {
        if let Ok(b) = v.cast::<PyBytes>() {
            Ok(f(b.as_bytes()))
        } else if let Ok(b) = v.cast::<PyByteArray>() {
            Ok(f(&b.to_vec()))
        } else {
            Err(wrong_type(format!(
                "expected bytes, got {}",
                self.type_name(v)
            )))
        }
    }
    fn with_str<R>(&self, v: &Self::V, f: impl FnOnce(&str) -> R) -> Result<R, SluiceErr> {
        let s = v
            .cast::<PyString>()
            .map_err(|_| wrong_type(format!("expected str, got {}", self.type_name(v))))?;
        let s = s
            .to_str()
            .map_err(|_| wrong_type("str is not encodable as UTF-8 (lone surrogate?)"))?;
        Ok(f(s))
    }
    fn seq_len(&self, v: &Self::V) -> usize {
        if let Ok(l) = v.cast::<PyList>() {
            l.len()
        } else if let Ok(t) = v.cast::<PyTuple>() {
            t.len()
        } else {
            0
        }
    }
    fn seq_get(&self, v: &Self::V, i: usize) -> Result<Self::V, SluiceErr> {
        if let Ok(l) = v.cast::<PyList>() {
            Ok(l.get_item(i)?)
        } else if let Ok(t) = v.cast::<PyTuple>() {
            Ok(t.get_item(i)?)
        } else {
            Err(wrong_type(format!(
                "expected list or tuple, got {}",
                self.type_name(v)
            )))
        }
    }
    fn dict_len(&self, v: &Self::V) -> usize {
        v.cast::<PyDict>().map(|d| d.len()).unwrap_or(0)
    }
    fn dict_each(&self, v: &Self::V, f: &mut EntryFn<'_, Self::V>) -> Result<(), SluiceErr> {
        let d = v
            .cast::<PyDict>()
            .map_err(|_| wrong_type(format!("expected dict, got {}", self.type_name(v))))?;
        for (k, x) in d.iter() {
            match k.cast::<PyString>() {
                Ok(ks) => match ks.to_str() {
                    Ok(s) => f(Ok(s), &x)?,
                    Err(_) => f(Err("str with lone surrogates".into()), &x)?,
                },
                Err(_) => f(Err(self.type_name(&k)), &x)?,
            }
        }
        Ok(())
    }
    fn record_field(
        &self,
        v: &Self::V,
        rec_id: usize,
        field_idx: usize,
        name: &str,
    ) -> Result<Option<Self::V>, SluiceErr> {
        let d = v
            .cast::<PyDict>()
            .map_err(|_| wrong_type(format!("expected dict, got {}", self.type_name(v))))?;
        let got = match self.names.get(rec_id).and_then(|n| n.get(field_idx)) {
            Some(key) => d.get_item(key.bind(self.py))?,
            None => d.get_item(name)?,
        };
        Ok(got)
    }
}

/// Encodes Python values with one schema, Confluent-framed with a fixed id.
#[pyclass(frozen, module = "sluice._native")]
pub struct AvroEncoder {
    plan: EncPlan,
    schema_id: u32,
    names: NameTable,
}

impl AvroEncoder {
    fn encode_into(
        &self,
        py: Python<'_>,
        record: &Bound<'_, PyAny>,
        out: &mut Vec<u8>,
    ) -> PyResult<()> {
        let ctx = PyCtx {
            py: record.py(),
            names: &self.names,
        };
        self.plan.encode(&ctx, record, out).py_err(py)
    }
}

#[pymethods]
impl AvroEncoder {
    #[new]
    fn new(py: Python<'_>, schema: &str, schema_id: u32) -> PyResult<Self> {
        let ir = SchemaIr::parse(schema).py_err(py)?;
        let names = name_table(py, &ir);
        let plan = EncPlan::compile(ir).py_err(py)?;
        Ok(AvroEncoder {
            plan,
            schema_id,
            names,
        })
    }

    /// Confluent framing + Avro binary.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        record: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::with_capacity(128);
        framing::write_header(&mut out, self.schema_id);
        self.encode_into(py, record, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Avro binary only (no framing).
    fn encode_body<'py>(
        &self,
        py: Python<'py>,
        record: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(py, record, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    #[getter]
    fn schema_id(&self) -> u32 {
        self.schema_id
    }

    #[getter]
    fn field_names(&self) -> Vec<String> {
        self.plan.ir.root_field_names()
    }

    fn __repr__(&self) -> String {
        format!(
            "AvroEncoder(schema={}, schema_id={})",
            self.plan.ir.type_name(&self.plan.ir.root),
            self.schema_id
        )
    }
}

/// Parse the 5-byte Confluent header → `(schema_id, body_offset)`.
#[pyfunction]
pub fn parse_confluent_header(py: Python<'_>, data: &[u8]) -> PyResult<(u32, usize)> {
    framing::parse_header(data).py_err(py)
}

// ------------------------------------------------------------ sensor frames

/// Decodes binary sensor frames (format v1, see `frames.rs`).
#[pyclass(frozen, module = "sluice._native")]
pub struct FrameDecoder {
    max_samples: usize,
}

impl FrameDecoder {
    fn frame<'a>(&self, py: Python<'_>, data: &'a [u8]) -> PyResult<frames::Frame<'a>> {
        frames::decode(data, self.max_samples).py_err(py)
    }
}

#[pymethods]
impl FrameDecoder {
    #[new]
    // A literal default (frames::MAX_SAMPLES) so the text signature, and the stub
    // checker, see 4096 rather than `...`; a test pins the two together.
    #[pyo3(signature = (max_samples = 4096))]
    fn new(max_samples: i64) -> PyResult<Self> {
        match usize::try_from(max_samples) {
            Ok(m) if (1..=frames::MAX_SAMPLES).contains(&m) => Ok(FrameDecoder { max_samples: m }),
            _ => Err(PyValueError::new_err(format!(
                "max_samples must be 1..={}, got {max_samples}",
                frames::MAX_SAMPLES
            ))),
        }
    }

    #[getter]
    fn max_samples(&self) -> usize {
        self.max_samples
    }

    /// → `(device_id, ts_ms, sample_rate_hz, n_samples, rms, peak_abs, mean)`.
    #[allow(clippy::type_complexity)]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
    ) -> PyResult<(Bound<'py, PyString>, i64, u32, usize, f64, f64, f64)> {
        let f = self.frame(py, data)?;
        let st = f.stats();
        Ok((
            PyString::new(py, f.device_id),
            f.ts_ms,
            f.sample_rate_hz,
            f.n_samples(),
            st.rms,
            st.peak_abs,
            st.mean,
        ))
    }

    /// The samples of a valid frame as floats.
    fn samples<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let f = self.frame(py, data)?;
        PyList::new(py, f.samples())
    }

    fn __repr__(&self) -> String {
        format!("FrameDecoder(max_samples={})", self.max_samples)
    }
}

fn arg_int<T: TryFrom<i64>>(v: &Bound<'_, PyAny>, path: &str, what: &str) -> Result<T, SluiceErr> {
    use crate::errors::EncodeReason;
    if !v.is_instance_of::<PyInt>() || v.is_instance_of::<PyBool>() {
        return Err(SluiceErr::encode(
            EncodeReason::WrongType,
            format!("expected int, got {}", type_name(v)),
        )
        .in_path(path));
    }
    v.extract::<i64>()
        .ok()
        .and_then(|x| T::try_from(x).ok())
        .ok_or_else(|| {
            SluiceErr::encode(EncodeReason::OutOfRange, format!("{v} does not fit {what}"))
                .in_path(path)
        })
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn frame_samples(v: &Bound<'_, PyAny>) -> Result<Vec<f32>, SluiceErr> {
    use crate::errors::EncodeReason;
    let wrong =
        |path: &str, msg: String| SluiceErr::encode(EncodeReason::WrongType, msg).in_path(path);
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = v.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = v.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(wrong(
            "samples",
            format!("expected a list or tuple of floats, got {}", type_name(v)),
        ));
    };
    if items.is_empty() || items.len() > frames::MAX_SAMPLES {
        return Err(SluiceErr::encode(
            EncodeReason::OutOfRange,
            format!(
                "{} samples, must be 1..={}",
                items.len(),
                frames::MAX_SAMPLES
            ),
        )
        .in_path("samples"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, x) in items.iter().enumerate() {
        let f = if let Ok(f) = x.cast::<PyFloat>() {
            f.value()
        } else if x.is_instance_of::<PyInt>() && !x.is_instance_of::<PyBool>() {
            x.extract::<f64>().map_err(|_| {
                SluiceErr::encode(EncodeReason::OutOfRange, format!("{x} does not fit an f32"))
                    .in_path(&format!("samples[{i}]"))
            })?
        } else {
            return Err(wrong(
                &format!("samples[{i}]"),
                format!("expected float, got {}", type_name(x)),
            ));
        };
        out.push(frames::to_f32(f, i)?);
    }
    Ok(out)
}

/// Encode a v1 sensor frame (CRC included).
#[pyfunction]
#[pyo3(signature = (device_id, ts_ms, sample_rate_hz, samples, version = 1))]
pub fn encode_frame<'py>(
    py: Python<'py>,
    device_id: &Bound<'py, PyAny>,
    ts_ms: &Bound<'py, PyAny>,
    sample_rate_hz: &Bound<'py, PyAny>,
    samples: &Bound<'py, PyAny>,
    version: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    use crate::errors::EncodeReason;
    let run = || -> Result<Vec<u8>, SluiceErr> {
        if version != i64::from(frames::VERSION) {
            return Err(SluiceErr::encode(
                EncodeReason::OutOfRange,
                format!(
                    "format version {version} is not defined (only {} is)",
                    frames::VERSION
                ),
            )
            .in_path("version"));
        }
        let id = device_id
            .cast::<PyString>()
            .map_err(|_| {
                SluiceErr::encode(
                    EncodeReason::WrongType,
                    format!("expected str, got {}", type_name(device_id)),
                )
                .in_path("device_id")
            })?
            .to_str()
            .map_err(|_| {
                SluiceErr::encode(
                    EncodeReason::WrongType,
                    "str is not encodable as UTF-8 (lone surrogate?)",
                )
                .in_path("device_id")
            })?;
        let ts: i64 = arg_int(ts_ms, "ts_ms", "an i64")?;
        let rate: u32 = arg_int(sample_rate_hz, "sample_rate_hz", "a u32")?;
        // device id and rate first, then the samples (their count is checked there).
        frames::check_encode_args(id, rate, 1)?;
        let s = frame_samples(samples)?;
        frames::encode(id, ts, rate, &s)
    };
    let out = run().py_err(py)?;
    Ok(PyBytes::new(py, &out))
}

// ------------------------------------------------------- maintenance events

/// Decodes maintenance-event JSON documents (see `events.rs`).
#[pyclass(frozen, module = "sluice._native")]
pub struct EventDecoder {
    max_bytes: usize,
    max_depth: usize,
    kinds: Vec<Py<PyString>>,
}

#[pymethods]
impl EventDecoder {
    #[new]
    #[pyo3(signature = (max_bytes = 65536, max_depth = 32))]
    fn new(py: Python<'_>, max_bytes: i64, max_depth: i64) -> PyResult<Self> {
        let max_bytes = usize::try_from(max_bytes)
            .ok()
            .filter(|&b| b >= 1)
            .ok_or_else(|| {
                PyValueError::new_err(format!("max_bytes must be >= 1, got {max_bytes}"))
            })?;
        let max_depth = usize::try_from(max_depth)
            .ok()
            .filter(|d| (1..=events::MAX_DEPTH_LIMIT).contains(d))
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "max_depth must be 1..={}, got {max_depth}",
                    events::MAX_DEPTH_LIMIT
                ))
            })?;
        let kinds = events::EventKind::ALL
            .iter()
            .map(|k| PyString::intern(py, k.as_str()).unbind())
            .collect();
        Ok(EventDecoder {
            max_bytes,
            max_depth,
            kinds,
        })
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    #[getter]
    fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// → `(event_id, device_id, ts_ms, kind, technician, notes, parts, extra)`.
    #[allow(clippy::type_complexity)]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
    ) -> PyResult<(
        Bound<'py, PyString>,
        Bound<'py, PyString>,
        i64,
        Bound<'py, PyString>,
        Option<Bound<'py, PyString>>,
        Option<Bound<'py, PyString>>,
        Bound<'py, PyList>,
        Bound<'py, PyDict>,
    )> {
        let ev = events::decode(data, self.max_bytes, self.max_depth).py_err(py)?;
        let kind_idx = events::EventKind::ALL
            .iter()
            .position(|k| *k == ev.kind)
            .unwrap_or(0);
        let parts = PyList::empty(py);
        for (p, q) in &ev.parts {
            parts.append((PyString::new(py, p), *q))?;
        }
        let extra = PyDict::new(py);
        for (k, v) in &ev.extra {
            extra.set_item(PyString::new(py, k), PyString::new(py, v))?;
        }
        Ok((
            PyString::new(py, &ev.event_id),
            PyString::new(py, &ev.device_id),
            ev.ts_ms,
            self.kinds[kind_idx].bind(py).clone(),
            ev.technician.as_deref().map(|s| PyString::new(py, s)),
            ev.notes.as_deref().map(|s| PyString::new(py, s)),
            parts,
            extra,
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "EventDecoder(max_bytes={}, max_depth={})",
            self.max_bytes, self.max_depth
        )
    }
}

// ------------------------------------------------------------ data quality

/// A great-expectations suite compiled into per-record checks (`quality.rs`).
#[pyclass(frozen, module = "sluice._native")]
pub struct QualityChecker {
    core: quality::Checker,
    /// Interned expectation names, parallel to `core.expectations`.
    names: Vec<Py<PyString>>,
    /// Interned column names (dict records are read by key).
    keys: Vec<Py<PyString>>,
    /// Per column: read by some expectation / needs `str(v)`.
    used: Vec<bool>,
    text: Vec<bool>,
    fails: Vec<AtomicU64>,
    records: AtomicU64,
    blocked: AtomicU64,
    flagged: AtomicU64,
}

/// The [`Cell`] of one Python value. Strings are borrowed, not copied.
fn quality_cell<'a>(v: &'a Bound<'_, PyAny>, text: bool) -> Cell<'a> {
    if v.is_none() {
        return Cell::Null;
    }
    if let Ok(s) = v.cast::<PyString>() {
        return match s.to_str() {
            Ok(t) => Cell::Str(t),
            Err(_) => Cell::Other(None), // lone surrogates: not representable in Rust
        };
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        return Cell::float(f.value());
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Cell::Bool(b.is_true());
    }
    // int, and int-likes with __index__ (numpy integers).
    if let Ok(i) = v.extract::<i64>() {
        return Cell::Int(i);
    }
    let t = if text {
        v.str().ok().and_then(|s| s.to_str().ok().map(str::to_owned))
    } else {
        None
    };
    Cell::Other(t)
}

impl QualityChecker {
    fn names_of<'py>(
        &self,
        py: Python<'py>,
        pick: impl Fn(&quality::Expectation) -> bool,
    ) -> Vec<Bound<'py, PyString>> {
        self.core
            .expectations
            .iter()
            .zip(&self.names)
            .filter(|(e, _)| pick(e))
            .map(|(_, n)| n.bind(py).clone())
            .collect()
    }
}

#[pymethods]
impl QualityChecker {
    #[new]
    fn new(py: Python<'_>, suite_json: &str, columns: Vec<String>) -> PyResult<Self> {
        let core = quality::Checker::compile(suite_json, &columns).py_err(py)?;
        let mut used = vec![false; columns.len()];
        let mut text = vec![false; columns.len()];
        for e in &core.expectations {
            used[e.col] = true;
            text[e.col] |= e.check.needs_text();
        }
        let names = core
            .expectations
            .iter()
            .map(|e| PyString::intern(py, &e.name).unbind())
            .collect();
        let keys = columns
            .iter()
            .map(|c| PyString::intern(py, c).unbind())
            .collect();
        let fails = core.expectations.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(QualityChecker {
            core,
            names,
            keys,
            used,
            text,
            fails,
            records: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            flagged: AtomicU64::new(0),
        })
    }

    /// `None` when every expectation passes, else `(blocking, non_blocking)`
    /// failed expectation names.
    #[allow(clippy::type_complexity)]
    fn check<'py>(
        &self,
        py: Python<'py>,
        record: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
        let n = self.keys.len();
        let mut items: Vec<Option<Bound<'py, PyAny>>> = Vec::with_capacity(n);
        if let Ok(t) = record.cast::<PyTuple>() {
            if t.len() != n {
                return Err(PyValueError::new_err(format!(
                    "record has {} values, the checker's columns are {n}",
                    t.len()
                )));
            }
            for (i, u) in self.used.iter().enumerate() {
                items.push(if *u { Some(t.get_item(i)?) } else { None });
            }
        } else if let Ok(l) = record.cast::<PyList>() {
            if l.len() != n {
                return Err(PyValueError::new_err(format!(
                    "record has {} values, the checker's columns are {n}",
                    l.len()
                )));
            }
            for (i, u) in self.used.iter().enumerate() {
                items.push(if *u { Some(l.get_item(i)?) } else { None });
            }
        } else if let Ok(d) = record.cast::<PyDict>() {
            for (k, u) in self.keys.iter().zip(&self.used) {
                items.push(if *u { d.get_item(k.bind(py))? } else { None });
            }
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "record must be a tuple, list or dict, got {}",
                type_name(record)
            )));
        }
        let cells: Vec<Cell<'_>> = items
            .iter()
            .zip(&self.text)
            .map(|(v, t)| match v {
                Some(v) => quality_cell(v, *t),
                None => Cell::Null,
            })
            .collect();
        let mut failed = Vec::new();
        self.core.failures(&cells, &mut failed);
        self.records.fetch_add(1, Relaxed);
        if failed.is_empty() {
            return Ok(None);
        }
        let blocking = PyList::empty(py);
        let other = PyList::empty(py);
        for i in failed {
            self.fails[i].fetch_add(1, Relaxed);
            let name = self.names[i].bind(py);
            if self.core.expectations[i].blocking {
                blocking.append(name)?;
            } else {
                other.append(name)?;
            }
        }
        if blocking.is_empty() {
            self.flagged.fetch_add(1, Relaxed);
        } else {
            self.blocked.fetch_add(1, Relaxed);
        }
        Ok(Some((blocking, other)))
    }

    #[getter]
    fn suite_name(&self) -> &str {
        &self.core.suite_name
    }

    #[getter]
    fn columns(&self) -> Vec<String> {
        self.core.columns.clone()
    }

    #[getter]
    fn names<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        self.names_of(py, |_| true)
    }

    #[getter]
    fn blocking<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        self.names_of(py, |e| e.blocking)
    }

    #[getter]
    fn non_blocking<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        self.names_of(py, |e| !e.blocking)
    }

    #[getter]
    fn audit_only(&self) -> Vec<String> {
        self.core.audit_only.iter().map(|a| a.name.clone()).collect()
    }

    /// `[(name, type, column, blocking)]` of the per-record expectations.
    fn describe(&self) -> Vec<(String, String, String, bool)> {
        self.core
            .expectations
            .iter()
            .map(|e| (e.name.clone(), e.kind.clone(), e.column.clone(), e.blocking))
            .collect()
    }

    /// Counters since construction: `records`, `blocked`, `flagged`.
    fn stats(&self) -> HashMap<&'static str, u64> {
        HashMap::from([
            ("records", self.records.load(Relaxed)),
            ("blocked", self.blocked.load(Relaxed)),
            ("flagged", self.flagged.load(Relaxed)),
        ])
    }

    /// Failures per expectation name since construction (suite order).
    fn failure_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (n, c) in self.names.iter().zip(&self.fails) {
            d.set_item(n.bind(py), c.load(Relaxed))?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "QualityChecker(suite={:?}, expectations={}, blocking={}, audit_only={})",
            self.core.suite_name,
            self.core.expectations.len(),
            self.core.expectations.iter().filter(|e| e.blocking).count(),
            self.core.audit_only.len()
        )
    }
}

// ------------------------------------------------------- window features

/// A Python spec item (str / int / float / bool / None / list / dict) as
/// JSON, for [`features::Spec::parse`]. `Err` is the reason, without the
/// aggregation's position (the caller adds it).
fn spec_json(v: &Bound<'_, PyAny>, depth: usize) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth > 4 {
        return Err("nested too deeply".into());
    }
    if v.is_none() {
        return Ok(J::Null);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(J::Bool(b.is_true()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return s
            .to_str()
            .map(|s| J::String(s.to_owned()))
            .map_err(|_| "a str that is not valid UTF-8".to_owned());
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        let x = f.value();
        return serde_json::Number::from_f64(x)
            .map(J::Number)
            .ok_or_else(|| format!("{x} is not a finite number"));
    }
    if let Ok(l) = v.cast::<PyList>() {
        return l.iter().map(|x| spec_json(&x, depth + 1)).collect();
    }
    if let Ok(t) = v.cast::<PyTuple>() {
        return t.iter().map(|x| spec_json(&x, depth + 1)).collect();
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut m = serde_json::Map::new();
        for (k, x) in d.iter() {
            let key = k
                .cast::<PyString>()
                .ok()
                .and_then(|s| s.to_str().ok().map(str::to_owned))
                .ok_or_else(|| format!("mapping key {} is not a str", type_name(&k)))?;
            let val = spec_json(&x, depth + 1).map_err(|e| format!("{key:?}: {e}"))?;
            m.insert(key, val);
        }
        return Ok(J::Object(m));
    }
    // int and int-likes (numpy integers), then float-likes (numpy floats).
    if let Ok(i) = v.extract::<i64>() {
        return Ok(J::Number(i.into()));
    }
    if let Ok(x) = v.extract::<f64>() {
        return serde_json::Number::from_f64(x)
            .map(J::Number)
            .ok_or_else(|| format!("{x} is not a finite number"));
    }
    Err(format!("unsupported value of type {}", type_name(v)))
}

/// A validated feature spec (`features.rs`): the aggregations of one window.
#[pyclass(frozen, module = "sluice._native")]
pub struct FeatureSpec {
    core: Arc<features::Spec>,
    names: Vec<Py<PyString>>,
}

#[pymethods]
impl FeatureSpec {
    #[new]
    fn new(py: Python<'_>, aggs: &Bound<'_, PyAny>) -> PyResult<Self> {
        let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = aggs.cast::<PyList>() {
            l.iter().collect()
        } else if let Ok(t) = aggs.cast::<PyTuple>() {
            t.iter().collect()
        } else {
            return Err(FeatureSpecError::new_err(format!(
                "a feature spec is a list of aggregations, got {}",
                type_name(aggs)
            )));
        };
        let json = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                spec_json(item, 0)
                    .map_err(|e| FeatureSpecError::new_err(format!("aggregation {i}: {e}")))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let core = features::Spec::parse(&serde_json::Value::Array(json)).py_err(py)?;
        let names = core
            .names()
            .map(|n| PyString::intern(py, n).unbind())
            .collect();
        Ok(FeatureSpec {
            core: Arc::new(core),
            names,
        })
    }

    /// Output names, in spec order.
    #[getter]
    fn names<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        self.names.iter().map(|n| n.bind(py).clone()).collect()
    }

    /// CRC-32 of the canonical spec; stored in every state blob.
    #[getter]
    fn fingerprint(&self) -> u32 {
        self.core.fingerprint
    }

    /// The spec as canonical JSON (defaults filled in, keys sorted).
    fn to_json(&self) -> &str {
        &self.core.canonical
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<FeatureSpec>()
            .is_ok_and(|o| *o.get().core == *self.core)
    }

    fn __hash__(&self) -> u64 {
        u64::from(self.core.fingerprint)
    }

    fn __repr__(&self) -> String {
        format!(
            "FeatureSpec([{}], fingerprint={:#010x})",
            self.core.summary(),
            self.core.fingerprint
        )
    }
}

/// A 1-D f64 buffer (numpy float64 array) or a sequence of numbers.
fn f64_values(py: Python<'_>, v: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f64>> {
    if let Ok(buf) = PyBuffer::<f64>::get(v) {
        if buf.dimensions() != 1 {
            return Err(PyValueError::new_err(format!(
                "{what} must be 1-dimensional, got {} dimensions",
                buf.dimensions()
            )));
        }
        return buf.to_vec(py);
    }
    if v.is_instance_of::<PyBytes>() || v.is_instance_of::<PyByteArray>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be numbers, got {}",
            type_name(v)
        )));
    }
    v.extract::<Vec<f64>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a 1-D float64 array or a sequence of numbers, got {}",
            type_name(v)
        ))
    })
}

/// A 1-D i64 buffer (numpy int64 array) or a sequence of ints.
fn i64_values(py: Python<'_>, v: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if let Ok(buf) = PyBuffer::<i64>::get(v) {
        if buf.dimensions() != 1 {
            return Err(PyValueError::new_err(format!(
                "{what} must be 1-dimensional, got {} dimensions",
                buf.dimensions()
            )));
        }
        return buf.to_vec(py);
    }
    if v.is_instance_of::<PyBytes>() || v.is_instance_of::<PyByteArray>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be ints, got {}",
            type_name(v)
        )));
    }
    v.extract::<Vec<i64>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a 1-D int64 array or a sequence of ints, got {}",
            type_name(v)
        ))
    })
}

/// The state of one key and window for a [`FeatureSpec`].
#[pyclass(module = "sluice._native")]
pub struct FeatureAccumulator {
    spec: Py<FeatureSpec>,
    core: features::Accumulator,
}

#[pymethods]
impl FeatureAccumulator {
    #[new]
    fn new(spec: Bound<'_, FeatureSpec>) -> Self {
        let core = features::Accumulator::new(spec.get().core.clone());
        FeatureAccumulator {
            spec: spec.unbind(),
            core,
        }
    }

    /// Rebuild an accumulator from `to_bytes()` output, for the same spec.
    #[staticmethod]
    fn from_bytes(spec: Bound<'_, FeatureSpec>, data: &[u8]) -> PyResult<Self> {
        let core =
            features::Accumulator::from_bytes(spec.get().core.clone(), data).py_err(spec.py())?;
        Ok(FeatureAccumulator {
            spec: spec.unbind(),
            core,
        })
    }

    #[getter]
    fn spec(&self, py: Python<'_>) -> Py<FeatureSpec> {
        self.spec.clone_ref(py)
    }

    /// Finite values aggregated.
    #[getter]
    fn count(&self) -> u64 {
        self.core.count()
    }

    /// Frames aggregated.
    #[getter]
    fn frames(&self) -> u64 {
        self.core.frames()
    }

    #[getter]
    fn skipped_values(&self) -> u64 {
        self.core.skipped_values()
    }

    #[getter]
    fn skipped_frames(&self) -> u64 {
        self.core.skipped_frames()
    }

    fn update(&mut self, py: Python<'_>, ts_ms: i64, value: f64) -> PyResult<()> {
        self.core.update(ts_ms, value).py_err(py)
    }

    fn update_many(
        &mut self,
        py: Python<'_>,
        ts_ms: &Bound<'_, PyAny>,
        values: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ts = i64_values(py, ts_ms, "ts_ms")?;
        let xs = f64_values(py, values, "values")?;
        self.core.update_many(&ts, &xs).py_err(py)
    }

    fn update_frame(
        &mut self,
        py: Python<'_>,
        samples: &Bound<'_, PyAny>,
        sample_rate_hz: f64,
    ) -> PyResult<()> {
        // numpy float32 frames are common (the wire format is f32).
        if let Ok(buf) = PyBuffer::<f32>::get(samples) {
            if buf.dimensions() == 1 {
                let v = buf.to_vec(py)?;
                return self
                    .core
                    .update_frame(v.iter().map(|&x| f64::from(x)), sample_rate_hz)
                    .map(drop)
                    .py_err(py);
            }
        }
        let v = f64_values(py, samples, "samples")?;
        self.core
            .update_frame(v.into_iter(), sample_rate_hz)
            .map(drop)
            .py_err(py)
    }

    fn update_sensor_frame(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let frame = frames::decode(data, frames::MAX_SAMPLES).py_err(py)?;
        self.core
            .update_frame(frame.samples(), f64::from(frame.sample_rate_hz))
            .map(drop)
            .py_err(py)
    }

    fn merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.is(other) {
            let copy = slf.borrow().core.clone();
            return slf.borrow_mut().core.merge(&copy).py_err(py);
        }
        let o = other.try_borrow()?;
        slf.try_borrow_mut()?.core.merge(&o.core).py_err(py)
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.core.to_bytes())
    }

    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let spec = self.spec.get();
        for (name, v) in spec.names.iter().zip(self.core.result()) {
            d.set_item(name.bind(py), v)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "FeatureAccumulator(count={}, frames={}, skipped_values={}, skipped_frames={}, outputs=[{}])",
            self.core.count(),
            self.core.frames(),
            self.core.skipped_values(),
            self.core.skipped_frames(),
            self.core.spec().summary()
        )
    }
}

/// An isolation forest exported by `sluice.model` (`model.json`), scored like
/// scikit-learn's `IsolationForest.score_samples` (`model.rs`).
#[pyclass(frozen, module = "sluice._native")]
pub struct IsolationForestModel {
    core: crate::model::IsolationForest,
}

#[pymethods]
impl IsolationForestModel {
    #[new]
    fn new(py: Python<'_>, json_text: &str) -> PyResult<Self> {
        let core = crate::model::IsolationForest::from_json(json_text).py_err(py)?;
        Ok(IsolationForestModel { core })
    }

    /// Score one feature vector (missing values as NaN); lower = more abnormal.
    fn score(&self, py: Python<'_>, features: &Bound<'_, PyAny>) -> PyResult<f64> {
        let row = f64_values(py, features, "features")?;
        self.core.score(&row).py_err(py)
    }

    /// Score the rows of a 2-D float64 array (or a sequence of sequences).
    fn score_many(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
        let n = self.core.n_features();
        let flat: Vec<f64> = if let Ok(buf) = PyBuffer::<f64>::get(rows) {
            let shape = buf.shape();
            if buf.dimensions() != 2 || shape[1] != n {
                return Err(PyValueError::new_err(format!(
                    "rows must be a 2-D array of shape (n, {n}), got shape {shape:?}"
                )));
            }
            buf.to_vec(py)?
        } else {
            if rows.is_instance_of::<PyBytes>() || rows.is_instance_of::<PyByteArray>() {
                return Err(PyTypeError::new_err(format!(
                    "rows must be numbers, got {}",
                    type_name(rows)
                )));
            }
            let nested: Vec<Vec<f64>> = rows.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "rows must be a 2-D float64 array or a sequence of sequences of numbers, got {}",
                    type_name(rows)
                ))
            })?;
            let mut flat = Vec::with_capacity(nested.len() * n);
            for (i, r) in nested.iter().enumerate() {
                if r.len() != n {
                    return Err(PyValueError::new_err(format!(
                        "row {i} has {} values, the model takes {n}",
                        r.len()
                    )));
                }
                flat.extend_from_slice(r);
            }
            flat
        };
        let core = &self.core;
        py.detach(|| core.score_many(&flat)).py_err(py)
    }

    #[getter]
    fn n_features(&self) -> usize {
        self.core.n_features()
    }

    #[getter]
    fn n_estimators(&self) -> usize {
        self.core.n_estimators()
    }

    #[getter]
    fn max_samples(&self) -> f64 {
        self.core.max_samples()
    }

    /// sklearn's `offset_`: `decision_function = score_samples - offset`.
    #[getter]
    fn offset(&self) -> f64 {
        self.core.offset()
    }

    /// The decision threshold on the score (anomaly when score < threshold), if exported.
    #[getter]
    fn threshold(&self) -> Option<f64> {
        self.core.threshold()
    }

    #[getter]
    fn feature_names(&self) -> Option<Vec<String>> {
        self.core.feature_names().map(<[String]>::to_vec)
    }

    #[getter]
    fn impute(&self) -> Vec<f64> {
        self.core.impute().to_vec()
    }

    fn __repr__(&self) -> String {
        format!(
            "IsolationForestModel(n_features={}, n_estimators={}, max_samples={})",
            self.core.n_features(),
            self.core.n_estimators(),
            self.core.max_samples()
        )
    }
}
