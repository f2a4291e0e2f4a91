//! Binary sensor frames (`sensor-frames` topic), format v1. All integers are
//! big-endian; `docs/formats.md` is the normative description.
//!
//! ```text
//! offset        size     field
//! 0             2        magic b"SF"
//! 2             1        version (1)
//! 3             1        flags (0 in v1)
//! 4             1        device_id_len L (1..=64)
//! 5             L        device_id (UTF-8)
//! 5+L           8        ts_ms (i64, epoch milliseconds)
//! 13+L          4        sample_rate_hz (u32, > 0)
//! 17+L          2        n_samples N (u16, 1..=max_samples, max 4096)
//! 19+L          4*N      samples (f32 IEEE 754)
//! 19+L+4N       4        crc32 (CRC-32/ISO-HDLC, as zlib.crc32, of bytes 0..19+L+4N)
//! ```
//!
//! Decoding order (so a corrupted field can never cause a panic or an
//! out-of-bounds read, and a corrupted payload is reported as `bad-crc`):
//! 1. empty → `empty`; magic → `bad-magic`; version → `unsupported-version`
//!    (the version decides the layout);
//! 2. the frame length is computed from `device_id_len` and `n_samples` *as
//!    stored* (no range checks yet): input shorter → `truncated` (offset = the
//!    first incomplete field), longer → `trailing-bytes`;
//! 3. CRC-32 over everything before the CRC field → `bad-crc`;
//! 4. only then the field values: flags, `device_id_len`, `sample_rate_hz`,
//!    `n_samples` ranges → `type-mismatch`; device id UTF-8 → `invalid-utf8`.

use crate::errors::{DecodeReason, EncodeReason, SluiceErr};

pub const MAGIC: [u8; 2] = *b"SF";
pub const VERSION: u8 = 1;
/// Hard upper bound of `n_samples` in format v1 (and of `max_samples`).
pub const MAX_SAMPLES: usize = 4096;
pub const MAX_DEVICE_ID_LEN: usize = 64;

const OFF_VERSION: usize = 2;
const OFF_FLAGS: usize = 3;
const OFF_ID_LEN: usize = 4;
const OFF_ID: usize = 5;
/// Bytes between the end of the device id and the first sample: ts (8), rate (4), n (2).
const MID_LEN: usize = 14;
const CRC_LEN: usize = 4;

/// A validated v1 frame, borrowing from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    pub device_id: &'a str,
    pub ts_ms: i64,
    pub sample_rate_hz: u32,
    /// `n_samples * 4` bytes of big-endian f32.
    samples: &'a [u8],
}

/// One-pass statistics over the samples, accumulated in f64 in sample order:
/// `sum += x`, `sum_sq += x * x`, `peak_abs = max |x|`; `rms = sqrt(sum_sq / n)`,
/// `mean = sum / n`. A NaN sample makes all three NaN; infinities propagate
/// as IEEE 754 says (`+inf` and `-inf` together give a NaN mean).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub rms: f64,
    pub peak_abs: f64,
    pub mean: f64,
}

impl<'a> Frame<'a> {
    pub fn n_samples(&self) -> usize {
        self.samples.len() / 4
    }

    /// The samples, widened to f64 (exact).
    pub fn samples(&self) -> impl ExactSizeIterator<Item = f64> + 'a {
        self.samples
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_be_bytes([c[0], c[1], c[2], c[3]])))
    }

    pub fn stats(&self) -> Stats {
        let mut sum = 0.0f64;
        let mut sum_sq = 0.0f64;
        let mut peak = 0.0f64;
        let mut nan = false;
        for x in self.samples() {
            sum += x;
            sum_sq += x * x;
            let a = x.abs();
            if a > peak {
                peak = a;
            }
            nan |= x.is_nan();
        }
        // n >= 1 is guaranteed by `decode`.
        let n = self.n_samples() as f64;
        Stats {
            rms: (sum_sq / n).sqrt(),
            peak_abs: if nan { f64::NAN } else { peak },
            mean: sum / n,
        }
    }
}

