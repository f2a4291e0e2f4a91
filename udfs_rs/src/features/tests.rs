//! Unit and property tests of the feature accumulators against naive
//! two-pass references (sorting, direct sums, an O(N^2) DFT).

use std::sync::Arc;

use proptest::prelude::*;

use super::sketch::{DdSketch, SketchConfig};
use super::*;

const VALUE_SPEC: &str = r#"["count", "sum", "mean", "std", "min", "max",
    {"agg": "ewma", "half_life_ms": 60000}, "slope",
    {"agg": "quantile", "q": 0.5}, {"agg": "quantile", "q": 0.95},
    {"agg": "quantile", "q": 0.99, "accuracy": 0.02, "name": "p99_coarse"}]"#;

/// fs = 500 Hz: the bands tile [0, 250] (the Nyquist bin is in the last one).
const WAVE_SPEC: &str = r#"["frames", "rms", "peak", "crest", "kurtosis",
    {"agg": "band", "lo_hz": 0, "hi_hz": 100}, {"agg": "band", "lo_hz": 100, "hi_hz": 250},
    {"agg": "band", "lo_hz": 250, "hi_hz": 1000}]"#;

const FS: f64 = 500.0;

fn spec(text: &str) -> Arc<Spec> {
    Arc::new(Spec::from_json(text).unwrap())
}

fn acc_of(spec: &Arc<Spec>, items: &[(i64, f64)]) -> Accumulator {
    let mut a = Accumulator::new(spec.clone());
    for &(t, x) in items {
        a.update(t, x).unwrap();
    }
    a
}

fn frames_acc(spec: &Arc<Spec>, frames: &[Vec<f64>]) -> Accumulator {
    let mut a = Accumulator::new(spec.clone());
    for f in frames {
        assert!(a.update_frame(f.iter().copied(), FS).unwrap());
    }
    a
}

fn get(a: &Accumulator, name: &str) -> f64 {
    a.result_map()[name]
}

/// |a - b| <= rel * max(|a|, |b|, scale); NaN only equals NaN.
fn close(a: f64, b: f64, rel: f64, scale: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(scale)
}

#[track_caller]
fn assert_close(what: &str, a: f64, b: f64, rel: f64, scale: f64) {
    assert!(
        close(a, b, rel, scale),
        "{what}: {a} vs {b} (rel {rel}, scale {scale})"
    );
}

// ------------------------------------------------------------- references

struct Reference {
    mean: f64,
    std: f64,
    slope: f64,
    ewma: f64,
    sorted: Vec<f64>,
}

