//! Mergeable, serialisable window feature accumulators (issue 4, item 5).
//!
//! A [`Spec`] is the validated list of aggregations of one window (a YAML
//! feature spec maps onto it 1:1: each item is a name like `"mean"` or an
//! object `{"agg": "quantile", "q": 0.95}`); an [`Accumulator`] holds the
//! state of one key and window for a spec. Accumulators of one spec merge
//! (session windows), and serialise to a compact, versioned, checksummed
//! blob for Flink state.
//!
//! Two kinds of input feed two kinds of aggregation:
//! * values `(event_time_ms, value)`: `count`, `sum`, `mean`, `std`, `min`,
//!   `max`, `ewma`, `slope`, `quantile`;
//! * vibration frames `(samples, sample_rate_hz)`: `frames`, `rms`, `peak`,
//!   `crest`, `kurtosis`, `band` (see [`wave`]).
//!
//! Definitions (results are NaN where a value is undefined, e.g. `mean` of an
//! empty window; `count`, `sum` and `frames` are 0 then):
//! * `std`: population standard deviation (ddof = 0, as `np.std`), Welford
//!   updates and Chan et al. merges; one value gives 0.
//! * `sum`: Neumaier-compensated.
//! * `ewma` with half-life `h`: `sum w_i x_i / sum w_i` with
//!   `w_i = 2^(-(T - t_i) / h)`. The reference time `T` cancels out, so the
//!   value depends only on the window's set of values (order-independent,
//!   mergeable); it is the time-decayed mean as of the window's last event
//!   time (pandas `ewm(halflife=h, times=t, adjust=True).mean()` at the
//!   last row). The state keeps both sums relative to the latest event time
//!   seen and rescales on update and merge.
//! * `slope`: ordinary least-squares slope of value over event time, in value
//!   units per second (`np.polyfit(t_ms / 1000, x, 1)[0]`), from a
//!   Welford-style co-moment on times relative to the first event time; NaN
//!   with fewer than two distinct event times.
//! * `quantile`: DDSketch ([`sketch`]), relative accuracy `accuracy`
//!   (default 0.01) around the lower-rank order statistic.
//! * non-finite values (NaN, ±inf) and frames holding one are skipped and
//!   counted (`skipped_values`, `skipped_frames`), never aggregated.
//! * moments of magnitudes above ~1e154 overflow to inf (the square of the
//!   deviation does), as numpy's do.

mod codec;
pub mod sketch;
pub mod wave;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::errors::SluiceErr;
use codec::{bad, Reader, Writer};
use sketch::{DdSketch, SketchConfig};
use wave::Moments4;

/// First byte of every state blob; bump it when the layout changes.
pub const STATE_VERSION: u8 = 1;
/// Default relative accuracy of `quantile`.
pub const DEFAULT_ACCURACY: f64 = 0.01;
/// Default bins per sign of a quantile sketch.
pub const DEFAULT_MAX_BINS: u32 = 2048;
/// Longest frame `update_frame` takes (the FFT plan cache is per length).
pub const MAX_FRAME_SAMPLES: usize = 1 << 16;

// ------------------------------------------------------------------- spec

/// What one output of the spec computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    Count,
    Sum,
    Mean,
    Std,
    Min,
    Max,
    /// Index into [`Spec::ewma_half_lives`].
    Ewma {
        half_life_ms: f64,
        slot: usize,
    },
    Slope,
    /// Index into [`Spec::sketches`].
    Quantile {
        q: f64,
        sketch: SketchConfig,
        slot: usize,
    },
    Frames,
    Rms,
    Peak,
    Crest,
    Kurtosis,
    /// Index into [`Spec::bands`].
    Band {
        lo_hz: f64,
        hi_hz: f64,
        slot: usize,
    },
}

