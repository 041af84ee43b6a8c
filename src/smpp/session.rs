//! ESME session state machine (sans-io). Being written.

/// Which bind PDU to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindMode {
    Transmitter,
    Receiver,
    Transceiver,
}
