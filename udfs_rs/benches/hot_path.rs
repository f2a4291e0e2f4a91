//! Criterion micro-benchmarks of the per-record hot path (issue 7, item 2).
//!
//!     cd udfs_rs && cargo bench --bench hot_path -- --warm-up-time 0.5 --measurement-time 1
//!
//! `make bench` runs them with short times and `sluice bench` copies the estimates
//! (target/criterion/<group>/<bench>/new/estimates.json) into out/bench/results.json
//! next to the same calls timed from Python through pyo3 (sluice/bench_micro.py).
//! The scoring bench needs a model export: SLUICE_BENCH_MODEL names the JSON file
//! (`python -m sluice.bench_micro model PATH` writes one); without it, it is skipped.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use _native::decode::{decode, decode_value, Sink};
use _native::errors::SluiceErr;
use _native::resolve::RecordPlan;
use _native::encode::EncPlan;
use _native::features::{wave, Accumulator, Spec};
use _native::frames;
use _native::model::IsolationForest;
use _native::quality::{Cell, Checker};
use _native::resolve::Plan;
use _native::schema::SchemaIr;
use _native::value::Value;

const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");

fn schema(rel: &str) -> SchemaIr {
    let text = std::fs::read_to_string(format!("{SCHEMAS}/{rel}")).expect(rel);
    SchemaIr::parse(&text).expect(rel)
}

/// 256 samples of a 1.5 g, 120 Hz vibration plus a harmonic, at 2 kHz.
fn frame_samples() -> Vec<f32> {
    (0..256)
        .map(|i| {
            let t = i as f64 / 2000.0;
            (1.5 * (2.0 * std::f64::consts::PI * 120.0 * t).sin()
                + 0.3 * (2.0 * std::f64::consts::PI * 410.0 * t).sin()) as f32
        })
        .collect()
}

/// A sink that builds nothing (a checksum of what it is given): decode + resolve alone,
/// without the cost of the output objects (Python objects in the extension, Values here).
struct Checksum;

impl Sink for Checksum {
    type Out = u64;
    type Map = u64;
    fn null(&mut self) -> Result<u64, SluiceErr> { Ok(0) }
    fn boolean(&mut self, v: bool) -> Result<u64, SluiceErr> { Ok(v as u64) }
    fn long(&mut self, v: i64) -> Result<u64, SluiceErr> { Ok(v as u64) }
    fn double(&mut self, v: f64) -> Result<u64, SluiceErr> { Ok(v.to_bits()) }
    fn bytes(&mut self, v: &[u8]) -> Result<u64, SluiceErr> { Ok(v.len() as u64) }
    fn string(&mut self, v: &str) -> Result<u64, SluiceErr> { Ok(v.len() as u64) }
    fn enum_symbol(&mut self, _e: usize, idx: usize, _s: &str) -> Result<u64, SluiceErr> {
        Ok(idx as u64)
    }
    fn array(&mut self, items: Vec<u64>) -> Result<u64, SluiceErr> {
        Ok(items.iter().fold(0, |a, x| a.wrapping_add(*x)))
    }
    fn map_begin(&mut self) -> Result<u64, SluiceErr> { Ok(0) }
    fn map_insert(&mut self, m: &mut u64, _k: &str, v: u64) -> Result<(), SluiceErr> {
        *m = m.wrapping_add(v);
        Ok(())
    }
    fn map_end(&mut self, m: u64) -> Result<u64, SluiceErr> { Ok(m) }
    fn record(&mut self, _r: &RecordPlan, fields: Vec<u64>) -> Result<u64, SluiceErr> {
        Ok(fields.iter().fold(0, |a, x| a.wrapping_add(*x)))
    }
    fn default(&mut self, _v: &Value) -> Result<u64, SluiceErr> { Ok(1) }
}

fn avro(c: &mut Criterion) {
    // A telemetry v1 record (the oldest writer) resolved to the v3 reader: field
    // rename by alias, float→double promotion, defaults for the added fields.
    let writer = schema("telemetry-value/v1.avsc");
    let reader = schema("telemetry-value/v3.avsc");
    let plan = Plan::compile(&writer, &reader).unwrap();
    let body = EncPlan::compile(writer)
        .unwrap()
        .encode_value(&Value::record([
            ("event_id", Value::str("42-00001234")),
            ("device_id", Value::str("dev-0007")),
            ("ts", Value::Long(1_790_000_000_000)),
            ("temperature_c", Value::Double(51.25)),
            ("vibration_rms", Value::Double(1.5)),
            ("status", Value::Enum("OK".into())),
        ]))
        .unwrap();
    c.bench_function("avro/decode_resolve_v1_to_v3", |b| {
        b.iter(|| decode(black_box(&plan), black_box(&body), 0, &mut Checksum).unwrap())
    });
    c.bench_function("avro/decode_resolve_v1_to_v3_value_tree", |b| {
        b.iter(|| decode_value(black_box(&plan), black_box(&body)).unwrap())
    });
}

