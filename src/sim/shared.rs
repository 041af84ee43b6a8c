//! State shared by every event-loop thread and the control API: behaviour (faults), counters,
//! the ring buffer of received messages and the list of open sessions. The data plane touches
//! it once per read batch (counters, records) or once per receipt dispatch, never per byte.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use serde_json::{Value, json};

use super::config::{Behaviour, DlrState, MalformedKind, SimArgs};
use super::util::{Signal, lock};
use crate::smpp::pdu::{Addr21, Addr65, MessageId, Tlvs, tag};

/// Most receipts queued for one session before the dispatcher looks elsewhere / waits.
pub(crate) const INBOX_CAP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindKind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl BindKind {
    pub fn can_receive(self) -> bool {
        matches!(self, BindKind::Receiver | BindKind::Transceiver)
    }
    pub fn can_submit(self) -> bool {
        matches!(self, BindKind::Transmitter | BindKind::Transceiver)
    }
    pub fn name(self) -> &'static str {
        match self {
            BindKind::Transmitter => "transmitter",
            BindKind::Receiver => "receiver",
            BindKind::Transceiver => "transceiver",
        }
    }
}

pub(crate) struct BindInfo {
    pub system_id: Arc<str>,
    pub kind: BindKind,
}

/// A delivery receipt on its way: scheduled, waiting for a receiving bind, queued for a
/// session, or sent and waiting for deliver_sm_resp.
#[derive(Debug, Clone)]
pub(crate) struct ReceiptJob {
    pub due: Instant,
    pub id_num: u64,
    pub system_id: Arc<str>,
    /// Session (connection id) that submitted the message.
    pub submitter: u64,
    /// Addresses as in the submit; the receipt swaps them.
    pub source: Addr21,
    pub destination: Addr21,
    pub submit_secs: u64,
    pub state: DlrState,
    /// First octets of the message text (for `text:`), printable ASCII only.
    pub text: [u8; 20],
    pub text_len: u8,
    /// Sends so far (the first send counts).
    pub sends: u32,
}

/// The per-session piece other threads can reach: bind info, the kill switch and the receipt
/// inbox. Everything else about a session lives on its own event loop.
pub(crate) struct ConnHandle {
    pub id: u64,
    pub bind: OnceLock<BindInfo>,
    pub killed: AtomicBool,
    /// Wakes the session's writer (new output, receipts in the inbox, kill).
    pub writer_wake: Signal,
    /// Wakes the session's reader (output drained below the high-water mark).
    pub reader_wake: Signal,
    pub inbox: Mutex<VecDeque<ReceiptJob>>,
    pub peer: String,
}

impl ConnHandle {
    pub fn new(id: u64, peer: String) -> Self {
        ConnHandle {
            id,
            bind: OnceLock::new(),
            killed: AtomicBool::new(false),
            writer_wake: Signal::default(),
            reader_wake: Signal::default(),
            inbox: Mutex::new(VecDeque::new()),
            peer,
        }
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.writer_wake.notify();
        self.reader_wake.notify();
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// One received submit_sm / data_sm, as `GET /messages` shows it. Holds the decoded PDU's own
/// short_message and TLV buffers (moved, not copied).
pub(crate) struct MessageRecord {
    pub command: &'static str,
    pub sequence_number: u32,
    pub message_id: MessageId,
    pub bind_id: u64,
    pub system_id: Arc<str>,
    pub source: Addr65,
    pub destination: Addr65,
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    pub short_message: Vec<u8>,
    pub tlvs: Tlvs,
    pub received_at_ms: u64,
}

#[derive(Default)]
pub(crate) struct Ring {
    pub records: VecDeque<MessageRecord>,
    pub total: u64,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters (reset by `POST /reset`).
        #[derive(Default)]
        pub(crate) struct Stats { $(pub $name: AtomicU64,)* }
        impl Stats {
            fn reset(&self) { $(self.$name.store(0, Ordering::Relaxed);)* }
            fn to_json(&self) -> serde_json::Map<String, Value> {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).to_string(), json!(self.$name.load(Ordering::Relaxed)));)*
                m
            }
        }
    };
}

