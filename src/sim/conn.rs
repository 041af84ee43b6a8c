//! One SMPP session on the SMSC side. Two tasks share a connection: the reader decodes every
//! complete PDU of a read and appends all answers to one output buffer; the writer flushes
//! that buffer with one write, sends receipts from the inbox and retransmits unanswered ones.
//!
//! Hot path (submit_sm → submit_sm_resp, no faults): no allocation beyond the codec's (the
//! decoded short_message/TLV buffers, which the message ring takes over), no logging, one
//! atomic load for behaviour changes per read, counters flushed once per read.

use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use super::config::{Behaviour, MalformedKind};
use super::receipt::{CoreCtx, build_deliver_sm};
use super::shared::{
    BatchStats, BindInfo, BindKind, Budget, ConnHandle, MessageRecord, ReceiptJob, widen,
};
use super::util::{ID_BUF_LEN, format_id, lock, unix_now_ms, unix_now_secs};
use crate::smpp::pdu::status::*;
use crate::smpp::pdu::{
    self, Addr21, Bind, BindResp, Body, DataSmResp, MessageId, Pdu, QuerySmResp, SubmitMultiResp,
    SubmitSmResp, SystemId, Tlvs, command_id as cmd, tag,
};

/// Read buffer: large so one read picks up many pipelined PDUs.
const READ_BUF_LEN: usize = 256 * 1024;
/// The reader stops reading while this much output waits for the writer (slow peer).
const OUT_HIGH_WATER: usize = 4 * 1024 * 1024;
/// The reader stops reading while this many delayed (latency-injected) answers wait.
const DELAYED_MAX: usize = 200_000;
/// How often a paused reader looks whether the pause ended.
const PAUSE_POLL: Duration = Duration::from_millis(10);
/// The writer's longest sleep without work.
const WRITER_IDLE: Duration = Duration::from_secs(1);

/// Session state the reader and writer share (same thread).
struct ConnLocal {
    out: Vec<u8>,
    delayed: BinaryHeap<Delayed>,
    delayed_order: u64,
    /// Sent receipts waiting for deliver_sm_resp, by sequence_number.
    in_flight: HashMap<u32, InFlight>,
    next_seq: u32,
    bound: Option<BindKind>,
    system_id: Option<Arc<str>>,
    /// The reader is done: flush what is queued, then close.
    close_after_flush: bool,
    /// Close without flushing (injected abrupt disconnect).
    close_now: bool,
    /// The peer closed its side: answers still delayed by injected latency are dropped
    /// instead of holding the session open until they are due.
    peer_gone: bool,
    /// Error-diffusion accumulators: exact throttle / receipt ratios, deterministic for tests.
    throttle_acc: f64,
    dlr_acc: f64,
}

struct InFlight {
    job: ReceiptJob,
    sent_at: Instant,
}

struct Delayed {
    due: Instant,
    order: u64,
    bytes: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.order) == (o.due, o.order)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.due, o.order).cmp(&(self.due, self.order))
    }
}

impl ConnLocal {
    fn new() -> Self {
        ConnLocal {
            out: Vec::with_capacity(64 * 1024),
            delayed: BinaryHeap::new(),
            delayed_order: 0,
            in_flight: HashMap::new(),
            next_seq: 1,
            bound: None,
            system_id: None,
            close_after_flush: false,
            close_now: false,
            peer_gone: false,
            throttle_acc: 0.0,
            dlr_acc: 0.0,
        }
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = if s >= 0x7FFF_FFFF { 1 } else { s + 1 };
        s
    }
}

