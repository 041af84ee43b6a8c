//! SMPP v3.4 engine. `pdu`, `session`, `text`, `segment` and `receipt` are sans-io: they do no
//! I/O and read no clock. `io` is the thin monoio driver around a session.

pub mod io;
pub mod pdu;
pub mod receipt;
pub mod segment;
pub mod session;
pub mod text;
