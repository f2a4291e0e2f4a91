//! DDSketch (Masson, Rim, Lee: "DDSketch: a fast and fully-mergeable quantile
//! sketch with relative-error guarantees", VLDB 2019) with the logarithmic
//! index mapping and "collapsing lowest" dense stores, as DataDog's
//! reference implementations do.
//!
//! Guarantee: for a sketch of `n` values, `quantile(q)` is within relative
//! error `alpha` of `x[floor(q * (n - 1))]` (the sorted values, 0-based, i.e.
//! numpy's `method="lower"`), as long as no bin was collapsed (the values'
//! magnitudes span less than a factor `gamma^max_bins`, about 10^17 for
//! `alpha = 0.01` and 2048 bins) and the value is not subnormal (those count
//! as zero). `quantile(0)` and `quantile(1)` are the exact min and max, and
//! every estimate is clamped into `[min, max]`.
//!
//! Why not the `sketches-ddsketch` crate: its decoders trust their input (a
//! 12-byte hostile blob makes `from_java_bytes` panic on an out-of-range bin
//! index, release build included), and a non-default `Config` does not
//! survive its encoding (decoded sketches come back with default
//! `max_num_bins`/`min_value` and then refuse to merge with fresh ones).
//! State blobs come back from Flink checkpoints, so they are validated here
//! field by field; the whole sketch is ~200 lines.

use super::codec::{bad, Reader, Writer};
use crate::errors::SluiceErr;

/// Smallest magnitude given its own bin; smaller (subnormal) values and
/// zeros go to the zero count.
const MIN_INDEXABLE: f64 = f64::MIN_POSITIVE;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SketchConfig {
    /// Relative accuracy, `1e-6 <= alpha <= 0.5`.
    pub alpha: f64,
    /// Most bins per sign (`64..=65536`).
    pub max_bins: u32,
}

/// Bin counts of one sign, keyed by `ceil(log_gamma |x|)`.
///
/// Canonical form (so equal multisets give equal stores and merge is exactly
/// commutative and associative): `bins` is empty or starts and ends with a
/// non-zero count; `offset` is the key of `bins[0]`. When the keys span more
/// than `max_bins`, every key below `top - max_bins + 1` is counted in that
/// lowest bin.
#[derive(Debug, Clone, Default, PartialEq)]
struct Store {
    offset: i32,
    bins: Vec<u64>,
}

impl Store {
    fn count(&self) -> u64 {
        self.bins.iter().sum()
    }

    fn add(&mut self, key: i32, count: u64, max_bins: u32) {
        if self.bins.is_empty() {
            self.offset = key;
            self.bins.push(count);
            return;
        }
        let span = i64::from(max_bins) - 1;
        let offset = i64::from(self.offset);
        let top = offset + self.bins.len() as i64 - 1;
        let k = i64::from(key);
        if k > top {
            let floor = k - span;
            if floor > offset {
                // Collapse: everything below `floor` into the bin `floor`.
                let fold = (floor - offset) as usize;
                let folded: u64 = self.bins.iter().take(fold).sum();
                if fold >= self.bins.len() {
                    self.bins.clear();
                    self.bins.push(0);
                } else {
                    self.bins.drain(..fold);
                }
                self.bins[0] += folded;
                self.offset = floor as i32;
            }
            self.bins
                .resize((k - i64::from(self.offset) + 1) as usize, 0);
            self.bins[(k - i64::from(self.offset)) as usize] += count;
        } else if k < offset {
            let k = k.max(top - span);
            let grow = (offset - k) as usize;
            if grow > 0 {
                self.bins.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = k as i32;
            }
            self.bins[0] += count;
        } else {
            self.bins[(k - offset) as usize] += count;
        }
    }

    fn merge(&mut self, other: &Store, max_bins: u32) {
        // Highest key first, so `other`'s low bins fold at most once.
        for (i, &c) in other.bins.iter().enumerate().rev() {
            if c > 0 {
                self.add(other.offset + i as i32, c, max_bins);
            }
        }
    }