/// Writes a body-less PDU (generic_nack, or an error answer: v3.4 lets error responses omit
/// the body).
fn put_header(out: &mut Vec<u8>, command_id: u32, status: u32, seq: u32) {
    out.extend_from_slice(&16u32.to_be_bytes());
    out.extend_from_slice(&command_id.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// Where the answers of one read batch go: straight into the output buffer, or, with
/// injected latency, into the delay queue.
struct Emitter<'a> {
    l: &'a mut ConnLocal,
    beh: &'a Behaviour,
    ctx: &'a CoreCtx,
    now: Instant,
    /// Wall-clock time of this read, for the message records (one clock read per batch).
    now_ms: u64,
    scratch: Vec<u8>,
}

impl Emitter<'_> {
    fn delayed(&self) -> bool {
        self.beh.latency_ms > 0 || self.beh.latency_jitter_ms > 0
    }

    fn emit(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if !self.delayed() {
            f(&mut self.l.out);
            return;
        }
        let mut bytes = std::mem::take(&mut self.scratch);
        f(&mut bytes);
        let jitter = match self.beh.latency_jitter_ms {
            0 => 0,
            j => self.ctx.rng.borrow_mut().u64(0..=j),
        };
        let due = self.now + Duration::from_millis(self.beh.latency_ms + jitter);
        let order = self.l.delayed_order;
        self.l.delayed_order += 1;
        self.l.delayed.push(Delayed { due, order, bytes });
    }

    fn pdu(&mut self, p: &Pdu) {
        self.emit(|out| {
            // Our own answers are valid by construction; a failure would be a bug in the
            // simulator, and dropping one answer is the least harmful outcome.
            let _ = pdu::encode(p, out);
        });
    }

    fn header(&mut self, command_id: u32, status: u32, seq: u32) {
        self.emit(|out| put_header(out, command_id, status, seq));
    }
}

/// What the reader does after a PDU.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stop reading; the writer flushes (or not, if `close_now`) and closes.
    Stop,
}

pub(crate) async fn serve(ctx: Rc<CoreCtx>, stream: TcpStream) {
    let shared = ctx.shared.clone();
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let handle = Arc::new(ConnHandle::new(id, peer));
    shared.register(handle.clone());
    let local = Rc::new(RefCell::new(ConnLocal::new()));
    let (rd, wr) = stream.into_split();
    let writer = monoio::spawn(write_loop(
        ctx.clone(),
        handle.clone(),
        local.clone(),
        wr,
        fd,
    ));
    read_loop(&ctx, &handle, &local, rd).await;
    local.borrow_mut().close_after_flush = true;
    handle.writer_wake.notify();
    writer.await;
    shared.deregister(id);
    // Receipts this session did not get acknowledged go back for routing (another bind of the
    // same system_id, or this one after a re-bind), keeping their retransmission count.
    let mut back: Vec<ReceiptJob> = lock(&handle.inbox).drain(..).collect();
    back.extend(local.borrow_mut().in_flight.drain().map(|(_, f)| f.job));
    ctx.requeue(back, Instant::now());
    shared.open_conns.fetch_sub(1, Ordering::AcqRel);
}

/// Shuts the socket down both ways: the peer sees the close at once and our own pending
/// read returns, even while the other half still holds the stream.
fn shutdown_fd(fd: RawFd) {
    // SAFETY: `fd` belongs to a TcpStream that the caller (the writer, holding a half of it)
    // keeps open for the duration of this call; ManuallyDrop keeps us from closing it.
    let s = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    let _ = s.shutdown(std::net::Shutdown::Both);
}

