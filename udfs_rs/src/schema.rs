//! A small, index-based intermediate representation (IR) of an Avro schema.
//!
//! `apache-avro` is used only to *parse* schema JSON (names, namespaces,
//! aliases, defaults, logical types). Its `Schema` tree is lowered once into
//! [`SchemaIr`]: logical types are replaced by their underlying Avro type,
//! named types (record / enum / fixed) live in one table and are referenced by
//! index, so recursion (`Schema::Ref`) is just an index and the resolver /
//! encoder never have to look names up on the hot path.

use std::collections::HashMap;

use apache_avro::schema::{InnerDecimalSchema, Name, UuidSchema};
use apache_avro::Schema;
use serde_json::Value as Json;

use crate::errors::SluiceErr;
use crate::value::Value;

/// Index of a named type inside [`SchemaIr::named`].
pub type NamedId = usize;

/// A schema node with logical types erased.
#[derive(Debug, Clone, PartialEq)]
pub enum Sch {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(Box<Sch>),
    Map(Box<Sch>),
    Union(Vec<Sch>),
    /// A record, enum or fixed (see [`Named::kind`]).
    Named(NamedId),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub aliases: Vec<String>,
    pub default: Option<Json>,
    pub schema: Sch,
}

#[derive(Debug, Clone)]
pub enum NamedKind {
    Record {
        fields: Vec<Field>,
    },
    Enum {
        symbols: Vec<String>,
        default: Option<String>,
    },
    Fixed {
        size: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Named {
    /// Fully qualified name (`namespace.name`).
    pub fullname: String,
    /// Unqualified name.
    pub name: String,
    /// Aliases, fully qualified.
    pub aliases: Vec<String>,
    pub kind: NamedKind,
}

impl Named {
    pub fn kind_str(&self) -> &'static str {
        match self.kind {
            NamedKind::Record { .. } => "record",
            NamedKind::Enum { .. } => "enum",
            NamedKind::Fixed { .. } => "fixed",
        }
    }

    /// Record fields (empty for enum / fixed).
    pub fn fields(&self) -> &[Field] {
        match &self.kind {
            NamedKind::Record { fields } => fields,
            _ => &[],
        }
    }
}

/// A parsed schema lowered to the IR.
#[derive(Debug, Clone)]
pub struct SchemaIr {
    pub root: Sch,
    pub named: Vec<Named>,
    /// Parsing Canonical Form of the source schema (used to make
    /// `add_writer_schema` idempotent).
    pub canonical: String,
}

impl SchemaIr {
    /// Parse Avro schema JSON.
    pub fn parse(json: &str) -> Result<Self, SluiceErr> {
        let schema = Schema::parse_str(json)
            .map_err(|e| SluiceErr::schema(format!("cannot parse Avro schema: {e}")))?;
        Self::from_schema(&schema)
    }

