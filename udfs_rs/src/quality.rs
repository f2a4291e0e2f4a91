//! Per-record data-quality checks compiled from a great-expectations (GE 1.x)
//! `ExpectationSuite` JSON document (`schemas/expectations/*.json`).
//!
//! The semantics are those of GE's *pandas* execution engine evaluated on a
//! column of `object` dtype (what the audit path in `sluice/quality.py` hands
//! to GE), applied to one row at a time:
//!
//! * null = Python `None` or a float NaN (`pandas.isnull`). Every expectation
//!   except `..._to_not_be_null` / `..._to_be_null` ignores null values (GE
//!   filters them out before the condition runs), so a null never fails them.
//! * `mostly` only changes GE's batch verdict; per row an unexpected value is
//!   always a failure.
//! * between: Python comparison (`min <= v <= max`, `strict_*` make it `<`).
//!   `bool` compares as 0/1, ints and floats compare exactly, `±inf` are
//!   ordinary values; bounds are numbers (GE 1.x rejects string bounds). A
//!   value that Python cannot compare with the bounds, e.g. a str (GE raises
//!   `TypeError` for the whole column), fails here.
//! * in set: `pandas.Series.isin` on object dtype = Python `==` / `hash`:
//!   `True == 1 == 1.0`, `-0.0 == 0`, `"1" != 1`.
//! * regex: `re.search(regex, str(v))` (GE: `column.astype(str).str.contains`)
//!   — containment, not a full match, and applied to `str(v)` for non-strings.
//!   Python's `re` syntax is translated ([`translate_py_regex`]) to an exactly
//!   equivalent `regex`-crate pattern, or the suite is rejected.
//! * lengths: `len(str(v))` in code points.
//!
//! [`Checker::compile`] does all parsing/validation once; [`Checker::check`]
//! only compares.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt::Write as _;

use regex::Regex;
use serde_json::{Map, Value as Json};

use crate::errors::SluiceErr;

/// One column value of a record, as far as the checks care.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// `None` or a float NaN.
    Null,
    Bool(bool),
    Int(i64),
    /// Never NaN (NaN is [`Cell::Null`]).
    Float(f64),
    Str(&'a str),
    /// Anything else (bytes, ints outside i64, lists, ...). `text` is Python's
    /// `str(v)` when a regex/length expectation needs it (None: not computed
    /// or not representable, e.g. a str with lone surrogates).
    Other(Option<String>),
}

impl Cell<'_> {
    /// A float, NaN mapped to null like pandas does.
    pub fn float(x: f64) -> Cell<'static> {
        if x.is_nan() {
            Cell::Null
        } else {
            Cell::Float(x)
        }
    }

    fn num(&self) -> Option<Num> {
        match *self {
            Cell::Bool(b) => Some(Num::I(i64::from(b))),
            Cell::Int(i) => Some(Num::I(i)),
            Cell::Float(f) => Some(Num::F(f)),
            _ => None,
        }
    }

    /// Python's `str(v)`; `None` when unknown.
    fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> Option<R> {
        match self {
            Cell::Null => None,
            Cell::Str(s) => Some(f(s)),
            Cell::Bool(true) => Some(f("True")),
            Cell::Bool(false) => Some(f("False")),
            Cell::Int(i) => Some(f(&i.to_string())),
            Cell::Float(x) => Some(f(&py_float_repr(*x))),
            Cell::Other(t) => t.as_deref().map(f),
        }
    }
}

/// Python's `repr(float)` / `str(float)` (shortest round-trip digits, exponent
/// form when the decimal exponent is < -4 or >= 16, `.0` on integral values).
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "0e0".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let d = decpt as usize;
        if d >= digits.len() {
            out.push_str(&digits);
            for _ in digits.len()..d {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..d]);
            out.push('.');
            out.push_str(&digits[d..]);
        }
    }
    out
}

/// A number as Python holds it (int or float); compared exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    I(i64),
    F(f64),
}

/// Exact `i64` vs `f64` comparison (Python semantics); `None` for NaN.
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // 2^63 as f64 is exact.
    const TWO63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO63 {
        return Some(Ordering::Less);
    }
    if f < -TWO63 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    let ti = t as i64; // exact: |t| < 2^63
    match i.cmp(&ti) {
        Ordering::Equal => {
            let frac = f - t;
            Some(if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        o => Some(o),
    }
}

fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        (Num::F(x), Num::F(y)) => x.partial_cmp(&y),
        (Num::I(x), Num::F(y)) => cmp_int_float(x, y),
        (Num::F(x), Num::I(y)) => cmp_int_float(y, x).map(Ordering::reverse),
    }
}

