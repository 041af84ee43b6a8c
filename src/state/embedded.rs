//! Embedded state backend on fjall 3 (an LSM key-value store), the default.
//!
//! # Key layout
//!
//! Three fjall keyspaces (separate LSM trees, written atomically together by one batch):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `msg`  | `app_id` u64 BE ++ `transaction_id` | version byte, `expires_at_ms` u64 BE, record ([`super::codec`]) |
//! | `smsc` | `link_id` u32 BE ++ normalised SMSC id | `expires_at_ms` u64 BE, part u16 BE, `msg` key |
//! | `open` | `expires_at_ms` u64 BE ++ `msg` key | empty |
//!
//! `smsc` is the receipt index, written in the same batch as the `Submitted` part. A later
//! submission that gets the same SMSC id on the same link within the TTL overwrites the entry
//! (latest wins). `open` holds exactly the non-final records, ordered by expiry: the crash
//! recovery scan walks it, and the expiry sweep takes its head.
//!
//! # Writes: one writer thread, batched
//!
//! Every mutation is an op sent over a bounded queue (`queue_capacity`) to one dedicated writer
//! thread; enqueueing never blocks: a full queue fails the op at once with
//! [`StateError::Overloaded`]. The writer takes what is queued, up to `max_batch` ops, lingering
//! at most `max_batch_delay_us` for more (0: never; under load batches fill by themselves
//! while the previous commit runs). It applies the ops in order to an in-memory overlay (so two
//! ops on one record in one batch see each other), writes each touched key once into one fjall
//! write batch, commits it, and only then completes every op's future. A single writer makes
//! the read-modify-write of `create` (insert-if-absent), `update` and `apply_receipt` atomic
//! without locks or transactions.
//!
//! # Durability (`fsync`)
//!
//! * `none`: the batch is written to the journal and flushed to the OS page cache before the
//!   futures complete. A process crash (SIGKILL, panic, OOM kill) loses nothing acknowledged; a
//!   kernel crash or power loss may lose the last few seconds.
//! * `batch`: additionally `fdatasync` of the journal once per batch before completing: an
//!   acknowledged write survives power loss. The cost is amortised over the batch.
//!
//! # Reads
//!
//! `get`, `find_by_smsc_id` and `scan_non_final` read fjall directly on the calling thread
//! (fjall reads are thread-safe and lock-free against the writer). They hit the memtable or the
//! block cache for the recent, hot records almost always, and bloom filters make misses (the
//! idempotency check of a new id) cheap; a cold read of an old record may do one disk read.
//! That is cheaper than a hop to a reader thread (~40 µs on this machine kind), so reads stay
//! inline. They see committed writes only (not ops still queued).
//!
//! # TTL and expiry
//!
//! fjall has no TTL. Each record stores `expires_at_ms = now + ttl` at creation (never
//! extended). (a) Every read treats a record, index entry or `open` entry past its expiry as
//! absent. (b) [`StateStore::expire_due`] (called periodically by the gateway) turns non-final
//! records past expiry into `Expired` and removes them from `open`, returning them for CDRs.
//! (c) A compaction filter drops `msg`, `smsc` and `open` entries `purge_grace_secs` after
//! their expiry, so disk use is bounded by traffic × (ttl + grace) without any scan; the grace
//! leaves the sweep time to see non-final records first. Space is reclaimed when compactions
//! run, not at the expiry instant.
//!
//! # Measured (`cargo bench --bench state`, 2-core VM shared with other builds, load ~8)
//!
//! Per message (first measurement, before the hand-over mark): create + update(submitted,
//! with receipt index) + receipt = 3 writes.
//!
//! | in flight | fsync `none` | fsync `batch` | mean batch |
//! |---|---|---|---|
//! | 32  | ~21k msgs/s | ~2.5k msgs/s | 20–30 ops |
//! | 128 | 23–46k msgs/s | 4–9k msgs/s | 45–105 ops |
//! | 512 | ~30k msgs/s | 25–29k msgs/s | 300–400 ops |
//!
//! `batch` costs one `fdatasync` per batch, so its throughput grows with concurrency (group
//! commit); `none` is bounded by the writer's CPU (memtable lookups, encode/decode).
//!
//! Since then the writer keeps recently committed records in memory (`WriterCache`), so a
//! message's later writes skip the fjall read and decode: −19% writer instructions per message
//! (callgrind, 4 writes each: 69.3k → 56.3k); with the hand-over mark, 62–83k msgs/s × 4
//! writes with fsync `none` at 128 in flight (see `perf/RESULTS.md`). The binary
//! record codec is ~5× faster than serde_json (0.4–0.8 µs vs 2–3.8 µs encode+decode) and 69 B
//! vs 426 B for a one-part record; an inline `get` of a hot record costs ~1–2 µs.
//!
//! # Failure and bounds
//!
//! * Queue: `queue_capacity` ops; batch: `max_batch` ops; linger: `max_batch_delay_us`.
//! * A watchdog thread checks the writer every `op_timeout_ms / 4`: if one batch has been
//!   committing for longer than `op_timeout_ms` (stuck disk), it fails that batch's and all
//!   queued ops with [`StateError::Unavailable`] and refuses new ops at once until the writer
//!   finishes its batch. An op failed this way may still have been written (outcome unknown);
//!   a client retry with the same id then finds it through the idempotency check.
//! * fjall poisons the database after a failed journal write or fsync (disk full, file-size
//!   limit, I/O error): every later write would fail until it is reopened. The writer then
//!   answers the failed batch `Unavailable`, marks the store down (new ops are refused at
//!   once with `Unavailable`, queued ones failed within 10 ms), drops every handle of the
//!   database (fjall locks the directory per open instance; reads answer `Unavailable`
//!   meanwhile) and reopens it with back-off 20 ms doubling to 2 s, until the open (journal
//!   replay; fjall truncates a torn tail batch) and an fsynced probe write succeed; then it
//!   takes ops again. No acknowledged write is lost (acknowledged = in the journal, which the
//!   reopen replays); an op of the failed batch may still have been written (outcome
//!   unknown, found by a client retry's idempotency check).
//! * If the writer thread ends (shutdown, panic), every pending future resolves to
//!   `Unavailable` (op drop completes it); none hangs.

use super::{check_smsc_id, check_txid, check_update, ready};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::compaction::filter::{
    CompactionFilter, Context as FilterContext, Factory, ItemAccessor, Verdict,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::Deserialize;

use super::codec;
use super::{
    CreateOutcome, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome, ScanCursor,
    ScanPage, StateError, StateStore, StoreFuture, UpdateOutcome, unix_ms,
};

/// When a write batch is forced to stable storage (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Written to the OS page cache: survives a process crash (SIGKILL), not a power loss.
    None,
    /// `fdatasync` after every batch, before any waiter is completed: survives power loss.
    Batch,
}

/// `[state.embedded]` configuration. Every bound of the backend is here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Database directory (created if missing). One process at a time (fjall locks it).
    pub path: PathBuf,
    /// Record lifetime in seconds from creation (default 86400).
    pub ttl_secs: u64,
    /// Extra time after expiry before compaction may physically drop an entry (default 3600).
    pub purge_grace_secs: u64,
    /// Fsync policy (default `none`).
    pub fsync: FsyncPolicy,
    /// Bound of the writer's op queue (default 16384).
    pub queue_capacity: usize,
    /// Most ops per write batch (default 1024).
    pub max_batch: usize,
    /// Longest the writer lingers to fill a batch, µs (default 0 = never linger).
    pub max_batch_delay_us: u64,
    /// A write not completed within this many ms fails with `Unavailable` (default 1000).
    pub op_timeout_ms: u64,
    /// fjall block cache, MiB (default 64).
    pub cache_mib: u64,
    /// Recently committed records the writer keeps in memory for its read-modify-writes
    /// (default 16384; 0 disables; see `WriterCache`). Not a config-file key: a tuning and
    /// benchmarking knob.
    pub cache_records: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: PathBuf::from("data/state"),
            ttl_secs: 24 * 3600,
            purge_grace_secs: 3600,
            fsync: FsyncPolicy::None,
            queue_capacity: 16_384,
            max_batch: 1024,
            max_batch_delay_us: 0,
            op_timeout_ms: 1_000,
            cache_mib: 64,
            cache_records: CACHE_RECORDS,
        }
    }
}

