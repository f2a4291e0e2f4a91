//! Pure-Rust unit tests (no Python interpreter needed). Test vectors come
//! from the crate's own encoder or are written by hand.

use crate::decode::{decode, decode_value, Reader, ValueSink};
use crate::encode::{write_long, EncPlan};
use crate::errors::{DecodeReason, EncodeReason, SluiceErr};
use crate::framing::{parse_header, write_header};
use crate::resolve::Plan;
use crate::schema::SchemaIr;
use crate::value::Value;

fn ir(s: &str) -> SchemaIr {
    SchemaIr::parse(s).unwrap_or_else(|e| panic!("schema {s}: {e}"))
}

fn plan(w: &str, r: &str) -> Plan {
    Plan::compile(&ir(w), &ir(r)).unwrap_or_else(|e| panic!("compile: {e}"))
}

fn enc(schema: &str, v: &Value) -> Vec<u8> {
    EncPlan::compile(ir(schema))
        .unwrap()
        .encode_value(v)
        .unwrap_or_else(|e| panic!("encode: {e}"))
}

fn enc_err(schema: &str, v: &Value) -> SluiceErr {
    EncPlan::compile(ir(schema))
        .unwrap()
        .encode_value(v)
        .expect_err("encode should fail")
}

/// Encode `v` with `w`, read it back as `r`.
fn evolve(w: &str, r: &str, v: &Value) -> Value {
    let bytes = enc(w, v);
    decode_value(&plan(w, r), &bytes).unwrap_or_else(|e| panic!("decode: {e}"))
}

fn reason(e: &SluiceErr) -> DecodeReason {
    e.decode_reason()
        .unwrap_or_else(|| panic!("not a decode error: {e}"))
}

fn long(x: i64) -> Value {
    Value::Long(x)
}

fn s(x: &str) -> Value {
    Value::str(x)
}

// ------------------------------------------------------------ varint / zigzag

#[test]
fn zigzag_known_encodings() {
    let cases: &[(i64, &[u8])] = &[
        (0, &[0x00]),
        (-1, &[0x01]),
        (1, &[0x02]),
        (-2, &[0x03]),
        (2, &[0x04]),
        (-64, &[0x7f]),
        (64, &[0x80, 0x01]),
        (8192, &[0x80, 0x80, 0x01]),
        (
            i64::MAX,
            &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        (
            i64::MIN,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
    ];
    for (v, bytes) in cases {
        let mut out = Vec::new();
        write_long(&mut out, *v);
        assert_eq!(&out[..], *bytes, "encode {v}");
        let mut r = Reader::new(bytes, 0);
        assert_eq!(r.read_long().unwrap(), *v, "decode {v}");
        assert_eq!(r.pos(), bytes.len());
    }
}

#[test]
fn varint_roundtrip_many() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut vals = vec![
        0i64,
        1,
        -1,
        i32::MAX as i64,
        i32::MIN as i64,
        i64::MAX,
        i64::MIN,
    ];
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        vals.push((x as i64) >> (x % 64));
    }
    let mut out = Vec::new();
    for v in &vals {
        write_long(&mut out, *v);
    }
    let mut r = Reader::new(&out, 0);
    for v in &vals {
        assert_eq!(r.read_long().unwrap(), *v);
    }
    assert_eq!(r.remaining(), 0);
}

#[test]
fn varint_overflow_and_truncation() {
    // 10th byte may only carry one bit.
    let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    let e = Reader::new(&over, 0).read_long().unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TypeMismatch);
    let eleven = [0xffu8; 11];
    assert_eq!(
        reason(&Reader::new(&eleven, 0).read_long().unwrap_err()),
        DecodeReason::TypeMismatch
    );
    let e = Reader::new(&[0x80, 0x80], 0).read_long().unwrap_err();
    assert_eq!(reason(&e), DecodeReason::Truncated);
    // int out of 32-bit range
    let mut out = Vec::new();
    write_long(&mut out, 1 << 40);
    assert_eq!(
        reason(&Reader::new(&out, 0).read_int().unwrap_err()),
        DecodeReason::TypeMismatch
    );
}

// ------------------------------------------------------------ framing

#[test]
fn framing_errors() {
    let e = parse_header(b"").unwrap_err();
    assert_eq!(reason(&e), DecodeReason::Empty);
    let e = parse_header(b"\x01\x00\x00\x00\x01").unwrap_err();
    assert_eq!(reason(&e), DecodeReason::BadMagic);
    for n in 1..5 {
        let e = parse_header(&[0u8; 5][..n]).unwrap_err();
        assert_eq!(reason(&e), DecodeReason::Truncated, "len {n}");
    }
    let mut out = Vec::new();
    write_header(&mut out, 0xDEAD_BEEF);
    out.push(42);
    assert_eq!(parse_header(&out).unwrap(), (0xDEAD_BEEF, 5));
}

// ------------------------------------------------------------ schemas

const V1: &str = r#"{
  "type": "record", "name": "Reading", "namespace": "sluice.test",
  "fields": [
    {"name": "device", "type": "string"},
    {"name": "seq", "type": "int"},
    {"name": "temp", "type": "float"},
    {"name": "junk", "type": {"type": "array", "items": {"type": "record", "name": "Junk",
        "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": ["null", "bytes"]},
                   {"name": "c", "type": {"type": "map", "values": "double"}},
                   {"name": "d", "type": {"type": "fixed", "name": "F3", "size": 3}}]}}},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "LEGACY"]}},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "raw", "type": "string"}
  ]
}"#;