/// A `min_value` / `max_value` of `expect_column_values_to_be_between`.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Num(Num),
}

impl Bound {
    /// `value <=> bound`, `None` when Python could not compare them.
    fn cmp_cell(&self, c: &Cell<'_>) -> Option<Ordering> {
        match self {
            Bound::Num(b) => cmp_num(c.num()?, *b),
        }
    }
}

/// The `value_set` of the set expectations, with Python equality.
#[derive(Debug, Clone, Default)]
pub struct ValueSet {
    strs: HashSet<String>,
    /// Ints, bools (as 0/1) and integral floats that fit an i64.
    ints: HashSet<i64>,
    /// Every other float (non-integral, huge, ±inf).
    floats: Vec<f64>,
}

impl ValueSet {
    fn insert_num(&mut self, n: Num) {
        match n {
            Num::I(i) => {
                self.ints.insert(i);
            }
            Num::F(f) => match float_as_int(f) {
                Some(i) => {
                    self.ints.insert(i);
                }
                None => self.floats.push(f),
            },
        }
    }

    pub fn contains(&self, c: &Cell<'_>) -> bool {
        match c {
            Cell::Str(s) => self.strs.contains(*s),
            Cell::Null | Cell::Other(_) => false,
            c => match c.num() {
                Some(Num::I(i)) => self.ints.contains(&i),
                Some(Num::F(f)) => match float_as_int(f) {
                    Some(i) => self.ints.contains(&i),
                    None => self.floats.iter().any(|x| *x == f),
                },
                None => false,
            },
        }
    }
}

/// `Some(i)` when `f` is integral and exactly representable as an i64.
fn float_as_int(f: f64) -> Option<i64> {
    const TWO63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_finite() && f.trunc() == f && (-TWO63..TWO63).contains(&f) {
        Some(f as i64)
    } else {
        None
    }
}

#[derive(Debug, Clone)]
pub enum Check {
    NotNull,
    Null,
    Between {
        min: Option<Bound>,
        max: Option<Bound>,
        strict_min: bool,
        strict_max: bool,
    },
    InSet(ValueSet),
    NotInSet(ValueSet),
    MatchRegex(Regex),
    NotMatchRegex(Regex),
    LengthBetween {
        min: Option<f64>,
        max: Option<f64>,
        strict_min: bool,
        strict_max: bool,
    },
    LengthEqual(f64),
}

impl Check {
    /// Does this check read `str(v)` (regex / length)?
    pub fn needs_text(&self) -> bool {
        matches!(
            self,
            Check::MatchRegex(_)
                | Check::NotMatchRegex(_)
                | Check::LengthBetween { .. }
                | Check::LengthEqual(_)
        )
    }

    /// `true` = the value is expected (passes).
    #[inline]
    pub fn passes(&self, c: &Cell<'_>) -> bool {
        match self {
            Check::NotNull => !matches!(c, Cell::Null),
            Check::Null => matches!(c, Cell::Null),
            _ if matches!(c, Cell::Null) => true,
            Check::Between {
                min,
                max,
                strict_min,
                strict_max,
            } => {
                let lo = match min {
                    None => true,
                    Some(b) => match b.cmp_cell(c) {
                        Some(Ordering::Greater) => true,
                        Some(Ordering::Equal) => !strict_min,
                        _ => false,
                    },
                };
                lo && match max {
                    None => true,
                    Some(b) => match b.cmp_cell(c) {
                        Some(Ordering::Less) => true,
                        Some(Ordering::Equal) => !strict_max,
                        _ => false,
                    },
                }
            }
            Check::InSet(s) => s.contains(c),
            Check::NotInSet(s) => !s.contains(c),
            Check::MatchRegex(r) => c.with_text(|t| r.is_match(t)).unwrap_or(false),
            Check::NotMatchRegex(r) => c.with_text(|t| !r.is_match(t)).unwrap_or(false),
            Check::LengthBetween {
                min,
                max,
                strict_min,
                strict_max,
            } => c
                .with_text(|t| {
                    let n = t.chars().count() as f64;
                    let lo = min.is_none_or(|m| if *strict_min { n > m } else { n >= m });
                    lo && max.is_none_or(|m| if *strict_max { n < m } else { n <= m })
                })
                .unwrap_or(false),
            Check::LengthEqual(v) => c
                .with_text(|t| t.chars().count() as f64 == *v)
                .unwrap_or(false),
        }
    }
}

/// One compiled per-record expectation.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// Stable name: `meta.name`, else `<type>(<column>)`.
    pub name: String,
    pub kind: String,
    pub column: String,
    /// Index of the column in the checker's column list.
    pub col: usize,
    pub blocking: bool,
    pub check: Check,
}

