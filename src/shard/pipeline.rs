//! The life of a message on a shard, in ONE place:
//!
//! ```text
//! validate → auth → limit → policy → route → [hand over to the shard with a bind]
//!          → segment → persist accepted → persist handed → submit on one bind
//!          → persist submitted → answer
//! ```
//!
//! Invariants kept here:
//! * a success answer is only given after the record is in the state store (`create` resolved);
//! * all parts of one message go over the same bind;
//! * a message whose parts were never written (`NotSent`) may be retried once on another local
//!   bind of the same link, then (pool targets) once on another healthy pool member with a
//!   local bind and the same segmentation; parts with an `Unknown` fate are never re-sent
//!   automatically;
//! * every accepted message ends submitted, or marked failed/rejected/unknown in the store;
//! * no part reaches a session before the message's hand-over mark is durable (`mark_handed`):
//!   crash recovery resubmits exactly the messages without it;
//! * the mark is written only once the message holds credits in its bind's window
//!   (`credits`), so a message waiting for room is still unmarked (resubmitted after a crash).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod credits;
use credits::{CreditGuard, Credits};

use crate::api::{ApiError, ErrorKind};
use crate::config::{Config, IdFormat as ConfigIdFormat, LinkConfig, LinkId, PoolId, Segmentation};
use crate::route::{HealthTable, Registry, RouteError, ShardRouter, Target};
use crate::shard::stages::{Admission, RequestMeta, Stages};
use crate::smpp::io::{BindHandle, BindState, PartOutcome, SubmitError};
use crate::smpp::pdu::{Addr21, SubmitSm};
use crate::smpp::receipt::{self, IdFormat};
use crate::smpp::segment::{
    self, RefAllocator, RefWidth, SegmentConfig, SegmentError, SegmentMode,
};
use crate::smpp::text::{self, Encoding, TextInfo};
use crate::state::{
    self, CreateOutcome, MessageKey, MessageRecord, PartUpdate, StateError, StateStore, Status,
    UpdateOutcome,
};

/// Process-wide, `Send + Sync` parts every shard reads. Immutable (counters live in the
/// per-shard metric slots, `metrics`).
pub struct Shared {
    pub config: Config,
    /// Apps, keys and the admin key (control plane); each shard builds its auth stage from it.
    pub auth: Arc<crate::auth::AuthService>,
    pub registry: Arc<Registry>,
    pub health: Arc<HealthTable>,
    pub store: Arc<dyn StateStore>,
    /// Inbound hand-over channel of every shard, by shard id (bounded).
    pub inboxes: Vec<async_channel::Sender<Handover>>,
    /// Window occupancy of every bind, published by the owning shard's health loop (so any
    /// shard can answer `GET /api/v1/smpp/links`).
    pub bind_load: BindLoad,
    /// Rate limits (L1 config, link health, Redis client); each shard builds its stage from it.
    pub limits: Arc<crate::limit::Limits>,
    /// Contact policy engine (`None`: `[policy] enabled = false`); each shard builds its stage.
    pub policy: Option<Arc<crate::policy::PolicyEngine>>,
    /// Per-shard metric slots (each shard writes only its own), summed by `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// CDR writer: one CDR per message, emitted where the message becomes final.
    pub cdr: Arc<crate::cdr::CdrWriter>,
    /// Delivery callbacks: `notify` where a status change is acknowledged outward.
    pub callbacks: Arc<crate::callback::Callbacks>,
}

/// `(outstanding, queued)` submits of each bind of each link, refreshed every health tick.
#[derive(Debug, Default)]
pub struct BindLoad {
    links: BTreeMap<LinkId, Vec<(AtomicU64, AtomicU64)>>,
}

impl BindLoad {
    pub fn new(registry: &Registry) -> BindLoad {
        BindLoad {
            links: registry
                .links()
                .map(|l| {
                    let binds = (0..l.binds.get()).map(|_| Default::default()).collect();
                    (l.id, binds)
                })
                .collect(),
        }
    }

    pub fn publish(&self, link: LinkId, bind: u32, outstanding: usize, queued: usize) {
        if let Some(slot) = self.links.get(&link).and_then(|b| b.get(bind as usize)) {
            slot.0.store(outstanding as u64, Ordering::Relaxed);
            slot.1.store(queued as u64, Ordering::Relaxed);
        }
    }