impl EmbeddedConfig {
    /// TTL as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// Every problem with the values, as `(key, reason)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.ttl_secs == 0 {
            p.push(("ttl_secs", "must be at least 1".to_string()));
        }
        if !(1..=1 << 20).contains(&self.queue_capacity) {
            p.push(("queue_capacity", "must be 1..=1048576".to_string()));
        }
        if !(1..=65_536).contains(&self.max_batch) {
            p.push(("max_batch", "must be 1..=65536".to_string()));
        }
        if self.max_batch_delay_us > 100_000 {
            p.push((
                "max_batch_delay_us",
                "must be at most 100000 (100 ms)".to_string(),
            ));
        }
        if !(10..=60_000).contains(&self.op_timeout_ms) {
            p.push(("op_timeout_ms", "must be 10..=60000".to_string()));
        }
        if self.cache_mib == 0 {
            p.push(("cache_mib", "must be at least 1".to_string()));
        }
        if self.cache_records > 1 << 20 {
            p.push(("cache_records", "must be at most 1048576".to_string()));
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Completion slots: a runtime-agnostic one-shot, completable by the writer or the watchdog
// (first one wins), that fails itself if its completer is dropped unused.

enum SlotState<T> {
    Waiting(Option<Waker>),
    Done(Result<T, StateError>),
    Taken,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

impl<T> Slot<T> {
    fn complete(&self, r: Result<T, StateError>) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let SlotState::Waiting(w) = &mut *g {
            let waker = w.take();
            *g = SlotState::Done(r);
            drop(g);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// Object-safe failing handle, for the watchdog.
trait Fail: Send + Sync {
    fn fail(&self, e: StateError);
}

impl<T: Send> Fail for Slot<T> {
    fn fail(&self, e: StateError) {
        self.complete(Err(e));
    }
}

/// The writer's side of a slot. Dropping it without completing fails the waiter.
struct Completer<T: Send + 'static>(Arc<Slot<T>>);

impl<T: Send + 'static> Completer<T> {
    fn complete(self, r: Result<T, StateError>) {
        self.0.complete(r);
    }

    fn as_fail(&self) -> Arc<dyn Fail> {
        self.0.clone()
    }
}

impl<T: Send + 'static> Drop for Completer<T> {
    fn drop(&mut self) {
        // No-op when already completed.
        self.0
            .complete(Err(StateError::Unavailable("state writer stopped".into())));
    }
}

struct SlotFuture<T>(Arc<Slot<T>>);

impl<T> Future for SlotFuture<T> {
    type Output = Result<T, StateError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut g = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *g {
            SlotState::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            SlotState::Done(_) => match std::mem::replace(&mut *g, SlotState::Taken) {
                SlotState::Done(r) => Poll::Ready(r),
                _ => Poll::Ready(Err(StateError::Unavailable("slot state lost".into()))),
            },
            SlotState::Taken => Poll::Ready(Err(StateError::Unavailable(
                "state future polled after completion".into(),
            ))),
        }
    }
}

fn slot<T: Send + 'static>() -> (Completer<T>, SlotFuture<T>) {
    let s = Arc::new(Slot {
        state: Mutex::new(SlotState::Waiting(None)),
    });
    (Completer(s.clone()), SlotFuture(s))
}

// ---------------------------------------------------------------------------------------------
// Ops.

enum Op {
    Create(MessageRecord, Completer<CreateOutcome>),
    Update(MessageKey, Vec<PartUpdate>, u64, Completer<UpdateOutcome>),
    Receipt(u32, String, ReceiptInfo, Completer<ReceiptOutcome>),
    Expire(u64, usize, Completer<Vec<MessageRecord>>),
    /// Test hook: the writer sleeps (simulates a stuck disk).
    Stall(Duration, Completer<()>),
    /// Commit everything before it and fsync.
    Flush(Completer<()>),
}

impl Op {
    fn as_fail(&self) -> Arc<dyn Fail> {
        match self {
            Op::Create(_, c) => c.as_fail(),
            Op::Update(_, _, _, c) => c.as_fail(),
            Op::Receipt(_, _, _, c) => c.as_fail(),
            Op::Expire(_, _, c) => c.as_fail(),
            Op::Stall(_, c) => c.as_fail(),
            Op::Flush(c) => c.as_fail(),
        }
    }
}

/// An op's result, held until its batch commits.
enum Done {
    Create(Completer<CreateOutcome>, Result<CreateOutcome, StateError>),
    Update(Completer<UpdateOutcome>, Result<UpdateOutcome, StateError>),
    Receipt(
        Completer<ReceiptOutcome>,
        Result<ReceiptOutcome, StateError>,
    ),
    Expire(
        Completer<Vec<MessageRecord>>,
        Result<Vec<MessageRecord>, StateError>,
    ),
    Stall(Completer<()>),
    Flush(Completer<()>),
}