/// An expectation of the suite that is not per record (table/aggregate level):
/// only the audit path (great-expectations itself) evaluates it.
#[derive(Debug, Clone)]
pub struct AuditOnly {
    pub name: String,
    pub kind: String,
}

/// Expectation types evaluated per record by [`Checker`].
pub const ROW_TYPES: [&str; 9] = [
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_value_lengths_to_be_between",
    "expect_column_value_lengths_to_equal",
];

/// Batch-level expectation types a suite may contain for the audit path only
/// (they have no per-record verdict); they cannot be blocking.
pub const AUDIT_ONLY_TYPES: [&str; 12] = [
    "expect_column_values_to_be_unique",
    "expect_column_mean_to_be_between",
    "expect_column_median_to_be_between",
    "expect_column_min_to_be_between",
    "expect_column_max_to_be_between",
    "expect_column_stdev_to_be_between",
    "expect_column_sum_to_be_between",
    "expect_column_proportion_of_unique_values_to_be_between",
    "expect_column_unique_value_count_to_be_between",
    "expect_column_to_exist",
    "expect_table_row_count_to_be_between",
    "expect_table_columns_to_match_set",
];

/// Keyword arguments every column-map expectation accepts and that do not
/// change a per-record verdict.
const COMMON_KWARGS: [&str; 5] = [
    "column",
    "mostly",
    "result_format",
    "catch_exceptions",
    "include_config",
];

/// A compiled suite.
#[derive(Debug, Clone)]
pub struct Checker {
    pub suite_name: String,
    pub columns: Vec<String>,
    pub expectations: Vec<Expectation>,
    pub audit_only: Vec<AuditOnly>,
}

fn err(msg: impl Into<String>) -> SluiceErr {
    SluiceErr::QualitySuite(msg.into())
}

fn num_of(v: &Json) -> Option<Num> {
    match v {
        Json::Number(n) => match n.as_i64() {
            Some(i) => Some(Num::I(i)),
            None => n.as_f64().map(Num::F),
        },
        _ => None,
    }
}

fn opt_bool(kw: &Map<String, Json>, key: &str, what: &dyn Fn() -> String) -> Result<bool, SluiceErr> {
    match kw.get(key) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(v) => Err(err(format!("{}: {key} must be true or false, got {v}", what()))),
    }
}

fn opt_len_bound(
    kw: &Map<String, Json>,
    key: &str,
    what: &dyn Fn() -> String,
) -> Result<Option<f64>, SluiceErr> {
    match kw.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => match num_of(v) {
            Some(Num::I(i)) => Ok(Some(i as f64)),
            Some(Num::F(f)) if f.trunc() == f => Ok(Some(f)),
            _ => Err(err(format!(
                "{}: {key} must be an integer, got {v}",
                what()
            ))),
        },
    }
}

fn value_bound(
    kw: &Map<String, Json>,
    key: &str,
    what: &dyn Fn() -> String,
) -> Result<Option<Bound>, SluiceErr> {
    match kw.get(key) {
        None | Some(Json::Null) => Ok(None),
        // great-expectations 1.x validates the bounds as float | date | datetime:
        // a string bound is rejected by GE itself, so it is rejected here too.
        Some(v @ Json::Number(_)) => Ok(num_of(v).map(Bound::Num)),
        Some(Json::Object(o)) if o.contains_key("$PARAMETER") => Err(err(format!(
            "{}: {key} is a suite parameter ($PARAMETER); the per-record checks need literal values",
            what()
        ))),
        Some(v) => Err(err(format!(
            "{}: {key} must be a number (great-expectations 1.x rejects other bounds), got {v}",
            what()
        ))),
    }
}

fn value_set(kw: &Map<String, Json>, what: &dyn Fn() -> String) -> Result<ValueSet, SluiceErr> {
    let items = match kw.get("value_set") {
        Some(Json::Array(a)) => a,
        Some(Json::Object(o)) if o.contains_key("$PARAMETER") => {
            return Err(err(format!(
                "{}: value_set is a suite parameter ($PARAMETER); the per-record checks need literal values",
                what()
            )))
        }
        Some(v) => {
            return Err(err(format!(
                "{}: value_set must be a list, got {v}",
                what()
            )))
        }
        None => return Err(err(format!("{}: value_set is required", what()))),
    };
    let mut set = ValueSet::default();
    for v in items {
        match v {
            Json::String(s) => {
                set.strs.insert(s.clone());
            }
            Json::Bool(b) => set.insert_num(Num::I(i64::from(*b))),
            Json::Number(_) => {
                if let Some(n) = num_of(v) {
                    set.insert_num(n)
                }
            }
            // Nulls are never evaluated by the set expectations.
            Json::Null => {}
            other => {
                return Err(err(format!(
                    "{}: value_set items must be strings, numbers, booleans or null, got {other}",
                    what()
                )))
            }
        }
    }
    Ok(set)
}

