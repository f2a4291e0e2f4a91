//! Confluent Schema Registry wire framing: byte 0 = magic `0x00`, bytes 1..5 =
//! schema id (big-endian u32), then the Avro binary body.

use crate::errors::{DecodeReason, SluiceErr};

pub const MAGIC: u8 = 0;
pub const HEADER_LEN: usize = 5;

/// Parse the 5-byte header. Returns `(schema_id, body_offset)`.
///
/// Errors: `empty` (no bytes, offset 0), `bad-magic` (offset 0), `truncated`
/// (fewer than 5 bytes; offset 1, where the schema id starts).
pub fn parse_header(data: &[u8]) -> Result<(u32, usize), SluiceErr> {
    match data.first() {
        None => Err(SluiceErr::decode(
            DecodeReason::Empty,
            0,
            "message is empty",
        )),
        Some(&b) if b != MAGIC => Err(SluiceErr::decode(
            DecodeReason::BadMagic,
            0,
            format!("first byte is {b:#04x}, expected the Confluent magic byte 0x00"),
        )),
        Some(_) if data.len() < HEADER_LEN => Err(SluiceErr::truncated(
            1,
            format!(
                "{} bytes is shorter than the 5-byte Confluent header",
                data.len()
            ),
        )),
        Some(_) => Ok((
            u32::from_be_bytes([data[1], data[2], data[3], data[4]]),
            HEADER_LEN,
        )),
    }
}

/// Append the 5-byte header.
pub fn write_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
}
