//! The monoio driver of one SMPP bind: connect, bind, read/write, timers, reconnect.
//!
//! Thin around `session::Session`: it reads into a buffer the task owns and feeds the session,
//! writes whatever the session produced in one write per wake-up (batching), and sleeps until
//! the session's next deadline. Timeouts live in the session (virtual-time tested), so no read
//! is ever cancelled to implement one: the reader runs as its own future and is only dropped
//! when the connection is being torn down anyway.
//!
//! Per connection four futures run under one `select!`: the reader, the writer, the timer and
//! the deliver-ack receiver. They share the session through a `RefCell` that is never borrowed
//! across an `.await`.
//!
//! Reconnect: capped exponential back-off with jitter (each delay drawn from [d/2, d]); the
//! exponent resets only after a bind stayed up for `reconnect_max`, so a link that binds and
//! drops at once cannot cause a reconnect storm. A refused bind is retried the same way.
//!
//! What a caller of `BindHandle::submit` can rely on (one `PartOutcome` per part):
//!
//! | session outcome | `PartOutcome` | may the gateway send it elsewhere? |
//! |---|---|---|
//! | submit_sm_resp OK | `Accepted { message_id }` | no: delivered to the SMSC |
//! | error status, generic_nack, throttled beyond `throttle_max_retries` | `Rejected { status }` | per status |
//! | no answer in `resp_timeout`, answer unreadable, session died after the write | `Unknown` | not without risking a duplicate |
//! | never written (queued, or throttled and not re-sent yet) when the session ended | `NotSent` | yes |
//!
//! A response that arrives after its part was reported `Unknown` is passed on as
//! `Inbound::LateResponse` with the caller's tag; nothing is ever re-sent because of a timeout.
//!
//! `BindConfig` (validated by the config layer):
//!
//! | field | default (`BindConfig::new`) | meaning |
//! |---|---|---|
//! | `window` | 10 | submits written and unanswered, at most |
//! | `max_pending` | 1000 | submits queued behind the window; beyond it `QueueFull` |
//! | `resp_timeout` | 10 s | per submit; also bind, unbind and enquire_link answer timeouts |
//! | `enquire_interval` | 30 s | enquire_link after this long without any PDU received |
//! | `connect_timeout` | 5 s | TCP connect |
//! | `reconnect_min` / `reconnect_max` | 500 ms / 30 s | back-off range (doubling, jittered) |
//! | `throttle_backoff` / `throttle_backoff_max` | 200 ms / 5 s | session pause after 0x58/0x14 (doubling per round) |
//! | `throttle_max_retries` | 5 | re-sends of one part after throttling answers |
//! | `max_pdu_len` | 64 KiB | largest PDU accepted or produced |
//! | `max_unacked_delivers` | 1000 | receipts handed out and not acknowledged; beyond it 0x64 |
//! | `drain_timeout` | 5 s | graceful shutdown: wait for outstanding answers before unbind |
//!
//! `host` is resolved with the blocking system resolver on each connect: configure an IP
//! address for binds on a latency-sensitive core.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::smpp::pdu::{Body, DataSm, SubmitSm, status};
use crate::smpp::session::{self, Event, Outcome, Session, SessionConfig, Token};

pub use crate::smpp::session::BindMode;

/// Everything one bind needs. Validated by the config layer; the driver trusts it.
/// `Debug` prints everything but the password.
#[derive(Clone)]
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