counters!(
    connections_accepted,
    connections_refused,
    binds_ok,
    binds_refused,
    binds_transmitter,
    binds_receiver,
    binds_transceiver,
    unbinds_received,
    enquire_links_received,
    submits_received,
    data_sm_received,
    submit_multi_received,
    query_sm_received,
    other_requests_received,
    decode_errors,
    malformed_injected,
    sessions_disconnected_by_fault,
    receipts_scheduled,
    receipts_sent,
    receipts_retransmitted,
    receipts_acked,
    receipts_nacked,
    receipts_failed,
    receipts_dropped,
    deliver_sm_resp_unmatched,
);

/// Counters a session accumulates over one read batch and adds to `Stats` in one go.
#[derive(Default)]
pub(crate) struct BatchStats {
    pub submits: u64,
    pub data_sm: u64,
    pub enquire_links: u64,
    pub decode_errors: u64,
    pub receipts_scheduled: u64,
    pub receipts_dropped: u64,
    /// (command_status, count) of submit_sm / data_sm answers; a handful of distinct values.
    pub resp_status: Vec<(u32, u64)>,
    pub records: Vec<MessageRecord>,
}

impl BatchStats {
    #[inline]
    pub fn count_status(&mut self, status: u32) {
        for e in &mut self.resp_status {
            if e.0 == status {
                e.1 += 1;
                return;
            }
        }
        self.resp_status.push((status, 1));
    }
}

/// Outcome of counting one submit against a pending `disconnect_after_submits`.
pub(crate) enum Budget {
    /// No countdown, or not yet at its end: answer normally.
    Off,
    /// This submit is the last one to answer; then close every session.
    Last,
    /// The countdown already ended (another session is closing everything): do not answer.
    Exhausted,
}

pub(crate) struct Shared {
    pub args: SimArgs,
    pub cores: usize,
    initial: Behaviour,
    behaviour: RwLock<Arc<Behaviour>>,
    /// Bumped on every behaviour change so sessions re-read it with one atomic load per batch.
    pub generation: AtomicU64,
    /// Submits still to answer before closing every session; negative = no countdown.
    disconnect_budget: AtomicI64,
    malformed_left: AtomicU64,
    malformed_kind: Mutex<MalformedKind>,
    pub stats: Stats,
    resp_status: Mutex<BTreeMap<u32, u64>>,
    pub ring: Mutex<Ring>,
    pub conns: Mutex<Vec<Arc<ConnHandle>>>,
    pub open_conns: AtomicUsize,
    /// Receipts not yet acked/failed/dropped, over all threads (bounded by dlr_max_pending).
    pub dlr_pending: AtomicUsize,
    pub next_conn_id: AtomicU64,
    /// Round-robin cursor for receipt routing.
    pub route_cursor: AtomicUsize,
    pub shutdown: AtomicBool,
    /// One per event loop: wakes its accept loop at shutdown.
    pub core_wake: Vec<Signal>,
    pub started: Instant,
}

impl Shared {
    pub fn new(args: SimArgs, initial: Behaviour, cores: usize) -> Self {
        // 0 means "off", as in `POST /faults`.
        let budget = match args.disconnect_after_submits {
            None | Some(0) => -1,
            Some(n) => n.min(i64::MAX as u64) as i64,
        };
        Shared {
            args,
            cores,
            behaviour: RwLock::new(Arc::new(initial.clone())),
            initial,
            generation: AtomicU64::new(0),
            disconnect_budget: AtomicI64::new(budget),
            malformed_left: AtomicU64::new(0),
            malformed_kind: Mutex::new(MalformedKind::CorruptResp),
            stats: Stats::default(),
            resp_status: Mutex::new(BTreeMap::new()),
            ring: Mutex::new(Ring::default()),
            conns: Mutex::new(Vec::new()),
            open_conns: AtomicUsize::new(0),
            dlr_pending: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
            route_cursor: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            core_wake: (0..cores).map(|_| Signal::default()).collect(),
            started: Instant::now(),
        }
    }