impl Done {
    /// Completes with the op's own result if the commit succeeded, else with the commit error.
    fn finish(self, commit: &Result<(), StateError>) {
        fn pick<T>(r: Result<T, StateError>, c: &Result<(), StateError>) -> Result<T, StateError> {
            match c {
                Ok(()) => r,
                Err(e) => Err(e.clone()),
            }
        }
        match self {
            Done::Create(c, r) => c.complete(pick(r, commit)),
            Done::Update(c, r) => c.complete(pick(r, commit)),
            Done::Receipt(c, r) => c.complete(pick(r, commit)),
            Done::Expire(c, r) => c.complete(pick(r, commit)),
            Done::Stall(c) => c.complete(pick(Ok(()), commit)),
            Done::Flush(c) => c.complete(pick(Ok(()), commit)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state between the handle, the writer and the watchdog.

struct Shared {
    /// Set by the watchdog while a batch is stuck; new ops are refused while set.
    stuck: AtomicBool,
    /// Cleared on a failed commit, set on a successful one.
    healthy: AtomicBool,
    /// Start of the batch being committed, in ms since `epoch`, 0 when idle.
    batch_started_ms: AtomicU64,
    epoch: Instant,
    /// Waiters of the batch being committed (for the watchdog).
    in_flight: Mutex<Vec<Arc<dyn Fail>>>,
    stop: AtomicBool,
    /// Committed batches and the ops in them (for metrics and the bench).
    batches: AtomicU64,
    batched_ops: AtomicU64,
    /// The open database for readers; `None` while the writer reopens it (fjall's directory
    /// lock allows one open instance, so every handle must be dropped before the reopen).
    trees: RwLock<Option<Arc<Trees>>>,
    /// Set from a failed commit until a reopen and probe write succeed; new ops are refused.
    down: AtomicBool,
    /// Successful reopens since start.
    reopens: AtomicU64,
    /// Test hook: commit attempts still to fail.
    fail_next_commits: AtomicU64,
}

impl Shared {
    fn since_epoch_ms(&self) -> u64 {
        // +1 so that 0 always means "idle".
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// The database and its three keyspaces (also the journal backend's cold store).
#[derive(Clone)]
pub(crate) struct Trees {
    pub(crate) db: Database,
    pub(crate) msg: Keyspace,
    pub(crate) smsc: Keyspace,
    pub(crate) open: Keyspace,
}

pub(crate) fn fjall_err(e: fjall::Error) -> StateError {
    StateError::Unavailable(format!("fjall: {e}"))
}

/// fjall's per-keyspace compaction filter chooser (`DatabaseBuilder::with_compaction_filter_factories`).
type FilterAssigner = Arc<dyn Fn(&str) -> Option<Arc<dyn Factory>> + Send + Sync>;

/// Compaction filter: drops entries whose expiry (a BE u64 at `offset` of the key or value)
/// is more than the grace period in the past.
struct ExpiryFilterFactory {
    name: &'static str,
    in_key: bool,
    offset: usize,
    grace_ms: u64,
}

struct ExpiryFilter {
    in_key: bool,
    offset: usize,
    cutoff_ms: u64,
}

impl Factory for ExpiryFilterFactory {
    fn name(&self) -> &str {
        self.name
    }

    fn make_filter(&self, _ctx: &FilterContext) -> Box<dyn CompactionFilter> {
        Box::new(ExpiryFilter {
            in_key: self.in_key,
            offset: self.offset,
            cutoff_ms: unix_ms().saturating_sub(self.grace_ms),
        })
    }
}

impl CompactionFilter for ExpiryFilter {
    fn filter_item(
        &mut self,
        item: ItemAccessor<'_>,
        _ctx: &FilterContext,
    ) -> fjall::compaction::filter::CompactionFilterResult {
        let exp = if self.in_key {
            codec::be_u64_at(item.key(), self.offset)
        } else {
            codec::be_u64_at(&item.value()?, self.offset)
        };
        // Unparseable entries are kept: never destroy what we do not understand.
        Ok(match exp {
            Some(exp) if exp < self.cutoff_ms => Verdict::Remove,
            _ => Verdict::Keep,
        })
    }
}

/// Opens the database at `cfg.path` with its three keyspaces (fjall replays the journal and
/// truncates a torn tail batch). Used at start and by the writer to reopen after a poisoning.
pub(crate) fn open_trees(cfg: &EmbeddedConfig) -> Result<Trees, StateError> {
    let grace_ms = cfg.purge_grace_secs.saturating_mul(1000);
    let assigner: FilterAssigner = Arc::new(move |name: &str| -> Option<Arc<dyn Factory>> {
        let (in_key, offset) = match name {
            "msg" => (false, codec::RECORD_EXPIRY_OFFSET),
            "smsc" => (false, 0),
            "open" => (true, 0),
            _ => return None,
        };
        Some(Arc::new(ExpiryFilterFactory {
            name: "smsgw-expiry",
            in_key,
            offset,
            grace_ms,
        }))
    });
    let db = Database::builder(&cfg.path)
        .cache_size(cfg.cache_mib.saturating_mul(1024 * 1024))
        // We persist per batch ourselves (the policy decides the mode).
        .manual_journal_persist(true)
        .with_compaction_filter_factories(assigner)
        .open()
        .map_err(fjall_err)?;
    let ks = |name: &str| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .map_err(fjall_err)
    };
    let trees = Trees {
        msg: ks("msg")?,
        smsc: ks("smsc")?,
        open: ks("open")?,
        db: db.clone(),
    };
    Ok(trees)
}

/// The embedded store. Hold it as `Arc<dyn StateStore>`; dropping the last handle stops the
/// writer (after it commits what is queued) and closes the database.
pub struct EmbeddedStore {
    tx: async_channel::Sender<Op>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database and starts the writer and watchdog threads.
    pub fn open(cfg: EmbeddedConfig) -> Result<Arc<EmbeddedStore>, StateError> {
        if let Some((key, why)) = cfg.problems().into_iter().next() {
            return Err(StateError::Invalid(format!("state.embedded.{key}: {why}")));
        }
        // The journal engine's logs beside the directory hold writes this engine cannot see.
        let wal_dir = super::journal::wal_dir_of(&cfg.path);
        let holds_frames = |p: &std::path::PathBuf| {
            super::wal::read_segment(p, |_| {}).map_or(true, |r| r.frames > 0)
        };
        if wal_dir.exists()
            && super::wal::list_segments(&wal_dir)?
                .iter()
                .any(holds_frames)
        {
            return Err(StateError::Invalid(format!(
                "{} holds write-ahead logs of the journal engine not yet folded into {}: start \
                 once with engine = \"journal\" and stop it cleanly before switching engines",
                wal_dir.display(),
                cfg.path.display()
            )));
        }
        std::fs::create_dir_all(&cfg.path)
            .map_err(|e| StateError::Unavailable(format!("create {}: {e}", cfg.path.display())))?;
        let trees = Arc::new(open_trees(&cfg)?);
        let shared = Arc::new(Shared {
            stuck: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            batch_started_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_flight: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            batched_ops: AtomicU64::new(0),
            trees: RwLock::new(Some(trees.clone())),
            down: AtomicBool::new(false),
            reopens: AtomicU64::new(0),
            fail_next_commits: AtomicU64::new(0),
        });
        let (tx, rx) = async_channel::bounded(cfg.queue_capacity);
        let writer = {
            let w = Writer {
                trees: Some(trees),
                cache: WriterCache::new(cfg.cache_records),
                cfg: cfg.clone(),
                shared: shared.clone(),
                ttl_ms: cfg.ttl_secs.saturating_mul(1000),
                persist: match cfg.fsync {
                    FsyncPolicy::None => PersistMode::Buffer,
                    FsyncPolicy::Batch => PersistMode::SyncData,
                },
                max_batch: cfg.max_batch,
                linger: Duration::from_micros(cfg.max_batch_delay_us),
            };
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || w.run(rx))
                .map_err(|e| StateError::Unavailable(format!("spawn state writer: {e}")))?
        };
        let watchdog = {
            let shared = shared.clone();
            let timeout_ms = cfg.op_timeout_ms;
            std::thread::Builder::new()
                .name("state-watchdog".into())
                .spawn(move || watchdog(shared, rx, timeout_ms))
                .map_err(|e| StateError::Unavailable(format!("spawn state watchdog: {e}")))?
        };
        Ok(Arc::new(EmbeddedStore {
            tx,
            shared,
            writer: Some(writer),
            watchdog: Some(watchdog),
        }))
    }

    /// Test hook: makes the writer thread sleep for `d` as if its disk hung. Not for production.
    #[doc(hidden)]
    pub fn stall_writer_for_test(&self, d: Duration) -> StoreFuture<()> {
        self.submit(|c| Op::Stall(d, c))
    }

    /// Test hook: the next `n` commit attempts (batches and reopen probes) fail as if the disk
    /// refused the journal write, which sends the writer through its reopen path. Not for
    /// production.
    #[doc(hidden)]
    pub fn fail_next_commits_for_test(&self, n: u64) {
        self.shared.fail_next_commits.store(n, Ordering::Release);
    }

    /// How many times the writer reopened the database after a failed commit.
    pub fn reopen_count(&self) -> u64 {
        self.shared.reopens.load(Ordering::Relaxed)
    }

    /// `(batches, ops)` committed since open: ops / batches is the mean batch size.
    pub fn batch_stats(&self) -> (u64, u64) {
        (
            self.shared.batches.load(Ordering::Relaxed),
            self.shared.batched_ops.load(Ordering::Relaxed),
        )
    }

    /// Number of ops waiting for the writer (for metrics).
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    fn submit<T: Send + 'static>(&self, make: impl FnOnce(Completer<T>) -> Op) -> StoreFuture<T> {
        if self.shared.stuck.load(Ordering::Acquire) {
            return ready(Err(StateError::Unavailable(
                "state writer stuck (op timeout exceeded)".into(),
            )));
        }
        if self.shared.down.load(Ordering::Acquire) {
            return ready(Err(StateError::Unavailable(
                "state database failed; reopening".into(),
            )));
        }
        let (c, f) = slot();
        match self.tx.try_send(make(c)) {
            Ok(()) => Box::pin(f),
            // The op (and its completer) comes back inside the error and is dropped here,
            // which would complete the slot; we answer directly instead.
            Err(async_channel::TrySendError::Full(_)) => ready(Err(StateError::Overloaded)),
            Err(async_channel::TrySendError::Closed(_)) => {
                ready(Err(StateError::Unavailable("state writer stopped".into())))
            }
        }
    }

    fn read_record(&self, key: &MessageKey) -> Result<Option<MessageRecord>, StateError> {
        read_live(&self.trees()?.msg, key, unix_ms())
    }

    /// The current database handles for a read; `Unavailable` while the writer reopens it.
    fn trees(&self) -> Result<Arc<Trees>, StateError> {
        self.shared
            .trees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StateError::Unavailable("state database reopening".into()))
    }
}

/// Reads a record, hiding it if expired at `now_ms` (pass `0` to ignore expiry).
fn read_live(
    msg: &Keyspace,
    key: &MessageKey,
    now_ms: u64,
) -> Result<Option<MessageRecord>, StateError> {
    let Some(v) = msg
        .get(codec::msg_key(key.app_id, &key.transaction_id))
        .map_err(fjall_err)?
    else {
        return Ok(None);
    };
    let r = codec::decode_record(key, &v).map_err(StateError::Corrupt)?;
    Ok((r.expires_at_ms > now_ms).then_some(r))
}

impl StateStore for EmbeddedStore {
    fn create(&self, record: MessageRecord) -> StoreFuture<CreateOutcome> {
        if let Err(e) = record.validate() {
            return ready(Err(StateError::Invalid(e)));
        }
        self.submit(|c| Op::Create(record, c))
    }

    fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        now_ms: u64,
    ) -> StoreFuture<UpdateOutcome> {
        if let Err(e) = check_update(&key, &updates) {
            return ready(Err(e));
        }
        self.submit(|c| Op::Update(key, updates, now_ms, c))
    }

    fn apply_receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> StoreFuture<ReceiptOutcome> {
        if let Err(e) = check_smsc_id(&smsc_id) {
            return ready(Err(e));
        }
        self.submit(|c| Op::Receipt(link_id, smsc_id, receipt, c))
    }

    fn get(&self, key: MessageKey) -> StoreFuture<Option<MessageRecord>> {
        if check_txid(&key.transaction_id).is_err() {
            // Such a key can never have been stored.
            return ready(Ok(None));
        }
        ready(self.read_record(&key))
    }

    fn find_by_smsc_id(
        &self,
        link_id: u32,
        smsc_id: String,
    ) -> StoreFuture<Option<(MessageKey, u16)>> {
        ready(
            self.trees()
                .and_then(|t| lookup_smsc(&t.smsc, link_id, &smsc_id, unix_ms()))
                .and_then(|o| {
                    o.map(|(key, part)| {
                        codec::parse_msg_key(&key)
                            .map(|k| (k, part))
                            .map_err(StateError::Corrupt)
                    })
                    .transpose()
                }),
        )
    }

    fn scan_non_final(&self, cursor: Option<ScanCursor>, limit: usize) -> StoreFuture<ScanPage> {
        ready(self.scan(cursor, limit))
    }

    fn expire_due(&self, now_ms: u64, limit: usize) -> StoreFuture<Vec<MessageRecord>> {
        self.submit(|c| Op::Expire(now_ms, limit, c))
    }

    fn flush(&self) -> StoreFuture<()> {
        self.submit(Op::Flush)
    }

    fn is_available(&self) -> bool {
        !self.shared.stuck.load(Ordering::Acquire)
            && !self.shared.down.load(Ordering::Acquire)
            && self.shared.healthy.load(Ordering::Acquire)
    }
}

impl EmbeddedStore {
    fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage, StateError> {
        let now = unix_ms();
        // Entries are ordered by expiry: everything below `now` is expired, skip it.
        let mut start = now.saturating_add(1).to_be_bytes().to_vec();
        if let Some(ScanCursor(c)) = cursor
            && c > start
        {
            start = c;
        }
        let mut page = ScanPage::default();
        let limit = limit.clamp(1, super::MAX_PAGE);
        let mut last: Option<Vec<u8>> = None;
        let trees = self.trees()?;
        for kv in trees.open.range(start..) {
            let k = kv.key().map_err(fjall_err)?;
            let mkey = k
                .get(8..)
                .ok_or_else(|| StateError::Corrupt("short open key".into()))?;
            let key = codec::parse_msg_key(mkey).map_err(StateError::Corrupt)?;
            last = Some(k.to_vec());
            if let Some(r) = read_live(&trees.msg, &key, now)?
                && !r.status.is_final()
            {
                page.records.push(r);
            }
            if page.records.len() >= limit {
                break;
            }
        }
        if page.records.len() >= limit
            && let Some(mut c) = last
        {
            // Smallest key greater than the last one seen.
            c.push(0);
            page.next = Some(ScanCursor(c));
        }
        Ok(page)
    }
}

/// `(msg key bytes, part)` of a live receipt index entry.
pub(crate) fn lookup_smsc(
    smsc: &Keyspace,
    link_id: u32,
    smsc_id: &str,
    now_ms: u64,
) -> Result<Option<(Vec<u8>, u16)>, StateError> {
    if check_smsc_id(smsc_id).is_err() {
        return Ok(None);
    }
    let Some(v) = smsc
        .get(codec::smsc_key(link_id, smsc_id))
        .map_err(fjall_err)?
    else {
        return Ok(None);
    };
    let (exp, part, key) = codec::parse_smsc_value(&v).map_err(StateError::Corrupt)?;
    Ok((exp > now_ms).then(|| (key.to_vec(), part)))
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is queued and exit.
        self.tx.close();
        if let Some(w) = self.writer.take() {
            // A writer stuck on a hung disk would block shutdown forever: leave it detached.
            if !self.shared.stuck.load(Ordering::Acquire) {
                let _ = w.join();
            }
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        // Make the last batches durable regardless of policy; fjall also does this on drop.
        if let Ok(t) = self.trees() {
            let _ = t.db.persist(PersistMode::SyncAll);
        }
    }
}

fn watchdog(shared: Arc<Shared>, rx: async_channel::Receiver<Op>, timeout_ms: u64) {
    let tick = Duration::from_millis((timeout_ms / 4).clamp(5, 100));
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let started = shared.batch_started_ms.load(Ordering::Acquire);
        if started == 0 || shared.since_epoch_ms().saturating_sub(started) < timeout_ms {
            continue;
        }
        if !shared.stuck.swap(true, Ordering::AcqRel) {
            tracing::error!(timeout_ms, "state writer stuck; failing pending state ops");
        }
        let err = || StateError::Unavailable("state write timed out".into());
        let stuck: Vec<_> =
            std::mem::take(&mut *shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()));
        for f in stuck {
            f.fail(err());
        }
        // Queued ops would wait behind the stuck batch: fail them too (dropping an op fails
        // its waiter, but say why).
        while let Ok(op) = rx.try_recv() {
            op.as_fail().fail(err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The writer.

/// Key of the reopen probe's tombstone in `smsc`: link `u32::MAX` with an empty SMSC id,
/// which no index entry has (SMSC ids are 1.. bytes), so it is never read back.
const PROBE_KEY: [u8; 4] = [0xff; 4];

/// Errors after which fjall refuses every further write until the database is reopened:
/// a failed journal write or fsync poisons it (`Io` the first time, `Poisoned` after).
fn needs_reopen(e: &fjall::Error) -> bool {
    matches!(
        e,
        fjall::Error::Poisoned | fjall::Error::Io(_) | fjall::Error::Storage(_)
    )
}

/// Test hook ([`EmbeddedStore::fail_next_commits_for_test`]): fails this commit attempt if
/// failures are still owed.
fn injected_failure(sh: &Shared) -> Result<(), fjall::Error> {
    let owed = sh
        .fail_next_commits
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    match owed {
        Ok(_) => Err(fjall::Error::Io(std::io::Error::other(
            "injected write failure (test hook)",
        ))),
        Err(_) => Ok(()),
    }
}

/// Fails every queued op with `Unavailable` (the database is being reopened).
fn fail_queued(rx: &async_channel::Receiver<Op>) {
    while let Ok(op) = rx.try_recv() {
        op.as_fail().fail(StateError::Unavailable(
            "state database failed; reopening".into(),
        ));
    }
}

struct Writer {
    /// `None` only while [`Writer::recover`] reopens the database.
    trees: Option<Arc<Trees>>,
    /// Recently committed records and receipt-index entries (see [`WriterCache`]).
    cache: WriterCache,
    /// To reopen the database after a poisoning.
    cfg: EmbeddedConfig,
    shared: Arc<Shared>,
    ttl_ms: u64,
    persist: PersistMode,
    max_batch: usize,
    linger: Duration,
}

/// Records and receipt-index entries kept by the writer after they were committed (default).
/// ~16k covers about a second of traffic at full load: the `submitted` update follows the
/// create within milliseconds, receipts usually within seconds. A record is a few hundred
/// bytes, so the cache holds a few MiB when full and nothing when idle.
const CACHE_RECORDS: usize = 16_384;

/// The last committed value of recently written `msg` and `smsc` keys, FIFO-bounded.
///
/// A message's writes come in a burst: `create`, then `update` (submitted) milliseconds
/// later, then the receipt. Without this cache each later write re-reads the record from
/// fjall (a memtable skiplist search and a record decode: the largest part of the writer's
/// per-op CPU in profiles) although the writer itself wrote it moments ago. The writer is the
/// only writer, so a cached entry is exactly what fjall holds; expiry is checked on it the
/// same way as on a read. Only committed batches enter the cache; after a failed commit the
/// cache is emptied (the database may be reopened and the batch's outcome is unknown).
/// A miss (never written, evicted) falls through to fjall, so the bound only costs speed.
#[derive(Default)]
struct WriterCache {
    /// Entries per map; 0 keeps nothing.
    cap: usize,
    msgs: HashMap<Vec<u8>, MessageRecord>,
    msg_order: VecDeque<Vec<u8>>,
    smsc: HashMap<Vec<u8>, Vec<u8>>,
    smsc_order: VecDeque<Vec<u8>>,
}

impl WriterCache {
    fn new(cap: usize) -> WriterCache {
        WriterCache {
            cap,
            ..WriterCache::default()
        }
    }

    fn clear(&mut self) {
        *self = WriterCache::new(self.cap);
    }

    /// Takes the committed overlay's records and index entries.
    fn absorb(&mut self, msgs: HashMap<Vec<u8>, MessageRecord>, smsc: HashMap<Vec<u8>, Vec<u8>>) {
        fn put<V>(
            map: &mut HashMap<Vec<u8>, V>,
            order: &mut VecDeque<Vec<u8>>,
            cap: usize,
            k: Vec<u8>,
            v: V,
        ) {
            match map.entry(k) {
                Entry::Occupied(mut e) => {
                    e.insert(v);
                }
                Entry::Vacant(e) => {
                    order.push_back(e.key().clone());
                    e.insert(v);
                    if order.len() > cap
                        && let Some(old) = order.pop_front()
                    {
                        map.remove(&old);
                    }
                }
            }
        }
        if self.cap == 0 {
            return;
        }
        for (k, r) in msgs {
            put(&mut self.msgs, &mut self.msg_order, self.cap, k, r);
        }
        for (k, v) in smsc {
            put(&mut self.smsc, &mut self.smsc_order, self.cap, k, v);
        }
    }
}

/// Records and index entries touched by the current batch; each key is written once.
#[derive(Default)]
struct Overlay {
    /// msg key → record (as it will be stored).
    msgs: HashMap<Vec<u8>, MessageRecord>,
    dirty: Vec<Vec<u8>>,
    /// smsc key → Some(value) insert.
    smsc: HashMap<Vec<u8>, Vec<u8>>,
    /// open key → true insert / false remove.
    open: HashMap<Vec<u8>, bool>,
}

impl Writer {
    fn run(mut self, rx: async_channel::Receiver<Op>) {
        let mut ops: Vec<Op> = Vec::with_capacity(self.max_batch);
        while let Ok(first) = rx.recv_blocking() {
            ops.push(first);
            let deadline = Instant::now() + self.linger;
            while ops.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(async_channel::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        std::thread::sleep((deadline - now).min(Duration::from_micros(50)));
                    }
                    Err(async_channel::TryRecvError::Closed) => break,
                }
            }
            self.batch(&mut ops);
            if self.shared.down.load(Ordering::Acquire) {
                self.recover(&rx);
            }
        }
    }

    fn batch(&mut self, ops: &mut Vec<Op>) {
        let sh = &self.shared;
        {
            let mut inf = sh.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            inf.clear();
            inf.extend(ops.iter().map(Op::as_fail));
        }
        sh.batch_started_ms
            .store(sh.since_epoch_ms(), Ordering::Release);

        sh.batches.fetch_add(1, Ordering::Relaxed);
        sh.batched_ops
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        let now = unix_ms();
        // Sized for the batch up front: growing these maps rehashed every key (SipHash) several
        // times per batch, ~4% of the writer's instructions in callgrind.
        let mut ov = Overlay {
            msgs: HashMap::with_capacity(ops.len()),
            dirty: Vec::with_capacity(ops.len()),
            smsc: HashMap::with_capacity(ops.len()),
            open: HashMap::with_capacity(ops.len()),
        };
        let mut done = Vec::with_capacity(ops.len());
        let mut want_sync = false;
        for op in ops.drain(..) {
            done.push(match op {
                Op::Create(r, c) => Done::Create(c, self.create(&mut ov, r, now)),
                Op::Update(k, u, at, c) => Done::Update(c, self.update(&mut ov, &k, &u, at, now)),
                Op::Receipt(l, s, r, c) => Done::Receipt(c, self.receipt(&mut ov, l, &s, &r, now)),
                Op::Expire(at, lim, c) => Done::Expire(c, self.expire(&mut ov, at, lim)),
                Op::Stall(d, c) => {
                    std::thread::sleep(d);
                    Done::Stall(c)
                }
                Op::Flush(c) => {
                    want_sync = true;
                    Done::Flush(c)
                }
            });
        }

        let mut raw = self.commit(&ov);
        if want_sync
            && raw.is_ok()
            && let Some(t) = &self.trees
        {
            // A flush covers this batch and every earlier one (one journal, written in order).
            raw = t.db.persist(PersistMode::SyncAll);
        }
        // fjall poisons the database on a failed journal write or fsync: every later write
        // fails until it is reopened. Mark the store down *before* answering, so that a caller
        // retrying at once is refused fast instead of queueing behind the reopen.
        if let Err(e) = &raw
            && needs_reopen(e)
        {
            sh.down.store(true, Ordering::Release);
        }
        let commit = raw.map_err(fjall_err);
        match &commit {
            Ok(()) => {
                sh.healthy.store(true, Ordering::Release);
                self.cache.absorb(ov.msgs, ov.smsc);
            }
            Err(e) => {
                self.cache.clear();
                if sh.healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "state batch commit failed");
                }
            }
        }
        // Ops are answered only now: success means the batch is in the journal (and fsynced
        // under `batch`); on failure every op of the batch gets the error, even though a
        // partly written batch may survive (outcome unknown, as with the watchdog).
        for d in done {
            d.finish(&commit);
        }
        sh.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        sh.batch_started_ms.store(0, Ordering::Release);
        sh.stuck.store(false, Ordering::Release);
    }

    fn commit(&self, ov: &Overlay) -> Result<(), fjall::Error> {
        if ov.dirty.is_empty() && ov.smsc.is_empty() && ov.open.is_empty() {
            return Ok(());
        }
        let Some(t) = &self.trees else {
            return Err(fjall::Error::Poisoned);
        };
        injected_failure(&self.shared)?;
        let mut b = t.db.batch().durability(Some(self.persist));
        for k in &ov.dirty {
            if let Some(r) = ov.msgs.get(k) {
                b.insert(&t.msg, k.as_slice(), codec::encode_record(r));
            }
        }
        for (k, v) in &ov.smsc {
            b.insert(&t.smsc, k.as_slice(), v.as_slice());
        }
        for (k, insert) in &ov.open {
            if *insert {
                b.insert(&t.open, k.as_slice(), Vec::<u8>::new());
            } else {
                b.remove(&t.open, k.as_slice());
            }
        }
        b.commit()
    }

    /// The database for the ops of a batch (always open outside [`Writer::recover`]).
    fn t(&self) -> Result<&Trees, StateError> {
        self.trees
            .as_deref()
            .ok_or_else(|| StateError::Unavailable("state database reopening".into()))
    }

    /// After a poisoning: drops every handle of the failed database, then reopens it with
    /// capped back-off until the open (journal replay) and a probe write succeed. New ops are
    /// refused by `submit` while `down` is set; ops that slipped into the queue meanwhile are
    /// failed here, so none waits longer than one back-off slice. Returns early when the
    /// store is being dropped.
    ///
    /// Nothing acknowledged is lost: an op was acknowledged only after its batch reached the
    /// journal, and the reopen replays the journal (fjall truncates a torn tail batch, which
    /// was answered with an error). Nothing unwritten is acknowledged: the failed batch was
    /// answered with an error before we got here.
    fn recover(&mut self, rx: &async_channel::Receiver<Op>) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(20);
        const MAX_BACKOFF: Duration = Duration::from_secs(2);
        const SLICE: Duration = Duration::from_millis(10);
        let sh = self.shared.clone();
        tracing::error!("state database failed a write; reopening it");
        // fjall locks the directory per open instance: the old one must be fully dropped
        // (its last handle may be a reader mid-read; the open then fails `Locked` and is
        // retried) before the reopen can succeed.
        *sh.trees.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.trees = None;
        self.cache.clear();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u64;
        loop {
            fail_queued(rx);
            if rx.is_closed() {
                return;
            }
            attempts += 1;
            match self.reopen() {
                Ok(t) => {
                    *sh.trees.write().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
                    self.trees = Some(t);
                    sh.reopens.fetch_add(1, Ordering::Relaxed);
                    sh.healthy.store(true, Ordering::Release);
                    sh.down.store(false, Ordering::Release);
                    tracing::warn!(attempts, "state database reopened; accepting writes again");
                    return;
                }
                Err(e) if attempts == 1 || attempts.is_multiple_of(30) => {
                    tracing::error!(error = %e, attempts, "state database reopen failed; retrying");
                }
                Err(_) => {}
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !rx.is_closed() {
                std::thread::sleep(SLICE);
                fail_queued(rx);
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Opens the database again and proves it takes writes: a probe batch (a tombstone for a
    /// key no record uses), fsynced, so the store is not declared up on a disk that still
    /// refuses writes.
    fn reopen(&self) -> Result<Arc<Trees>, StateError> {
        let t = open_trees(&self.cfg)?;
        injected_failure(&self.shared).map_err(fjall_err)?;
        let mut b = t.db.batch().durability(Some(PersistMode::SyncData));
        b.remove(&t.smsc, PROBE_KEY);
        b.commit().map_err(fjall_err)?;
        Ok(Arc::new(t))
    }

    /// The record for `mkey` as the batch sees it (overlay first), hidden when expired at
    /// `now_ms` (0 = ignore expiry).
    fn load(
        &self,
        ov: &mut Overlay,
        mkey: &[u8],
        key: &MessageKey,
        now_ms: u64,
    ) -> Result<Option<MessageRecord>, StateError> {
        if let Some(r) = ov.msgs.get(mkey).or_else(|| self.cache.msgs.get(mkey)) {
            return Ok((r.expires_at_ms > now_ms).then(|| r.clone()));
        }
        read_live(&self.t()?.msg, key, now_ms)
    }

    fn store(&self, ov: &mut Overlay, mkey: Vec<u8>, r: MessageRecord) {
        let open = codec::open_key(r.expires_at_ms, &mkey);
        ov.open.insert(open, !r.status.is_final());
        Self::put_msg(ov, mkey, r);
    }

    /// [`Writer::store`] for a record that was loaded non-final or final (`was_open`) with
    /// the same expiry: its `open` entry is written only when the finality changes. The
    /// `submitted` update of every message would otherwise rewrite an identical `open` key
    /// (a memtable insert and journal bytes per message for nothing).
    fn store_changed(&self, ov: &mut Overlay, mkey: Vec<u8>, r: MessageRecord, was_open: bool) {
        let open_now = !r.status.is_final();
        if open_now != was_open {
            ov.open
                .insert(codec::open_key(r.expires_at_ms, &mkey), open_now);
        }
        Self::put_msg(ov, mkey, r);
    }

    fn put_msg(ov: &mut Overlay, mkey: Vec<u8>, r: MessageRecord) {
        match ov.msgs.entry(mkey) {
            Entry::Occupied(mut e) => {
                e.insert(r);
            }
            Entry::Vacant(e) => {
                ov.dirty.push(e.key().clone());
                e.insert(r);
            }
        }
    }

    fn create(
        &self,
        ov: &mut Overlay,
        mut r: MessageRecord,
        now: u64,
    ) -> Result<CreateOutcome, StateError> {
        let mkey = codec::msg_key(r.app_id, &r.transaction_id);
        if let Some(existing) = self.load(ov, &mkey, &r.key(), now)? {
            return Ok(CreateOutcome::Exists(existing));
        }
        // An expired record with the same key is simply replaced; its `open` entry (keyed by
        // the old expiry) is purged by the compaction filter.
        r.expires_at_ms = now.saturating_add(self.ttl_ms);
        r.status = r.derive_status();
        for p in &r.parts {
            if let (Some(l), Some(id)) = (p.link_id, &p.smsc_message_id) {
                ov.smsc.insert(
                    codec::smsc_key(l, id),
                    codec::smsc_value(r.expires_at_ms, p.index, &mkey),
                );
            }
        }
        self.store(ov, mkey, r.clone());
        Ok(CreateOutcome::Created(r))
    }

    fn update(
        &self,
        ov: &mut Overlay,
        key: &MessageKey,
        updates: &[PartUpdate],
        at_ms: u64,
        now: u64,
    ) -> Result<UpdateOutcome, StateError> {
        let mkey = codec::msg_key(key.app_id, &key.transaction_id);
        let Some(mut r) = self.load(ov, &mkey, key, now)? else {
            return Ok(UpdateOutcome::NotFound);
        };
        let was_open = !r.status.is_final();
        let changed = r.apply_all(updates, at_ms, |r, part, link_id, smsc_id| {
            ov.smsc.insert(
                codec::smsc_key(link_id, smsc_id),
                codec::smsc_value(r.expires_at_ms, part, &mkey),
            );
        });
        if changed {
            self.store_changed(ov, mkey, r.clone(), was_open);
        }
        Ok(UpdateOutcome::Updated { record: r, changed })
    }

    fn receipt(
        &self,
        ov: &mut Overlay,
        link_id: u32,
        smsc_id: &str,
        receipt: &ReceiptInfo,
        now: u64,
    ) -> Result<ReceiptOutcome, StateError> {
        let skey = codec::smsc_key(link_id, smsc_id);
        let found = match ov.smsc.get(&skey).or_else(|| self.cache.smsc.get(&skey)) {
            Some(v) => {
                let (exp, part, k) = codec::parse_smsc_value(v).map_err(StateError::Corrupt)?;
                (exp > now).then(|| (k.to_vec(), part))
            }
            None => lookup_smsc(&self.t()?.smsc, link_id, smsc_id, now)?,
        };
        let Some((mkey, part)) = found else {
            return Ok(ReceiptOutcome::NotFound);
        };
        let key = codec::parse_msg_key(&mkey).map_err(StateError::Corrupt)?;
        let Some(mut r) = self.load(ov, &mkey, &key, now)? else {
            return Ok(ReceiptOutcome::NotFound);
        };
        let was_open = !r.status.is_final();
        if r.apply_receipt(part, receipt, receipt.received_at_ms.max(r.updated_at_ms)) {
            self.store_changed(ov, mkey, r.clone(), was_open);
            Ok(ReceiptOutcome::Applied(r))
        } else {
            Ok(ReceiptOutcome::Duplicate)
        }
    }

    fn expire(
        &self,
        ov: &mut Overlay,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let mut out = Vec::new();
        let limit = limit.clamp(1, super::MAX_PAGE);
        // Stale entries (record gone or final) are removed as they are walked, so each costs
        // one read once; the walk stops at `limit` results.
        let end = now_ms.saturating_add(1).to_be_bytes();
        for kv in self.t()?.open.range(..end.as_slice()) {
            if out.len() >= limit {
                break;
            }
            let k = kv.key().map_err(fjall_err)?;
            let okey = k.to_vec();
            if ov.open.get(&okey) == Some(&false) {
                continue;
            }
            let mkey = okey
                .get(8..)
                .ok_or_else(|| StateError::Corrupt("short open key".into()))?
                .to_vec();
            let key = codec::parse_msg_key(&mkey).map_err(StateError::Corrupt)?;
            // Ignore expiry here: these records are expired by definition.
            match self.load(ov, &mkey, &key, 0)? {
                Some(mut r) if !r.status.is_final() && r.expires_at_ms <= now_ms => {
                    r.apply(
                        &PartUpdate::AllPending {
                            status: super::Status::Expired,
                            error_code: None,
                        },
                        now_ms,
                    );
                    // A replaced (re-created) record has a new expiry and a new open key: drop
                    // this stale one explicitly.
                    ov.open.insert(okey, false);
                    self.store(ov, mkey, r.clone());
                    out.push(r);
                }
                _ => {
                    ov.open.insert(okey, false);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::suite::{self, SuiteHarness};
    use crate::state::{Encoding, Status};

    struct Harness {
        dir: tempfile::TempDir,
        fsync: FsyncPolicy,
    }

    impl Harness {
        fn new(fsync: FsyncPolicy) -> Harness {
            Harness {
                dir: tempfile::tempdir().expect("tempdir"),
                fsync,
            }
        }

        fn cfg(&self, ttl_secs: u64) -> EmbeddedConfig {
            EmbeddedConfig {
                path: self.dir.path().join("state"),
                ttl_secs,
                fsync: self.fsync,
                ..EmbeddedConfig::default()
            }
        }
    }

    impl SuiteHarness for Harness {
        fn open(&self, ttl_secs: u64) -> Arc<dyn StateStore> {
            EmbeddedStore::open(self.cfg(ttl_secs)).expect("open store")
        }
    }

    use crate::state::suite::monoio_block_on;

    #[test]
    fn suite_on_monoio_fsync_none() {
        let h = Harness::new(FsyncPolicy::None);
        monoio_block_on(suite::run_all(&h));
    }

    #[test]
    fn suite_on_tokio_fsync_batch() {
        let h = Harness::new(FsyncPolicy::Batch);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
            .block_on(suite::run_all(&h));
    }

    fn record(tx: &str) -> MessageRecord {
        MessageRecord::new_accepted(
            MessageKey::new(1, tx),
            1,
            "s",
            "d",
            Encoding::Gsm7,
            "t",
            1,
            unix_ms(),
        )
    }

    #[test]
    fn writer_cache_is_fifo_bounded() {
        let mut c = WriterCache::new(CACHE_RECORDS);
        for i in 0..CACHE_RECORDS + 10 {
            let k = format!("k{i}");
            let msgs = HashMap::from([(k.clone().into_bytes(), record(&k))]);
            let smsc = HashMap::from([(k.clone().into_bytes(), vec![1u8])]);
            c.absorb(msgs, smsc);
        }
        assert_eq!(
            (c.msgs.len(), c.msg_order.len()),
            (CACHE_RECORDS, CACHE_RECORDS)
        );
        assert_eq!(
            (c.smsc.len(), c.smsc_order.len()),
            (CACHE_RECORDS, CACHE_RECORDS)
        );
        assert!(!c.msgs.contains_key(b"k9".as_slice()), "oldest evicted");
        assert!(c.msgs.contains_key(b"k10".as_slice()));
        // Re-absorbing a cached key replaces it in place (no second order entry).
        let k = format!("k{}", CACHE_RECORDS + 9);
        c.absorb(
            HashMap::from([(k.clone().into_bytes(), record(&k))]),
            HashMap::new(),
        );
        assert_eq!(c.msg_order.len(), CACHE_RECORDS);
    }

    /// Writes after a failed commit (cache dropped, database reopened) still see the last
    /// committed record, and the whole life of a message works across it.
    #[test]
    fn writes_after_a_failed_commit_read_the_committed_record() {
        let h = Harness::new(FsyncPolicy::None);
        let s = EmbeddedStore::open(h.cfg(60)).expect("open");
        let key = MessageKey::new(1, "after-fail");
        let submitted = |id: &str| {
            vec![PartUpdate::Submitted {
                index: 0,
                link_id: 7,
                smsc_message_id: id.into(),
            }]
        };
        monoio_block_on(async {
            assert!(matches!(
                s.create(record("after-fail")).await,
                Ok(CreateOutcome::Created(_))
            ));
            s.fail_next_commits_for_test(1);
            assert!(
                s.update(key.clone(), submitted("x1"), unix_ms())
                    .await
                    .is_err()
            );
        });
        let t0 = Instant::now();
        while !s.is_available() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "store never came back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        monoio_block_on(async {
            match s.update(key.clone(), submitted("x2"), unix_ms()).await {
                Ok(UpdateOutcome::Updated { record, changed }) => {
                    assert!(changed);
                    assert_eq!(record.status, Status::Submitted);
                    assert_eq!(record.parts[0].smsc_message_id.as_deref(), Some("x2"));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                s.find_by_smsc_id(7, "x1".into()).await.unwrap(),
                None,
                "the failed batch was not written"
            );
            assert!(s.find_by_smsc_id(7, "x2".into()).await.unwrap().is_some());
        });
    }

    #[test]
    fn bad_config_is_refused_with_the_key() {
        let h = Harness::new(FsyncPolicy::None);
        let mut cfg = h.cfg(10);
        cfg.max_batch = 0;
        match EmbeddedStore::open(cfg) {
            Err(StateError::Invalid(m)) => assert!(m.contains("max_batch"), "{m}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("max_batch = 0 accepted"),
        }
    }

    #[test]
    fn full_queue_is_overloaded_not_a_hang() {
        let h = Harness::new(FsyncPolicy::None);
        let mut cfg = h.cfg(10);
        cfg.queue_capacity = 4;
        cfg.op_timeout_ms = 60_000;
        let s = EmbeddedStore::open(cfg).expect("open");
        // Hold the writer so the queue fills up.
        let stall = s.stall_writer_for_test(Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(50));
        let futs: Vec<_> = (0..10)
            .map(|i| s.create(record(&format!("q{i}"))))
            .collect();
        let results = monoio_block_on(async {
            let mut out = Vec::new();
            for f in futs {
                out.push(f.await);
            }
            out
        });
        let overloaded = results
            .iter()
            .filter(|r| matches!(r, Err(StateError::Overloaded)))
            .count();
        let created = results
            .iter()
            .filter(|r| matches!(r, Ok(crate::state::CreateOutcome::Created(_))))
            .count();
        assert_eq!((created, overloaded), (4, 6), "{results:?}");
        drop(stall);
    }

    #[test]
    fn stuck_writer_fails_fast_and_recovers() {
        let h = Harness::new(FsyncPolicy::None);
        let mut cfg = h.cfg(10);
        cfg.op_timeout_ms = 100;
        let s = EmbeddedStore::open(cfg).expect("open");
        let _stall = s.stall_writer_for_test(Duration::from_millis(1_000));
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        let r = monoio_block_on(s.create(record("stuck")));
        let waited = t0.elapsed();
        assert!(
            matches!(r, Err(StateError::Unavailable(_))),
            "expected Unavailable, got {r:?}"
        );
        assert!(waited < Duration::from_millis(600), "took {waited:?}");
        assert!(!s.is_available());
        // While stuck, new ops are refused at once.
        let t0 = Instant::now();
        let r = monoio_block_on(s.create(record("stuck2")));
        assert!(matches!(r, Err(StateError::Unavailable(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(20));
        // Once the writer is back, so is the store.
        std::thread::sleep(Duration::from_millis(1_200));
        assert!(s.is_available());
        let r = monoio_block_on(s.create(record("after")));
        assert!(
            matches!(r, Ok(crate::state::CreateOutcome::Created(_))),
            "{r:?}"
        );
    }

    /// A failed commit (as after a journal write error, which poisons fjall) answers that
    /// batch `Unavailable`, refuses new ops at once while the database is reopened, and then
    /// recovers in-process with every acknowledged write intact and the failed one absent.
    #[test]
    fn failed_commit_reopens_database_and_keeps_acknowledged_writes() {
        let h = Harness::new(FsyncPolicy::None);
        let s = EmbeddedStore::open(h.cfg(60)).expect("open");
        monoio_block_on(async {
            for i in 0..50 {
                let r = s.create(record(&format!("pre{i}"))).await;
                assert!(
                    matches!(r, Ok(crate::state::CreateOutcome::Created(_))),
                    "{r:?}"
                );
            }
        });
        // The batch itself and the first three reopen probes fail: the store stays down for
        // at least the first back-off steps (20 + 40 + 80 ms).
        s.fail_next_commits_for_test(4);
        let r = monoio_block_on(s.create(record("failed")));
        assert!(matches!(r, Err(StateError::Unavailable(_))), "{r:?}");
        assert!(!s.is_available());
        let t0 = Instant::now();
        let r = monoio_block_on(s.create(record("while-down")));
        assert!(matches!(r, Err(StateError::Unavailable(_))), "{r:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.is_available() {
            assert!(Instant::now() < deadline, "store did not recover");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.reopen_count(), 1);
        monoio_block_on(async {
            for i in 0..50 {
                let k = MessageKey::new(1, format!("pre{i}").as_str());
                assert!(s.get(k).await.expect("get").is_some(), "pre{i} lost");
            }
            for tx in ["failed", "while-down"] {
                let k = MessageKey::new(1, tx);
                assert!(s.get(k).await.expect("get").is_none(), "{tx} written");
            }
            let r = s.create(record("after")).await;
            assert!(
                matches!(r, Ok(crate::state::CreateOutcome::Created(_))),
                "{r:?}"
            );
            let r = s.create(record("pre0")).await;
            assert!(
                matches!(r, Ok(crate::state::CreateOutcome::Exists(_))),
                "{r:?}"
            );
        });
        // The reopened database is the one on disk: a fresh open sees the same records.
        drop(s);
        let s = EmbeddedStore::open(h.cfg(60)).expect("open again");
        for tx in ["pre0", "pre49", "after"] {
            let got = monoio_block_on(s.get(MessageKey::new(1, tx))).expect("get");
            assert!(got.is_some(), "{tx} lost after restart");
        }
    }

    /// Child half of `sigkill_loses_no_acknowledged_write`: writes until killed, printing
    /// each acknowledged id. Ignored in normal runs; the parent runs it explicitly.
    #[test]
    #[ignore = "spawned by sigkill_loses_no_acknowledged_write"]
    fn crash_child() {
        let Ok(dir) = std::env::var("SMSGW_STATE_CRASH_DIR") else {
            return;
        };
        let s = EmbeddedStore::open(EmbeddedConfig {
            path: PathBuf::from(dir),
            fsync: FsyncPolicy::None,
            ..EmbeddedConfig::default()
        })
        .expect("open");
        monoio_block_on(async {
            // Bounded: the parent kills us long before this ends.
            for i in 0..1_000_000u32 {
                let tx = format!("crash-{i}");
                if let Ok(crate::state::CreateOutcome::Created(_)) = s.create(record(&tx)).await {
                    println!("ACK {tx}");
                }
            }
        });
    }

    #[test]
    fn sigkill_loses_no_acknowledged_write() {
        use std::io::BufRead;
        let h = Harness::new(FsyncPolicy::None);
        let dir = h.dir.path().join("crash");
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "state::embedded::tests::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SMSGW_STATE_CRASH_DIR", &dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = line.strip_prefix("ACK ") {
                acked.push(tx.to_string());
            }
            if acked.len() >= 2_000 || Instant::now() > deadline {
                break;
            }
        }
        // Child::kill is SIGKILL on Unix: no destructors, no final persist.
        child.kill().expect("kill child");
        let _ = child.wait();
        assert!(
            acked.len() >= 100,
            "child acknowledged only {}",
            acked.len()
        );
        let s = EmbeddedStore::open(EmbeddedConfig {
            path: dir,
            ..EmbeddedConfig::default()
        })
        .expect("reopen after SIGKILL");
        let missing: Vec<_> = acked
            .iter()
            .filter(|tx| {
                monoio_block_on(s.get(MessageKey::new(1, tx.as_str())))
                    .expect("get")
                    .is_none()
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes lost: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    }

    #[test]
    fn compaction_filter_purges_after_grace() {
        let h = Harness::new(FsyncPolicy::None);
        let mut cfg = h.cfg(1);
        cfg.purge_grace_secs = 0;
        let s = EmbeddedStore::open(cfg).expect("open");
        let k = MessageKey::new(1, "purge");
        monoio_block_on(async {
            s.create(record("purge")).await.expect("create");
            s.update(
                k.clone(),
                vec![PartUpdate::Submitted {
                    index: 0,
                    link_id: 1,
                    smsc_message_id: "p1".into(),
                }],
                unix_ms(),
            )
            .await
            .expect("update");
        });
        let raw = codec::msg_key(1, "purge");
        assert!(
            s.trees()
                .expect("trees")
                .msg
                .get(&raw)
                .expect("raw get")
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(1_100));
        for t in [
            &s.trees().expect("trees").msg,
            &s.trees().expect("trees").smsc,
            &s.trees().expect("trees").open,
        ] {
            t.rotate_memtable_and_wait().expect("flush");
            t.major_compact().expect("compact");
        }
        assert!(
            s.trees()
                .expect("trees")
                .msg
                .get(&raw)
                .expect("raw get")
                .is_none(),
            "msg not purged"
        );
        assert!(
            s.trees()
                .expect("trees")
                .smsc
                .get(codec::smsc_key(1, "p1"))
                .expect("raw get")
                .is_none(),
            "smsc index not purged"
        );
        assert_eq!(
            s.trees().expect("trees").open.iter().count(),
            0,
            "open index not purged"
        );
        let _ = Status::Accepted;
    }
}