impl Agg {
    pub const KINDS: [&'static str; 15] = [
        "count", "sum", "mean", "std", "min", "max", "ewma", "slope", "quantile", "frames", "rms",
        "peak", "crest", "kurtosis", "band",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Mean => "mean",
            Agg::Std => "std",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Ewma { .. } => "ewma",
            Agg::Slope => "slope",
            Agg::Quantile { .. } => "quantile",
            Agg::Frames => "frames",
            Agg::Rms => "rms",
            Agg::Peak => "peak",
            Agg::Crest => "crest",
            Agg::Kurtosis => "kurtosis",
            Agg::Band { .. } => "band",
        }
    }

    /// Fed by frames rather than by values.
    pub fn on_frames(&self) -> bool {
        matches!(
            self,
            Agg::Frames | Agg::Rms | Agg::Peak | Agg::Crest | Agg::Kurtosis | Agg::Band { .. }
        )
    }

    fn params(kind: &str) -> &'static [&'static str] {
        match kind {
            "ewma" => &["half_life_ms"],
            "quantile" => &["q", "accuracy", "max_bins"],
            "band" => &["lo_hz", "hi_hz"],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub agg: Agg,
}

/// A validated feature spec. Build with [`Spec::parse`] / [`Spec::from_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub outputs: Vec<Output>,
    /// Distinct EWMA half-lives (one state each).
    pub ewma_half_lives: Vec<f64>,
    /// Distinct sketch configs (one sketch each, shared by its quantiles).
    pub sketches: Vec<SketchConfig>,
    pub bands: Vec<(f64, f64)>,
    pub moments: bool,
    pub min_max: bool,
    pub slope: bool,
    pub values: bool,
    pub frames: bool,
    /// The spec in canonical JSON (defaults filled in, keys sorted).
    pub canonical: String,
    /// CRC-32 of `canonical`; stored in every state blob.
    pub fingerprint: u32,
}

#[cold]
fn spec_err(msg: String) -> SluiceErr {
    SluiceErr::FeatureSpec(msg)
}

/// `0.95` → `"95"`, `0.999` → `"99p9"`, `1` → `"100"`: `q * 100` written from
/// the decimal digits of `q` (no binary rounding), `p` for the decimal point.
fn percent_label(q: f64) -> String {
    let s = format!("{q}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut digits: String = int.to_owned();
    let mut frac = frac.to_owned();
    while frac.len() < 2 {
        frac.push('0');
    }
    digits.push_str(&frac[..2]);
    let rest = frac[2..].trim_end_matches('0');
    let whole = digits.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    if rest.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}p{rest}")
    }
}

/// A number in a name: `12.5` → `"12p5"`, `50` → `"50"`.
fn number_label(x: f64) -> String {
    format!("{x}").replace('.', "p")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

struct ItemParser<'a> {
    index: usize,
    kind: &'a str,
    params: &'a Map<String, Json>,
}