async fn read_loop(
    ctx: &Rc<CoreCtx>,
    handle: &Arc<ConnHandle>,
    local: &Rc<RefCell<ConnLocal>>,
    mut rd: OwnedReadHalf<TcpStream>,
) {
    let shared = &ctx.shared;
    let max_pdu = shared.args.max_pdu_len;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF_LEN.max(max_pdu + 16));
    // Octets of an undecodable frame still to drop (it was longer than what had arrived).
    let mut skip: usize = 0;
    let mut seen_gen = shared.generation.load(Ordering::Acquire);
    let mut beh = shared.behaviour();
    let mut batch = BatchStats::default();
    let record = shared.args.messages_capacity > 0;
    loop {
        if handle.is_killed() || shared.is_shutdown() {
            return;
        }
        let g = shared.generation.load(Ordering::Acquire);
        if g != seen_gen {
            seen_gen = g;
            beh = shared.behaviour();
        }
        if beh.paused {
            monoio::time::sleep(PAUSE_POLL).await;
            continue;
        }
        let congested = {
            let l = local.borrow();
            l.out.len() >= OUT_HIGH_WATER || l.delayed.len() >= DELAYED_MAX
        };
        if congested {
            handle.reader_wake.wait().await;
            continue;
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = rd.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => {
                local.borrow_mut().peer_gone = true;
                return;
            }
            Ok(_) => {}
        }
        // The behaviour may have changed while the read was pending (e.g. a test sets a fault
        // and then sends): look again so these PDUs see it, and hold them while paused.
        loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen_gen {
                seen_gen = g;
                beh = shared.behaviour();
            }
            if !beh.paused || handle.is_killed() || shared.is_shutdown() {
                break;
            }
            monoio::time::sleep(PAUSE_POLL).await;
        }
        if skip > 0 {
            let n = skip.min(buf.len());
            buf.drain(..n);
            skip -= n;
        }
        let mut start = 0;
        let flow = {
            let mut l = local.borrow_mut();
            let mut em = Emitter {
                l: &mut l,
                beh: &beh,
                ctx,
                now: Instant::now(),
                now_ms: if record { unix_now_ms() } else { 0 },
                scratch: Vec::new(),
            };
            let mut flow = Flow::Continue;
            while flow == Flow::Continue {
                match pdu::decode(&buf[start..], max_pdu) {
                    Ok(None) => break,
                    Ok(Some((p, used))) => {
                        start += used;
                        flow = handle_pdu(&mut em, handle, p, &mut batch, record);
                    }
                    Err(e) => {
                        batch.decode_errors += 1;
                        if let Some(cid) = e.answer_command_id() {
                            em.header(cid, e.command_status(), e.sequence_number().unwrap_or(0));
                        }
                        match e.frame_len() {
                            Some(n) => {
                                let avail = buf.len() - start;
                                if n <= avail {
                                    start += n;
                                } else {
                                    skip = n - avail;
                                    start = buf.len();
                                }
                            }
                            None => {
                                em.l.close_after_flush = true;
                                flow = Flow::Stop;
                            }
                        }
                    }
                }
            }
            flow
        };
        // Keep only the incomplete tail (usually a few octets) at the front.
        buf.drain(..start);
        shared.flush_batch(&mut batch);
        handle.writer_wake.notify();
        if flow == Flow::Stop {
            return;
        }
    }
}

