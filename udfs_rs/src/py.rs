//! The Python-facing classes and functions of `sluice._native`.
//!
//! Thread-safety: every entry point uses the `Python` token pyo3 hands to the
//! `#[pymethods]` (the module never calls `Python::attach` / `with_gil`, which
//! deadlocks in PyFlink thread mode), makes no Python callbacks, and never
//! releases the GIL while holding a lock. Classes are `frozen` and `Sync`:
//! the per-decoder writer table is an `RwLock<HashMap<u32, Arc<_>>>` that is
//! only held for a lookup / insert, never while Python objects are built.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};

use crate::decode::{self, Sink};
use crate::encode::{EncCtx, EncPlan, EntryFn, Kind};
use crate::errors::{DecodeReason, IntoPyResult, SchemaError, SluiceErr};
use crate::framing;
use crate::resolve::{Plan, RecordPlan};
use crate::schema::{NamedKind, SchemaIr};
use crate::value::Value;

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