    pub fn behaviour(&self) -> Arc<Behaviour> {
        self.behaviour
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(b);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub fn set_disconnect_after(&self, n: u64) {
        let v = if n == 0 {
            -1
        } else {
            n.min(i64::MAX as u64) as i64
        };
        self.disconnect_budget.store(v, Ordering::Release);
    }

    #[inline]
    pub fn take_disconnect_budget(&self) -> Budget {
        let mut cur = self.disconnect_budget.load(Ordering::Acquire);
        loop {
            if cur < 0 {
                return Budget::Off;
            }
            if cur == 0 {
                return Budget::Exhausted;
            }
            match self.disconnect_budget.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return if cur == 1 { Budget::Last } else { Budget::Off },
                Err(v) => cur = v,
            }
        }
    }

    /// Called by the session that answered the last submit of a countdown.
    pub fn finish_disconnect_countdown(&self, except: u64) {
        self.disconnect_all(Some(except));
        self.disconnect_budget.store(-1, Ordering::Release);
    }

    pub fn arm_malformed(&self, kind: MalformedKind, count: u64) {
        *lock(&self.malformed_kind) = kind;
        self.malformed_left.store(count, Ordering::Release);
    }

    /// Claims one malformed injection, if any is armed.
    #[inline]
    pub fn take_malformed(&self) -> Option<MalformedKind> {
        let mut cur = self.malformed_left.load(Ordering::Acquire);
        while cur > 0 {
            match self.malformed_left.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.stats
                        .malformed_injected
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(*lock(&self.malformed_kind));
                }
                Err(v) => cur = v,
            }
        }
        None
    }

    /// Closes every session (except `except`) without unbind; returns how many.
    pub fn disconnect_all(&self, except: Option<u64>) -> usize {
        let conns = lock(&self.conns);
        let mut n = 0;
        for c in conns.iter() {
            if Some(c.id) != except && !c.is_killed() {
                c.kill();
                n += 1;
            }
        }
        self.stats
            .sessions_disconnected_by_fault
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub fn register(&self, c: Arc<ConnHandle>) {
        lock(&self.conns).push(c);
    }

    pub fn deregister(&self, id: u64) {
        lock(&self.conns).retain(|c| c.id != id);
    }

    /// Adds one read batch's counters and records.
    pub fn flush_batch(&self, b: &mut BatchStats) {
        let s = &self.stats;
        let add = |c: &AtomicU64, v: &mut u64| {
            if *v != 0 {
                c.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&s.submits_received, &mut b.submits);
        add(&s.data_sm_received, &mut b.data_sm);
        add(&s.enquire_links_received, &mut b.enquire_links);
        add(&s.decode_errors, &mut b.decode_errors);
        add(&s.receipts_scheduled, &mut b.receipts_scheduled);
        add(&s.receipts_dropped, &mut b.receipts_dropped);
        if !b.resp_status.is_empty() {
            let mut m = lock(&self.resp_status);
            for (st, n) in b.resp_status.drain(..) {
                *m.entry(st).or_insert(0) += n;
            }
        }
        if !b.records.is_empty() {
            let cap = self.args.messages_capacity;
            let mut ring = lock(&self.ring);
            for r in b.records.drain(..) {
                if ring.records.len() >= cap {
                    ring.records.pop_front();
                }
                ring.records.push_back(r);
                ring.total += 1;
            }
        }
    }

    pub fn reset(&self) {
        self.set_behaviour(self.initial.clone());
        self.disconnect_budget.store(-1, Ordering::Release);
        self.malformed_left.store(0, Ordering::Release);
        self.stats.reset();
        lock(&self.resp_status).clear();
        let mut ring = lock(&self.ring);
        ring.records.clear();
        ring.total = 0;
    }

    pub fn stats_json(&self) -> Value {
        let mut m = self.stats.to_json();
        let (bound, listing) = {
            let conns = lock(&self.conns);
            let mut listing = Vec::new();
            for c in conns.iter() {
                if let Some(b) = c.bind.get() {
                    listing.push(json!({
                        "bind_id": c.id,
                        "system_id": &*b.system_id,
                        "bind_type": b.kind.name(),
                        "peer": c.peer,
                        "receipts_queued": lock(&c.inbox).len(),
                    }));
                }
            }
            (listing.len(), listing)
        };
        let resps: serde_json::Map<String, Value> = lock(&self.resp_status)
            .iter()
            .map(|(st, n)| (format!("0x{st:08X}"), json!(n)))
            .collect();
        m.insert(
            "sessions_open".into(),
            json!(self.open_conns.load(Ordering::Relaxed)),
        );
        m.insert("sessions_bound".into(), json!(bound));
        m.insert("binds".into(), Value::Array(listing));
        m.insert("resps_by_status".into(), Value::Object(resps));
        m.insert(
            "receipts_pending".into(),
            json!(self.dlr_pending.load(Ordering::Relaxed)),
        );
        m.insert("messages_recorded".into(), json!(lock(&self.ring).total));
        m.insert(
            "uptime_ms".into(),
            json!(self.started.elapsed().as_millis() as u64),
        );
        Value::Object(m)
    }

    pub fn faults_json(&self) -> Value {
        let b = self.behaviour();
        let mut v = serde_json::to_value(&*b).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            let states: serde_json::Map<String, Value> = b
                .dlr_states
                .iter()
                .map(|(s, w)| (s.stat().to_string(), json!(w)))
                .collect();
            m.insert("dlr_states".into(), Value::Object(states));
            let budget = self.disconnect_budget.load(Ordering::Acquire);
            m.insert(
                "disconnect_after_submits".into(),
                if budget < 0 {
                    Value::Null
                } else {
                    json!(budget)
                },
            );
            m.insert(
                "malformed_left".into(),
                json!(self.malformed_left.load(Ordering::Acquire)),
            );
        }
        v
    }

    pub fn messages_json(&self, limit: usize) -> Value {
        let ring = lock(&self.ring);
        let skip = ring.records.len().saturating_sub(limit);
        let list: Vec<Value> = ring.records.iter().skip(skip).map(record_json).collect();
        json!({ "total": ring.total, "messages": list })
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The user data header at the front of short_message when esm_class has UDHI (0x40).
fn udh_json(esm_class: u8, sm: &[u8]) -> Option<Value> {
    if esm_class & 0x40 == 0 || sm.is_empty() {
        return None;
    }
    let udhl = usize::from(sm[0]);
    if sm.len() < 1 + udhl {
        return Some(json!({ "error": "UDH length exceeds short_message" }));
    }
    let udh = &sm[1..1 + udhl];
    let mut ies = Vec::new();
    let mut concat = Value::Null;
    let mut i = 0;
    while i + 2 <= udh.len() {
        let (iei, len) = (udh[i], usize::from(udh[i + 1]));
        let Some(data) = udh.get(i + 2..i + 2 + len) else {
            break;
        };
        match (iei, data) {
            (0x00, [r, t, s]) => concat = json!({ "ref": r, "total": t, "seq": s, "ref_bits": 8 }),
            (0x08, [r1, r2, t, s]) => {
                concat = json!({ "ref": u16::from_be_bytes([*r1, *r2]), "total": t, "seq": s, "ref_bits": 16 })
            }
            _ => {}
        }
        ies.push(json!({ "iei": iei, "data": hex(data) }));
        i += 2 + len;
    }
    Some(json!({ "hex": hex(&sm[..1 + udhl]), "ies": ies, "concat": concat }))
}

/// Best-effort text for humans and tests: UCS2 decoded, other codings only when the octets are
/// printable ASCII (GSM 7-bit unpacked agrees with ASCII on letters and digits).
fn text_of(data_coding: u8, body: &[u8]) -> Option<String> {
    if data_coding == 0x08 {
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return Some(String::from_utf16_lossy(&units));
    }
    if body.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Some(String::from_utf8_lossy(body).into_owned());
    }
    None
}

fn record_json(r: &MessageRecord) -> Value {
    let payload = if r.short_message.is_empty() {
        r.tlvs.get(tag::MESSAGE_PAYLOAD).unwrap_or(&[])
    } else {
        &r.short_message[..]
    };
    let udh = udh_json(r.esm_class, payload);
    let body = match &udh {
        Some(_) if !payload.is_empty() => {
            let l = 1 + usize::from(payload[0]);
            payload.get(l..).unwrap_or(&[])
        }
        _ => payload,
    };
    let sar = match (
        r.tlvs.get_u16(tag::SAR_MSG_REF_NUM),
        r.tlvs.get_u8(tag::SAR_TOTAL_SEGMENTS),
        r.tlvs.get_u8(tag::SAR_SEGMENT_SEQNUM),
    ) {
        (Some(rf), Some(t), Some(s)) => json!({ "ref": rf, "total": t, "seq": s }),
        _ => Value::Null,
    };
    json!({
        "command": r.command,
        "sequence_number": r.sequence_number,
        "message_id": r.message_id.as_str_lossy(),
        "bind_id": r.bind_id,
        "system_id": &*r.system_id,
        "source": r.source.as_str_lossy(),
        "destination": r.destination.as_str_lossy(),
        "esm_class": r.esm_class,
        "data_coding": r.data_coding,
        "registered_delivery": r.registered_delivery,
        "short_message_hex": hex(&r.short_message),
        "payload_hex": hex(payload),
        "udh": udh,
        "sar": sar,
        "text": text_of(r.data_coding, body),
        "tlv_tags": r.tlvs.iter().map(|t| t.tag).collect::<Vec<_>>(),
        "received_at_ms": r.received_at_ms,
    })
}

/// Copies an address into the wider record field (an `Addr21` always fits an `Addr65`).
pub(crate) fn widen(a: &Addr21) -> Addr65 {
    Addr65::new(a.as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udh_concat_8_and_16_bit() {
        let sm = [5, 0x00, 3, 0x2a, 2, 1, b'h', b'i'];
        let v = udh_json(0x40, &sm).unwrap();
        assert_eq!(v["concat"]["ref"], 0x2a);
        assert_eq!(v["concat"]["total"], 2);
        assert_eq!(v["concat"]["seq"], 1);
        let sm = [6, 0x08, 4, 0x01, 0x02, 3, 3, 0, b'x'];
        let v = udh_json(0x40, &sm).unwrap();
        assert_eq!(v["concat"]["ref"], 0x0102);
        assert_eq!(v["concat"]["ref_bits"], 16);
        assert!(udh_json(0x00, &sm).is_none());
        // Truncated UDH is reported, not a panic.
        assert!(udh_json(0x40, &[9, 0]).unwrap()["error"].is_string());
    }

    #[test]
    fn disconnect_budget_counts_down_once() {
        let a = SimArgs {
            disconnect_after_submits: Some(2),
            ..SimArgs::default()
        };
        let b = a.initial_behaviour().unwrap();
        let s = Shared::new(a, b, 1);
        assert!(matches!(s.take_disconnect_budget(), Budget::Off));
        assert!(matches!(s.take_disconnect_budget(), Budget::Last));
        assert!(matches!(s.take_disconnect_budget(), Budget::Exhausted));
        s.finish_disconnect_countdown(0);
        assert!(matches!(s.take_disconnect_budget(), Budget::Off));
    }
}
