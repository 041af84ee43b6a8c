//! ESME side of an SMPP v3.4 session as a sans-io state machine (in the manner of quinn-proto).
//!
//! The caller feeds it received bytes (`handle_input`), the passing of time (`handle_timeout`)
//! and commands (`bind`, `submit`, `respond_deliver`, `unbind`), always with `now`; the session
//! never reads a clock and never touches a socket. The caller then drains what it produced:
//! bytes to write (`poll_transmit`), events (`poll_event`) and the instant it next wants to be
//! woken (`poll_timeout`).
//!
//! States: `Open` → `Binding` → `Bound(mode)` → `Unbinding` → `Closed`. A graceful `unbind`
//! first drains (no new submits; queued and outstanding ones still complete, up to a deadline).
//!
//! Guarantees the rest of the gateway relies on:
//! - every accepted `submit` ends in exactly one `Event::Outcome` carrying the caller's token
//!   (Accepted / Rejected / TimedOut / Unknown / NotSent); nothing is dropped silently;
//! - a request is written at most once per throttling round: a timeout never causes a re-send;
//!   only an explicit throttling answer (ESME_RTHROTTLED, ESME_RMSGQFUL), which says the SMSC
//!   did not take the message, re-queues it (at the front, original order, same token);
//! - at most `window` submits are outstanding, at most `max_pending` are queued, at most
//!   `max_unanswered_delivers` delivers wait for the caller's answer, at most `late_memory`
//!   timed-out sequence numbers are remembered, and the input buffer never holds more than one
//!   partial PDU of at most `max_pdu_len` octets.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::smpp::pdu::{
    self, Bind, Body, DataSmResp, Pdu, SubmitSm, SubmitSmResp, command_id as cmd, status,
};

/// Which bind PDU to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindMode {
    Transmitter,
    Receiver,
    Transceiver,
}

/// The caller's identity for one submitted PDU; it comes back in the outcome event.
pub type Token = u64;

/// Largest sequence number (the spec reserves the top bit's half).
pub const MAX_SEQUENCE: u32 = 0x7FFF_FFFF;

/// Session parameters. Construct with `SessionConfig::new` and adjust fields.
/// `Debug` prints everything but the password.
#[derive(Clone)]
pub struct SessionConfig {
    pub bind_mode: BindMode,
    pub system_id: pdu::SystemId,
    pub password: pdu::Password,
    pub system_type: pdu::SystemType,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: pdu::AddressRange,
    /// Maximum submits written and not yet answered (nor timed out).
    pub window: usize,
    /// Maximum submits queued behind the window (including throttled ones waiting to retry).
    pub max_pending: usize,
    /// Time a submit may stay unanswered before it is reported `TimedOut`.
    pub resp_timeout: Duration,
    pub bind_timeout: Duration,
    /// Send enquire_link after this long without receiving any PDU.
    pub enquire_interval: Duration,
    /// Missing enquire_link_resp after this long: the link is dead.
    pub enquire_timeout: Duration,
    pub unbind_timeout: Duration,
    /// First back-off after a throttling answer; doubles per consecutive throttling round.
    pub throttle_backoff: Duration,
    pub throttle_backoff_max: Duration,
    /// Re-sends allowed per submit after throttling answers; then it fails with that status.
    pub throttle_max_retries: u32,
    /// Maximum command_length accepted from the peer and produced by `submit`.
    pub max_pdu_len: usize,
    /// Delivers handed to the caller and not yet answered; beyond it the session answers
    /// ESME_RX_T_APPN itself (temporary: the SMSC re-sends later).
    pub max_unanswered_delivers: usize,
    /// Timed-out sequence numbers remembered to match late responses.
    pub late_memory: usize,
    /// First sequence number used (tests start near the wrap point).
    pub initial_sequence: u32,
    /// Bytes waiting for `poll_transmit` beyond which the session closes: a peer that keeps
    /// sending requests (enquire_link, deliver_sm) but never reads our answers would otherwise
    /// grow this buffer without bound.
    pub max_output_len: usize,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("bind_mode", &self.bind_mode)
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("addr_ton", &self.addr_ton)
            .field("addr_npi", &self.addr_npi)
            .field("address_range", &self.address_range)
            .field("window", &self.window)
            .field("max_pending", &self.max_pending)
            .field("resp_timeout", &self.resp_timeout)
            .field("bind_timeout", &self.bind_timeout)
            .field("enquire_interval", &self.enquire_interval)
            .field("enquire_timeout", &self.enquire_timeout)
            .field("unbind_timeout", &self.unbind_timeout)
            .field("throttle_backoff", &self.throttle_backoff)
            .field("throttle_backoff_max", &self.throttle_backoff_max)
            .field("throttle_max_retries", &self.throttle_max_retries)
            .field("max_pdu_len", &self.max_pdu_len)
            .field("max_unanswered_delivers", &self.max_unanswered_delivers)
            .field("late_memory", &self.late_memory)
            .field("initial_sequence", &self.initial_sequence)
            .field("max_output_len", &self.max_output_len)
            .finish()
    }
}