    /// Key of the bin holding the value of ascending rank `rank` (< count).
    fn key_at_rank(&self, rank: u64) -> i32 {
        let mut seen = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            seen += c;
            if seen > rank {
                return self.offset + i as i32;
            }
        }
        self.offset + self.bins.len() as i32 - 1
    }

    fn write(&self, w: &mut Writer) {
        w.varint(self.bins.len() as u64);
        if !self.bins.is_empty() {
            w.zigzag(i64::from(self.offset));
            for &c in &self.bins {
                w.varint(c);
            }
        }
    }

    fn read(
        r: &mut Reader<'_>,
        what: &str,
        max_bins: u32,
        keys: (i32, i32),
    ) -> Result<Self, SluiceErr> {
        let len = r.varint(what)?;
        if len > u64::from(max_bins) {
            return Err(bad(format!(
                "{what}: {len} bins, the spec allows at most {max_bins}"
            )));
        }
        if len == 0 {
            return Ok(Store::default());
        }
        let offset = r.zigzag(what)?;
        let last = offset + len as i64 - 1;
        if offset < i64::from(keys.0) || last > i64::from(keys.1) {
            return Err(bad(format!(
                "{what}: bin keys {offset}..={last} outside the mapping's range {}..={}",
                keys.0, keys.1
            )));
        }
        let mut bins = Vec::with_capacity(len as usize);
        for _ in 0..len {
            bins.push(r.varint(what)?);
        }
        if bins[0] == 0 || bins[bins.len() - 1] == 0 {
            return Err(bad(format!("{what}: first and last bin must be non-zero")));
        }
        Ok(Store {
            offset: offset as i32,
            bins,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DdSketch {
    cfg: SketchConfig,
    /// `ln(gamma)`, `gamma = (1 + alpha) / (1 - alpha)`.
    ln_gamma: f64,
    pos: Store,
    neg: Store,
    zero: u64,
    min: f64,
    max: f64,
}

impl DdSketch {
    pub fn new(cfg: SketchConfig) -> Self {
        DdSketch {
            cfg,
            ln_gamma: ((1.0 + cfg.alpha) / (1.0 - cfg.alpha)).ln(),
            pos: Store::default(),
            neg: Store::default(),
            zero: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    #[inline]
    fn key(&self, magnitude: f64) -> i32 {
        // Saturating cast; `magnitude` is finite and >= MIN_INDEXABLE here.
        (magnitude.ln() / self.ln_gamma).ceil() as i32
    }

    /// Representative value of bin `key`, `2 gamma^key / (1 + gamma)`: relative
    /// error <= alpha over the whole bin `(gamma^(key-1), gamma^key]`.
    fn value(&self, key: i32) -> f64 {
        (f64::from(key) * self.ln_gamma).exp() * 2.0 / (1.0 + self.ln_gamma.exp())
    }

    /// The keys a finite value can have (for validating decoded stores).
    fn key_range(&self) -> (i32, i32) {
        (self.key(MIN_INDEXABLE), self.key(f64::MAX))
    }

    pub fn count(&self) -> u64 {
        self.pos.count() + self.neg.count() + self.zero
    }

    /// Add a finite value.
    #[inline]
    pub fn add(&mut self, x: f64) {
        let a = x.abs();
        if a < MIN_INDEXABLE {
            self.zero += 1;
        } else if x > 0.0 {
            let k = self.key(a);
            self.pos.add(k, 1, self.cfg.max_bins);
        } else {
            let k = self.key(a);
            self.neg.add(k, 1, self.cfg.max_bins);
        }
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Both sketches have the same config (the accumulator's spec ensures it).
    pub fn merge(&mut self, o: &DdSketch) {
        self.pos.merge(&o.pos, self.cfg.max_bins);
        self.neg.merge(&o.neg, self.cfg.max_bins);
        self.zero += o.zero;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Estimate of the `q`-quantile (`0 <= q <= 1`), NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return f64::NAN;
        }
        if q <= 0.0 {
            return self.min;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * (n - 1) as f64).floor() as u64).min(n - 1);
        let neg = self.neg.count();
        let est = if rank < neg {
            // Negative values ascend as their magnitude keys descend.
            -self.value(self.neg.key_at_rank(neg - 1 - rank))
        } else if rank < neg + self.zero {
            0.0
        } else {
            self.value(self.pos.key_at_rank(rank - neg - self.zero))
        };
        est.clamp(self.min, self.max)
    }

    pub fn write(&self, w: &mut Writer) {
        w.varint(self.zero);
        self.pos.write(w);
        self.neg.write(w);
        if self.count() > 0 {
            w.f64(self.min);
            w.f64(self.max);
        }
    }

    /// Read a sketch written by [`DdSketch::write`] for the same config and
    /// check that it holds exactly `n` values.
    pub fn read(
        r: &mut Reader<'_>,
        cfg: SketchConfig,
        n: u64,
        what: &str,
    ) -> Result<Self, SluiceErr> {
        let mut s = DdSketch::new(cfg);
        let keys = s.key_range();
        s.zero = r.varint(what)?;
        s.pos = Store::read(r, what, cfg.max_bins, keys)?;
        s.neg = Store::read(r, what, cfg.max_bins, keys)?;
        let total = [s.pos.bins.iter(), s.neg.bins.iter()]
            .into_iter()
            .flatten()
            .try_fold(s.zero, |acc, &c| acc.checked_add(c));
        if total != Some(n) {
            return Err(bad(format!(
                "{what}: holds {total:?} values, the state counts {n}"
            )));
        }
        if n > 0 {
            s.min = r.finite(what)?;
            s.max = r.finite(what)?;
            if s.min > s.max {
                return Err(bad(format!("{what}: min {} > max {}", s.min, s.max)));
            }
        }
        Ok(s)
    }
}
