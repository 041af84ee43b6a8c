//! Message state: the model ([`model`]), the [`StateStore`] trait every backend implements,
//! and the embedded fjall backend ([`embedded`]); also [`aerospike`] (shared by replicas) and
//! [`memory`] (NOT durable: benchmark baseline and tests).
//!
//! # Contract (all backends)
//!
//! * A record per message, keyed by `(app_id, transaction_id)`: two apps may reuse an id.
//! * [`StateStore::create`] is insert-if-absent: a repeated `(app_id, transaction_id)` returns
//!   the stored record ([`CreateOutcome::Exists`]) and never overwrites it. This is the
//!   idempotency check; it is atomic, so two concurrent requests with one id cannot both send.
//! * Writes complete (their future resolves) only when durable per the backend's policy; the
//!   gateway answers success only after `create` resolved `Created` (ARCHITECTURE invariant).
//! * Statuses only move forward ([`model::Status::advance`]); repeated or stale updates and
//!   duplicate receipts are harmless no-ops.
//! * `PartUpdate::Submitted` writes the part's SMSC id and the receipt index
//!   `(link_id, smsc_id)` → `(key, part)` in one atomic write.
//! * Every record carries `expires_at_ms = created_at_ms + ttl`; past it the record is absent
//!   to every read. [`StateStore::expire_due`] turns records still non-final at their expiry
//!   into `Expired` and hands them back (for CDRs) exactly once.
//! * Failure: an unreachable, stuck or overloaded store answers [`StateError::Unavailable`] /
//!   [`StateError::Overloaded`] within a bounded time; futures never hang forever.
//!
//! # Futures and runtimes
//!
//! Methods return [`StoreFuture`]: a boxed `Send + 'static` future that needs no particular
//! runtime (no tokio timer or reactor inside), so monoio shard threads and the tokio side
//! runtime can both await it. The embedded backend completes them from its own threads.

pub mod aerospike;
// Public for `perf/benches/state.rs`; not an API. (Modules are documented inside: rustdoc
// resolves a module's own links in its parent's scope once it also has an outer doc comment.)
#[doc(hidden)]
pub mod codec;
pub mod embedded;
pub mod journal;
mod keyfilter;
pub mod memory;
pub mod model;
pub mod suite;
pub mod wal;

use std::future::Future;
use std::pin::Pin;

pub use embedded::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};
pub use memory::{MemoryConfig, MemoryStore};
pub use model::{
    Encoding, MessageKey, MessageRecord, PartRecord, PartUpdate, ReceiptInfo, Status,
    TransitionRefused,
};

/// Largest page of [`StateStore::scan_non_final`] / [`StateStore::expire_due`]: bounds the
/// memory of one call and the size of the write batch an expiry sweep creates.
pub const MAX_PAGE: usize = 10_000;

/// A runtime-agnostic future returned by every [`StateStore`] method.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'static>>;

/// Errors of the state store. The API maps `Unavailable` and `Overloaded` to
/// 503 `state_unavailable`, `Invalid` to 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The store cannot serve: I/O failure, stuck writer (timeout), closed, poisoned.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The write queue is full: the store is behind; retry later.
    #[error("state store overloaded: write queue full")]
    Overloaded,
    /// The request itself is invalid (e.g. transaction id too long).
    #[error("invalid state request: {0}")]
    Invalid(String),
    /// A stored value could not be decoded.
    #[error("corrupt state record: {0}")]
    Corrupt(String),
}

impl StateError {
    /// True when the store (not the request) is at fault: answer 503, try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StateError::Unavailable(_) | StateError::Overloaded)
    }
}

/// Result of [`StateStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Stored (durably per policy); the record as stored (with `expires_at_ms` set).
    Created(MessageRecord),
    /// A live record with this `(app_id, transaction_id)` already exists: the stored one.
    Exists(MessageRecord),
}

/// Result of [`StateStore::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
// The record is moved out once per op; boxing it would add an allocation per state write.
#[allow(clippy::large_enum_variant)]
pub enum UpdateOutcome {
    /// The record after the updates; `changed` is false when every update was a no-op.
    Updated {
        /// Record as now stored.
        record: MessageRecord,
        /// Whether any update changed anything.
        changed: bool,
    },
    /// No live record with that key.
    NotFound,
}

/// Result of [`StateStore::apply_receipt`].
#[derive(Debug, Clone, PartialEq, Eq)]
// The record is moved out once per op; boxing it would add an allocation per state write.
#[allow(clippy::large_enum_variant)]
pub enum ReceiptOutcome {
    /// The receipt changed the part (and maybe the message); the record as now stored.
    Applied(MessageRecord),
    /// Nothing to change (repeat, intermediate receipt, or the part was already final): ack it.
    Duplicate,
    /// No live part has this `(link_id, smsc_id)`. May be transient if the receipt overtook its
    /// `submit_sm_resp` write; the caller may retry a bounded number of times.
    NotFound,
}

