//! Compile a writer→reader resolution plan (Avro 1.11 spec, "Schema Resolution").
//!
//! The plan is a tree of [`Op`]s that reads the *writer's* binary encoding and
//! directly yields values shaped like the *reader* schema. Everything that can
//! be decided from the two schemas alone is decided here, once:
//!
//! * record fields are matched by name or reader field alias; writer-only
//!   fields become compiled [`Skip`] ops; reader-only fields get their JSON
//!   default converted to a [`Value`] now (missing default ⇒ compile error);
//! * records / enums / fixed match by unqualified name, full name or reader
//!   alias (fixed also by size);
//! * promotions int→long/float/double, long→float/double, float→double,
//!   string↔bytes;
//! * enum symbols are mapped writer index → reader index (unknown symbol →
//!   reader default, else a decode-time `type-mismatch`);
//! * writer unions get one op per branch (a branch matching nothing becomes
//!   [`Op::Fail`], an error only if that branch is actually seen); a writer
//!   non-union read by a reader union picks the first reader branch of the same
//!   type, else the first one reachable by promotion;
//! * named types are referenced by index, so recursive schemas are finite plans.

use std::collections::HashMap;
use std::sync::Arc;

use crate::errors::SluiceErr;
use crate::schema::{NamedId, NamedKind, Sch, SchemaIr};
use crate::value::Value;

/// What an unknown-to-reader writer enum symbol resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum EnumTarget {
    /// Index into the reader's symbols.
    Reader(u32),
    /// Writer symbol with no reader counterpart and no reader default.
    Unknown(Box<str>),
}

/// One decode operation. Reads writer bytes, produces a reader-shaped value.
#[derive(Debug, Clone)]
pub enum Op {
    Null,
    Boolean,
    /// Writer int read as int/long.
    Int,
    /// Writer long read as long.
    Long,
    /// Writer int read as float/double.
    IntToDouble,
    /// Writer long read as float/double.
    LongToDouble,
    /// Writer float read as float/double.
    Float,
    Double,
    /// Writer bytes or string, produced as bytes.
    Bytes,
    /// Writer string or bytes, produced as str (UTF-8 checked).
    String,
    Fixed(usize),
    Enum {
        /// Reader enum (id in the reader schema IR), for symbol caches.
        reader_enum: NamedId,
        /// Indexed by writer symbol index.
        map: Box<[EnumTarget]>,
        /// Reader symbols.
        symbols: Arc<[String]>,
    },
    Array {
        item: Box<Op>,
        /// The writer item type always takes ≥1 byte (bounds block counts).
        item_nonempty: bool,
    },
    Map(Box<Op>),
    /// Index into [`Plan::records`].
    Record(usize),
    /// Writer union: one op per writer branch.
    WriterUnion(Box<[Op]>),
    /// A writer union branch no reader type matches: error when seen.
    Fail(Box<str>),
}

/// Skip a writer value without materialising it.
#[derive(Debug, Clone)]
pub enum Skip {
    /// A fixed number of bytes (null=0, boolean=1, float=4, double=8, fixed=n).
    Bytes(usize),
    /// int, long, enum.
    Varint,
    /// Length-prefixed bytes / string.
    LenPrefixed,
    Array(Box<Skip>),
    Map(Box<Skip>),
    /// Index into [`Plan::skip_records`].
    Record(usize),
    Union(Box<[Skip]>),
}

#[derive(Debug, Clone)]
pub enum Step {
    /// Decode a writer field into reader position `pos`.
    Read { pos: usize, op: Op },
    /// Skip a writer field the reader does not have.
    Skip(Skip),
}

/// The plan for one (writer record, reader record) pair.
#[derive(Debug, Clone)]
pub struct RecordPlan {
    /// Reader record id in the reader IR (for per-decoder name caches).
    pub reader_id: NamedId,
    /// Reader full name.
    pub fullname: String,
    /// Reader field names in reader order.
    pub names: Arc<[String]>,
    /// One step per writer field, in writer order.
    pub steps: Vec<Step>,
    /// Reader fields absent from the writer: `(reader position, default)`.
    pub defaults: Vec<(usize, Value)>,
    /// Reads fill reader positions 0..n in order and there are no defaults.
    pub in_order: bool,
}

/// A compiled writer→reader resolution plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub root: Op,
    pub records: Vec<RecordPlan>,
    pub skip_records: Vec<Vec<Skip>>,
}