#[inline]
fn be_u16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

#[inline]
fn be_u32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

#[inline]
fn be_i64(d: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    i64::from_be_bytes(b)
}

#[cold]
fn truncated(data: &[u8], field_at: usize, field: &str, need: usize) -> SluiceErr {
    SluiceErr::truncated(
        field_at,
        format!(
            "frame ends inside {field}: need {need} bytes at offset {field_at}, input has {}",
            data.len()
        ),
    )
}

/// Decode and validate one frame. `max_samples` must be in `1..=MAX_SAMPLES`.
pub fn decode(data: &[u8], max_samples: usize) -> Result<Frame<'_>, SluiceErr> {
    let len = data.len();
    if len == 0 {
        return Err(SluiceErr::decode(
            DecodeReason::Empty,
            0,
            "message is empty",
        ));
    }
    // 1. magic and version (only the bytes that are present).
    for (i, &want) in MAGIC.iter().enumerate() {
        match data.get(i) {
            Some(&b) if b != want => {
                return Err(SluiceErr::decode(
                    DecodeReason::BadMagic,
                    0,
                    format!(
                        "frame starts with {:02x?}, expected the magic b\"SF\" (53 46)",
                        &data[..len.min(2)]
                    ),
                ))
            }
            Some(_) => {}
            None => return Err(truncated(data, 0, "the magic", 2)),
        }
    }
    let version = *data
        .get(OFF_VERSION)
        .ok_or_else(|| truncated(data, OFF_VERSION, "the version", 1))?;
    if version != VERSION {
        return Err(SluiceErr::decode(
            DecodeReason::UnsupportedVersion,
            OFF_VERSION,
            format!(
                "frame version {version} is not supported (this decoder reads version {VERSION})"
            ),
        ));
    }
    if len <= OFF_FLAGS {
        return Err(truncated(data, OFF_FLAGS, "the flags", 1));
    }

    // 2. the frame length from the stored length fields, unchecked.
    let id_len = *data
        .get(OFF_ID_LEN)
        .ok_or_else(|| truncated(data, OFF_ID_LEN, "device_id_len", 1))? as usize;
    let off_ts = OFF_ID + id_len;
    let off_rate = off_ts + 8;
    let off_n = off_rate + 4;
    let off_samples = off_n + 2;
    if len < off_ts {
        return Err(truncated(data, OFF_ID, "device_id", id_len));
    }
    if len < off_rate {
        return Err(truncated(data, off_ts, "ts_ms", 8));
    }
    if len < off_n {
        return Err(truncated(data, off_rate, "sample_rate_hz", 4));
    }
    if len < off_samples {
        return Err(truncated(data, off_n, "n_samples", 2));
    }
    let n = be_u16(data, off_n) as usize;
    let off_crc = off_samples + 4 * n;
    let total = off_crc + CRC_LEN;
    if len < off_crc {
        let i = (len - off_samples) / 4;
        return Err(truncated(
            data,
            off_samples + 4 * i,
            &format!("sample {i} of {n}"),
            4,
        ));
    }
    if len < total {
        return Err(truncated(data, off_crc, "the CRC", CRC_LEN));
    }
    if len > total {
        return Err(SluiceErr::decode(
            DecodeReason::TrailingBytes,
            total,
            format!(
                "{} bytes after the CRC (frame with device_id_len {id_len} and {n} samples is {total} bytes)",
                len - total
            ),
        ));
    }

    // 3. CRC before any field value is trusted.
    let stored = be_u32(data, off_crc);
    let computed = crc32fast::hash(&data[..off_crc]);
    if stored != computed {
        return Err(SluiceErr::decode(
            DecodeReason::BadCrc,
            off_crc,
            format!(
                "CRC-32 mismatch: expected {computed:#010x} (computed over bytes 0..{off_crc}), actual {stored:#010x} (stored in the frame)"
            ),
        ));
    }

    // 4. field values.
    let flags = data[OFF_FLAGS];
    if flags != 0 {
        return Err(SluiceErr::mismatch(
            OFF_FLAGS,
            format!("flags is {flags:#04x}, must be 0 in version 1"),
        ));
    }
    if id_len == 0 || id_len > MAX_DEVICE_ID_LEN {
        return Err(SluiceErr::mismatch(
            OFF_ID_LEN,
            format!("device_id_len is {id_len}, must be 1..={MAX_DEVICE_ID_LEN}"),
        ));
    }
    let device_id = std::str::from_utf8(&data[OFF_ID..off_ts]).map_err(|e| {
        SluiceErr::decode(
            DecodeReason::InvalidUtf8,
            OFF_ID + e.valid_up_to(),
            format!(
                "device_id is not valid UTF-8 (first invalid byte at offset {})",
                OFF_ID + e.valid_up_to()
            ),
        )
    })?;
    let sample_rate_hz = be_u32(data, off_rate);
    if sample_rate_hz == 0 {
        return Err(SluiceErr::mismatch(
            off_rate,
            "sample_rate_hz is 0, must be > 0",
        ));
    }
    if n == 0 || n > max_samples {
        return Err(SluiceErr::mismatch(
            off_n,
            format!("n_samples is {n}, must be 1..={max_samples}"),
        ));
    }
    Ok(Frame {
        device_id,
        ts_ms: be_i64(data, off_ts),
        sample_rate_hz,
        samples: &data[off_samples..off_crc],
    })
}

