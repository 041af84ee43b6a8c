//! Crash recovery at startup and the periodic TTL sweep (control plane, side runtime).
//!
//! # What a record tells after a crash
//!
//! The pipeline writes a message twice: `create` (all parts `Accepted`, text kept) before
//! anything is sent, then one `update` with each part's outcome (`Submitted` + SMSC id, or a
//! final state) after the SMSC answered. Between the two writes the `submit_sm` PDUs are queued
//! on a session and possibly written to the socket; nothing durable marks that moment. So after
//! a SIGKILL, a part still `Accepted` in a record created by an earlier process means one of:
//!
//! * the PDU never left (killed between `create` and the socket write), or
//! * the PDU reached the SMSC, and the process died before the outcome write was durable
//!   (`submit_sm_resp` in flight, or the update still in the write batch).
//!
//! The record holds nothing that separates the two, and resubmitting the second kind sends
//! the message twice. The policy is therefore:
//!
//! | record state at startup (created before this process started) | action |
//! |---|---|
//! | every part `Submitted` or final | nothing: receipts or the TTL sweep finish it |
//! | some part `Accepted` (text still stored) | that part → `Unknown`, error code [`RECOVERY_IN_FLIGHT`]; `Submitted` parts keep waiting for receipts |
//!
//! `Unknown` is final and visible in `GET /api/v1/sms/{id}`: the client knows it was not
//! confirmed and may send again under a NEW `transaction_id` if it prefers a possible
//! duplicate to a possible loss. Nothing is resubmitted automatically: automatic
//! resubmission needs a durable "handed to a session" mark per part written before the PDU
//! goes out (an extra write per message), which the pipeline does not have yet.
//!
//! Records created by the running process (`created_at_ms >= started_at_ms`) are never
//! touched, so recovery may run while new traffic is already served.
//!
//! Recovery runs only on a store this process owns alone (the embedded backend locks its
//! directory). On a store shared by replicas (Aerospike) a non-final record may be another
//! live replica's message in flight; records do not name their owner instance yet, so the
//! gateway does not start recovery there.
//!
//! # Bounds
//!
//! Pages of [`RECOVERY_PAGE`] records, at most [`RECOVERY_CONCURRENCY`] updates in flight, a
//! wall-clock deadline for the whole walk (what is left is logged and handled by the next
//! start or the TTL sweep). Store errors are retried with a pause, a bounded number of times.
//!
//! # TTL sweep
//!
//! [`spawn_expiry_sweep`] calls [`StateStore::expire_due`] every interval with a bounded page
//! and repeats while pages come back full, at most [`SWEEP_MAX_PAGES_PER_TICK`] pages a tick, so
//! a backlog drains over several ticks without monopolising the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::runtime::Shutdown;
use crate::state::{
    MessageRecord, PartUpdate, ScanCursor, StateError, StateStore, Status, UpdateOutcome, unix_ms,
};

/// Gateway error code stored on parts recovery marked `Unknown` ("possibly sent before a
/// crash"). Outside the SMPP `command_status` range used for SMSC errors (< 0x0001_0000).
pub const RECOVERY_IN_FLIGHT: u32 = 0x0001_0001;

/// Records per `scan_non_final` page during recovery.
pub const RECOVERY_PAGE: usize = 512;
/// Recovery updates in flight at once.
pub const RECOVERY_CONCURRENCY: usize = 32;
/// Pages of `expire_due` per sweep tick.
pub const SWEEP_MAX_PAGES_PER_TICK: usize = 8;

/// Period of the TTL sweep.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Records per `expire_due` page in the sweep.
pub const SWEEP_PAGE: usize = 1000;

/// Store errors tolerated in a row before recovery gives up for this start.
const MAX_STORE_RETRIES: u32 = 20;

/// What recovery decides for one non-final record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do (created by this process, or every part has an outcome).
    Leave,
    /// Mark these parts `Unknown`: their PDU may have been written before the crash.
    MarkUnknown(Vec<u16>),
}

/// The policy of the module doc, from the record alone (pure, unit-tested).
pub fn decide(r: &MessageRecord, started_at_ms: u64) -> Decision {
    if r.created_at_ms >= started_at_ms || r.status.is_final() {
        return Decision::Leave;
    }
    let pending: Vec<u16> = r
        .parts
        .iter()
        .filter(|p| p.status == Status::Accepted)
        .map(|p| p.index)
        .collect();
    if pending.is_empty() {
        Decision::Leave
    } else {
        Decision::MarkUnknown(pending)
    }
}

/// Where recovery and the TTL sweep send the CDR of each record they close (writer, instance
/// id); `None` exports nothing (unit tests).
pub type CdrOut = Option<(Arc<crate::cdr::CdrWriter>, String)>;

fn emit_cdr(cdr: &CdrOut, r: &MessageRecord, now_ms: u64, ttl: bool) {
    if let Some((w, instance)) = cdr {
        if ttl {
            w.emit_ttl(r, instance, now_ms);
        } else {
            w.emit(r, instance, now_ms);
        }
    }
}