/// Opaque position in a [`StateStore::scan_non_final`] walk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanCursor(pub Vec<u8>);

/// One page of [`StateStore::scan_non_final`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Non-final, unexpired records.
    pub records: Vec<MessageRecord>,
    /// Pass back to get the next page; `None` when the walk is complete.
    pub next: Option<ScanCursor>,
}

/// A message state backend. Object-safe: the gateway holds an `Arc<dyn StateStore>`.
pub trait StateStore: Send + Sync + 'static {
    /// Inserts `record` unless a live record with its key exists (idempotency). The store sets
    /// `expires_at_ms` from its TTL. Resolves once durable per the backend's policy.
    fn create(&self, record: MessageRecord) -> StoreFuture<CreateOutcome>;

    /// Applies `updates` in order, forward-only, at time `now_ms`; `Submitted` updates also
    /// write the receipt index, in the same atomic write.
    fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        now_ms: u64,
    ) -> StoreFuture<UpdateOutcome>;

    /// Correlates a receipt by `(link_id, normalised smsc_id)` and applies it idempotently.
    /// Resolves once the change is durable, so `deliver_sm_resp` may be sent after it.
    fn apply_receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> StoreFuture<ReceiptOutcome>;

    /// The live record for `key` (also the idempotency lookup by `(app_id, transaction_id)`).
    fn get(&self, key: MessageKey) -> StoreFuture<Option<MessageRecord>>;

    /// The message and part index a `(link_id, normalised smsc_id)` belongs to.
    fn find_by_smsc_id(
        &self,
        link_id: u32,
        smsc_id: String,
    ) -> StoreFuture<Option<(MessageKey, u16)>>;

    /// Walks live records that are not final (for resubmission / reconciliation after a
    /// restart), at most `limit` (clamped to 1..=[`MAX_PAGE`]) per page, oldest expiry first.
    fn scan_non_final(&self, cursor: Option<ScanCursor>, limit: usize) -> StoreFuture<ScanPage>;

    /// Marks up to `limit` (clamped to 1..=[`MAX_PAGE`]) records whose expiry is `<= now_ms` and that are still non-final as
    /// `Expired` (every non-final part), and returns them; each such record is returned once.
    /// The gateway calls it periodically and writes a CDR for each.
    fn expire_due(&self, now_ms: u64, limit: usize) -> StoreFuture<Vec<MessageRecord>>;

    /// Resolves once every write issued before it is committed and on stable storage,
    /// whatever the fsync policy (for graceful shutdown).
    fn flush(&self) -> StoreFuture<()>;

    /// Cheap health check (no I/O) for `/healthy` and metrics: false while the store is known
    /// to be failing (last write failed, or writer stuck). Advisory only: do not use it to stop
    /// sending writes, since a write is what detects recovery; failing writes already fail fast.
    fn is_available(&self) -> bool;
}

/// Current Unix time in ms (the store's clock for expiry checks).
/// A store future that is already resolved (validation errors, synchronous backends).
pub(crate) fn ready<T: Send + 'static>(r: Result<T, StateError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(r))
}

/// The keyed hash of the stores' hot maps and stripe choice (journal and memory backends alike,
/// so baseline and measured store stay comparable): random per instance, so chosen ids cannot
/// pile onto one stripe, and several times cheaper than std's SipHash on these short keys
/// (SipHash was ~2 µs of the ~7 µs per message the journal cost over the memory store:
/// `perf record` of `state_engines`, perf/RESULTS.md, 2026-11-26).
pub(crate) type FastHash = foldhash::quality::RandomState;

/// `transaction_id` bounds every backend enforces (the key of every record).
pub(crate) fn check_txid(t: &str) -> Result<(), StateError> {
    if t.is_empty() || t.len() > model::MAX_TRANSACTION_ID_LEN {
        return Err(StateError::Invalid(format!(
            "transaction_id must be 1..={} bytes",
            model::MAX_TRANSACTION_ID_LEN
        )));
    }
    Ok(())
}

/// The arguments of [`StateStore::update`] every backend checks before anything else: the key's
/// transaction id and the SMSC id of every `Submitted` update.
pub(crate) fn check_update(key: &MessageKey, updates: &[PartUpdate]) -> Result<(), StateError> {
    check_txid(&key.transaction_id)?;
    for u in updates {
        if let PartUpdate::Submitted {
            smsc_message_id, ..
        } = u
        {
            check_smsc_id(smsc_message_id)?;
        }
    }
    Ok(())
}

/// SMSC message id bounds every backend enforces (the receipt index key).
pub(crate) fn check_smsc_id(s: &str) -> Result<(), StateError> {
    if s.is_empty() || s.len() > model::MAX_SMSC_ID_LEN {
        return Err(StateError::Invalid(format!(
            "smsc message id must be 1..={} bytes",
            model::MAX_SMSC_ID_LEN
        )));
    }
    Ok(())
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
