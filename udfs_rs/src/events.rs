//! Maintenance events (`maintenance-events` topic): one JSON work-order
//! object per message, parsed with serde_json. `docs/formats.md` is the
//! normative description.
//!
//! Checks, in order (the first failing one is reported):
//! 1. `empty`; `oversized` (`len > max_bytes`, before any parsing);
//! 2. `invalid-utf8` (offset = first invalid byte);
//! 3. `too-deep`: a linear pre-scan counts `[`/`{` nesting outside JSON
//!    strings (escapes respected) and rejects depth > `max_depth` at the
//!    offending bracket. `max_depth <= 127`, so serde_json's own recursion
//!    limit (128) can never be the one that triggers;
//! 4. `malformed-json`: serde_json parses the top level as an ordered list of
//!    `(key, raw value)` pairs; invalid JSON, a top level that is not an
//!    object and duplicate keys (compared after unescaping) are rejected;
//! 5. per field, in document order: required/optional fields are typed from
//!    their raw text (`type-mismatch` at the value's offset); every other
//!    field is re-parsed by a validating visitor (duplicate keys at any depth,
//!    lone surrogate escapes and numbers outside f64 are `malformed-json`) and
//!    kept as its JSON text with insignificant whitespace removed;
//! 6. `missing-field` for absent required fields (offset `None`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::errors::{DecodeReason, SluiceErr};

/// serde_json stops at 128 nested arrays/objects; our pre-scan must always
/// trigger first, so `max_depth` is capped below it.
pub const MAX_DEPTH_LIMIT: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Repair,
    Inspection,
    PartReplaced,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::Repair,
        EventKind::Inspection,
        EventKind::PartReplaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Repair => "repair",
            EventKind::Inspection => "inspection",
            EventKind::PartReplaced => "part_replaced",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A decoded work order. Strings borrow from the input when they contain no
/// escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub device_id: Cow<'a, str>,
    pub ts_ms: i64,
    pub kind: EventKind,
    pub technician: Option<Cow<'a, str>>,
    pub notes: Option<Cow<'a, str>>,
    /// `(part_no, qty)` in document order.
    pub parts: Vec<(Cow<'a, str>, i64)>,
    /// Every other top-level field in document order: key → the value's JSON
    /// text with the whitespace between tokens removed.
    pub extra: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

// ------------------------------------------------------------- pre-checks

/// Reject nesting deeper than `max_depth` (the top-level object is depth 1).
/// Brackets inside strings do not count; `\"` and `\\` are handled. Exact for
/// well-formed JSON; on malformed input it agrees with any JSON parser up to
/// the first syntax error, so a parser that stops there never nests deeper.
pub fn check_depth(b: &[u8], max_depth: usize) -> Result<(), SluiceErr> {
    let n = b.len();
    let mut depth = 0usize;
    let mut i = 0usize;
    while i < n {
        match b[i] {
            b'"' => {
                i += 1;
                while i < n {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(SluiceErr::decode(
                        DecodeReason::TooDeep,
                        i,
                        format!(
                            "arrays/objects nested deeper than max_depth {max_depth} (the top-level object is depth 1)"
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Remove JSON whitespace outside strings from a valid JSON text.
pub fn minify(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let is_ws = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let mut out: Option<String> = None;
    let mut seg_start = 0usize;
    let mut i = 0usize;
    let n = b.len();
    while i < n {
        match b[i] {
            b'"' => {
                i += 1;
                while i < n {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            c if is_ws(c) => {
                let o = out.get_or_insert_with(|| String::with_capacity(n));
                o.push_str(&s[seg_start..i]);
                while i < n && is_ws(b[i]) {
                    i += 1;
                }
                seg_start = i;
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[seg_start.min(n)..]);
            Cow::Owned(o)
        }
    }
}

// --------------------------------------------------------- serde visitors

/// Object keys seen so far, for duplicate detection (linear for small objects).
#[derive(Default)]
struct KeySet<'de> {
    small: Vec<Cow<'de, str>>,
    big: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> KeySet<'de> {
    const SMALL: usize = 16;

    /// `false` if `k` was already present.
    fn insert(&mut self, k: Cow<'de, str>) -> bool {
        if let Some(big) = &mut self.big {
            return big.insert(k);
        }
        if self.small.contains(&k) {
            return false;
        }
        self.small.push(k);
        if self.small.len() > Self::SMALL {
            self.big = Some(self.small.drain(..).collect());
        }
        true
    }
}

/// An object key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cold]
fn duplicate<E: de::Error>(k: &str) -> E {
    E::custom(format_args!("duplicate key '{k}'"))
}

/// An object as its `(key, raw value)` pairs in document order; duplicate
/// keys are an error.
struct Entries<'de>(Vec<(Cow<'de, str>, &'de RawValue)>);

impl<'de> de::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(12));
                // Linear search while small; a set of the keys once the object is large.
                let mut big: Option<HashSet<Cow<'de, str>>> = None;
                while let Some(k) = map.next_key_seed(KeySeed)? {
                    let dup = match &mut big {
                        Some(set) => !set.insert(k.clone()),
                        None => {
                            let dup = out.iter().any(|(x, _)| *x == k);
                            if !dup && out.len() >= KeySet::SMALL {
                                let mut set: HashSet<_> =
                                    out.iter().map(|(x, _)| x.clone()).collect();
                                set.insert(k.clone());
                                big = Some(set);
                            }
                            dup
                        }
                    };
                    if dup {
                        return Err(duplicate(&k));
                    }
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Validates any JSON value without keeping it: duplicate keys at any depth
/// are an error (and serde_json checks escapes and number ranges).
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = KeySet::default();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            if !seen.insert(k.clone()) {
                return Err(duplicate(&k));
            }
            map.next_value_seed(Strict)?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ errors

/// Line (1-based) and column (1-based, in bytes, like serde_json) of byte `at`.
fn line_col(doc: &str, at: usize) -> (usize, usize) {
    let head = &doc.as_bytes()[..at.min(doc.len())];
    let sol = head.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    let line = 1 + head[..sol].iter().filter(|&&c| c == b'\n').count();
    (line, at - sol + 1)
}

/// Offset of `part` inside `doc` (`part` is a sub-slice of `doc`).
fn offset_in(doc: &str, part: &str) -> usize {
    (part.as_ptr() as usize)
        .checked_sub(doc.as_ptr() as usize)
        .filter(|&o| o <= doc.len())
        .unwrap_or(0)
}

/// serde_json error while parsing `doc[base..base + text.len()]` → `malformed-json`
/// with the absolute byte offset and the line/column of that offset in `doc`.
#[cold]
fn json_err(doc: &str, text: &str, e: serde_json::Error) -> SluiceErr {
    let base = offset_in(doc, text);
    let local = if e.is_eof() || e.line() == 0 {
        text.len()
    } else {
        // serde_json: column = bytes consumed on the line; the offending byte is the last one.
        let sol = if e.line() <= 1 {
            0
        } else {
            text.bytes()
                .enumerate()
                .filter(|&(_, c)| c == b'\n')
                .nth(e.line() - 2)
                .map_or(text.len(), |(i, _)| i + 1)
        };
        (sol + e.column().saturating_sub(1)).min(text.len())
    };
    let at = base + local;
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full);
    let (line, col) = if base == 0 && e.line() != 0 {
        (e.line(), e.column())
    } else {
        line_col(doc, at)
    };
    SluiceErr::decode(
        DecodeReason::MalformedJson,
        at,
        format!("{msg} at line {line} column {col}"),
    )
}

fn json_type(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// Where a value sits, for messages (`ts`, `parts[2]`, `parts[2].qty`);
/// only formatted when an error is reported.
#[derive(Clone, Copy)]
enum Path {
    Top(&'static str),
    Part(usize, Option<&'static str>),
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Top(name) => f.write_str(name),
            Path::Part(i, None) => write!(f, "parts[{i}]"),
            Path::Part(i, Some(key)) => write!(f, "parts[{i}].{key}"),
        }
    }
}

struct Field<'d, 'a> {
    doc: &'d str,
    raw: &'a str,
    path: Path,
}

impl<'a> Field<'_, 'a> {
    #[cold]
    fn mismatch(&self, what: &str) -> SluiceErr {
        SluiceErr::mismatch(
            offset_in(self.doc, self.raw),
            format!("must be {what}, got {}", self.describe()),
        )
        .in_path(&self.path.to_string())
    }

    fn describe(&self) -> String {
        let t = json_type(self.raw);
        if matches!(t, "object" | "array") || self.raw.len() > 40 {
            t.to_owned()
        } else {
            format!("{t} {}", self.raw)
        }
    }

    fn string(&self, what: &str) -> Result<Cow<'a, str>, SluiceErr> {
        let r = self.raw;
        if !r.starts_with('"') {
            return Err(self.mismatch(what));
        }
        if !r.as_bytes().contains(&b'\\') {
            return Ok(Cow::Borrowed(&r[1..r.len() - 1]));
        }
        serde_json::from_str::<String>(r)
            .map(Cow::Owned)
            .map_err(|e| json_err(self.doc, r, e))
    }

    fn nonempty_string(&self) -> Result<Cow<'a, str>, SluiceErr> {
        let what = "a non-empty string";
        let s = self.string(what)?;
        if s.is_empty() {
            return Err(self.mismatch(what));
        }
        Ok(s)
    }

    fn opt_string(&self) -> Result<Option<Cow<'a, str>>, SluiceErr> {
        if self.raw == "null" {
            return Ok(None);
        }
        self.string("a string or null").map(Some)
    }

    /// A JSON integer literal (no fraction, no exponent) that fits i64.
    fn int(&self, what: &str) -> Result<i64, SluiceErr> {
        let r = self.raw;
        let b = r.as_bytes();
        let is_num = matches!(b.first(), Some(b'-' | b'0'..=b'9'));
        if !is_num || b.iter().any(|&c| matches!(c, b'.' | b'e' | b'E')) {
            return Err(self.mismatch(what));
        }
        r.parse::<i64>()
            .map_err(|_| self.mismatch(&format!("{what} within the i64 range")))
    }
}

#[cold]
fn missing(field: &str) -> SluiceErr {
    SluiceErr::decode_no_offset(
        DecodeReason::MissingField,
        format!("required field '{field}' is missing"),
    )
}

// ------------------------------------------------------------------ decode

fn parts<'a>(doc: &'a str, raw: &'a str) -> Result<Vec<(Cow<'a, str>, i64)>, SluiceErr> {
    let f = Field {
        doc,
        raw,
        path: Path::Top("parts"),
    };
    if !raw.starts_with('[') {
        return Err(f.mismatch("an array of {part_no, qty} objects"));
    }
    let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(|e| json_err(doc, raw, e))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let item = item.get();
        let at = offset_in(doc, item);
        if !item.starts_with('{') {
            return Err(Field {
                doc,
                raw: item,
                path: Path::Part(i, None),
            }
            .mismatch("an object {\"part_no\": string, \"qty\": positive integer}"));
        }
        let Entries(entries) = serde_json::from_str(item).map_err(|e| json_err(doc, item, e))?;
        let mut part_no = None;
        let mut qty = None;
        for (k, v) in entries {
            let v = v.get();
            match k.as_ref() {
                "part_no" => {
                    let f = Field {
                        doc,
                        raw: v,
                        path: Path::Part(i, Some("part_no")),
                    };
                    part_no = Some(f.string("a string")?);
                }
                "qty" => {
                    let f = Field {
                        doc,
                        raw: v,
                        path: Path::Part(i, Some("qty")),
                    };
                    let what = "a positive integer";
                    let q = f.int(what)?;
                    if q <= 0 {
                        return Err(f.mismatch(what));
                    }
                    qty = Some(q);
                }
                other => {
                    return Err(SluiceErr::mismatch(
                        at,
                        format!("unexpected key '{other}' (a part has only 'part_no' and 'qty')"),
                    )
                    .in_path(&Path::Part(i, None).to_string()))
                }
            }
        }
        let need = |name: &str| {
            SluiceErr::decode(
                DecodeReason::MissingField,
                at,
                format!("required key '{name}' is missing"),
            )
            .in_path(&Path::Part(i, None).to_string())
        };
        let part_no = part_no.ok_or_else(|| need("part_no"))?;
        let qty = qty.ok_or_else(|| need("qty"))?;
        out.push((part_no, qty));
    }
    Ok(out)
}

/// Decode one maintenance event. `max_depth` must be in `1..=MAX_DEPTH_LIMIT`.
pub fn decode(data: &[u8], max_bytes: usize, max_depth: usize) -> Result<Event<'_>, SluiceErr> {
    debug_assert!((1..=MAX_DEPTH_LIMIT).contains(&max_depth));
    if data.is_empty() {
        return Err(SluiceErr::decode(
            DecodeReason::Empty,
            0,
            "message is empty",
        ));
    }
    if data.len() > max_bytes {
        return Err(SluiceErr::decode(
            DecodeReason::Oversized,
            max_bytes,
            format!("message is {} bytes, max_bytes is {max_bytes}", data.len()),
        ));
    }
    let doc = std::str::from_utf8(data).map_err(|e| {
        SluiceErr::decode(
            DecodeReason::InvalidUtf8,
            e.valid_up_to(),
            format!(
                "document is not valid UTF-8 (first invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    check_depth(data, max_depth.min(MAX_DEPTH_LIMIT))?;
    let Entries(entries) = serde_json::from_str(doc).map_err(|e| json_err(doc, doc, e))?;

    let mut event_id = None;
    let mut device_id = None;
    let mut ts_ms = None;
    let mut kind = None;
    let mut technician = None;
    let mut notes = None;
    let mut parts_v = Vec::new();
    let mut extra = Vec::new();
    for (k, v) in entries {
        let raw = v.get();
        let field = |name: &'static str| Field {
            doc,
            raw,
            path: Path::Top(name),
        };
        match k.as_ref() {
            "event_id" => event_id = Some(field("event_id").nonempty_string()?),
            "device_id" => device_id = Some(field("device_id").nonempty_string()?),
            "ts" => ts_ms = Some(field("ts").int("an integer (epoch milliseconds)")?),
            "kind" => {
                let f = field("kind");
                let what = "one of \"repair\", \"inspection\", \"part_replaced\"";
                let s = f.string(what)?;
                kind = Some(EventKind::parse(&s).ok_or_else(|| f.mismatch(what))?);
            }
            "technician" => technician = field("technician").opt_string()?,
            "notes" => notes = field("notes").opt_string()?,
            "parts" => parts_v = parts(doc, raw)?,
            _ => {
                let mut de = serde_json::Deserializer::from_str(raw);
                Strict
                    .deserialize(&mut de)
                    .map_err(|e| json_err(doc, raw, e))?;
                extra.push((k, minify(raw)));
            }
        }
    }
    Ok(Event {
        event_id: event_id.ok_or_else(|| missing("event_id"))?,
        device_id: device_id.ok_or_else(|| missing("device_id"))?,
        ts_ms: ts_ms.ok_or_else(|| missing("ts"))?,
        kind: kind.ok_or_else(|| missing("kind"))?,
        technician,
        notes,
        parts: parts_v,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"event_id": "wo-1", "device_id": "dev-0001", "ts": 1700000000000,
 "kind": "repair", "technician": "a.smith", "notes": "replaced bearing",
 "parts": [{"part_no": "B-6204", "qty": 2}, {"qty": 1, "part_no": "S-1"}],
 "cost": {"amount": 120.5, "currency": "EUR"}, "site": "north", "tags": [ "a" , "b c" ]}"#;

    fn dec(doc: &str) -> Result<Event<'_>, SluiceErr> {
        decode(doc.as_bytes(), 65536, 32)
    }

    fn err(r: Result<Event<'_>, SluiceErr>) -> (DecodeReason, Option<usize>, String) {
        match r {
            Ok(e) => panic!("expected an error, decoded {e:?}"),
            Err(SluiceErr::Decode(d)) => {
                let msg = SluiceErr::Decode(d.clone()).to_string();
                (d.reason, d.offset, msg)
            }
            Err(e) => panic!("not a decode error: {e}"),
        }
    }

    fn reason_of(doc: &str) -> DecodeReason {
        err(dec(doc)).0
    }

    /// A minimal valid document with `extra` spliced in as more top-level fields.
    fn with(extra: &str) -> String {
        format!(r#"{{"event_id":"e","device_id":"d","ts":1,"kind":"inspection"{extra}}}"#)
    }

    #[test]
    fn full_document() {
        let e = dec(FULL).unwrap();
        assert_eq!(e.event_id, "wo-1");
        assert_eq!(e.device_id, "dev-0001");
        assert_eq!(e.ts_ms, 1_700_000_000_000);
        assert_eq!(e.kind, EventKind::Repair);
        assert_eq!(e.technician.as_deref(), Some("a.smith"));
        assert_eq!(e.notes.as_deref(), Some("replaced bearing"));
        assert_eq!(
            e.parts,
            vec![(Cow::Borrowed("B-6204"), 2), (Cow::Borrowed("S-1"), 1)]
        );
        let extra: Vec<(&str, &str)> = e
            .extra
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(
            extra,
            vec![
                ("cost", r#"{"amount":120.5,"currency":"EUR"}"#),
                ("site", r#""north""#),
                ("tags", r#"["a","b c"]"#),
            ]
        );
        assert!(matches!(e.event_id, Cow::Borrowed(_)));
    }

    #[test]
    fn optional_fields_default() {
        let doc = with("");
        let e = dec(&doc).unwrap();
        assert_eq!((e.technician, e.notes), (None, None));
        assert!(e.parts.is_empty() && e.extra.is_empty());
        let doc = with(r#","technician":null,"notes":null,"parts":[]"#);
        let e = dec(&doc).unwrap();
        assert_eq!((e.technician, e.notes), (None, None));
        assert!(e.parts.is_empty());
        let doc = with(
            r#","technician":"","notes":"","parts":[{"part_no":"","qty":9223372036854775807}]"#,
        );
        let e = dec(&doc).unwrap();
        assert_eq!(
            (e.technician.as_deref(), e.notes.as_deref()),
            (Some(""), Some(""))
        );
        assert_eq!(e.parts, vec![(Cow::Borrowed(""), i64::MAX)]);
    }

    #[test]
    fn extra_values_kept_exactly() {
        let doc = with(
            r#", "big": 123456789012345678901234567890, "f": 1.50e+3, "neg": -0, "esc": "\u00e9\n\"[{",
                "nested" : { "a" : [ 1 , { "b" : null } ] , "s" : " keep  spaces " }, "t": true, "emoji": "🦀""#,
        );
        let e = dec(&doc).unwrap();
        let m: Vec<(&str, &str)> = e
            .extra
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(
            m,
            vec![
                ("big", "123456789012345678901234567890"),
                ("f", "1.50e+3"),
                ("neg", "-0"),
                ("esc", r#""\u00e9\n\"[{""#),
                ("nested", r#"{"a":[1,{"b":null}],"s":" keep  spaces "}"#),
                ("t", "true"),
                ("emoji", "\"🦀\""),
            ]
        );
        // Each kept text is valid JSON and equal to the original value.
        let orig: serde_json::Value = serde_json::from_str(&doc).unwrap();
        for (k, v) in &e.extra {
            if k != "big" {
                let back: serde_json::Value = serde_json::from_str(v).unwrap();
                assert_eq!(back, orig[k.as_ref()], "{k}");
            }
        }
    }

    #[test]
    fn unicode_and_escapes_in_fields_and_keys() {
        let doc = r#"{"event_\u0069d":"w\u00f6-\ud83e\udd80","device_id":"Gerät 🦀","ts":-5,
            "kind":"re\u0070air","notes":"line1\nline2 \\ [not nesting] {x}","t\u00e9ch":1}"#;
        let e = dec(doc).unwrap();
        assert_eq!(e.event_id, "wö-🦀");
        assert_eq!(e.device_id, "Gerät 🦀");
        assert_eq!(e.ts_ms, -5);
        assert_eq!(e.kind, EventKind::Repair);
        assert_eq!(
            e.notes.as_deref(),
            Some("line1\nline2 \\ [not nesting] {x}")
        );
        assert_eq!(
            e.extra,
            vec![(Cow::Owned("téch".to_owned()), Cow::Borrowed("1"))]
        );
    }

    #[test]
    fn empty_oversized_utf8() {
        assert_eq!(err(dec("")).0, DecodeReason::Empty);
        let doc = with("");
        let n = doc.len();
        assert!(decode(doc.as_bytes(), n, 32).is_ok());
        let (r, off, _) = err(decode(doc.as_bytes(), n - 1, 32));
        assert_eq!((r, off), (DecodeReason::Oversized, Some(n - 1)));
        // Oversized is checked before parsing: garbage too.
        assert_eq!(err(decode(&[0xff; 100], 10, 32)).0, DecodeReason::Oversized);
        let mut bad = with(r#","x":"ab"#).into_bytes();
        let at = bad.len() - 1;
        bad.insert(at, 0xfe);
        let (r, off, _) = err(decode(&bad, 65536, 32));
        assert_eq!((r, off), (DecodeReason::InvalidUtf8, Some(at)));
        // Truncated multi-byte sequence.
        let (r, off, _) = err(decode(b"{\"a\":\"\xe2\x82\"}", 65536, 32));
        assert_eq!((r, off), (DecodeReason::InvalidUtf8, Some(6)));
    }

    fn nest(depth: usize) -> String {
        // An extra field whose value makes the document `depth` deep in total.
        let inner = depth - 1;
        format!(r#","deep":{}1{}"#, "[".repeat(inner), "]".repeat(inner))
    }

    #[test]
    fn depth_limit_at_the_boundary() {
        for max in [1usize, 2, 5, 32, MAX_DEPTH_LIMIT] {
            if max >= 2 {
                let ok = with(&nest(max));
                assert!(
                    decode(ok.as_bytes(), 1 << 20, max).is_ok(),
                    "depth {max} with max {max}"
                );
            } else {
                assert!(decode(with("").as_bytes(), 1 << 20, 1).is_ok());
            }
            let bad = with(&nest(max + 1));
            let (r, off, _) = err(decode(bad.as_bytes(), 1 << 20, max));
            assert_eq!(r, DecodeReason::TooDeep, "depth {} with max {max}", max + 1);
            // The offset is the bracket that went one level too deep.
            let first = bad.find('[').unwrap_or(0);
            let want = if max == 1 { first } else { first + max - 1 };
            assert_eq!(off, Some(want));
        }
        // Objects count as well as arrays, anywhere (here inside parts).
        let doc = with(r#","parts":[{"part_no":"p","qty":1}]"#);
        assert!(decode(doc.as_bytes(), 4096, 3).is_ok());
        assert_eq!(
            err(decode(doc.as_bytes(), 4096, 2)).0,
            DecodeReason::TooDeep
        );
        // Far beyond serde_json's 128: still too-deep, never serde's recursion error.
        let huge = with(&nest(10_000));
        assert_eq!(
            err(decode(huge.as_bytes(), 1 << 20, MAX_DEPTH_LIMIT)).0,
            DecodeReason::TooDeep
        );
        let unclosed = "[".repeat(500);
        assert_eq!(
            err(decode(unclosed.as_bytes(), 1 << 20, MAX_DEPTH_LIMIT)).0,
            DecodeReason::TooDeep
        );
    }

    #[test]
    fn brackets_in_strings_do_not_nest() {
        let doc = with(r#","s":"[[[[{{{{","k[[[":"]]]}}}","e":"\"[[[","b":"\\","c":"[[[\\\"[[]""#);
        let e = decode(doc.as_bytes(), 4096, 1).unwrap();
        assert_eq!(e.extra.len(), 5);
        // After an escaped backslash the quote closes the string: the bracket counts.
        let doc = with(r#","b":"\\",  "arr":[1]"#);
        assert_eq!(
            err(decode(doc.as_bytes(), 4096, 1)).0,
            DecodeReason::TooDeep
        );
        assert!(decode(doc.as_bytes(), 4096, 2).is_ok());
        // An escaped quote does not close it: the brackets stay inside the string.
        let doc = with(r#","q":"\"[[\"[","ok":"x""#);
        assert!(decode(doc.as_bytes(), 4096, 1).is_ok());
    }

    #[test]
    fn malformed_json() {
        for doc in [
            "{",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "[1,2]",
            "\"str\"",
            "42",
            "null",
            "{} {}",
            "{}x",
            "{'a':1}",
            "{\"a\":tru}",
            "{\"a\":\"unterminated}",
            "{\"a\":01}",
            "{\"a\":NaN}",
            "\u{feff}{}",
        ] {
            let (r, off, msg) = err(dec(doc));
            assert_eq!(r, DecodeReason::MalformedJson, "{doc:?}: {msg}");
            assert!(off.is_some_and(|o| o <= doc.len()), "{doc:?}: {off:?}");
            assert!(msg.contains(" at line "), "{msg}");
        }
        // Offsets and line/column point at the problem.
        let doc = "{\"event_id\": \"e\",\n  \"x\": [1, 2,, 3]}";
        let (r, off, msg) = err(dec(doc));
        assert_eq!(r, DecodeReason::MalformedJson);
        assert_eq!(off, Some(doc.find(",,").unwrap() + 1));
        assert!(msg.contains("at line 2 column 14"), "{msg}");
        // Numbers beyond f64 and lone surrogates inside kept fields.
        let doc = with(",\n \"n\": 1e400");
        let (r, off, msg) = err(dec(&doc));
        assert_eq!(r, DecodeReason::MalformedJson, "{msg}");
        assert!(off.unwrap() >= doc.find("1e400").unwrap(), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert_eq!(
            reason_of(&with(r#","n":"\ud800""#)),
            DecodeReason::MalformedJson
        );
        assert_eq!(
            reason_of(r#"{"event_id":"\udc00","device_id":"d","ts":1,"kind":"repair"}"#),
            DecodeReason::MalformedJson
        );
    }

    #[test]
    fn duplicate_keys_rejected_everywhere() {
        let cases = [
            with(r#","event_id":"e2""#),
            with(r#","x":1,"x":1"#),
            with(r#","x":1,"\u0078":2"#),
            with(r#","x":{"a":1,"b":{"c":1,"c":2}}"#),
            with(r#","x":[{"a":1},{"a":1,"a":1}]"#),
            with(r#","parts":[{"part_no":"p","qty":1,"qty":2}]"#),
        ];
        for doc in &cases {
            let (r, _, msg) = err(dec(doc));
            assert_eq!(r, DecodeReason::MalformedJson, "{doc}: {msg}");
            assert!(msg.contains("duplicate key '"), "{msg}");
        }
        let (_, off, msg) = err(dec(&cases[3]));
        assert!(msg.contains("duplicate key 'c'"), "{msg}");
        let second_c = cases[3].rfind("\"c\"").unwrap();
        assert!(
            (second_c..second_c + 5).contains(&off.unwrap()),
            "{off:?} {msg}"
        );
        // Many keys (the hash-set path).
        let many: String = (0..40).map(|i| format!(",\"k{i}\":{i}")).collect();
        assert!(dec(&with(&many)).is_ok());
        let dup = format!("{many},\"k7\":0");
        assert!(err(dec(&with(&dup))).2.contains("duplicate key 'k7'"));
        let nested = format!(r#","o":{{"z":0{many},"k39":1}}"#);
        assert!(err(dec(&with(&nested))).2.contains("duplicate key 'k39'"));
    }

    #[test]
    fn missing_fields() {
        let full = r#"{"event_id":"e","device_id":"d","ts":1,"kind":"repair"}"#;
        assert!(dec(full).is_ok());
        for field in ["event_id", "device_id", "ts", "kind"] {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(full).unwrap();
            let doc = serde_json::to_string(
                &v.into_iter()
                    .filter(|(k, _)| k != field)
                    .collect::<serde_json::Map<_, _>>(),
            )
            .unwrap();
            let (r, off, msg) = err(dec(&doc));
            assert_eq!((r, off), (DecodeReason::MissingField, None));
            assert!(msg.contains(&format!("'{field}'")), "{msg}");
        }
        assert_eq!(reason_of("{}"), DecodeReason::MissingField);
        let doc = with(r#","parts":[{"part_no":"p"}]"#);
        let (r, off, msg) = err(dec(&doc));
        assert_eq!(
            (r, off),
            (
                DecodeReason::MissingField,
                Some(doc.find("[{").unwrap() + 1)
            )
        );
        assert!(msg.contains("'qty'") && msg.contains("parts[0]"), "{msg}");
    }

    #[test]
    fn type_mismatches_name_the_field() {
        let base = r#"{"event_id":"e","device_id":"d","ts":1,"kind":"repair""#;
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"event_id":1,"device_id":"d","ts":1,"kind":"repair"}"#,
                "event_id",
                "1",
            ),
            (
                r#"{"event_id":"","device_id":"d","ts":1,"kind":"repair"}"#,
                "event_id",
                "\"\"",
            ),
            (
                r#"{"event_id":"e","device_id":null,"ts":1,"kind":"repair"}"#,
                "device_id",
                "null",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":"1","kind":"repair"}"#,
                "ts",
                "\"1\"",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":1.5,"kind":"repair"}"#,
                "ts",
                "1.5",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":1e3,"kind":"repair"}"#,
                "ts",
                "1e3",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":1.0,"kind":"repair"}"#,
                "ts",
                "1.0",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":9223372036854775808,"kind":"repair"}"#,
                "ts",
                "9223372036854775808",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":true,"kind":"repair"}"#,
                "ts",
                "true",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":1,"kind":"fix"}"#,
                "kind",
                "\"fix\"",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":1,"kind":"Repair"}"#,
                "kind",
                "\"Repair\"",
            ),
            (
                r#"{"event_id":"e","device_id":"d","ts":1,"kind":["repair"]}"#,
                "kind",
                "[",
            ),
        ];
        for (doc, field, value) in cases {
            let (r, off, msg) = err(dec(doc));
            assert_eq!(r, DecodeReason::TypeMismatch, "{doc}: {msg}");
            let want = doc.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
            assert_eq!(off, Some(want), "{doc}: {msg}");
            assert!(doc[want..].starts_with(value));
            assert!(msg.contains(&format!("'{field}'")), "{msg}");
        }
        let tail: &[(&str, &str)] = &[
            (r#","technician":5"#, "technician"),
            (r#","notes":{}"#, "notes"),
            (r#","parts":{}"#, "parts"),
            (r#","parts":null"#, "parts"),
            (r#","parts":[1]"#, "parts[0]"),
            (r#","parts":[{"part_no":1,"qty":1}]"#, "parts[0].part_no"),
            (r#","parts":[{"part_no":"p","qty":0}]"#, "parts[0].qty"),
            (
                r#","parts":[{"part_no":"p","qty":1},{"part_no":"p","qty":-1}]"#,
                "parts[1].qty",
            ),
            (r#","parts":[{"part_no":"p","qty":1.5}]"#, "parts[0].qty"),
            (r#","parts":[{"part_no":"p","qty":"2"}]"#, "parts[0].qty"),
            (r#","parts":[{"part_no":"p","qty":1,"x":1}]"#, "parts[0]"),
        ];
        for (t, path) in tail {
            let doc = format!("{base}{t}}}");
            let (r, _, msg) = err(dec(&doc));
            assert_eq!(r, DecodeReason::TypeMismatch, "{doc}: {msg}");
            assert!(msg.contains(&format!("in field '{path}'")), "{msg}");
        }
    }

    #[test]
    fn minify_only_touches_whitespace_outside_strings() {
        assert_eq!(minify("[1, 2]"), "[1,2]");
        assert!(matches!(minify("[1,2]"), Cow::Borrowed(_)));
        assert_eq!(
            minify("{ \"a b\" : \" \\\" x \" }"),
            "{\"a b\":\" \\\" x \"}"
        );
        assert_eq!(minify("\t[\r\n1\n]\n"), "[1]");
        assert_eq!(minify("\"\\\\\" "), "\"\\\\\"");
    }

    #[test]
    fn fuzz_only_decode_errors() {
        // xorshift64*, deterministic.
        let mut s = 0x00c0_ffee_u64;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let alphabet = b"{}[]\":,\\ 0123456789.eE-+truefalsnul\0abc\n";
        let seeds = [
            FULL.to_owned(),
            with(&nest(30)),
            with(r#","x":"\u00e9\ud83e\udd80""#),
        ];
        for round in 0..20_000u32 {
            let doc: Vec<u8> = if round % 3 == 0 {
                let n = (next() % 64) as usize;
                (0..n)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                let mut d = seeds[(next() % 3) as usize].clone().into_bytes();
                for _ in 0..1 + next() % 3 {
                    if d.is_empty() {
                        break;
                    }
                    let i = (next() % d.len() as u64) as usize;
                    match next() % 4 {
                        0 => d[i] = alphabet[(next() % alphabet.len() as u64) as usize],
                        1 => {
                            d.remove(i);
                        }
                        2 => d.truncate(i),
                        _ => d[i] = next() as u8,
                    }
                }
                d
            };
            if let Err(e) = decode(&doc, 65536, 32) {
                assert!(e.decode_reason().is_some(), "{e}");
            }
        }
    }
}