impl ItemParser<'_> {
    #[cold]
    fn err(&self, msg: impl std::fmt::Display) -> SluiceErr {
        spec_err(format!(
            "aggregation {} ({:?}): {msg}",
            self.index, self.kind
        ))
    }

    fn number(
        &self,
        key: &str,
        default: Option<f64>,
        ok: impl Fn(f64) -> bool,
        must: &str,
    ) -> Result<f64, SluiceErr> {
        match self.params.get(key) {
            None => default
                .ok_or_else(|| self.err(format_args!("parameter {key:?} is required ({must})"))),
            Some(Json::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() && ok(x) => Ok(x),
                _ => Err(self.err(format_args!("parameter {key:?} must be {must}, got {n}"))),
            },
            Some(other) => Err(self.err(format_args!(
                "parameter {key:?} must be {must}, got {}",
                json_type(other)
            ))),
        }
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

impl Spec {
    pub fn from_json(text: &str) -> Result<Spec, SluiceErr> {
        let v: Json = serde_json::from_str(text)
            .map_err(|e| spec_err(format!("feature spec is not valid JSON: {e}")))?;
        Spec::parse(&v)
    }

    /// Parse a list of aggregations: each a kind name (`"mean"`) or an object
    /// with `"agg"` (the kind), the kind's parameters and an optional
    /// `"name"` for the output.
    pub fn parse(v: &Json) -> Result<Spec, SluiceErr> {
        let items = v.as_array().ok_or_else(|| {
            spec_err(format!(
                "feature spec must be a list of aggregations, got {}",
                json_type(v)
            ))
        })?;
        if items.is_empty() {
            return Err(spec_err("feature spec has no aggregations".into()));
        }
        let empty = Map::new();
        let mut outputs: Vec<Output> = Vec::with_capacity(items.len());
        let mut ewma_half_lives: Vec<f64> = Vec::new();
        let mut sketches: Vec<SketchConfig> = Vec::new();
        let mut bands: Vec<(f64, f64)> = Vec::new();
        let mut canonical: Vec<Json> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let (kind, params) = match item {
                Json::String(s) => (s.as_str(), &empty),
                Json::Object(m) => match m.get("agg") {
                    Some(Json::String(s)) => (s.as_str(), m),
                    Some(other) => {
                        return Err(spec_err(format!(
                            "aggregation {index}: \"agg\" must be a string, got {}",
                            json_type(other)
                        )))
                    }
                    None => {
                        return Err(spec_err(format!(
                            "aggregation {index}: a mapping needs an \"agg\" key naming the aggregation ({})",
                            Agg::KINDS.join(", ")
                        )))
                    }
                },
                other => {
                    return Err(spec_err(format!(
                        "aggregation {index}: must be a string or a mapping with \"agg\", got {}",
                        json_type(other)
                    )))
                }
            };
            if !Agg::KINDS.contains(&kind) {
                return Err(spec_err(format!(
                    "aggregation {index}: unknown aggregation {kind:?} (known: {})",
                    Agg::KINDS.join(", ")
                )));
            }
            let p = ItemParser {
                index,
                kind,
                params,
            };
            let allowed = Agg::params(kind);
            for key in params.keys() {
                if key != "agg" && key != "name" && !allowed.contains(&key.as_str()) {
                    let known = if allowed.is_empty() {
                        "it takes only \"name\"".to_owned()
                    } else {
                        format!("known: {}, name", allowed.join(", "))
                    };
                    return Err(p.err(format_args!("unknown parameter {key:?} ({known})")));
                }
            }
            let mut canon = Map::new();
            canon.insert("agg".into(), Json::String(kind.into()));
            let (agg, default_name) = match kind {
                "count" => (Agg::Count, "count".to_owned()),
                "sum" => (Agg::Sum, "sum".to_owned()),
                "mean" => (Agg::Mean, "mean".to_owned()),
                "std" => (Agg::Std, "std".to_owned()),
                "min" => (Agg::Min, "min".to_owned()),
                "max" => (Agg::Max, "max".to_owned()),
                "slope" => (Agg::Slope, "slope".to_owned()),
                "frames" => (Agg::Frames, "frames".to_owned()),
                "rms" => (Agg::Rms, "rms".to_owned()),
                "peak" => (Agg::Peak, "peak".to_owned()),
                "crest" => (Agg::Crest, "crest".to_owned()),
                "kurtosis" => (Agg::Kurtosis, "kurtosis".to_owned()),
                "ewma" => {
                    let h = p.number(
                        "half_life_ms",
                        None,
                        |x| x > 0.0,
                        "a number of milliseconds > 0",
                    )?;
                    canon.insert("half_life_ms".into(), h.into());
                    let slot = slot_of(&mut ewma_half_lives, h);
                    (
                        Agg::Ewma {
                            half_life_ms: h,
                            slot,
                        },
                        "ewma".to_owned(),
                    )
                }
                "quantile" => {
                    let q = p.number(
                        "q",
                        None,
                        |x| (0.0..=1.0).contains(&x),
                        "a number in [0, 1]",
                    )?;
                    let alpha = p.number(
                        "accuracy",
                        Some(DEFAULT_ACCURACY),
                        |x| (1e-6..=0.5).contains(&x),
                        "a relative accuracy in [1e-6, 0.5]",
                    )?;
                    let bins = p.number(
                        "max_bins",
                        Some(f64::from(DEFAULT_MAX_BINS)),
                        |x| x.fract() == 0.0 && (64.0..=65536.0).contains(&x),
                        "an integer in [64, 65536]",
                    )?;
                    let sketch = SketchConfig {
                        alpha,
                        max_bins: bins as u32,
                    };
                    canon.insert("q".into(), q.into());
                    canon.insert("accuracy".into(), alpha.into());
                    canon.insert("max_bins".into(), (bins as u32).into());
                    let slot = slot_of(&mut sketches, sketch);
                    (
                        Agg::Quantile { q, sketch, slot },
                        format!("p{}", percent_label(q)),
                    )
                }
                "band" => {
                    let lo = p.number("lo_hz", None, |x| x >= 0.0, "a frequency in Hz >= 0")?;
                    let hi = p.number(
                        "hi_hz",
                        None,
                        |x| x > lo,
                        &format!("a frequency in Hz > lo_hz ({lo})"),
                    )?;
                    canon.insert("lo_hz".into(), lo.into());
                    canon.insert("hi_hz".into(), hi.into());
                    let slot = bands.len();
                    bands.push((lo, hi));
                    (
                        Agg::Band {
                            lo_hz: lo,
                            hi_hz: hi,
                            slot,
                        },
                        format!("band_{}_{}hz", number_label(lo), number_label(hi)),
                    )
                }
                _ => unreachable!("kind checked against Agg::KINDS"),
            };
            let name = match params.get("name") {
                None => default_name,
                Some(Json::String(s)) if valid_name(s) => s.clone(),
                Some(Json::String(s)) => {
                    return Err(p.err(format_args!(
                    "name {s:?} must be 1..=64 characters [A-Za-z0-9_], not starting with a digit"
                )))
                }
                Some(other) => {
                    return Err(p.err(format_args!(
                        "\"name\" must be a string, got {}",
                        json_type(other)
                    )))
                }
            };
            if let Some(first) = outputs.iter().position(|o| o.name == name) {
                return Err(spec_err(format!(
                    "aggregations {first} and {index} both produce the output {name:?}; give one a \"name\""
                )));
            }
            canon.insert("name".into(), Json::String(name.clone()));
            canonical.push(Json::Object(canon));
            outputs.push(Output { name, agg });
        }
        let has = |f: fn(&Agg) -> bool| outputs.iter().any(|o| f(&o.agg));
        // serde_json maps are sorted by key, so this text is canonical.
        let canonical = Json::Array(canonical).to_string();
        Ok(Spec {
            moments: has(|a| matches!(a, Agg::Sum | Agg::Mean | Agg::Std)),
            min_max: has(|a| matches!(a, Agg::Min | Agg::Max)),
            slope: has(|a| matches!(a, Agg::Slope)),
            values: has(|a| !a.on_frames()),
            frames: has(Agg::on_frames),
            fingerprint: crc32fast::hash(canonical.as_bytes()),
            canonical,
            outputs,
            ewma_half_lives,
            sketches,
            bands,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|o| o.name.as_str())
    }
}

fn slot_of<T: PartialEq + Copy>(slots: &mut Vec<T>, v: T) -> usize {
    slots.iter().position(|s| *s == v).unwrap_or_else(|| {
        slots.push(v);
        slots.len() - 1
    })
}

// ------------------------------------------------------------------ state

/// Neumaier-compensated sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sum {
    sum: f64,
    comp: f64,
}

