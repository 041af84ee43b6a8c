//! Hand-off from the gateway to the writer: one CDR per message, at the single store operation
//! that made it final (receipt, submit outcome, crash-recovery marking) or expired it (TTL
//! sweep). Callers are shard event loops and the side runtime, so this never blocks.
//!
//! A CDR the writer refuses under backpressure (its queue full, or its spool full while S3 is
//! down) is not dropped: it goes to the [`Overflow`], a bounded in-memory queue that a retry
//! thread offers to the writer again every [`OVERFLOW_RETRY`] once it takes records again;
//! shutdown drains it before the writer's final flush. Only a full overflow (the writer
//! refusing for a long time under heavy traffic) or a stopped writer loses a CDR: counted in
//! [`Overflow::lost`] and reported as `records_lost` at shutdown, logged (rate-limited).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, warn};

use super::{CdrRecord, CdrStats, CdrWriter, ClosedBy, RecordError};
use crate::state::MessageRecord;

/// Most refused CDRs held for retry (about 0.5 KiB each: ~32 MiB at the bound).
pub const OVERFLOW_CAPACITY: usize = 65_536;
/// How often the retry thread offers held CDRs again.
pub const OVERFLOW_RETRY: Duration = Duration::from_millis(100);
/// How long the retry thread keeps offering to a queue that stays full before it waits for
/// the next period.
const OVERFLOW_PATIENCE: Duration = Duration::from_millis(10);
/// How long shutdown keeps offering held CDRs to a writer that still refuses them.
const OVERFLOW_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Refused CDRs waiting to be offered again (see the module docs). Shared by the callers of
/// `emit` (push) and the retry thread (pop); the lock is held for a push or a pop only.
pub(super) struct Overflow {
    queue: Mutex<VecDeque<CdrRecord>>,
    /// CDRs given up: overflow full, or still held when the writer stopped.
    lost: AtomicU64,
    stop: AtomicBool,
}