    /// Per bind `(outstanding, queued)`.
    pub fn of(&self, link: LinkId) -> Vec<(u64, u64)> {
        self.links
            .get(&link)
            .map(|b| {
                b.iter()
                    .map(|(o, q)| (o.load(Ordering::Relaxed), q.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A send request after JSON decoding, before any check.
#[derive(Debug, Clone)]
pub struct SendInput {
    pub esme: u32,
    pub source: String,
    pub destination: String,
    pub message: String,
    pub transaction_id: Option<String>,
    pub encoding: Option<Encoding>,
    pub callback_url: Option<String>,
    pub strategy: Option<String>,
}

/// The outcome of a send. `error` is `None` for success; otherwise the message may still have
/// been accepted (and recorded with a final failure status).
#[derive(Debug, Clone)]
pub struct SendAnswer {
    pub error: Option<ApiError>,
    pub esme: u32,
    pub transaction_id: String,
    pub parts: usize,
    pub encoding: &'static str,
    pub message_ids: Vec<String>,
    pub status: Status,
    pub link: Option<u32>,
    pub duplicate: bool,
}

/// A message routed to a link, handed to the shard that owns a bind of it. `Send`.
#[derive(Debug)]
pub struct Job {
    pub key: MessageKey,
    pub esme: u32,
    pub link: LinkId,
    /// The pool `link` was picked from, if the esme routes to a pool (enables the one retry on
    /// another member when nothing was sent).
    pub pool: Option<PoolId>,
    pub source: String,
    pub destination: String,
    pub message: String,
    pub encoding: Option<Encoding>,
    pub callback_url: Option<String>,
    /// Crash resubmission of a record an earlier process stored but never handed to a session
    /// (see `shard::recovery`): `execute` skips `create` and claims the record with the
    /// hand-over mark instead (`changed == true` of `PartUpdate::Handed`), so one record is
    /// sent at most once however often it is offered.
    pub resubmit: bool,
    /// When `Pipeline::send` took the request (ingress, after decoding), for the ingress →
    /// submit_sm_resp latency histogram; `None` for a crash resubmission (its ingress was in
    /// an earlier process).
    pub received: Option<Instant>,
}

/// A job plus where to send its answer (a one-shot, bounded channel).
pub struct Handover {
    pub job: Job,
    pub reply: async_channel::Sender<Result<SendAnswer, ApiError>>,
}

/// Gateway error code on parts failed because the message was not sent: its hand-over mark
/// could not be written, or a crash resubmission did not match its record. Outside the SMPP
/// `command_status` range (< 0x0001_0000), next to `recovery::RECOVERY_IN_FLIGHT`.
pub const HAND_OVER_FAILED: u32 = 0x0001_0002;

/// Longest destination: SMPP address fields are C-strings of at most 21 octets.
const MAX_ADDR_LEN: usize = 20;
/// Longest alphanumeric sender id (GSM 03.40: 11 characters).
const MAX_ALPHA_SENDER_LEN: usize = 11;

/// One bind of a link run by this shard.
pub struct LocalBind {
    pub index: u32,
    pub handle: BindHandle,
    /// False for the receiver half of a `tx+rx` bind: it never carries submits.
    pub can_submit: bool,
}

/// This shard's concatenation-reference allocator: each shard owns a disjoint slice of the
/// reference space, so two cores never hand the same reference to one destination at once.
/// More shards than the width allows (over 128 for 8-bit references) cannot be disjoint: those
/// shards share a slice (`shard mod max`), which is logged once per shard at start.
fn shard_refs(width: RefWidth, seed: u64, shard: usize, shards: usize) -> RefAllocator {
    let max = (width.range() / 2) as usize;
    let (slot, slots) = if shards <= max {
        (shard, shards)
    } else {
        tracing::warn!(
            shard,
            shards,
            max,
            "more shards than concatenation-reference slices; some shards share a slice"
        );
        (shard % max, max)
    };
    RefAllocator::with_options(
        width,
        seed,
        segment::DEFAULT_REF_BUCKET_BITS,
        slot as u32,
        slots as u32,
    )
    .unwrap_or_else(|_| RefAllocator::new(width, seed))
}

/// Per-shard pipeline: plain `Rc`/`RefCell` state, no locks.
pub struct Pipeline {
    pub shard_id: usize,
    pub shared: Arc<Shared>,
    stages: Stages,
    router: RefCell<ShardRouter>,
    /// This shard's binds, by link.
    binds: BTreeMap<LinkId, Vec<LocalBind>>,
    /// Window credits of each bind, parallel to `binds` (same keys, same order): capacity
    /// the bind's `window`, at most `max_pending` messages waiting. See `submit_with_retry`.
    credits: BTreeMap<LinkId, Vec<Credits>>,
    /// Round-robin cursor over a link's local binds.
    bind_cursor: Cell<usize>,
    /// Concatenation references per segmentation mode (8-bit and 16-bit).
    refs8: RefCell<RefAllocator>,
    refs16: RefCell<RefAllocator>,
    txid_counter: Cell<u64>,
    txid_prefix: String,
}

impl Pipeline {
    pub fn new(
        shard_id: usize,
        shared: Arc<Shared>,
        stages: Stages,
        binds: BTreeMap<LinkId, Vec<LocalBind>>,
    ) -> Pipeline {
        let seed = fastrand::u64(..);
        // Every shard has an inbox, so this is the shard count.
        let shard_count = shared.inboxes.len().max(1);
        let router = ShardRouter::new(Arc::clone(&shared.registry));
        let credits = binds
            .iter()
            .map(|(&link, bs)| {
                let c = bs
                    .iter()
                    .map(|b| Credits::new(b.handle.config().window, b.handle.config().max_pending))
                    .collect();
                (link, c)
            })
            .collect();
        // Generated ids: instance, shard, start time and a counter: unique without coordination
        // (the start time separates restarts of the same instance).
        let txid_prefix = format!(
            "{}-{}-{:x}-",
            shared.config.server.instance_id,
            shard_id,
            state::unix_ms()
        );
        Pipeline {
            shard_id,
            stages,
            router: RefCell::new(router),
            binds,
            credits,
            bind_cursor: Cell::new(0),
            refs8: RefCell::new(shard_refs(RefWidth::Bits8, seed, shard_id, shard_count)),
            refs16: RefCell::new(shard_refs(
                RefWidth::Bits16,
                seed ^ 0x9E37_79B9,
                shard_id,
                shard_count,
            )),
            txid_counter: Cell::new(0),
            txid_prefix,
            shared,
        }
    }

    pub fn local_binds(&self) -> &BTreeMap<LinkId, Vec<LocalBind>> {
        &self.binds
    }

    fn next_transaction_id(&self) -> String {
        let n = self.txid_counter.get() + 1;
        self.txid_counter.set(n);
        let mut id = String::with_capacity(self.txid_prefix.len() + 12);
        id.push_str(&self.txid_prefix);
        id.push_str(itoa::Buffer::new().format(n));
        id
    }

    /// `POST /api/v1/sms/send`.
    pub async fn send(
        &self,
        input: SendInput,
        meta: &RequestMeta<'_>,
    ) -> Result<SendAnswer, ApiError> {
        let received = Instant::now();
        // 1. validate
        validate_address(&input.destination, "destination", false)?;
        validate_address(&input.source, "source", true)?;
        if input.message.is_empty() {
            return Err(ApiError::new(ErrorKind::EmptyMessage, "`message` is empty"));
        }
        if let Some(t) = &input.transaction_id {
            validate_transaction_id(t)?;
        }
        if let Some(url) = &input.callback_url
            && let Err(e) =
                crate::callback::validate_url(url, self.shared.config.callbacks.max_url_bytes)
        {
            return Err(ApiError::new(ErrorKind::InvalidCallbackUrl, e.to_string()));
        }
        let target = self
            .shared
            .registry
            .resolve(u64::from(input.esme))
            .map_err(route_error)?;
        // Part count for limits, with the target's segmentation when it is a link, else the
        // default layout (a pool's members may differ; limits are approximate there).
        let seg_cfg = match target {
            Target::Link(l) => self
                .shared
                .registry
                .link(l)
                .map(segment_config)
                .unwrap_or_default(),
            Target::Pool(_) => SegmentConfig::default(),
        };
        let info = text::check_text_len(&input.message, input.encoding, &seg_cfg)
            .map_err(segment_error)?;

        // 2-4. admission stages
        let mut admission = Admission {
            app_id: 0,
            esme: input.esme,
            destination: input.destination.clone(),
            text_len_chars: input.message.chars().count(),
            parts: info.parts,
            strategy: input.strategy.clone(),
            text_hash: crate::policy::text_hash(&input.message),
        };
        self.stages.admit(&mut admission, meta).await?;

        let transaction_id = match input.transaction_id {
            Some(t) => t,
            None => self.next_transaction_id(),
        };
        let key = MessageKey::new(admission.app_id, transaction_id);

        // 5. route (SWRR over globally healthy links: every shard keeps exact shares)
        let health = &self.shared.health;
        let link = self
            .router
            .borrow_mut()
            .pick(target, |l| health.is_up(l))
            .map_err(route_error)?;
        let job = Job {
            key,
            esme: input.esme,
            link,
            pool: match target {
                Target::Pool(p) => Some(p),
                Target::Link(_) => None,
            },
            source: input.source,
            destination: input.destination,
            message: input.message,
            encoding: input.encoding,
            callback_url: input.callback_url,
            resubmit: false,
            received: Some(received),
        };
        if self.has_submit_bind(link) {
            return self.execute(job).await;
        }
        self.hand_over(job).await
    }

    fn has_submit_bind(&self, link: LinkId) -> bool {
        self.binds.get(&link).is_some_and(|bs| {
            bs.iter()
                .any(|b| b.can_submit && matches!(b.handle.state(), BindState::Bound { .. }))
        })
    }

    /// Whether some bound local bind of `link` can still queue a submit (checked before a
    /// message is recorded, so overload answers 503 without leaving failed records behind).
    /// Messages waiting for window credits count as queued: `max_pending` bounds both.
    fn has_queue_room(&self, link: LinkId) -> bool {
        self.submit_binds(link).any(|(b, c)| {
            matches!(b.handle.state(), BindState::Bound { .. })
                && b.handle.load().1 + c.waiting() < b.handle.config().max_pending
        })
    }

    /// `link`'s local submit binds with their window credits.
    fn submit_binds(&self, link: LinkId) -> impl Iterator<Item = (&LocalBind, &Credits)> {
        let binds = self.binds.get(&link).map(Vec::as_slice).unwrap_or(&[]);
        let credits = self.credits.get(&link).map(Vec::as_slice).unwrap_or(&[]);
        binds.iter().zip(credits).filter(|(b, _)| b.can_submit)
    }

    /// Sends the job to a shard that runs a bind of its link, and waits for its answer.
    async fn hand_over(&self, job: Job) -> Result<SendAnswer, ApiError> {
        let link = job.link;
        // Shards running a bind of this link that is bound (per the shared health table).
        let registry = &self.shared.registry;
        let mut shards: Vec<usize> = self
            .shared
            .health
            .snapshot(link)
            .map(|snap| snap.binds)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter(|(_, h)| **h != crate::route::BindHealth::Down)
            .filter_map(|(i, _)| registry.shard_of_bind(link, i as u32))
            .filter(|&s| s != self.shard_id)
            .collect();
        shards.sort_unstable();
        shards.dedup();
        if shards.is_empty() {
            return Err(ApiError::new(
                ErrorKind::NoRoute,
                format!("no bound session of link {link}"),
            )
            .retry_after(1));
        }
        // Spread hand-overs over the candidate shards.
        let pick = shards[self.bind_cursor.get() % shards.len()];
        self.bind_cursor.set(self.bind_cursor.get().wrapping_add(1));
        let transaction_id = job.key.transaction_id.clone();
        let (reply_tx, reply_rx) = async_channel::bounded(1);
        let handover = Handover {
            job,
            reply: reply_tx,
        };
        match self.shared.inboxes[pick].try_send(handover) {
            Ok(()) => self.shared.metrics.shard(self.shard_id).handed_over.inc(),
            Err(async_channel::TrySendError::Full(_)) => {
                self.shared.metrics.shard(self.shard_id).handover_full.inc();
                return Err(
                    ApiError::new(ErrorKind::Overloaded, "cross-shard queue full").retry_after(1),
                );
            }
            Err(async_channel::TrySendError::Closed(_)) => {
                return Err(ApiError::new(
                    ErrorKind::ShuttingDown,
                    "gateway is shutting down",
                ));
            }
        }
        let timeout = self.shared.config.server.request_timeout;
        match monoio::time::timeout(timeout, reply_rx.recv()).await {
            Ok(Ok(r)) => r,
            // The other shard still owns the message; its fate is in the store under the
            // transaction_id (the client may look it up or retry with the same id).
            Err(_elapsed) => Err(ApiError::new(
                ErrorKind::Timeout,
                format!(
                    "no answer in time from the shard that owns the session; look up transaction_id {transaction_id}"
                ),
            )),
            // The other shard dropped the job (shutting down) before answering: it never created
            // a record, or answered. Tell the client to retry with the same transaction_id.
            Ok(Err(_)) => Err(ApiError::new(
                ErrorKind::ShuttingDown,
                "gateway is shutting down; retry",
            )),
        }
    }

    /// Runs a job on this shard: segment, persist, submit, persist, answer.
    pub async fn execute(&self, job: Job) -> Result<SendAnswer, ApiError> {
        let link_cfg = self
            .shared
            .registry
            .link(job.link)
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "routed to an unknown link"))?;
        // Checked before anything is recorded: a message this shard cannot send is refused
        // cleanly (retryable) instead of being recorded and failed.
        if !self.has_submit_bind(job.link) {
            return Err(ApiError::new(
                ErrorKind::NoRoute,
                format!("no bound session of link {} on this shard", job.link),
            )
            .retry_after(1));
        }
        if !self.has_queue_room(job.link) {
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!("every session queue of link {} is full", job.link),
            )
            .retry_after(1));
        }
        let seg_cfg = segment_config(link_cfg);
        let segmented = {
            let mut refs = match seg_cfg.mode {
                SegmentMode::Udh8 => self.refs8.borrow_mut(),
                _ => self.refs16.borrow_mut(),
            };
            segment::segment(
                &job.message,
                job.encoding,
                &seg_cfg,
                &mut refs,
                job.destination.as_bytes(),
            )
            .map_err(segment_error)?
        };
        let info = segmented.info;
        let now = state::unix_ms();

        // Persist accepted: the idempotency check and the "recorded before answered" invariant.
        let mut record = MessageRecord::new_accepted(
            job.key.clone(),
            job.esme,
            job.source.clone(),
            job.destination.clone(),
            state_encoding(info.encoding),
            job.message,
            segmented.parts.len() as u16,
            now,
        );
        record.link_id = Some(job.link.0);
        record.callback_url = job.callback_url;
        // With resubmission off (`[state] resubmit_max_age_s = 0`) the mark would buy nothing:
        // the record is created marked (a crash leaves it `unknown`, as before the mark
        // existed) and the extra awaited write is skipped.
        let mark_separately = !self.shared.config.state.resubmit_max_age.is_zero();
        if !mark_separately {
            record.handed_at_ms = Some(now);
        }
        // Fast path (the common case): a bound bind of the routed link has room in its window
        // right now. Its credits are taken before `create` and the record is created already
        // marked, which saves the separate awaited mark write. The guarantee is the same: the
        // mark is durable before any part reaches a session, and only the same few
        // microseconds separate it from the socket write as after a separate mark. The held
        // credits cover the create's commit as they cover the mark's on the slow path.
        let mut reserved: Option<(u32, CreditGuard)> = None;
        if mark_separately && !job.resubmit {
            let need = segmented.parts.len();
            let ready = self
                .submit_binds(job.link)
                .filter(|(b, _)| matches!(b.handle.state(), BindState::Bound { .. }))
                .find(|(_, c)| c.can_take_now(need));
            if let Some((bind, credits)) = ready
                && let Ok(acquire) = credits.acquire(need)
            {
                // Granted at once: nobody waits and enough credits are free.
                reserved = Some((bind.index, acquire.await));
                record.handed_at_ms = Some(now);
            }
        }
        // The submit outcome's callback event is written from this copy BEFORE the outcome
        // itself (see below); only a message with a callback URL pays for the copy.
        let mut event_base =
            (!job.resubmit && self.shared.callbacks.wants(&record)).then(|| record.clone());
        // A resubmission's record is stored already (by the process that crashed).
        if !job.resubmit {
            match self.shared.store.create(record).await {
                Ok(CreateOutcome::Created(_)) => {
                    self.shared.metrics.shard(self.shard_id).accepted.inc();
                }
                Ok(CreateOutcome::Exists(existing)) => {
                    return Ok(answer_from_record(&existing, true));
                }
                Err(e) => return Err(state_error(e)),
            }
        }

        let template = submit_template(link_cfg, &job.source, &job.destination)?;
        // A copy of the parts only when a pool retry is possible (nothing extra otherwise).
        let spare_parts = job.pool.map(|_| segmented.parts.clone());
        let parts: Vec<SubmitSm> = segmented
            .parts
            .into_iter()
            .map(|p| p.to_submit_sm(&template))
            .collect();
        let part_count = parts.len();

        // Durable before any part can reach a session, written once the message holds room
        // in the bind's window: see `mark_handed` and `submit_with_retry`. A resubmission
        // always claims its record with it, whatever the setting.
        let mut mark = if (mark_separately && reserved.is_none()) || job.resubmit {
            Mark::Pending {
                resubmit: job.resubmit,
                part_count,
            }
        } else {
            Mark::Done
        };

        let submit_started = Instant::now();
        let mut sent_link = job.link;
        let mut link_cfg = link_cfg;
        let mut outcome = match self
            .submit_with_retry(&job.key, &mut mark, job.link, parts, reserved)
            .await
        {
            Attempt::Outcome(o) => o,
            Attempt::Finished(answer) => return answer,
        };
        // Nothing was written on the routed member (binds lost, queues full): the message is
        // certainly not at the SMSC, so one more try on another healthy member of the pool
        // with a local bind is safe. Bounded: one other member, never after an Unknown part.
        if let (Some(pool), Some(spare_parts)) = (job.pool, spare_parts)
            && nothing_sent(&outcome)
            && let Some(other) = self.other_pool_member(pool, job.link, &seg_cfg)
            && let Some(other_cfg) = self.shared.registry.link(other)
            && let Ok(other_template) = submit_template(other_cfg, &job.source, &job.destination)
        {
            self.shared
                .metrics
                .shard(self.shard_id)
                .retried_other_member
                .inc();
            let parts = spare_parts
                .into_iter()
                .map(|p| p.to_submit_sm(&other_template))
                .collect();
            outcome = match self
                .submit_with_retry(&job.key, &mut mark, other, parts, None)
                .await
            {
                Attempt::Outcome(o) => o,
                Attempt::Finished(answer) => return answer,
            };
            sent_link = other;
            link_cfg = other_cfg;
        }
        // A resubmission that never got credits (or a bind) never claimed its record: leave
        // it untouched for recovery to offer again (it retries `Overloaded`/`NoRoute`);
        // writing `failed` here could overwrite a concurrent claim's parts.
        if job.resubmit
            && matches!(mark, Mark::Pending { .. })
            && let Err(e) = outcome
        {
            return Err(e);
        }
        let m = self.shared.metrics.shard(self.shard_id);
        m.parts_submitted.add(part_count as u64);
        if outcome.is_ok() {
            m.submit_resp.observe(submit_started.elapsed());
            if let Some(t) = job.received {
                m.ingress_to_submit_resp.observe(t.elapsed());
            }
        }
        let formats = receipt::IdFormats {
            submit_resp: receipt_id_format(link_cfg.resp_id_format),
            receipt: receipt_id_format(link_cfg.dlr_id_format),
        };
        let mut updates = Vec::with_capacity(part_count);
        let mut message_ids = Vec::with_capacity(part_count);
        let mut error: Option<ApiError> = None;
        match outcome {
            Ok(outcomes) => {
                for (i, o) in outcomes.into_iter().enumerate() {
                    let index = i as u16;
                    match o {
                        PartOutcome::Accepted { message_id } => {
                            updates.push(PartUpdate::Submitted {
                                index,
                                link_id: sent_link.0,
                                smsc_message_id: formats.resp_key(&message_id),
                            });
                            message_ids.push(message_id);
                        }
                        PartOutcome::Rejected { status } => {
                            updates.push(PartUpdate::Final {
                                index,
                                status: Status::Rejected,
                                error_code: Some(status),
                            });
                            error.get_or_insert_with(|| {
                                ApiError::new(
                                    ErrorKind::SubmitRejected,
                                    format!(
                                        "SMSC rejected part {} with command_status 0x{status:08X}",
                                        i + 1
                                    ),
                                )
                            });
                        }
                        PartOutcome::Unknown => {
                            updates.push(PartUpdate::Final {
                                index,
                                status: Status::Unknown,
                                error_code: None,
                            });
                            error.get_or_insert_with(|| {
                                ApiError::new(
                                    ErrorKind::Timeout,
                                    "no answer from the SMSC; the message may have been delivered and is not re-sent",
                                )
                            });
                        }
                        PartOutcome::NotSent => {
                            updates.push(PartUpdate::Final {
                                index,
                                status: Status::Failed,
                                error_code: None,
                            });
                            error.get_or_insert_with(|| {
                                ApiError::new(
                                    ErrorKind::SubmitFailed,
                                    "the session was lost before this message was sent",
                                )
                                .retry_after(1)
                            });
                        }
                    }
                }
            }
            Err(e) => {
                updates.push(PartUpdate::AllPending {
                    status: Status::Failed,
                    error_code: None,
                });
                error = Some(e);
            }
        }
        let update_ms = state::unix_ms();
        // Callback event first, durable before the state records the outcome: a crash between
        // the two writes then repeats or precedes an event, never loses it.
        let mut notified = false;
        if let Some(mut expected) = event_base.take() {
            for u in &updates {
                expected.apply(u, update_ms);
            }
            if let Some(durable) = self.shared.callbacks.notify(&expected) {
                notified = crate::callback::wait_on_shard(durable).await;
            }
        }
        let stored = self
            .shared
            .store
            .update(job.key.clone(), updates, update_ms)
            .await;
        let status = match stored {
            Ok(UpdateOutcome::Updated { record, changed }) => {
                // Final parts never change, so a changed record that is final now became
                // final with this update: its one CDR (a later receipt answers Duplicate).
                if changed && record.status.is_final() {
                    self.shared.cdr.emit(
                        &record,
                        &self.shared.config.server.instance_id,
                        state::unix_ms(),
                    );
                }
                // Not written above (a resubmission, or the early write was refused): now,
                // still before the client hears the outcome. No URL: nothing awaited.
                if changed
                    && !notified
                    && let Some(durable) = self.shared.callbacks.notify(&record)
                {
                    crate::callback::wait_on_shard(durable).await;
                }
                record.status
            }
            Ok(UpdateOutcome::NotFound) | Err(_) => {
                // The record exists (create succeeded) but the submit outcome could not be
                // written: receipts for it will not correlate. Count and log; the answer still
                // tells the truth about the submission.
                self.shared
                    .metrics
                    .shard(self.shard_id)
                    .state_write_failed_after_submit
                    .inc();
                tracing::error!(transaction_id = %job.key.transaction_id, "state write after submit failed");
                if error.is_none() {
                    Status::Submitted
                } else {
                    Status::Failed
                }
            }
        };
        let m = self.shared.metrics.shard(self.shard_id);
        if error.is_none() {
            m.submitted.inc();
        } else {
            m.failed.inc();
        }
        Ok(SendAnswer {
            error,
            esme: job.esme,
            transaction_id: job.key.transaction_id,
            parts: part_count,
            encoding: info.encoding.name(),
            message_ids,
            status,
            link: Some(sent_link.0),
            duplicate: false,
        })
    }

    /// Writes the hand-over mark ([`PartUpdate::Handed`]) and waits until it is durable, so
    /// that crash recovery can tell a message never handed to a session (no mark: safe to
    /// resubmit) from one whose parts may be on the wire (mark: unknown, never resent). One
    /// extra awaited write per message; it joins the store's write batches like the others.
    ///
    /// Called only once the message holds window credits of the bind it goes to
    /// (`gated_submit`), right before the parts are given to the session: a message waiting
    /// for room in a full window is not marked, so a crash then resubmits it. What a crash
    /// can still leave marked and unsent: the instant between this write and the socket
    /// write, the parts of a message beyond `window` (they queue inside the session), and
    /// parts re-queued after a throttling answer.
    ///
    /// For a crash resubmission the mark is also the claim: only the update that sets it
    /// (`changed == true`) may send, and only if every part is still `Accepted` and the text
    /// segments into as many parts as were recorded. `Ok(Some(answer))` means "do not send":
    /// someone claimed it before (the stored outcome is the answer).
    ///
    /// If the mark cannot be written nothing is sent: the message is recorded `Failed` with
    /// [`HAND_OVER_FAILED`] when the store takes that write (best effort; otherwise a later
    /// start finds it unmarked and resubmits it, which is still at most once).
    async fn mark_handed(
        &self,
        key: &MessageKey,
        resubmit: bool,
        part_count: usize,
    ) -> Result<Option<SendAnswer>, ApiError> {
        let store = &self.shared.store;
        match store
            .update(key.clone(), vec![PartUpdate::Handed], state::unix_ms())
            .await
        {
            Ok(UpdateOutcome::Updated {
                changed: true,
                record,
            }) => {
                if resubmit
                    && (record.parts.len() != part_count
                        || record.parts.iter().any(|p| p.status != Status::Accepted))
                {
                    // Configuration changed the segmentation since the crash (or the record
                    // is not the untouched one recovery saw): sending would not match the
                    // record part for part. Nothing was sent; say so durably.
                    self.fail_unsent(key, HAND_OVER_FAILED).await;
                    return Err(ApiError::new(
                        ErrorKind::SubmitFailed,
                        format!(
                            "resubmission refused: the text now segments into {part_count} parts, {} recorded",
                            record.parts.len()
                        ),
                    ));
                }
                Ok(None)
            }
            // Already marked (or no longer accepted): a resubmission lost the claim.
            Ok(UpdateOutcome::Updated {
                changed: false,
                record,
            }) if resubmit => Ok(Some(answer_from_record(&record, true))),
            // A record this task created a moment ago and nobody else sends: cannot be
            // marked or final already, except through a racing recovery; go on.
            Ok(UpdateOutcome::Updated { .. }) => Ok(None),
            Ok(UpdateOutcome::NotFound) => Err(ApiError::new(
                ErrorKind::UnknownTransaction,
                "the message record disappeared before it was sent",
            )),
            Err(e) => {
                if !resubmit {
                    self.fail_unsent(key, HAND_OVER_FAILED).await;
                }
                Err(state_error(e))
            }
        }
    }

    /// Best effort: every pending part `Failed` with `code` (the message was not sent).
    async fn fail_unsent(&self, key: &MessageKey, code: u32) {
        let r = self
            .shared
            .store
            .update(
                key.clone(),
                vec![PartUpdate::AllPending {
                    status: Status::Failed,
                    error_code: Some(code),
                }],
                state::unix_ms(),
            )
            .await;
        match r {
            Ok(UpdateOutcome::Updated {
                changed: true,
                record,
            }) if record.status.is_final() => {
                self.shared.cdr.emit(
                    &record,
                    &self.shared.config.server.instance_id,
                    state::unix_ms(),
                );
                if let Some(durable) = self.shared.callbacks.notify(&record) {
                    durable.await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(transaction_id = %key.transaction_id, error = %e, "could not record an unsent message as failed");
            }
        }
    }

    /// Another member of `pool` (not `except`) that is globally up, has a bound local submit
    /// bind with queue room, and segments like `seg_cfg` (so the already-numbered parts fit it).
    fn other_pool_member(
        &self,
        pool: PoolId,
        except: LinkId,
        seg_cfg: &SegmentConfig,
    ) -> Option<LinkId> {
        let registry = &self.shared.registry;
        registry
            .pool(pool)?
            .members
            .iter()
            .map(|m| m.link)
            .find(|&l| {
                l != except
                    && self.shared.health.is_up(l)
                    && self.has_queue_room(l)
                    && registry.link(l).is_some_and(|c| {
                        c.enabled && c.can_submit() && segment_config(c) == *seg_cfg
                    })
            })
    }

    /// Submits all parts on one local bind; if none of them was written (bind lost, queue full,
    /// no window credits in time) tries once more on another bound local bind of the same link.
    ///
    /// Window gate: before anything is handed to a session the message takes
    /// `min(parts, window)` credits of the chosen bind (FIFO, bounded by `max_pending`
    /// waiters and by the link's `resp_timeout`), and only then is the hand-over mark written
    /// (`mark`, once per message; a retry elsewhere reuses it: the process is alive, so no
    /// duplicate can come of it). The credits are held until the session answered (or failed)
    /// every part. So the session's own queue stays (nearly) empty, and a message waiting for
    /// room is unmarked: after a crash it is resubmitted, not `unknown`. A message that got no
    /// credits in time answers `Overloaded` like a full queue, with nothing written.
    async fn submit_with_retry(
        &self,
        key: &MessageKey,
        mark: &mut Mark,
        link: LinkId,
        parts: Vec<SubmitSm>,
        reserved: Option<(u32, CreditGuard)>,
    ) -> Attempt {
        let bound: Vec<(&LocalBind, &Credits)> = self
            .submit_binds(link)
            .filter(|(b, _)| matches!(b.handle.state(), BindState::Bound { .. }))
            .collect();
        if bound.is_empty() {
            return Attempt::Outcome(Err(ApiError::new(
                ErrorKind::NoRoute,
                format!("no bound session of link {link} on this shard"),
            )
            .retry_after(1)));
        }
        let start = self.bind_cursor.get();
        self.bind_cursor.set(start.wrapping_add(1));
        // Round robin, but a bind with room in its window right now goes before one where
        // the message would wait behind others.
        let need = parts.len();
        // Credits taken before `create` (fast path) decide the bind, if it is still bound.
        let reserved_at = reserved
            .as_ref()
            .and_then(|(index, _)| bound.iter().position(|(b, _)| b.index == *index));
        let pre = reserved_at.and(reserved.map(|(_, guard)| guard));
        let pick = reserved_at.unwrap_or_else(|| {
            (0..bound.len())
                .map(|k| (start + k) % bound.len())
                .find(|&i| bound[i].1.can_take_now(need))
                .unwrap_or(start % bound.len())
        });
        let first = bound[pick];
        let second = (bound.len() > 1).then(|| bound[(pick + 1) % bound.len()]);
        // Keep a copy only when a second attempt is possible.
        let spare = second.map(|_| parts.clone());
        let result = match self.gated_submit(key, mark, first, parts, pre).await {
            Ok(r) => r,
            Err(finished) => return finished,
        };
        if nothing_sent(&result)
            && let (Some(other), Some(parts)) = (second, spare)
        {
            self.shared
                .metrics
                .shard(self.shard_id)
                .retried_other_bind
                .inc();
            return match self.gated_submit(key, mark, other, parts, None).await {
                Ok(r) => Attempt::Outcome(r),
                Err(finished) => finished,
            };
        }
        Attempt::Outcome(result)
    }

    /// One attempt on one bind: credits, then the mark (if still due), then the submit; the
    /// credits are given back when the submit resolved. `Err` only for `Attempt::Finished`.
    async fn gated_submit(
        &self,
        key: &MessageKey,
        mark: &mut Mark,
        (bind, credits): (&LocalBind, &Credits),
        parts: Vec<SubmitSm>,
        held: Option<CreditGuard>,
    ) -> Result<Result<Vec<PartOutcome>, ApiError>, Attempt> {
        let guard = match held {
            Some(g) => g,
            None => {
                match take_credits(credits, bind.handle.config().resp_timeout, parts.len()).await {
                    Ok(g) => g,
                    Err(e) => return Ok(Err(e)),
                }
            }
        };
        if let Mark::Pending {
            resubmit,
            part_count,
        } = *mark
        {
            match self.mark_handed(key, resubmit, part_count).await {
                Ok(None) => *mark = Mark::Done,
                Ok(Some(answer)) => return Err(Attempt::Finished(Ok(answer))),
                Err(e) => return Err(Attempt::Finished(Err(e))),
            }
        }
        let result = submit_result(bind.handle.submit(parts).await);
        drop(guard);
        Ok(result)
    }

    /// Authentication alone (no target): the caller's app id (0 with authentication off).
    /// REST runs it before parsing a body so that an unauthenticated caller learns nothing.
    pub async fn authenticate(&self, meta: &RequestMeta<'_>) -> Result<u64, ApiError> {
        let mut admission = Admission {
            app_id: 0,
            esme: 0,
            destination: String::new(),
            text_len_chars: 0,
            parts: 0,
            strategy: None,
            text_hash: 0,
        };
        self.stages.authenticate(&mut admission, meta).await?;
        Ok(admission.app_id)
    }

    /// `GET /api/v1/sms/{transaction_id}`.
    pub async fn status(
        &self,
        transaction_id: &str,
        meta: &RequestMeta<'_>,
    ) -> Result<MessageRecord, ApiError> {
        validate_transaction_id(transaction_id)?;
        let mut admission = Admission {
            app_id: 0,
            esme: 0,
            destination: String::new(),
            text_len_chars: 0,
            parts: 0,
            strategy: None,
            text_hash: 0,
        };
        self.stages.authenticate(&mut admission, meta).await?;
        match self
            .shared
            .store
            .get(MessageKey::new(admission.app_id, transaction_id))
            .await
        {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ApiError::new(
                ErrorKind::UnknownTransaction,
                "no message with this transaction_id",
            )),
            Err(e) => Err(state_error(e)),
        }
    }

    /// `POST /api/v1/sms/check-text-len`: with `esme`, that link's (or the default) layout.
    pub fn check_text_len(
        &self,
        message: &str,
        encoding: Option<Encoding>,
        esme: Option<u32>,
    ) -> Result<TextInfo, ApiError> {
        if message.is_empty() {
            return Err(ApiError::new(ErrorKind::EmptyMessage, "`message` is empty"));
        }
        let cfg = match esme {
            None => SegmentConfig::default(),
            Some(e) => match self
                .shared
                .registry
                .resolve(u64::from(e))
                .map_err(route_error)?
            {
                Target::Link(l) => self
                    .shared
                    .registry
                    .link(l)
                    .map(segment_config)
                    .unwrap_or_default(),
                Target::Pool(_) => SegmentConfig::default(),
            },
        };
        text::check_text_len(message, encoding, &cfg).map_err(segment_error)
    }

    /// `GET /api/v1/smpp/links`: every link's and pool's state, from the shared health table.
    pub fn links_report(&self) -> serde_json::Value {
        let registry = &self.shared.registry;
        let health = &self.shared.health;
        let now = Instant::now();
        let links: Vec<serde_json::Value> = registry
            .links()
            .map(|l| {
                let snap = health.snapshot(l.id);
                let (rate, burst) = health.effective_rate(l.id).unwrap_or((0, 0));
                let binds: Vec<&'static str> = snap
                    .as_ref()
                    .map(|s| s.binds.iter().map(|b| bind_health_name(*b)).collect())
                    .unwrap_or_default();
                let up = binds.iter().filter(|b| **b == "up").count();
                let load = self.shared.bind_load.of(l.id);
                let outstanding: u64 = load.iter().map(|(o, _)| o).sum();
                let queued: u64 = load.iter().map(|(_, q)| q).sum();
                serde_json::json!({
                    "id": l.id.0,
                    "host": l.host,
                    "port": l.port,
                    "system_id": l.system_id,
                    "enabled": l.enabled,
                    "state": if health.is_up(l.id) { "connected" } else { "disconnected" },
                    "since_s": snap.as_ref().map(|s| now.saturating_duration_since(s.since).as_secs()),
                    "transitions": snap.as_ref().map(|s| s.transitions),
                    "binds_configured": l.binds.get(),
                    "binds_up": up,
                    "binds": binds,
                    "window": l.window.get(),
                    "window_used": outstanding,
                    "queued": queued,
                    "binds_window_used": load.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
                    "esme_rate": rate,
                    "esme_rate_burst": burst,
                    "configured_rate": l.esme_rate.get(),
                })
            })
            .collect();
        let pools: Vec<serde_json::Value> = registry
            .pools()
            .map(|p| {
                let members: Vec<serde_json::Value> = p
                    .members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "link": m.link.0,
                            "weight": m.weight.get(),
                            "state": if health.is_up(m.link) { "connected" } else { "disconnected" },
                        })
                    })
                    .collect();
                let healthy = p.members.iter().filter(|m| health.is_up(m.link)).count();
                serde_json::json!({
                    "id": p.id.0,
                    "name": p.name,
                    "members": members,
                    "healthy_members": healthy,
                    "capacity": health.pool_capacity(p.id).unwrap_or(0),
                    "burst": health.pool_burst(p.id).unwrap_or(0),
                })
            })
            .collect();
        serde_json::json!({ "links": links, "pools": pools })
    }
}

