//! Execute a compiled [`Plan`] over Avro binary data.
//!
//! The decoder is generic over a [`Sink`] that builds the output values: the
//! Python module uses a sink that creates Python objects directly (no
//! intermediate tree), the tests use [`ValueSink`] which builds [`Value`]s.
//! Monomorphisation makes the two paths share all parsing code at no cost.
//!
//! Error reasons: `truncated` when the input ends early (offset = start of
//! the item that could not be read), `type-mismatch` for anything malformed
//! (varint overflow, negative length/count, bad boolean byte, invalid UTF-8,
//! union/enum index out of range, unresolvable writer branch/symbol, nesting
//! deeper than [`MAX_DEPTH`]), `trailing-bytes` if input remains after the
//! top-level value.

use crate::errors::{DecodeReason, SluiceErr};
use crate::resolve::{EnumTarget, Op, Plan, RecordPlan, Skip, Step};
use crate::value::Value;

/// Maximum nesting of records / arrays / maps (guards the native stack
/// against hostile recursive data).
pub const MAX_DEPTH: usize = 256;

/// Maximum items in one array/map block whose item type can take zero bytes
/// (e.g. `array<null>`); anything larger is treated as malformed.
pub const MAX_EMPTY_ITEMS: u64 = 1 << 24;

/// A cursor over the input. Offsets are absolute in `buf`.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Zig-zag varint long.
    #[inline]
    pub fn read_long(&mut self) -> Result<i64, SluiceErr> {
        // Fast path: one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                let u = b as u64;
                return Ok(((u >> 1) as i64) ^ -((u & 1) as i64));
            }
        }
        self.read_long_slow()
    }

    #[inline(never)]
    fn read_long_slow(&mut self) -> Result<i64, SluiceErr> {
        let start = self.pos;
        let mut u: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = match self.buf.get(self.pos) {
                Some(&b) => b,
                None => {
                    return Err(SluiceErr::truncated(
                        start,
                        "input ended while reading a varint",
                    ))
                }
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(SluiceErr::mismatch(start, "varint overflows 64 bits"));
            }
            u |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    #[inline]
    pub fn read_int(&mut self) -> Result<i32, SluiceErr> {
        let start = self.pos;
        let v = self.read_long()?;
        i32::try_from(v)
            .map_err(|_| SluiceErr::mismatch(start, format!("int value {v} out of 32-bit range")))
    }

    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SluiceErr> {
        if n > self.remaining() {
            return Err(SluiceErr::truncated(
                self.pos,
                format!("need {n} bytes, {} left", self.remaining()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Length prefix (long) of bytes/string; negative → type-mismatch.
    #[inline]
    pub fn read_len(&mut self) -> Result<usize, SluiceErr> {
        let start = self.pos;
        let n = self.read_long()?;
        if n < 0 {
            return Err(SluiceErr::mismatch(start, format!("negative length {n}")));
        }
        if n as u64 > self.remaining() as u64 {
            return Err(SluiceErr::truncated(
                start,
                format!("length {n} exceeds the {} bytes left", self.remaining()),
            ));
        }
        Ok(n as usize)
    }

    #[inline]
    pub fn read_bytes(&mut self) -> Result<&'a [u8], SluiceErr> {
        let n = self.read_len()?;
        self.take(n)
    }

    #[inline]
    pub fn read_str(&mut self) -> Result<&'a str, SluiceErr> {
        let start = self.pos;
        let b = self.read_bytes()?;
        std::str::from_utf8(b)
            .map_err(|e| SluiceErr::mismatch(start, format!("invalid UTF-8 in string: {e}")))
    }

    #[inline]
    pub fn read_bool(&mut self) -> Result<bool, SluiceErr> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(SluiceErr::mismatch(
                self.pos - 1,
                format!("invalid boolean byte {b:#04x}"),
            )),
        }
    }

    #[inline]
    pub fn read_f32(&mut self) -> Result<f32, SluiceErr> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub fn read_f64(&mut self) -> Result<f64, SluiceErr> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    /// Array/map block header. Returns the item count (0 = end). For a
    /// negative count the block byte size is read and validated.
    #[inline]
    fn read_block(&mut self, nonempty: bool) -> Result<u64, SluiceErr> {
        let start = self.pos;
        let n = self.read_long()?;
        let n = if n < 0 {
            let n = n
                .checked_neg()
                .ok_or_else(|| SluiceErr::mismatch(start, "block count overflow"))?;
            let size_at = self.pos;
            let size = self.read_long()?;
            if size < 0 {
                return Err(SluiceErr::mismatch(
                    size_at,
                    format!("negative block size {size}"),
                ));
            }
            n as u64
        } else {
            n as u64
        };
        if nonempty {
            if n > self.remaining() as u64 {
                return Err(SluiceErr::truncated(
                    start,
                    format!(
                        "block of {n} items exceeds the {} bytes left",
                        self.remaining()
                    ),
                ));
            }
        } else if n > MAX_EMPTY_ITEMS {
            return Err(SluiceErr::mismatch(
                start,
                format!("block count {n} too large"),
            ));
        }
        Ok(n)
    }
}

/// Builds output values while a plan is executed.
pub trait Sink {
    type Out;
    type Map;

    fn null(&mut self) -> Result<Self::Out, SluiceErr>;
    fn boolean(&mut self, v: bool) -> Result<Self::Out, SluiceErr>;
    fn long(&mut self, v: i64) -> Result<Self::Out, SluiceErr>;
    fn double(&mut self, v: f64) -> Result<Self::Out, SluiceErr>;
    fn bytes(&mut self, v: &[u8]) -> Result<Self::Out, SluiceErr>;
    fn string(&mut self, v: &str) -> Result<Self::Out, SluiceErr>;
    /// Enum symbol `idx` of reader enum `enum_id` (`symbol` is its text).
    fn enum_symbol(
        &mut self,
        enum_id: usize,
        idx: usize,
        symbol: &str,
    ) -> Result<Self::Out, SluiceErr>;
    fn array(&mut self, items: Vec<Self::Out>) -> Result<Self::Out, SluiceErr>;
    fn map_begin(&mut self) -> Result<Self::Map, SluiceErr>;
    fn map_insert(&mut self, m: &mut Self::Map, key: &str, v: Self::Out) -> Result<(), SluiceErr>;
    fn map_end(&mut self, m: Self::Map) -> Result<Self::Out, SluiceErr>;
    /// Reader record with its fields in reader order.
    fn record(&mut self, rec: &RecordPlan, fields: Vec<Self::Out>) -> Result<Self::Out, SluiceErr>;
    /// A (fresh) copy of a compiled default value.
    fn default(&mut self, v: &Value) -> Result<Self::Out, SluiceErr>;
}

/// Decode one value of `plan` from `buf[start..]`; the whole input must be
/// consumed (else `trailing-bytes`). Offsets in errors are absolute in `buf`.
pub fn decode<S: Sink>(
    plan: &Plan,
    buf: &[u8],
    start: usize,
    sink: &mut S,
) -> Result<S::Out, SluiceErr> {
    let mut r = Reader::new(buf, start);
    let v = dec(plan, &plan.root, &mut r, sink, 0)?;
    if r.pos != buf.len() {
        return Err(SluiceErr::decode(
            DecodeReason::TrailingBytes,
            r.pos,
            format!("{} bytes left after the value", buf.len() - r.pos),
        ));
    }
    Ok(v)
}

/// Decode into a [`Value`] (tests, tooling).
pub fn decode_value(plan: &Plan, buf: &[u8]) -> Result<Value, SluiceErr> {
    decode(plan, buf, 0, &mut ValueSink)
}

#[cold]
fn too_deep(pos: usize) -> SluiceErr {
    SluiceErr::mismatch(pos, format!("nesting deeper than {MAX_DEPTH} levels"))
}

fn dec<S: Sink>(
    plan: &Plan,
    op: &Op,
    r: &mut Reader<'_>,
    sink: &mut S,
    depth: usize,
) -> Result<S::Out, SluiceErr> {
    match op {
        Op::Null => sink.null(),
        Op::Boolean => {
            let v = r.read_bool()?;
            sink.boolean(v)
        }
        Op::Int => {
            let v = r.read_int()?;
            sink.long(v as i64)
        }
        Op::Long => {
            let v = r.read_long()?;
            sink.long(v)
        }
        Op::IntToDouble => {
            let v = r.read_int()?;
            sink.double(v as f64)
        }
        Op::LongToDouble => {
            let v = r.read_long()?;
            sink.double(v as f64)
        }
        Op::Float => {
            let v = r.read_f32()?;
            sink.double(v as f64)
        }
        Op::Double => {
            let v = r.read_f64()?;
            sink.double(v)
        }
        Op::Bytes => {
            let v = r.read_bytes()?;
            sink.bytes(v)
        }
        Op::String => {
            let v = r.read_str()?;
            sink.string(v)
        }
        Op::Fixed(n) => {
            let v = r.take(*n)?;
            sink.bytes(v)
        }
        Op::Enum {
            reader_enum,
            map,
            symbols,
        } => dec_enum(*reader_enum, map, symbols, r, sink),
        Op::Array {
            item,
            item_nonempty,
        } => dec_array(plan, item, *item_nonempty, r, sink, depth),
        Op::Map(value) => dec_map(plan, value, r, sink, depth),
        Op::Record(idx) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(r.pos));
            }
            dec_record(plan, &plan.records[*idx], r, sink, depth + 1)
        }
        Op::WriterUnion(branches) => {
            let op = union_branch(branches, r)?;
            dec(plan, op, r, sink, depth)
        }
        Op::Fail(msg) => Err(SluiceErr::mismatch(r.pos, msg.to_string())),
    }
}