fn handle_pdu(
    em: &mut Emitter<'_>,
    handle: &Arc<ConnHandle>,
    p: Pdu,
    batch: &mut BatchStats,
    record: bool,
) -> Flow {
    let seq = p.sequence_number;
    let id = p.body.command_id();
    let resp_id = id | 0x8000_0000;
    match p.body {
        Body::SubmitSm(sm) => {
            batch.submits += 1;
            if !em.l.bound.is_some_and(BindKind::can_submit) {
                em.header(resp_id, ESME_RINVBNDSTS, seq);
                batch.count_status(ESME_RINVBNDSTS);
                return Flow::Continue;
            }
            submit(em, handle, seq, Submitted::Sm(sm), batch, record)
        }
        Body::DataSm(d) => {
            batch.data_sm += 1;
            if !em.l.bound.is_some_and(BindKind::can_submit) {
                em.header(resp_id, ESME_RINVBNDSTS, seq);
                batch.count_status(ESME_RINVBNDSTS);
                return Flow::Continue;
            }
            submit(em, handle, seq, Submitted::Data(d), batch, record)
        }
        Body::EnquireLink => {
            batch.enquire_links += 1;
            em.pdu(&Pdu {
                command_status: ESME_ROK,
                sequence_number: seq,
                body: Body::EnquireLinkResp,
            });
            Flow::Continue
        }
        Body::DeliverSmResp(_) | Body::GenericNack => {
            receipt_answer(em, seq, p.command_status);
            Flow::Continue
        }
        Body::BindTransmitter(b) => bind(em, handle, seq, b, BindKind::Transmitter),
        Body::BindReceiver(b) => bind(em, handle, seq, b, BindKind::Receiver),
        Body::BindTransceiver(b) => bind(em, handle, seq, b, BindKind::Transceiver),
        Body::Unbind => {
            em.ctx
                .shared
                .stats
                .unbinds_received
                .fetch_add(1, Ordering::Relaxed);
            em.pdu(&Pdu {
                command_status: ESME_ROK,
                sequence_number: seq,
                body: Body::UnbindResp,
            });
            em.l.close_after_flush = true;
            Flow::Stop
        }
        Body::EnquireLinkResp | Body::UnbindResp => Flow::Continue,
        Body::QuerySm(q) => {
            count(em, |s| &s.query_sm_received);
            if em.l.bound.is_none() {
                em.header(resp_id, ESME_RINVBNDSTS, seq);
                return Flow::Continue;
            }
            // No per-message state is kept (it would cost memory per message at full
            // rate): every known-looking id is reported as still en route.
            em.pdu(&Pdu {
                command_status: ESME_ROK,
                sequence_number: seq,
                body: Body::QuerySmResp(QuerySmResp {
                    message_id: q.message_id,
                    final_date: Default::default(),
                    message_state: 1,
                    error_code: 0,
                }),
            });
            Flow::Continue
        }
        Body::SubmitMulti(_) => {
            count(em, |s| &s.submit_multi_received);
            if !em.l.bound.is_some_and(BindKind::can_submit) {
                em.header(resp_id, ESME_RINVBNDSTS, seq);
                return Flow::Continue;
            }
            let message_id = new_message_id(em);
            em.pdu(&Pdu {
                command_status: ESME_ROK,
                sequence_number: seq,
                body: Body::SubmitMultiResp(SubmitMultiResp {
                    message_id,
                    unsuccess_smes: Vec::new(),
                }),
            });
            Flow::Continue
        }
        Body::CancelSm(_) | Body::ReplaceSm(_) => {
            count(em, |s| &s.other_requests_received);
            let status = if em.l.bound.is_some() {
                ESME_ROK
            } else {
                ESME_RINVBNDSTS
            };
            em.header(resp_id, status, seq);
            Flow::Continue
        }
        // Requests an ESME must not send to an SMSC (deliver_sm, outbind, alert_notification)
        // and responses to requests we never sent.
        other => {
            count(em, |s| &s.other_requests_received);
            if !cmd::is_response(other.command_id()) {
                em.header(cmd::GENERIC_NACK, ESME_RINVCMDID, seq);
            }
            Flow::Continue
        }
    }
}

fn count(em: &Emitter<'_>, f: impl FnOnce(&super::shared::Stats) -> &std::sync::atomic::AtomicU64) {
    f(&em.ctx.shared.stats).fetch_add(1, Ordering::Relaxed);
}