impl SessionConfig {
    /// Conventional defaults; fails if a credential exceeds its SMPP field size.
    pub fn new(bind_mode: BindMode, system_id: &str, password: &str) -> Result<Self, pdu::TooLong> {
        Ok(Self {
            bind_mode,
            system_id: system_id.try_into()?,
            password: password.try_into()?,
            system_type: pdu::SystemType::empty(),
            addr_ton: 0,
            addr_npi: 0,
            address_range: pdu::AddressRange::empty(),
            window: 10,
            max_pending: 1000,
            resp_timeout: Duration::from_secs(10),
            bind_timeout: Duration::from_secs(10),
            enquire_interval: Duration::from_secs(30),
            enquire_timeout: Duration::from_secs(10),
            unbind_timeout: Duration::from_secs(5),
            throttle_backoff: Duration::from_millis(200),
            throttle_backoff_max: Duration::from_secs(5),
            throttle_max_retries: 5,
            max_pdu_len: pdu::DEFAULT_MAX_PDU_LEN,
            max_unanswered_delivers: 1000,
            late_memory: 4096,
            initial_sequence: 1,
            max_output_len: 4 << 20,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Binding,
    Bound(BindMode),
    Unbinding,
    Closed,
}

/// How one submit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        message_id: String,
    },
    /// The SMSC answered with an error status (or kept throttling beyond the retry limit).
    Rejected {
        status: u32,
    },
    /// No answer within `resp_timeout`. It may have been delivered; it is NOT re-sent.
    TimedOut,
    /// Written, then the session ended (or the answer was unreadable) without a usable answer.
    Unknown,
    /// Never written (or refused by throttling and not yet re-sent): safe to send elsewhere.
    NotSent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    BindRejected {
        status: u32,
    },
    BindTimeout,
    /// No enquire_link_resp in time.
    LinkDead,
    PeerUnbind,
    /// Our unbind completed.
    Unbound,
    UnbindTimeout,
    /// The byte stream cannot be framed any more.
    Framing {
        status: u32,
    },
    /// The transport went away (reported by the I/O layer).
    TransportClosed,
    /// Closed before a bind completed (unbind requested while open/binding).
    Aborted,
    /// Unwritten output exceeded `max_output_len` (the peer stopped reading).
    OutputOverflow,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// bind_resp OK. `system_id` is the SMSC's.
    Bound {
        system_id: String,
    },
    BindFailed {
        status: u32,
    },
    Outcome {
        token: Token,
        outcome: Outcome,
    },
    /// A submit_sm_resp for a submit already reported `TimedOut`.
    LateResponse {
        token: Token,
        status: u32,
        message_id: String,
    },
    /// deliver_sm or data_sm; answer with `respond_deliver(seq, status)`.
    Deliver {
        seq: u32,
        pdu: Pdu,
    },
    /// An enquire_link_resp arrived: the link is alive.
    EnquireOk {
        at: Instant,
    },
    /// enquire_link_resp missing; a `Closed` follows.
    LinkDead,
    /// The session ended; every request has already had its outcome event.
    Closed {
        reason: CloseReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("pending queue is full ({max} submits)")]
    QueueFull { max: usize },
    #[error("session is not accepting submits (draining, unbinding or closed)")]
    NotAccepting,
    #[error("a receiver bind cannot submit")]
    ReceiverBind,
    #[error("encoded submit_sm is {len} octets, maximum is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("submit_sm cannot be encoded: {0}")]
    Encode(#[from] pdu::EncodeError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    #[error("no unanswered deliver with sequence number {seq}")]
    UnknownDeliver { seq: u32 },
}

/// Counters for metrics; monotonic over the session's life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub submits_sent: u64,
    pub throttled: u64,
    pub timed_out: u64,
    pub late_responses: u64,
    /// Responses matching nothing we sent or remember.
    pub unmatched_responses: u64,
    pub generic_nacks_sent: u64,
    pub delivers: u64,
    /// Delivers answered ESME_RX_T_APPN by the session because the caller had too many open.
    pub delivers_refused: u64,
}

/// A submit waiting or in flight. `frame` is the encoded submit_sm; its sequence number is
/// patched in place on each send, so a retry re-encodes nothing.
struct Request {
    token: Token,
    /// Submission order: throttled requests are re-queued by it to keep the caller's order.
    order: u64,
    retries: u32,
    frame: Vec<u8>,
}

struct InFlight {
    req: Request,
    deadline: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Control {
    Bind,
    Unbind,
}

#[derive(Clone, Copy)]
enum DeliverKind {
    DeliverSm,
    DataSm,
}

pub struct Session {
    cfg: SessionConfig,
    state: State,
    next_seq: u32,
    next_order: u64,
    /// Outstanding submits by sequence number (len <= window).
    outstanding: HashMap<u32, InFlight>,
    /// (deadline, seq) in send order. Since `resp_timeout` is fixed this is deadline order;
    /// entries of answered requests are skipped lazily and compacted when it grows.
    deadlines: VecDeque<(Instant, u32)>,
    pending: VecDeque<Request>,
    /// Timed-out seq -> token, plus FIFO eviction order (bounded by `late_memory`).
    late: HashMap<u32, Token>,
    late_order: VecDeque<(u32, Token)>,
    /// Our outstanding bind or unbind: (seq, kind, deadline).
    control: Option<(u32, Control, Instant)>,
    /// Our outstanding enquire_link: (seq, deadline).
    enquire: Option<(u32, Instant)>,
    delivers: HashMap<u32, DeliverKind>,
    /// Throttle back-off end; no submit is written before it.
    backoff_until: Option<Instant>,
    /// Consecutive throttling rounds (doubling exponent); reset by a non-throttle answer.
    throttle_level: u32,
    drain_deadline: Option<Instant>,
    last_rx: Instant,
    last_enquire_ok: Option<Instant>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    stats: SessionStats,
}

impl Session {
    /// Creates a session in `Open`. Degenerate values that would stall or spin it are raised
    /// to a floor (window 1, enquire_interval 10 ms, max_pdu_len 64): the config layer should
    /// have refused them, but a session must not busy-loop on a typo.
    pub fn new(mut cfg: SessionConfig, now: Instant) -> Self {
        cfg.window = cfg.window.max(1);
        cfg.enquire_interval = cfg.enquire_interval.max(Duration::from_millis(10));
        cfg.max_pdu_len = cfg.max_pdu_len.max(64);
        let first = match cfg.initial_sequence {
            0 => 1,
            s if s > MAX_SEQUENCE => 1,
            s => s,
        };
        Self {
            state: State::Open,
            next_seq: first,
            next_order: 0,
            outstanding: HashMap::with_capacity(cfg.window),
            deadlines: VecDeque::with_capacity(cfg.window * 2),
            pending: VecDeque::new(),
            late: HashMap::new(),
            late_order: VecDeque::new(),
            control: None,
            enquire: None,
            delivers: HashMap::new(),
            backoff_until: None,
            throttle_level: 0,
            drain_deadline: None,
            last_rx: now,
            last_enquire_ok: None,
            inbuf: Vec::new(),
            out: Vec::with_capacity(4096),
            events: VecDeque::new(),
            stats: SessionStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn is_bound(&self) -> bool {
        matches!(self.state, State::Bound(_))
    }

    /// True between `unbind()` and the unbind PDU: no new submits, the window still drains.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// When the last enquire_link_resp arrived (health signal).
    pub fn last_enquire_ok(&self) -> Option<Instant> {
        self.last_enquire_ok
    }

    /// When the last PDU of any kind arrived (the session's start before that).
    pub fn last_rx(&self) -> Instant {
        self.last_rx
    }

    pub fn outstanding_len(&self) -> usize {
        self.outstanding.len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// How many more submits `submit` admits right now: free queue places, plus free window
    /// slots when they would be written at once (bound, no back-off, nothing queued ahead).
    pub fn pending_room(&self, now: Instant) -> usize {
        let queue = self.cfg.max_pending.saturating_sub(self.pending.len());
        let sendable_now = self.is_bound() && !self.in_backoff(now) && self.pending.is_empty();
        let window = if sendable_now {
            self.cfg.window.saturating_sub(self.outstanding.len())
        } else {
            0
        };
        queue + window
    }

    pub fn unanswered_delivers(&self) -> usize {
        self.delivers.len()
    }

    pub fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    // ----- commands -----

    /// Sends the bind PDU. Only valid in `Open`; otherwise a no-op.
    pub fn bind(&mut self, now: Instant) {
        if self.state != State::Open {
            return;
        }
        let bind = Bind {
            system_id: self.cfg.system_id,
            password: self.cfg.password,
            system_type: self.cfg.system_type,
            interface_version: 0x34,
            addr_ton: self.cfg.addr_ton,
            addr_npi: self.cfg.addr_npi,
            address_range: self.cfg.address_range,
        };
        let body = match self.cfg.bind_mode {
            BindMode::Transmitter => Body::BindTransmitter(bind),
            BindMode::Receiver => Body::BindReceiver(bind),
            BindMode::Transceiver => Body::BindTransceiver(bind),
        };
        let seq = self.alloc_seq();
        self.write_pdu(0, seq, body);
        self.control = Some((seq, Control::Bind, now + self.cfg.bind_timeout));
        self.state = State::Binding;
    }

    /// Queues one submit_sm; it is written as soon as the session is bound, the window has
    /// room and no throttle back-off runs. Errors are immediate; on `Ok` exactly one
    /// `Event::Outcome` with `token` follows eventually.
    pub fn submit(&mut self, token: Token, sm: SubmitSm, now: Instant) -> Result<(), SubmitError> {
        self.submit_all([(token, sm)], now).map_err(|(_, e)| e)
    }

    /// Queues several submits all-or-nothing (the parts of one message must travel together):
    /// on error none is queued, and the index of the offending item is returned.
    pub fn submit_all(
        &mut self,
        items: impl IntoIterator<Item = (Token, SubmitSm)>,
        now: Instant,
    ) -> Result<(), (usize, SubmitError)> {
        if self.cfg.bind_mode == BindMode::Receiver {
            return Err((0, SubmitError::ReceiverBind));
        }
        if !matches!(self.state, State::Open | State::Binding | State::Bound(_))
            || self.drain_deadline.is_some()
        {
            return Err((0, SubmitError::NotAccepting));
        }
        // Items that go straight into the window never occupy the queue, so a message of
        // more parts than `max_pending` still fits an idle session.
        let room = self.pending_room(now);
        let mut batch = Vec::new();
        for (i, (token, sm)) in items.into_iter().enumerate() {
            if i >= room {
                return Err((
                    i,
                    SubmitError::QueueFull {
                        max: self.cfg.max_pending,
                    },
                ));
            }
            let frame = self.encode_submit(sm).map_err(|e| (i, e))?;
            batch.push((token, frame));
        }
        for (token, frame) in batch {
            let order = self.next_order;
            self.next_order += 1;
            self.pending.push_back(Request {
                token,
                order,
                retries: 0,
                frame,
            });
        }
        self.pump(now);
        Ok(())
    }

    fn encode_submit(&self, sm: SubmitSm) -> Result<Vec<u8>, SubmitError> {
        let pdu = Pdu {
            command_status: 0,
            sequence_number: 0,
            body: Body::SubmitSm(sm),
        };
        let mut frame = Vec::with_capacity(pdu::encoded_len(&pdu));
        pdu::encode(&pdu, &mut frame)?;
        if frame.len() > self.cfg.max_pdu_len {
            return Err(SubmitError::TooLarge {
                len: frame.len(),
                max: self.cfg.max_pdu_len,
            });
        }
        Ok(frame)
    }

    /// Answers a deliver_sm / data_sm previously reported as `Event::Deliver { seq, .. }`.
    pub fn respond_deliver(&mut self, seq: u32, status: u32) -> Result<(), RespondError> {
        let kind = self
            .delivers
            .remove(&seq)
            .ok_or(RespondError::UnknownDeliver { seq })?;
        self.write_deliver_resp(kind, seq, status);
        Ok(())
    }

    /// Graceful close: stop taking submits, let queued and outstanding ones complete until
    /// `now + drain_timeout`, then unbind and wait (`unbind_timeout`) for unbind_resp.
    /// Before the bind completes there is nothing to drain: the session closes at once.
    pub fn unbind(&mut self, now: Instant, drain_timeout: Duration) {
        match self.state {
            State::Open | State::Binding => self.close(CloseReason::Aborted),
            State::Bound(_) => {
                if self.drain_deadline.is_none() {
                    self.drain_deadline = Some(now + drain_timeout);
                }
                self.pump(now);
            }
            State::Unbinding | State::Closed => {}
        }
    }

    /// The transport is gone (EOF, error): fail everything and close.
    pub fn handle_transport_closed(&mut self) {
        if self.state != State::Closed {
            self.close(CloseReason::TransportClosed);
        }
    }

    // ----- outputs -----

    /// Appends every byte the session wants written to `buf`; returns whether there were any.
    /// Swaps buffers when `buf` is empty so the common case copies nothing.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.out.is_empty() {
            return false;
        }
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.out);
        } else {
            buf.extend_from_slice(&self.out);
            self.out.clear();
        }
        true
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.control.map(|(_, _, d)| d));
        if self.is_bound() {
            consider(Some(match self.enquire {
                Some((_, d)) => d,
                None => self.last_rx + self.cfg.enquire_interval,
            }));
            consider(self.drain_deadline);
            if !self.pending.is_empty() {
                consider(self.backoff_until);
            }
        }
        // After `gc_deadlines` the front entry is live.
        consider(self.deadlines.front().map(|&(d, _)| d));
        t
    }