#[inline(never)]
fn dec_enum<S: Sink>(
    reader_enum: usize,
    map: &[EnumTarget],
    symbols: &[String],
    r: &mut Reader<'_>,
    sink: &mut S,
) -> Result<S::Out, SluiceErr> {
    let start = r.pos;
    let i = r.read_long()?;
    let target = usize::try_from(i)
        .ok()
        .and_then(|i| map.get(i))
        .ok_or_else(|| {
            SluiceErr::mismatch(
                start,
                format!(
                    "enum index {i} out of range (writer has {} symbols)",
                    map.len()
                ),
            )
        })?;
    match target {
        EnumTarget::Reader(ri) => {
            let ri = *ri as usize;
            sink.enum_symbol(reader_enum, ri, &symbols[ri])
        }
        EnumTarget::Unknown(msg) => Err(SluiceErr::mismatch(start, msg.to_string())),
    }
}

/// Read a writer union index and return the branch op (`Fail` branches error here).
#[inline]
fn union_branch<'p>(branches: &'p [Op], r: &mut Reader<'_>) -> Result<&'p Op, SluiceErr> {
    let start = r.pos;
    let i = r.read_long()?;
    match usize::try_from(i).ok().and_then(|i| branches.get(i)) {
        Some(Op::Fail(msg)) => Err(SluiceErr::mismatch(start, msg.to_string())),
        Some(op) => Ok(op),
        None => Err(SluiceErr::mismatch(
            start,
            format!(
                "union index {i} out of range (writer union has {} branches)",
                branches.len()
            ),
        )),
    }
}