impl Sum {
    #[inline]
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        // Once the sum overflows the compensation is meaningless (inf - inf).
        if t.is_finite() {
            self.comp += if self.sum.abs() >= x.abs() {
                (self.sum - t) + x
            } else {
                (x - t) + self.sum
            };
        }
        self.sum = t;
    }

    fn merge(&mut self, o: &Sum) {
        self.add(o.sum);
        self.comp += o.comp;
    }

    fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

/// Welford mean and `M2 = sum (x - mean)^2`, plus the compensated sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Moments {
    sum: Sum,
    mean: f64,
    m2: f64,
}

/// EWMA sums relative to `at`, the latest event time seen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ewma {
    at: i64,
    /// `sum w_i x_i` and `sum w_i` with `w_i = 2^(-(at - t_i) / h)`; `w = 0` when empty.
    wx: f64,
    w: f64,
}

impl Ewma {
    const EMPTY: Ewma = Ewma {
        at: i64::MIN,
        wx: 0.0,
        w: 0.0,
    };

    #[inline]
    fn decay(from: i64, to: i64, half_life_ms: f64) -> f64 {
        (-(to.abs_diff(from) as f64) / half_life_ms).exp2()
    }

    /// Fold `o` in: the sums of the older side are decayed to the newer `at`.
    #[inline]
    fn merge(&mut self, o: &Ewma, h: f64) {
        if o.w == 0.0 {
            return;
        }
        if self.w == 0.0 {
            *self = *o;
        } else if o.at > self.at {
            let f = Self::decay(self.at, o.at, h);
            self.wx = self.wx * f + o.wx;
            self.w = self.w * f + o.w;
            self.at = o.at;
        } else {
            let f = Self::decay(o.at, self.at, h);
            self.wx += f * o.wx;
            self.w += f * o.w;
        }
    }