impl Checker {
    /// Compile `suite_json` (a GE 1.x `ExpectationSuite` document) against the
    /// record layout `columns`.
    pub fn compile(suite_json: &str, columns: &[String]) -> Result<Checker, SluiceErr> {
        let doc: Json = serde_json::from_str(suite_json)
            .map_err(|e| err(format!("suite is not valid JSON: {e}")))?;
        let Json::Object(doc) = doc else {
            return Err(err("suite must be a JSON object"));
        };
        let suite_name = match doc.get("name") {
            Some(Json::String(s)) if !s.is_empty() => s.clone(),
            _ if doc.contains_key("expectation_suite_name") => {
                return Err(err(
                    "suite uses the great-expectations 0.x format (expectation_suite_name); \
                     write GE 1.x: {\"name\": ..., \"expectations\": [{\"type\": ..., \"kwargs\": ...}]}",
                ))
            }
            _ => return Err(err("suite needs a non-empty string 'name'")),
        };
        let Some(Json::Array(exps)) = doc.get("expectations") else {
            return Err(err(format!(
                "suite '{suite_name}': 'expectations' must be a list"
            )));
        };
        let mut seen_cols = HashSet::new();
        for c in columns {
            if !seen_cols.insert(c.as_str()) {
                return Err(err(format!("column '{c}' is listed twice")));
            }
        }
        let mut out = Checker {
            suite_name: suite_name.clone(),
            columns: columns.to_vec(),
            expectations: Vec::new(),
            audit_only: Vec::new(),
        };
        let mut names = HashSet::new();
        for (i, e) in exps.iter().enumerate() {
            let Json::Object(e) = e else {
                return Err(err(format!(
                    "suite '{suite_name}': expectation #{i} is not an object"
                )));
            };
            let kind = match e.get("type") {
                Some(Json::String(t)) => t.clone(),
                _ if e.contains_key("expectation_type") => {
                    return Err(err(format!(
                        "suite '{suite_name}': expectation #{i} uses the GE 0.x key 'expectation_type'; use 'type'"
                    )))
                }
                _ => {
                    return Err(err(format!(
                        "suite '{suite_name}': expectation #{i} has no string 'type'"
                    )))
                }
            };
            let empty = Map::new();
            let kw = match e.get("kwargs") {
                Some(Json::Object(k)) => k,
                None => &empty,
                Some(_) => {
                    return Err(err(format!(
                        "suite '{suite_name}': expectation #{i} ({kind}): kwargs must be an object"
                    )))
                }
            };
            let meta = match e.get("meta") {
                Some(Json::Object(m)) => Some(m),
                None | Some(Json::Null) => None,
                Some(_) => {
                    return Err(err(format!(
                        "suite '{suite_name}': expectation #{i} ({kind}): meta must be an object"
                    )))
                }
            };
            let column = match kw.get("column") {
                Some(Json::String(c)) => Some(c.clone()),
                None => None,
                Some(v) => {
                    return Err(err(format!(
                        "suite '{suite_name}': expectation #{i} ({kind}): column must be a string, got {v}"
                    )))
                }
            };
            let name = match meta.and_then(|m| m.get("name")) {
                Some(Json::String(n)) if !n.is_empty() => n.clone(),
                Some(v) => {
                    return Err(err(format!(
                        "suite '{suite_name}': expectation #{i} ({kind}): meta.name must be a non-empty string, got {v}"
                    )))
                }
                None => match &column {
                    Some(c) => format!("{kind}({c})"),
                    None => kind.clone(),
                },
            };
            let what = || format!("suite '{suite_name}': expectation '{name}'");
            if !names.insert(name.clone()) {
                return Err(err(format!(
                    "{}: the name is used twice; give one of them a meta.name",
                    what()
                )));
            }
            let blocking = match meta.and_then(|m| m.get("blocking")) {
                None | Some(Json::Null) => false,
                Some(Json::Bool(b)) => *b,
                Some(v) => {
                    return Err(err(format!(
                        "{}: meta.blocking must be true or false, got {v}",
                        what()
                    )))
                }
            };
            if AUDIT_ONLY_TYPES.contains(&kind.as_str()) {
                if blocking {
                    return Err(err(format!(
                        "{}: {kind} is a batch-level expectation (audit path only) and cannot be blocking",
                        what()
                    )));
                }
                out.audit_only.push(AuditOnly { name, kind });
                continue;
            }
            if !ROW_TYPES.contains(&kind.as_str()) {
                return Err(err(format!(
                    "{}: unsupported expectation type {kind:?}; per-record types: {}; audit-only types: {}",
                    what(),
                    ROW_TYPES.join(", "),
                    AUDIT_ONLY_TYPES.join(", ")
                )));
            }
            let Some(column) = column else {
                return Err(err(format!("{}: kwargs.column is required", what())));
            };
            let Some(col) = columns.iter().position(|c| *c == column) else {
                return Err(err(format!(
                    "{}: unknown column '{column}' (record columns: {})",
                    what(),
                    columns.join(", ")
                )));
            };
            let specific: &[&str] = match kind.as_str() {
                "expect_column_values_to_be_between" => {
                    &["min_value", "max_value", "strict_min", "strict_max"]
                }
                "expect_column_value_lengths_to_be_between" => {
                    &["min_value", "max_value", "strict_min", "strict_max"]
                }
                "expect_column_values_to_be_in_set" => &["value_set"],
                "expect_column_values_to_not_be_in_set" => &["value_set"],
                "expect_column_values_to_match_regex" => &["regex"],
                "expect_column_values_to_not_match_regex" => &["regex"],
                "expect_column_value_lengths_to_equal" => &["value"],
                _ => &[],
            };
            for k in kw.keys() {
                if !COMMON_KWARGS.contains(&k.as_str()) && !specific.contains(&k.as_str()) {
                    let hint = if k == "row_condition" || k == "condition_parser" {
                        " (conditional expectations are not supported per record)"
                    } else {
                        ""
                    };
                    return Err(err(format!(
                        "{}: unsupported kwarg '{k}'{hint}",
                        what()
                    )));
                }
            }
            match kw.get("mostly") {
                None | Some(Json::Null) => {}
                Some(v) => match num_of(v) {
                    Some(Num::I(i)) if (0..=1).contains(&i) => {}
                    Some(Num::F(f)) if (0.0..=1.0).contains(&f) => {}
                    _ => {
                        return Err(err(format!(
                            "{}: mostly must be a number in 0..1, got {v}",
                            what()
                        )))
                    }
                },
            }
            let check = match kind.as_str() {
                "expect_column_values_to_not_be_null" => Check::NotNull,
                "expect_column_values_to_be_null" => Check::Null,
                "expect_column_values_to_be_between" => {
                    let min = value_bound(kw, "min_value", &what)?;
                    let max = value_bound(kw, "max_value", &what)?;
                    match (&min, &max) {
                        (None, None) => {
                            return Err(err(format!(
                                "{}: min_value and max_value cannot both be null",
                                what()
                            )))
                        }
                        (Some(Bound::Num(a)), Some(Bound::Num(b)))
                            if cmp_num(*a, *b) == Some(Ordering::Greater) =>
                        {
                            return Err(err(format!(
                                "{}: min_value cannot be greater than max_value",
                                what()
                            )))
                        }
                        _ => {}
                    }
                    Check::Between {
                        min,
                        max,
                        strict_min: opt_bool(kw, "strict_min", &what)?,
                        strict_max: opt_bool(kw, "strict_max", &what)?,
                    }
                }
                "expect_column_values_to_be_in_set" => Check::InSet(value_set(kw, &what)?),
                "expect_column_values_to_not_be_in_set" => Check::NotInSet(value_set(kw, &what)?),
                "expect_column_values_to_match_regex" | "expect_column_values_to_not_match_regex" => {
                    let Some(Json::String(pat)) = kw.get("regex") else {
                        return Err(err(format!("{}: regex must be a string", what())));
                    };
                    let translated = translate_py_regex(pat).map_err(|m| {
                        err(format!("{}: regex {pat:?}: {m}", what()))
                    })?;
                    let re = Regex::new(&translated).map_err(|e| {
                        err(format!(
                            "{}: regex {pat:?} is not supported by the Rust regex engine: {e}",
                            what()
                        ))
                    })?;
                    if kind == "expect_column_values_to_match_regex" {
                        Check::MatchRegex(re)
                    } else {
                        Check::NotMatchRegex(re)
                    }
                }
                "expect_column_value_lengths_to_be_between" => {
                    let min = opt_len_bound(kw, "min_value", &what)?;
                    let max = opt_len_bound(kw, "max_value", &what)?;
                    if min.is_none() && max.is_none() {
                        return Err(err(format!(
                            "{}: min_value and max_value cannot both be null",
                            what()
                        )));
                    }
                    if let (Some(a), Some(b)) = (min, max) {
                        if a > b {
                            return Err(err(format!(
                                "{}: min_value cannot be greater than max_value",
                                what()
                            )));
                        }
                    }
                    Check::LengthBetween {
                        min,
                        max,
                        strict_min: opt_bool(kw, "strict_min", &what)?,
                        strict_max: opt_bool(kw, "strict_max", &what)?,
                    }
                }
                "expect_column_value_lengths_to_equal" => match opt_len_bound(kw, "value", &what)? {
                    Some(v) => Check::LengthEqual(v),
                    None => return Err(err(format!("{}: value is required", what()))),
                },
                _ => unreachable!("checked against ROW_TYPES"),
            };
            out.expectations.push(Expectation {
                name,
                kind,
                column,
                col,
                blocking,
                check,
            });
        }
        Ok(out)
    }