#[cold]
fn enc_err(reason: EncodeReason, path: &str, detail: String) -> SluiceErr {
    SluiceErr::encode(reason, detail).in_path(path)
}

/// Validate the header values of [`encode`]; `n` is the number of samples.
pub fn check_encode_args(device_id: &str, sample_rate_hz: u32, n: usize) -> Result<(), SluiceErr> {
    if device_id.is_empty() || device_id.len() > MAX_DEVICE_ID_LEN {
        return Err(enc_err(
            EncodeReason::OutOfRange,
            "device_id",
            format!(
                "device_id is {} bytes of UTF-8, must be 1..={MAX_DEVICE_ID_LEN}",
                device_id.len()
            ),
        ));
    }
    if sample_rate_hz == 0 {
        return Err(enc_err(
            EncodeReason::OutOfRange,
            "sample_rate_hz",
            "sample_rate_hz must be > 0".into(),
        ));
    }
    if n == 0 || n > MAX_SAMPLES {
        return Err(enc_err(
            EncodeReason::OutOfRange,
            "samples",
            format!("{n} samples, must be 1..={MAX_SAMPLES}"),
        ));
    }
    Ok(())
}

/// Narrow one sample to f32: finite values that overflow f32 are an error,
/// NaN and ±inf pass through (they are valid frame content).
pub fn to_f32(x: f64, index: usize) -> Result<f32, SluiceErr> {
    let f = x as f32;
    if f.is_infinite() && x.is_finite() {
        return Err(enc_err(
            EncodeReason::OutOfRange,
            &format!("samples[{index}]"),
            format!("{x} does not fit an f32"),
        ));
    }
    Ok(f)
}

/// Encode a v1 frame. Errors are `EncodeError`s (`out-of-range`) naming the argument.
pub fn encode(
    device_id: &str,
    ts_ms: i64,
    sample_rate_hz: u32,
    samples: &[f32],
) -> Result<Vec<u8>, SluiceErr> {
    check_encode_args(device_id, sample_rate_hz, samples.len())?;
    Ok(encode_unchecked(
        VERSION,
        0,
        device_id.as_bytes(),
        ts_ms,
        sample_rate_hz,
        samples.len() as u16,
        samples,
    ))
}

