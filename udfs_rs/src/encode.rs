//! Avro binary encoder, generic over where the values come from ([`EncCtx`]):
//! Python objects in production, [`Value`]s in tests and for pre-encoding
//! field defaults.
//!
//! Rules (mirroring the Python API docs):
//! * records: a sequence in schema field order, or a mapping by field name
//!   (missing keys use the pre-encoded field default, else `missing-field`);
//! * unions: the first branch the value fits. Two passes: first branches of
//!   the value's own type (None→null, bool→boolean, int→int/long with range
//!   check, float→float/double, str→string/enum, bytes→bytes/fixed,
//!   dict→map/record, list/tuple→array/record), then int→float/double. If a
//!   fitting branch fails deeper down, the next fitting branch is tried
//!   (output is rolled back); if none succeeds the first failure is reported.

use std::collections::HashMap;
use std::marker::PhantomData;

use crate::errors::{EncodeReason, SluiceErr};
use crate::schema::{NamedKind, Sch, SchemaIr};
use crate::value::Value;

/// Coarse type of a source value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Bytes,
    Str,
    /// list / tuple
    Seq,
    /// dict (map, or record by field name)
    Dict,
    Other,
}

/// Callback for [`EncCtx::dict_each`]: `(key or non-str key type name, value)`.
pub type EntryFn<'f, V> = dyn FnMut(Result<&str, String>, &V) -> Result<(), SluiceErr> + 'f;