    /// Indices (into `expectations`) of the failed expectations; `cells` is
    /// one record in column order. Empty = all passed.
    #[inline]
    pub fn failures(&self, cells: &[Cell<'_>], out: &mut Vec<usize>) {
        for (i, e) in self.expectations.iter().enumerate() {
            let c = cells.get(e.col).unwrap_or(&Cell::Null);
            if !e.check.passes(c) {
                out.push(i);
            }
        }
    }
}

// ------------------------------------------------------------ regex translation

fn lit(out: &mut String, c: char) {
    let _ = write!(out, "\\x{{{:X}}}", c as u32);
}

/// Translate a Python `re` pattern (str pattern, no flags, used with
/// `re.search`) to a `regex`-crate pattern with the same `is_match` verdict on
/// every string, or say why that cannot be guaranteed.
///
/// Supported: literals, `.`, `^`, `$` (only at the end of the pattern or of a
/// top-level alternative; Python's `$` also matches before a final `\n`,
/// rendered as `\n?\z`), `\A`, `\Z`, character classes with literal members
/// and ranges, groups `(...)`, `(?:...)`, `(?P<name>...)`, alternation, the
/// quantifiers `* + ? {m} {m,} {,n} {m,n}` and their lazy forms, escapes
/// `\n \t \r \f \v \a \xhh \uhhhh \Uhhhhhhhh` and escaped punctuation.
/// Rejected: `\d \w \s \b` and their negations (Python's Unicode classes
/// differ from Rust's), inline flags, look-around, back-references,
/// possessive/atomic forms, octal escapes, nested sets and set operations.
pub fn translate_py_regex(pat: &str) -> Result<String, String> {
    let chars: Vec<char> = pat.chars().collect();
    let mut out = String::with_capacity(pat.len() * 2);
    let mut i = 0;
    let mut depth: i32 = 0;
    // Whether the previous item can take a quantifier (Python: "nothing to repeat").
    let mut repeatable = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let (text, n, is_anchor) = escape(&chars, i, false)?;
                out.push_str(&text);
                i += n;
                repeatable = !is_anchor;
                continue;
            }
            '[' => {
                let n = class(&chars, i, &mut out)?;
                i += n;
                repeatable = true;
                continue;
            }
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    match chars.get(i + 2) {
                        Some(':') => {
                            out.push_str("(?:");
                            i += 3;
                        }
                        Some('P') if chars.get(i + 3) == Some(&'<') => {
                            let start = i + 4;
                            let mut j = start;
                            while j < chars.len() && chars[j] != '>' {
                                j += 1;
                            }
                            let name: String = chars[start..j.min(chars.len())].iter().collect();
                            let ok = j < chars.len()
                                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                            if !ok {
                                return Err(format!(
                                    "group name {name:?} is not supported (use [A-Za-z_][A-Za-z0-9_]*)"
                                ));
                            }
                            let _ = write!(out, "(?P<{name}>");
                            i = j + 1;
                        }
                        _ => {
                            return Err(
                                "'(?' constructs other than (?:...) and (?P<name>...) (flags, look-around, \
                                 back-references, comments, atomic groups) are not supported"
                                    .into(),
                            )
                        }
                    }
                } else {
                    out.push('(');
                    i += 1;
                }
                depth += 1;
                repeatable = false;
                continue;
            }
            ')' => {
                if depth == 0 {
                    return Err("unbalanced parenthesis".into());
                }
                depth -= 1;
                out.push(')');
                repeatable = true;
            }
            '|' => {
                out.push('|');
                repeatable = false;
            }
            '.' => {
                out.push('.');
                repeatable = true;
            }
            '^' => {
                out.push('^');
                repeatable = false;
            }
            '$' => {
                // Python's `$` = end of string or before a final "\n". As `\n?\z`
                // it consumes that newline, which is only harmless when nothing
                // can follow it: the rest must be `)`* then end or a top-level `|`.
                let mut j = i + 1;
                let mut d = depth;
                while j < chars.len() && chars[j] == ')' {
                    d -= 1;
                    j += 1;
                }
                let tail_ok = j == chars.len() || (chars[j] == '|' && d == 0);
                if !tail_ok {
                    return Err(
                        "'$' is only supported at the end of the pattern or of a top-level alternative".into(),
                    );
                }
                out.push_str("(?:\\n?\\z)");
                repeatable = false;
            }
            '*' | '+' | '?' => {
                if !repeatable {
                    return Err(format!("nothing to repeat before '{c}' at position {i}"));
                }
                out.push(c);
                i += 1;
                match chars.get(i) {
                    Some('?') => {
                        out.push('?');
                        i += 1;
                    }
                    Some('+') => return Err("possessive quantifiers are not supported".into()),
                    _ => {}
                }
                if matches!(chars.get(i), Some('*' | '+' | '?' | '{')) && quant_len(&chars, i).is_some()
                    || matches!(chars.get(i), Some('*' | '+' | '?'))
                {
                    return Err(format!("multiple repeat at position {i}"));
                }
                repeatable = false;
                continue;
            }
            '{' => match quant_len(&chars, i) {
                Some((n, lo, hi)) => {
                    if !repeatable {
                        return Err(format!("nothing to repeat before '{{' at position {i}"));
                    }
                    match (lo, hi) {
                        (lo, Some(hi)) => {
                            if hi < lo {
                                return Err("min repeat greater than max repeat".into());
                            }
                            let _ = write!(out, "{{{lo},{hi}}}");
                        }
                        (lo, None) => {
                            let _ = write!(out, "{{{lo},}}");
                        }
                    }
                    i += n;
                    match chars.get(i) {
                        Some('?') => {
                            out.push('?');
                            i += 1;
                        }
                        Some('+') => return Err("possessive quantifiers are not supported".into()),
                        _ => {}
                    }
                    if matches!(chars.get(i), Some('*' | '+' | '?'))
                        || (chars.get(i) == Some(&'{') && quant_len(&chars, i).is_some())
                    {
                        return Err(format!("multiple repeat at position {i}"));
                    }
                    repeatable = false;
                    continue;
                }
                None => {
                    // Python: a '{' that does not start a valid repeat is a literal.
                    lit(&mut out, '{');
                    repeatable = true;
                }
            },
            c if c.is_alphanumeric() || c == ' ' || c == '_' => {
                out.push(c);
                repeatable = true;
            }
            c => {
                lit(&mut out, c);
                repeatable = true;
            }
        }
        i += 1;
    }
    if depth != 0 {
        return Err("missing ), unterminated subpattern".into());
    }
    Ok(out)
}