const V2: &str = r#"{
  "type": "record", "name": "Reading", "namespace": "sluice.test",
  "fields": [
    {"name": "device_id", "type": "string", "aliases": ["device"]},
    {"name": "seq", "type": "long"},
    {"name": "temp", "type": "double"},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "OTHER"], "default": "OTHER"}},
    {"name": "note", "type": ["string", "null"], "default": "n/a"},
    {"name": "raw", "type": "bytes"},
    {"name": "unit", "type": "string", "default": "C"},
    {"name": "loc", "type": {"type": "record", "name": "Loc", "fields": [
        {"name": "lat", "type": "double"}, {"name": "lon", "type": "double", "default": 2.5}]},
     "default": {"lat": 1.0}},
    {"name": "opt", "type": ["null", "Loc"], "default": null},
    {"name": "hist", "type": {"type": "array", "items": "int"}, "default": [1, 2]},
    {"name": "attrs", "type": {"type": "map", "values": "Kind"}, "default": {"x": "A"}},
    {"name": "blob", "type": "bytes", "default": "\u00ff\u0001"},
    {"name": "lvl", "type": "Kind", "default": "B"}
  ]
}"#;

fn v1_value(kind: &str, note: Option<&str>) -> Value {
    Value::record([
        ("device", s("dev-1")),
        ("seq", long(42)),
        ("temp", Value::Double(21.5)),
        (
            "junk",
            Value::Array(vec![
                Value::record([
                    ("a", long(-7)),
                    ("b", Value::Bytes(vec![1, 2, 3])),
                    ("c", Value::Map(vec![("k".into(), Value::Double(0.25))])),
                    ("d", Value::Bytes(b"xyz".to_vec())),
                ]),
                Value::record([
                    ("a", long(1 << 40)),
                    ("b", Value::Null),
                    ("c", Value::Map(vec![])),
                    ("d", Value::Bytes(b"abc".to_vec())),
                ]),
            ]),
        ),
        ("kind", Value::Enum(kind.into())),
        ("note", note.map(s).unwrap_or(Value::Null)),
        ("raw", s("héllo")),
    ])
}

#[test]
fn full_evolution_v1_to_v2() {
    let got = evolve(V1, V2, &v1_value("B", Some("hi")));
    let expected = Value::record([
        ("device_id", s("dev-1")),
        ("seq", long(42)),
        ("temp", Value::Double(21.5)),
        ("kind", Value::Enum("B".into())),
        ("note", s("hi")),
        ("raw", Value::Bytes("héllo".as_bytes().to_vec())),
        ("unit", s("C")),
        (
            "loc",
            Value::record([("lat", Value::Double(1.0)), ("lon", Value::Double(2.5))]),
        ),
        ("opt", Value::Null),
        ("hist", Value::Array(vec![long(1), long(2)])),
        (
            "attrs",
            Value::Map(vec![("x".into(), Value::Enum("A".into()))]),
        ),
        ("blob", Value::Bytes(vec![0xff, 0x01])),
        ("lvl", Value::Enum("B".into())),
    ]);
    assert_eq!(got, expected);
}

#[test]
fn enum_unknown_symbol_uses_reader_default() {
    let got = evolve(V1, V2, &v1_value("LEGACY", None));
    assert_eq!(got.field("kind"), Some(&Value::Enum("OTHER".into())));
    // union reorder: writer null branch → reader's null branch (second)
    assert_eq!(got.field("note"), Some(&Value::Null));
}

#[test]
fn enum_unknown_symbol_without_default_fails_only_when_seen() {
    let w = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
    let r = r#"{"type":"enum","name":"E","symbols":["C","A"]}"#;
    let p = plan(w, r);
    assert_eq!(
        decode_value(&p, &enc(w, &Value::Enum("A".into()))).unwrap(),
        Value::Enum("A".into())
    );
    assert_eq!(
        decode_value(&p, &enc(w, &Value::Enum("C".into()))).unwrap(),
        Value::Enum("C".into())
    );
    let e = decode_value(&p, &enc(w, &Value::Enum("B".into()))).unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TypeMismatch);
    assert!(e.to_string().contains("'B'"), "{e}");
    // enum index out of range
    let e = decode_value(&p, &[0x06]).unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TypeMismatch);
}

#[test]
fn added_field_without_default_is_a_compile_error() {
    let w = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    let r = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},
        {"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"b","type":"int"}]},"default":{"b":1}},
        {"name":"c","type":"string"}]}"#;
    let e = Plan::compile(&ir(w), &ir(r)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SluiceErr::Schema(_)));
    assert!(
        msg.contains("field 'c'") && msg.contains("no default"),
        "{msg}"
    );

    // nested path in the message
    let w = r#"{"type":"record","name":"R","fields":[{"name":"x","type":{"type":"record","name":"I","fields":[]}}]}"#;
    let r = r#"{"type":"record","name":"R","fields":[{"name":"x","type":{"type":"record","name":"I","fields":[{"name":"t","type":"int"}]}}]}"#;
    let msg = Plan::compile(&ir(w), &ir(r)).unwrap_err().to_string();
    assert!(msg.contains("field 'x.t'"), "{msg}");
}