    fn value(&self) -> f64 {
        if self.w == 0.0 {
            f64::NAN
        } else {
            self.wx / self.w
        }
    }
}

/// Co-moments of `(t - t0, x)` for the least-squares slope.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slope {
    t0: i64,
    mean_t: f64,
    mean_x: f64,
    m2_t: f64,
    c_tx: f64,
}

impl Slope {
    /// `n` is the count including this value.
    #[inline]
    fn add(&mut self, n: u64, t: i64, x: f64) {
        if n == 1 {
            *self = Slope {
                t0: t,
                mean_t: 0.0,
                mean_x: x,
                m2_t: 0.0,
                c_tx: 0.0,
            };
            return;
        }
        let tr = (i128::from(t) - i128::from(self.t0)) as f64;
        let nf = n as f64;
        let dt = tr - self.mean_t;
        self.mean_t += dt / nf;
        self.mean_x += (x - self.mean_x) / nf;
        self.m2_t += dt * (tr - self.mean_t);
        self.c_tx += dt * (x - self.mean_x);
    }

    /// `na`, `nb`: the counts of `self` and `o` before the merge.
    fn merge(&mut self, na: u64, o: &Slope, nb: u64) {
        if nb == 0 {
            return;
        }
        if na == 0 {
            *self = *o;
            return;
        }
        let (fa, fb) = (na as f64, nb as f64);
        let n = fa + fb;
        let shift = (i128::from(o.t0) - i128::from(self.t0)) as f64;
        let dt = o.mean_t + shift - self.mean_t;
        let dx = o.mean_x - self.mean_x;
        self.m2_t += o.m2_t + dt * dt * fa * fb / n;
        self.c_tx += o.c_tx + dt * dx * fa * fb / n;
        self.mean_t += dt * fb / n;
        self.mean_x += dx * fb / n;
    }

    /// Per second (times are in ms).
    fn value(&self, n: u64) -> f64 {
        if n < 2 || self.m2_t == 0.0 {
            f64::NAN
        } else {
            self.c_tx / self.m2_t * 1000.0
        }
    }
}

/// Pooled waveform state of a window's frames.
#[derive(Debug, Clone, PartialEq)]
struct Waves {
    frames: u64,
    moments: Moments4,
    peak: f64,
    /// Per band: sum over frames of the band's energy (`N * power`).
    energy: Vec<f64>,
}

/// The state of one key and window for a [`Spec`].
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulator {
    spec: Arc<Spec>,
    /// Finite values aggregated.
    n: u64,
    skipped_values: u64,
    skipped_frames: u64,
    moments: Moments,
    min: f64,
    max: f64,
    ewma: Vec<Ewma>,
    slope: Slope,
    sketches: Vec<DdSketch>,
    waves: Waves,
}