/// A Python repeat `{...}` at `i`: `(chars consumed, min, max)`, or `None`
/// when Python reads the `{` as a literal.
fn quant_len(chars: &[char], i: usize) -> Option<(usize, u32, Option<u32>)> {
    if chars.get(i) != Some(&'{') || chars.get(i + 1) == Some(&'}') {
        return None;
    }
    let mut j = i + 1;
    let mut lo = String::new();
    while j < chars.len() && chars[j].is_ascii_digit() {
        lo.push(chars[j]);
        j += 1;
    }
    let hi;
    if chars.get(j) == Some(&',') {
        j += 1;
        let mut h = String::new();
        while j < chars.len() && chars[j].is_ascii_digit() {
            h.push(chars[j]);
            j += 1;
        }
        hi = h;
    } else {
        hi = lo.clone();
    }
    if chars.get(j) != Some(&'}') {
        return None;
    }
    let lo_v = if lo.is_empty() { 0 } else { lo.parse().ok()? };
    let hi_v = if hi.is_empty() { None } else { Some(hi.parse().ok()?) };
    Some((j + 1 - i, lo_v, hi_v))
}

fn hex_escape(chars: &[char], start: usize, n: usize) -> Result<char, String> {
    let s: String = chars.get(start..start + n).map(|c| c.iter().collect()).unwrap_or_default();
    if s.len() != n || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("incomplete escape (need {n} hex digits)"));
    }
    let v = u32::from_str_radix(&s, 16).map_err(|e| e.to_string())?;
    char::from_u32(v).ok_or_else(|| format!("escape \\u{v:X} is not a Unicode scalar value"))
}