#[test]
fn incompatible_types_are_compile_errors() {
    let rec =
        |t: &str| format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{t}}}]}}"#);
    for (w, r) in [
        (r#""long""#, r#""int""#),
        (r#""double""#, r#""float""#),
        (r#""string""#, r#""int""#),
        (
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"F","size":5}"#,
        ),
        (
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"G","size":4}"#,
        ),
        (
            r#"{"type":"enum","name":"E","symbols":["A"]}"#,
            r#"{"type":"enum","name":"G","symbols":["A"]}"#,
        ),
        (r#""string""#, r#"["null","int"]"#),
    ] {
        let e = Plan::compile(&ir(&rec(w)), &ir(&rec(r))).unwrap_err();
        assert!(e.to_string().contains("field 'f'"), "{w} -> {r}: {e}");
    }
    // record name mismatch
    let a = r#"{"type":"record","name":"A","fields":[]}"#;
    let b = r#"{"type":"record","name":"B","fields":[]}"#;
    assert!(Plan::compile(&ir(a), &ir(b)).is_err());
}

#[test]
fn record_and_field_aliases() {
    let w = r#"{"type":"record","name":"Old","namespace":"n","fields":[{"name":"x","type":"int"},{"name":"gone","type":"string"}]}"#;
    let r = r#"{"type":"record","name":"New","namespace":"n","aliases":["Old"],"fields":[{"name":"y","type":"long","aliases":["x"]}]}"#;
    let v = Value::record([("x", long(5)), ("gone", s("bye"))]);
    assert_eq!(evolve(w, r, &v), Value::record([("y", long(5))]));
    // fully-qualified alias from another namespace
    let r2 = r#"{"type":"record","name":"New","namespace":"m","aliases":["n.Old"],"fields":[{"name":"y","type":"long","aliases":["x"]}]}"#;
    assert_eq!(evolve(w, r2, &v), Value::record([("y", long(5))]));
}

#[test]
fn promotions() {
    let cases: &[(&str, &str, Value, Value)] = &[
        ("int", "long", long(-5), long(-5)),
        ("int", "float", long(7), Value::Double(7.0)),
        (
            "int",
            "double",
            long(i32::MIN as i64),
            Value::Double(i32::MIN as f64),
        ),
        (
            "long",
            "float",
            long(1 << 40),
            Value::Double((1u64 << 40) as f64),
        ),
        ("long", "double", long(-3), Value::Double(-3.0)),
        ("float", "double", Value::Double(0.5), Value::Double(0.5)),
        (
            "string",
            "bytes",
            s("é"),
            Value::Bytes("é".as_bytes().to_vec()),
        ),
        ("bytes", "string", Value::Bytes(b"ok".to_vec()), s("ok")),
    ];
    for (w, r, v, want) in cases {
        let (w, r) = (format!("\"{w}\""), format!("\"{r}\""));
        assert_eq!(&evolve(&w, &r, v), want, "{w} -> {r}");
    }
    // bytes → string with invalid UTF-8 is a decode-time type-mismatch
    let p = plan(r#""bytes""#, r#""string""#);
    let e = decode_value(&p, &enc(r#""bytes""#, &Value::Bytes(vec![0xff, 0xfe]))).unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TypeMismatch);
}

#[test]
fn unions() {
    // writer union → reader union reordered, with promotion
    let w = r#"["null","int","string"]"#;
    let r = r#"["string","double","null"]"#;
    assert_eq!(evolve(w, r, &long(3)), Value::Double(3.0));
    assert_eq!(evolve(w, r, &s("x")), s("x"));
    assert_eq!(evolve(w, r, &Value::Null), Value::Null);
    // writer non-union → reader union: exact branch preferred over promotion
    assert_eq!(evolve(r#""int""#, r#"["long","int"]"#, &long(9)), long(9));
    assert_eq!(
        evolve(r#""string""#, r#"["bytes","string"]"#, &s("s")),
        s("s")
    );
    assert_eq!(
        evolve(r#""string""#, r#"["bytes","null"]"#, &s("s")),
        Value::Bytes(b"s".to_vec())
    );
    // writer union → reader non-union: unmatched branch fails only when seen
    let p = plan(r#"["null","string"]"#, r#""string""#);
    assert_eq!(
        decode_value(&p, &enc(r#"["null","string"]"#, &s("ok"))).unwrap(),
        s("ok")
    );
    let e = decode_value(&p, &enc(r#"["null","string"]"#, &Value::Null)).unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TypeMismatch);
    // union index out of range / negative
    assert_eq!(
        reason(&decode_value(&p, &[0x04]).unwrap_err()),
        DecodeReason::TypeMismatch
    );
    assert_eq!(
        reason(&decode_value(&p, &[0x01]).unwrap_err()),
        DecodeReason::TypeMismatch
    );
}

#[test]
fn union_of_records_by_name() {
    let w = r#"["null",{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]},
               {"type":"record","name":"B","fields":[{"name":"y","type":"string"}]}]"#;
    let r = r#"[{"type":"record","name":"B","fields":[{"name":"y","type":"string"},{"name":"z","type":"int","default":0}]},
               {"type":"record","name":"A","fields":[{"name":"x","type":"long"}]}, "null"]"#;
    assert_eq!(
        evolve(w, r, &Value::record([("x", long(1))])),
        Value::record([("x", long(1))])
    );
    assert_eq!(
        evolve(w, r, &Value::record([("y", s("q"))])),
        Value::record([("y", s("q")), ("z", long(0))])
    );
}

#[test]
fn nested_records_and_removed_fields_are_skipped() {
    let w = r#"{"type":"record","name":"Outer","fields":[
        {"name":"skip_rec","type":{"type":"record","name":"In","fields":[
            {"name":"a","type":{"type":"array","items":{"type":"map","values":["null","string",
                {"type":"record","name":"In2","fields":[{"name":"v","type":"int"}]}]}}},
            {"name":"f","type":{"type":"fixed","name":"F8","size":8}},
            {"name":"b","type":"boolean"},{"name":"d","type":"double"},{"name":"fl","type":"float"},
            {"name":"n","type":"null"},{"name":"e","type":{"type":"enum","name":"E","symbols":["P","Q"]}}]}},
        {"name":"keep","type":"In2"},
        {"name":"tail","type":"string"}]}"#;
    let r = r#"{"type":"record","name":"Outer","fields":[
        {"name":"tail","type":"string"},
        {"name":"keep","type":{"type":"record","name":"In2","fields":[{"name":"v","type":"long"}]}}]}"#;
    let inner = Value::record([
        (
            "a",
            Value::Array(vec![
                Value::Map(vec![("k".into(), s("v")), ("n".into(), Value::Null)]),
                Value::Map(vec![("r".into(), Value::record([("v", long(3))]))]),
            ]),
        ),
        ("f", Value::Bytes(vec![9; 8])),
        ("b", Value::Boolean(true)),
        ("d", Value::Double(1.0)),
        ("fl", Value::Double(2.0)),
        ("n", Value::Null),
        ("e", Value::Enum("Q".into())),
    ]);
    let v = Value::record([
        ("skip_rec", inner),
        ("keep", Value::record([("v", long(-1))])),
        ("tail", s("end")),
    ]);
    assert_eq!(
        evolve(w, r, &v),
        Value::record([
            ("tail", s("end")),
            ("keep", Value::record([("v", long(-1))]))
        ])
    );
}

/// Hand-written array/map blocks with negative counts (count, byte size).
#[test]
fn negative_block_counts() {
    // record { arr: array<int>, m: map<long>, skipped: array<string> } read as { arr, m }
    let w = r#"{"type":"record","name":"R","fields":[
        {"name":"arr","type":{"type":"array","items":"int"}},
        {"name":"m","type":{"type":"map","values":"long"}},
        {"name":"skipped","type":{"type":"array","items":"string"}}]}"#;
    let r = r#"{"type":"record","name":"R","fields":[
        {"name":"arr","type":{"type":"array","items":"long"}},
        {"name":"m","type":{"type":"map","values":"double"}}]}"#;
    let mut b = Vec::new();
    // arr: block of -2 items (size 2 bytes): 1, 2 ; then block of 1 item: 3 ; end
    write_long(&mut b, -2);
    write_long(&mut b, 2);
    write_long(&mut b, 1);
    write_long(&mut b, 2);
    write_long(&mut b, 1);
    write_long(&mut b, 3);
    b.push(0);
    // m: block of -1 (size 3): "k" -> 5 ; end
    write_long(&mut b, -1);
    write_long(&mut b, 3);
    write_long(&mut b, 1);
    b.push(b'k');
    write_long(&mut b, 5);
    b.push(0);
    // skipped: block of -2 items with byte size 4: "a", "b" (skipped by size)
    write_long(&mut b, -2);
    write_long(&mut b, 4);
    write_long(&mut b, 1);
    b.push(b'a');
    write_long(&mut b, 1);
    b.push(b'b');
    // then a positive block of 1: "c"
    write_long(&mut b, 1);
    write_long(&mut b, 1);
    b.push(b'c');
    b.push(0);
    let got = decode_value(&plan(w, r), &b).unwrap();
    assert_eq!(
        got,
        Value::record([
            ("arr", Value::Array(vec![long(1), long(2), long(3)])),
            ("m", Value::Map(vec![("k".into(), Value::Double(5.0))])),
        ])
    );
    // Also readable with the writer schema itself.
    let got = decode_value(&plan(w, w), &b).unwrap();
    assert_eq!(
        got.field("skipped"),
        Some(&Value::Array(vec![s("a"), s("b"), s("c")]))
    );
    // negative block size is malformed
    let mut bad = Vec::new();
    write_long(&mut bad, -1);
    write_long(&mut bad, -4);
    let e = decode_value(
        &plan(
            r#"{"type":"array","items":"int"}"#,
            r#"{"type":"array","items":"int"}"#,
        ),
        &bad,
    )
    .unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TypeMismatch);
}

#[test]
fn huge_block_counts_do_not_allocate() {
    let a = r#"{"type":"array","items":"int"}"#;
    let mut b = Vec::new();
    write_long(&mut b, i64::MAX);
    assert_eq!(
        reason(&decode_value(&plan(a, a), &b).unwrap_err()),
        DecodeReason::Truncated
    );
    let n = r#"{"type":"array","items":"null"}"#;
    assert_eq!(
        reason(&decode_value(&plan(n, n), &b).unwrap_err()),
        DecodeReason::TypeMismatch
    );
    let mut b = Vec::new();
    write_long(&mut b, i64::MIN);
    assert_eq!(
        reason(&decode_value(&plan(a, a), &b).unwrap_err()),
        DecodeReason::TypeMismatch
    );
}

const LIST: &str = r#"{"type":"record","name":"Node","fields":[
    {"name":"val","type":"int"},
    {"name":"next","type":["null","Node"],"default":null}]}"#;

