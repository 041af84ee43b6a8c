//! Crash recovery at startup and the periodic TTL sweep (control plane, side runtime).
//!
//! # What a record tells after a crash
//!
//! The pipeline writes a message three times: `create` (all parts `Accepted`, text kept), then
//! the hand-over mark (`PartUpdate::Handed`, awaited until durable) before any part is given
//! to an SMPP session, then one `update` with each part's outcome (`Submitted` + SMSC id, or a
//! final state) after the SMSC answered. After a SIGKILL, a record created by an earlier
//! process that is still `Accepted` therefore says one of two things:
//!
//! * **no mark**: the process died between `create` and the mark; no part was given to a
//!   session, so no PDU can have left. Sending it now sends it once.
//! * **mark**: parts were given to a session; each part still `Accepted` may be queued, on the
//!   wire, or at the SMSC with its `submit_sm_resp` lost. Nothing separates these, and
//!   resending the last kind sends the message twice.
//!
//! The policy is therefore:
//!
//! | record state at startup (created before this process started) | action |
//! |---|---|
//! | every part `Submitted` or final | nothing: receipts or the TTL sweep finish it |
//! | `Accepted`, no mark, every part `Accepted`, text stored, accepted less than `max_age` ago | **resubmitted**: same `transaction_id`, same text, same routing rules, once |
//! | as above but older than `max_age` (or no text) | every part → `Failed`, error code [`RECOVERY_NOT_SENT`] (never sent; a late OTP is worse than none) |
//! | marked, some part `Accepted` | that part → `Unknown`, error code [`RECOVERY_IN_FLIGHT`]; `Submitted` parts keep waiting for receipts |
//!
//! A message is never partly resubmitted: once one part has an outcome the message was handed
//! over, so its pending parts are `Unknown`. Records stored before the mark existed decode as
//! marked (the safe reading).
//!
//! `Unknown` is final and visible in `GET /api/v1/sms/{id}`: the client knows it was not
//! confirmed and may send again under a NEW `transaction_id` if it prefers a possible
//! duplicate to a possible loss.
//!
//! # Resubmission
//!
//! A resubmission is a [`Job`] with `resubmit = true` handed to a shard that runs a bound
//! bind of the routed link (the same hand-over channel the shards use between themselves);
//! the shard runs the ordinary `execute` without `create`: segment → hand-over mark → submit
//! → outcome write. The mark is the claim: only the update that sets it sends, so a record
//! offered twice (a lost reply, a retry) is sent at most once. Routing: the record's esme
//! (link or pool) through SWRR over links the health table says are up, as for new messages;
//! admission (auth, rate limits, contact policy) is not applied again, the message passed it
//! when it was accepted. Recovery waits for links to come up: a record that finds no route is
//! offered again every [`RESUBMIT_RETRY_PAUSE`] for up to [`RESUBMIT_MAX_WAIT`], then recorded
//! `Failed` ([`RECOVERY_NOT_SENT`]). At most [`RESUBMIT_CONCURRENCY`] are in flight.
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
//! Pages of [`RECOVERY_PAGE`] records (a page's resubmissions finish before the next page is
//! read), at most [`RECOVERY_CONCURRENCY`] updates in flight, a
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

use crate::api::ErrorKind;
use crate::config::LinkId;
use crate::route::{BindHealth, ShardRouter, Target};
use crate::runtime::Shutdown;
use crate::shard::pipeline::{Handover, Job, Shared};
use crate::state::{
    MessageRecord, PartUpdate, ScanCursor, StateError, StateStore, Status, UpdateOutcome, unix_ms,
};

/// Gateway error code stored on parts recovery marked `Unknown` ("possibly sent before a
/// crash"). Outside the SMPP `command_status` range used for SMSC errors (< 0x0001_0000).
pub const RECOVERY_IN_FLIGHT: u32 = 0x0001_0001;

/// Gateway error code stored on parts recovery marked `Failed` because the message was never
/// sent and will not be (too old, no route within [`RESUBMIT_MAX_WAIT`], no text).
pub const RECOVERY_NOT_SENT: u32 = 0x0001_0003;