/// Counts of one recovery walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Non-final records examined.
    pub scanned: u64,
    /// Records with parts marked `Unknown`.
    pub marked_unknown: u64,
    /// Parts marked `Unknown`.
    pub parts_unknown: u64,
    /// False when the deadline or the retry bound stopped the walk early.
    pub complete: bool,
}

/// Walks every non-final record once and applies [`decide`]. Never panics on store errors:
/// they are retried up to a bound, then the walk stops with `complete = false`.
pub async fn recover(
    store: Arc<dyn StateStore>,
    started_at_ms: u64,
    deadline: Duration,
    cdr: CdrOut,
) -> RecoveryReport {
    let until = Instant::now() + deadline;
    let mut report = RecoveryReport::default();
    let mut cursor: Option<ScanCursor> = None;
    let mut failures = 0u32;
    loop {
        if Instant::now() >= until {
            warn!(?report, "crash recovery: deadline reached, walk incomplete");
            return report;
        }
        let page = match store.scan_non_final(cursor.clone(), RECOVERY_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                if !retry(&mut failures, &e).await {
                    return report;
                }
                continue;
            }
        };
        let mut work: Vec<(MessageRecord, Vec<u16>)> = Vec::new();
        for r in page.records {
            report.scanned += 1;
            if let Decision::MarkUnknown(parts) = decide(&r, started_at_ms) {
                work.push((r, parts));
            }
        }
        for chunk in work.chunks(RECOVERY_CONCURRENCY) {
            let futs = chunk.iter().map(|(r, parts)| {
                let updates = parts
                    .iter()
                    .map(|&index| PartUpdate::Final {
                        index,
                        status: Status::Unknown,
                        error_code: Some(RECOVERY_IN_FLIGHT),
                    })
                    .collect();
                store.update(r.key(), updates, unix_ms())
            });
            let results = join_all(futs.collect()).await;
            for ((r, parts), res) in chunk.iter().zip(results) {
                match res {
                    Ok(UpdateOutcome::Updated {
                        changed: true,
                        record,
                    }) => {
                        // Final parts never change: final now means this update closed it.
                        if record.status.is_final() {
                            emit_cdr(&cdr, &record, unix_ms(), false);
                        }
                        report.marked_unknown += 1;
                        report.parts_unknown += parts.len() as u64;
                        warn!(
                            app_id = r.app_id,
                            transaction_id = %r.transaction_id,
                            parts = parts.len(),
                            "crash recovery: outcome of a possibly sent message unknown"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The next start sees the record again (it stays non-final).
                        warn!(transaction_id = %r.transaction_id, error = %e, "crash recovery: update failed");
                        if !retry(&mut failures, &e).await {
                            return report;
                        }
                    }
                }
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => {
                report.complete = true;
                info!(?report, "crash recovery done");
                return report;
            }
        }
    }
}

/// Counts a store failure and pauses; false once the retry bound is exhausted.
async fn retry(failures: &mut u32, e: &StateError) -> bool {
    *failures += 1;
    if *failures > MAX_STORE_RETRIES {
        warn!(error = %e, "crash recovery: store keeps failing, giving up for this start");
        return false;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    true
}

/// Awaits boxed store futures concurrently (they complete on the store's own threads).
async fn join_all<T: Send + 'static>(
    futs: Vec<crate::state::StoreFuture<T>>,
) -> Vec<Result<T, StateError>> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(
            h.await
                .unwrap_or_else(|e| Err(StateError::Unavailable(format!("task failed: {e}")))),
        );
    }
    out
}

/// Starts recovery on the side runtime (it does not delay serving: records of this process
/// are never touched) with a 10-minute bound.
pub fn spawn_recovery(
    handle: &tokio::runtime::Handle,
    store: Arc<dyn StateStore>,
    started_at_ms: u64,
    cdr: CdrOut,
) {
    handle.spawn(recover(store, started_at_ms, Duration::from_secs(600), cdr));
}

/// Periodic TTL sweep: non-final records past their expiry become `Expired`.
pub fn spawn_expiry_sweep(
    handle: &tokio::runtime::Handle,
    store: Arc<dyn StateStore>,
    interval: Duration,
    page: usize,
    shutdown: Shutdown,
    cdr: CdrOut,
) {
    handle.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let expired = sweep_once(&*store, unix_ms(), page, &cdr).await;
            if expired > 0 {
                info!(expired, "TTL sweep: records expired");
            }
        }
    });
}