const LIST_V2: &str = r#"{"type":"record","name":"Node","fields":[
    {"name":"val","type":"long"},
    {"name":"label","type":"string","default":"-"},
    {"name":"next","type":["null","Node"],"default":null}]}"#;

fn list(vals: &[i64]) -> Value {
    vals.iter().rev().fold(Value::Null, |next, v| {
        Value::record([("val", long(*v)), ("next", next)])
    })
}

#[test]
fn recursive_schemas() {
    let v = list(&[1, 2, 3]);
    assert_eq!(evolve(LIST, LIST, &v), v);
    let got = evolve(LIST, LIST_V2, &v);
    let want = [1, 2, 3].iter().rev().fold(Value::Null, |next, x| {
        Value::record([("val", long(*x)), ("label", s("-")), ("next", next)])
    });
    assert_eq!(got, want);
    // skipping a recursive writer field
    let w = format!(
        r#"{{"type":"record","name":"Top","fields":[{{"name":"l","type":{LIST}}},{{"name":"x","type":"int"}}]}}"#
    );
    let r = r#"{"type":"record","name":"Top","fields":[{"name":"x","type":"int"}]}"#;
    assert_eq!(
        evolve(&w, r, &Value::record([("l", v), ("x", long(8))])),
        Value::record([("x", long(8))])
    );
}