/// Resubmissions in flight at once.
pub const RESUBMIT_CONCURRENCY: usize = 16;
/// How long a record that finds no route (links still connecting) keeps being offered.
pub const RESUBMIT_MAX_WAIT: Duration = Duration::from_secs(120);
/// Pause between offers of a record that found no route.
pub const RESUBMIT_RETRY_PAUSE: Duration = Duration::from_millis(500);

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
    /// Never handed to a session: send it now (same transaction id and text).
    Resubmit,
    /// Never handed to a session, and not to be sent any more: every part `Failed` with
    /// [`RECOVERY_NOT_SENT`].
    FailNotSent,
}

/// The policy of the module doc, from the record alone (pure, unit-tested). `max_age_ms`:
/// an unsent message accepted longer ago than this (at `now_ms`) is failed, not sent late.
pub fn decide(r: &MessageRecord, started_at_ms: u64, now_ms: u64, max_age_ms: u64) -> Decision {
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
        return Decision::Leave;
    }
    // Unmarked means no part was given to a session; a part with an outcome means it was
    // (the mark precedes every submit), so the pending parts may be on the wire.
    let never_sent = r.handed_at_ms.is_none() && pending.len() == r.parts.len();
    if !never_sent {
        return Decision::MarkUnknown(pending);
    }
    if r.text.is_none() || now_ms.saturating_sub(r.created_at_ms) > max_age_ms {
        Decision::FailNotSent
    } else {
        Decision::Resubmit
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
    /// Never-sent messages resubmitted (handed to a session by this process; their outcome is
    /// in the store like any other message's).
    pub resubmitted: u64,
    /// Never-sent messages recorded `Failed` ([`RECOVERY_NOT_SENT`]) instead.
    pub failed_not_sent: u64,
    /// Resubmissions found already claimed (an earlier offer's reply was lost): not sent again.
    pub resubmit_claimed: u64,
    /// False when the deadline or the retry bound stopped the walk early.
    pub complete: bool,
}

/// What recovery needs to resubmit never-sent messages: the shards' hand-over channels and
/// routing inputs (in [`Shared`]), and the age limit.
pub struct Resubmitter {
    shared: Arc<Shared>,
    /// Owned here only (never borrowed across an await): `Send`, and SWRR shares stay exact
    /// across the resubmissions of one walk.
    router: ShardRouter,
    max_age_ms: u64,
    /// Round-robin over candidate shards.
    cursor: usize,
}

impl Resubmitter {
    /// `max_age`: never-sent messages accepted longer ago are failed, not sent late.
    pub fn new(shared: Arc<Shared>, max_age: Duration) -> Resubmitter {
        Resubmitter {
            router: ShardRouter::new(Arc::clone(&shared.registry)),
            shared,
            max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
            cursor: 0,
        }
    }
}

/// What one offer of a resubmission to a shard came to.
enum Offered {
    /// The shard ran it: sent (outcome in `answer`) or found it claimed (`duplicate`).
    Answer(crate::shard::pipeline::SendAnswer),
    /// The shard refused it with this error.
    Refused(crate::api::ApiError),
    /// No answer in time, or the shard dropped it: it may be running; never failed by us.
    NoReply,
    /// The shard's channel is closed: the gateway is shutting down.
    Closed,
}