/// Access to source values for the encoder.
pub trait EncCtx {
    type V;
    fn kind(&self, v: &Self::V) -> Kind;
    /// Type name for error messages.
    fn type_name(&self, v: &Self::V) -> String;
    fn to_bool(&self, v: &Self::V) -> bool;
    /// `None` if the integer does not fit i64.
    fn to_i64(&self, v: &Self::V) -> Option<i64>;
    /// `None` if the number cannot be represented as f64.
    fn to_f64(&self, v: &Self::V) -> Option<f64>;
    fn with_bytes<R>(&self, v: &Self::V, f: impl FnOnce(&[u8]) -> R) -> Result<R, SluiceErr>;
    /// Fails (`wrong-type`) for strings that are not valid Unicode scalar sequences.
    fn with_str<R>(&self, v: &Self::V, f: impl FnOnce(&str) -> R) -> Result<R, SluiceErr>;
    fn seq_len(&self, v: &Self::V) -> usize;
    fn seq_get(&self, v: &Self::V, i: usize) -> Result<Self::V, SluiceErr>;
    fn dict_len(&self, v: &Self::V) -> usize;
    /// Call `f(key, value)` for each entry; `key` is `Err(type name)` for non-str keys.
    fn dict_each(&self, v: &Self::V, f: &mut EntryFn<'_, Self::V>) -> Result<(), SluiceErr>;
    /// Field `field_idx` (named `name`) of record `rec_id` looked up in a dict value.
    fn record_field(
        &self,
        v: &Self::V,
        rec_id: usize,
        field_idx: usize,
        name: &str,
    ) -> Result<Option<Self::V>, SluiceErr>;
}

#[inline]
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

#[inline]
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn err(reason: EncodeReason, detail: impl Into<String>) -> SluiceErr {
    SluiceErr::encode(reason, detail)
}

/// A compiled encoder for one schema.
#[derive(Debug, Clone)]
pub struct EncPlan {
    pub ir: SchemaIr,
    /// Per named id, per record field: the field default, pre-encoded.
    defaults: Vec<Vec<Option<Box<[u8]>>>>,
    /// Per named id: enum symbol → index.
    enum_index: Vec<HashMap<String, u32>>,
}

impl EncPlan {
    pub fn compile(ir: SchemaIr) -> Result<EncPlan, SluiceErr> {
        let mut plan = EncPlan {
            defaults: vec![Vec::new(); ir.named.len()],
            enum_index: vec![HashMap::new(); ir.named.len()],
            ir,
        };
        for (id, n) in plan.ir.named.iter().enumerate() {
            if let NamedKind::Enum { symbols, .. } = &n.kind {
                plan.enum_index[id] = symbols
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), i as u32))
                    .collect();
            }
        }
        // Defaults are encoded with the (enum-aware) plan itself; a default
        // can only refer to other defaults through its JSON, never to the
        // table being built, so one pass suffices.
        let mut defaults = vec![Vec::new(); plan.ir.named.len()];
        for (id, n) in plan.ir.named.iter().enumerate() {
            if let NamedKind::Record { fields } = &n.kind {
                let mut ds = Vec::with_capacity(fields.len());
                for f in fields {
                    ds.push(match &f.default {
                        None => None,
                        Some(json) => {
                            let bad = |e: String| {
                                SluiceErr::schema(format!(
                                    "record {} field '{}': invalid default: {e}",
                                    n.fullname, f.name
                                ))
                            };
                            let (v, _) = plan.ir.json_default(json, &f.schema).map_err(bad)?;
                            let mut out = Vec::new();
                            plan.enc(&ValueCtx::new(), &f.schema, &&v, &mut out)
                                .map_err(|e| bad(e.to_string()))?;
                            Some(out.into_boxed_slice())
                        }
                    });
                }
                defaults[id] = ds;
            }
        }
        plan.defaults = defaults;
        Ok(plan)
    }

    /// Encode `v` (no framing) appending to `out`.
    pub fn encode<C: EncCtx>(&self, ctx: &C, v: &C::V, out: &mut Vec<u8>) -> Result<(), SluiceErr> {
        self.enc(ctx, &self.ir.root, v, out)
    }

    /// Encode a [`Value`] (tests, tooling).
    pub fn encode_value(&self, v: &Value) -> Result<Vec<u8>, SluiceErr> {
        let mut out = Vec::new();
        self.encode(&ValueCtx::new(), &v, &mut out)?;
        Ok(out)
    }

    fn wrong<C: EncCtx>(&self, ctx: &C, v: &C::V, s: &Sch) -> SluiceErr {
        err(
            EncodeReason::WrongType,
            format!(
                "expected {}, got {}",
                self.ir.type_name(s),
                ctx.type_name(v)
            ),
        )
    }

    fn enc<C: EncCtx>(
        &self,
        ctx: &C,
        s: &Sch,
        v: &C::V,
        out: &mut Vec<u8>,
    ) -> Result<(), SluiceErr> {
        let kind = ctx.kind(v);
        match s {
            Sch::Null => {
                if kind != Kind::Null {
                    return Err(self.wrong(ctx, v, s));
                }
            }
            Sch::Boolean => {
                if kind != Kind::Bool {
                    return Err(self.wrong(ctx, v, s));
                }
                out.push(ctx.to_bool(v) as u8);
            }
            Sch::Int | Sch::Long => {
                if kind != Kind::Int {
                    return Err(self.wrong(ctx, v, s));
                }
                let x = ctx.to_i64(v);
                let x = match (s, x) {
                    (Sch::Int, Some(x)) if i32::try_from(x).is_ok() => x,
                    (Sch::Long, Some(x)) => x,
                    _ => {
                        return Err(err(
                            EncodeReason::OutOfRange,
                            format!("integer does not fit {}", self.ir.type_name(s)),
                        ))
                    }
                };
                write_long(out, x);
            }
            Sch::Float | Sch::Double => {
                if kind != Kind::Float && kind != Kind::Int {
                    return Err(self.wrong(ctx, v, s));
                }
                let x = ctx.to_f64(v).ok_or_else(|| {
                    err(
                        EncodeReason::OutOfRange,
                        format!("number does not fit {}", self.ir.type_name(s)),
                    )
                })?;
                if *s == Sch::Float {
                    let f = x as f32;
                    if f.is_infinite() && x.is_finite() {
                        return Err(err(
                            EncodeReason::OutOfRange,
                            format!("{x:e} does not fit float"),
                        ));
                    }
                    out.extend_from_slice(&f.to_le_bytes());
                } else {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            Sch::Bytes => {
                if kind != Kind::Bytes {
                    return Err(self.wrong(ctx, v, s));
                }
                ctx.with_bytes(v, |b| write_bytes(out, b))?;
            }
            Sch::String => {
                if kind != Kind::Str {
                    return Err(self.wrong(ctx, v, s));
                }
                ctx.with_str(v, |x| write_bytes(out, x.as_bytes()))?;
            }
            Sch::Array(items) => {
                if kind != Kind::Seq {
                    return Err(self.wrong(ctx, v, s));
                }
                let n = ctx.seq_len(v);
                if n > 0 {
                    write_long(out, n as i64);
                    for i in 0..n {
                        let x = ctx.seq_get(v, i)?;
                        self.enc(ctx, items, &x, out)
                            .map_err(|e| e.in_path(&format!("[{i}]")))?;
                    }
                }
                out.push(0);
            }
            Sch::Map(values) => {
                if kind != Kind::Dict {
                    return Err(self.wrong(ctx, v, s));
                }
                let n = ctx.dict_len(v);
                if n > 0 {
                    write_long(out, n as i64);
                    ctx.dict_each(v, &mut |k, x| {
                        let k = k.map_err(|t| {
                            err(
                                EncodeReason::WrongType,
                                format!("map key must be str, got {t}"),
                            )
                        })?;
                        write_bytes(out, k.as_bytes());
                        self.enc(ctx, values, x, out)
                            .map_err(|e| e.in_path(&format!("[{k}]")))
                    })?;
                }
                out.push(0);
            }
            Sch::Union(branches) => return self.enc_union(ctx, s, branches, kind, v, out),
            Sch::Named(id) => match &self.ir.get(*id).kind {
                NamedKind::Fixed { size } => {
                    if kind != Kind::Bytes {
                        return Err(self.wrong(ctx, v, s));
                    }
                    ctx.with_bytes(v, |b| {
                        if b.len() != *size {
                            return Err(err(
                                EncodeReason::WrongType,
                                format!(
                                    "{} needs exactly {size} bytes, got {}",
                                    self.ir.type_name(s),
                                    b.len()
                                ),
                            ));
                        }
                        out.extend_from_slice(b);
                        Ok(())
                    })??;
                }
                NamedKind::Enum { .. } => {
                    if kind != Kind::Str {
                        return Err(self.wrong(ctx, v, s));
                    }
                    let idx = &self.enum_index[*id];
                    let i = ctx.with_str(v, |x| idx.get(x).copied().ok_or_else(|| x.to_owned()))?;
                    match i {
                        Ok(i) => write_long(out, i as i64),
                        Err(sym) => {
                            return Err(err(
                                EncodeReason::UnknownSymbol,
                                format!("'{sym}' is not a symbol of {}", self.ir.type_name(s)),
                            ))
                        }
                    }
                }
                NamedKind::Record { fields } => match kind {
                    Kind::Seq => {
                        let n = ctx.seq_len(v);
                        if n != fields.len() {
                            return Err(err(
                                EncodeReason::WrongType,
                                format!(
                                    "{} has {} fields, got a sequence of {n}",
                                    self.ir.type_name(s),
                                    fields.len()
                                ),
                            ));
                        }
                        for (i, f) in fields.iter().enumerate() {
                            let x = ctx.seq_get(v, i)?;
                            self.enc(ctx, &f.schema, &x, out)
                                .map_err(|e| e.in_path(&f.name))?;
                        }
                    }
                    Kind::Dict => {
                        for (i, f) in fields.iter().enumerate() {
                            match ctx.record_field(v, *id, i, &f.name)? {
                                Some(x) => self
                                    .enc(ctx, &f.schema, &x, out)
                                    .map_err(|e| e.in_path(&f.name))?,
                                None => {
                                    match self.defaults[*id].get(i).and_then(|d| d.as_deref()) {
                                        Some(d) => out.extend_from_slice(d),
                                        None => {
                                            return Err(err(
                                                EncodeReason::MissingField,
                                                "field is missing and has no default",
                                            )
                                            .in_path(&f.name))
                                        }
                                    }
                                }
                            }
                        }
                    }
                    _ => return Err(self.wrong(ctx, v, s)),
                },
            },
        }
        Ok(())
    }

    /// Does `v` fit branch `s`? `exact`: only same-type branches.
    fn fits<C: EncCtx>(&self, ctx: &C, s: &Sch, kind: Kind, v: &C::V, exact: bool) -> bool {
        match s {
            Sch::Null => kind == Kind::Null,
            Sch::Boolean => kind == Kind::Bool,
            Sch::Int => {
                kind == Kind::Int && ctx.to_i64(v).is_some_and(|x| i32::try_from(x).is_ok())
            }
            Sch::Long => kind == Kind::Int,
            Sch::Float | Sch::Double => kind == Kind::Float || (!exact && kind == Kind::Int),
            Sch::Bytes => kind == Kind::Bytes,
            Sch::String => kind == Kind::Str,
            Sch::Array(_) => kind == Kind::Seq,
            Sch::Map(_) => kind == Kind::Dict,
            Sch::Union(_) => false,
            Sch::Named(id) => match &self.ir.get(*id).kind {
                NamedKind::Fixed { size } => {
                    kind == Kind::Bytes && ctx.with_bytes(v, |b| b.len() == *size).unwrap_or(false)
                }
                NamedKind::Enum { .. } => {
                    kind == Kind::Str
                        && ctx
                            .with_str(v, |x| self.enum_index[*id].contains_key(x))
                            .unwrap_or(false)
                }
                NamedKind::Record { fields } => {
                    kind == Kind::Dict || (kind == Kind::Seq && ctx.seq_len(v) == fields.len())
                }
            },
        }
    }

    fn enc_union<C: EncCtx>(
        &self,
        ctx: &C,
        s: &Sch,
        branches: &[Sch],
        kind: Kind,
        v: &C::V,
        out: &mut Vec<u8>,
    ) -> Result<(), SluiceErr> {
        let mut first_err: Option<SluiceErr> = None;
        for exact in [true, false] {
            for (i, b) in branches.iter().enumerate() {
                if !self.fits(ctx, b, kind, v, exact)
                    || (!exact && self.fits(ctx, b, kind, v, true))
                {
                    continue;
                }
                let mark = out.len();
                write_long(out, i as i64);
                match self.enc(ctx, b, v, out) {
                    Ok(()) => return Ok(()),
                    Err(e @ SluiceErr::Encode(_)) => {
                        out.truncate(mark);
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(first_err.unwrap_or_else(|| {
            // A value of the right kind that failed only a range / symbol /
            // size check reports that, not a generic mismatch.
            if kind == Kind::Int && branches.iter().any(|b| matches!(b, Sch::Int | Sch::Long)) {
                err(
                    EncodeReason::OutOfRange,
                    format!("integer does not fit {}", self.ir.type_name(s)),
                )
            } else if kind == Kind::Str && branches.iter().any(|b| self.is_enum(b)) {
                let sym = ctx.with_str(v, |x| x.to_owned()).unwrap_or_default();
                err(
                    EncodeReason::UnknownSymbol,
                    format!("'{sym}' fits no branch of {}", self.ir.type_name(s)),
                )
            } else {
                err(
                    EncodeReason::WrongType,
                    format!(
                        "value of type {} fits no branch of union {}",
                        ctx.type_name(v),
                        self.ir.type_name(s)
                    ),
                )
            }
        }))
    }

    fn is_enum(&self, s: &Sch) -> bool {
        matches!(s, Sch::Named(id) if matches!(self.ir.get(*id).kind, NamedKind::Enum { .. }))
    }
}

/// [`EncCtx`] over [`Value`]s.
pub struct ValueCtx<'a>(PhantomData<&'a Value>);

impl ValueCtx<'_> {
    pub fn new() -> Self {
        ValueCtx(PhantomData)
    }
}

impl Default for ValueCtx<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> EncCtx for ValueCtx<'a> {
    type V = &'a Value;

    fn kind(&self, v: &&'a Value) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Boolean(_) => Kind::Bool,
            Value::Long(_) => Kind::Int,
            Value::Double(_) => Kind::Float,
            Value::Bytes(_) => Kind::Bytes,
            Value::String(_) | Value::Enum(_) => Kind::Str,
            Value::Array(_) => Kind::Seq,
            Value::Map(_) | Value::Record(_) => Kind::Dict,
        }
    }
    fn type_name(&self, v: &&'a Value) -> String {
        format!("{:?}", self.kind(v)).to_lowercase()
    }
    fn to_bool(&self, v: &&'a Value) -> bool {
        matches!(v, Value::Boolean(true))
    }
    fn to_i64(&self, v: &&'a Value) -> Option<i64> {
        match v {
            Value::Long(x) => Some(*x),
            _ => None,
        }
    }
    fn to_f64(&self, v: &&'a Value) -> Option<f64> {
        match v {
            Value::Long(x) => Some(*x as f64),
            Value::Double(x) => Some(*x),
            _ => None,
        }
    }
    fn with_bytes<R>(&self, v: &&'a Value, f: impl FnOnce(&[u8]) -> R) -> Result<R, SluiceErr> {
        match v {
            Value::Bytes(b) => Ok(f(b)),
            _ => Err(err(EncodeReason::WrongType, "expected bytes")),
        }
    }
    fn with_str<R>(&self, v: &&'a Value, f: impl FnOnce(&str) -> R) -> Result<R, SluiceErr> {
        match v {
            Value::String(s) | Value::Enum(s) => Ok(f(s)),
            _ => Err(err(EncodeReason::WrongType, "expected str")),
        }
    }
    fn seq_len(&self, v: &&'a Value) -> usize {
        match v {
            Value::Array(a) => a.len(),
            _ => 0,
        }
    }
    fn seq_get(&self, v: &&'a Value, i: usize) -> Result<&'a Value, SluiceErr> {
        match v {
            Value::Array(a) => Ok(&a[i]),
            _ => Err(err(EncodeReason::WrongType, "expected a sequence")),
        }
    }
    fn dict_len(&self, v: &&'a Value) -> usize {
        match v {
            Value::Map(m) | Value::Record(m) => m.len(),
            _ => 0,
        }
    }
    fn dict_each(&self, v: &&'a Value, f: &mut EntryFn<'_, &'a Value>) -> Result<(), SluiceErr> {
        if let Value::Map(m) | Value::Record(m) = v {
            for (k, x) in m {
                f(Ok(k), &x)?;
            }
        }
        Ok(())
    }
    fn record_field(
        &self,
        v: &&'a Value,
        _: usize,
        _: usize,
        name: &str,
    ) -> Result<Option<&'a Value>, SluiceErr> {
        Ok(match v {
            Value::Map(m) | Value::Record(m) => m.iter().find(|(k, _)| k == name).map(|(_, x)| x),
            _ => None,
        })
    }
}
