//! Little-endian writer / bounds-checked reader of the accumulator state
//! blob. Integers that are usually small (counts, lengths, bin offsets) are
//! LEB128 varints (zig-zag for signed), floats are 8 bytes LE.
//!
//! Every read checks the remaining length first and every failure is a
//! [`SluiceErr::State`] naming the item, so a corrupt or foreign blob is an
//! exception, never a panic or an out-of-bounds read.

use crate::errors::SluiceErr;

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

#[cold]
pub fn bad(msg: impl Into<String>) -> SluiceErr {
    SluiceErr::State(msg.into())
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SluiceErr> {
        if self.remaining() < n {
            return Err(bad(format!(
                "state blob truncated: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SluiceErr> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, SluiceErr> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, SluiceErr> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, SluiceErr> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub fn f64(&mut self, what: &str) -> Result<f64, SluiceErr> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    /// An f64 that must be finite (every stored float except the sketch's
    /// `min`/`max` of an empty sketch and IEEE overflow results, which the
    /// callers read with [`Reader::f64`]).
    pub fn finite(&mut self, what: &str) -> Result<f64, SluiceErr> {
        let v = self.f64(what)?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(bad(format!("{what} is {v}, must be finite")))
        }
    }

    pub fn varint(&mut self, what: &str) -> Result<u64, SluiceErr> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(bad(format!("{what}: varint overflows 64 bits")));
            }
            v |= bits << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(bad(format!("{what}: varint longer than 10 bytes")))
    }

    pub fn zigzag(&mut self, what: &str) -> Result<i64, SluiceErr> {
        let u = self.varint(what)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
}