fn bind_health_name(b: crate::route::BindHealth) -> &'static str {
    match b {
        crate::route::BindHealth::Down => "down",
        crate::route::BindHealth::Bound => "bound",
        crate::route::BindHealth::Up => "up",
    }
}

fn submit_result(r: Result<Vec<PartOutcome>, SubmitError>) -> Result<Vec<PartOutcome>, ApiError> {
    r.map_err(|e| match e {
        SubmitError::QueueFull => {
            ApiError::new(ErrorKind::Overloaded, "session queue full").retry_after(1)
        }
        SubmitError::NotBound | SubmitError::Closed => {
            ApiError::new(ErrorKind::NoRoute, "session lost before sending").retry_after(1)
        }
        SubmitError::Invalid { part, reason } => ApiError::new(
            ErrorKind::InvalidField,
            format!("part {} cannot be encoded: {reason}", part + 1),
        ),
    })
}

/// The hand-over mark of one message: still to write before its first part reaches a
/// session, or written (or not needed: `[state] resubmit_max_age_s = 0` creates records
/// marked).
#[derive(Clone, Copy)]
enum Mark {
    Pending { resubmit: bool, part_count: usize },
    Done,
}

/// What one submit attempt (`submit_with_retry`) came to.
enum Attempt {
    /// The submit's outcome, or why nothing was sent (`NoRoute`/`Overloaded`: certainly not
    /// written to the SMSC).
    Outcome(Result<Vec<PartOutcome>, ApiError>),
    /// The mark decided: a resubmission lost its claim (the stored outcome), or the mark
    /// could not be written (recorded by `mark_handed`). Nothing was sent; answer this.
    Finished(Result<SendAnswer, ApiError>),
}