fn bind(em: &mut Emitter<'_>, handle: &Arc<ConnHandle>, seq: u32, b: Bind, kind: BindKind) -> Flow {
    let shared = &em.ctx.shared;
    let resp_id = match kind {
        BindKind::Transmitter => cmd::BIND_TRANSMITTER_RESP,
        BindKind::Receiver => cmd::BIND_RECEIVER_RESP,
        BindKind::Transceiver => cmd::BIND_TRANSCEIVER_RESP,
    };
    let status = if em.l.bound.is_some() {
        ESME_RALYBND
    } else if em.beh.refuse_binds {
        em.beh.refuse_bind_status
    } else if shared
        .args
        .system_id
        .as_deref()
        .is_some_and(|want| want.as_bytes() != b.system_id.as_bytes())
    {
        ESME_RINVSYSID
    } else if shared
        .args
        .password
        .as_deref()
        .is_some_and(|want| want.as_bytes() != b.password.as_bytes())
    {
        ESME_RINVPASWD
    } else {
        ESME_ROK
    };
    if status != ESME_ROK {
        shared.stats.binds_refused.fetch_add(1, Ordering::Relaxed);
        em.header(resp_id, status, seq);
        if status == ESME_RALYBND {
            return Flow::Continue;
        }
        // Like most SMSCs, close after a refused bind.
        em.l.close_after_flush = true;
        return Flow::Stop;
    }
    let system_id: Arc<str> = Arc::from(b.system_id.as_str_lossy().as_ref());
    em.l.bound = Some(kind);
    em.l.system_id = Some(system_id.clone());
    let _ = handle.bind.set(BindInfo { system_id, kind });
    let s = &shared.stats;
    s.binds_ok.fetch_add(1, Ordering::Relaxed);
    match kind {
        BindKind::Transmitter => &s.binds_transmitter,
        BindKind::Receiver => &s.binds_receiver,
        BindKind::Transceiver => &s.binds_transceiver,
    }
    .fetch_add(1, Ordering::Relaxed);
    let mut tlvs = Tlvs::new();
    tlvs.push_u8(tag::SC_INTERFACE_VERSION, 0x34);
    let resp = BindResp {
        system_id: SystemId::new(shared.args.smsc_id.as_bytes()).unwrap_or_default(),
        tlvs,
    };
    let body = match kind {
        BindKind::Transmitter => Body::BindTransmitterResp(resp),
        BindKind::Receiver => Body::BindReceiverResp(resp),
        BindKind::Transceiver => Body::BindTransceiverResp(resp),
    };
    em.pdu(&Pdu {
        command_status: ESME_ROK,
        sequence_number: seq,
        body,
    });
    // Receipts that waited for a receiving bind of this system_id can now be routed here.
    if kind.can_receive() {
        handle.writer_wake.notify();
    }
    Flow::Continue
}

fn new_message_id(em: &mut Emitter<'_>) -> MessageId {
    let n = em.ctx.next_id();
    let mut buf = [0u8; ID_BUF_LEN];
    let s = format_id(n, em.beh.id_format, em.beh.id_width, &mut buf);
    MessageId::new(s).unwrap_or_default()
}

enum Submitted {
    Sm(pdu::SubmitSm),
    Data(pdu::DataSm),
}

