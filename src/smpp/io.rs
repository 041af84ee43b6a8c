//! The monoio driver of one SMPP bind: connect, bind, read/write, timers, reconnect.
//!
//! API published early so the gateway can code against it; bodies are being filled in.

use std::time::{Duration, Instant};

use crate::smpp::pdu::{DataSm, SubmitSm};

pub use crate::smpp::session::BindMode;

/// Everything one bind needs. Validated by the config layer; the driver trusts it.
#[derive(Debug, Clone)]
pub struct BindConfig {
    pub link_id: u32,
    pub bind_index: u32,
    pub host: String,
    pub port: u16,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub bind_mode: BindMode,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: String,
    /// Maximum outstanding submit_sm (sent, not yet answered).
    pub window: usize,
    /// Maximum submits queued behind the window; beyond it `submit` fails with `QueueFull`.
    pub max_pending: usize,
    pub resp_timeout: Duration,
    pub enquire_interval: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// First back-off after a throttling answer; doubles on repeated throttling.
    pub throttle_backoff: Duration,
    /// Cap of the doubling throttle back-off.
    pub throttle_backoff_max: Duration,
    /// How many times one part is re-sent after throttling answers before it fails.
    pub throttle_max_retries: u32,
    pub max_pdu_len: usize,
    /// Maximum deliver_sm/data_sm handed out and not yet acknowledged.
    pub max_unacked_delivers: usize,
    /// How long a graceful shutdown waits for outstanding responses before unbinding.
    pub drain_timeout: Duration,
}

impl BindConfig {
    /// A config with conventional defaults for everything but the address and credentials.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        system_id: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            link_id: 0,
            bind_index: 0,
            host: host.into(),
            port,
            system_id: system_id.into(),
            password: password.into(),
            system_type: String::new(),
            bind_mode: BindMode::Transceiver,
            addr_ton: 0,
            addr_npi: 0,
            address_range: String::new(),
            window: 10,
            max_pending: 1000,
            resp_timeout: Duration::from_secs(10),
            enquire_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            throttle_backoff: Duration::from_millis(200),
            throttle_backoff_max: Duration::from_secs(5),
            throttle_max_retries: 5,
            max_pdu_len: crate::smpp::pdu::DEFAULT_MAX_PDU_LEN,
            max_unacked_delivers: 1000,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Where one bind reports what arrives and how its state changes.
#[derive(Clone)]
pub struct BindEvents {
    /// Bounded. When full, a deliver_sm is answered with a temporary error (the SMSC re-sends)
    /// and a state change is dropped (the current state stays readable via `BindHandle::state`).
    pub inbound: async_channel::Sender<Inbound>,
}

/// What a bind hands to the gateway.
pub enum Inbound {
    /// A deliver_sm (receipt or MO). Acknowledge with `ack.ack(status)` after it is stored.
    Deliver {
        link_id: u32,
        bind_index: u32,
        pdu: SubmitSm,
        ack: DeliverAck,
    },
    /// A data_sm from the SMSC.
    DataSm {
        link_id: u32,
        bind_index: u32,
        pdu: DataSm,
        ack: DeliverAck,
    },
    /// The bind changed state.
    State {
        link_id: u32,
        bind_index: u32,
        state: BindState,
    },
    /// A submit_sm_resp that arrived after its part was reported `Unknown` (timed out).
    /// `tag` is the value given to `submit_tagged` (0 for `submit`), `part` the index.
    LateResponse {
        link_id: u32,
        bind_index: u32,
        tag: u64,
        part: usize,
        status: u32,
        message_id: String,
    },
}

/// Answers one deliver_sm/data_sm. `Send`, so it may travel to the thread that stores the
/// receipt. Dropping it unanswered replies ESME_RX_T_APPDN (0x64) so the SMSC re-sends.
pub struct DeliverAck {
    _todo: (),
}

impl DeliverAck {
    /// Sends deliver_sm_resp/data_sm_resp with `status` (0 = ESME_ROK). A no-op if the
    /// session it came from is gone (the SMSC will re-send on the next bind).
    pub fn ack(self, status: u32) {
        let _ = status;
        todo!()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindState {
    /// Connecting or binding (first attempt, or after `Down`).
    Connecting,
    Bound {
        since: Instant,
    },
    /// Not bound; the driver is waiting to reconnect.
    Down {
        since: Instant,
    },
    /// Shut down for good.
    Closed,
}

/// The fate of one part of a submitted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    Accepted {
        message_id: String,
    },
    Rejected {
        status: u32,
    },
    /// Sent, but no usable answer (timed out or the session died): it may have been delivered.
    Unknown,
    /// Never written to the socket: safe to retry elsewhere.
    NotSent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("bind is not bound")]
    NotBound,
    #[error("bind queue is full")]
    QueueFull,
    #[error("bind is closed")]
    Closed,
    #[error("part {part} cannot be encoded: {reason}")]
    Invalid { part: usize, reason: String },
}

/// Cheap handle to a bind's driver task. `!Send`: it lives on the core that owns the bind.
#[derive(Clone)]
pub struct BindHandle {
    _todo: std::rc::Rc<()>,
}

/// Spawns on the current monoio runtime a task that connects, binds, keeps the session alive
/// and reconnects with capped, jittered exponential back-off.
pub fn spawn_bind(cfg: BindConfig, events: BindEvents) -> BindHandle {
    let _ = (cfg, events);
    todo!()
}

impl BindHandle {
    pub fn state(&self) -> BindState {
        todo!()
    }

    /// When the last enquire_link_resp arrived on the current session.
    pub fn last_enquire_ok(&self) -> Option<Instant> {
        todo!()
    }

    /// Submits all parts of ONE message on this bind; resolves when every part has an outcome.
    /// All-or-nothing admission: either every part is queued or none is.
    pub async fn submit(&self, parts: Vec<SubmitSm>) -> Result<Vec<PartOutcome>, SubmitError> {
        self.submit_tagged(0, parts).await
    }

    /// As `submit`; `tag` comes back in `Inbound::LateResponse` for parts that timed out.
    pub async fn submit_tagged(
        &self,
        tag: u64,
        parts: Vec<SubmitSm>,
    ) -> Result<Vec<PartOutcome>, SubmitError> {
        let _ = (tag, parts);
        todo!()
    }

    /// Graceful: stop taking submits, drain the window (up to `drain_timeout`), unbind, close.
    pub async fn shutdown(&self) {
        todo!()
    }
}
