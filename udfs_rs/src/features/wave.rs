//! Waveform features of vibration frames and their mergeable window state.
//!
//! A window's frames are treated as one population of samples: `rms`,
//! `kurtosis` and `crest` come from pooled central moments (per-frame moments
//! computed two-pass, then merged with Pébay's formulas), `peak` is the
//! largest `|x|`, and band powers are the sample-weighted mean of the frames'
//! band powers. For a window of one frame these are exactly the frame's
//! features.
//!
//! Band power (one frame of `N` samples at `fs` Hz, rectangular window, no
//! detrending): with `X = rfft(x)` and `c_k = 1` for the DC bin and, for even
//! `N`, the Nyquist bin, `c_k = 2` otherwise, the bin's share of the mean
//! square is `P_k = c_k |X_k|^2 / N^2`; a band `[lo, hi)` sums the bins with
//! `lo <= k fs / N < hi`. By Parseval `sum_k P_k = mean(x^2) = rms^2`, so
//! bands that tile `[0, fs/2]` add up to `rms^2` (units: signal units squared).

use std::cell::RefCell;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Count, mean and central moment sums `M_p = sum (x - mean)^p`, p = 2..4.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments4 {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
}

impl Moments4 {
    /// Two-pass moments of a non-empty slice.
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
        for &x in xs {
            let d = x - mean;
            let d2 = d * d;
            m2 += d2;
            m3 += d2 * d;
            m4 += d2 * d2;
        }
        Moments4 {
            n: xs.len() as u64,
            mean,
            m2,
            m3,
            m4,
        }
    }

    /// Pébay (2008) / Terriberry pairwise update of the central moments.
    pub fn merge(&mut self, o: &Moments4) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let (na, nb) = (self.n as f64, o.n as f64);
        let n = na + nb;
        let d = o.mean - self.mean;
        let d_n = d / n;
        let d2 = d * d_n * na * nb; // d^2 na nb / n
        let m2 = self.m2 + o.m2 + d2;
        let m3 = self.m3 + o.m3 + d2 * d_n * (na - nb) + 3.0 * d_n * (na * o.m2 - nb * self.m2);
        let m4 = self.m4
            + o.m4
            + d2 * d_n * d_n * (na * na - na * nb + nb * nb)
            + 6.0 * d_n * d_n * (na * na * o.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * o.m3 - nb * self.m3);
        self.n += o.n;
        self.mean += d_n * nb;
        self.m2 = m2;
        self.m3 = m3;
        self.m4 = m4;
    }

    /// Root mean square, `sqrt(M2 / n + mean^2)`; NaN when empty.
    pub fn rms(&self) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        (self.m2 / self.n as f64 + self.mean * self.mean).sqrt()
    }

    /// Pearson's kurtosis `n M4 / M2^2` (3 for a normal distribution, not
    /// the excess); NaN when empty or constant.
    pub fn kurtosis(&self) -> f64 {
        if self.n == 0 || self.m2 == 0.0 {
            return f64::NAN;
        }
        self.n as f64 * self.m4 / (self.m2 * self.m2)
    }
}

/// The features of one frame, before they are merged into a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub moments: Moments4,
    pub peak: f64,
}

/// Bins `k` of an `n`-point real FFT at `fs` Hz with `lo <= k fs / n < hi`,
/// as a half-open index range clipped to `0..=n/2`.
pub fn band_bins(lo: f64, hi: f64, n: usize, fs: f64) -> std::ops::Range<usize> {
    let last = n / 2;
    let first_at_or_above = |f: f64| -> usize {
        // k fs >= f n, computed without dividing so that exact edges stay exact.
        let target = f * n as f64;
        let mut k = (target / fs).ceil().clamp(0.0, (last + 1) as f64) as usize;
        while k > 0 && (k - 1) as f64 * fs >= target {
            k -= 1;
        }
        while k <= last && (k as f64) * fs < target {
            k += 1;
        }
        k
    };
    let a = first_at_or_above(lo);
    let b = first_at_or_above(hi).max(a);
    a..b
}

/// Per-thread FFT planner and buffers: no allocation per frame once warm,
/// no lock (PyFlink may call from several threads).
struct Scratch {
    planner: RealFftPlanner<f64>,
    plan: Option<Arc<dyn RealToComplex<f64>>>,
    samples: Vec<f64>,
    fft_in: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        planner: RealFftPlanner::new(),
        plan: None,
        samples: Vec::new(),
        fft_in: Vec::new(),
        spectrum: Vec::new(),
        scratch: Vec::new(),
    });
}

/// Analyse one frame. `bands` are `(lo_hz, hi_hz)`; their power times `N`
/// (the band's energy, `sum x^2` units) is *added* to `energy`.
/// Returns `None`, and adds nothing, when the frame is empty or holds a
/// non-finite sample.
pub fn analyse(
    samples: impl Iterator<Item = f64>,
    fs: f64,
    bands: &[(f64, f64)],
    energy: &mut [f64],
) -> Option<Frame> {
    SCRATCH.with(|cell| {
        let s = &mut *cell.borrow_mut();
        s.samples.clear();
        s.samples.extend(samples);
        let n = s.samples.len();
        if n == 0 || !s.samples.iter().all(|x| x.is_finite()) {
            return None;
        }
        let moments = Moments4::of(&s.samples);
        let peak = s.samples.iter().fold(0.0f64, |p, x| p.max(x.abs()));
        if !bands.is_empty() {
            if s.plan.as_ref().is_none_or(|p| p.len() != n) {
                let plan = s.planner.plan_fft_forward(n);
                s.spectrum = plan.make_output_vec();
                s.scratch = plan.make_scratch_vec();
                s.plan = Some(plan);
            }
            let plan = s.plan.as_ref()?;
            s.fft_in.clear();
            s.fft_in.extend_from_slice(&s.samples);
            plan.process_with_scratch(&mut s.fft_in, &mut s.spectrum, &mut s.scratch)
                .ok()?;
            let nyquist = if n.is_multiple_of(2) {
                n / 2
            } else {
                usize::MAX
            };
            let inv_n = 1.0 / n as f64;
            for (&(lo, hi), e) in bands.iter().zip(energy.iter_mut()) {
                let mut sum = 0.0;
                for k in band_bins(lo, hi, n, fs) {
                    let c = if k == 0 || k == nyquist { 1.0 } else { 2.0 };
                    sum += c * s.spectrum[k].norm_sqr();
                }
                *e += sum * inv_n;
            }
        }
        Some(Frame { moments, peak })
    })
}