/// Waits (FIFO, at most `wait`) for `n` window credits; refused at once when `max_pending`
/// messages wait already. Either refusal is the answer a full session queue gives.
async fn take_credits(
    credits: &Credits,
    wait: Duration,
    n: usize,
) -> Result<CreditGuard, ApiError> {
    let full = |what: &str| {
        ApiError::new(
            ErrorKind::Overloaded,
            format!("session queue full ({what})"),
        )
        .retry_after(1)
    };
    let acquire = credits
        .acquire(n)
        .map_err(|_| full("too many messages waiting for window credits"))?;
    monoio::time::timeout(wait, acquire)
        .await
        .map_err(|_| full("no room in the session window in time"))
}

/// Whether a submit attempt certainly wrote nothing to the SMSC (safe to try elsewhere).
fn nothing_sent(r: &Result<Vec<PartOutcome>, ApiError>) -> bool {
    match r {
        Ok(outcomes) => outcomes.iter().all(|o| *o == PartOutcome::NotSent),
        Err(e) => matches!(e.kind, ErrorKind::NoRoute | ErrorKind::Overloaded),
    }
}

/// What a duplicate `transaction_id` gets: the stored state, nothing re-sent.
pub fn answer_from_record(r: &MessageRecord, duplicate: bool) -> SendAnswer {
    let message_ids = r
        .parts
        .iter()
        .filter_map(|p| p.smsc_message_id.clone())
        .collect();
    let failed = matches!(
        r.status,
        Status::Failed | Status::Rejected | Status::Unknown
    );
    SendAnswer {
        error: failed.then(|| {
            ApiError::new(
                ErrorKind::DuplicateTransaction,
                format!(
                    "transaction_id already used; the message is {}",
                    r.status.as_str()
                ),
            )
        }),
        esme: r.esme,
        transaction_id: r.transaction_id.clone(),
        parts: r.parts.len(),
        encoding: match r.encoding {
            state::Encoding::Gsm7 => "gsm7",
            state::Encoding::Latin1 => "latin1",
            state::Encoding::Ucs2 => "ucs2",
        },
        message_ids,
        status: r.status,
        link: r.link_id,
        duplicate,
    }
}

