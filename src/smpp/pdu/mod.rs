//! SMPP v3.4 PDU codec: `decode` and `encode`, sans-io.
//!
//! `decode` returns `Ok(None)` while a frame is incomplete, enforces a maximum PDU length,
//! and checks every field limit with a precise error. `encode` appends to a caller's buffer and
//! allocates nothing once that buffer has capacity.

mod codec;
pub mod status;
pub mod tlv;
pub mod types;

pub use codec::{
    DEFAULT_MAX_PDU_LEN, DecodeError, EncodeError, HEADER_LEN, Header, decode, encode, peek_header,
};
pub use codec::{Field, FieldError, MAX_DESTS, MAX_SHORT_MESSAGE_LEN, command_name, encoded_len};
pub use tlv::{Tlv, Tlvs, tag};
pub use types::*;