/// One sweep tick: pages of `expire_due` while they come back full, at most
/// [`SWEEP_MAX_PAGES_PER_TICK`]. Returns how many records were expired.
/// Each expired record was non-final until now, so it has had no CDR: one is emitted here.
pub async fn sweep_once(store: &dyn StateStore, now_ms: u64, page: usize, cdr: &CdrOut) -> usize {
    let page = page.clamp(1, crate::state::MAX_PAGE);
    let mut total = 0;
    for _ in 0..SWEEP_MAX_PAGES_PER_TICK {
        match store.expire_due(now_ms, page).await {
            Ok(recs) => {
                total += recs.len();
                for r in &recs {
                    emit_cdr(cdr, r, now_ms, true);
                }
                if recs.len() < page {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "TTL sweep: store error, next tick retries");
                break;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Encoding, MessageKey};

    fn rec(parts: u16, created: u64) -> MessageRecord {
        MessageRecord::new_accepted(
            MessageKey::new(1, "t"),
            1,
            "src",
            "+1",
            Encoding::Gsm7,
            "hi",
            parts,
            created,
        )
    }

    #[test]
    fn accepted_parts_of_an_earlier_process_become_unknown() {
        let r = rec(2, 100);
        assert_eq!(decide(&r, 200), Decision::MarkUnknown(vec![0, 1]));
        // This process's own records are never touched.
        assert_eq!(decide(&r, 100), Decision::Leave);
    }

    #[test]
    fn submitted_parts_keep_waiting_for_receipts() {
        let mut r = rec(2, 100);
        r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 1,
                smsc_message_id: "a".into(),
            },
            150,
        );
        assert_eq!(decide(&r, 200), Decision::MarkUnknown(vec![1]));
        r.apply(
            &PartUpdate::Submitted {
                index: 1,
                link_id: 1,
                smsc_message_id: "b".into(),
            },
            160,
        );
        assert_eq!(decide(&r, 200), Decision::Leave);
    }

    #[test]
    fn recovery_and_sweep_against_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> =
            crate::state::EmbeddedStore::open(crate::state::EmbeddedConfig {
                path: dir.path().to_path_buf(),
                ttl_secs: 3600,
                ..crate::state::EmbeddedConfig::default()
            })
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cdr_dir = dir.path().join("cdr");
        let writer = Arc::new(
            crate::cdr::CdrWriter::start(
                crate::cdr::CdrConfig {
                    dir: cdr_dir.clone(),
                    ..crate::cdr::CdrConfig::default()
                },
                "t",
            )
            .unwrap(),
        );
        let out: CdrOut = Some((Arc::clone(&writer), "t".into()));
        rt.block_on(async {
            let now = unix_ms();
            for i in 0..40u32 {
                let mut r = rec(1, now - 1000);
                r.transaction_id = format!("t{i}");
                store.create(r).await.unwrap();
            }
            let mut mine = rec(1, now + 10);
            mine.transaction_id = "new".into();
            store.create(mine).await.unwrap();
            let report = recover(
                Arc::clone(&store),
                now,
                Duration::from_secs(30),
                out.clone(),
            )
            .await;
            assert!(report.complete);
            assert_eq!(report.marked_unknown, 40);
            let r = store.get(MessageKey::new(1, "t7")).await.unwrap().unwrap();
            assert_eq!(r.status, Status::Unknown);
            assert_eq!(r.parts[0].error_code, Some(RECOVERY_IN_FLIGHT));
            let r = store.get(MessageKey::new(1, "new")).await.unwrap().unwrap();
            assert_eq!(r.status, Status::Accepted);
            // Second run: nothing left to do.
            let again = recover(
                Arc::clone(&store),
                now,
                Duration::from_secs(30),
                out.clone(),
            )
            .await;
            assert_eq!(again.marked_unknown, 0);
            // Sweep far in the future: the one non-final record expires, once.
            let far = now + 10 * 3600 * 1000;
            assert_eq!(sweep_once(&*store, far, 1, &out).await, 1);
            assert_eq!(sweep_once(&*store, far, 1, &out).await, 0);
        });
        // One CDR per record closed: 40 by recovery (final, unknown), 1 by the sweep (ttl).
        drop(out);
        let writer = Arc::try_unwrap(writer).ok().expect("only handle");
        assert_eq!(writer.shutdown().unwrap().records_lost, 0);
        let mut cdrs = Vec::new();
        let mut stack = vec![cdr_dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    let mut text = String::new();
                    std::io::Read::read_to_string(
                        &mut flate2::read::GzDecoder::new(std::fs::File::open(e.path()).unwrap()),
                        &mut text,
                    )
                    .unwrap();
                    for l in text.lines() {
                        cdrs.push(serde_json::from_str::<crate::cdr::CdrRecord>(l).unwrap());
                    }
                }
            }
        }
        assert_eq!(cdrs.len(), 41);
        let ttl: Vec<_> = cdrs
            .iter()
            .filter(|c| c.closed_by == crate::cdr::ClosedBy::Ttl)
            .collect();
        assert_eq!(ttl.len(), 1);
        assert_eq!(ttl[0].transaction_id, "new");
        assert_eq!(ttl[0].status, Status::Expired);
        let ids: std::collections::BTreeSet<_> =
            cdrs.iter().map(|c| c.transaction_id.clone()).collect();
        assert_eq!(ids.len(), 41, "one CDR per message");
        assert!(
            cdrs.iter()
                .filter(|c| c.transaction_id != "new")
                .all(|c| c.status == Status::Unknown && c.closed_by == crate::cdr::ClosedBy::Final)
        );
    }
}