/// Run `f` on a thread with a big stack: unoptimised (debug) frames are far
/// larger than release ones (~300 B per nesting level in release).
fn with_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn nested_list_bytes(depth: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..depth {
        b.push(0x02); // val = 1
        b.push(0x02); // union branch 1 = Node
    }
    b.push(0x02);
    b.push(0x00); // last node: next = null
    b
}

#[test]
fn deep_recursion_is_bounded() {
    with_big_stack(|| {
        use crate::decode::MAX_DEPTH;
        // Just below the limit decodes ...
        let ok = decode_value(&plan(LIST, LIST_V2), &nested_list_bytes(MAX_DEPTH - 1));
        assert!(ok.is_ok(), "{:?}", ok.err());
        // ... above it fails cleanly (no stack overflow), decoding and skipping.
        for depth in [MAX_DEPTH, 100_000] {
            let b = nested_list_bytes(depth);
            let e = decode_value(&plan(LIST, LIST), &b).unwrap_err();
            assert_eq!(reason(&e), DecodeReason::TypeMismatch);
            let top = format!(
                r#"{{"type":"record","name":"T","fields":[{{"name":"l","type":{LIST}}}]}}"#
            );
            let e = decode_value(
                &plan(&top, r#"{"type":"record","name":"T","fields":[]}"#),
                &b,
            )
            .unwrap_err();
            assert_eq!(reason(&e), DecodeReason::TypeMismatch);
        }
    });
}

// ------------------------------------------------------------ truncation / trailing

#[test]
fn every_truncation_is_truncated() {
    for (w, r, v) in [
        (V1, V2, v1_value("B", Some("note"))),
        (V1, V1, v1_value("LEGACY", None)),
        (LIST, LIST_V2, list(&[5, -6, 700_000])),
    ] {
        let full = enc(w, &v);
        let p = plan(w, r);
        assert!(decode_value(&p, &full).is_ok());
        for cut in 0..full.len() {
            let e = decode_value(&p, &full[..cut]).expect_err("prefix must fail");
            assert_eq!(reason(&e), DecodeReason::Truncated, "cut at {cut}: {e}");
        }
        // framed
        let mut framed = Vec::new();
        write_header(&mut framed, 3);
        framed.extend_from_slice(&full);
        for cut in 1..framed.len() {
            let r = parse_header(&framed[..cut])
                .and_then(|(_, off)| decode(&p, &framed[..cut], off, &mut ValueSink));
            assert_eq!(
                reason(&r.unwrap_err()),
                DecodeReason::Truncated,
                "framed cut at {cut}"
            );
        }
    }
}

#[test]
fn trailing_bytes() {
    let mut b = enc(V1, &v1_value("A", None));
    let n = b.len();
    b.extend_from_slice(&[0, 0]);
    let e = decode_value(&plan(V1, V2), &b).unwrap_err();
    assert_eq!(reason(&e), DecodeReason::TrailingBytes);
    match e {
        SluiceErr::Decode(d) => assert_eq!(d.offset, Some(n)),
        _ => unreachable!(),
    }
}

#[test]
fn malformed_inputs_never_panic() {
    let plans = [plan(V1, V2), plan(V1, V1), plan(LIST, LIST_V2)];
    let valid = enc(V1, &v1_value("B", Some("x")));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut buf = valid.clone();
        // flip a few random bytes, sometimes truncate / extend
        for _ in 0..(1 + next() % 4) {
            let pos = (next() as usize) % buf.len();
            buf[pos] = next() as u8;
        }
        if i % 3 == 0 {
            buf.truncate((next() as usize) % (buf.len() + 1));
        }
        for p in &plans {
            let _ = decode_value(p, &buf);
        }
        let random: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
        for p in &plans {
            let _ = decode_value(p, &random);
        }
    }
}