impl std::fmt::Debug for BindConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindConfig")
            .field("link_id", &self.link_id)
            .field("bind_index", &self.bind_index)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("bind_mode", &self.bind_mode)
            .field("addr_ton", &self.addr_ton)
            .field("addr_npi", &self.addr_npi)
            .field("address_range", &self.address_range)
            .field("window", &self.window)
            .field("max_pending", &self.max_pending)
            .field("resp_timeout", &self.resp_timeout)
            .field("enquire_interval", &self.enquire_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("throttle_backoff", &self.throttle_backoff)
            .field("throttle_backoff_max", &self.throttle_backoff_max)
            .field("throttle_max_retries", &self.throttle_max_retries)
            .field("max_pdu_len", &self.max_pdu_len)
            .field("max_unacked_delivers", &self.max_unacked_delivers)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
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
/// receipt. Dropping it unanswered replies ESME_RX_T_APPN (0x64) so the SMSC re-sends.
pub struct DeliverAck {
    tx: Option<async_channel::Sender<AckMsg>>,
    generation: u64,
    seq: u32,
}

struct AckMsg {
    generation: u64,
    seq: u32,
    status: u32,
}

impl DeliverAck {
    /// Sends deliver_sm_resp/data_sm_resp with `status` (0 = ESME_ROK). A no-op if the
    /// session it came from is gone (the SMSC will re-send on the next bind).
    pub fn ack(mut self, status: u32) {
        self.send(status);
    }

    fn send(&mut self, status: u32) {
        if let Some(tx) = self.tx.take() {
            // The channel holds twice the unanswered-deliver bound, so it is only full if
            // acks for dead sessions piled up; then the SMSC's own re-send covers us.
            if tx
                .try_send(AckMsg {
                    generation: self.generation,
                    seq: self.seq,
                    status,
                })
                .is_err()
            {
                tracing::debug!(
                    seq = self.seq,
                    "deliver ack dropped (bind gone or ack queue full)"
                );
            }
        }
    }
}

impl Drop for DeliverAck {
    fn drop(&mut self) {
        self.send(status::ESME_RX_T_APPN);
    }
}

impl std::fmt::Debug for DeliverAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverAck")
            .field("generation", &self.generation)
            .field("seq", &self.seq)
            .finish()
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
    /// Shut down for good (or the configuration cannot work: see the logs).
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
    /// Never written to the socket (or explicitly refused by throttling): safe to retry
    /// elsewhere.
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
    #[error("part {part} cannot be submitted: {reason}")]
    Invalid { part: usize, reason: String },
}

/// Most parts one `submit` takes (the concatenation limit; the token keeps 8 bits for it).
pub const MAX_PARTS: usize = 255;

/// Cheap handle to a bind's driver task. `!Send`: it lives on the core that owns the bind.
/// The task runs until `shutdown` (dropping every handle does not stop it).
#[derive(Clone)]
pub struct BindHandle {
    shared: Rc<Shared>,
}

/// Spawns on the current monoio runtime a task that connects, binds, keeps the session alive
/// and reconnects with capped, jittered exponential back-off. Must be called inside a monoio
/// runtime with timers enabled.
pub fn spawn_bind(cfg: BindConfig, events: BindEvents) -> BindHandle {
    let (ack_tx, ack_rx) = async_channel::bounded(2 * cfg.max_unacked_delivers.max(1) + 64);
    let shared = Rc::new(Shared {
        cfg,
        events,
        ack_tx,
        state: Cell::new(BindState::Connecting),
        conn: RefCell::new(None),
        generation: Cell::new(0),
        waiters: RefCell::new(HashMap::new()),
        next_msg: Cell::new(1),
        late_tags: RefCell::new(LateTags::default()),
        wake_writer: Signal::default(),
        wake_timer: Signal::default(),
        shutdown_requested: Cell::new(false),
        closed_wakers: RefCell::new(Vec::new()),
        last_enquire_ok: Cell::new(None),
        connects: Cell::new(0),
    });
    monoio::spawn(drive(shared.clone(), ack_rx));
    BindHandle { shared }
}

impl BindHandle {
    pub fn state(&self) -> BindState {
        self.shared.state.get()
    }

    /// When the last enquire_link_resp arrived (on any session of this bind).
    pub fn last_enquire_ok(&self) -> Option<Instant> {
        self.shared.last_enquire_ok.get()
    }

    /// Counters of the current session (`None` while not connected).
    pub fn session_stats(&self) -> Option<session::SessionStats> {
        self.shared
            .conn
            .borrow()
            .as_ref()
            .map(|s| s.stats().clone())
    }

    /// Submits written and not yet answered, and submits queued, on the current session.
    pub fn load(&self) -> (usize, usize) {
        self.shared
            .conn
            .borrow()
            .as_ref()
            .map_or((0, 0), |s| (s.outstanding_len(), s.pending_len()))
    }

    /// TCP connections attempted so far (for tests and metrics).
    pub fn connect_attempts(&self) -> u64 {
        self.shared.connects.get()
    }