fn reference(items: &[(i64, f64)], half_life_ms: f64) -> Reference {
    let n = items.len() as f64;
    let mean = items.iter().map(|p| p.1).sum::<f64>() / n;
    let std = (items.iter().map(|p| (p.1 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let t0 = items.iter().map(|p| p.0).min().unwrap_or(0);
    let ts: Vec<f64> = items.iter().map(|p| (p.0 - t0) as f64 / 1000.0).collect();
    let mt = ts.iter().sum::<f64>() / n;
    let stt: f64 = ts.iter().map(|t| (t - mt).powi(2)).sum();
    let stx: f64 = ts
        .iter()
        .zip(items)
        .map(|(t, p)| (t - mt) * (p.1 - mean))
        .sum();
    let slope = if items.len() < 2 || stt == 0.0 {
        f64::NAN
    } else {
        stx / stt
    };
    let last = items.iter().map(|p| p.0).max().unwrap_or(0);
    let (mut wx, mut w) = (0.0, 0.0);
    for &(t, x) in items {
        let wi = (-((last - t) as f64) / half_life_ms).exp2();
        wx += wi * x;
        w += wi;
    }
    let mut sorted: Vec<f64> = items.iter().map(|p| p.1).collect();
    sorted.sort_by(f64::total_cmp);
    Reference {
        mean,
        std,
        slope,
        ewma: wx / w,
        sorted,
    }
}

/// Lower-rank order statistic, numpy's `quantile(..., method="lower")`.
fn lower_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

/// Naive one-sided band energies (`c_k |X_k|^2 / N`) of `x` for `bands`.
fn dft_band_energy(x: &[f64], fs: f64, bands: &[(f64, f64)]) -> Vec<f64> {
    let n = x.len();
    let mut out = vec![0.0; bands.len()];
    for k in 0..=n / 2 {
        let (mut re, mut im) = (0.0, 0.0);
        for (j, &v) in x.iter().enumerate() {
            let ang = -2.0 * std::f64::consts::PI * (k * j) as f64 / n as f64;
            re += v * ang.cos();
            im += v * ang.sin();
        }
        let c = if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
            1.0
        } else {
            2.0
        };
        let f = k as f64 * fs / n as f64;
        for (b, &(lo, hi)) in bands.iter().enumerate() {
            if lo <= f && f < hi {
                out[b] += c * (re * re + im * im) / n as f64;
            }
        }
    }
    out
}

// ------------------------------------------------------------------ spec

#[test]
fn spec_names_defaults_and_canonical_form() {
    let s = Spec::from_json(VALUE_SPEC).unwrap();
    let names: Vec<&str> = s.names().collect();
    assert_eq!(
        names,
        [
            "count",
            "sum",
            "mean",
            "std",
            "min",
            "max",
            "ewma",
            "slope",
            "p50",
            "p95",
            "p99_coarse"
        ]
    );
    // Two quantiles share the default sketch; the coarse one has its own.
    assert_eq!(s.sketches.len(), 2);
    let w = Spec::from_json(WAVE_SPEC).unwrap();
    assert_eq!(
        w.names().collect::<Vec<_>>(),
        [
            "frames",
            "rms",
            "peak",
            "crest",
            "kurtosis",
            "band_0_100hz",
            "band_100_250hz",
            "band_250_1000hz"
        ]
    );
    // String shorthand, key order and explicit defaults do not change the fingerprint.
    let a = Spec::from_json(r#"["mean", {"agg": "quantile", "q": 0.5}]"#).unwrap();
    let b = Spec::from_json(
        r#"[{"name": "mean", "agg": "mean"}, {"max_bins": 2048, "accuracy": 0.01, "q": 0.5, "agg": "quantile"}]"#,
    )
    .unwrap();
    assert_eq!(a.canonical, b.canonical);
    assert_eq!(a.fingerprint, b.fingerprint);
    let c =
        Spec::from_json(r#"["mean", {"agg": "quantile", "q": 0.5, "name": "median"}]"#).unwrap();
    assert_ne!(a.fingerprint, c.fingerprint);
}

#[test]
fn quantile_and_band_labels() {
    for (q, want) in [
        (0.5, "50"),
        (0.95, "95"),
        (0.99, "99"),
        (0.999, "99p9"),
        (0.05, "5"),
        (0.001, "0p1"),
        (0.0, "0"),
        (1.0, "100"),
        (0.12345, "12p345"),
    ] {
        assert_eq!(percent_label(q), want, "q = {q}");
    }
    assert_eq!(number_label(12.5), "12p5");
    assert_eq!(number_label(50.0), "50");
}

#[test]
fn spec_errors_name_the_aggregation_and_parameter() {
    let cases = [
        (r#"{"agg": "mean"}"#, "must be a list"),
        ("[]", "no aggregations"),
        (
            r#"["median"]"#,
            "aggregation 0: unknown aggregation \"median\"",
        ),
        (
            r#"["mean", {"q": 0.5}]"#,
            "aggregation 1: a mapping needs an \"agg\" key",
        ),
        (r#"[{"agg": 3}]"#, "\"agg\" must be a string"),
        (
            r#"[{"agg": "quantile", "q": 1.5}]"#,
            "aggregation 0 (\"quantile\"): parameter \"q\" must be a number in [0, 1], got 1.5",
        ),
        (r#"[{"agg": "quantile"}]"#, "parameter \"q\" is required"),
        (
            r#"[{"agg": "quantile", "q": "0.5"}]"#,
            "parameter \"q\" must be a number in [0, 1], got a string",
        ),
        (
            r#"[{"agg": "quantile", "q": 0.5, "accuracy": 0.9}]"#,
            "parameter \"accuracy\"",
        ),
        (
            r#"[{"agg": "quantile", "q": 0.5, "max_bins": 100.5}]"#,
            "parameter \"max_bins\"",
        ),
        (
            r#"[{"agg": "quantile", "qq": 0.5}]"#,
            "unknown parameter \"qq\" (known: q, accuracy, max_bins, name)",
        ),
        (
            r#"[{"agg": "mean", "window": 5}]"#,
            "unknown parameter \"window\" (it takes only \"name\")",
        ),
        (
            r#"[{"agg": "ewma", "half_life_ms": 0}]"#,
            "parameter \"half_life_ms\" must be a number of milliseconds > 0, got 0",
        ),
        (
            r#"[{"agg": "ewma", "half_life_ms": true}]"#,
            "got a boolean",
        ),
        (
            r#"[{"agg": "band", "lo_hz": 50, "hi_hz": 10}]"#,
            "parameter \"hi_hz\" must be a frequency in Hz > lo_hz (50)",
        ),
        (
            r#"[{"agg": "band", "lo_hz": -1, "hi_hz": 10}]"#,
            "parameter \"lo_hz\"",
        ),
        (
            r#"["mean", "mean"]"#,
            "aggregations 0 and 1 both produce the output \"mean\"",
        ),
        (
            r#"[{"agg": "ewma", "half_life_ms": 1000}, {"agg": "ewma", "half_life_ms": 5000}]"#,
            "both produce the output \"ewma\"",
        ),
        (
            r#"[{"agg": "mean", "name": "9lives"}]"#,
            "name \"9lives\" must be",
        ),
        (
            r#"[{"agg": "mean", "name": "a.b"}]"#,
            "name \"a.b\" must be",
        ),
        (
            r#"[{"agg": "mean", "name": 7}]"#,
            "\"name\" must be a string",
        ),
        (r#"[3]"#, "aggregation 0: must be a string or a mapping"),
        ("not json", "not valid JSON"),
    ];
    for (text, want) in cases {
        match Spec::from_json(text) {
            Err(SluiceErr::FeatureSpec(msg)) => {
                assert!(msg.contains(want), "{text}: {msg:?} lacks {want:?}")
            }
            other => panic!("{text}: expected a FeatureSpec error, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- values

#[test]
fn empty_single_and_known_values() {
    let s = spec(VALUE_SPEC);
    let empty = Accumulator::new(s.clone());
    let r = empty.result_map();
    assert_eq!(r["count"], 0.0);
    assert_eq!(r["sum"], 0.0);
    for k in [
        "mean",
        "std",
        "min",
        "max",
        "ewma",
        "slope",
        "p50",
        "p95",
        "p99_coarse",
    ] {
        assert!(r[k].is_nan(), "{k} of an empty window is {}", r[k]);
    }
    let one = acc_of(&s, &[(1000, 4.5)]);
    let r = one.result_map();
    assert_eq!(
        (r["count"], r["sum"], r["mean"], r["std"]),
        (1.0, 4.5, 4.5, 0.0)
    );
    assert_eq!(
        (r["min"], r["max"], r["ewma"], r["p50"], r["p95"]),
        (4.5, 4.5, 4.5, 4.5, 4.5)
    );
    assert!(r["slope"].is_nan(), "slope of one point");
    // Same time twice: no slope either.
    assert!(get(&acc_of(&s, &[(5, 1.0), (5, 3.0)]), "slope").is_nan());
    // A line of slope 2 per second.
    let line: Vec<(i64, f64)> = (0..10)
        .map(|i| (1_700_000_000_000 + i * 500, 3.0 + i as f64))
        .collect();
    assert_close("slope", get(&acc_of(&s, &line), "slope"), 2.0, 1e-12, 1.0);
    // EWMA with two points one half-life apart: weights 1/2 and 1.
    let e = acc_of(&s, &[(0, 0.0), (60_000, 3.0)]);
    assert_close("ewma", get(&e, "ewma"), 3.0 / 1.5, 1e-15, 1.0);
}

#[test]
fn non_finite_values_are_skipped_and_counted() {
    let s = spec(VALUE_SPEC);
    let mut a = Accumulator::new(s.clone());
    a.update_many(
        &[1, 2, 3, 4, 5],
        &[1.0, f64::NAN, 3.0, f64::INFINITY, f64::NEG_INFINITY],
    )
    .unwrap();
    assert_eq!((a.count(), a.skipped_values()), (2, 3));
    assert_eq!(a.result(), acc_of(&s, &[(1, 1.0), (3, 3.0)]).result());
    let back = Accumulator::from_bytes(s.clone(), &a.to_bytes()).unwrap();
    assert_eq!(back.skipped_values(), 3);
}

#[test]
fn update_many_checks_lengths_and_input_kinds() {
    let s = spec(VALUE_SPEC);
    let mut a = Accumulator::new(s);
    assert!(matches!(
        a.update_many(&[1, 2], &[1.0]),
        Err(SluiceErr::Value(_))
    ));
    assert_eq!(a.count(), 0);
    assert!(matches!(
        a.update_frame([1.0].into_iter(), FS),
        Err(SluiceErr::FeatureSpec(_))
    ));
    let mut w = Accumulator::new(spec(WAVE_SPEC));
    assert!(matches!(w.update(1, 1.0), Err(SluiceErr::FeatureSpec(_))));
    assert!(matches!(
        w.update_frame(std::iter::empty(), FS),
        Err(SluiceErr::Value(_))
    ));
    assert!(matches!(
        w.update_frame([1.0].into_iter(), 0.0),
        Err(SluiceErr::Value(_))
    ));
    assert!(matches!(
        w.update_frame([1.0].into_iter(), f64::NAN),
        Err(SluiceErr::Value(_))
    ));
}

#[test]
fn huge_and_tiny_magnitudes() {
    let s = spec(VALUE_SPEC);
    // The sum compensates: naive summation gives 0 here.
    assert_eq!(
        get(&acc_of(&s, &[(0, 1e16), (1, 1.0), (2, -1e16)]), "sum"),
        1.0
    );
    for scale in [1e-300, 1e-150, 1e-5, 1e5, 1e150] {
        let items: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 10, scale * (1.0 + (i % 7) as f64)))
            .collect();
        let want = reference(&items, 60_000.0);
        let a = acc_of(&s, &items);
        assert_close("mean", get(&a, "mean"), want.mean, 1e-12, 0.0);
        assert_close("std", get(&a, "std"), want.std, 1e-9, 0.0);
        assert_close("ewma", get(&a, "ewma"), want.ewma, 1e-12, 0.0);
        for (name, q, alpha) in [
            ("p50", 0.5, 0.01),
            ("p95", 0.95, 0.01),
            ("p99_coarse", 0.99, 0.02),
        ] {
            let truth = lower_quantile(&want.sorted, q);
            assert_close(name, get(&a, name), truth, alpha * (1.0 + 1e-9), 0.0);
        }
    }
}

#[test]
fn timestamps_far_apart_do_not_overflow() {
    let s = spec(VALUE_SPEC);
    let a = acc_of(&s, &[(i64::MIN, 1.0), (i64::MAX, 2.0), (0, 3.0)]);
    let r = a.result_map();
    assert_eq!(
        r["ewma"], 2.0,
        "points 2^64 ms before the last one weigh nothing"
    );
    assert!(r["slope"].is_finite());
}

// ----------------------------------------------------------------- sketch

#[test]
fn sketch_collapses_lowest_bins_deterministically() {
    let cfg = SketchConfig {
        alpha: 0.01,
        max_bins: 64,
    };
    let values: Vec<f64> = (0..400).map(|i| 1.05f64.powi(i)).collect();
    let mut up = DdSketch::new(cfg);
    let mut down = DdSketch::new(cfg);
    for &v in &values {
        up.add(v);
    }
    for &v in values.iter().rev() {
        down.add(v);
    }
    assert_eq!(up, down);
    assert_eq!(up.count(), 400);
    // Upper quantiles keep the guarantee, the collapsed low end does not.
    let truth = lower_quantile(&values, 0.99);
    assert_close("p99", up.quantile(0.99), truth, 0.01 * (1.0 + 1e-9), 0.0);
    assert_eq!(up.quantile(0.0), 1.0);
    assert_eq!(up.quantile(1.0), *values.last().unwrap());
}

#[test]
fn sketch_handles_zero_negative_and_subnormal() {
    let cfg = SketchConfig {
        alpha: 0.01,
        max_bins: 2048,
    };
    let mut s = DdSketch::new(cfg);
    for v in [-5.0, -1.0, 0.0, 1e-310, 2.0, 3.0] {
        s.add(v);
    }
    assert_eq!(s.quantile(0.0), -5.0);
    assert_close("q0.2", s.quantile(0.2), -1.0, 0.0100001, 0.0);
    assert_eq!(s.quantile(0.4), 0.0);
    assert_eq!(s.quantile(0.6), 0.0, "a subnormal counts as zero");
    assert_close("q0.8", s.quantile(0.8), 2.0, 0.0100001, 0.0);
    assert_eq!(s.quantile(1.0), 3.0);
}

// --------------------------------------------------------------- waveform

fn sine(n: usize, hz: f64, amp: f64, phase: f64) -> Vec<f64> {
    (0..n)
        .map(|i| amp * (2.0 * std::f64::consts::PI * hz * i as f64 / FS + phase).sin())
        .collect()
}

#[test]
fn waveform_features_of_one_frame() {
    let s = spec(WAVE_SPEC);
    // 256 samples at 500 Hz: bins are 1.953125 Hz apart; 62.5 Hz is bin 32, 187.5 Hz bin 96.
    let x: Vec<f64> = sine(256, 62.5, 2.0, 0.3)
        .iter()
        .zip(sine(256, 187.5, 1.0, 1.1))
        .map(|(a, b)| a + b + 0.5)
        .collect();
    let a = frames_acc(&s, std::slice::from_ref(&x));
    let r = a.result_map();
    let n = x.len() as f64;
    let ms = x.iter().map(|v| v * v).sum::<f64>() / n;
    let mean = x.iter().sum::<f64>() / n;
    let m2 = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let m4 = x.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
    let peak = x.iter().fold(0.0f64, |p, v| p.max(v.abs()));
    assert_eq!(r["frames"], 1.0);
    assert_close("rms", r["rms"], ms.sqrt(), 1e-12, 0.0);
    assert_eq!(r["peak"], peak);
    assert_close("crest", r["crest"], peak / ms.sqrt(), 1e-12, 0.0);
    assert_close("kurtosis", r["kurtosis"], m4 / (m2 * m2), 1e-12, 0.0);
    // DC 0.25 + 62.5 Hz sine (amp 2 → power 2) in band 0; 187.5 Hz (power 0.5) in band 1.
    assert_close("band 0", r["band_0_100hz"], 0.25 + 2.0, 1e-12, 1.0);
    assert_close("band 1", r["band_100_250hz"], 0.5, 1e-12, 1.0);
    assert_close("band 2", r["band_250_1000hz"], 0.0, 1e-12, 1.0);
    // Parseval: bands that tile [0, fs/2] add up to the mean square.
    let total = r["band_0_100hz"] + r["band_100_250hz"] + r["band_250_1000hz"];
    assert_close("Parseval", total, ms, 1e-12, 0.0);
}

#[test]
fn band_energies_equal_a_naive_dft_for_odd_and_even_lengths() {
    let s = spec(WAVE_SPEC);
    let bands = &s.bands;
    for n in [1usize, 2, 7, 64, 100, 255] {
        let x: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % 113) as f64 / 17.0 - 3.0)
            .collect();
        let a = frames_acc(&s, std::slice::from_ref(&x));
        let want = dft_band_energy(&x, FS, bands);
        let got: Vec<f64> = (0..bands.len()).map(|b| a.waves.energy[b]).collect();
        let scale: f64 = want.iter().sum();
        for (g, w) in got.iter().zip(&want) {
            assert_close(&format!("n={n}"), *g, *w, 1e-10, scale);
        }
    }
}

#[test]
fn band_edges_are_half_open_in_hz() {
    // n = 8 at 8 Hz: bins at 0, 1, 2, 3, 4 Hz.
    assert_eq!(wave::band_bins(0.0, 1.0, 8, 8.0), 0..1);
    assert_eq!(wave::band_bins(1.0, 3.0, 8, 8.0), 1..3);
    assert_eq!(wave::band_bins(0.5, 1.5, 8, 8.0), 1..2);
    assert_eq!(
        wave::band_bins(3.0, 4.0, 8, 8.0),
        3..4,
        "the Nyquist bin (4 Hz) is not < 4"
    );
    assert_eq!(wave::band_bins(3.0, 100.0, 8, 8.0), 3..5);
    assert_eq!(
        wave::band_bins(10.0, 20.0, 8, 8.0),
        5..5,
        "above Nyquist: empty"
    );
}

#[test]
fn non_finite_frames_are_skipped_and_counted() {
    let s = spec(WAVE_SPEC);
    let mut a = Accumulator::new(s);
    assert!(!a
        .update_frame([1.0, f64::NAN, 2.0].into_iter(), FS)
        .unwrap());
    assert!(a.update_frame([1.0, 2.0].into_iter(), FS).unwrap());
    assert_eq!((a.frames(), a.skipped_frames()), (1, 1));
    assert_eq!(get(&a, "peak"), 2.0);
    let empty = Accumulator::new(spec(WAVE_SPEC)).result_map();
    assert_eq!(empty["frames"], 0.0);
    for k in ["rms", "peak", "crest", "kurtosis", "band_0_100hz"] {
        assert!(empty[k].is_nan(), "{k} of no frames is {}", empty[k]);
    }
}

// ---------------------------------------------------------- serialisation

#[test]
fn bytes_round_trip_and_rejections() {
    let s = spec(VALUE_SPEC);
    let items: Vec<(i64, f64)> = (0..100)
        .map(|i| (i * 37, (i as f64 * 0.7).sin() * 10.0))
        .collect();
    let a = acc_of(&s, &items);
    let b = a.to_bytes();
    let back = Accumulator::from_bytes(s.clone(), &b).unwrap();
    assert_eq!(back, a);
    assert_eq!(back.to_bytes(), b);
    // Empty accumulators are tiny: header, counts, empty sketches, CRC.
    let empty = Accumulator::new(s.clone()).to_bytes();
    assert_eq!(
        empty.len(),
        18,
        "version, fingerprint, 3 counts, 2 empty sketches, CRC"
    );
    assert_eq!(
        Accumulator::from_bytes(s.clone(), &empty).unwrap(),
        Accumulator::new(s.clone())
    );

    let state_err = |data: &[u8]| match Accumulator::from_bytes(s.clone(), data) {
        Err(SluiceErr::State(m)) => m,
        other => panic!("expected a state error, got {other:?}"),
    };
    assert!(state_err(&[]).contains("shorter than"));
    let mut v2 = b.clone();
    v2[0] = 2;
    assert!(state_err(&v2).contains("format version 2"));
    // Every single-bit flip and every truncation is caught.
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[i] ^= 1 << bit;
            assert!(
                Accumulator::from_bytes(s.clone(), &c).is_err(),
                "flip byte {i} bit {bit}"
            );
        }
        assert!(
            Accumulator::from_bytes(s.clone(), &b[..i]).is_err(),
            "truncated to {i}"
        );
    }
    // A blob of another spec.
    let other = spec(r#"["mean"]"#);
    let foreign = Accumulator::new(other.clone()).to_bytes();
    assert!(state_err(&foreign).contains("another feature spec"));
    // Merging across specs is refused.
    let mut m = Accumulator::new(other);
    assert!(matches!(m.merge(&a), Err(SluiceErr::FeatureSpec(_))));
}

/// Re-seal a mutated body with a valid CRC so the content checks run.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    let n = body.len();
    body.truncate(n - 4);
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

#[test]
fn resealed_inconsistent_states_are_rejected() {
    let s = spec(r#"["count", "std", {"agg": "quantile", "q": 0.5}]"#);
    let a = acc_of(&s, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
    let b = a.to_bytes();
    // The value count (byte 5) no longer matches the sketch's.
    let mut c = b.clone();
    c[5] = 4;
    let err = Accumulator::from_bytes(s.clone(), &reseal(c))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds Some(3) values, the state counts 4"),
        "{err}"
    );
    // Negative M2 (the 4th f64 after the three varints).
    let mut c = b.clone();
    c[8 + 24..8 + 32].copy_from_slice(&(-1.0f64).to_le_bytes());
    let err = Accumulator::from_bytes(s.clone(), &reseal(c))
        .unwrap_err()
        .to_string();
    assert!(err.contains("M2 is -1"), "{err}");
    // Trailing bytes.
    let mut c = b.clone();
    c.insert(c.len() - 4, 0);
    let err = Accumulator::from_bytes(s.clone(), &reseal(c))
        .unwrap_err()
        .to_string();
    assert!(err.contains("left over"), "{err}");
}

#[test]
fn wave_state_round_trips() {
    let s = spec(WAVE_SPEC);
    let a = frames_acc(&s, &[sine(64, 50.0, 1.0, 0.0), sine(100, 120.0, 0.5, 1.0)]);
    let b = a.to_bytes();
    let back = Accumulator::from_bytes(s.clone(), &b).unwrap();
    assert_eq!(back, a);
    assert_eq!(back.result_map().len(), 8);
}

// --------------------------------------------------------------- properties

fn value_strategy() -> impl Strategy<Value = Vec<(i64, f64)>> {
    let value = (-1000.0f64..1000.0, -6i32..6).prop_map(|(m, e)| m * 10f64.powi(e));
    prop::collection::vec((1_700_000_000_000i64..1_700_000_600_000, value), 0..120)
}

fn assert_values_match(got: &Accumulator, items: &[(i64, f64)]) {
    let r = got.result_map();
    assert_eq!(got.count(), items.len() as u64);
    if items.is_empty() {
        assert!(r["mean"].is_nan());
        return;
    }
    let want = reference(items, 60_000.0);
    let scale = want.sorted.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert_eq!(r["min"], want.sorted[0]);
    assert_eq!(r["max"], *want.sorted.last().unwrap());
    assert_close("sum", r["sum"], want.mean * items.len() as f64, 1e-9, scale);
    assert_close("mean", r["mean"], want.mean, 1e-9, scale);
    assert_close("std", r["std"], want.std, 1e-9, scale * 1e-6);
    assert_close("ewma", r["ewma"], want.ewma, 1e-9, scale);
    if want.slope.is_nan() {
        assert!(r["slope"].is_nan());
    } else {
        // Per second over a 10-minute span: the scale of a slope is value / span.
        assert_close("slope", r["slope"], want.slope, 1e-6, scale / 600.0);
    }
    for (name, q, alpha) in [
        ("p50", 0.5, 0.01),
        ("p95", 0.95, 0.01),
        ("p99_coarse", 0.99, 0.02),
    ] {
        let truth = lower_quantile(&want.sorted, q);
        assert!(
            close(r[name], truth, alpha * (1.0 + 1e-9), 0.0)
                || (truth.abs() < f64::MIN_POSITIVE && r[name] == 0.0),
            "{name}: {} vs {truth}",
            r[name]
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn one_pass_equals_reference(items in value_strategy()) {
        let s = spec(VALUE_SPEC);
        assert_values_match(&acc_of(&s, &items), &items);
    }

    #[test]
    fn merge_of_a_split_equals_one_pass(items in value_strategy(), cut in 0.0f64..1.0) {
        let s = spec(VALUE_SPEC);
        let k = (cut * items.len() as f64) as usize;
        let mut a = acc_of(&s, &items[..k]);
        let b = acc_of(&s, &items[k..]);
        a.merge(&b).unwrap();
        assert_values_match(&a, &items);
        let one = acc_of(&s, &items);
        // Integer and order-free parts are exact: counts, min/max, the sketches.
        prop_assert_eq!(a.count(), one.count());
        prop_assert_eq!((a.min, a.max), (one.min, one.max));
        prop_assert_eq!(&a.sketches, &one.sketches);
        let scale = items.iter().fold(0.0f64, |m, p| m.max(p.1.abs()));
        for (name, x) in one.result_map() {
            let y = a.result_map()[&name];
            let tol = if name == "slope" { 1e-6 } else { 1e-9 };
            let sc = if name == "slope" { scale / 600.0 } else if name == "std" { scale * 1e-6 } else { scale };
            prop_assert!(close(x, y, tol, sc), "{}: one pass {} vs merged {}", name, x, y);
        }
    }

    #[test]
    fn merge_is_commutative_and_associative(
        a in value_strategy(), b in value_strategy(), c in value_strategy()
    ) {
        let s = spec(VALUE_SPEC);
        let (aa, bb, cc) = (acc_of(&s, &a), acc_of(&s, &b), acc_of(&s, &c));
        let mut ab = aa.clone();
        ab.merge(&bb).unwrap();
        let mut ba = bb.clone();
        ba.merge(&aa).unwrap();
        let mut ab_c = ab.clone();
        ab_c.merge(&cc).unwrap();
        let mut bc = bb.clone();
        bc.merge(&cc).unwrap();
        let mut a_bc = aa.clone();
        a_bc.merge(&bc).unwrap();
        prop_assert_eq!(&ab.sketches, &ba.sketches);
        prop_assert_eq!(&ab_c.sketches, &a_bc.sketches);
        prop_assert_eq!(ab_c.count(), a_bc.count());
        let scale = a.iter().chain(&b).chain(&c).fold(0.0f64, |m, p| m.max(p.1.abs()));
        for (x, y) in [(&ab, &ba), (&ab_c, &a_bc)] {
            let (rx, ry) = (x.result_map(), y.result_map());
            for (name, v) in rx {
                let tol = if name == "slope" { 1e-6 } else { 1e-9 };
                let sc = if name == "slope" { scale / 600.0 } else if name == "std" { scale * 1e-6 } else { scale };
                prop_assert!(close(v, ry[&name], tol, sc), "{}: {} vs {}", name, v, ry[&name]);
            }
        }
    }

    #[test]
    fn bytes_round_trip_exactly(items in value_strategy(), cut in 0.0f64..1.0) {
        let s = spec(VALUE_SPEC);
        let k = (cut * items.len() as f64) as usize;
        let mut a = acc_of(&s, &items[..k]);
        a.merge(&acc_of(&s, &items[k..])).unwrap();
        let b = a.to_bytes();
        let back = Accumulator::from_bytes(s.clone(), &b).unwrap();
        prop_assert_eq!(&back, &a);
        prop_assert_eq!(back.to_bytes(), b);
    }

    #[test]
    fn sketch_merge_equals_one_pass_even_when_collapsing(
        xs in prop::collection::vec((-1e30f64..1e30, -40i32..40), 0..300), cut in 0.0f64..1.0
    ) {
        let cfg = SketchConfig { alpha: 0.01, max_bins: 64 };
        let values: Vec<f64> = xs.iter().map(|&(m, e)| m * 10f64.powi(e)).collect();
        let k = (cut * values.len() as f64) as usize;
        let (mut a, mut b, mut one) = (DdSketch::new(cfg), DdSketch::new(cfg), DdSketch::new(cfg));
        values[..k].iter().for_each(|&v| a.add(v));
        values[k..].iter().for_each(|&v| b.add(v));
        values.iter().for_each(|&v| one.add(v));
        let mut ba = b.clone();
        ba.merge(&a);
        a.merge(&b);
        prop_assert_eq!(&a, &one);
        prop_assert_eq!(&ba, &one);
    }

    #[test]
    fn resealed_random_mutations_never_panic(
        items in value_strategy(), edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)
    ) {
        let s = spec(VALUE_SPEC);
        let mut b = acc_of(&s, &items).to_bytes();
        let body = b.len() - 4;
        for (at, byte) in edits {
            b[at % body] = byte;
        }
        // Ok (a mutation of a float) or a typed error; never a panic.
        let _ = Accumulator::from_bytes(s.clone(), &reseal(b));
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let s = spec(VALUE_SPEC);
        let _ = Accumulator::from_bytes(s.clone(), &data);
        let _ = Accumulator::from_bytes(s.clone(), &reseal([data.clone(), vec![0; 4]].concat()));
    }

    #[test]
    fn frames_merge_equals_pooled_one_pass(
        frames in prop::collection::vec(prop::collection::vec(-100.0f64..100.0, 1..80), 1..6),
        cut in 0.0f64..1.0
    ) {
        let s = spec(WAVE_SPEC);
        let k = (cut * frames.len() as f64) as usize;
        let mut a = frames_acc(&s, &frames[..k]);
        a.merge(&frames_acc(&s, &frames[k..])).unwrap();
        let one = frames_acc(&s, &frames);
        // Pooled moments: the window's samples as one population.
        let all: Vec<f64> = frames.concat();
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let m2 = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let m4 = all.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
        let rms = (all.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
        let peak = all.iter().fold(0.0f64, |p, v| p.max(v.abs()));
        // Bands: the sample-weighted mean of per-frame band powers (naive DFT).
        let mut energy = vec![0.0; s.bands.len()];
        for f in &frames {
            for (e, fe) in energy.iter_mut().zip(dft_band_energy(f, FS, &s.bands)) {
                *e += fe;
            }
        }
        for acc in [&a, &one] {
            let r = acc.result_map();
            prop_assert_eq!(r["frames"], frames.len() as f64);
            prop_assert_eq!(r["peak"], peak);
            prop_assert!(close(r["rms"], rms, 1e-9, 0.0), "rms {} vs {}", r["rms"], rms);
            prop_assert!(close(r["crest"], peak / rms, 1e-9, 0.0));
            if m2 > 1e-9 {
                prop_assert!(close(r["kurtosis"], m4 / (m2 * m2), 1e-8, 0.0), "kurtosis {} vs {}", r["kurtosis"], m4 / (m2 * m2));
            }
            let total: f64 = s.names().filter(|n| n.starts_with("band_")).map(|n| r[n]).sum();
            prop_assert!(close(total, rms * rms, 1e-9, 0.0), "Parseval: {} vs {}", total, rms * rms);
            for (b, name) in s.names().filter(|n| n.starts_with("band_")).enumerate() {
                prop_assert!(close(r[name], energy[b] / n, 1e-9, rms * rms), "{}: {} vs {}", name, r[name], energy[b] / n);
            }
        }
    }
}
