//! Placeholder signatures; the codec owner replaces the bodies.
use super::types::{Body, Pdu};

pub const HEADER_LEN: usize = 16;
/// Default cap on command_length; configurable per session.
pub const DEFAULT_MAX_PDU_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub command_length: u32,
    pub command_id: u32,
    pub command_status: u32,
    pub sequence_number: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("todo")]
    Todo,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("todo")]
    Todo,
}

/// Reads the header if 16 octets are there (no validation beyond that).
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let w = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    Some(Header {
        command_length: w(0),
        command_id: w(4),
        command_status: w(8),
        sequence_number: w(12),
    })
}

/// Decodes one PDU from the front of `buf`. `Ok(None)`: need more bytes.
/// On success returns the PDU and the number of octets consumed.
pub fn decode(buf: &[u8], max_pdu_len: usize) -> Result<Option<(Pdu, usize)>, DecodeError> {
    let _ = (buf, max_pdu_len);
    todo!()
}

/// Appends the encoded PDU to `out`.
pub fn encode(pdu: &Pdu, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let _ = (pdu, out, Body::GenericNack);
    todo!()
}