pub fn segment_config(link: &LinkConfig) -> SegmentConfig {
    let mode = match link.segmentation {
        Segmentation::Udh8 => SegmentMode::Udh8,
        Segmentation::Udh16 => SegmentMode::Udh16,
        Segmentation::Sar => SegmentMode::Sar,
        Segmentation::Payload => SegmentMode::MessagePayload,
    };
    SegmentConfig {
        mode,
        max_parts: link.max_parts,
        ..SegmentConfig::default()
    }
}

pub fn receipt_id_format(f: ConfigIdFormat) -> IdFormat {
    match f {
        ConfigIdFormat::AsIs => IdFormat::AsIs,
        ConfigIdFormat::Hex => IdFormat::Hex,
        ConfigIdFormat::Decimal => IdFormat::Decimal,
    }
}

fn state_encoding(e: Encoding) -> state::Encoding {
    match e {
        Encoding::Gsm7 => state::Encoding::Gsm7,
        Encoding::Latin1 => state::Encoding::Latin1,
        Encoding::Ucs2 => state::Encoding::Ucs2,
    }
}

/// The fixed fields of every part of one message on `link`.
fn submit_template(
    link: &LinkConfig,
    source: &str,
    destination: &str,
) -> Result<SubmitSm, ApiError> {
    let bad = |field: &str| {
        ApiError::new(
            ErrorKind::InvalidAddress,
            format!("`{field}` does not fit an SMPP address"),
        )
    };
    let alphanumeric = !is_numeric_address(source);
    let (source_ton, source_npi) = if alphanumeric {
        (5, 0)
    } else {
        (link.source_ton, link.source_npi)
    };
    let dest = destination.strip_prefix('+').unwrap_or(destination);
    let src = if alphanumeric {
        source
    } else {
        source.strip_prefix('+').unwrap_or(source)
    };
    Ok(SubmitSm {
        source_addr_ton: source_ton,
        source_addr_npi: source_npi,
        source_addr: Addr21::new(src.as_bytes()).map_err(|_| bad("source"))?,
        dest_addr_ton: link.dest_ton,
        dest_addr_npi: link.dest_npi,
        destination_addr: Addr21::new(dest.as_bytes()).map_err(|_| bad("destination"))?,
        registered_delivery: link.registered_delivery,
        ..SubmitSm::default()
    })
}

