//! Embedded fjall backend (work in progress: API is final, bodies land next).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    CreateOutcome, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome, ScanCursor,
    ScanPage, StateError, StateStore, StoreFuture, UpdateOutcome,
};

/// When a write batch is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Written to the OS page cache: survives a process crash (SIGKILL), not a power loss.
    None,
    /// `fdatasync` after every batch, before any waiter is completed: survives power loss.
    Batch,
}

/// `[state.embedded]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Database directory.
    pub path: PathBuf,
    /// Record lifetime in seconds.
    pub ttl_secs: u64,
    /// Fsync policy.
    pub fsync: FsyncPolicy,
    /// Bound of the writer's op queue.
    pub queue_capacity: usize,
    /// Most ops per write batch.
    pub max_batch: usize,
    /// Longest the writer lingers to fill a batch, microseconds (0 = never linger).
    pub max_batch_delay_us: u64,
    /// A write not completed within this many ms fails with `Unavailable`.
    pub op_timeout_ms: u64,
    /// Block cache size in MiB.
    pub cache_mib: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: PathBuf::from("data/state"),
            ttl_secs: 24 * 3600,
            fsync: FsyncPolicy::None,
            queue_capacity: 16_384,
            max_batch: 1024,
            max_batch_delay_us: 0,
            op_timeout_ms: 2_000,
            cache_mib: 64,
        }
    }
}

impl EmbeddedConfig {
    /// TTL as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

/// The embedded store. Cheap to share: hold it as `Arc<dyn StateStore>`.
pub struct EmbeddedStore {
    _cfg: EmbeddedConfig,
}

impl EmbeddedStore {
    /// Opens (or creates) the database and starts the writer threads.
    pub fn open(cfg: EmbeddedConfig) -> Result<Arc<EmbeddedStore>, StateError> {
        Ok(Arc::new(EmbeddedStore { _cfg: cfg }))
    }
}

impl StateStore for EmbeddedStore {
    fn create(&self, _record: MessageRecord) -> StoreFuture<CreateOutcome> {
        todo!()
    }
    fn update(
        &self,
        _key: MessageKey,
        _u: Vec<PartUpdate>,
        _now: u64,
    ) -> StoreFuture<UpdateOutcome> {
        todo!()
    }
    fn apply_receipt(&self, _l: u32, _s: String, _r: ReceiptInfo) -> StoreFuture<ReceiptOutcome> {
        todo!()
    }
    fn get(&self, _key: MessageKey) -> StoreFuture<Option<MessageRecord>> {
        todo!()
    }
    fn find_by_smsc_id(&self, _l: u32, _s: String) -> StoreFuture<Option<(MessageKey, u16)>> {
        todo!()
    }
    fn scan_non_final(&self, _c: Option<ScanCursor>, _limit: usize) -> StoreFuture<ScanPage> {
        todo!()
    }
    fn expire_due(&self, _now: u64, _limit: usize) -> StoreFuture<Vec<MessageRecord>> {
        todo!()
    }
    fn is_available(&self) -> bool {
        true
    }
}
