//! Delivery receipts: building the deliver_sm, and the per-thread scheduler that holds them
//! until they are due and then hands each to a receiving bind of the submitter's system_id.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::config::{Behaviour, DlrFormat, DlrRoute};
use super::shared::{ConnHandle, INBOX_CAP, ReceiptJob, Shared};
use super::util::{ID_BUF_LEN, Signal, format_id, lock, receipt_date};
use crate::smpp::pdu::{Body, Pdu, SubmitSm, Tlvs, tag};

/// esm_class of a delivery receipt (SMSC delivery receipt, bits 2..5 = 0001).
pub const ESM_CLASS_RECEIPT: u8 = 0x04;

/// How long a receipt waits before the next routing attempt when no receiving bind exists.
const NO_RECEIVER_RETRY: Duration = Duration::from_millis(200);
/// Longest sleep of an idle scheduler (it is also woken on new, earlier work).
const IDLE_TICK: Duration = Duration::from_millis(500);

/// The deliver_sm carrying `job` as a receipt, in the representation `beh` asks for.
pub(crate) fn build_deliver_sm(job: &ReceiptJob, beh: &Behaviour, seq: u32) -> Pdu {
    let mut idbuf = [0u8; ID_BUF_LEN];
    let id = format_id(job.id_num, beh.dlr_id_format, beh.id_width, &mut idbuf);
    let st = job.state;
    let mut sm = SubmitSm {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: job.destination,
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: job.source,
        esm_class: ESM_CLASS_RECEIPT,
        ..SubmitSm::default()
    };
    if matches!(beh.dlr_format, DlrFormat::Text | DlrFormat::Both) {
        let done = super::util::unix_now_secs();
        let mut t = Vec::with_capacity(128);
        t.extend_from_slice(b"id:");
        t.extend_from_slice(id);
        t.extend_from_slice(b" sub:001 dlvrd:");
        t.extend_from_slice(if st.is_failure() { b"000" } else { b"001" });
        t.extend_from_slice(b" submit date:");
        t.extend_from_slice(&receipt_date(job.submit_secs));
        t.extend_from_slice(b" done date:");
        t.extend_from_slice(&receipt_date(done));
        t.extend_from_slice(b" stat:");
        t.extend_from_slice(st.stat().as_bytes());
        t.extend_from_slice(b" err:");
        let e = st.error_code() % 1000;
        t.extend_from_slice(&[
            b'0' + (e / 100) as u8,
            b'0' + (e / 10 % 10) as u8,
            b'0' + (e % 10) as u8,
        ]);
        t.extend_from_slice(b" text:");
        t.extend_from_slice(&job.text[..usize::from(job.text_len)]);
        // 254 is the short_message limit; our text is at most ~140 octets.
        t.truncate(254);
        sm.short_message = t;
    }
    if matches!(beh.dlr_format, DlrFormat::Tlv | DlrFormat::Both) {
        let mut tl = Tlvs::new();
        // An id of at most 32 octets + NUL always fits a TLV.
        let _ = tl.push_cstr(tag::RECEIPTED_MESSAGE_ID, id);
        tl.push_u8(tag::MESSAGE_STATE, st.message_state());
        if st.is_failure() {
            // network_error_code: type 3 (GSM), then the 2-octet code.
            let c = st.error_code().to_be_bytes();
            let _ = tl.push(tag::NETWORK_ERROR_CODE, &[3, c[0], c[1]]);
        }
        sm.tlvs = tl;
    }
    Pdu {
        command_status: 0,
        sequence_number: seq,
        body: Body::DeliverSm(sm),
    }
}

struct Scheduled {
    due: Instant,
    order: u64,
    job: ReceiptJob,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == CmpOrdering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    /// Reversed so `BinaryHeap` (a max-heap) pops the earliest due first.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (o.due, o.order).cmp(&(self.due, self.order))
    }
}

/// One event loop's world: the shared state plus thread-local receipt queue, id counter and
/// random generator. Lives in an `Rc`; nothing here is locked.
pub(crate) struct CoreCtx {
    pub shared: Arc<Shared>,
    pub core: usize,
    sched: RefCell<BinaryHeap<Scheduled>>,
    sched_order: Cell<u64>,
    sched_wake: Signal,
    pub rng: RefCell<fastrand::Rng>,
    id_counter: Cell<u64>,
}