impl Plan {
    /// Compile the plan reading `writer`-encoded data as `reader`.
    pub fn compile(writer: &SchemaIr, reader: &SchemaIr) -> Result<Plan, SluiceErr> {
        let mut c = Compiler {
            w: writer,
            r: reader,
            rec_idx: HashMap::new(),
            records: Vec::new(),
            skip_idx: HashMap::new(),
            skips: Vec::new(),
        };
        let root = c.resolve(&writer.root, &reader.root, "")?;
        let records = c
            .records
            .into_iter()
            .map(|r| r.ok_or_else(|| SluiceErr::schema("internal: unfinished record plan")))
            .collect::<Result<_, _>>()?;
        let skip_records = c
            .skips
            .into_iter()
            .map(|r| r.ok_or_else(|| SluiceErr::schema("internal: unfinished skip plan")))
            .collect::<Result<_, _>>()?;
        Ok(Plan {
            root,
            records,
            skip_records,
        })
    }
}

struct Compiler<'a> {
    w: &'a SchemaIr,
    r: &'a SchemaIr,
    rec_idx: HashMap<(NamedId, NamedId), usize>,
    records: Vec<Option<RecordPlan>>,
    skip_idx: HashMap<NamedId, usize>,
    skips: Vec<Option<Vec<Skip>>>,
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "top-level value".to_owned()
    } else {
        format!("field '{path}'")
    }
}