    // ----- inputs -----

    /// Feeds received bytes. Any number of PDUs (or parts) may be in `data`.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if self.state == State::Closed || data.is_empty() {
            return;
        }
        // Decode straight from `data` when nothing is buffered; keep only a partial tail.
        if self.inbuf.is_empty() {
            let used = self.decode_all(data, now);
            if self.state != State::Closed {
                self.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.inbuf);
            buf.extend_from_slice(data);
            let used = self.decode_all(&buf, now);
            buf.drain(..used);
            if self.state != State::Closed {
                self.inbuf = buf;
            }
        }
        if self.out.len() > self.cfg.max_output_len {
            tracing::warn!(
                bytes = self.out.len(),
                "SMPP peer is not reading; closing session"
            );
            // Nothing queued can reach a peer that does not read: drop it with the session.
            self.out = Vec::new();
            self.close(CloseReason::OutputOverflow);
            return;
        }
        self.pump(now);
    }

    /// Expires timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if let Some((_, kind, deadline)) = self.control
            && now >= deadline
        {
            self.control = None;
            match kind {
                Control::Bind => {
                    self.close(CloseReason::BindTimeout);
                }
                Control::Unbind => self.close(CloseReason::UnbindTimeout),
            }
            return;
        }
        if let Some((_, deadline)) = self.enquire
            && now >= deadline
        {
            self.enquire = None;
            self.events.push_back(Event::LinkDead);
            self.close(CloseReason::LinkDead);
            return;
        }
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let live = self
                .outstanding
                .get(&seq)
                .is_some_and(|f| f.deadline == deadline);
            if !live {
                continue;
            }
            let flight = self.outstanding.remove(&seq).expect("checked live");
            self.stats.timed_out += 1;
            self.remember_late(seq, flight.req.token);
            self.events.push_back(Event::Outcome {
                token: flight.req.token,
                outcome: Outcome::TimedOut,
            });
        }
        self.pump(now);
    }

    // ----- internals -----

    fn decode_all(&mut self, buf: &[u8], now: Instant) -> usize {
        let mut used = 0;
        while used < buf.len() && self.state != State::Closed {
            match pdu::decode(&buf[used..], self.cfg.max_pdu_len) {
                Ok(Some((pdu, n))) => {
                    used += n;
                    self.last_rx = now;
                    self.handle_pdu(pdu, now);
                }
                Ok(None) => break,
                Err(e) => {
                    let seq = e.sequence_number().unwrap_or(0);
                    let status = e.command_status();
                    match e.frame_len() {
                        Some(n) => {
                            let header_status = pdu::peek_header(&buf[used..])
                                .map_or(status::ESME_ROK, |h| h.command_status);
                            used += n.max(pdu::HEADER_LEN).min(buf.len() - used);
                            self.last_rx = now;
                            match e.answer_command_id() {
                                Some(answer) => self.write_answer(answer, status, seq),
                                // A malformed answer to one of our requests: never answer an
                                // answer; fail what it was for.
                                None => self.handle_bad_response(seq, header_status, now),
                            }
                        }
                        None => {
                            tracing::warn!(error = %e, "SMPP framing lost; closing session");
                            self.write_pdu(status, seq, Body::GenericNack);
                            self.stats.generic_nacks_sent += 1;
                            self.close(CloseReason::Framing { status });
                            return used;
                        }
                    }
                }
            }
        }
        used
    }

    fn handle_pdu(&mut self, pdu: Pdu, now: Instant) {
        let seq = pdu.sequence_number;
        let status = pdu.command_status;
        match pdu.body {
            Body::EnquireLink => self.write_pdu(0, seq, Body::EnquireLinkResp),
            Body::Unbind => {
                self.write_pdu(0, seq, Body::UnbindResp);
                self.close(CloseReason::PeerUnbind);
            }
            Body::DeliverSm(_) => self.handle_deliver(DeliverKind::DeliverSm, pdu),
            Body::DataSm(_) => self.handle_deliver(DeliverKind::DataSm, pdu),
            // Requests without a response: nothing to answer, nothing we act on.
            Body::AlertNotification(_) | Body::Outbind(_) => {}
            Body::BindReceiverResp(r)
            | Body::BindTransmitterResp(r)
            | Body::BindTransceiverResp(r) => match self.control {
                Some((s, Control::Bind, _)) if s == seq => {
                    self.control = None;
                    if status == status::ESME_ROK {
                        self.state = State::Bound(self.cfg.bind_mode);
                        self.events.push_back(Event::Bound {
                            system_id: r.system_id.as_str_lossy().into_owned(),
                        });
                        // Probe the link at once: health counts a link as up only after an
                        // enquire_link_resp, and waiting the idle interval first would keep a
                        // freshly bound link out of routing for `enquire_interval`.
                        if self.enquire.is_none() {
                            let seq = self.alloc_seq();
                            self.write_pdu(0, seq, Body::EnquireLink);
                            self.enquire = Some((seq, now + self.cfg.enquire_timeout));
                        }
                    } else {
                        self.events.push_back(Event::BindFailed { status });
                        self.close(CloseReason::BindRejected { status });
                    }
                }
                _ => self.stats.unmatched_responses += 1,
            },
            Body::UnbindResp => match self.control {
                Some((s, Control::Unbind, _)) if s == seq => {
                    self.control = None;
                    self.close(CloseReason::Unbound);
                }
                _ => self.stats.unmatched_responses += 1,
            },
            Body::EnquireLinkResp => self.handle_enquire_resp(seq, now),
            Body::SubmitSmResp(r) => {
                let message_id = r.message_id.as_str_lossy().into_owned();
                self.handle_submit_resp(seq, status, Some(message_id), now);
            }
            Body::GenericNack => self.handle_generic_nack(seq, status, now),
            // Answers to requests this session never sends.
            Body::SubmitMultiResp(_)
            | Body::DataSmResp(_)
            | Body::DeliverSmResp(_)
            | Body::QuerySmResp(_)
            | Body::CancelSmResp
            | Body::ReplaceSmResp => self.stats.unmatched_responses += 1,
            // Requests an SMSC must not send to an ESME.
            Body::BindReceiver(_)
            | Body::BindTransmitter(_)
            | Body::BindTransceiver(_)
            | Body::SubmitSm(_)
            | Body::SubmitMulti(_)
            | Body::QuerySm(_)
            | Body::CancelSm(_)
            | Body::ReplaceSm(_) => {
                let id = pdu.body.command_id() | 0x8000_0000;
                self.write_answer(id, status::ESME_RINVBNDSTS, seq);
            }
        }
    }

    fn handle_enquire_resp(&mut self, seq: u32, now: Instant) {
        match self.enquire {
            Some((s, _)) if s == seq => {
                self.enquire = None;
                self.last_enquire_ok = Some(now);
                self.events.push_back(Event::EnquireOk { at: now });
            }
            _ => self.stats.unmatched_responses += 1,
        }
    }

    fn handle_generic_nack(&mut self, seq: u32, nack_status: u32, now: Instant) {
        // A generic_nack answers whichever of our requests carried this sequence number.
        match self.control {
            Some((s, Control::Bind, _)) if s == seq => {
                self.control = None;
                let status = if nack_status == 0 {
                    status::ESME_RBINDFAIL
                } else {
                    nack_status
                };
                self.events.push_back(Event::BindFailed { status });
                self.close(CloseReason::BindRejected { status });
                return;
            }
            Some((s, Control::Unbind, _)) if s == seq => {
                self.control = None;
                self.close(CloseReason::Unbound);
                return;
            }
            _ => {}
        }
        if let Some((s, _)) = self.enquire
            && s == seq
        {
            // The peer answered, if oddly: it is alive.
            self.handle_enquire_resp(seq, now);
            return;
        }
        let status = if nack_status == 0 {
            status::ESME_RSYSERR
        } else {
            nack_status
        };
        self.handle_submit_resp(seq, status, None, now);
    }

    /// An answer we could not decode; its header still names the request it answers.
    /// A non-zero header status is a readable verdict (rejection or throttling). A zero status
    /// with a broken body leaves the message id unknown: `Unknown`, and never re-sent.
    fn handle_bad_response(&mut self, seq: u32, header_status: u32, now: Instant) {
        if header_status != status::ESME_ROK {
            self.handle_submit_resp(seq, header_status, None, now);
        } else if let Some(flight) = self.outstanding.remove(&seq) {
            self.events.push_back(Event::Outcome {
                token: flight.req.token,
                outcome: Outcome::Unknown,
            });
        } else {
            self.handle_submit_resp(seq, header_status, None, now);
        }
    }

    fn handle_submit_resp(
        &mut self,
        seq: u32,
        status: u32,
        message_id: Option<String>,
        now: Instant,
    ) {
        let Some(flight) = self.outstanding.remove(&seq) else {
            if let Some(token) = self.late.remove(&seq) {
                self.stats.late_responses += 1;
                self.events.push_back(Event::LateResponse {
                    token,
                    status,
                    message_id: message_id.unwrap_or_default(),
                });
            } else {
                self.stats.unmatched_responses += 1;
            }
            return;
        };
        let mut req = flight.req;
        if status == status::ESME_RTHROTTLED || status == status::ESME_RMSGQFUL {
            self.stats.throttled += 1;
            self.enter_backoff(now);
            if req.retries >= self.cfg.throttle_max_retries {
                self.events.push_back(Event::Outcome {
                    token: req.token,
                    outcome: Outcome::Rejected { status },
                });
            } else {
                req.retries += 1;
                self.requeue_front(req);
            }
            return;
        }
        self.throttle_level = 0;
        let outcome = if status == status::ESME_ROK {
            Outcome::Accepted {
                message_id: message_id.unwrap_or_default(),
            }
        } else {
            Outcome::Rejected { status }
        };
        self.events.push_back(Event::Outcome {
            token: req.token,
            outcome,
        });
    }

    /// Starts a back-off round unless one is already running (a whole window throttled at
    /// once is one round, not `window` doublings).
    fn enter_backoff(&mut self, now: Instant) {
        if self.in_backoff(now) {
            return;
        }
        let factor = 1u32 << self.throttle_level.min(16);
        let d = self
            .cfg
            .throttle_backoff
            .saturating_mul(factor)
            .min(self.cfg.throttle_backoff_max);
        self.backoff_until = Some(now + d);
        self.throttle_level = self.throttle_level.saturating_add(1);
    }

    /// Puts a throttled request back in front of the never-sent ones, in submission order.
    /// It may briefly push the queue past `max_pending` by at most `window` entries: those
    /// were already admitted, and refusing them now would lose them.
    fn requeue_front(&mut self, req: Request) {
        let at = self
            .pending
            .iter()
            .position(|r| r.order > req.order)
            .unwrap_or(self.pending.len());
        self.pending.insert(at, req);
    }

    fn handle_deliver(&mut self, kind: DeliverKind, pdu: Pdu) {
        let seq = pdu.sequence_number;
        if !self.is_bound() || self.drain_deadline.is_some() {
            // Not bound yet: the SMSC broke protocol. Going away: our answer would not
            // outlive us, so ask for a re-send (temporary error) instead.
            let status = if matches!(self.state, State::Open | State::Binding) {
                status::ESME_RINVBNDSTS
            } else {
                status::ESME_RX_T_APPN
            };
            self.write_deliver_resp(kind, seq, status);
            return;
        }
        if self.delivers.len() >= self.cfg.max_unanswered_delivers
            && !self.delivers.contains_key(&seq)
        {
            self.stats.delivers_refused += 1;
            self.write_deliver_resp(kind, seq, status::ESME_RX_T_APPN);
            return;
        }
        self.stats.delivers += 1;
        self.delivers.insert(seq, kind);
        self.events.push_back(Event::Deliver { seq, pdu });
    }

    fn write_deliver_resp(&mut self, kind: DeliverKind, seq: u32, status: u32) {
        let body = match kind {
            DeliverKind::DeliverSm => Body::DeliverSmResp(SubmitSmResp::default()),
            DeliverKind::DataSm => Body::DataSmResp(DataSmResp::default()),
        };
        self.write_pdu(status, seq, body);
    }

    /// Writes the answer `id` (a response command_id, or generic_nack) with an empty body.
    fn write_answer(&mut self, id: u32, status: u32, seq: u32) {
        let body = match id {
            cmd::SUBMIT_SM_RESP => Body::SubmitSmResp(SubmitSmResp::default()),
            cmd::DELIVER_SM_RESP => Body::DeliverSmResp(SubmitSmResp::default()),
            cmd::DATA_SM_RESP => Body::DataSmResp(DataSmResp::default()),
            cmd::SUBMIT_MULTI_RESP => Body::SubmitMultiResp(Default::default()),
            cmd::QUERY_SM_RESP => Body::QuerySmResp(Default::default()),
            cmd::BIND_RECEIVER_RESP => Body::BindReceiverResp(Default::default()),
            cmd::BIND_TRANSMITTER_RESP => Body::BindTransmitterResp(Default::default()),
            cmd::BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp(Default::default()),
            cmd::CANCEL_SM_RESP => Body::CancelSmResp,
            cmd::REPLACE_SM_RESP => Body::ReplaceSmResp,
            cmd::UNBIND_RESP => Body::UnbindResp,
            cmd::ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
            _ => {
                self.stats.generic_nacks_sent += 1;
                Body::GenericNack
            }
        };
        self.write_pdu(status, seq, body);
    }

    fn write_pdu(&mut self, command_status: u32, sequence_number: u32, body: Body) {
        let pdu = Pdu {
            command_status,
            sequence_number,
            body,
        };
        let mark = self.out.len();
        if let Err(e) = pdu::encode(&pdu, &mut self.out) {
            // Only our own fixed-shape PDUs come here; an error is a bug, not input.
            debug_assert!(false, "encoding own PDU failed: {e}");
            tracing::error!(error = %e, "encoding own PDU failed");
            self.out.truncate(mark);
        }
    }

    /// Writes queued submits while bound, outside back-off, and the window has room; sends
    /// enquire_link when idle; finishes a drain.
    fn pump(&mut self, now: Instant) {
        if !self.is_bound() {
            self.gc_deadlines();
            return;
        }
        if self.backoff_until.is_some_and(|t| now >= t) {
            self.backoff_until = None;
        }
        if self.backoff_until.is_none() {
            while self.outstanding.len() < self.cfg.window {
                let Some(mut req) = self.pending.pop_front() else {
                    break;
                };
                let seq = self.alloc_seq();
                req.frame[12..16].copy_from_slice(&seq.to_be_bytes());
                self.out.extend_from_slice(&req.frame);
                self.stats.submits_sent += 1;
                let deadline = now + self.cfg.resp_timeout;
                self.deadlines.push_back((deadline, seq));
                self.outstanding.insert(seq, InFlight { req, deadline });
            }
        }
        if self.enquire.is_none() && now >= self.last_rx + self.cfg.enquire_interval {
            let seq = self.alloc_seq();
            self.write_pdu(0, seq, Body::EnquireLink);
            self.enquire = Some((seq, now + self.cfg.enquire_timeout));
        }
        if let Some(deadline) = self.drain_deadline {
            let drained = self.outstanding.is_empty() && self.pending.is_empty();
            if drained || now >= deadline {
                self.fail_all();
                self.drain_deadline = None;
                let seq = self.alloc_seq();
                self.write_pdu(0, seq, Body::Unbind);
                self.control = Some((seq, Control::Unbind, now + self.cfg.unbind_timeout));
                self.state = State::Unbinding;
            }
        }
        self.gc_deadlines();
    }

    /// Drops dead entries at the front, and compacts when answered entries pile up behind a
    /// long-outstanding one (keeps the deque O(window)).
    fn gc_deadlines(&mut self) {
        while let Some(&(d, seq)) = self.deadlines.front() {
            if self.outstanding.get(&seq).is_some_and(|f| f.deadline == d) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.cfg.window + 16 {
            let outstanding = &self.outstanding;
            self.deadlines
                .retain(|(d, seq)| outstanding.get(seq).is_some_and(|f| f.deadline == *d));
        }
    }

    fn alloc_seq(&mut self) -> u32 {
        loop {
            let seq = self.next_seq;
            self.next_seq = if seq >= MAX_SEQUENCE { 1 } else { seq + 1 };
            let busy = self.outstanding.contains_key(&seq)
                || self.late.contains_key(&seq)
                || self.enquire.is_some_and(|(s, _)| s == seq)
                || self.control.is_some_and(|(s, _, _)| s == seq);
            if !busy {
                return seq;
            }
        }
    }

    fn remember_late(&mut self, seq: u32, token: Token) {
        if self.cfg.late_memory == 0 {
            return;
        }
        while self.late_order.len() >= self.cfg.late_memory {
            let Some((old_seq, old_token)) = self.late_order.pop_front() else {
                break;
            };
            if self.late.get(&old_seq) == Some(&old_token) {
                self.late.remove(&old_seq);
            }
        }
        self.late.insert(seq, token);
        self.late_order.push_back((seq, token));
    }

    /// Reports every outstanding submit `Unknown` and every queued one `NotSent`, each in
    /// submission order.
    fn fail_all(&mut self) {
        let mut flights: Vec<InFlight> = self.outstanding.drain().map(|(_, f)| f).collect();
        flights.sort_by_key(|f| f.req.order);
        for f in flights {
            self.events.push_back(Event::Outcome {
                token: f.req.token,
                outcome: Outcome::Unknown,
            });
        }
        self.deadlines.clear();
        while let Some(req) = self.pending.pop_front() {
            self.events.push_back(Event::Outcome {
                token: req.token,
                outcome: Outcome::NotSent,
            });
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.fail_all();
        self.state = State::Closed;
        self.control = None;
        self.enquire = None;
        self.drain_deadline = None;
        self.backoff_until = None;
        // The SMSC re-sends unanswered delivers on the next bind.
        self.delivers.clear();
        self.inbuf = Vec::new();
        self.events.push_back(Event::Closed { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Session, Instant) {
        let now = Instant::now();
        let cfg = SessionConfig::new(BindMode::Transceiver, "esme", "pw").unwrap();
        (Session::new(cfg, now), now)
    }

    fn in_flight(token: Token, now: Instant) -> InFlight {
        InFlight {
            req: Request {
                token,
                order: token,
                retries: 0,
                frame: Vec::new(),
            },
            deadline: now,
        }
    }

    #[test]
    fn alloc_seq_skips_numbers_still_in_use_across_the_wrap() {
        let (mut s, now) = session();
        s.outstanding.insert(MAX_SEQUENCE, in_flight(1, now));
        s.outstanding.insert(1, in_flight(2, now));
        s.remember_late(2, 3);
        s.enquire = Some((3, now));
        s.control = Some((4, Control::Unbind, now));
        s.next_seq = MAX_SEQUENCE - 1;
        assert_eq!(s.alloc_seq(), MAX_SEQUENCE - 1);
        assert_eq!(
            s.alloc_seq(),
            5,
            "MAX, 1, 2, 3, 4 are in use; 0 is never used"
        );
        assert_eq!(s.alloc_seq(), 6);
    }

    #[test]
    fn deadline_queue_stays_bounded_behind_a_long_outstanding_request() {
        let (mut s, now) = session();
        s.state = State::Bound(BindMode::Transceiver);
        s.cfg.window = 4;
        s.cfg.max_pending = 100_000;
        s.cfg.enquire_interval = Duration::from_secs(3600);
        s.submit(0, SubmitSm::default(), now).unwrap();
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        // Request 0 never answered; thousands of others are answered behind it.
        for i in 1..5000u64 {
            s.submit(i, SubmitSm::default(), now).unwrap();
            let seq = s
                .outstanding
                .iter()
                .find(|(_, f)| f.req.token == i)
                .map(|(s, _)| *s)
                .unwrap();
            s.handle_submit_resp(seq, 0, Some("id".into()), now);
            assert!(s.deadlines.len() <= 2 * s.cfg.window + 16);
        }
        assert_eq!(s.deadlines.front().map(|d| d.1), Some(1));
    }
}