impl CoreCtx {
    pub fn new(shared: Arc<Shared>, core: usize) -> Self {
        let seed = match shared.args.seed {
            0 => fastrand::u64(..),
            s => s.wrapping_add(core as u64),
        };
        CoreCtx {
            shared,
            core,
            sched: RefCell::new(BinaryHeap::new()),
            sched_order: Cell::new(0),
            sched_wake: Signal::default(),
            rng: RefCell::new(fastrand::Rng::with_seed(seed)),
            id_counter: Cell::new(0),
        }
    }

    /// Unique over all threads: thread `core` of `cores` hands out start + k*cores + core.
    #[inline]
    pub fn next_id(&self) -> u64 {
        let k = self.id_counter.get();
        self.id_counter.set(k + 1);
        let s = &self.shared;
        s.args
            .id_start
            .wrapping_add(k.wrapping_mul(s.cores as u64))
            .wrapping_add(self.core as u64)
    }

    /// Queues a new receipt; false (and counted as dropped) when `dlr_max_pending` is reached.
    pub fn schedule(&self, job: ReceiptJob) -> bool {
        let s = &self.shared;
        if s.dlr_pending.fetch_add(1, Ordering::AcqRel) >= s.args.dlr_max_pending {
            s.dlr_pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.push(job);
        true
    }

    fn push(&self, job: ReceiptJob) {
        let order = self.sched_order.get();
        self.sched_order.set(order + 1);
        let mut h = self.sched.borrow_mut();
        let earlier = h.peek().is_none_or(|top| job.due < top.due);
        h.push(Scheduled {
            due: job.due,
            order,
            job,
        });
        drop(h);
        if earlier {
            self.sched_wake.notify();
        }
    }

    /// Puts receipts back for routing (their session closed); they stay counted as pending.
    pub fn requeue(&self, jobs: impl IntoIterator<Item = ReceiptJob>, due: Instant) {
        for mut j in jobs {
            j.due = due;
            self.push(j);
        }
    }

    /// Forgets a receipt for good (acked, failed or dropped).
    pub fn release(&self) {
        self.shared.dlr_pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Picks the session for a receipt according to the routing mode.
fn pick_target<'a>(
    conns: &'a [Arc<ConnHandle>],
    job: &ReceiptJob,
    route: DlrRoute,
    cursor: usize,
) -> Option<&'a Arc<ConnHandle>> {
    let ok = |c: &&Arc<ConnHandle>| {
        !c.is_killed()
            && c.bind
                .get()
                .is_some_and(|b| b.kind.can_receive() && b.system_id == job.system_id)
    };
    let nth = |filter: &dyn Fn(&&Arc<ConnHandle>) -> bool| {
        let n = conns.iter().filter(|c| filter(c)).count();
        if n == 0 {
            None
        } else {
            conns.iter().filter(|c| filter(c)).nth(cursor % n)
        }
    };
    match route {
        DlrRoute::Same => conns
            .iter()
            .find(|c| c.id == job.submitter && ok(c))
            .or_else(|| nth(&ok)),
        DlrRoute::Other => nth(&|c| ok(c) && c.id != job.submitter).or_else(|| nth(&ok)),
        DlrRoute::Any => nth(&ok),
    }
}

/// The per-thread task that moves due receipts into session inboxes.
pub(crate) async fn run_scheduler(ctx: Rc<CoreCtx>) {
    let mut due: Vec<ReceiptJob> = Vec::new();
    let mut wake: Vec<Arc<ConnHandle>> = Vec::new();
    loop {
        if ctx.shared.is_shutdown() {
            return;
        }
        let now = Instant::now();
        {
            let mut h = ctx.sched.borrow_mut();
            while h.peek().is_some_and(|t| t.due <= now) {
                if let Some(s) = h.pop() {
                    due.push(s.job);
                }
            }
        }
        if !due.is_empty() {
            let route = ctx.shared.behaviour().dlr_route;
            let mut retry = Vec::new();
            {
                let conns = lock(&ctx.shared.conns);
                for job in due.drain(..) {
                    let cursor = ctx.shared.route_cursor.fetch_add(1, Ordering::Relaxed);
                    match pick_target(&conns, &job, route, cursor) {
                        Some(c) => {
                            let mut inbox = lock(&c.inbox);
                            if inbox.len() < INBOX_CAP {
                                inbox.push_back(job);
                                if !wake.iter().any(|w| w.id == c.id) {
                                    wake.push(c.clone());
                                }
                            } else {
                                retry.push(job);
                            }
                        }
                        None => retry.push(job),
                    }
                }
            }
            for c in wake.drain(..) {
                c.writer_wake.notify();
            }
            ctx.requeue(retry, now + NO_RECEIVER_RETRY);
        }
        let next = ctx
            .sched
            .borrow()
            .peek()
            .map_or(now + IDLE_TICK, |t| t.due.min(now + IDLE_TICK));
        monoio::select! {
            _ = monoio::time::sleep_until(monoio::time::Instant::from_std(next)) => {}
            _ = ctx.sched_wake.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::{DlrState, SimArgs};
    use crate::smpp::pdu::Addr21;

    fn job(state: DlrState) -> ReceiptJob {
        ReceiptJob {
            due: Instant::now(),
            id_num: 6699,
            system_id: Arc::from("esme"),
            submitter: 1,
            source: Addr21::new(b"12345").unwrap(),
            destination: Addr21::new(b"4790000000").unwrap(),
            submit_secs: 1_709_251_199,
            state,
            text: *b"hello world.........",
            text_len: 11,
            sends: 0,
        }
    }

    #[test]
    fn receipt_text_and_tlvs() {
        let mut b = SimArgs::default().initial_behaviour().unwrap();
        b.id_format = crate::sim::config::IdFormat::Hex;
        b.dlr_id_format = crate::sim::config::IdFormat::Dec;
        let p = build_deliver_sm(&job(DlrState::Delivered), &b, 7);
        let Body::DeliverSm(sm) = &p.body else {
            panic!("not a deliver_sm")
        };
        assert_eq!(p.sequence_number, 7);
        assert_eq!(sm.esm_class, ESM_CLASS_RECEIPT);
        assert_eq!(sm.source_addr.as_bytes(), b"4790000000");
        assert_eq!(sm.destination_addr.as_bytes(), b"12345");
        let text = String::from_utf8(sm.short_message.clone()).unwrap();
        assert!(
            text.starts_with("id:6699 sub:001 dlvrd:001 submit date:2402292359 done date:"),
            "{text}"
        );
        assert!(
            text.ends_with(" stat:DELIVRD err:000 text:hello world"),
            "{text}"
        );
        assert_eq!(
            sm.tlvs.get_cstr(tag::RECEIPTED_MESSAGE_ID),
            Some(&b"6699"[..])
        );
        assert_eq!(sm.tlvs.get_u8(tag::MESSAGE_STATE), Some(2));
        assert_eq!(sm.tlvs.get(tag::NETWORK_ERROR_CODE), None);

        b.dlr_format = DlrFormat::Tlv;
        let p = build_deliver_sm(&job(DlrState::Undeliverable), &b, 8);
        let Body::DeliverSm(sm) = &p.body else {
            panic!("not a deliver_sm")
        };
        assert!(sm.short_message.is_empty());
        assert_eq!(sm.tlvs.get_u8(tag::MESSAGE_STATE), Some(5));
        assert_eq!(sm.tlvs.get(tag::NETWORK_ERROR_CODE), Some(&[3u8, 0, 1][..]));

        b.dlr_format = DlrFormat::Text;
        let p = build_deliver_sm(&job(DlrState::Expired), &b, 9);
        let Body::DeliverSm(sm) = &p.body else {
            panic!("not a deliver_sm")
        };
        assert!(sm.tlvs.is_empty());
        let text = String::from_utf8(sm.short_message.clone()).unwrap();
        assert!(
            text.contains("dlvrd:000") && text.contains("stat:EXPIRED err:003"),
            "{text}"
        );
    }
}