#[test]
fn error_offsets_and_paths() {
    // invalid UTF-8 in field `raw`: offset points at the string's length prefix
    let w = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"raw","type":"string"}]}"#;
    let b = [0x02, 0x04, 0xff, 0xfe];
    let e = decode_value(&plan(w, w), &b).unwrap_err();
    match &e {
        SluiceErr::Decode(d) => {
            assert_eq!(d.reason, DecodeReason::TypeMismatch);
            assert_eq!(d.offset, Some(1));
            assert_eq!(d.path, "raw");
        }
        _ => panic!("{e}"),
    }
    let e = e.shift_offset(5).with_schema_id(9);
    assert!(
        e.to_string().contains("offset 6") && e.to_string().contains("schema id 9"),
        "{e}"
    );
    // bad boolean byte
    let p = plan(r#""boolean""#, r#""boolean""#);
    assert_eq!(
        reason(&decode_value(&p, &[2]).unwrap_err()),
        DecodeReason::TypeMismatch
    );
    // negative string length
    let p = plan(r#""string""#, r#""string""#);
    assert_eq!(
        reason(&decode_value(&p, &[0x01]).unwrap_err()),
        DecodeReason::TypeMismatch
    );
}

// ------------------------------------------------------------ encoder

#[test]
fn encode_decode_roundtrip() {
    for v in [v1_value("A", None), v1_value("LEGACY", Some("ü"))] {
        assert_eq!(evolve(V1, V1, &v), v);
    }
    let v = list(&[i32::MAX as i64, i32::MIN as i64, 0]);
    assert_eq!(evolve(LIST, LIST, &v), v);
    // positional records
    let schema = r#"{"type":"record","name":"P","fields":[{"name":"a","type":"int"},{"name":"b","type":"string"}]}"#;
    let by_pos = enc(schema, &Value::Array(vec![long(1), s("x")]));
    let by_name = enc(schema, &Value::record([("b", s("x")), ("a", long(1))]));
    assert_eq!(by_pos, by_name);
    assert_eq!(by_pos, vec![0x02, 0x02, b'x']);
}

#[test]
fn encoder_uses_defaults_and_reports_paths() {
    let schema = r#"{"type":"record","name":"Msg","fields":[
        {"name":"id","type":"long"},
        {"name":"reading","type":{"type":"record","name":"Reading","fields":[
            {"name":"temperature_c","type":"float"},
            {"name":"tags","type":{"type":"map","values":"int"},"default":{}}]}},
        {"name":"kind","type":{"type":"enum","name":"K","symbols":["A","B"]},"default":"B"},
        {"name":"opt","type":["null","int","long","double","string"],"default":null},
        {"name":"small","type":"int","default":0}]}"#;
    let ok = enc(
        schema,
        &Value::record([
            ("id", long(1)),
            (
                "reading",
                Value::record([("temperature_c", Value::Double(1.5))]),
            ),
        ]),
    );
    let back = decode_value(&plan(schema, schema), &ok).unwrap();
    assert_eq!(back.field("kind"), Some(&Value::Enum("B".into())));
    assert_eq!(back.field("opt"), Some(&Value::Null));
    assert_eq!(
        back.field("reading").and_then(|r| r.field("tags")),
        Some(&Value::Map(vec![]))
    );

    let e = enc_err(
        schema,
        &Value::record([
            ("id", long(1)),
            ("reading", Value::record([("temperature_c", s("hot"))])),
        ]),
    );
    match &e {
        SluiceErr::Encode(f) => {
            assert_eq!(f.reason, EncodeReason::WrongType);
            assert_eq!(f.path, "reading.temperature_c");
        }
        _ => panic!("{e}"),
    }
    let e = enc_err(schema, &Value::record([("id", long(1))]));
    assert_eq!(e.encode_reason(), Some(EncodeReason::MissingField));
    let base = |extra: (&str, Value)| {
        Value::record([
            ("id", long(1)),
            (
                "reading",
                Value::record([("temperature_c", Value::Double(0.0))]),
            ),
            extra,
        ])
    };
    assert_eq!(
        enc_err(schema, &base(("kind", s("Z")))).encode_reason(),
        Some(EncodeReason::UnknownSymbol)
    );
    assert_eq!(
        enc_err(schema, &base(("small", long(1 << 33)))).encode_reason(),
        Some(EncodeReason::OutOfRange)
    );
    let e = enc_err(
        schema,
        &Value::record([
            ("id", long(1)),
            (
                "reading",
                Value::record([
                    ("temperature_c", long(1)),
                    ("tags", Value::Map(vec![("t".into(), s("x"))])),
                ]),
            ),
        ]),
    );
    match &e {
        SluiceErr::Encode(f) => assert_eq!(f.path, "reading.tags[t]"),
        _ => panic!("{e}"),
    }

    // union branch choice: int fits "int"; > i32 goes to "long"; float → double; str → string
    let p = plan(schema, schema);
    for (v, want_branch) in [
        (long(5), 1u8),
        (long(1 << 40), 2),
        (Value::Double(0.5), 3),
        (s("x"), 4),
        (Value::Null, 0),
    ] {
        let b = enc(schema, &base(("opt", v.clone())));
        let back = decode_value(&p, &b).unwrap();
        assert_eq!(back.field("opt"), Some(&v));
        // find the union index: id(1) + float(4) + tags(1) + kind(1) = 8th byte
        assert_eq!(b[1 + 4 + 1 + 1], want_branch * 2, "{v:?}");
    }
}