/// Translate the escape at `chars[i] == '\\'` → (text, chars consumed, is_anchor).
fn escape(chars: &[char], i: usize, in_class: bool) -> Result<(String, usize, bool), String> {
    let Some(&c) = chars.get(i + 1) else {
        return Err("bad escape (end of pattern)".into());
    };
    let mut out = String::new();
    let simple = |ch: char| {
        let mut s = String::new();
        lit(&mut s, ch);
        s
    };
    Ok(match c {
        'A' if !in_class => ("\\A".into(), 2, true),
        'Z' if !in_class => ("\\z".into(), 2, true),
        'n' => (simple('\n'), 2, false),
        't' => (simple('\t'), 2, false),
        'r' => (simple('\r'), 2, false),
        'f' => (simple('\x0c'), 2, false),
        'v' => (simple('\x0b'), 2, false),
        'a' => (simple('\x07'), 2, false),
        'x' => {
            let ch = hex_escape(chars, i + 2, 2)?;
            lit(&mut out, ch);
            (out, 4, false)
        }
        'u' => {
            let ch = hex_escape(chars, i + 2, 4)?;
            lit(&mut out, ch);
            (out, 6, false)
        }
        'U' => {
            let ch = hex_escape(chars, i + 2, 8)?;
            lit(&mut out, ch);
            (out, 10, false)
        }
        'd' | 'D' | 'w' | 'W' | 's' | 'S' | 'b' | 'B' => {
            return Err(format!(
                "\\{c} is not supported: Python's Unicode \\d/\\w/\\s/\\b differ from Rust's; \
                 write an explicit class such as [0-9] or [A-Za-z0-9_]"
            ))
        }
        '0'..='9' => {
            return Err(format!(
                "\\{c} (octal escape or back-reference) is not supported"
            ))
        }
        c if c.is_ascii_alphanumeric() => return Err(format!("bad escape \\{c}")),
        c => (simple(c), 2, false),
    })
}