    pub fn config(&self) -> &BindConfig {
        &self.shared.cfg
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
        let n = parts.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > MAX_PARTS {
            return Err(SubmitError::Invalid {
                part: MAX_PARTS,
                reason: format!("{n} parts, at most {MAX_PARTS}"),
            });
        }
        let shared = &self.shared;
        if shared.shutdown_requested.get() {
            return Err(SubmitError::Closed);
        }
        let key = shared.next_msg.get();
        shared.next_msg.set(key + 1);
        {
            let mut conn = shared.conn.borrow_mut();
            let Some(session) = conn.as_mut().filter(|s| s.is_bound()) else {
                return Err(if shared.state.get() == BindState::Closed {
                    SubmitError::Closed
                } else {
                    SubmitError::NotBound
                });
            };
            let items = parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| (key << 8 | i as u64, p));
            if let Err((part, e)) = session.submit_all(items, Instant::now()) {
                return Err(match e {
                    session::SubmitError::QueueFull { .. } => SubmitError::QueueFull,
                    session::SubmitError::NotAccepting => SubmitError::Closed,
                    e => SubmitError::Invalid {
                        part,
                        reason: e.to_string(),
                    },
                });
            }
        }
        // Outcomes only arrive from the driver task, after this returns: registering the
        // waiter now cannot miss one.
        shared.waiters.borrow_mut().insert(
            key,
            Waiter {
                tag,
                outcomes: vec![None; n],
                remaining: n,
                waker: None,
            },
        );
        shared.notify_driver();
        WaitOutcomes {
            shared: shared.clone(),
            key,
        }
        .await
    }

    /// Graceful: stop taking submits, drain the window (up to `drain_timeout`), unbind, close.
    /// Resolves when the driver task has stopped.
    pub async fn shutdown(&self) {
        self.shared.shutdown_requested.set(true);
        self.shared.notify_driver();
        poll_fn(|cx| {
            if self.shared.state.get() == BindState::Closed {
                Poll::Ready(())
            } else {
                let mut wakers = self.shared.closed_wakers.borrow_mut();
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

// ----- internals -----

struct Shared {
    cfg: BindConfig,
    events: BindEvents,
    ack_tx: async_channel::Sender<AckMsg>,
    state: Cell<BindState>,
    /// The live session, if connected.
    conn: RefCell<Option<Session>>,
    /// Bumped per connection so acks for a dead session are recognised and ignored.
    generation: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waiter>>,
    next_msg: Cell<u64>,
    late_tags: RefCell<LateTags>,
    /// Wakes the writer (new output) and the timer (deadlines may have moved). Two signals
    /// because they are two futures: a write blocked on a peer that does not read must not
    /// stop the timers that detect exactly that.
    wake_writer: Signal,
    wake_timer: Signal,
    shutdown_requested: Cell<bool>,
    closed_wakers: RefCell<Vec<Waker>>,
    last_enquire_ok: Cell<Option<Instant>>,
    connects: Cell<u64>,
}

struct Waiter {
    tag: u64,
    outcomes: Vec<Option<PartOutcome>>,
    remaining: usize,
    waker: Option<Waker>,
}

/// Tags of timed-out parts, so a late response can name its message. Bounded like the
/// session's own late memory.
#[derive(Default)]
struct LateTags {
    map: HashMap<Token, u64>,
    order: VecDeque<Token>,
}

const LATE_TAGS_MAX: usize = 4096;

impl LateTags {
    fn insert(&mut self, token: Token, tag: u64) {
        while self.order.len() >= LATE_TAGS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.map.insert(token, tag);
        self.order.push_back(token);
    }
}

struct WaitOutcomes {
    shared: Rc<Shared>,
    key: u64,
}

impl Future for WaitOutcomes {
    type Output = Result<Vec<PartOutcome>, SubmitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut waiters = self.shared.waiters.borrow_mut();
        let Some(w) = waiters.get_mut(&self.key) else {
            // Unreachable by construction; never hang on it.
            return Poll::Ready(Err(SubmitError::Closed));
        };
        if w.remaining == 0 {
            let w = waiters.remove(&self.key).expect("present");
            let outcomes = w
                .outcomes
                .into_iter()
                .map(|o| o.unwrap_or(PartOutcome::Unknown))
                .collect();
            return Poll::Ready(Ok(outcomes));
        }
        w.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WaitOutcomes {
    fn drop(&mut self) {
        // The caller gave up waiting; outcomes still arrive and are then ignored.
        self.shared.waiters.borrow_mut().remove(&self.key);
    }
}

/// Single-waiter wake-up flag for the driver task (set-before-wait is never lost).
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Shared {
    fn notify_driver(&self) {
        self.wake_writer.notify();
        self.wake_timer.notify();
    }

    fn set_state(&self, state: BindState) {
        self.state.set(state);
        // Best effort: the current state is always readable through the handle.
        let _ = self.events.inbound.try_send(Inbound::State {
            link_id: self.cfg.link_id,
            bind_index: self.cfg.bind_index,
            state,
        });
        if state == BindState::Closed {
            for w in self.closed_wakers.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    fn session_config(&self) -> Result<SessionConfig, String> {
        let c = &self.cfg;
        let mut s = SessionConfig::new(c.bind_mode, &c.system_id, &c.password)
            .map_err(|e| format!("system_id/password: {e}"))?;
        s.system_type = c
            .system_type
            .as_str()
            .try_into()
            .map_err(|e| format!("system_type: {e}"))?;
        s.address_range = c
            .address_range
            .as_str()
            .try_into()
            .map_err(|e| format!("address_range: {e}"))?;
        s.addr_ton = c.addr_ton;
        s.addr_npi = c.addr_npi;
        s.window = c.window.max(1);
        s.max_pending = c.max_pending;
        s.resp_timeout = c.resp_timeout;
        s.bind_timeout = c.resp_timeout;
        s.unbind_timeout = c.resp_timeout;
        s.enquire_interval = c.enquire_interval;
        s.enquire_timeout = c.resp_timeout;
        s.throttle_backoff = c.throttle_backoff;
        s.throttle_backoff_max = c.throttle_backoff_max.max(c.throttle_backoff);
        s.throttle_max_retries = c.throttle_max_retries;
        s.max_pdu_len = c.max_pdu_len;
        s.max_unanswered_delivers = c.max_unacked_delivers;
        Ok(s)
    }

    /// Drains the session's events into waiters, the inbound channel and the bind state.
    /// Returns the instant the session became bound, if it did.
    fn dispatch(&self) -> Option<Instant> {
        let mut bound_at = None;
        loop {
            let ev = match self.conn.borrow_mut().as_mut() {
                Some(s) => s.poll_event(),
                None => None,
            };
            let Some(ev) = ev else { break };
            match ev {
                Event::Outcome { token, outcome } => self.complete(token, outcome),
                Event::LateResponse {
                    token,
                    status,
                    message_id,
                } => {
                    let tag = self.late_tags.borrow_mut().map.remove(&token).unwrap_or(0);
                    let _ = self.events.inbound.try_send(Inbound::LateResponse {
                        link_id: self.cfg.link_id,
                        bind_index: self.cfg.bind_index,
                        tag,
                        part: (token & 0xFF) as usize,
                        status,
                        message_id,
                    });
                }
                Event::Deliver { seq, pdu } => self.hand_out_deliver(seq, pdu.body),
                Event::Bound { system_id } => {
                    let now = Instant::now();
                    tracing::info!(link = self.cfg.link_id, bind = self.cfg.bind_index, smsc = %system_id, "SMPP bound");
                    bound_at = Some(now);
                    self.set_state(BindState::Bound { since: now });
                }
                Event::BindFailed { status } => {
                    tracing::warn!(
                        link = self.cfg.link_id,
                        bind = self.cfg.bind_index,
                        status = format_args!("0x{status:08X}"),
                        "SMPP bind refused"
                    );
                }
                Event::EnquireOk { at } => self.last_enquire_ok.set(Some(at)),
                Event::LinkDead => {
                    tracing::warn!(
                        link = self.cfg.link_id,
                        bind = self.cfg.bind_index,
                        "SMPP link dead (no enquire_link_resp)"
                    );
                }
                Event::Closed { reason } => {
                    tracing::info!(
                        link = self.cfg.link_id,
                        bind = self.cfg.bind_index,
                        ?reason,
                        "SMPP session closed"
                    );
                }
            }
        }
        bound_at
    }

    fn complete(&self, token: Token, outcome: Outcome) {
        let key = token >> 8;
        let part = (token & 0xFF) as usize;
        let mut waiters = self.waiters.borrow_mut();
        let tag = waiters.get(&key).map_or(0, |w| w.tag);
        let outcome = match outcome {
            Outcome::Accepted { message_id } => PartOutcome::Accepted { message_id },
            Outcome::Rejected { status } => PartOutcome::Rejected { status },
            Outcome::TimedOut => {
                self.late_tags.borrow_mut().insert(token, tag);
                PartOutcome::Unknown
            }
            Outcome::Unknown => PartOutcome::Unknown,
            Outcome::NotSent => PartOutcome::NotSent,
        };
        let Some(w) = waiters.get_mut(&key) else {
            return; // the submitter stopped waiting
        };
        if let Some(slot) = w.outcomes.get_mut(part)
            && slot.is_none()
        {
            *slot = Some(outcome);
            w.remaining -= 1;
            if w.remaining == 0
                && let Some(waker) = w.waker.take()
            {
                waker.wake();
            }
        }
    }

    fn hand_out_deliver(&self, seq: u32, body: Body) {
        let ack = DeliverAck {
            tx: Some(self.ack_tx.clone()),
            generation: self.generation.get(),
            seq,
        };
        let (link_id, bind_index) = (self.cfg.link_id, self.cfg.bind_index);
        let msg = match body {
            Body::DeliverSm(pdu) => Inbound::Deliver {
                link_id,
                bind_index,
                pdu,
                ack,
            },
            Body::DataSm(pdu) => Inbound::DataSm {
                link_id,
                bind_index,
                pdu,
                ack,
            },
            _ => return, // the session only reports these two; `ack` drops → temporary error
        };
        // Full or closed channel: the message (and its ack) is dropped here, which answers
        // ESME_RX_T_APPN, so the SMSC keeps the receipt and re-sends it.
        if self.events.inbound.try_send(msg).is_err() {
            tracing::warn!(
                link = link_id,
                bind = bind_index,
                "inbound queue full; deliver_sm refused temporarily"
            );
        }
    }

    fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.conn.borrow_mut().as_mut().map(f)
    }
}

/// The reconnect delay before attempt `attempt` (0-based): min·2^attempt capped at max,
/// drawn uniformly from [d/2, d] so binds of many gateways do not reconnect in lockstep.
pub fn reconnect_delay(
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: &mut fastrand::Rng,
) -> Duration {
    let max = max.max(min);
    let d = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = d / 2;
    let jitter_ns = rng.u64(0..=(d - half).as_nanos().min(u64::MAX as u128) as u64);
    half + Duration::from_nanos(jitter_ns)
}

async fn drive(shared: Rc<Shared>, ack_rx: async_channel::Receiver<AckMsg>) {
    let session_cfg = match shared.session_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(link = shared.cfg.link_id, bind = shared.cfg.bind_index, error = %e, "SMPP bind config unusable; bind stays closed");
            shared.set_state(BindState::Closed);
            return;
        }
    };
    let mut rng = fastrand::Rng::new();
    let mut attempt: u32 = 0;
    while !shared.shutdown_requested.get() {
        if shared.state.get() != BindState::Connecting {
            shared.set_state(BindState::Connecting);
        }
        shared.connects.set(shared.connects.get() + 1);
        let addr = (shared.cfg.host.as_str(), shared.cfg.port);
        match monoio::time::timeout(shared.cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let bound_at = run_connection(&shared, stream, &session_cfg, &ack_rx).await;
                if let Some(t) = bound_at
                    && t.elapsed() >= shared.cfg.reconnect_max
                {
                    attempt = 0;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(link = shared.cfg.link_id, bind = shared.cfg.bind_index, error = %e, "SMPP connect failed");
            }
            Err(_) => {
                tracing::warn!(
                    link = shared.cfg.link_id,
                    bind = shared.cfg.bind_index,
                    "SMPP connect timed out"
                );
            }
        }
        if shared.shutdown_requested.get() {
            break;
        }
        shared.set_state(BindState::Down {
            since: Instant::now(),
        });
        let delay = reconnect_delay(
            shared.cfg.reconnect_min,
            shared.cfg.reconnect_max,
            attempt,
            &mut rng,
        );
        attempt = attempt.saturating_add(1);
        monoio::select! {
            _ = monoio::time::sleep(delay) => {}
            _ = wait_shutdown(&shared) => {}
        }
    }
    shared.set_state(BindState::Closed);
}

async fn wait_shutdown(shared: &Shared) {
    while !shared.shutdown_requested.get() {
        shared.wake_timer.wait().await;
    }
}

/// Runs one connection until its session closes or the transport fails. Every submit of the
/// session has had its outcome when this returns. Returns when the bind succeeded, if it did.
async fn run_connection(
    shared: &Rc<Shared>,
    stream: TcpStream,
    session_cfg: &SessionConfig,
    ack_rx: &async_channel::Receiver<AckMsg>,
) -> Option<Instant> {
    // Acks of earlier sessions are meaningless now.
    while ack_rx.try_recv().is_ok() {}
    shared.generation.set(shared.generation.get() + 1);
    let generation = shared.generation.get();
    let now = Instant::now();
    let mut session = Session::new(session_cfg.clone(), now);
    session.bind(now);
    *shared.conn.borrow_mut() = Some(session);
    let bound_at: Cell<Option<Instant>> = Cell::new(None);
    let note = |t: Option<Instant>| {
        if t.is_some() {
            bound_at.set(t);
        }
    };

    let (mut rd, mut wr) = stream.into_split();
    let read_cap = shared.cfg.max_pdu_len.clamp(4096, 64 * 1024);

    let reader = async {
        let mut buf: Vec<u8> = Vec::with_capacity(read_cap);
        loop {
            let (res, b) = rd.read(buf).await;
            buf = b;
            match res {
                Ok(0) => break,
                Ok(n) => {
                    shared.with_session(|s| s.handle_input(&buf[..n], Instant::now()));
                    buf.clear();
                    note(shared.dispatch());
                    shared.notify_driver();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "SMPP read failed");
                    break;
                }
            }
        }
    };

    // Writes whatever the session produced, one write per wake-up.
    let writer = async {
        let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
        loop {
            let closed = shared
                .with_session(|s| {
                    s.poll_transmit(&mut out);
                    s.is_closed()
                })
                .unwrap_or(true);
            note(shared.dispatch());
            if !out.is_empty() {
                let (res, b) = wr.write_all(out).await;
                out = b;
                out.clear();
                if let Err(e) = res {
                    tracing::debug!(error = %e, "SMPP write failed");
                    return;
                }
                continue; // more may have been produced while writing
            }
            if closed {
                return; // everything the session said last (unbind_resp, nack) is written
            }
            shared.wake_writer.wait().await;
        }
    };

    // Drives the session's deadlines and the shutdown request. Once the session is closed it
    // gives the writer `flush_grace` to write the last answers, then ends the connection even
    // if that write is stuck on a peer that does not read.
    let flush_grace = shared.cfg.resp_timeout.min(Duration::from_secs(2));
    let timer = async {
        let mut unbind_started = false;
        loop {
            if shared.shutdown_requested.get() && !unbind_started {
                unbind_started = true;
                shared.with_session(|s| s.unbind(Instant::now(), shared.cfg.drain_timeout));
                note(shared.dispatch());
                shared.wake_writer.notify();
            }
            let (closed, deadline) = shared
                .with_session(|s| (s.is_closed(), s.poll_timeout()))
                .unwrap_or((true, None));
            if closed {
                monoio::time::sleep(flush_grace).await;
                return;
            }
            match deadline {
                Some(d) => {
                    monoio::select! {
                        _ = shared.wake_timer.wait() => {}
                        _ = monoio::time::sleep_until(monoio::time::Instant::from_std(d)) => {}
                    }
                }
                None => shared.wake_timer.wait().await,
            }
            shared.with_session(|s| s.handle_timeout(Instant::now()));
            note(shared.dispatch());
            shared.wake_writer.notify();
        }
    };

    let acks = async {
        while let Ok(ack) = ack_rx.recv().await {
            if ack.generation != generation {
                continue;
            }
            let _ = shared.with_session(|s| s.respond_deliver(ack.seq, ack.status));
            shared.wake_writer.notify();
        }
    };

    monoio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = timer => {}
        _ = acks => {}
    }

    // The transport is gone or the session ended: settle every request, then drop the socket.
    shared.with_session(|s| s.handle_transport_closed());
    note(shared.dispatch());
    *shared.conn.borrow_mut() = None;
    bound_at.get()
}