#[test]
fn schema_errors() {
    assert!(matches!(
        SchemaIr::parse("{not json"),
        Err(SluiceErr::Schema(_))
    ));
    assert!(matches!(
        SchemaIr::parse(r#"{"type":"record","name":"R"}"#),
        Err(SluiceErr::Schema(_))
    ));
    // invalid default in the encoder schema is reported with the field name
    let bad = r#"{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]},"default":"Z"}]}"#;
    if let Ok(ir) = SchemaIr::parse(bad) {
        let e = EncPlan::compile(ir).unwrap_err();
        assert!(e.to_string().contains("'e'"), "{e}");
    }
}

#[test]
fn logical_types_keep_underlying_values() {
    let schema = r#"{"type":"record","name":"L","fields":[
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"d","type":{"type":"int","logicalType":"date"}},
        {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}},
        {"name":"u","type":{"type":"string","logicalType":"uuid"}},
        {"name":"fd","type":{"type":"fixed","name":"D","size":2,"logicalType":"decimal","precision":3}}]}"#;
    let v = Value::record([
        ("ts", long(1_700_000_000_000)),
        ("d", long(19000)),
        ("dec", Value::Bytes(vec![0x30, 0x39])),
        ("u", s("123e4567-e89b-12d3-a456-426614174000")),
        ("fd", Value::Bytes(vec![1, 2])),
    ]);
    assert_eq!(evolve(schema, schema, &v), v);
    // timestamp-millis reader over a plain long writer
    assert_eq!(
        evolve(
            r#""long""#,
            r#"{"type":"long","logicalType":"timestamp-millis"}"#,
            &long(5)
        ),
        long(5)
    );
}

// ------------------------------------------------------------ data quality