    pub fn from_schema(schema: &Schema) -> Result<Self, SluiceErr> {
        let mut b = Builder::default();
        b.collect(schema);
        let root = b.lower(schema)?;
        // Every named slot must have been filled by `lower` (definitions are
        // always reachable from the root).
        let named = b
            .named
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                n.ok_or_else(|| SluiceErr::schema(format!("internal: named type #{i} not lowered")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SchemaIr {
            root,
            named,
            canonical: schema.canonical_form(),
        })
    }

    pub fn get(&self, id: NamedId) -> &Named {
        &self.named[id]
    }

    /// Human readable type name, for error messages.
    pub fn type_name(&self, s: &Sch) -> String {
        match s {
            Sch::Null => "null".into(),
            Sch::Boolean => "boolean".into(),
            Sch::Int => "int".into(),
            Sch::Long => "long".into(),
            Sch::Float => "float".into(),
            Sch::Double => "double".into(),
            Sch::Bytes => "bytes".into(),
            Sch::String => "string".into(),
            Sch::Array(i) => format!("array<{}>", self.type_name(i)),
            Sch::Map(v) => format!("map<{}>", self.type_name(v)),
            Sch::Union(bs) => {
                let parts: Vec<String> = bs.iter().map(|b| self.type_name(b)).collect();
                format!("[{}]", parts.join(", "))
            }
            Sch::Named(id) => {
                let n = self.get(*id);
                format!("{} {}", n.kind_str(), n.fullname)
            }
        }
    }

    /// Top-level record field names (empty if the root is not a record).
    pub fn root_field_names(&self) -> Vec<String> {
        match &self.root {
            Sch::Named(id) => self
                .get(*id)
                .fields()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Convert a JSON default value to a [`Value`] following `schema`.
    ///
    /// Unions use the first branch (Avro spec); as a leniency for schemas
    /// accepted by other tools, the remaining branches are tried if the first
    /// does not fit. Returns the chosen union branch index alongside for the
    /// top level (`None` if `schema` is not a union).
    pub fn json_default(
        &self,
        json: &Json,
        schema: &Sch,
    ) -> Result<(Value, Option<usize>), String> {
        match schema {
            Sch::Union(bs) => {
                let mut first_err = None;
                for (i, b) in bs.iter().enumerate() {
                    match self.json_to_value(json, b) {
                        Ok(v) => return Ok((v, Some(i))),
                        Err(e) => {
                            if first_err.is_none() {
                                first_err = Some(e)
                            }
                        }
                    }
                }
                Err(first_err.unwrap_or_else(|| "empty union".into()))
            }
            _ => Ok((self.json_to_value(json, schema)?, None)),
        }
    }

    /// Convert JSON (as used for field defaults) to a value of `schema`.
    pub fn json_to_value(&self, json: &Json, schema: &Sch) -> Result<Value, String> {
        let bad = || format!("default {json} is not a valid {}", self.type_name(schema));
        Ok(match schema {
            Sch::Null => match json {
                Json::Null => Value::Null,
                _ => return Err(bad()),
            },
            Sch::Boolean => Value::Boolean(json.as_bool().ok_or_else(bad)?),
            Sch::Int => {
                let v = json_integer(json).ok_or_else(bad)?;
                if i32::try_from(v).is_err() {
                    return Err(bad());
                }
                Value::Long(v)
            }
            Sch::Long => Value::Long(json_integer(json).ok_or_else(bad)?),
            Sch::Float | Sch::Double => Value::Double(json.as_f64().ok_or_else(bad)?),
            Sch::Bytes => Value::Bytes(json_bytes(json).ok_or_else(bad)?),
            Sch::String => Value::String(json.as_str().ok_or_else(bad)?.to_owned()),
            Sch::Array(items) => {
                let arr = json.as_array().ok_or_else(bad)?;
                Value::Array(
                    arr.iter()
                        .map(|j| self.json_to_value(j, items))
                        .collect::<Result<_, _>>()?,
                )
            }
            Sch::Map(values) => {
                let obj = json.as_object().ok_or_else(bad)?;
                Value::Map(
                    obj.iter()
                        .map(|(k, j)| Ok((k.clone(), self.json_to_value(j, values)?)))
                        .collect::<Result<_, String>>()?,
                )
            }
            Sch::Union(_) => self.json_default(json, schema)?.0,
            Sch::Named(id) => {
                let named = self.get(*id);
                match &named.kind {
                    NamedKind::Fixed { size } => {
                        let b = json_bytes(json).ok_or_else(bad)?;
                        if b.len() != *size {
                            return Err(bad());
                        }
                        Value::Bytes(b)
                    }
                    NamedKind::Enum { symbols, .. } => {
                        let s = json.as_str().ok_or_else(bad)?;
                        if !symbols.iter().any(|x| x == s) {
                            return Err(bad());
                        }
                        Value::Enum(s.to_owned())
                    }
                    NamedKind::Record { fields } => {
                        let obj = json.as_object().ok_or_else(bad)?;
                        let mut out = Vec::with_capacity(fields.len());
                        for f in fields {
                            let v = match (obj.get(&f.name), &f.default) {
                                (Some(j), _) => self.json_to_value(j, &f.schema)?,
                                (None, Some(d)) => self.json_default(d, &f.schema)?.0,
                                (None, None) => {
                                    return Err(format!(
                                        "default {json} for record {} lacks field '{}'",
                                        named.fullname, f.name
                                    ))
                                }
                            };
                            out.push((f.name.clone(), v));
                        }
                        Value::Record(out)
                    }
                }
            }
        })
    }
}

fn json_integer(j: &Json) -> Option<i64> {
    if let Some(v) = j.as_i64() {
        return Some(v);
    }
    // Accept integral floats such as `1.0`.
    let f = j.as_f64()?;
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        Some(f as i64)
    } else {
        None
    }
}

/// Avro JSON encoding of bytes/fixed: a string whose code points 0-255 are the bytes.
fn json_bytes(j: &Json) -> Option<Vec<u8>> {
    j.as_str()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

#[derive(Default)]
struct Builder {
    ids: HashMap<String, NamedId>,
    named: Vec<Option<Named>>,
}

fn fullname(n: &Name) -> String {
    n.fullname(None)
}

impl Builder {
    /// First pass: give every named definition an id so that references can be
    /// lowered regardless of traversal order.
    fn collect(&mut self, s: &Schema) {
        match s {
            Schema::Record(r) if self.define(&r.name) => {
                for f in &r.fields {
                    self.collect(&f.schema);
                }
            }
            Schema::Enum(e) => {
                self.define(&e.name);
            }
            Schema::Fixed(f) | Schema::Duration(f) => {
                self.define(&f.name);
            }
            Schema::Decimal(d) => {
                if let InnerDecimalSchema::Fixed(f) = &d.inner {
                    self.define(&f.name);
                }
            }
            Schema::Uuid(UuidSchema::Fixed(f)) => {
                self.define(&f.name);
            }
            Schema::Array(a) => self.collect(&a.items),
            Schema::Map(m) => self.collect(&m.types),
            Schema::Union(u) => {
                for b in u.variants() {
                    self.collect(b);
                }
            }
            _ => {}
        }
    }

    fn define(&mut self, name: &Name) -> bool {
        let full = fullname(name);
        if self.ids.contains_key(&full) {
            return false;
        }
        self.ids.insert(full, self.named.len());
        self.named.push(None);
        true
    }

    fn id_of(&self, name: &Name) -> Result<NamedId, SluiceErr> {
        let full = fullname(name);
        self.ids
            .get(&full)
            .copied()
            .ok_or_else(|| SluiceErr::schema(format!("unknown named type '{full}'")))
    }

    fn put(&mut self, id: NamedId, named: Named) {
        if self.named[id].is_none() {
            self.named[id] = Some(named);
        }
    }

    fn lower_fixed(&mut self, f: &apache_avro::schema::FixedSchema) -> Result<Sch, SluiceErr> {
        let id = self.id_of(&f.name)?;
        self.put(
            id,
            Named {
                fullname: fullname(&f.name),
                name: f.name.name().to_owned(),
                aliases: aliases(&f.aliases),
                kind: NamedKind::Fixed { size: f.size },
            },
        );
        Ok(Sch::Named(id))
    }

    fn lower(&mut self, s: &Schema) -> Result<Sch, SluiceErr> {
        Ok(match s {
            Schema::Null => Sch::Null,
            Schema::Boolean => Sch::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Sch::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Sch::Long,
            Schema::Float => Sch::Float,
            Schema::Double => Sch::Double,
            Schema::Bytes | Schema::BigDecimal => Sch::Bytes,
            Schema::String => Sch::String,
            Schema::Uuid(u) => match u {
                UuidSchema::String => Sch::String,
                UuidSchema::Bytes => Sch::Bytes,
                UuidSchema::Fixed(f) => self.lower_fixed(f)?,
            },
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Sch::Bytes,
                InnerDecimalSchema::Fixed(f) => self.lower_fixed(f)?,
            },
            Schema::Fixed(f) | Schema::Duration(f) => self.lower_fixed(f)?,
            Schema::Array(a) => Sch::Array(Box::new(self.lower(&a.items)?)),
            Schema::Map(m) => Sch::Map(Box::new(self.lower(&m.types)?)),
            Schema::Union(u) => Sch::Union(
                u.variants()
                    .iter()
                    .map(|b| self.lower(b))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Enum(e) => {
                let id = self.id_of(&e.name)?;
                self.put(
                    id,
                    Named {
                        fullname: fullname(&e.name),
                        name: e.name.name().to_owned(),
                        aliases: aliases(&e.aliases),
                        kind: NamedKind::Enum {
                            symbols: e.symbols.clone(),
                            default: e.default.clone(),
                        },
                    },
                );
                Sch::Named(id)
            }
            Schema::Record(r) => {
                let id = self.id_of(&r.name)?;
                if self.named[id].is_none() {
                    // Reserve the slot first so recursive references resolve.
                    self.named[id] = Some(Named {
                        fullname: fullname(&r.name),
                        name: r.name.name().to_owned(),
                        aliases: aliases(&r.aliases),
                        kind: NamedKind::Record { fields: Vec::new() },
                    });
                    let mut fields = Vec::with_capacity(r.fields.len());
                    for f in &r.fields {
                        fields.push(Field {
                            name: f.name.clone(),
                            aliases: f.aliases.clone(),
                            default: f.default.clone(),
                            schema: self.lower(&f.schema)?,
                        });
                    }
                    if let Some(n) = self.named[id].as_mut() {
                        n.kind = NamedKind::Record { fields };
                    }
                }
                Sch::Named(id)
            }
            Schema::Ref { name } => Sch::Named(self.id_of(name)?),
        })
    }
}

fn aliases(a: &Option<Vec<apache_avro::schema::Alias>>) -> Vec<String> {
    a.as_ref()
        .map(|v| v.iter().map(|x| x.fullname(None)).collect())
        .unwrap_or_default()
}