fn frame(c: &mut Criterion) {
    let bytes = frames::encode("dev-0007", 1_790_000_000_000, 2000, &frame_samples()).unwrap();
    c.bench_function("frames/decode_stats_256", |b| {
        b.iter(|| {
            let f = frames::decode(black_box(&bytes), 4096).unwrap();
            black_box(f.stats())
        })
    });
}

fn waveform(c: &mut Criterion) {
    let samples: Vec<f64> = frame_samples().iter().map(|&x| f64::from(x)).collect();
    let bands = [(0.0, 50.0), (50.0, 200.0), (200.0, 500.0)];
    let mut energy = [0.0f64; 3];
    c.bench_function("features/waveform_frame_256", |b| {
        b.iter(|| {
            wave::analyse(black_box(samples.iter().copied()), 2000.0, &bands, &mut energy)
                .unwrap()
        })
    });
    let spec = Arc::new(
        Spec::from_json(
            r#"["frames","rms","peak","crest","kurtosis",
                {"agg":"band","lo_hz":0,"hi_hz":50},{"agg":"band","lo_hz":50,"hi_hz":200},
                {"agg":"band","lo_hz":200,"hi_hz":500}]"#,
        )
        .unwrap(),
    );
    let mut acc = Accumulator::new(spec);
    c.bench_function("features/accumulator_update_frame_256", |b| {
        b.iter(|| acc.update_frame(black_box(samples.iter().copied()), 2000.0).unwrap())
    });
}

fn aggregators(c: &mut Criterion) {
    // The demo's temp_1m window: count, mean, std, min, max, ewma, slope, p95.
    let spec = Arc::new(
        Spec::from_json(
            r#"["count","mean","std","min","max",{"agg":"ewma","half_life_ms":30000},
                "slope",{"agg":"quantile","q":0.95}]"#,
        )
        .unwrap(),
    );
    let mut acc = Accumulator::new(spec.clone());
    let mut t = 1_790_000_000_000i64;
    c.bench_function("features/window_update_value", |b| {
        b.iter(|| {
            t += 100;
            acc.update(black_box(t), black_box(50.0 + (t % 17) as f64 * 0.1)).unwrap()
        })
    });
    let mut full = Accumulator::new(spec);
    for i in 0..600 {
        full.update(1_790_000_000_000 + i * 100, 50.0 + (i % 17) as f64 * 0.1).unwrap();
    }
    c.bench_function("features/window_result_600_values", |b| b.iter(|| black_box(full.result())));
}

fn quality(c: &mut Criterion) {
    let suite = std::fs::read_to_string(format!("{SCHEMAS}/expectations/telemetry.json")).unwrap();
    let columns: Vec<String> = [
        "event_id", "device_id", "ts", "temperature_c", "vibration_rms_g", "status",
        "humidity_pct", "firmware", "sample_count",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let checker = Checker::compile(&suite, &columns).unwrap();
    let cells = [
        Cell::Str("42-00001234"),
        Cell::Str("dev-0007"),
        Cell::Int(1_790_000_000_000),
        Cell::Float(51.25),
        Cell::Float(1.5),
        Cell::Str("OK"),
        Cell::Float(45.0),
        Cell::Str("1.5.0"),
        Cell::Int(12),
    ];
    let mut out = Vec::with_capacity(8);
    c.bench_function("quality/telemetry_suite_record", |b| {
        b.iter(|| {
            out.clear();
            checker.failures(black_box(&cells), &mut out);
            assert!(out.is_empty());
        })
    });
}

fn scoring(c: &mut Criterion) {
    let Ok(path) = std::env::var("SLUICE_BENCH_MODEL") else {
        eprintln!("scoring: SLUICE_BENCH_MODEL is not set, skipped");
        return;
    };
    let model = IsolationForest::from_json(&std::fs::read_to_string(&path).expect(&path)).unwrap();
    let row: Vec<f64> = (0..model.n_features()).map(|i| 0.1 * i as f64).collect();
    c.bench_function("model/isolation_forest_score_row", |b| {
        b.iter(|| model.score(black_box(&row)).unwrap())
    });
}

criterion_group!(benches, avro, frame, waveform, aggregators, quality, scoring);
criterion_main!(benches);
