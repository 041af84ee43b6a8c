//! Hand-off from the gateway to the writer: one CDR per message, at the single store operation
//! that made it final (receipt, submit outcome, crash-recovery marking) or expired it (TTL
//! sweep). Callers are shard event loops and the side runtime, so this never blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use super::{CdrRecord, CdrWriter, ClosedBy, RecordError};
use crate::state::MessageRecord;

/// At most one "CDR not exported" warning per this many ms (a full spool would otherwise log
/// once per message); the refusals themselves are counted in `CdrStats::records_rejected`.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// Unix ms of the last refusal warning (process-wide: there is one writer per process).
static LAST_REFUSAL_LOG_MS: AtomicU64 = AtomicU64::new(0);

impl CdrWriter {
    /// Queues the CDR of `m` if it is final (or past its TTL) at `now_ms`; does nothing
    /// otherwise. Returns whether a CDR was accepted. The caller must call this only on the
    /// transition to final, so each message yields exactly one CDR. A refused CDR
    /// (backpressure, writer stopped) is not retried: blocking or holding it on a shard would
    /// stall traffic for an export; it is counted and logged (rate-limited) instead.
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

    fn hand_over(&self, cdr: CdrRecord, now_ms: u64) -> bool {
        match self.record(cdr) {
            Ok(()) => true,
            Err(e) => {
                let last = LAST_REFUSAL_LOG_MS.load(Ordering::Relaxed);
                if now_ms.saturating_sub(last) >= REFUSAL_LOG_INTERVAL_MS
                    && LAST_REFUSAL_LOG_MS
                        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    let (reason, cdr) = match &e {
                        RecordError::Backpressure(c) => ("backpressure", c),
                        RecordError::Stopped(c) => ("writer stopped", c),
                    };
                    warn!(
                        reason,
                        transaction_id = %cdr.transaction_id,
                        rejected_total = self.stats().records_rejected.load(Ordering::Relaxed),
                        "CDR not exported (further refusals within 10 s are only counted)"
                    );
                }
                false
            }
        }
    }
}