#[inline(never)]
fn dec_array<S: Sink>(
    plan: &Plan,
    item: &Op,
    item_nonempty: bool,
    r: &mut Reader<'_>,
    sink: &mut S,
    depth: usize,
) -> Result<S::Out, SluiceErr> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(r.pos));
    }
    let mut items = Vec::new();
    loop {
        let n = r.read_block(item_nonempty)?;
        if n == 0 {
            break;
        }
        items.reserve(n as usize);
        for _ in 0..n {
            let v = dec(plan, item, r, sink, depth + 1)
                .map_err(|e| e.in_path(&format!("[{}]", items.len())))?;
            items.push(v);
        }
    }
    sink.array(items)
}

#[inline(never)]
fn dec_map<S: Sink>(
    plan: &Plan,
    value: &Op,
    r: &mut Reader<'_>,
    sink: &mut S,
    depth: usize,
) -> Result<S::Out, SluiceErr> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(r.pos));
    }
    let mut m = sink.map_begin()?;
    loop {
        // Each entry has at least a key length byte.
        let n = r.read_block(true)?;
        if n == 0 {
            break;
        }
        for _ in 0..n {
            let k = r.read_str()?;
            let v =
                dec(plan, value, r, sink, depth + 1).map_err(|e| e.in_path(&format!("[{k}]")))?;
            sink.map_insert(&mut m, k, v)?;
        }
    }
    sink.map_end(m)
}

fn dec_record<S: Sink>(
    plan: &Plan,
    rec: &RecordPlan,
    r: &mut Reader<'_>,
    sink: &mut S,
    depth: usize,
) -> Result<S::Out, SluiceErr> {
    if rec.in_order {
        let mut vals = Vec::with_capacity(rec.names.len());
        for step in &rec.steps {
            match step {
                Step::Read { pos, op } => {
                    let v =
                        dec(plan, op, r, sink, depth).map_err(|e| e.in_path(&rec.names[*pos]))?;
                    vals.push(v);
                }
                Step::Skip(s) => skip(plan, s, r, depth)?,
            }
        }
        return sink.record(rec, vals);
    }
    let mut slots: Vec<Option<S::Out>> = Vec::with_capacity(rec.names.len());
    slots.resize_with(rec.names.len(), || None);
    for step in &rec.steps {
        match step {
            Step::Read { pos, op } => {
                let v = dec(plan, op, r, sink, depth).map_err(|e| e.in_path(&rec.names[*pos]))?;
                slots[*pos] = Some(v);
            }
            Step::Skip(s) => skip(plan, s, r, depth)?,
        }
    }
    for (pos, d) in &rec.defaults {
        slots[*pos] = Some(sink.default(d)?);
    }
    let vals = slots
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            SluiceErr::mismatch(
                r.pos,
                format!("internal: record {} plan left a field unset", rec.fullname),
            )
        })?;
    sink.record(rec, vals)
}