fn is_numeric_address(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Destination: `+`? then 1..=20 digits. Source: that, or an alphanumeric sender id of
/// 1..=11 printable ASCII characters.
pub fn validate_address(
    value: &str,
    field: &'static str,
    allow_alpha: bool,
) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::new(
            ErrorKind::MissingField,
            format!("`{field}` is empty"),
        ));
    }
    let digits = value.strip_prefix('+').unwrap_or(value);
    if is_numeric_address(value) && digits.len() <= MAX_ADDR_LEN {
        return Ok(());
    }
    if allow_alpha
        && value.len() <= MAX_ALPHA_SENDER_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-' || b == b'.')
        && value.bytes().any(|b| b.is_ascii_alphanumeric())
    {
        return Ok(());
    }
    let why = if allow_alpha {
        "a number of at most 20 digits (optionally with a leading +) or an alphanumeric sender id of at most 11 characters"
    } else {
        "a number of at most 20 digits, optionally with a leading +"
    };
    Err(ApiError::new(
        ErrorKind::InvalidAddress,
        format!("`{field}` must be {why}"),
    ))
}

fn validate_transaction_id(t: &str) -> Result<(), ApiError> {
    if t.is_empty()
        || t.len() > state::model::MAX_TRANSACTION_ID_LEN
        || t.chars().any(char::is_control)
    {
        return Err(ApiError::new(
            ErrorKind::InvalidField,
            format!(
                "`transaction_id` must be 1..={} bytes without control characters",
                state::model::MAX_TRANSACTION_ID_LEN
            ),
        ));
    }
    Ok(())
}