fn submit(
    em: &mut Emitter<'_>,
    handle: &Arc<ConnHandle>,
    seq: u32,
    msg: Submitted,
    batch: &mut BatchStats,
    record: bool,
) -> Flow {
    let shared = em.ctx.shared.clone();
    let is_sm = matches!(msg, Submitted::Sm(_));
    let resp_id = if is_sm {
        cmd::SUBMIT_SM_RESP
    } else {
        cmd::DATA_SM_RESP
    };
    let mut flow = Flow::Continue;
    match shared.take_disconnect_budget() {
        Budget::Off => {}
        Budget::Last => flow = Flow::Stop,
        Budget::Exhausted => {
            // Another session answered the last submit and is closing everything.
            em.l.close_now = true;
            return Flow::Stop;
        }
    }
    if em.beh.throttle_percent > 0.0 {
        em.l.throttle_acc += em.beh.throttle_percent;
        if em.l.throttle_acc >= 100.0 {
            em.l.throttle_acc -= 100.0;
            let st = em.beh.throttle_status;
            em.header(resp_id, st, seq);
            batch.count_status(st);
            return finish_budget(em, handle, flow);
        }
    }
    let n = em.ctx.next_id();
    let mut idbuf = [0u8; ID_BUF_LEN];
    let id_bytes = format_id(n, em.beh.id_format, em.beh.id_width, &mut idbuf);
    let message_id = MessageId::new(id_bytes).unwrap_or_default();
    let malformed = shared.take_malformed();
    match malformed {
        None => {
            if is_sm {
                em.pdu(&Pdu {
                    command_status: ESME_ROK,
                    sequence_number: seq,
                    body: Body::SubmitSmResp(SubmitSmResp { message_id }),
                });
            } else {
                em.pdu(&Pdu {
                    command_status: ESME_ROK,
                    sequence_number: seq,
                    body: Body::DataSmResp(DataSmResp {
                        message_id,
                        tlvs: Tlvs::new(),
                    }),
                });
            }
        }
        Some(kind) => inject(em, kind, resp_id, seq, &message_id),
    }
    batch.count_status(ESME_ROK);

    let (rd, source, destination, sm_text, dc) = match &msg {
        Submitted::Sm(sm) => (
            sm.registered_delivery,
            sm.source_addr,
            sm.destination_addr,
            &sm.short_message[..],
            sm.data_coding,
        ),
        Submitted::Data(d) => (
            d.registered_delivery,
            Addr21::new(&d.source_addr.as_bytes()[..d.source_addr.len().min(Addr21::MAX)])
                .unwrap_or_default(),
            Addr21::new(
                &d.destination_addr.as_bytes()[..d.destination_addr.len().min(Addr21::MAX)],
            )
            .unwrap_or_default(),
            d.tlvs.get(tag::MESSAGE_PAYLOAD).unwrap_or(&[]),
            d.data_coding,
        ),
    };
    // registered_delivery bits 0..1: 1 = receipt on success or failure, 2 = on failure only.
    let want = rd & 0x03;
    if (want == 1 || want == 2) && em.beh.dlr_percent > 0.0 {
        em.l.dlr_acc += em.beh.dlr_percent;
        if em.l.dlr_acc >= 100.0 {
            em.l.dlr_acc -= 100.0;
            let total = em.beh.total_state_weight().max(1);
            let r = em.ctx.rng.borrow_mut().u64(0..total);
            let state = em.beh.pick_state(r);
            if want == 1 || state.is_failure() {
                let jitter = match em.beh.dlr_jitter_ms {
                    0 => 0,
                    j => em.ctx.rng.borrow_mut().u64(0..=j),
                };
                let mut text = [0u8; 20];
                let mut text_len = 0;
                // `text:` carries the start of the message when it is plain ASCII text.
                if matches!(dc, 0 | 1 | 3) {
                    for &c in sm_text.iter().take(20) {
                        if !(0x20..0x7f).contains(&c) {
                            break;
                        }
                        text[text_len] = c;
                        text_len += 1;
                    }
                }
                let job = ReceiptJob {
                    due: em.now + Duration::from_millis(em.beh.dlr_delay_ms + jitter),
                    id_num: n,
                    system_id: em.l.system_id.clone().unwrap_or_else(|| Arc::from("")),
                    submitter: handle.id,
                    source,
                    destination,
                    submit_secs: unix_now_secs(),
                    state,
                    text,
                    text_len: text_len as u8,
                    sends: 0,
                };
                if em.ctx.schedule(job) {
                    batch.receipts_scheduled += 1;
                } else {
                    batch.receipts_dropped += 1;
                }
            }
        }
    }
    if record {
        let system_id = em.l.system_id.clone().unwrap_or_else(|| Arc::from(""));
        let rec = match msg {
            Submitted::Sm(sm) => MessageRecord {
                command: "submit_sm",
                sequence_number: seq,
                message_id,
                bind_id: handle.id,
                system_id,
                source: widen(&sm.source_addr),
                destination: widen(&sm.destination_addr),
                esm_class: sm.esm_class,
                data_coding: sm.data_coding,
                registered_delivery: sm.registered_delivery,
                short_message: sm.short_message,
                tlvs: sm.tlvs,
                received_at_ms: em.now_ms,
            },
            Submitted::Data(d) => MessageRecord {
                command: "data_sm",
                sequence_number: seq,
                message_id,
                bind_id: handle.id,
                system_id,
                source: d.source_addr,
                destination: d.destination_addr,
                esm_class: d.esm_class,
                data_coding: d.data_coding,
                registered_delivery: d.registered_delivery,
                short_message: Vec::new(),
                tlvs: d.tlvs,
                received_at_ms: em.now_ms,
            },
        };
        batch.records.push(rec);
    }
    finish_budget(em, handle, flow)
}

