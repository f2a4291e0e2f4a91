//! `sluice._native`: the Rust hot path of sluice (Avro decode / encode for
//! Confluent-framed Kafka records, plus the binary sensor-frame and
//! maintenance-event JSON decoders), built with pyo3 + maturin.
//!
//! Why hand-written: apache-avro re-resolves writer→reader schemas on every
//! call (avro-rs #310, ~80% of decode time), so we compile a resolution plan
//! once per (writer id, reader schema) and decode with it.
//!
//! Layout:
//! * [`schema`]  – apache-avro parses schema JSON; lowered once to an index-based IR.
//! * [`resolve`] – writer→reader resolution plan compiler (Avro 1.11 rules).
//! * [`decode`]  – plan executor, generic over an output [`decode::Sink`].
//! * [`encode`]  – schema-driven encoder, generic over an input [`encode::EncCtx`].
//! * [`framing`] – Confluent wire header.
//! * [`frames`]  – binary sensor frames (`sensor-frames` topic): decode, stats, encode.
//! * [`events`]  – maintenance-event JSON (`maintenance-events` topic) via serde_json.
//! * [`quality`] – great-expectations suites compiled to per-record checks.
//! * [`features`] – mergeable, serialisable window feature accumulators (moments,
//!   EWMA, slope, DDSketch quantiles, waveform RMS/peak/crest/kurtosis/FFT bands).
//! * [`model`]   – isolation-forest scoring replicating scikit-learn's `score_samples`.
//! * [`errors`]  – the one error enum + Python exception hierarchy.
//! * `py`        – pyo3 classes (`AvroDecoder`, `AvroEncoder`, `FrameDecoder`,
//!   `EventDecoder`, `QualityChecker`, `FeatureSpec`, `FeatureAccumulator`, ...).

pub mod decode;
pub mod encode;
pub mod errors;
pub mod events;
pub mod features;
pub mod frames;
pub mod framing;
pub mod model;
mod py;
pub mod quality;
pub mod resolve;
pub mod schema;
pub mod value;

#[cfg(test)]
mod tests;

use pyo3::prelude::*;

/// The crate version, exported to Python as `__version__`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add_class::<py::AvroDecoder>()?;
    m.add_class::<py::AvroEncoder>()?;
    m.add_function(wrap_pyfunction!(py::parse_confluent_header, m)?)?;
    m.add_class::<py::FrameDecoder>()?;
    m.add_class::<py::EventDecoder>()?;
    m.add_function(wrap_pyfunction!(py::encode_frame, m)?)?;
    m.add_class::<py::QualityChecker>()?;
    m.add_class::<py::FeatureSpec>()?;
    m.add_class::<py::FeatureAccumulator>()?;
    m.add_class::<py::IsolationForestModel>()?;
    errors::register(m)?;
    Ok(())
}