/// One member of a class at `chars[j]` → (char, chars consumed).
fn class_item(chars: &[char], j: usize) -> Result<(char, usize), String> {
    match chars[j] {
        '\\' => {
            let Some(&c) = chars.get(j + 1) else {
                return Err("bad escape (end of pattern)".into());
            };
            let simple = match c {
                'n' => Some('\n'),
                't' => Some('\t'),
                'r' => Some('\r'),
                'f' => Some('\x0c'),
                'v' => Some('\x0b'),
                'a' => Some('\x07'),
                _ => None,
            };
            if let Some(ch) = simple {
                return Ok((ch, 2));
            }
            match c {
                'x' => Ok((hex_escape(chars, j + 2, 2)?, 4)),
                'u' => Ok((hex_escape(chars, j + 2, 4)?, 6)),
                'U' => Ok((hex_escape(chars, j + 2, 8)?, 10)),
                'd' | 'D' | 'w' | 'W' | 's' | 'S' | 'b' => Err(format!(
                    "\\{c} in a character set is not supported: Python's Unicode classes differ from \
                     Rust's; list the characters or ranges explicitly"
                )),
                '0'..='9' => Err(format!("\\{c} (octal escape) is not supported")),
                c if c.is_ascii_alphanumeric() => Err(format!("bad escape \\{c}")),
                c => Ok((c, 2)),
            }
        }
        '[' => Err(
            "'[' inside a character set is not supported (Python reads it literally, Rust as a nested set); escape it"
                .into(),
        ),
        c => Ok((c, 1)),
    }
}

/// Translate the class starting at `chars[i] == '['` the way Python's
/// `sre_parse` reads it; returns chars consumed.
fn class(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let mut j = i + 1;
    out.push('[');
    if chars.get(j) == Some(&'^') {
        out.push('^');
        j += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(j) else {
            return Err("unterminated character set".into());
        };
        if c == ']' && !first {
            break;
        }
        first = false;
        for op in ["--", "&&", "~~", "||"] {
            let mut it = op.chars();
            if Some(c) == it.next() && chars.get(j + 1).copied() == it.next() {
                return Err(format!(
                    "'{op}' in a character set is not supported (a set operation in Rust, a FutureWarning in Python)"
                ));
            }
        }
        let (lo, n) = class_item(chars, j)?;
        j += n;
        // Python: item '-' item is a range unless the '-' is followed by ']'.
        if chars.get(j) == Some(&'-') && chars.get(j + 1).is_some_and(|c| *c != ']') {
            if chars.get(j + 1) == Some(&'-') {
                return Err("'--' in a character set is not supported".into());
            }
            let (hi, m) = class_item(chars, j + 1)?;
            if hi < lo {
                return Err(format!("bad character range {lo}-{hi}"));
            }
            lit(out, lo);
            out.push('-');
            lit(out, hi);
            j += 1 + m;
        } else {
            lit(out, lo);
        }
    }
    out.push(']');
    Ok(j + 1 - i)
}