/// Skip one writer value.
pub fn skip(plan: &Plan, s: &Skip, r: &mut Reader<'_>, depth: usize) -> Result<(), SluiceErr> {
    match s {
        Skip::Bytes(n) => {
            r.take(*n)?;
        }
        Skip::Varint => {
            r.read_long()?;
        }
        Skip::LenPrefixed => {
            let n = r.read_len()?;
            r.take(n)?;
        }
        Skip::Array(item) | Skip::Map(item) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(r.pos));
            }
            let is_map = matches!(s, Skip::Map(_));
            loop {
                let start = r.pos;
                let n = r.read_long()?;
                if n == 0 {
                    break;
                }
                if n < 0 {
                    // Negative count: a byte size follows; jump over the block.
                    n.checked_neg()
                        .ok_or_else(|| SluiceErr::mismatch(start, "block count overflow"))?;
                    let size_at = r.pos;
                    let size = r.read_long()?;
                    let size = usize::try_from(size).map_err(|_| {
                        SluiceErr::mismatch(size_at, format!("negative block size {size}"))
                    })?;
                    r.take(size)?;
                    continue;
                }
                let n = n as u64;
                if (is_map || !skip_can_be_empty(item)) && n > r.remaining() as u64 {
                    return Err(SluiceErr::truncated(
                        start,
                        format!(
                            "block of {n} items exceeds the {} bytes left",
                            r.remaining()
                        ),
                    ));
                }
                if n > MAX_EMPTY_ITEMS && skip_can_be_empty(item) && !is_map {
                    return Err(SluiceErr::mismatch(
                        start,
                        format!("block count {n} too large"),
                    ));
                }
                for _ in 0..n {
                    if is_map {
                        let k = r.read_len()?;
                        r.take(k)?;
                    }
                    skip(plan, item, r, depth + 1)?;
                }
            }
        }
        Skip::Record(idx) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(r.pos));
            }
            for f in &plan.skip_records[*idx] {
                skip(plan, f, r, depth + 1)?;
            }
        }
        Skip::Union(branches) => {
            let start = r.pos;
            let i = r.read_long()?;
            let b = usize::try_from(i)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| {
                    SluiceErr::mismatch(
                        start,
                        format!(
                            "union index {i} out of range (writer union has {} branches)",
                            branches.len()
                        ),
                    )
                })?;
            skip(plan, b, r, depth)?;
        }
    }
    Ok(())
}

/// Conservative: only fixed-size zero-byte skips (null, fixed(0)) and records
/// are treated as possibly empty.
fn skip_can_be_empty(s: &Skip) -> bool {
    matches!(s, Skip::Bytes(0) | Skip::Record(_))
}

/// Sink building [`Value`]s.
pub struct ValueSink;

impl Sink for ValueSink {
    type Out = Value;
    type Map = Vec<(String, Value)>;

    fn null(&mut self) -> Result<Value, SluiceErr> {
        Ok(Value::Null)
    }
    fn boolean(&mut self, v: bool) -> Result<Value, SluiceErr> {
        Ok(Value::Boolean(v))
    }
    fn long(&mut self, v: i64) -> Result<Value, SluiceErr> {
        Ok(Value::Long(v))
    }
    fn double(&mut self, v: f64) -> Result<Value, SluiceErr> {
        Ok(Value::Double(v))
    }
    fn bytes(&mut self, v: &[u8]) -> Result<Value, SluiceErr> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn string(&mut self, v: &str) -> Result<Value, SluiceErr> {
        Ok(Value::String(v.to_owned()))
    }
    fn enum_symbol(&mut self, _: usize, _: usize, symbol: &str) -> Result<Value, SluiceErr> {
        Ok(Value::Enum(symbol.to_owned()))
    }
    fn array(&mut self, items: Vec<Value>) -> Result<Value, SluiceErr> {
        Ok(Value::Array(items))
    }
    fn map_begin(&mut self) -> Result<Self::Map, SluiceErr> {
        Ok(Vec::new())
    }
    fn map_insert(&mut self, m: &mut Self::Map, key: &str, v: Value) -> Result<(), SluiceErr> {
        // Later duplicates win, like a Python dict.
        if let Some(slot) = m.iter_mut().find(|(k, _)| k == key) {
            slot.1 = v;
        } else {
            m.push((key.to_owned(), v));
        }
        Ok(())
    }
    fn map_end(&mut self, m: Self::Map) -> Result<Value, SluiceErr> {
        Ok(Value::Map(m))
    }
    fn record(&mut self, rec: &RecordPlan, fields: Vec<Value>) -> Result<Value, SluiceErr> {
        Ok(Value::Record(
            rec.names.iter().cloned().zip(fields).collect(),
        ))
    }
    fn default(&mut self, v: &Value) -> Result<Value, SluiceErr> {
        Ok(v.clone())
    }
}