fn unqualified(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

impl Compiler<'_> {
    /// Reader named type accepts writer named type by name (spec 1.11: same
    /// unqualified name), by full name, or via one of the reader's aliases.
    fn names_match(&self, wid: NamedId, rid: NamedId) -> bool {
        let w = self.w.get(wid);
        let r = self.r.get(rid);
        w.name == r.name
            || w.fullname == r.fullname
            || r.aliases
                .iter()
                .any(|a| *a == w.fullname || unqualified(a) == w.name)
    }

    /// Shallow match used to pick union branches. `exact`: same type only;
    /// otherwise promotions are allowed too.
    fn matches(&self, w: &Sch, r: &Sch, exact: bool) -> bool {
        use Sch::*;
        match (w, r) {
            (Null, Null)
            | (Boolean, Boolean)
            | (Int, Int)
            | (Long, Long)
            | (Float, Float)
            | (Double, Double)
            | (Bytes, Bytes)
            | (String, String)
            | (Array(_), Array(_))
            | (Map(_), Map(_)) => true,
            (Int, Long | Float | Double) | (Long, Float | Double) | (Float, Double) => !exact,
            (String, Bytes) | (Bytes, String) => !exact,
            (Named(wid), Named(rid)) => {
                let (wn, rn) = (self.w.get(*wid), self.r.get(*rid));
                match (&wn.kind, &rn.kind) {
                    (NamedKind::Record { .. }, NamedKind::Record { .. })
                    | (NamedKind::Enum { .. }, NamedKind::Enum { .. }) => {
                        self.names_match(*wid, *rid)
                    }
                    (NamedKind::Fixed { size: ws }, NamedKind::Fixed { size: rs }) => {
                        ws == rs && self.names_match(*wid, *rid)
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// First reader union branch of the same type, else first reachable by promotion.
    fn select_branch<'r>(&self, w: &Sch, branches: &'r [Sch]) -> Option<&'r Sch> {
        branches
            .iter()
            .find(|b| self.matches(w, b, true))
            .or_else(|| branches.iter().find(|b| self.matches(w, b, false)))
    }

    fn resolve(&mut self, w: &Sch, r: &Sch, path: &str) -> Result<Op, SluiceErr> {
        match (w, r) {
            (Sch::Union(wbs), _) => {
                let mut ops = Vec::with_capacity(wbs.len());
                for (i, wb) in wbs.iter().enumerate() {
                    let target = match r {
                        Sch::Union(rbs) => self.select_branch(wb, rbs),
                        _ if self.matches(wb, r, false) => Some(r),
                        _ => None,
                    };
                    ops.push(match target {
                        Some(rt) => self.resolve(wb, rt, path)?,
                        None => Op::Fail(
                            format!(
                                "{}: writer union branch {i} ({}) matches no reader type {}",
                                at(path),
                                self.w.type_name(wb),
                                self.r.type_name(r)
                            )
                            .into(),
                        ),
                    });
                }
                Ok(Op::WriterUnion(ops.into()))
            }
            (_, Sch::Union(rbs)) => match self.select_branch(w, rbs) {
                Some(rb) => self.resolve(w, rb, path),
                None => Err(SluiceErr::schema(format!(
                    "{}: writer type {} matches no branch of reader union {} (rule: union resolution)",
                    at(path),
                    self.w.type_name(w),
                    self.r.type_name(r)
                ))),
            },
            _ => self.resolve_simple(w, r, path),
        }
    }

    fn mismatch(&self, w: &Sch, r: &Sch, path: &str, rule: &str) -> SluiceErr {
        SluiceErr::schema(format!(
            "{}: writer type {} cannot be read as reader type {} ({rule})",
            at(path),
            self.w.type_name(w),
            self.r.type_name(r)
        ))
    }

    fn resolve_simple(&mut self, w: &Sch, r: &Sch, path: &str) -> Result<Op, SluiceErr> {
        use Sch as S;
        Ok(match (w, r) {
            (S::Null, S::Null) => Op::Null,
            (S::Boolean, S::Boolean) => Op::Boolean,
            (S::Int, S::Int | S::Long) => Op::Int,
            (S::Int, S::Float | S::Double) => Op::IntToDouble,
            (S::Long, S::Long) => Op::Long,
            (S::Long, S::Float | S::Double) => Op::LongToDouble,
            (S::Float, S::Float | S::Double) => Op::Float,
            (S::Double, S::Double) => Op::Double,
            (S::Bytes | S::String, S::Bytes) => Op::Bytes,
            (S::Bytes | S::String, S::String) => Op::String,
            (S::Array(wi), S::Array(ri)) => Op::Array {
                item: Box::new(self.resolve(wi, ri, &format!("{path}[]"))?),
                item_nonempty: !self.can_be_empty(wi, &mut Vec::new()),
            },
            (S::Map(wv), S::Map(rv)) => {
                Op::Map(Box::new(self.resolve(wv, rv, &format!("{path}{{}}"))?))
            }
            (S::Named(wid), S::Named(rid)) => {
                let (wid, rid) = (*wid, *rid);
                let (wn, rn) = (self.w.get(wid), self.r.get(rid));
                match (&wn.kind, &rn.kind) {
                    (NamedKind::Record { .. }, NamedKind::Record { .. }) => {
                        if !self.names_match(wid, rid) {
                            return Err(self.mismatch(
                                w,
                                r,
                                path,
                                "rule: record names/aliases must match",
                            ));
                        }
                        Op::Record(self.record(wid, rid, path)?)
                    }
                    (
                        NamedKind::Enum { symbols: wsyms, .. },
                        NamedKind::Enum {
                            symbols: rsyms,
                            default: rdef,
                        },
                    ) => {
                        if !self.names_match(wid, rid) {
                            return Err(self.mismatch(
                                w,
                                r,
                                path,
                                "rule: enum names/aliases must match",
                            ));
                        }
                        let rdef_idx = match rdef {
                            Some(d) => {
                                Some(rsyms.iter().position(|s| s == d).ok_or_else(|| {
                                    SluiceErr::schema(format!(
                                    "{}: reader enum {} default '{d}' is not one of its symbols",
                                    at(path),
                                    rn.fullname
                                ))
                                })?)
                            }
                            None => None,
                        };
                        let map = wsyms
                            .iter()
                            .map(|ws| match rsyms.iter().position(|s| s == ws).or(rdef_idx) {
                                Some(i) => EnumTarget::Reader(i as u32),
                                None => EnumTarget::Unknown(
                                    format!(
                                        "writer enum symbol '{ws}' is not in reader enum {} and the reader has no default",
                                        rn.fullname
                                    )
                                    .into(),
                                ),
                            })
                            .collect();
                        Op::Enum {
                            reader_enum: rid,
                            map,
                            symbols: rsyms.clone().into(),
                        }
                    }
                    (NamedKind::Fixed { size: ws }, NamedKind::Fixed { size: rs }) => {
                        if ws != rs {
                            return Err(self.mismatch(
                                w,
                                r,
                                path,
                                "rule: fixed sizes must be equal",
                            ));
                        }
                        if !self.names_match(wid, rid) {
                            return Err(self.mismatch(
                                w,
                                r,
                                path,
                                "rule: fixed names/aliases must match",
                            ));
                        }
                        Op::Fixed(*ws)
                    }
                    _ => {
                        return Err(self.mismatch(
                            w,
                            r,
                            path,
                            "rule: different kinds of named types",
                        ))
                    }
                }
            }
            _ => return Err(self.mismatch(w, r, path, "rule: no promotion between these types")),
        })
    }

    fn record(&mut self, wid: NamedId, rid: NamedId, path: &str) -> Result<usize, SluiceErr> {
        if let Some(&i) = self.rec_idx.get(&(wid, rid)) {
            return Ok(i);
        }
        let idx = self.records.len();
        self.records.push(None);
        self.rec_idx.insert((wid, rid), idx);

        let (w, r) = (self.w, self.r);
        let wn = w.get(wid);
        let rn = r.get(rid);
        let wf = wn.fields();
        let rf = rn.fields();

        // writer field index -> reader position
        let mut w_to_r: Vec<Option<usize>> = vec![None; wf.len()];
        let mut r_matched = vec![false; rf.len()];
        for (ri, f) in rf.iter().enumerate() {
            let found = wf
                .iter()
                .enumerate()
                .position(|(wj, x)| w_to_r[wj].is_none() && x.name == f.name)
                .or_else(|| {
                    wf.iter()
                        .enumerate()
                        .position(|(wj, x)| w_to_r[wj].is_none() && f.aliases.contains(&x.name))
                });
            if let Some(wj) = found {
                w_to_r[wj] = Some(ri);
                r_matched[ri] = true;
            }
        }

        let mut steps = Vec::with_capacity(wf.len());
        for (wj, f) in wf.iter().enumerate() {
            match w_to_r[wj] {
                Some(ri) => {
                    let fpath = join(path, &rf[ri].name);
                    let op = self.resolve(&f.schema, &rf[ri].schema, &fpath)?;
                    steps.push(Step::Read { pos: ri, op });
                }
                None => {
                    let s = self.skip(&f.schema);
                    // Merge runs of fixed-size skips.
                    match (steps.last_mut(), &s) {
                        (Some(Step::Skip(Skip::Bytes(a))), Skip::Bytes(b)) => *a += *b,
                        _ => steps.push(Step::Skip(s)),
                    }
                }
            }
        }
        // Zero-byte skips (null fields) are no-ops.
        steps.retain(|s| !matches!(s, Step::Skip(Skip::Bytes(0))));

        let mut defaults = Vec::new();
        for (ri, f) in rf.iter().enumerate() {
            if r_matched[ri] {
                continue;
            }
            let fpath = join(path, &f.name);
            match &f.default {
                Some(json) => {
                    let (v, _) = r.json_default(json, &f.schema).map_err(|e| {
                        SluiceErr::schema(format!("field '{fpath}': invalid reader default: {e}"))
                    })?;
                    defaults.push((ri, v));
                }
                None => {
                    return Err(SluiceErr::schema(format!(
                        "field '{fpath}': reader field is missing from writer record {} and has no default (rule: reader fields absent from the writer need a default)",
                        wn.fullname
                    )))
                }
            }
        }

        let mut expect = 0;
        let mut in_order = defaults.is_empty();
        for s in &steps {
            if let Step::Read { pos, .. } = s {
                if *pos != expect {
                    in_order = false;
                }
                expect += 1;
            }
        }
        in_order &= expect == rf.len();

        self.records[idx] = Some(RecordPlan {
            reader_id: rid,
            fullname: rn.fullname.clone(),
            names: rf.iter().map(|f| f.name.clone()).collect(),
            steps,
            defaults,
            in_order,
        });
        Ok(idx)
    }

    /// Compile a skip op for a writer type.
    fn skip(&mut self, w: &Sch) -> Skip {
        match w {
            Sch::Null => Skip::Bytes(0),
            Sch::Boolean => Skip::Bytes(1),
            Sch::Int | Sch::Long => Skip::Varint,
            Sch::Float => Skip::Bytes(4),
            Sch::Double => Skip::Bytes(8),
            Sch::Bytes | Sch::String => Skip::LenPrefixed,
            Sch::Array(i) => Skip::Array(Box::new(self.skip(i))),
            Sch::Map(v) => Skip::Map(Box::new(self.skip(v))),
            Sch::Union(bs) => Skip::Union(bs.iter().map(|b| self.skip(b)).collect()),
            Sch::Named(id) => match &self.w.get(*id).kind {
                NamedKind::Enum { .. } => Skip::Varint,
                NamedKind::Fixed { size } => Skip::Bytes(*size),
                NamedKind::Record { fields } => {
                    if let Some(&i) = self.skip_idx.get(id) {
                        return Skip::Record(i);
                    }
                    let i = self.skips.len();
                    self.skips.push(None);
                    self.skip_idx.insert(*id, i);
                    let mut v: Vec<Skip> = Vec::with_capacity(fields.len());
                    for f in fields {
                        let s = self.skip(&f.schema);
                        match (v.last_mut(), &s) {
                            (Some(Skip::Bytes(a)), Skip::Bytes(b)) => *a += *b,
                            _ => v.push(s),
                        }
                    }
                    v.retain(|s| !matches!(s, Skip::Bytes(0)));
                    self.skips[i] = Some(v);
                    Skip::Record(i)
                }
            },
        }
    }

    /// Can a writer value of this type be encoded in zero bytes?
    fn can_be_empty(&self, w: &Sch, visiting: &mut Vec<NamedId>) -> bool {
        match w {
            Sch::Null => true,
            Sch::Named(id) => match &self.w.get(*id).kind {
                NamedKind::Fixed { size } => *size == 0,
                NamedKind::Enum { .. } => false,
                NamedKind::Record { fields } => {
                    if visiting.contains(id) {
                        // A record cannot contain itself without a union /
                        // array / map in between, all of which take ≥1 byte.
                        return false;
                    }
                    visiting.push(*id);
                    let e = fields
                        .iter()
                        .all(|f| self.can_be_empty(&f.schema, visiting));
                    visiting.pop();
                    e
                }
            },
            _ => false,
        }
    }
}