impl Resubmitter {
    /// Offers each record (at most [`RESUBMIT_CONCURRENCY`] at once) until it was handed to
    /// a shard, retrying those that found no route or a full queue every
    /// [`RESUBMIT_RETRY_PAUSE`] until [`RESUBMIT_MAX_WAIT`] (or `until`). Returns the records
    /// certainly not sent and not to be retried (the caller records them `Failed`). Records
    /// left when the gateway shuts down are neither: the next start sees them again.
    async fn run(
        &mut self,
        records: Vec<MessageRecord>,
        until: Instant,
        report: &mut RecoveryReport,
    ) -> Vec<MessageRecord> {
        let give_up = (Instant::now() + RESUBMIT_MAX_WAIT).min(until);
        let wait = self.shared.config.server.request_timeout + Duration::from_secs(5);
        let mut pending = records;
        let mut unsent = Vec::new();
        while !pending.is_empty() {
            let mut retry = Vec::new();
            let mut batch = std::mem::take(&mut pending).into_iter().peekable();
            while batch.peek().is_some() {
                let mut offers = Vec::new();
                for r in batch.by_ref().take(RESUBMIT_CONCURRENCY) {
                    match self.route(&r) {
                        Ok((job, inbox)) => {
                            offers.push((r, tokio::spawn(offer(inbox, job, wait))));
                        }
                        Err(None) => retry.push(r),
                        Err(Some(why)) => {
                            warn!(transaction_id = %r.transaction_id, %why, "crash recovery: cannot resubmit");
                            unsent.push(r);
                        }
                    }
                }
                for (r, h) in offers {
                    let outcome = h.await.unwrap_or(Offered::NoReply);
                    match outcome {
                        Offered::Answer(a) if a.duplicate => report.resubmit_claimed += 1,
                        Offered::Answer(a) => {
                            report.resubmitted += 1;
                            info!(
                                transaction_id = %r.transaction_id,
                                status = %a.status,
                                "crash recovery: never-sent message resubmitted"
                            );
                        }
                        Offered::NoReply => {
                            report.resubmitted += 1;
                            warn!(transaction_id = %r.transaction_id, "crash recovery: resubmission got no reply in time; its outcome is in the store");
                        }
                        Offered::Closed => return Vec::new(),
                        // Refused before the claim (nothing sent, record untouched), or after
                        // a failed claim write (nothing sent either): try again later.
                        Offered::Refused(e)
                            if matches!(
                                e.kind,
                                ErrorKind::NoRoute
                                    | ErrorKind::Overloaded
                                    | ErrorKind::StateUnavailable
                                    | ErrorKind::ShuttingDown
                            ) =>
                        {
                            retry.push(r);
                        }
                        // Cannot be sent as recorded (segmentation, address, link changed by
                        // configuration): nothing was sent.
                        Offered::Refused(e) => {
                            warn!(transaction_id = %r.transaction_id, error = %e, "crash recovery: resubmission refused");
                            unsent.push(r);
                        }
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if Instant::now() + RESUBMIT_RETRY_PAUSE >= give_up {
                warn!(
                    count = retry.len(),
                    "crash recovery: no route for never-sent messages in time"
                );
                unsent.extend(retry);
                break;
            }
            tokio::time::sleep(RESUBMIT_RETRY_PAUSE).await;
            pending = retry;
        }
        unsent
    }

    /// The job for `r` and the inbox of a shard with a bound bind of the routed link.
    /// `Err(None)`: no route now (links down or still connecting), try later; `Err(Some)`:
    /// never routable as recorded.
    fn route(
        &mut self,
        r: &MessageRecord,
    ) -> Result<(Job, async_channel::Sender<Handover>), Option<String>> {
        let sh = &self.shared;
        let Some(text) = r.text.clone() else {
            return Err(Some("no text stored".into()));
        };
        let target = sh
            .registry
            .resolve(u64::from(r.esme))
            .map_err(|e| Some(e.to_string()))?;
        let health = &sh.health;
        let link = self
            .router
            .pick(target, |l| health.is_up(l))
            .map_err(|e| (!e.is_retryable()).then(|| e.to_string()))?;
        let shards = bound_shards(sh, link);
        if shards.is_empty() {
            return Err(None);
        }
        let shard = shards[self.cursor % shards.len()];
        self.cursor = self.cursor.wrapping_add(1);
        let inbox = sh.inboxes.get(shard).cloned().ok_or(None)?;
        let job = Job {
            key: r.key(),
            esme: r.esme,
            link,
            pool: match target {
                Target::Pool(p) => Some(p),
                Target::Link(_) => None,
            },
            source: r.source.clone(),
            destination: r.destination.clone(),
            message: text,
            // The encoding chosen at acceptance, so the text segments as recorded.
            encoding: Some(match r.encoding {
                crate::state::Encoding::Gsm7 => crate::smpp::text::Encoding::Gsm7,
                crate::state::Encoding::Latin1 => crate::smpp::text::Encoding::Latin1,
                crate::state::Encoding::Ucs2 => crate::smpp::text::Encoding::Ucs2,
            }),
            callback_url: r.callback_url.clone(),
            resubmit: true,
            received: None,
        };
        Ok((job, inbox))
    }
}

/// Shards running a bind of `link` that the health table does not report down.
fn bound_shards(sh: &Shared, link: LinkId) -> Vec<usize> {
    let mut shards: Vec<usize> = sh
        .health
        .snapshot(link)
        .map(|snap| snap.binds)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, h)| **h != BindHealth::Down)
        .filter_map(|(i, _)| sh.registry.shard_of_bind(link, i as u32))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// Hands `job` to a shard and waits (bounded) for its answer.
async fn offer(inbox: async_channel::Sender<Handover>, job: Job, wait: Duration) -> Offered {
    let (reply, answer) = async_channel::bounded(1);
    match inbox.try_send(Handover { job, reply }) {
        Ok(()) => {}
        Err(async_channel::TrySendError::Full(_)) => {
            return Offered::Refused(crate::api::ApiError::new(
                ErrorKind::Overloaded,
                "cross-shard queue full",
            ));
        }
        Err(async_channel::TrySendError::Closed(_)) => return Offered::Closed,
    }
    match tokio::time::timeout(wait, answer.recv()).await {
        Ok(Ok(Ok(a))) => Offered::Answer(a),
        Ok(Ok(Err(e))) => Offered::Refused(e),
        Ok(Err(_)) | Err(_) => Offered::NoReply,
    }
}

/// Walks every non-final record once and applies [`decide`]. Never panics on store errors:
/// they are retried up to a bound, then the walk stops with `complete = false`. Without a
/// [`Resubmitter`] (nothing can send) never-sent messages are recorded `Failed`.
pub async fn recover(
    store: Arc<dyn StateStore>,
    started_at_ms: u64,
    deadline: Duration,
    cdr: CdrOut,
    mut resubmitter: Option<Resubmitter>,
) -> RecoveryReport {
    let max_age_ms = resubmitter.as_ref().map_or(0, |r| r.max_age_ms);
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
        let mut resubmit: Vec<MessageRecord> = Vec::new();
        let now = unix_ms();
        for r in page.records {
            report.scanned += 1;
            match decide(&r, started_at_ms, now, max_age_ms) {
                Decision::Leave => {}
                Decision::MarkUnknown(parts) => work.push((r, parts)),
                Decision::Resubmit if resubmitter.is_some() => resubmit.push(r),
                Decision::Resubmit | Decision::FailNotSent => work.push((r, Vec::new())),
            }
        }
        if let Some(rs) = resubmitter.as_mut() {
            // Those that could not be sent in time come back to be failed below.
            let unsent = rs.run(resubmit, until, &mut report).await;
            work.extend(unsent.into_iter().map(|r| (r, Vec::new())));
        }
        for chunk in work.chunks(RECOVERY_CONCURRENCY) {
            // An empty part list means "never sent": every part Failed (RECOVERY_NOT_SENT).
            let futs = chunk.iter().map(|(r, parts)| {
                let updates = if parts.is_empty() {
                    vec![PartUpdate::AllPending {
                        status: Status::Failed,
                        error_code: Some(RECOVERY_NOT_SENT),
                    }]
                } else {
                    parts
                        .iter()
                        .map(|&index| PartUpdate::Final {
                            index,
                            status: Status::Unknown,
                            error_code: Some(RECOVERY_IN_FLIGHT),
                        })
                        .collect()
                };
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
                        if parts.is_empty() {
                            report.failed_not_sent += 1;
                            warn!(
                                app_id = r.app_id,
                                transaction_id = %r.transaction_id,
                                "crash recovery: never-sent message recorded failed (too old or no route)"
                            );
                            continue;
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
                if let Some(rs) = &resubmitter {
                    let m = &rs.shared.metrics;
                    m.recovered_resubmitted.add(report.resubmitted);
                    m.recovered_unknown.add(report.marked_unknown);
                }
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
    resubmitter: Option<Resubmitter>,
) {
    handle.spawn(recover(
        store,
        started_at_ms,
        Duration::from_secs(600),
        cdr,
        resubmitter,
    ));
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

    const HOUR: u64 = 3_600_000;

    #[test]
    fn handed_accepted_parts_of_an_earlier_process_become_unknown() {
        let mut r = rec(2, 100);
        r.apply(&PartUpdate::Handed, 101);
        assert_eq!(
            decide(&r, 200, 300, HOUR),
            Decision::MarkUnknown(vec![0, 1])
        );
        // This process's own records are never touched.
        assert_eq!(decide(&r, 100, 300, HOUR), Decision::Leave);
        // A record from before the mark existed reads as handed: never resent.
        let mut old = rec(1, 100);
        old.handed_at_ms = Some(crate::state::model::LEGACY_HANDED_AT_MS);
        assert_eq!(decide(&old, 200, 300, HOUR), Decision::MarkUnknown(vec![0]));
    }

    #[test]
    fn never_handed_messages_are_resubmitted_unless_too_old() {
        let r = rec(2, 100);
        assert_eq!(decide(&r, 200, 300, HOUR), Decision::Resubmit);
        assert_eq!(decide(&r, 200, 100 + HOUR, HOUR), Decision::Resubmit);
        assert_eq!(decide(&r, 200, 101 + HOUR, HOUR), Decision::FailNotSent);
        // max age 0: never resubmit.
        assert_eq!(decide(&r, 200, 300, 0), Decision::FailNotSent);
        // No text left to send: cannot be resubmitted.
        let mut t = rec(1, 100);
        t.text = None;
        assert_eq!(decide(&t, 200, 300, HOUR), Decision::FailNotSent);
        // Created by this process: its own pipeline owns it.
        assert_eq!(decide(&r, 100, 300, HOUR), Decision::Leave);
    }

    /// A message with one part already answered was handed over (the mark precedes every
    /// submit), even if its mark is missing: its pending parts are unknown, never resent.
    #[test]
    fn partly_submitted_messages_are_never_partly_resubmitted() {
        let mut r = rec(2, 100);
        r.apply(
            &PartUpdate::Final {
                index: 0,
                status: Status::Rejected,
                error_code: Some(0x45),
            },
            150,
        );
        assert_eq!(r.handed_at_ms, None);
        assert_eq!(decide(&r, 200, 300, HOUR), Decision::MarkUnknown(vec![1]));
    }

    #[test]
    fn submitted_parts_keep_waiting_for_receipts() {
        let mut r = rec(2, 100);
        r.apply(&PartUpdate::Handed, 101);
        r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 1,
                smsc_message_id: "a".into(),
            },
            150,
        );
        assert_eq!(decide(&r, 200, 300, HOUR), Decision::MarkUnknown(vec![1]));
        r.apply(
            &PartUpdate::Submitted {
                index: 1,
                link_id: 1,
                smsc_message_id: "b".into(),
            },
            160,
        );
        assert_eq!(decide(&r, 200, 300, HOUR), Decision::Leave);
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
            // 30 handed over before the crash (→ unknown), 10 never handed (→ failed: this
            // walk has no resubmitter, so nothing can send them).
            for i in 0..40u32 {
                let mut r = rec(1, now - 1000);
                r.transaction_id = format!("t{i}");
                if i < 30 {
                    r.handed_at_ms = Some(now - 999);
                }
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
                None,
            )
            .await;
            assert!(report.complete);
            assert_eq!(report.marked_unknown, 30);
            assert_eq!(report.failed_not_sent, 10);
            let r = store.get(MessageKey::new(1, "t7")).await.unwrap().unwrap();
            assert_eq!(r.status, Status::Unknown);
            assert_eq!(r.parts[0].error_code, Some(RECOVERY_IN_FLIGHT));
            let r = store.get(MessageKey::new(1, "t37")).await.unwrap().unwrap();
            assert_eq!(r.status, Status::Failed);
            assert_eq!(r.parts[0].error_code, Some(RECOVERY_NOT_SENT));
            let r = store.get(MessageKey::new(1, "new")).await.unwrap().unwrap();
            assert_eq!(r.status, Status::Accepted);
            // Second run: nothing left to do.
            let again = recover(
                Arc::clone(&store),
                now,
                Duration::from_secs(30),
                out.clone(),
                None,
            )
            .await;
            assert_eq!(again.marked_unknown, 0);
            assert_eq!(again.failed_not_sent, 0);
            // Sweep far in the future: the one non-final record expires, once.
            let far = now + 10 * 3600 * 1000;
            assert_eq!(sweep_once(&*store, far, 1, &out).await, 1);
            assert_eq!(sweep_once(&*store, far, 1, &out).await, 0);
        });
        // One CDR per record closed: 40 by recovery (final, unknown/failed), 1 by the sweep.
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
                .all(|c| matches!(c.status, Status::Unknown | Status::Failed)
                    && c.closed_by == crate::cdr::ClosedBy::Final)
        );
    }
}