mod quality_checks {
    use crate::errors::SluiceErr;
    use crate::quality::{py_float_repr, translate_py_regex, Cell, Checker};

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn suite(exps: &str) -> String {
        format!(r#"{{"name": "t", "expectations": [{exps}], "meta": {{}}}}"#)
    }

    fn checker(exps: &str) -> Checker {
        Checker::compile(&suite(exps), &cols(&["x", "s"]))
            .unwrap_or_else(|e| panic!("compile: {e}"))
    }

    fn compile_err(exps: &str) -> String {
        match Checker::compile(&suite(exps), &cols(&["x", "s"])) {
            Err(SluiceErr::QualitySuite(m)) => m,
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("should not compile: {exps}"),
        }
    }

    /// Pass/fail of the single expectation of `c` on `x = v`.
    fn passes(c: &Checker, v: Cell<'_>) -> bool {
        let mut out = Vec::new();
        c.failures(&[v, Cell::Null], &mut out);
        out.is_empty()
    }

    #[test]
    fn nulls_only_fail_the_null_expectations() {
        let nn = checker(r#"{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}"#);
        assert!(!passes(&nn, Cell::Null));
        assert!(!passes(&nn, Cell::float(f64::NAN)));
        assert!(passes(&nn, Cell::Float(f64::INFINITY)));
        assert!(passes(&nn, Cell::Str("")));
        let n = checker(r#"{"type": "expect_column_values_to_be_null", "kwargs": {"column": "x"}}"#);
        assert!(passes(&n, Cell::float(f64::NAN)));
        assert!(!passes(&n, Cell::Int(0)));
        let b = checker(
            r#"{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 1}}"#,
        );
        assert!(passes(&b, Cell::Null), "column-map expectations ignore nulls");
    }

    #[test]
    fn between_bounds_strictness_and_mixed_numbers() {
        let b = checker(
            r#"{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 1.5, "strict_max": true}}"#,
        );
        assert!(passes(&b, Cell::Int(0)));
        assert!(passes(&b, Cell::Float(-0.0)));
        assert!(passes(&b, Cell::Bool(true)), "True compares as 1");
        assert!(!passes(&b, Cell::Float(1.5)), "strict max");
        assert!(passes(&b, Cell::Float(1.4999999999999998)));
        assert!(!passes(&b, Cell::Int(2)));
        assert!(!passes(&b, Cell::Float(f64::INFINITY)));
        assert!(!passes(&b, Cell::Float(f64::NEG_INFINITY)));
        assert!(!passes(&b, Cell::Str("1")), "str vs numeric bounds cannot compare");
        let big = checker(
            r#"{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "max_value": 9007199254740992.0}}"#,
        );
        // Python compares int and float exactly: 2**53 + 1 > 2.0**53.
        assert!(passes(&big, Cell::Int(9_007_199_254_740_992)));
        assert!(!passes(&big, Cell::Int(9_007_199_254_740_993)));
        let m = compile_err(
            r#"{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": "b", "max_value": "d"}}"#,
        );
        assert!(m.contains("must be a number"), "{m}");
    }

    #[test]
    fn sets_use_python_equality() {
        let c = checker(
            r#"{"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "x", "value_set": [1, "a", 2.5, 1e300, null]}}"#,
        );
        for v in [Cell::Int(1), Cell::Float(1.0), Cell::Bool(true), Cell::Str("a"), Cell::Float(2.5), Cell::Float(1e300)] {
            assert!(passes(&c, v.clone()), "{v:?}");
        }
        for v in [Cell::Int(0), Cell::Str("1"), Cell::Str("A"), Cell::Float(2.4), Cell::Other(Some("a".into()))] {
            assert!(!passes(&c, v.clone()), "{v:?}");
        }
        let z = checker(
            r#"{"type": "expect_column_values_to_not_be_in_set", "kwargs": {"column": "x", "value_set": [0]}}"#,
        );
        assert!(!passes(&z, Cell::Float(-0.0)));
        assert!(!passes(&z, Cell::Bool(false)));
        assert!(passes(&z, Cell::Str("0")));
    }

    #[test]
    fn regex_is_search_on_str_of_the_value() {
        let c = checker(
            r#"{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "^dev-[0-9]{4}$"}}"#,
        );
        assert!(passes(&c, Cell::Str("dev-0007")));
        assert!(passes(&c, Cell::Str("dev-0007\n")), "Python's $ matches before a final newline");
        assert!(!passes(&c, Cell::Str("dev-0007\n\n")));
        assert!(!passes(&c, Cell::Str("xdev-0007")));
        let t = checker(
            r#"{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "x", "regex": "e\\+|^True"}}"#,
        );
        assert!(passes(&t, Cell::Float(1e16)), "str(1e16) == '1e+16'");
        assert!(!passes(&t, Cell::Float(1e15)));
        assert!(passes(&t, Cell::Bool(true)));
        let n = checker(
            r#"{"type": "expect_column_values_to_not_match_regex", "kwargs": {"column": "x", "regex": "a"}}"#,
        );
        assert!(!passes(&n, Cell::Str("banana")));
        assert!(passes(&n, Cell::Str("")));
        assert!(!passes(&n, Cell::Other(None)), "no str(v): unexpected");
    }

    #[test]
    fn lengths_count_code_points_of_str() {
        let c = checker(
            r#"{"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "x", "min_value": 1, "max_value": 3, "strict_max": true}}"#,
        );
        assert!(passes(&c, Cell::Str("éé")));
        assert!(!passes(&c, Cell::Str("")));
        assert!(!passes(&c, Cell::Str("abc")));
        assert!(passes(&c, Cell::Int(-1)));
        assert!(!passes(&c, Cell::Bool(true)), "len('True') == 4");
        let e = checker(
            r#"{"type": "expect_column_value_lengths_to_equal", "kwargs": {"column": "x", "value": 3}}"#,
        );
        assert!(passes(&e, Cell::Float(f64::INFINITY)), "len('inf') == 3");
        assert!(passes(&e, Cell::Str("😀😀😀")));
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-2.5e300, "-2.5e+300"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (12.345, "12.345"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn regex_translation_accepts_and_rejects() {
        for ok in ["^a$", "a$|^b", "(a|b$)", "[a-c-e]", "[]a]", "x{2,}", "x{,2}", "{", "a{x}", "\\.\\$", "(?P<n>a)", "(?:a)*?", "\\u00e9", ""] {
            translate_py_regex(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in ["\\d", "[\\w]", "\\bx", "(?i)a", "(?=a)", "(a)\\1", "a$b", "(a$)+", "a**", "*a", "[[a]", "[a--b]", "[a&&b]", "a*+", "(a", "a)", "[a", "\\q", "\\0"] {
            assert!(translate_py_regex(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn compile_errors_name_the_expectation() {
        let m = compile_err(r#"{"type": "expect_column_values_to_be_fancy", "kwargs": {"column": "x"}}"#);
        assert!(m.contains("expect_column_values_to_be_fancy(x)") && m.contains("unsupported expectation type"), "{m}");
        let m = compile_err(r#"{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nope"}}"#);
        assert!(m.contains("unknown column 'nope'"), "{m}");
        let m = compile_err(r#"{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "s", "regex": "\\d+"}, "meta": {"name": "digits"}}"#);
        assert!(m.contains("'digits'") && m.contains("\\d"), "{m}");
        let m = compile_err(r#"{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x"}}"#);
        assert!(m.contains("cannot both be null"), "{m}");
        let m = compile_err(r#"{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 2, "max_value": 1}}"#);
        assert!(m.contains("greater"), "{m}");
        let m = compile_err(r#"{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x", "row_condition": "a>1"}}"#);
        assert!(m.contains("row_condition"), "{m}");
        let m = compile_err(r#"{"type": "expect_column_values_to_be_unique", "kwargs": {"column": "x"}, "meta": {"blocking": true}}"#);
        assert!(m.contains("cannot be blocking"), "{m}");
        let m = compile_err(
            r#"{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}, {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}"#,
        );
        assert!(m.contains("used twice"), "{m}");
        assert!(matches!(Checker::compile("[]", &cols(&["x"])), Err(SluiceErr::QualitySuite(_))));
        assert!(matches!(Checker::compile("{", &cols(&["x"])), Err(SluiceErr::QualitySuite(_))));
    }

    #[test]
    fn names_blocking_and_audit_only() {
        let c = checker(
            r#"{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}, "meta": {"blocking": true}},
               {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "s", "value_set": ["a"], "mostly": 0.5}, "meta": {"name": "s-known"}},
               {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "x"}}"#,
        );
        let names: Vec<_> = c.expectations.iter().map(|e| (e.name.as_str(), e.blocking)).collect();
        assert_eq!(names, [("expect_column_values_to_not_be_null(x)", true), ("s-known", false)]);
        assert_eq!(c.audit_only[0].name, "expect_column_values_to_be_unique(x)");
        let mut out = Vec::new();
        c.failures(&[Cell::Null, Cell::Str("b")], &mut out);
        assert_eq!(out, [0, 1]);
    }
}