/// Write a frame with arbitrary header values (tests build invalid frames
/// with it). `n_samples` is written as given, independently of `samples`;
/// `device_id.len()` must be < 256.
pub fn encode_unchecked(
    version: u8,
    flags: u8,
    device_id: &[u8],
    ts_ms: i64,
    sample_rate_hz: u32,
    n_samples: u16,
    samples: &[f32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(OFF_ID + device_id.len() + MID_LEN + 4 * samples.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(flags);
    out.push(device_id.len() as u8);
    out.extend_from_slice(device_id);
    out.extend_from_slice(&ts_ms.to_be_bytes());
    out.extend_from_slice(&sample_rate_hz.to_be_bytes());
    out.extend_from_slice(&n_samples.to_be_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_be_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<Frame<'_>, SluiceErr>) -> (DecodeReason, Option<usize>) {
        match r {
            Ok(f) => panic!("expected an error, decoded {f:?}"),
            Err(SluiceErr::Decode(d)) => (d.reason, d.offset),
            Err(e) => panic!("not a decode error: {e}"),
        }
    }

    /// Bit-by-bit CRC-32/ISO-HDLC (reflected 0xEDB88320), independent of crc32fast.
    fn crc32_reference(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Deterministic xorshift64* so the fuzz loops need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn sample_frame() -> Vec<u8> {
        encode(
            "dev-0001",
            1_700_000_000_123,
            1000,
            &[0.5, -1.25, 3.0, f32::MIN_POSITIVE, -0.0, 2.5e-3],
        )
        .unwrap()
    }

    #[test]
    fn crc_matches_zlib_check_value_and_reference() {
        // The standard check value of CRC-32/ISO-HDLC (zlib.crc32(b"123456789")).
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32_reference(b"123456789"), 0xcbf4_3926);
        let f = sample_frame();
        let body = &f[..f.len() - 4];
        assert_eq!(crc32_reference(body).to_be_bytes(), f[f.len() - 4..]);
    }

    #[test]
    fn golden_bytes() {
        let f = encode("d", 1, 2, &[1.0]).unwrap();
        let mut want: Vec<u8> = vec![b'S', b'F', 1, 0, 1, b'd'];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // ts_ms
        want.extend_from_slice(&[0, 0, 0, 2]); // sample_rate_hz
        want.extend_from_slice(&[0, 1]); // n_samples
        want.extend_from_slice(&[0x3f, 0x80, 0, 0]); // 1.0f32
        let crc = crc32_reference(&want);
        want.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(f, want);
        assert_eq!(f.len(), 23 + 1 + 4);
    }

    #[test]
    fn round_trip() {
        let samples = [0.5f32, -1.25, 3.0, f32::MIN_POSITIVE, -0.0, 2.5e-3];
        let f = sample_frame();
        let d = decode(&f, MAX_SAMPLES).unwrap();
        assert_eq!(d.device_id, "dev-0001");
        assert_eq!(d.ts_ms, 1_700_000_000_123);
        assert_eq!(d.sample_rate_hz, 1000);
        assert_eq!(d.n_samples(), samples.len());
        let got: Vec<f64> = d.samples().collect();
        let want: Vec<f64> = samples.iter().map(|&x| f64::from(x)).collect();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        // Extremes of every field.
        let id = "é".repeat(32); // 64 bytes of UTF-8
        let many: Vec<f32> = (0..MAX_SAMPLES).map(|i| i as f32 - 2048.0).collect();
        for (ts, rate) in [(i64::MIN, 1u32), (i64::MAX, u32::MAX), (-1, 7)] {
            let f = encode(&id, ts, rate, &many).unwrap();
            let d = decode(&f, MAX_SAMPLES).unwrap();
            assert_eq!(
                (d.device_id, d.ts_ms, d.sample_rate_hz),
                (id.as_str(), ts, rate)
            );
            assert_eq!(d.n_samples(), MAX_SAMPLES);
            assert!(d.samples().zip(&many).all(|(a, &b)| a == f64::from(b)));
        }
    }

    #[test]
    fn stats_one_pass() {
        let f = encode("d", 0, 1, &[3.0, -4.0]).unwrap();
        let s = decode(&f, MAX_SAMPLES).unwrap().stats();
        assert_eq!(s.rms, 12.5f64.sqrt());
        assert_eq!(s.peak_abs, 4.0);
        assert_eq!(s.mean, -0.5);
    }

    #[test]
    fn non_finite_samples_decode_and_propagate() {
        let cases: [(&[f32], [f64; 3]); 4] = [
            (&[1.0, f32::NAN, 2.0], [f64::NAN, f64::NAN, f64::NAN]),
            (&[f32::NAN, 5.0], [f64::NAN, f64::NAN, f64::NAN]),
            (
                &[1.0, f32::INFINITY],
                [f64::INFINITY, f64::INFINITY, f64::INFINITY],
            ),
            (
                &[f32::NEG_INFINITY, f32::INFINITY],
                [f64::INFINITY, f64::INFINITY, f64::NAN],
            ),
        ];
        for (samples, [rms, peak, mean]) in cases {
            let f = encode("d", 0, 1, samples).unwrap();
            let s = decode(&f, MAX_SAMPLES).unwrap().stats();
            for (got, want, what) in [
                (s.rms, rms, "rms"),
                (s.peak_abs, peak, "peak"),
                (s.mean, mean, "mean"),
            ] {
                assert!(
                    got == want || (got.is_nan() && want.is_nan()),
                    "{samples:?} {what}: {got} != {want}"
                );
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_an_error() {
        let allowed = [
            DecodeReason::BadCrc,
            DecodeReason::BadMagic,
            DecodeReason::UnsupportedVersion,
            DecodeReason::TypeMismatch,
            DecodeReason::Truncated,
            DecodeReason::TrailingBytes,
        ];
        for f in [sample_frame(), encode("x", -5, 1, &[1.0]).unwrap()] {
            for i in 0..f.len() {
                for bit in 0..8 {
                    let mut g = f.clone();
                    g[i] ^= 1 << bit;
                    let (r, off) = reason(decode(&g, MAX_SAMPLES));
                    assert!(allowed.contains(&r), "byte {i} bit {bit}: {r:?}");
                    assert!(off.is_some_and(|o| o <= g.len()));
                    // Flips of the payload or the CRC itself are CRC errors.
                    if i >= 5 && i != 5 + f[4] as usize + 12 && i != 5 + f[4] as usize + 13 {
                        assert_eq!(r, DecodeReason::BadCrc, "byte {i} bit {bit}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_truncation() {
        let f = sample_frame();
        assert_eq!(
            reason(decode(&[], MAX_SAMPLES)),
            (DecodeReason::Empty, Some(0))
        );
        for k in 1..f.len() {
            let (r, off) = reason(decode(&f[..k], MAX_SAMPLES));
            assert_eq!(r, DecodeReason::Truncated, "prefix of {k} bytes");
            let off = off.unwrap();
            assert!(off <= k, "prefix {k}: offset {off}");
        }
        // Offsets name the first incomplete field.
        let id_end = 5 + 8;
        assert_eq!(reason(decode(&f[..4], MAX_SAMPLES)).1, Some(4));
        assert_eq!(reason(decode(&f[..7], MAX_SAMPLES)).1, Some(5));
        assert_eq!(
            reason(decode(&f[..id_end + 3], MAX_SAMPLES)).1,
            Some(id_end)
        );
        assert_eq!(
            reason(decode(&f[..id_end + 14 + 5], MAX_SAMPLES)).1,
            Some(id_end + 14 + 4)
        );
        assert_eq!(
            reason(decode(&f[..f.len() - 1], MAX_SAMPLES)).1,
            Some(f.len() - 4)
        );
    }

    #[test]
    fn trailing_bytes() {
        let mut f = sample_frame();
        let n = f.len();
        f.push(0);
        assert_eq!(
            reason(decode(&f, MAX_SAMPLES)),
            (DecodeReason::TrailingBytes, Some(n))
        );
    }

    #[test]
    fn header_errors() {
        let f = sample_frame();
        assert_eq!(reason(decode(b"X", MAX_SAMPLES)).0, DecodeReason::BadMagic);
        assert_eq!(
            reason(decode(b"SX\x01", MAX_SAMPLES)).0,
            DecodeReason::BadMagic
        );
        assert_eq!(
            reason(decode(b"S", MAX_SAMPLES)),
            (DecodeReason::Truncated, Some(0))
        );
        let mut g = f.clone();
        g[2] = 2;
        assert_eq!(
            reason(decode(&g, MAX_SAMPLES)),
            (DecodeReason::UnsupportedVersion, Some(2))
        );
        let v2 = encode_unchecked(2, 0, b"d", 0, 1, 1, &[1.0]);
        assert_eq!(
            reason(decode(&v2, MAX_SAMPLES)).0,
            DecodeReason::UnsupportedVersion
        );
    }

    #[test]
    fn field_range_errors_with_valid_crc() {
        let tm = |f: Vec<u8>, off: usize| {
            assert_eq!(
                reason(decode(&f, MAX_SAMPLES)),
                (DecodeReason::TypeMismatch, Some(off))
            )
        };
        tm(encode_unchecked(1, 1, b"d", 0, 1, 1, &[1.0]), 3);
        tm(encode_unchecked(1, 0x80, b"d", 0, 1, 1, &[1.0]), 3);
        tm(encode_unchecked(1, 0, b"", 0, 1, 1, &[1.0]), 4);
        tm(encode_unchecked(1, 0, &[b'a'; 65], 0, 1, 1, &[1.0]), 4);
        tm(encode_unchecked(1, 0, b"d", 0, 0, 1, &[1.0]), 6 + 8);
        tm(encode_unchecked(1, 0, b"d", 0, 1, 0, &[]), 6 + 12);
        // 64-byte id is fine, 4096 samples fine, 4097 not.
        assert!(decode(
            &encode_unchecked(1, 0, &[b'a'; 64], 0, 1, 1, &[1.0]),
            MAX_SAMPLES
        )
        .is_ok());
        let s = vec![0.25f32; MAX_SAMPLES + 1];
        tm(
            encode_unchecked(1, 0, b"d", 0, 1, (MAX_SAMPLES + 1) as u16, &s),
            6 + 12,
        );
        assert!(decode(
            &encode_unchecked(1, 0, b"d", 0, 1, MAX_SAMPLES as u16, &s[..MAX_SAMPLES]),
            MAX_SAMPLES
        )
        .is_ok());
        let s = vec![0.5f32; 65535];
        tm(encode_unchecked(1, 0, b"d", 0, 1, 65535, &s), 6 + 12);
        // A smaller max_samples.
        let f = encode("d", 0, 1, &[1.0; 65]).unwrap();
        assert_eq!(reason(decode(&f, 64)).0, DecodeReason::TypeMismatch);
        assert!(decode(&f, 65).is_ok());
    }

    #[test]
    fn invalid_utf8_device_id() {
        let f = encode_unchecked(1, 0, b"ab\xffc", 0, 1, 1, &[1.0]);
        assert_eq!(
            reason(decode(&f, MAX_SAMPLES)),
            (DecodeReason::InvalidUtf8, Some(7))
        );
        let f = encode_unchecked(1, 0, b"\xc3", 0, 1, 1, &[1.0]); // cut multi-byte char
        assert_eq!(
            reason(decode(&f, MAX_SAMPLES)),
            (DecodeReason::InvalidUtf8, Some(5))
        );
    }

    #[test]
    fn corrupted_length_fields_never_panic() {
        let f = sample_frame();
        let n_at = 5 + 8 + 12;
        for v in (0..=255u8).filter(|&v| v != f[4]) {
            let mut g = f.clone();
            g[4] = v;
            let (r, _) = reason(decode(&g, MAX_SAMPLES));
            assert!(
                matches!(
                    r,
                    DecodeReason::Truncated | DecodeReason::TrailingBytes | DecodeReason::BadCrc
                ),
                "id_len {v}: {r:?}"
            );
        }
        for v in (0..=u16::MAX).filter(|&v| v != 6) {
            let mut g = f.clone();
            g[n_at..n_at + 2].copy_from_slice(&v.to_be_bytes());
            let (r, _) = reason(decode(&g, MAX_SAMPLES));
            assert!(
                matches!(r, DecodeReason::Truncated | DecodeReason::TrailingBytes),
                "n {v}: {r:?}"
            );
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = Rng(0x5eed_0001);
        let base = sample_frame();
        for round in 0..20_000 {
            let g: Vec<u8> = if round % 2 == 0 {
                let n = rng.below(80);
                let mut g: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                if n >= 3 && rng.below(2) == 0 {
                    g[..3].copy_from_slice(b"SF\x01");
                }
                g
            } else {
                let mut g = base.clone();
                for _ in 0..1 + rng.below(4) {
                    match rng.below(3) {
                        0 => {
                            let i = rng.below(g.len());
                            g[i] = rng.next() as u8;
                        }
                        1 => g.truncate(rng.below(g.len() + 1)),
                        _ => g.push(rng.next() as u8),
                    }
                    if g.is_empty() {
                        break;
                    }
                }
                g
            };
            match decode(&g, MAX_SAMPLES) {
                Ok(f) => {
                    // Only possible if the mutation reproduced a valid frame.
                    let _ = f.stats();
                    assert_eq!(
                        crc32_reference(&g[..g.len() - 4]).to_be_bytes(),
                        g[g.len() - 4..]
                    );
                }
                Err(e) => assert!(e.decode_reason().is_some(), "{e}"),
            }
        }
    }

    #[test]
    fn encode_validation() {
        let enc_reason = |r: Result<Vec<u8>, SluiceErr>| match r {
            Err(SluiceErr::Encode(e)) => (e.reason, e.path),
            other => panic!("expected an encode error, got {other:?}"),
        };
        let oor = EncodeReason::OutOfRange;
        assert_eq!(
            enc_reason(encode("", 0, 1, &[1.0])),
            (oor, "device_id".into())
        );
        assert_eq!(
            enc_reason(encode(&"a".repeat(65), 0, 1, &[1.0])),
            (oor, "device_id".into())
        );
        assert_eq!(
            enc_reason(encode("d", 0, 0, &[1.0])),
            (oor, "sample_rate_hz".into())
        );
        assert_eq!(enc_reason(encode("d", 0, 1, &[])), (oor, "samples".into()));
        assert_eq!(
            enc_reason(encode("d", 0, 1, &vec![0.0; MAX_SAMPLES + 1])),
            (oor, "samples".into())
        );
        assert!(matches!(to_f32(1e39, 3), Err(SluiceErr::Encode(e)) if e.path == "samples[3]"));
        assert!(to_f32(f64::NAN, 0).unwrap().is_nan());
        assert_eq!(to_f32(f64::INFINITY, 0).unwrap(), f32::INFINITY);
        assert_eq!(to_f32(f64::from(f32::MAX), 0).unwrap(), f32::MAX);
    }
}

#[cfg(test)]
mod default_tests {
    #[test]
    fn max_samples_matches_python_default() {
        // py.rs spells FrameDecoder's default as the literal 4096.
        assert_eq!(super::MAX_SAMPLES, 4096);
    }
}