impl Accumulator {
    pub fn new(spec: Arc<Spec>) -> Self {
        Accumulator {
            n: 0,
            skipped_values: 0,
            skipped_frames: 0,
            moments: Moments::default(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ewma: vec![Ewma::EMPTY; spec.ewma_half_lives.len()],
            slope: Slope::default(),
            sketches: spec.sketches.iter().map(|&c| DdSketch::new(c)).collect(),
            waves: Waves {
                frames: 0,
                moments: Moments4::default(),
                peak: 0.0,
                energy: vec![0.0; spec.bands.len()],
            },
            spec,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Finite values aggregated.
    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn skipped_values(&self) -> u64 {
        self.skipped_values
    }

    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    pub fn frames(&self) -> u64 {
        self.waves.frames
    }

    fn no_values(&self) -> SluiceErr {
        spec_err(format!(
            "the feature spec has no value aggregations (its outputs: {}); feed it frames",
            self.spec.names().collect::<Vec<_>>().join(", ")
        ))
    }

    fn no_frames(&self) -> SluiceErr {
        spec_err(format!(
            "the feature spec has no frame aggregations (its outputs: {}); feed it values",
            self.spec.names().collect::<Vec<_>>().join(", ")
        ))
    }

    #[inline]
    fn add(&mut self, t: i64, x: f64) {
        if !x.is_finite() {
            self.skipped_values += 1;
            return;
        }
        self.n += 1;
        let spec = &*self.spec;
        if spec.moments {
            let m = &mut self.moments;
            m.sum.add(x);
            let d = x - m.mean;
            m.mean += d / self.n as f64;
            m.m2 += d * (x - m.mean);
        }
        if spec.min_max {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        for (e, &h) in self.ewma.iter_mut().zip(&spec.ewma_half_lives) {
            e.merge(
                &Ewma {
                    at: t,
                    wx: x,
                    w: 1.0,
                },
                h,
            );
        }
        if spec.slope {
            self.slope.add(self.n, t, x);
        }
        for s in &mut self.sketches {
            s.add(x);
        }
    }

    /// Add one value at event time `t` (ms). Non-finite values are counted
    /// in `skipped_values` and otherwise ignored.
    pub fn update(&mut self, t: i64, x: f64) -> Result<(), SluiceErr> {
        if !self.spec.values {
            return Err(self.no_values());
        }
        self.add(t, x);
        Ok(())
    }

    /// Add `ts[i], xs[i]` for every `i` (lengths must match).
    pub fn update_many(&mut self, ts: &[i64], xs: &[f64]) -> Result<(), SluiceErr> {
        if !self.spec.values {
            return Err(self.no_values());
        }
        if ts.len() != xs.len() {
            return Err(SluiceErr::Value(format!(
                "update_many: {} timestamps but {} values",
                ts.len(),
                xs.len()
            )));
        }
        for (&t, &x) in ts.iter().zip(xs) {
            self.add(t, x);
        }
        Ok(())
    }

    /// Add one frame sampled at `fs` Hz. Returns `false` when it was skipped
    /// (a non-finite sample; counted in `skipped_frames`).
    pub fn update_frame(
        &mut self,
        samples: impl ExactSizeIterator<Item = f64>,
        fs: f64,
    ) -> Result<bool, SluiceErr> {
        if !self.spec.frames {
            return Err(self.no_frames());
        }
        let len = samples.len();
        if len == 0 || len > MAX_FRAME_SAMPLES {
            return Err(SluiceErr::Value(format!(
                "a frame must have 1..={MAX_FRAME_SAMPLES} samples, got {len}"
            )));
        }
        if !(fs.is_finite() && fs > 0.0) {
            return Err(SluiceErr::Value(format!(
                "sample_rate_hz must be a finite number > 0, got {fs}"
            )));
        }
        match wave::analyse(samples, fs, &self.spec.bands, &mut self.waves.energy) {
            Some(f) => {
                let w = &mut self.waves;
                w.frames += 1;
                w.moments.merge(&f.moments);
                w.peak = w.peak.max(f.peak);
                Ok(true)
            }
            None => {
                self.skipped_frames += 1;
                Ok(false)
            }
        }
    }

    /// Fold `o` (an accumulator of an equal spec) into `self`.
    pub fn merge(&mut self, o: &Accumulator) -> Result<(), SluiceErr> {
        if self.spec.fingerprint != o.spec.fingerprint || *self.spec != *o.spec {
            return Err(spec_err(format!(
                "cannot merge accumulators of different feature specs (fingerprints {:#010x} and {:#010x})",
                self.spec.fingerprint, o.spec.fingerprint
            )));
        }
        let (na, nb) = (self.n, o.n);
        let spec = &*self.spec;
        if spec.moments && nb > 0 {
            let (a, b) = (&mut self.moments, &o.moments);
            a.sum.merge(&b.sum);
            if na == 0 {
                a.mean = b.mean;
                a.m2 = b.m2;
            } else {
                let (fa, fb) = (na as f64, nb as f64);
                let n = fa + fb;
                let d = b.mean - a.mean;
                a.m2 += b.m2 + d * d * fa * fb / n;
                a.mean += d * fb / n;
            }
        }
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        for ((e, oe), &h) in self.ewma.iter_mut().zip(&o.ewma).zip(&spec.ewma_half_lives) {
            e.merge(oe, h);
        }
        if spec.slope {
            self.slope.merge(na, &o.slope, nb);
        }
        for (s, os) in self.sketches.iter_mut().zip(&o.sketches) {
            s.merge(os);
        }
        let (w, ow) = (&mut self.waves, &o.waves);
        w.frames += ow.frames;
        w.moments.merge(&ow.moments);
        w.peak = w.peak.max(ow.peak);
        for (e, oe) in w.energy.iter_mut().zip(&ow.energy) {
            *e += oe;
        }
        self.n += nb;
        self.skipped_values += o.skipped_values;
        self.skipped_frames += o.skipped_frames;
        Ok(())
    }

    /// The outputs' values, in spec order.
    pub fn result(&self) -> Vec<f64> {
        let n = self.n;
        let if_any = |v: f64| if n == 0 { f64::NAN } else { v };
        let w = &self.waves;
        let samples = w.moments.n as f64;
        self.spec
            .outputs
            .iter()
            .map(|o| match &o.agg {
                Agg::Count => n as f64,
                Agg::Sum => self.moments.sum.value(),
                Agg::Mean => if_any(self.moments.mean),
                Agg::Std => if_any((self.moments.m2 / n as f64).sqrt()),
                Agg::Min => if_any(self.min),
                Agg::Max => if_any(self.max),
                Agg::Ewma { slot, .. } => self.ewma[*slot].value(),
                Agg::Slope => self.slope.value(n),
                Agg::Quantile { q, slot, .. } => self.sketches[*slot].quantile(*q),
                Agg::Frames => w.frames as f64,
                Agg::Rms => w.moments.rms(),
                Agg::Peak => {
                    if w.frames == 0 {
                        f64::NAN
                    } else {
                        w.peak
                    }
                }
                Agg::Crest => w.peak / w.moments.rms(),
                Agg::Kurtosis => w.moments.kurtosis(),
                Agg::Band { slot, .. } => w.energy[*slot] / samples,
            })
            .collect()
    }

    /// `(name, value)` pairs, in spec order.
    pub fn result_map(&self) -> BTreeMap<String, f64> {
        self.spec
            .names()
            .map(str::to_owned)
            .zip(self.result())
            .collect()
    }

    // --------------------------------------------------------------- bytes

    /// The state as a blob: version byte, spec fingerprint (u32 LE), the
    /// components the spec needs, CRC-32 (LE) of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let spec = &*self.spec;
        let mut w = Writer::default();
        w.u8(STATE_VERSION);
        w.u32(spec.fingerprint);
        w.varint(self.n);
        w.varint(self.skipped_values);
        w.varint(self.skipped_frames);
        if self.n > 0 {
            if spec.moments {
                w.f64(self.moments.sum.sum);
                w.f64(self.moments.sum.comp);
                w.f64(self.moments.mean);
                w.f64(self.moments.m2);
            }
            if spec.min_max {
                w.f64(self.min);
                w.f64(self.max);
            }
            for e in &self.ewma {
                w.i64(e.at);
                w.f64(e.wx);
                w.f64(e.w);
            }
            if spec.slope {
                let s = &self.slope;
                w.i64(s.t0);
                for v in [s.mean_t, s.mean_x, s.m2_t, s.c_tx] {
                    w.f64(v);
                }
            }
        }
        for s in &self.sketches {
            s.write(&mut w);
        }
        if spec.frames {
            let v = &self.waves;
            w.varint(v.frames);
            if v.frames > 0 {
                w.varint(v.moments.n);
                for x in [
                    v.moments.mean,
                    v.moments.m2,
                    v.moments.m3,
                    v.moments.m4,
                    v.peak,
                ] {
                    w.f64(x);
                }
                for &e in &v.energy {
                    w.f64(e);
                }
            }
        }
        let crc = crc32fast::hash(&w.buf);
        w.u32(crc);
        w.buf
    }

    /// Rebuild an accumulator from [`Accumulator::to_bytes`] for the same
    /// spec. A blob of another version, another spec, with a wrong checksum
    /// or inconsistent contents is a [`SluiceErr::State`].
    pub fn from_bytes(spec: Arc<Spec>, data: &[u8]) -> Result<Self, SluiceErr> {
        const MIN_LEN: usize = 1 + 4 + 3 + 4;
        if data.len() < MIN_LEN {
            return Err(bad(format!(
                "state blob is {} bytes, shorter than the smallest valid one ({MIN_LEN})",
                data.len()
            )));
        }
        if data[0] != STATE_VERSION {
            return Err(bad(format!(
                "state blob has format version {}, this build reads version {STATE_VERSION}",
                data[0]
            )));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(bad(format!(
                "state blob checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): corrupted"
            )));
        }
        let mut r = Reader::new(&body[1..]);
        let fp = r.u32("the spec fingerprint")?;
        if fp != spec.fingerprint {
            return Err(bad(format!(
                "state blob was written for another feature spec (fingerprint {fp:#010x}, this spec's is {:#010x})",
                spec.fingerprint
            )));
        }
        let mut a = Accumulator::new(spec.clone());
        a.n = r.varint("the value count")?;
        a.skipped_values = r.varint("the skipped-value count")?;
        a.skipped_frames = r.varint("the skipped-frame count")?;
        if a.n > 0 {
            if spec.moments {
                a.moments.sum.sum = r.f64("the sum")?;
                a.moments.sum.comp = r.f64("the sum's compensation")?;
                a.moments.mean = r.f64("the mean")?;
                a.moments.m2 = r.f64("M2")?;
                if a.moments.m2.is_nan() || a.moments.m2 < 0.0 {
                    return Err(bad(format!("M2 is {}, must be >= 0", a.moments.m2)));
                }
            }
            if spec.min_max {
                a.min = r.finite("the min")?;
                a.max = r.finite("the max")?;
                if a.min > a.max {
                    return Err(bad(format!("min {} > max {}", a.min, a.max)));
                }
            }
            for e in &mut a.ewma {
                e.at = r.i64("an EWMA time")?;
                e.wx = r.f64("an EWMA sum")?;
                e.w = r.finite("an EWMA weight")?;
                if e.w < 1.0 {
                    return Err(bad(format!("an EWMA weight is {}, must be >= 1", e.w)));
                }
            }
            if spec.slope {
                let s = &mut a.slope;
                s.t0 = r.i64("the slope's t0")?;
                s.mean_t = r.finite("the slope's mean time")?;
                s.mean_x = r.f64("the slope's mean value")?;
                s.m2_t = r.finite("the slope's time M2")?;
                s.c_tx = r.f64("the slope's co-moment")?;
                if s.m2_t < 0.0 {
                    return Err(bad(format!(
                        "the slope's time M2 is {}, must be >= 0",
                        s.m2_t
                    )));
                }
            }
        }
        for (i, s) in a.sketches.iter_mut().enumerate() {
            *s = DdSketch::read(
                &mut r,
                spec.sketches[i],
                a.n,
                &format!("quantile sketch {i}"),
            )?;
        }
        if spec.frames {
            let v = &mut a.waves;
            v.frames = r.varint("the frame count")?;
            if v.frames > 0 {
                v.moments.n = r.varint("the sample count")?;
                if v.moments.n < v.frames {
                    return Err(bad(format!(
                        "{} samples in {} frames: every frame has at least one",
                        v.moments.n, v.frames
                    )));
                }
                v.moments.mean = r.f64("the sample mean")?;
                v.moments.m2 = r.f64("the sample M2")?;
                v.moments.m3 = r.f64("the sample M3")?;
                v.moments.m4 = r.f64("the sample M4")?;
                v.peak = r.f64("the peak")?;
                if [v.moments.m2, v.moments.m4, v.peak]
                    .iter()
                    .any(|x| x.is_nan() || *x < 0.0)
                {
                    return Err(bad(
                        "the frame moments are inconsistent (negative M2, M4 or peak)",
                    ));
                }
                for e in &mut v.energy {
                    *e = r.f64("a band energy")?;
                    if e.is_nan() || *e < 0.0 {
                        return Err(bad(format!("a band energy is {e}, must be >= 0")));
                    }
                }
            }
        }
        if r.remaining() != 0 {
            return Err(bad(format!(
                "{} bytes left over after the state the spec describes",
                r.remaining()
            )));
        }
        Ok(a)
    }
}

impl Spec {
    /// A human-readable one-liner for `__repr__`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, o) in self.outputs.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{}", o.name);
        }
        s
    }
}