impl Overflow {
    /// The overflow of one writer and its retry thread (`smsgw-cdr-retry`), which offers
    /// held CDRs through `tx` like `CdrWriter::record` does.
    pub(super) fn start(
        tx: mpsc::Sender<CdrRecord>,
        backpressure: Arc<AtomicBool>,
        stats: Arc<CdrStats>,
    ) -> std::io::Result<(Arc<Overflow>, JoinHandle<()>)> {
        let o = Arc::new(Overflow {
            queue: Mutex::new(VecDeque::new()),
            lost: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let me = Arc::clone(&o);
        let t = std::thread::Builder::new()
            .name("smsgw-cdr-retry".into())
            .spawn(move || {
                while !me.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(OVERFLOW_RETRY);
                    if me
                        .offer_all(&tx, &backpressure, &stats, OVERFLOW_PATIENCE)
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok((o, t))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<CdrRecord>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a refused CDR; false (and counted lost) when the overflow is full.
    fn push(&self, cdr: CdrRecord) -> bool {
        let mut q = self.lock();
        if q.len() >= OVERFLOW_CAPACITY {
            drop(q);
            self.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.push_back(cdr);
        true
    }

    /// Offers held CDRs, oldest first, until none is left, the writer applies backpressure,
    /// or its queue stayed full for `patience` since the last CDR it took (the rest is kept).
    /// `Err` when the writer has stopped (what is held can never be written).
    fn offer_all(
        &self,
        tx: &mpsc::Sender<CdrRecord>,
        backpressure: &AtomicBool,
        stats: &CdrStats,
        patience: Duration,
    ) -> Result<(), ()> {
        let mut progress = Instant::now();
        loop {
            if backpressure.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(cdr) = self.lock().pop_front() else {
                return Ok(());
            };
            match tx.try_send(cdr) {
                Ok(()) => {
                    stats.records_accepted.fetch_add(1, Ordering::Relaxed);
                    progress = Instant::now();
                }
                Err(mpsc::error::TrySendError::Full(c)) => {
                    self.lock().push_front(c);
                    if progress.elapsed() >= patience {
                        return Ok(());
                    }
                    // The writer is taking records: a short pause, not a whole retry period.
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(mpsc::error::TrySendError::Closed(c)) => {
                    self.lock().push_front(c);
                    return Err(());
                }
            }
        }
    }

    /// CDRs held now.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// CDRs given up so far.
    pub(super) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// For shutdown, before the writer's final flush: stops the retry thread and offers what
    /// is held for up to [`OVERFLOW_DRAIN_WAIT`]. Returns how many CDRs are still held (lost
    /// with the writer; they are added to [`Overflow::lost`] too).
    pub(super) fn drain_for_shutdown(
        &self,
        retry_thread: Option<JoinHandle<()>>,
        tx: &mpsc::Sender<CdrRecord>,
        backpressure: &AtomicBool,
        stats: &CdrStats,
    ) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = retry_thread {
            t.thread().unpark();
            let _ = t.join();
        }
        let until = Instant::now() + OVERFLOW_DRAIN_WAIT;
        while self.len() > 0 && Instant::now() < until {
            let patience = until.saturating_duration_since(Instant::now());
            if self.offer_all(tx, backpressure, stats, patience).is_err() {
                break;
            }
            if self.len() > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let left = self.len() as u64;
        if left > 0 {
            self.lost.fetch_add(left, Ordering::Relaxed);
            error!(
                held = left,
                "CDR writer stopping while still refusing records: these CDRs are lost"
            );
        }
        left
    }
}

/// At most one "CDR not exported" warning per this many ms (a full spool would otherwise log
/// once per message); the refusals themselves are counted in `CdrStats::records_rejected`.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// Unix ms of the last refusal warning (process-wide: there is one writer per process).
static LAST_REFUSAL_LOG_MS: AtomicU64 = AtomicU64::new(0);

impl CdrWriter {
    /// Queues the CDR of `m` if it is final (or past its TTL) at `now_ms`; does nothing
    /// otherwise. Returns whether a CDR was accepted or held for retry. The caller must call
    /// this only on the transition to final, so each message yields exactly one CDR. Never
    /// blocks: a CDR refused under backpressure is counted (`records_rejected`), logged
    /// (rate-limited) and held in the overflow, which offers it again (module docs).
    pub fn emit(&self, m: &MessageRecord, instance: &str, now_ms: u64) -> bool {
        match CdrRecord::from_message(m, instance, now_ms) {
            Some(cdr) => self.hand_over(cdr, now_ms),
            None => false,
        }
    }

    /// As [`CdrWriter::emit`] for a record the TTL sweep just closed: the store has already
    /// marked its pending parts `expired`, so `from_message` would call it `final`; the CDR
    /// says `closed_by = "ttl"` (no final receipt arrived in time).
    pub fn emit_ttl(&self, m: &MessageRecord, instance: &str, now_ms: u64) -> bool {
        let Some(mut cdr) = CdrRecord::from_message(m, instance, now_ms) else {
            return false;
        };
        cdr.closed_by = ClosedBy::Ttl;
        self.hand_over(cdr, now_ms)
    }

    /// Refused CDRs held for retry now (for metrics and tests).
    pub fn overflow_len(&self) -> usize {
        self.overflow.len()
    }

    /// CDRs given up (overflow full, or held when the writer stopped).
    pub fn overflow_lost(&self) -> u64 {
        self.overflow.lost()
    }

    fn hand_over(&self, cdr: CdrRecord, now_ms: u64) -> bool {
        let e = match self.record(cdr) {
            Ok(()) => return true,
            Err(e) => e,
        };
        let last = LAST_REFUSAL_LOG_MS.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= REFUSAL_LOG_INTERVAL_MS
            && LAST_REFUSAL_LOG_MS
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let (reason, cdr) = match &e {
                RecordError::Backpressure(c) => ("backpressure: held for retry", c),
                RecordError::Stopped(c) => ("writer stopped: lost", c),
            };
            warn!(
                reason,
                transaction_id = %cdr.transaction_id,
                rejected_total = self.stats().records_rejected.load(Ordering::Relaxed),
                held = self.overflow.len(),
                lost_total = self.overflow.lost(),
                "CDR refused by the writer (further refusals within 10 s are only counted)"
            );
        }
        match e {
            RecordError::Backpressure(c) => self.overflow.push(*c),
            RecordError::Stopped(_) => {
                self.overflow.lost.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::CdrConfig;
    use crate::state::{Encoding, MessageKey, PartUpdate, Status};

    fn final_msg(i: usize) -> MessageRecord {
        let mut m = MessageRecord::new_accepted(
            MessageKey::new(1, format!("ov-{i}")),
            3,
            "ACME",
            "+491511234567",
            Encoding::Gsm7,
            "x",
            1,
            1_000,
        );
        m.expires_at_ms = u64::MAX;
        m.apply(
            &PartUpdate::AllPending {
                status: Status::Failed,
                error_code: None,
            },
            1_001,
        );
        m
    }

    /// A writer with a one-record queue refuses most of a burst; every refused CDR is held,
    /// offered again, and in the sink after shutdown: none lost, none twice.
    #[test]
    fn refused_cdrs_are_retried_not_lost() {
        const N: usize = 5_000;
        let dir = tempfile::tempdir().unwrap();
        let w = CdrWriter::start(
            CdrConfig {
                dir: dir.path().to_path_buf(),
                queue_capacity: 1,
                ..CdrConfig::default()
            },
            "t",
        )
        .unwrap();
        for i in 0..N {
            assert!(
                w.emit(&final_msg(i), "t", 2_000),
                "CDR {i} neither taken nor held"
            );
        }
        let rejected = w.stats().records_rejected.load(Ordering::Relaxed);
        assert!(
            rejected > 0,
            "the burst was never refused: the test tested nothing"
        );
        let report = w.shutdown().unwrap();
        assert_eq!(report.records_lost, 0);
        let mut ids = std::collections::BTreeMap::<String, usize>::new();
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                    continue;
                }
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(std::fs::File::open(e.path()).unwrap()),
                    &mut text,
                )
                .unwrap();
                for l in text.lines() {
                    let c: CdrRecord = serde_json::from_str(l).unwrap();
                    *ids.entry(c.transaction_id).or_default() += 1;
                }
            }
        }
        assert_eq!(ids.len(), N, "{rejected} refused; some CDRs missing");
        assert!(ids.values().all(|&n| n == 1), "a CDR was written twice");
    }
}