fn route_error(e: RouteError) -> ApiError {
    match e {
        RouteError::UnknownEsme(id) => ApiError::new(
            ErrorKind::UnknownEsme,
            format!("no link or pool with id {id}"),
        ),
        RouteError::LinkDisabled(_) | RouteError::ReceiveOnly(_) => {
            ApiError::new(ErrorKind::NoRoute, e.to_string())
        }
        RouteError::LinkDown(_) | RouteError::NoHealthyMember(_) => {
            ApiError::new(ErrorKind::NoRoute, e.to_string()).retry_after(1)
        }
    }
}

fn segment_error(e: SegmentError) -> ApiError {
    match e {
        SegmentError::TooManyParts { .. } | SegmentError::PayloadTooLong { .. } => {
            ApiError::new(ErrorKind::TooManyParts, e.to_string())
        }
        SegmentError::Text(t) => ApiError::new(ErrorKind::InvalidField, t.to_string()),
    }
}

fn state_error(e: StateError) -> ApiError {
    if e.is_unavailable() {
        ApiError::new(ErrorKind::StateUnavailable, e.to_string()).retry_after(1)
    } else {
        match e {
            StateError::Invalid(m) => ApiError::new(ErrorKind::InvalidField, m),
            other => ApiError::new(ErrorKind::Internal, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(validate_address("+4912345", "destination", false).is_ok());
        assert!(validate_address("12345678901234567890", "destination", false).is_ok());
        assert_eq!(
            validate_address("123456789012345678901", "destination", false)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidAddress
        );
        assert_eq!(
            validate_address("12a", "destination", false)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidAddress
        );
        assert_eq!(
            validate_address("+", "destination", false)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidAddress
        );
        assert!(validate_address("MyShop", "source", true).is_ok());
        assert_eq!(
            validate_address("MyShopIsTooLong", "source", true)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidAddress
        );
        assert_eq!(
            validate_address("", "source", true).unwrap_err().kind,
            ErrorKind::MissingField
        );
    }

    #[test]
    fn transaction_ids() {
        assert!(validate_transaction_id("abc-1").is_ok());
        assert!(validate_transaction_id("").is_err());
        assert!(validate_transaction_id("a\nb").is_err());
        assert!(validate_transaction_id(&"x".repeat(200)).is_err());
    }
    fn link_config(extra: &str) -> LinkConfig {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("smsgw.toml");
        let b = dir.path().join("rules.toml");
        std::fs::write(&a, "").unwrap();
        std::fs::write(
            &b,
            format!(
                "[links.7]\nhost = \"127.0.0.1\"\nsystem_id = \"x\"\npassword = \"p\"\nesme_rate = 10\n{extra}\n"
            ),
        )
        .unwrap();
        let cfg = crate::config::load_with_env(&a, &b, &|_| None).unwrap();
        cfg.rules.links[&LinkId(7)].clone()
    }

    #[test]
    fn submit_template_addresses() {
        let link = link_config("source_ton = 1\nsource_npi = 1\nregistered_delivery = 1");
        let sm = submit_template(&link, "MyShop", "+4915112345678").unwrap();
        // Alphanumeric sender: TON 5 / NPI 0 whatever the link says; '+' never sent.
        assert_eq!((sm.source_addr_ton, sm.source_addr_npi), (5, 0));
        assert_eq!(sm.source_addr.as_bytes(), b"MyShop");
        assert_eq!(sm.destination_addr.as_bytes(), b"4915112345678");
        assert_eq!((sm.dest_addr_ton, sm.dest_addr_npi), (1, 1));
        assert_eq!(sm.registered_delivery, 1);
        let sm = submit_template(&link, "+4930123", "1").unwrap();
        assert_eq!((sm.source_addr_ton, sm.source_addr_npi), (1, 1));
        assert_eq!(sm.source_addr.as_bytes(), b"4930123");
    }

    #[test]
    fn segment_config_follows_the_link() {
        let link = link_config("segmentation = \"sar\"\nmax_parts = 3");
        let cfg = segment_config(&link);
        assert_eq!(cfg.mode, SegmentMode::Sar);
        assert_eq!(cfg.max_parts.get(), 3);
        let e = text::check_text_len(&"a".repeat(160 * 3 + 1), None, &cfg).map_err(segment_error);
        assert_eq!(e.unwrap_err().kind, ErrorKind::TooManyParts);
    }
}