/// After answering the last submit of a disconnect countdown: close everything else now and
/// this session once the answer is out.
fn finish_budget(em: &mut Emitter<'_>, handle: &Arc<ConnHandle>, flow: Flow) -> Flow {
    if flow == Flow::Stop {
        em.l.close_after_flush = true;
        em.ctx.shared.finish_disconnect_countdown(handle.id);
        em.ctx
            .shared
            .stats
            .sessions_disconnected_by_fault
            .fetch_add(1, Ordering::Relaxed);
    }
    flow
}

fn inject(em: &mut Emitter<'_>, kind: MalformedKind, resp_id: u32, seq: u32, id: &MessageId) {
    let ok = |out: &mut Vec<u8>, seq: u32, id: &MessageId| {
        let len = 16 + id.len() + 1;
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&resp_id.to_be_bytes());
        out.extend_from_slice(&ESME_ROK.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(id.as_bytes());
        out.push(0);
    };
    match kind {
        MalformedKind::CorruptResp => em.emit(|out| {
            // A message_id of 70 octets and no NUL: beyond the 65-octet field, so even a
            // decoder lenient about a missing final NUL must reject it.
            const LEN: usize = 70;
            out.extend_from_slice(&((16 + LEN) as u32).to_be_bytes());
            out.extend_from_slice(&resp_id.to_be_bytes());
            out.extend_from_slice(&ESME_ROK.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(id.as_bytes());
            out.resize(out.len() + LEN - id.len(), b'#');
        }),
        MalformedKind::BadLength => em.emit(|out| {
            out.extend_from_slice(&8u32.to_be_bytes());
            out.extend_from_slice(&resp_id.to_be_bytes());
            out.extend_from_slice(&ESME_ROK.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
        }),
        MalformedKind::UnknownCommand => {
            let own = em.l.next_seq();
            em.emit(|out| {
                put_header(out, 0x0000_00FF, ESME_ROK, own);
                ok(out, seq, id);
            })
        }
        MalformedKind::WrongSequence => {
            let mut wrong = seq.wrapping_add(0x2000_0000) & 0x7FFF_FFFF;
            if wrong == 0 {
                wrong = 1;
            }
            em.emit(|out| ok(out, wrong, id))
        }
    }
}

/// deliver_sm_resp (or generic_nack) for a receipt we sent.
fn receipt_answer(em: &mut Emitter<'_>, seq: u32, status: u32) {
    let stats = &em.ctx.shared.stats;
    let Some(f) = em.l.in_flight.remove(&seq) else {
        stats
            .deliver_sm_resp_unmatched
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    if status == ESME_ROK {
        stats.receipts_acked.fetch_add(1, Ordering::Relaxed);
        em.ctx.release();
    } else {
        // A refused receipt is tried again like an unanswered one (bounded by max retries).
        stats.receipts_nacked.fetch_add(1, Ordering::Relaxed);
        retry_or_fail(em.ctx, em.l, f.job, em.beh, em.now);
    }
}

fn retry_or_fail(ctx: &CoreCtx, l: &mut ConnLocal, job: ReceiptJob, beh: &Behaviour, now: Instant) {
    let stats = &ctx.shared.stats;
    if job.sends > ctx.shared.args.dlr_max_retries {
        stats.receipts_failed.fetch_add(1, Ordering::Relaxed);
        ctx.release();
        return;
    }
    stats.receipts_retransmitted.fetch_add(1, Ordering::Relaxed);
    send_receipt(ctx, l, job, beh, now);
}

/// Sends a receipt under a fresh sequence number (a retransmission is a new request).
fn send_receipt(
    ctx: &CoreCtx,
    l: &mut ConnLocal,
    mut job: ReceiptJob,
    beh: &Behaviour,
    now: Instant,
) {
    let seq = l.next_seq();
    job.sends += 1;
    let p = build_deliver_sm(&job, beh, seq);
    if pdu::encode(&p, &mut l.out).is_err() {
        ctx.shared
            .stats
            .receipts_failed
            .fetch_add(1, Ordering::Relaxed);
        ctx.release();
        return;
    }
    ctx.shared
        .stats
        .receipts_sent
        .fetch_add(1, Ordering::Relaxed);
    l.in_flight.insert(seq, InFlight { job, sent_at: now });
}

async fn write_loop(
    ctx: Rc<CoreCtx>,
    handle: Arc<ConnHandle>,
    local: Rc<RefCell<ConnLocal>>,
    mut wr: OwnedWriteHalf<TcpStream>,
    fd: RawFd,
) {
    let shared = ctx.shared.clone();
    let timeout = Duration::from_millis(shared.args.dlr_resp_timeout_ms.max(1));
    let window = shared.args.dlr_window.max(1);
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut seen_gen = u64::MAX;
    let mut beh = shared.behaviour();
    let mut expired: Vec<u32> = Vec::new();
    loop {
        if handle.is_killed() || local.borrow().close_now {
            break;
        }
        let g = shared.generation.load(Ordering::Acquire);
        if g != seen_gen {
            seen_gen = g;
            beh = shared.behaviour();
        }
        let now = Instant::now();
        let mut deadline = now + WRITER_IDLE;
        let closing;
        {
            let mut guard = local.borrow_mut();
            let l = &mut *guard;
            while l.delayed.peek().is_some_and(|d| d.due <= now) {
                if let Some(d) = l.delayed.pop() {
                    l.out.extend_from_slice(&d.bytes);
                }
            }
            if let Some(d) = l.delayed.peek() {
                deadline = deadline.min(d.due);
            }
            // Retransmit receipts whose deliver_sm_resp is overdue.
            expired.clear();
            for (seq, f) in &l.in_flight {
                let due = f.sent_at + timeout;
                if due <= now {
                    expired.push(*seq);
                } else {
                    deadline = deadline.min(due);
                }
            }
            for seq in expired.drain(..) {
                if let Some(f) = l.in_flight.remove(&seq) {
                    retry_or_fail(&ctx, l, f.job, &beh, now);
                    deadline = deadline.min(now + timeout);
                }
            }
            // New receipts, within the window of unacknowledged ones.
            if l.bound.is_some_and(BindKind::can_receive) && !l.close_after_flush {
                let mut inbox = lock(&handle.inbox);
                while l.in_flight.len() < window {
                    let Some(job) = inbox.pop_front() else { break };
                    send_receipt(&ctx, l, job, &beh, now);
                    deadline = deadline.min(now + timeout);
                }
            }
            std::mem::swap(&mut l.out, &mut spare);
            closing = l.close_after_flush && (l.delayed.is_empty() || l.peer_gone);
        }
        if !spare.is_empty() {
            handle.reader_wake.notify();
            let (res, b) = wr.write_all(spare).await;
            spare = b;
            spare.clear();
            if res.is_err() {
                break;
            }
            // More may have arrived while writing: look again before sleeping.
            continue;
        }
        if closing {
            break;
        }
        monoio::select! {
            _ = handle.writer_wake.wait() => {}
            _ = monoio::time::sleep_until(monoio::time::Instant::from_std(deadline)) => {}
        }
    }
    shutdown_fd(fd);
    handle.reader_wake.notify();
    let _ = wr; // the write half (and with the read half, the socket) closes when dropped
}
