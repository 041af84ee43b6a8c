//! Journal state backend: hot records in shared striped memory, durability from per-thread
//! append-only logs ([`super::wal`]), fjall as the cold store filled by checkpoints.
//!
//! # Why
//!
//! The fjall-writer backend ([`super::embedded`]) does every read-modify-write on one writer
//! thread: six memtable inserts, two thread hops and (with `fsync = batch`) three group commits
//! in a row per message. Measured end to end that cost 30% (fsync off) to 54–73% (batch) of the
//! throughput of the non-durable memory backend (`perf/RESULTS.md`, 2026-11-26). Here the
//! calling shard does the work itself, under one stripe lock, and only waits for its own log.
//!
//! # Layout
//!
//! * **Hot**: records, their non-final set (by expiry) and the receipt index `(link, SMSC id)` →
//!   `(key, part)` in [`STRIPES`] stripes, as in [`super::memory`]. Every record carries a
//!   `version`, incremented under its stripe lock by every change. **When a key is hot, the hot
//!   record is the truth**; the cold store is read only on a hot miss.
//! * **Logs**: every change appends the record's whole new image `(key, version, record)` to the
//!   calling thread's lane of the write-ahead log, and the op's future completes once that frame
//!   is durable (written to the OS with `fsync = off`, fdatasync'ed with `batch`). Whole images
//!   make replay order-free: the highest version of a key wins, whichever lane it is in, so a
//!   receipt applied on shard B never depends on shard A's log.
//! * **Cold**: the embedded backend's fjall layout (`msg`, `smsc`, `open`; see
//!   [`super::embedded`]), with record values in format V3 (carrying the version). A background
//!   thread checkpoints: it seals the logs, writes each changed record's latest image once
//!   (plus its `open` entry while non-final, and its receipt index entries once per SMSC id,
//!   so a late or repeated receipt finds an evicted record) in one fjall batch, or, from
//!   [`INGEST_MIN_RECORDS`] records on, as new sorted tables per keyspace (see `ingest`),
//!   persists it, then deletes the sealed segments. A one-part message created and finished
//!   between two checkpoints costs two cold inserts (against six memtable inserts in the
//!   writer engine).
//! * **Logs and sync** ([`super::wal`]): with `sync` off every thread has its own lane, written
//!   by that thread once per event-loop turn; with `sync` all threads share one lane that its
//!   sync thread writes and fdatasyncs, under load at most every `sync_linger_us` (each
//!   fdatasync costs a device flush whatever it covers, so one stream of larger syncs measured
//!   best; see `wal::linger_after` for how the wait adapts to the load).
//! * **Eviction**: a record that is checkpointed (its latest version is cold) and unchanged for
//!   `hot_secs` leaves memory (sooner when the hot set is 3/4 full); a later op on it loads it
//!   back from cold under its stripe lock.
//!
//! # Reads wait for durability too
//!
//! A change is visible in memory before its frame is durable. So every answer that exposes a
//! record (`get`, `create` → `Exists`, a duplicate receipt) waits until the record's latest
//! frame is durable: no client is ever told about a state a crash could take back.
//!
//! # Key filter
//!
//! `create` of an id that is not hot must know whether the cold store has it (idempotency).
//! For a new id that was a fjall read that misses, about a third of this engine's cost end to
//! end (`perf/RESULTS.md`, session 9). Each stripe keeps a key filter (`keyfilter.rs`) instead,
//! and a `create` it answers "absent" for skips the read. The invariant: **every key of the
//! cold store whose record is unexpired is in its stripe's filter**, once `filter_ready` is
//! set. It holds because
//! * every key reaches the cold store from a hot slot, and every slot is made in
//!   `insert_slot`, which inserts the key (new records, replayed ones, cold loads);
//! * the filters keep a key for at least one `ttl` after its insert, and a record expires one
//!   `ttl` after its creation (the filters rotate per `ttl`, see `keyfilter`);
//! * at open, after the replay's checkpoint, the `state-keyscan` thread inserts every
//!   unexpired key of the cold store and only then sets `filter_ready` (until then, every
//!   `create` reads). If a stored record expires more than one `ttl` from now (the TTL was
//!   lowered) or is corrupt, the filters are not used at all; after an I/O error the
//!   background thread runs the scan again a minute later (a later scan is as good: what
//!   reaches the cold store meanwhile is inserted when it is hot).
//!
//! An expired record's key may be absent from the filter while its image is still cold
//! (compaction drops it only later). A `create` that skipped the read then cannot continue
//! the old version, so it starts the new record's version from the clock (ms): above any
//! version an incarnation that expired at least one `ttl` (≥ 60 s in config) ago can have
//! reached, so the replay and the checkpoint prefer the new image. Its stale `open` and
//! receipt index entries are recognised as such, as for any replaced incarnation.
//!
//! # Recovery
//!
//! At open: fjall (the last checkpoint), then every segment left in `<path>-wal/` is read (a
//! torn or corrupt tail is cut at the last intact frame), the highest version of each key is
//! kept, and those newer than their cold image become hot again. A checkpoint then folds them
//! into fjall and deletes the old segments before the store serves.
//!
//! # Bounds and failures
//!
//! * `max_hot_records`: a `create` beyond it answers [`StateError::Overloaded`] (503); records
//!   loaded back from cold and replayed ones are never refused.
//! * Log lanes: per-lane buffer and frame size bounds (see [`super::wal`]); a lane whose write or
//!   fdatasync failed answers `Unavailable` until it could write to a fresh segment; one that
//!   has not *returned* after `op_timeout_ms` (a hung disk) is failed the same way by the
//!   log's watchdog thread.
//! * A failed checkpoint keeps the sealed segments and the dirty marks and is retried on the
//!   next tick; after a failure the cold database is reopened (fjall poisons itself after an I/O
//!   error), and while it is closed, ops that need a cold read answer `Unavailable`.
//! * An op whose frame could not be made durable answers `Unavailable`; its change stays in
//!   memory (and may still reach a log): outcome unknown, as with the other backends, and a
//!   client retry with the same id finds it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::PersistMode;

use super::codec;
use super::embedded::{EmbeddedConfig, Trees, fjall_err, lookup_smsc, open_trees};
use super::keyfilter::KeyFilter;
use super::wal::{self, Pos, Wal, WalConfig};
use super::{
    CreateOutcome, FastHash, MAX_PAGE, MessageKey, MessageRecord, PartUpdate, ReceiptInfo,
    ReceiptOutcome, ScanCursor, ScanPage, StateError, StateStore, Status, StoreFuture,
    UpdateOutcome, check_smsc_id, check_txid, check_update, ready, unix_ms,
};

/// Lock stripes (records, and separately the receipt index): far above any shard count.
pub const STRIPES: usize = 64;

/// The stripe of a key's hash: bits 32.. of it, which a stripe's table does not use to place
/// slots (hashbrown takes the low bits for the bucket and the top seven as its tag), so the
/// keys of one stripe still spread over all of its table.
fn stripe_index(h: u64) -> usize {
    (h >> 32) as usize & (STRIPES - 1)
}

/// How often the background thread wakes: writes log bytes no future is driving, checks
/// whether a checkpoint is due, evicts.
const TICK: Duration = Duration::from_millis(10);

/// Wait before the key filter's scan runs again after an I/O error.
const SCAN_RETRY: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(60)
};

/// Most hot records one eviction pass drops per stripe (bounds how long a stripe is held).
const EVICT_PER_STRIPE: usize = 4096;

/// `[state]` settings of the journal backend.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// fjall directory (the cold store); the logs live in `<path>-wal`.
    pub path: PathBuf,
    /// Record lifetime from creation, seconds.
    pub ttl_secs: u64,
    /// Time after expiry before compaction may drop a cold entry, seconds.
    pub purge_grace_secs: u64,
    /// fdatasync a log frame before its op completes (`fsync = batch`).
    pub sync: bool,
    /// With `sync`: most time between two fdatasyncs of the log under load, µs (group
    /// commit; see `wal::linger_after`).
    pub sync_linger_us: u64,
    /// Most records held in memory; `create` beyond it answers `Overloaded`.
    pub max_hot_records: usize,
    /// A checkpointed, unchanged record stays in memory this long.
    pub hot_secs: u64,
    /// A checkpoint runs at least this often while something changed, ms.
    pub checkpoint_interval_ms: u64,
    /// ... and as soon as this many log bytes were written since the last one.
    pub checkpoint_bytes: u64,
    /// fjall block cache, MiB.
    pub cache_mib: u64,
    /// A log write or fdatasync that has not returned after this long fails the log (its
    /// waiting ops and new ones answer `Unavailable`) until it returns: a hung disk gets a
    /// bounded 503, not a request timeout.
    pub op_timeout_ms: u64,
    /// A checkpoint of at least this many records is ingested into fjall as new tables
    /// rather than written through its journal and memtables (see [`INGEST_MIN_RECORDS`]).
    /// Not a `[state]` key: tests set it to 1 to run every checkpoint that way.
    pub ingest_min_records: usize,
    /// Memory of the key filter that spares `create` its cold read of a new
    /// `transaction_id` (both generations, all stripes; see "Key filter"); 0 disables it.
    pub key_filter_bytes: usize,
    /// Tests: this many key filter scans fail with an I/O error first.
    #[cfg(test)]
    pub fail_scans: Arc<AtomicUsize>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from("var/state"),
            ttl_secs: 24 * 3600,
            purge_grace_secs: 3600,
            sync: true,
            sync_linger_us: 1_000,
            max_hot_records: 1_000_000,
            hot_secs: 30,
            checkpoint_interval_ms: 5_000,
            checkpoint_bytes: 64 << 20,
            cache_mib: 64,
            op_timeout_ms: 1_000,
            ingest_min_records: INGEST_MIN_RECORDS,
            key_filter_bytes: 16 << 20,
            #[cfg(test)]
            fail_scans: Arc::default(),
        }
    }
}

impl JournalConfig {
    /// Directory of the log segments: `<path>-wal`, beside the fjall directory (fjall owns
    /// its own directory).
    pub fn wal_dir(&self) -> PathBuf {
        wal_dir_of(&self.path)
    }

    fn problems(&self) -> Option<String> {
        if self.ttl_secs == 0 {
            return Some("ttl_secs must be at least 1".into());
        }
        if self.max_hot_records == 0 {
            return Some("max_hot_records must be at least 1".into());
        }
        if self.sync_linger_us > 100_000 {
            return Some("sync_linger_us must be at most 100000".into());
        }
        if !(10..=60_000).contains(&self.op_timeout_ms) {
            return Some("op_timeout_ms must be 10..=60000".into());
        }
        if self.checkpoint_interval_ms == 0 || self.checkpoint_bytes == 0 {
            return Some("checkpoint interval and size must be at least 1".into());
        }
        None
    }
}

/// The journal's log directory for a store at `path`: `<path>-wal` (also checked by the
/// writer engine, which must not open a path whose logs are not folded yet).
pub fn wal_dir_of(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push("-wal");
    PathBuf::from(s)
}

/// One hot record.
struct Slot {
    /// The map's own key (shared by index, `open` and eviction entries).
    key: Arc<MessageKey>,
    /// `Inner::hash_of(key)`: the table's hash and the stripe's bits (see `stripe_index`).
    hash: u64,
    record: MessageRecord,
    /// Unique per store: ties receipt index and eviction entries to this incarnation.
    inc: u64,
    /// Incremented by every change; the log and cold images carry it.
    version: u64,
    /// Highest version known to be in the cold store.
    ckpt_version: u64,
    /// Expiry of the cold `open` entry of this key, if the cold image is non-final.
    cold_open: Option<u64>,
    /// Parts with an SMSC id whose cold receipt index entries are written.
    cold_smsc: usize,
    /// On its stripe's dirty list (not checkpointed since its last change).
    dirty_listed: bool,
    /// Log position of the latest image (`Pos::default()`: nothing pending).
    last: Pos,
    /// The logged event of `version` (cold key and cold value, see [`encode_event`]), kept
    /// until a checkpoint takes it: the checkpoint then moves bytes instead of encoding the
    /// record again, which reads its strings and parts from memory long out of cache (the
    /// encode was a quarter of the checkpoint thread's CPU). Empty once taken, after a
    /// failed log append, and for a record made hot by a replay or a cold load: the
    /// checkpoint encodes those.
    image: Vec<u8>,
}

#[derive(Default)]
struct Stripe {
    /// Slots by their stored hash: a lookup hashes its key once per op (stripe and table
    /// share the hash), and the checkpoint and eviction passes, whose lists carry the hash
    /// and the slot's own key handle, find a slot without reading the key's strings
    /// (measured: hashing and comparing those keys was a fifth of the checkpoint thread).
    records: hashbrown::HashTable<Slot>,
    /// Hot non-final records by `(expires_at_ms, key)`: the order of the cold `open` keys.
    open: BTreeSet<(u64, Arc<MessageKey>)>,
    /// Keys changed since the last checkpoint, with their hash.
    dirty: Vec<(u64, Arc<MessageKey>)>,
    /// `(checkpointed at, hash, key)`, oldest first: eviction candidates.
    evict: VecDeque<(u64, u64, Arc<MessageKey>)>,
    next_inc: u64,
    /// Keys of this stripe that may be cold (see "Key filter").
    filter: KeyFilter,
    /// `create`s whose cold read the filter spared.
    filter_skips: u64,
}

/// A hot record with the parts of its stripe a change also writes (see `Inner::commit`).
type SlotMut<'a> = (
    &'a mut Slot,
    &'a mut BTreeSet<(u64, Arc<MessageKey>)>,
    &'a mut Vec<(u64, Arc<MessageKey>)>,
);

impl Stripe {
    fn get(&self, h: u64, key: &MessageKey) -> Option<&Slot> {
        self.records.find(h, |s| *s.key == *key)
    }

    /// The slot whose own key handle is `key` (the dirty and eviction lists' handles): a
    /// pointer compare. A handle names one incarnation: a replaced record's slot has a new
    /// handle and is not found. Takes the table, not the stripe, so that a caller can still
    /// write the stripe's lists.
    fn handle_mut<'a>(
        records: &'a mut hashbrown::HashTable<Slot>,
        h: u64,
        key: &Arc<MessageKey>,
    ) -> Option<&'a mut Slot> {
        records.find_mut(h, |s| Arc::ptr_eq(&s.key, key))
    }

    fn slot_mut(&mut self, h: u64, key: &MessageKey) -> Option<SlotMut<'_>> {
        let slot = self.records.find_mut(h, |s| *s.key == *key)?;
        Some((slot, &mut self.open, &mut self.dirty))
    }
}

struct ReceiptEntry {
    key: Arc<MessageKey>,
    /// `Inner::hash_of(key)`.
    hash: u64,
    part: u16,
    expires_at_ms: u64,
    inc: u64,
}

/// Receipt index key: `(link, SMSC id)`.
#[derive(PartialEq, Eq)]
struct RKey {
    link: u32,
    id: Box<str>,
}

/// A borrowed [`RKey`] for lookups: no allocation per receipt.
struct RRef<'a> {
    link: u32,
    id: &'a str,
}

// `RKey` and `RRef` must hash alike (hashbrown looks one up by the other).
impl Hash for RKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        RRef {
            link: self.link,
            id: &self.id,
        }
        .hash(h);
    }
}

impl Hash for RRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u32(self.link);
        self.id.hash(h);
    }
}

impl hashbrown::Equivalent<RKey> for RRef<'_> {
    fn equivalent(&self, k: &RKey) -> bool {
        self.link == k.link && self.id == &*k.id
    }
}

/// A receipt's record: key handle, `hash_of(key)`, part, and the incarnation of a hot entry.
type Found = (Arc<MessageKey>, u64, u16, Option<u64>);

type ReceiptStripe = hashbrown::HashMap<RKey, ReceiptEntry, FastHash>;

/// Counters for tests, logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Records in memory.
    pub hot_records: usize,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Record images written to the cold store by checkpoints.
    pub checkpointed_records: u64,
    /// Checkpoints that failed (retried).
    pub checkpoint_failures: u64,
    /// Checkpoints written as ingested tables (see [`INGEST_MIN_RECORDS`]).
    pub ingested_checkpoints: u64,
    /// Records evicted from memory.
    pub evicted: u64,
    /// Records loaded back from the cold store.
    pub loaded: u64,
    /// Records replayed from the logs at open.
    pub replayed: u64,
    /// Log bytes written since the last checkpoint sealed the logs.
    pub log_bytes: u64,
    /// fdatasyncs of the logs (`fsync = batch`: one per group commit; `off`: at a clean stop).
    pub log_syncs: u64,
    /// `fsync = batch`: ops that waited for an fdatasync and were completed by it (per
    /// fdatasync: `/ log_syncs`; `sync_linger_us` raises it under load).
    pub log_sync_waiters: u64,
    /// The key filter holds every unexpired cold key (its start-up scan is done).
    pub key_filter_ready: bool,
    /// `create`s of a new id that the key filter spared a cold read.
    pub key_filter_skips: u64,
}

struct Inner {
    stripes: Vec<Mutex<Stripe>>,
    receipts: Vec<Mutex<ReceiptStripe>>,
    hasher: FastHash,
    count: AtomicUsize,
    cfg: JournalConfig,
    ttl_ms: u64,
    wal: Arc<Wal>,
    cold: RwLock<Option<Arc<Trees>>>,
    /// The last checkpoint succeeded (advisory health).
    cold_ok: AtomicBool,
    /// One checkpoint at a time (background thread, open, tests).
    ckpt_lock: Mutex<()>,
    last_ckpt: Mutex<Instant>,
    /// Records collected by the last checkpoint pass: the next one's first allocation.
    last_ckpt_items: AtomicUsize,
    sweep_start: AtomicUsize,
    checkpoints: AtomicU64,
    checkpointed_records: AtomicU64,
    checkpoint_failures: AtomicU64,
    /// Tests: makes the next checkpoint fail after collecting its items and releasing the
    /// stripes, having run this first (changes made meanwhile, as a shard could).
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    fail_next_checkpoint: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    ingested_checkpoints: AtomicU64,
    evicted: AtomicU64,
    loaded: AtomicU64,
    replayed: AtomicU64,
    /// Set once the start-up scan put every unexpired cold key into the stripes' filters;
    /// before that (or if it failed) `create` always reads the cold store.
    filter_ready: AtomicBool,
    /// When the background thread runs the scan again, after an I/O error.
    scan_retry_at: Mutex<Option<Instant>>,
}

/// The journal store. Dropping the last handle stops the background thread and syncs the logs.
pub struct JournalStore {
    inner: Arc<Inner>,
    stop: Arc<Stop>,
    bg: Option<JoinHandle<()>>,
    /// The key filter's start-up scan (ends by itself, or at the stop flag).
    scan: Option<JoinHandle<()>>,
}

/// A poisoned stripe lock only means another thread panicked holding it; every mutation here
/// keeps the stripe consistent at each step, so go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Log frame payload: `klen` (u16 LE), the cold key ([`codec::msg_key`]), then the cold value
/// ([`codec::encode_versioned_into`]): a checkpoint writes an event's two parts as they are.
fn encode_event(out: &mut Vec<u8>, key: &MessageKey, version: u64, r: &MessageRecord) {
    out.clear();
    let klen = 8 + key.transaction_id.len();
    out.extend_from_slice(&(klen as u16).to_le_bytes());
    out.extend_from_slice(&key.app_id.to_be_bytes());
    out.extend_from_slice(key.transaction_id.as_bytes());
    codec::encode_versioned_into(out, r, version);
}

/// The cold key of an event this store encoded (see [`encode_event`]).
fn event_key(ev: &[u8]) -> &[u8] {
    let klen = usize::from(u16::from_le_bytes([ev[0], ev[1]]));
    &ev[2..2 + klen]
}

fn decode_event(p: &[u8]) -> Result<(MessageKey, MessageRecord, u64), String> {
    let (len, rest) = p.split_first_chunk::<2>().ok_or("short event")?;
    let len = usize::from(u16::from_le_bytes(*len));
    let kb = rest.get(..len).ok_or("short event key")?;
    let key = codec::parse_msg_key(kb)?;
    let (r, v) = codec::decode_versioned(&key, &rest[len..])?;
    Ok((key, r, v))
}

/// Parts that may still get a receipt: receipt index entries worth keeping cold.
fn indexable(r: &MessageRecord) -> impl Iterator<Item = (u16, u32, &str)> {
    r.parts
        .iter()
        .filter_map(|p| match (p.link_id, &p.smsc_message_id) {
            (Some(l), Some(id)) => Some((p.index, l, id.as_str())),
            _ => None,
        })
}

/// One record of a checkpoint pass.
struct CkptItem {
    /// The slot's own handle (see `Stripe::handle_mut`).
    key: Arc<MessageKey>,
    /// Its hash, hence its stripe: items are collected stripe by stripe, and the pass after
    /// the write takes each stripe lock once for all of its items.
    hash: u64,
    version: u64,
    /// The record's event (see [`encode_event`]), taken from the slot under the stripe lock
    /// (no record clone; encoded there only for a slot without one, see `Slot::image`).
    ev: Vec<u8>,
    expires_at_ms: u64,
    open_now: bool,
    cold_open: Option<u64>,
    /// Parts with an SMSC id, when the cold index lacks some of them, and their
    /// receipt index entries.
    index_parts: Option<usize>,
    /// Those entries: indices into the pass's [`SmscEntries`].
    smsc: std::ops::Range<usize>,
}

/// The receipt index entries of one checkpoint pass, all in one buffer: built per item as two
/// vectors each, their allocation and freeing were ~10% of a checkpoint's CPU.
#[derive(Default)]
struct SmscEntries {
    bytes: Vec<u8>,
    /// Per entry, the end of its key and of its value in `bytes`; each entry starts where
    /// the one before it ends.
    ends: Vec<(usize, usize)>,
}

impl SmscEntries {
    fn push(&mut self, link_id: u32, smsc_id: &str, expires_at_ms: u64, part: u16, mk: &[u8]) {
        codec::put_smsc_key(&mut self.bytes, link_id, smsc_id);
        let key_end = self.bytes.len();
        codec::put_smsc_value(&mut self.bytes, expires_at_ms, part, mk);
        self.ends.push((key_end, self.bytes.len()));
    }

    /// Entry `i`: (key, value).
    fn get(&self, i: usize) -> (&[u8], &[u8]) {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p].1);
        let (k, v) = self.ends[i];
        (&self.bytes[start..k], &self.bytes[k..v])
    }
}

impl CkptItem {
    fn mk(&self) -> &[u8] {
        event_key(&self.ev)
    }

    fn val(&self) -> &[u8] {
        &self.ev[2 + self.mk().len()..]
    }
}

/// Checkpoints of at least this many records are written to fjall as new sorted tables
/// (ingestion) instead of through its journal and memtables: no journal copy, no skiplist
/// insert, no later flush of the same bytes. Smaller ones use a write batch, so a quiet
/// gateway does not make a table file per keyspace every few seconds.
pub const INGEST_MIN_RECORDS: usize = 4096;

/// Writes one checkpoint's entries as ingested tables, each strictly ascending. Tables are
/// fsynced (with their directory and the new version) before `finish` returns, so this is as
/// durable as a synced batch, in both fsync modes. Three keyspaces are three ingestions, not
/// one atomic batch, hence the order: receipt index, then `open`, then the records. A crash
/// in between leaves the records' cold images at their old versions, so the log replay
/// (whose segments a checkpoint removes only after this returns) makes those records hot
/// again and the next checkpoint writes the same entries again: all three are idempotent.
fn ingest(
    t: &Trees,
    msgs: &[&CkptItem],
    open_ops: &[(Vec<u8>, bool)],
    smsc_ops: &[(&[u8], &[u8], u64)],
) -> Result<(), StateError> {
    if !smsc_ops.is_empty() {
        let mut ing = t.smsc.start_ingestion().map_err(fjall_err)?;
        for (k, v, _) in smsc_ops {
            ing.write(*k, *v).map_err(fjall_err)?;
        }
        ing.finish().map_err(fjall_err)?;
    }
    if !open_ops.is_empty() {
        let mut ing = t.open.start_ingestion().map_err(fjall_err)?;
        for (k, insert) in open_ops {
            if *insert {
                ing.write(k.as_slice(), []).map_err(fjall_err)?;
            } else {
                ing.write_tombstone(k.as_slice()).map_err(fjall_err)?;
            }
        }
        ing.finish().map_err(fjall_err)?;
    }
    let mut ing = t.msg.start_ingestion().map_err(fjall_err)?;
    for it in msgs {
        ing.write(it.mk(), it.val()).map_err(fjall_err)?;
    }
    ing.finish().map_err(fjall_err)
}

/// The stop flag of the store's background threads (set by `Drop`).
type Stop = (Mutex<bool>, std::sync::Condvar);

/// Starts one of the store's background threads, `run(&inner, &stop)`.
fn spawn_worker(
    inner: &Arc<Inner>,
    stop: &Arc<Stop>,
    name: &str,
    run: fn(&Inner, &Stop),
) -> Result<JoinHandle<()>, StateError> {
    let (inner, stop) = (Arc::clone(inner), Arc::clone(stop));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(&inner, &stop))
        .map_err(|e| StateError::Unavailable(format!("spawn {name}: {e}")))
}

impl JournalStore {
    /// Opens the cold store and the logs, replays what the logs hold beyond the last
    /// checkpoint, checkpoints it, and starts the background thread.
    pub fn open(cfg: JournalConfig) -> Result<Arc<JournalStore>, StateError> {
        if let Some(p) = cfg.problems() {
            return Err(StateError::Invalid(format!("journal store: {p}")));
        }
        std::fs::create_dir_all(&cfg.path)
            .map_err(|e| StateError::Unavailable(format!("create {}: {e}", cfg.path.display())))?;
        let trees = Arc::new(open_trees(&cold_cfg(&cfg))?);
        let wal_dir = cfg.wal_dir();
        let segments = if wal_dir.exists() {
            wal::list_segments(&wal_dir)?
        } else {
            Vec::new()
        };
        let mut wcfg = WalConfig::new(wal_dir, cfg.sync);
        wcfg.io_timeout = Some(Duration::from_millis(cfg.op_timeout_ms));
        if cfg.sync {
            // Every fdatasync costs the kernel a device flush whatever it covers (measured on
            // the 2-core VM: ~15-20 µs of sync-thread CPU per message with a log per shard).
            // One log shared by every thread, synced up to `sync_linger_us` apart, makes
            // each fdatasync cover every shard's ops: REST max 13.0-13.7k msg/s against
            // 10.2-11.9k with a log per shard or no linger (perf/RESULTS.md, 2026-11-26).
            wcfg.max_lanes = 1;
            wcfg.sync_linger = Duration::from_micros(cfg.sync_linger_us);
            // Segments removed after a checkpoint are reused, not deleted: an fdatasync of a
            // file whose size and extents do not change commits no ext4 journal (see
            // `WalConfig::recycle_segments`). Enough for one checkpoint's worth of log, plus
            // the open segment and one spare.
            wcfg.recycle_segments =
                (cfg.checkpoint_bytes.div_ceil(wcfg.segment_bytes) as usize + 2).min(64);
        }
        let wal = Wal::open(wcfg)?;
        let inner = Arc::new(Inner {
            stripes: {
                let bytes = cfg.key_filter_bytes / (2 * STRIPES);
                let (gen_ms, now) = (cfg.ttl_secs.saturating_mul(1000), unix_ms());
                (0..STRIPES)
                    .map(|_| {
                        Mutex::new(Stripe {
                            filter: KeyFilter::new(bytes, gen_ms, now),
                            ..Stripe::default()
                        })
                    })
                    .collect()
            },
            receipts: (0..STRIPES)
                .map(|_| Mutex::new(ReceiptStripe::default()))
                .collect(),
            hasher: FastHash::default(),
            count: AtomicUsize::new(0),
            ttl_ms: cfg.ttl_secs.saturating_mul(1000),
            cfg,
            wal,
            cold: RwLock::new(Some(trees)),
            cold_ok: AtomicBool::new(true),
            ckpt_lock: Mutex::new(()),
            last_ckpt: Mutex::new(Instant::now()),
            last_ckpt_items: AtomicUsize::new(0),
            sweep_start: AtomicUsize::new(0),
            checkpoints: AtomicU64::new(0),
            checkpointed_records: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_checkpoint: Mutex::new(None),
            ingested_checkpoints: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            filter_ready: AtomicBool::new(false),
            scan_retry_at: Mutex::new(None),
        });
        inner.replay(&segments)?;
        // Fold the replayed records (and retire the old segments) before serving.
        inner.checkpoint()?;
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let bg = spawn_worker(&inner, &stop, "state-checkpoint", Inner::background)?;
        // After the replay's checkpoint: every key replayed is cold by now (and in the filters).
        let scan = spawn_worker(&inner, &stop, "state-keyscan", Inner::scan_cold_keys)?;
        Ok(Arc::new(JournalStore {
            inner,
            stop,
            bg: Some(bg),
            scan: Some(scan),
        }))
    }

    /// Counters (tests, logs).
    pub fn stats(&self) -> JournalStats {
        let i = &*self.inner;
        let (log_syncs, log_sync_waiters) = i.wal.sync_counts();
        JournalStats {
            hot_records: i.count.load(Ordering::Relaxed),
            checkpoints: i.checkpoints.load(Ordering::Relaxed),
            checkpointed_records: i.checkpointed_records.load(Ordering::Relaxed),
            checkpoint_failures: i.checkpoint_failures.load(Ordering::Relaxed),
            ingested_checkpoints: i.ingested_checkpoints.load(Ordering::Relaxed),
            evicted: i.evicted.load(Ordering::Relaxed),
            loaded: i.loaded.load(Ordering::Relaxed),
            replayed: i.replayed.load(Ordering::Relaxed),
            log_bytes: i.wal.unrotated_bytes(),
            log_syncs,
            log_sync_waiters,
            key_filter_ready: i.filter_ready.load(Ordering::Acquire),
            key_filter_skips: i.stripes.iter().map(|s| lock(s).filter_skips).sum(),
        }
    }

    /// Runs a checkpoint now (tests, benchmarks); returns the records written.
    pub fn checkpoint_now(&self) -> Result<usize, StateError> {
        self.inner.checkpoint()
    }

    /// Evicts every checkpointed record whatever its age (tests: exercises the cold paths).
    pub fn evict_all_for_test(&self) {
        self.inner.evict(u64::MAX, true);
    }

    /// The write-ahead log (tests: failure injection).
    pub fn wal_for_test(&self) -> &Arc<Wal> {
        &self.inner.wal
    }

    /// A future that completes when `pos` is durable, then yields `v`.
    fn after<T: Send + 'static>(&self, r: Result<(T, Pos), StateError>) -> StoreFuture<T> {
        match r {
            Err(e) => ready(Err(e)),
            Ok((v, pos)) if pos.end == 0 || self.inner.wal.is_durable(pos) => ready(Ok(v)),
            Ok((v, pos)) => {
                let f = self.inner.wal.durable(pos);
                Box::pin(async move {
                    f.await?;
                    Ok(v)
                })
            }
        }
    }
}

fn cold_cfg(cfg: &JournalConfig) -> EmbeddedConfig {
    EmbeddedConfig {
        path: cfg.path.clone(),
        ttl_secs: cfg.ttl_secs,
        purge_grace_secs: cfg.purge_grace_secs,
        cache_mib: cfg.cache_mib,
        ..EmbeddedConfig::default()
    }
}

impl Drop for JournalStore {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *lock(m) = true;
            cv.notify_all();
        }
        if let Some(bg) = self.bg.take() {
            let _ = bg.join();
        }
        if let Some(scan) = self.scan.take() {
            let _ = scan.join();
        }
        // Whatever the policy, a clean stop leaves every frame on stable storage, then folds
        // the logs into the cold store (so the next start replays nothing).
        let _ = self.inner.wal.sync_all();
        if self.inner.checkpoint().is_ok()
            && let Ok(t) = self.inner.cold()
        {
            let _ = t.db.persist(PersistMode::SyncAll);
        }
    }
}

impl Inner {
    fn hash_of(&self, key: &MessageKey) -> u64 {
        self.hasher.hash_one(key)
    }

    fn receipt_stripe(&self, link_id: u32, smsc_id: &str) -> usize {
        let k = RRef {
            link: link_id,
            id: smsc_id,
        };
        (self.hasher.hash_one(k) as usize) & (STRIPES - 1)
    }

    fn cold(&self) -> Result<Arc<Trees>, StateError> {
        self.cold
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StateError::Unavailable("state cold store reopening".into()))
    }

    /// The cold image of `key` and its version (expired ones included).
    fn cold_get(&self, key: &MessageKey) -> Result<Option<(MessageRecord, u64)>, StateError> {
        let t = self.cold()?;
        let Some(v) = t
            .msg
            .get(codec::msg_key(key.app_id, &key.transaction_id))
            .map_err(fjall_err)?
        else {
            return Ok(None);
        };
        codec::decode_versioned(key, &v)
            .map(Some)
            .map_err(StateError::Corrupt)
    }

    /// Encodes the image of `key` at `version` into `ev` (which the slot keeps for the
    /// checkpoint) and appends it to the calling thread's log lane.
    fn log(
        &self,
        ev: &mut Vec<u8>,
        key: &MessageKey,
        version: u64,
        r: &MessageRecord,
    ) -> Result<Pos, StateError> {
        encode_event(ev, key, version, r);
        self.wal.append(ev)
    }

    /// Index entry for one part (latest wins, unless the entry is a newer record's).
    fn index_part(&self, link: u32, id: &str, e: ReceiptEntry, only_if_newer: bool) {
        let mut g = lock(&self.receipts[self.receipt_stripe(link, id)]);
        match g.get_mut(&RRef { link, id }) {
            Some(old) if only_if_newer && old.expires_at_ms > e.expires_at_ms => {}
            Some(old) => *old = e,
            None => {
                g.insert(
                    RKey {
                        link,
                        id: id.into(),
                    },
                    e,
                );
            }
        }
    }

    /// Removes `slot`'s index entries that still point at it.
    fn unindex(&self, slot: &Slot) {
        for (_, link, id) in indexable(&slot.record) {
            let mut g = lock(&self.receipts[self.receipt_stripe(link, id)]);
            let k = RRef { link, id };
            if g.get(&k).is_some_and(|e| e.inc == slot.inc) {
                g.remove(&k);
            }
        }
    }

    fn index_all(&self, slot: &Slot, only_if_newer: bool) {
        for (part, link, id) in indexable(&slot.record) {
            self.index_part(
                link,
                id,
                ReceiptEntry {
                    key: Arc::clone(&slot.key),
                    hash: slot.hash,
                    part,
                    expires_at_ms: slot.record.expires_at_ms,
                    inc: slot.inc,
                },
                only_if_newer,
            );
        }
    }

    fn list_dirty(slot: &mut Slot, dirty: &mut Vec<(u64, Arc<MessageKey>)>) {
        if !slot.dirty_listed {
            slot.dirty_listed = true;
            dirty.push((slot.hash, Arc::clone(&slot.key)));
        }
    }

    /// Inserts a slot and its receipt index entries (on the dirty list with `dirty`) and
    /// returns its key handle. `h`: `hash_of(key)`. `logged`: the position
    /// and bytes of its latest log event, if this store logged it.
    #[allow(clippy::too_many_arguments)]
    fn insert_slot(
        &self,
        s: &mut Stripe,
        h: u64,
        key: MessageKey,
        record: MessageRecord,
        version: u64,
        ckpt_version: u64,
        cold_open: Option<u64>,
        logged: (Pos, Vec<u8>),
        dirty: bool,
    ) -> Arc<MessageKey> {
        let (last, image) = logged;
        // Every key that can reach the cold store is hot first, and passes here.
        s.filter.insert(h, unix_ms());
        let inc = s.next_inc * STRIPES as u64 + stripe_index(h) as u64;
        s.next_inc += 1;
        let key = Arc::new(key);
        if !record.status.is_final() {
            s.open.insert((record.expires_at_ms, Arc::clone(&key)));
        }
        let slot = Slot {
            key: Arc::clone(&key),
            hash: h,
            // A record read from (or replacing one in) the cold store has its index there.
            cold_smsc: if ckpt_version > 0 && version == ckpt_version {
                indexable(&record).count()
            } else {
                0
            },
            record,
            inc,
            version,
            ckpt_version,
            cold_open,
            dirty_listed: dirty,
            last,
            image,
        };
        if dirty {
            s.dirty.push((h, Arc::clone(&key)));
        }
        self.index_all(&slot, true);
        s.records.insert_unique(h, slot, |sl| sl.hash);
        self.count.fetch_add(1, Ordering::Relaxed);
        key
    }

    fn remove_slot(&self, s: &mut Stripe, h: u64, key: &MessageKey) -> Option<Slot> {
        let (slot, _) = s.records.find_entry(h, |sl| *sl.key == *key).ok()?.remove();
        s.open
            .remove(&(slot.record.expires_at_ms, Arc::clone(&slot.key)));
        self.unindex(&slot);
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(slot)
    }

    /// Makes `key` hot from the cold store if it is there (expired ones too: callers check).
    /// Returns whether the key is hot now.
    fn ensure_hot(&self, s: &mut Stripe, h: u64, key: &MessageKey) -> Result<bool, StateError> {
        if s.get(h, key).is_some() {
            return Ok(true);
        }
        let Some((rec, v)) = self.cold_get(key)? else {
            return Ok(false);
        };
        let cold_open = (!rec.status.is_final()).then_some(rec.expires_at_ms);
        let k = self.insert_slot(
            s,
            h,
            key.clone(),
            rec,
            v,
            v,
            cold_open,
            (Pos::default(), Vec::new()),
            false,
        );
        s.evict.push_back((unix_ms(), h, k));
        self.loaded.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn create(&self, mut r: MessageRecord, now: u64) -> Result<(CreateOutcome, Pos), StateError> {
        r.validate().map_err(StateError::Invalid)?;
        let key = r.key();
        let h = self.hash_of(&key);
        let mut g = lock(&self.stripes[stripe_index(h)]);
        let s = &mut *g;
        // The version to follow and the cold state a replaced record leaves behind.
        let (hot, prev_version, ckpt_version, cold_open) = match s.get(h, &key) {
            Some(slot) if slot.record.expires_at_ms > now => {
                return Ok((CreateOutcome::Exists(slot.record.clone()), slot.last));
            }
            Some(slot) => (true, slot.version, slot.ckpt_version, slot.cold_open),
            // Not in the cold store, or only past its expiry (see "Key filter"): a new record
            // whose version starts from the clock, above any an expired incarnation left
            // there (a replay then prefers it, and the checkpoint overwrites that image).
            None if self.filter_ready.load(Ordering::Acquire) && !s.filter.may_contain(h) => {
                s.filter_skips += 1;
                (false, now, 0, None)
            }
            None => match self.cold_get(&key)? {
                Some((rec, _)) if rec.expires_at_ms > now => {
                    return Ok((CreateOutcome::Exists(rec), Pos::default()));
                }
                Some((rec, v)) => (
                    false,
                    v,
                    v,
                    (!rec.status.is_final()).then_some(rec.expires_at_ms),
                ),
                None => (false, 0, 0, None),
            },
        };
        if !hot && self.count.load(Ordering::Relaxed) >= self.cfg.max_hot_records {
            return Err(StateError::Overloaded);
        }
        r.expires_at_ms = now.saturating_add(self.ttl_ms);
        r.status = r.derive_status();
        let version = prev_version + 1;
        let mut ev = Vec::new();
        let pos = self.log(&mut ev, &key, version, &r)?;
        if hot {
            self.remove_slot(s, h, &key);
        }
        self.insert_slot(
            s,
            h,
            key,
            r.clone(),
            version,
            ckpt_version,
            cold_open,
            (pos, ev),
            true,
        );
        Ok((CreateOutcome::Created(r), pos))
    }

    fn update(
        &self,
        key: &MessageKey,
        updates: &[PartUpdate],
        at_ms: u64,
        now: u64,
    ) -> Result<(UpdateOutcome, Pos), StateError> {
        check_update(key, updates)?;
        let h = self.hash_of(key);
        let mut g = lock(&self.stripes[stripe_index(h)]);
        let s = &mut *g;
        if !self.ensure_hot(s, h, key)? {
            return Ok((UpdateOutcome::NotFound, Pos::default()));
        }
        let Some((slot, open, dirty)) = s.slot_mut(h, key) else {
            return Ok((UpdateOutcome::NotFound, Pos::default()));
        };
        if slot.record.expires_at_ms <= now {
            return Ok((UpdateOutcome::NotFound, Pos::default()));
        }
        let mut rec = slot.record.clone();
        let changed = rec.apply_all(updates, at_ms, |_, _, _, _| {});
        if !changed {
            return Ok((
                UpdateOutcome::Updated {
                    record: rec,
                    changed: false,
                },
                slot.last,
            ));
        }
        let pos = self.commit(slot, open, dirty, &rec, |r| {
            r.apply_all(updates, at_ms, |_, _, _, _| {});
        })?;
        Ok((
            UpdateOutcome::Updated {
                record: rec,
                changed: true,
            },
            pos,
        ))
    }

    /// Logs `rec` (the slot's record with a change applied) as the next version of the hot
    /// record in `slot`, then installs it by applying the same change (`apply`, deterministic
    /// given the same inputs) to the slot's record in place: an op makes one record clone,
    /// the one it returns, not a second to keep (measured: record clones were the largest
    /// allocation source on the shards). Also writes the receipt index entries of new SMSC
    /// ids, `open` and the dirty mark. Nothing changes if the log append fails. Takes the
    /// stripe's parts, not the stripe: one map lookup per op, by the caller.
    fn commit(
        &self,
        slot: &mut Slot,
        open: &mut BTreeSet<(u64, Arc<MessageKey>)>,
        dirty: &mut Vec<(u64, Arc<MessageKey>)>,
        rec: &MessageRecord,
        apply: impl FnOnce(&mut MessageRecord),
    ) -> Result<Pos, StateError> {
        let version = slot.version + 1;
        // The slot's buffer, reused when no checkpoint took it since the last change. Left
        // empty if the append fails: the checkpoint then encodes the (unchanged) record.
        let mut ev = std::mem::take(&mut slot.image);
        let pos = self.log(&mut ev, &slot.key, version, rec)?;
        let exp = rec.expires_at_ms;
        // Under the stripe lock, like the in-place change below: a receipt that finds a new
        // entry waits for this lock and then sees the part submitted.
        for (part, link, id) in indexable(rec) {
            let known = slot
                .record
                .parts
                .get(usize::from(part))
                .is_some_and(|p| p.smsc_message_id.as_deref() == Some(id));
            if !known {
                let e = ReceiptEntry {
                    key: Arc::clone(&slot.key),
                    hash: slot.hash,
                    part,
                    expires_at_ms: exp,
                    inc: slot.inc,
                };
                self.index_part(link, id, e, false);
            }
        }
        let was_open = !slot.record.status.is_final();
        apply(&mut slot.record);
        debug_assert!(slot.record == *rec, "a change applied twice must agree");
        slot.version = version;
        slot.last = pos;
        slot.image = ev;
        if was_open && slot.record.status.is_final() {
            open.remove(&(exp, Arc::clone(&slot.key)));
        }
        Self::list_dirty(slot, dirty);
        Ok(pos)
    }

    /// The record of a receipt: hot index first, then the cold one (`inc` unknown).
    fn find_receipt(
        &self,
        link_id: u32,
        smsc_id: &str,
        now: u64,
    ) -> Result<Option<Found>, StateError> {
        {
            let g = lock(&self.receipts[self.receipt_stripe(link_id, smsc_id)]);
            if let Some(e) = g.get(&RRef {
                link: link_id,
                id: smsc_id,
            }) && e.expires_at_ms > now
            {
                return Ok(Some((Arc::clone(&e.key), e.hash, e.part, Some(e.inc))));
            }
        }
        let t = self.cold()?;
        let Some((mk, part)) = lookup_smsc(&t.smsc, link_id, smsc_id, now)? else {
            return Ok(None);
        };
        let key = codec::parse_msg_key(&mk).map_err(StateError::Corrupt)?;
        let h = self.hash_of(&key);
        Ok(Some((Arc::new(key), h, part, None)))
    }

    fn receipt(
        &self,
        link_id: u32,
        smsc_id: &str,
        receipt: &ReceiptInfo,
        now: u64,
    ) -> Result<(ReceiptOutcome, Pos), StateError> {
        check_smsc_id(smsc_id)?;
        let Some((key, h, part, inc)) = self.find_receipt(link_id, smsc_id, now)? else {
            return Ok((ReceiptOutcome::NotFound, Pos::default()));
        };
        let mut g = lock(&self.stripes[stripe_index(h)]);
        let s = &mut *g;
        if !self.ensure_hot(s, h, &key)? {
            return Ok((ReceiptOutcome::NotFound, Pos::default()));
        }
        let Some((slot, open, dirty)) = s.slot_mut(h, &key) else {
            return Ok((ReceiptOutcome::NotFound, Pos::default()));
        };
        // The entry must still describe this record: same incarnation (hot entry), or the
        // part really carries this SMSC id on this link (cold entry).
        let same = match inc {
            Some(inc) => slot.inc == inc,
            None => slot.record.parts.get(usize::from(part)).is_some_and(|p| {
                p.link_id == Some(link_id) && p.smsc_message_id.as_deref() == Some(smsc_id)
            }),
        };
        if !same || slot.record.expires_at_ms <= now {
            return Ok((ReceiptOutcome::NotFound, Pos::default()));
        }
        let mut rec = slot.record.clone();
        let at = receipt.received_at_ms.max(rec.updated_at_ms);
        if !rec.apply_receipt(part, receipt, at) {
            return Ok((ReceiptOutcome::Duplicate, slot.last));
        }
        let pos = self.commit(slot, open, dirty, &rec, |r| {
            r.apply_receipt(part, receipt, at);
        })?;
        Ok((ReceiptOutcome::Applied(rec), pos))
    }

    fn get(&self, key: &MessageKey, now: u64) -> Result<(Option<MessageRecord>, Pos), StateError> {
        if check_txid(&key.transaction_id).is_err() {
            return Ok((None, Pos::default()));
        }
        {
            let h = self.hash_of(key);
            let g = lock(&self.stripes[stripe_index(h)]);
            if let Some(slot) = g.get(h, key) {
                let live = (slot.record.expires_at_ms > now).then(|| slot.record.clone());
                return Ok((live, slot.last));
            }
        }
        // A miss is final for the cold read too: an evicted record is cold before it leaves.
        let rec = self.cold_get(key)?.map(|(r, _)| r);
        Ok((rec.filter(|r| r.expires_at_ms > now), Pos::default()))
    }

    fn expire(&self, now_ms: u64, limit: usize) -> Result<(Vec<MessageRecord>, Pos), StateError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut out = Vec::new();
        let mut last = Pos::default();
        let mut first_err = None;
        let start = self.sweep_start.fetch_add(1, Ordering::Relaxed) & (STRIPES - 1);
        'stripes: for i in 0..STRIPES {
            let si = (start + i) & (STRIPES - 1);
            let mut g = lock(&self.stripes[si]);
            let s = &mut *g;
            while out.len() < limit {
                let Some((exp, key)) = s.open.first().cloned() else {
                    break;
                };
                if exp > now_ms {
                    break;
                }
                let h = self.hash_of(&key);
                match self.expire_one(s, h, &key, now_ms) {
                    Ok(Some((r, pos))) => {
                        out.push(r);
                        last = pos;
                    }
                    Ok(None) => {
                        s.open.remove(&(exp, key));
                    }
                    Err(e) => {
                        first_err = Some(e);
                        break 'stripes;
                    }
                }
            }
        }
        // Cold records past expiry that nobody touched since they left memory. An error here
        // must not lose the hot records above (already `Expired` and logged): it ends the
        // walk, and is reported only if nothing was expired.
        let cold = if out.len() < limit && first_err.is_none() {
            self.cold().map_err(|e| first_err = Some(e)).ok()
        } else {
            None
        };
        if let Some(t) = cold {
            let end = now_ms.saturating_add(1).to_be_bytes();
            // Bounded: stale or hot entries at the head cannot make one sweep walk far.
            for kv in t.open.range(..end.to_vec()).take(2 * limit) {
                if out.len() >= limit {
                    break;
                }
                let k = match kv.key() {
                    Ok(k) => k,
                    Err(e) => {
                        first_err = Some(fjall_err(e));
                        break;
                    }
                };
                let Some(exp) = codec::be_u64_at(&k, 0) else {
                    continue;
                };
                let Ok(key) = codec::parse_msg_key(&k[8..]) else {
                    continue;
                };
                let h = self.hash_of(&key);
                let mut g = lock(&self.stripes[stripe_index(h)]);
                let s = &mut *g;
                if s.get(h, &key).is_some() {
                    // Hot: the hot sweep above owns it (or it is final / not due).
                    continue;
                }
                match self.ensure_hot(s, h, &key) {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = t.open.remove(k.to_vec());
                        continue;
                    }
                    Err(e) => {
                        first_err = Some(e);
                        break;
                    }
                }
                let due = s.get(h, &key).is_some_and(|sl| {
                    sl.record.expires_at_ms == exp && sl.record.expires_at_ms <= now_ms
                });
                if !due {
                    // A stale entry (the record moved on, or a replaced incarnation's): drop
                    // it so it does not hold up the head of the range until compaction.
                    let _ = t.open.remove(k.to_vec());
                    continue;
                }
                match self.expire_one(s, h, &key, now_ms) {
                    Ok(Some((r, pos))) => {
                        out.push(r);
                        last = pos;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        first_err = Some(e);
                        break;
                    }
                }
            }
        }
        match first_err {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok((out, last)),
        }
    }

    /// Turns the hot record `key` `Expired` if it is non-final: the record and its position.
    fn expire_one(
        &self,
        s: &mut Stripe,
        h: u64,
        key: &MessageKey,
        now_ms: u64,
    ) -> Result<Option<(MessageRecord, Pos)>, StateError> {
        let Some((slot, open, dirty)) = s.slot_mut(h, key) else {
            return Ok(None);
        };
        if slot.record.status.is_final() {
            return Ok(None);
        }
        let expire = PartUpdate::AllPending {
            status: Status::Expired,
            error_code: None,
        };
        let mut rec = slot.record.clone();
        rec.apply(&expire, now_ms);
        let pos = self.commit(slot, open, dirty, &rec, |r| {
            r.apply(&expire, now_ms);
        })?;
        Ok(Some((rec, pos)))
    }

    fn scan(
        &self,
        cursor: Option<ScanCursor>,
        limit: usize,
        now: u64,
    ) -> Result<ScanPage, StateError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Positions are cold `open` keys (expiry BE ++ message key); hot `open` sorts the same.
        let mut from = now.saturating_add(1).to_be_bytes().to_vec();
        if let Some(ScanCursor(c)) = cursor
            && c > from
        {
            from = c;
        }
        let from_exp = codec::be_u64_at(&from, 0).unwrap_or(0);
        let mut cand: Vec<(Vec<u8>, MessageKey)> = Vec::new();
        let t = self.cold()?;
        for kv in t.open.range(from.clone()..).take(limit) {
            let k = kv.key().map_err(fjall_err)?;
            if let Ok(key) = codec::parse_msg_key(&k[8.min(k.len())..]) {
                cand.push((k.to_vec(), key));
            }
        }
        let low = (from_exp, Arc::new(MessageKey::new(0, "")));
        for stripe in &self.stripes {
            let g = lock(stripe);
            let mut taken = 0;
            for (exp, key) in g
                .open
                .range((Bound::Included(low.clone()), Bound::Unbounded))
            {
                let pos = codec::open_key(*exp, &codec::msg_key(key.app_id, &key.transaction_id));
                if pos < from {
                    continue;
                }
                cand.push((pos, (**key).clone()));
                taken += 1;
                if taken >= limit {
                    break;
                }
            }
        }
        cand.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        cand.dedup_by(|a, b| a.0 == b.0);
        cand.truncate(limit);
        let mut page = ScanPage::default();
        for (pos, key) in &cand {
            let exp = codec::be_u64_at(pos, 0).unwrap_or(0);
            let (rec, _) = self.get(key, now)?;
            if let Some(r) = rec
                && r.expires_at_ms == exp
                && !r.status.is_final()
            {
                page.records.push(r);
            }
        }
        if cand.len() >= limit
            && let Some((pos, _)) = cand.last()
        {
            let mut c = pos.clone();
            c.push(0);
            page.next = Some(ScanCursor(c));
        }
        Ok(page)
    }

    /// Reads every segment and makes the newest image of each key hot when it is newer than
    /// its cold image.
    fn replay(&self, segments: &[PathBuf]) -> Result<(), StateError> {
        let mut latest: HashMap<MessageKey, (u64, MessageRecord)> = HashMap::new();
        let mut corrupt = 0u64;
        for seg in segments {
            let rep = wal::read_segment(seg, |p| match decode_event(p) {
                Ok((key, rec, v)) => match latest.get(&key) {
                    Some((have, _)) if *have >= v => {}
                    _ => {
                        latest.insert(key, (v, rec));
                    }
                },
                Err(_) => corrupt += 1,
            })?;
            if rep.cut_bytes > 0 {
                // Also the unused rest of a recycled segment: normal, hence not a warning.
                tracing::info!(
                    segment = %seg.display(),
                    frames = rep.frames,
                    ignored_bytes = rep.cut_bytes,
                    "state log: read up to the last intact frame (the rest is a write a crash \
                     interrupted, or unused space of a recycled segment)"
                );
            }
        }
        if corrupt > 0 {
            tracing::warn!(corrupt, "state log: undecodable events ignored");
        }
        let mut replayed = 0u64;
        for (key, (v, rec)) in latest {
            let cold = self.cold_get(&key)?;
            let cold_v = cold.as_ref().map_or(0, |(_, v)| *v);
            if cold.is_some() && cold_v >= v {
                continue;
            }
            let cold_open =
                cold.and_then(|(r, _)| (!r.status.is_final()).then_some(r.expires_at_ms));
            let h = self.hash_of(&key);
            let mut g = lock(&self.stripes[stripe_index(h)]);
            let s = &mut *g;
            self.insert_slot(
                s,
                h,
                key,
                rec,
                v,
                cold_v,
                cold_open,
                (Pos::default(), Vec::new()),
                true,
            );
            replayed += 1;
        }
        self.replayed.fetch_add(replayed, Ordering::Relaxed);
        if replayed > 0 {
            tracing::info!(replayed, segments = segments.len(), "state log replayed");
        }
        Ok(())
    }

    /// Seals the logs, writes every changed record's latest image to the cold store, persists
    /// it, then deletes the sealed segments. Returns the images written.
    fn checkpoint(&self) -> Result<usize, StateError> {
        let _one = lock(&self.ckpt_lock);
        *lock(&self.last_ckpt) = Instant::now();
        let r = self.checkpoint_inner();
        match &r {
            Ok(n) => {
                self.cold_ok.store(true, Ordering::Release);
                self.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.checkpointed_records
                    .fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.cold_ok.store(false, Ordering::Release);
                self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "state checkpoint failed; logs kept, retrying");
                self.reopen_cold();
            }
        }
        r
    }

    fn checkpoint_inner(&self) -> Result<usize, StateError> {
        let sealed = self.wal.rotate()?;
        let t = self.cold()?;
        // Sized like the last pass: growing a vector of ~10^5 items copied each of them about
        // twice.
        let mut items: Vec<CkptItem> =
            Vec::with_capacity(self.last_ckpt_items.load(Ordering::Relaxed));
        let mut smsc = SmscEntries::default();
        for stripe in &self.stripes {
            let mut g = lock(stripe);
            let s = &mut *g;
            items.reserve(s.dirty.len());
            for (h, key) in std::mem::take(&mut s.dirty) {
                if let Some(slot) = Stripe::handle_mut(&mut s.records, h, &key) {
                    slot.dirty_listed = false;
                    // Taken in any case: the event of a version already cold is of no use.
                    let mut ev = std::mem::take(&mut slot.image);
                    if slot.version > slot.ckpt_version {
                        let rec = &slot.record;
                        if ev.is_empty() {
                            encode_event(&mut ev, &slot.key, slot.version, rec);
                        }
                        let mk = event_key(&ev);
                        let n = indexable(rec).count();
                        let index_parts = (n > slot.cold_smsc).then_some(n);
                        let first = smsc.ends.len();
                        if index_parts.is_some() {
                            for (part, link, id) in indexable(rec) {
                                smsc.push(link, id, rec.expires_at_ms, part, mk);
                            }
                        }
                        items.push(CkptItem {
                            key: Arc::clone(&slot.key),
                            hash: h,
                            version: slot.version,
                            expires_at_ms: rec.expires_at_ms,
                            open_now: !rec.status.is_final(),
                            ev,
                            cold_open: slot.cold_open,
                            index_parts,
                            smsc: first..smsc.ends.len(),
                        });
                    }
                }
            }
        }
        self.last_ckpt_items.store(items.len(), Ordering::Relaxed);
        // Ok(true): written as ingested tables.
        let written = (|| -> Result<bool, StateError> {
            #[cfg(test)]
            if let Some(meanwhile) = lock(&self.fail_next_checkpoint).take() {
                meanwhile();
                return Err(StateError::Unavailable("injected".into()));
            }
            if items.is_empty() {
                return Ok(false);
            }
            // Written in key order, keyspace by keyspace: a memtable (a skiplist) is then
            // walked once from left to right instead of searched from its top per entry at
            // random places (measured: the search was ~60% of this thread's CPU with the
            // entries in stripe order), and an ingestion needs it.
            let mut order: Vec<&CkptItem> = items.iter().collect();
            order.sort_unstable_by(|a, b| a.mk().cmp(b.mk()));
            // A key listed twice on its stripe's dirty list (a record replaced since the last
            // pass) gives two items of the same slot and version.
            order.dedup_by(|a, b| a.mk() == b.mk());
            let mut open_ops: Vec<(Vec<u8>, bool)> = Vec::new();
            let mut smsc_ops: Vec<(&[u8], &[u8], u64)> = Vec::new();
            for it in &order {
                let exp = it.expires_at_ms;
                if let Some(old) = it.cold_open
                    && (!it.open_now || old != exp)
                {
                    open_ops.push((codec::open_key(old, it.mk()), false));
                }
                if it.open_now && it.cold_open != Some(exp) {
                    open_ops.push((codec::open_key(exp, it.mk()), true));
                }
                // Once per SMSC id: a receipt (or a repeated final one, which re-notifies the
                // callback) for an evicted record finds it.
                smsc_ops.extend(it.smsc.clone().map(|i| {
                    let (k, v) = smsc.get(i);
                    (k, v, exp)
                }));
            }
            // Keys are distinct per item (an item's removal and insert have different
            // expiries) and across items (different message keys); should two meet anyway,
            // the insert wins.
            open_ops.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            open_ops.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                kept.1 |= same && later.1;
                same
            });
            // One SMSC id on one link for two records (the SMSC reused an id): the entry of
            // the later-expiring, i.e. newer, record wins.
            smsc_ops.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.2.cmp(&a.2)));
            smsc_ops.dedup_by(|later, kept| later.0 == kept.0);
            if order.len() >= self.cfg.ingest_min_records.max(1) {
                return ingest(&t, &order, &open_ops, &smsc_ops).map(|()| true);
            }
            let mut batch = t.db.batch();
            for it in &order {
                batch.insert(&t.msg, it.mk(), it.val());
            }
            for (k, insert) in &open_ops {
                if *insert {
                    batch.insert(&t.open, k.as_slice(), []);
                } else {
                    batch.remove(&t.open, k.as_slice());
                }
            }
            for (k, v, _) in smsc_ops {
                batch.insert(&t.smsc, k, v);
            }
            batch.commit().map_err(fjall_err)?;
            let mode = if self.cfg.sync {
                PersistMode::SyncData
            } else {
                PersistMode::Buffer
            };
            t.db.persist(mode).map_err(fjall_err).map(|()| false)
        })();
        if let Ok(true) = written {
            self.ingested_checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        let now = unix_ms();
        for run in items.chunk_by_mut(|a, b| stripe_index(a.hash) == stripe_index(b.hash)) {
            let mut g = lock(&self.stripes[stripe_index(run[0].hash)]);
            let s = &mut *g;
            for it in run {
                let Some(slot) = Stripe::handle_mut(&mut s.records, it.hash, &it.key) else {
                    continue;
                };
                if written.is_ok() {
                    slot.ckpt_version = slot.ckpt_version.max(it.version);
                    slot.cold_open = it.open_now.then_some(it.expires_at_ms);
                    if let Some(n) = it.index_parts {
                        slot.cold_smsc = slot.cold_smsc.max(n);
                    }
                    if slot.version == slot.ckpt_version {
                        s.evict.push_back((now, it.hash, Arc::clone(&it.key)));
                    }
                } else {
                    // The event goes back for the retry, unless a newer one replaced it.
                    if slot.version == it.version && slot.image.is_empty() {
                        slot.image = std::mem::take(&mut it.ev);
                    }
                    Self::list_dirty(slot, &mut s.dirty);
                }
            }
        }
        written?;
        self.wal.remove_sealed(&sealed)?;
        Ok(items.len())
    }

    /// After a failed checkpoint: fjall may have poisoned itself; drop it and open it again.
    fn reopen_cold(&self) {
        let mut w = self.cold.write().unwrap_or_else(|e| e.into_inner());
        *w = None;
        match open_trees(&cold_cfg(&self.cfg)) {
            Ok(t) => *w = Some(Arc::new(t)),
            // Other threads may still hold the old handle (fjall locks the directory):
            // the next tick tries again.
            Err(e) => tracing::warn!(error = %e, "state cold store reopen failed; retrying"),
        }
    }

    /// Drops checkpointed, unchanged records that have been so for `hot_secs` (all of them with
    /// `force`, or when the hot set is 3/4 full).
    fn evict(&self, now: u64, force: bool) {
        let hot_ms = self.cfg.hot_secs.saturating_mul(1000);
        let pressure = self.count.load(Ordering::Relaxed) >= self.cfg.max_hot_records / 4 * 3;
        let mut evicted = 0u64;
        for stripe in &self.stripes {
            let mut g = lock(stripe);
            let s = &mut *g;
            for _ in 0..EVICT_PER_STRIPE {
                let Some(&(at, _, _)) = s.evict.front() else {
                    break;
                };
                if !(force || pressure) && at.saturating_add(hot_ms) > now {
                    break;
                }
                let Some((_, h, key)) = s.evict.pop_front() else {
                    break;
                };
                // The handle is this entry's incarnation: a replaced record is not found.
                let evictable = Stripe::handle_mut(&mut s.records, h, &key).is_some_and(|sl| {
                    sl.version == sl.ckpt_version
                        && (sl.last.end == 0 || self.wal.is_durable(sl.last))
                });
                if evictable {
                    self.remove_slot(s, h, &key);
                    evicted += 1;
                }
            }
        }
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
    }

    /// The key filter's start-up scan (thread `state-keyscan`): puts every unexpired key of
    /// the cold store into its stripe's filter, then lets `create` trust the filters.
    fn scan_cold_keys(&self, stop: &Stop) {
        // All stripes' filters are alike: one says whether they are off (too small).
        if !lock(&self.stripes[0]).filter.enabled() {
            return; // every create reads the cold store
        }
        let t0 = Instant::now();
        match self.scan_cold_keys_inner(stop) {
            Ok(Some(keys)) => {
                self.filter_ready.store(true, Ordering::Release);
                tracing::info!(
                    keys,
                    ms = t0.elapsed().as_millis() as u64,
                    "state key filter ready"
                );
            }
            Ok(None) => {}
            // An I/O error may pass (a disk or a reopened cold store): the background thread
            // runs the scan again later. A corrupt record will not: no retry.
            Err(e) => {
                let retry = matches!(e, StateError::Unavailable(_));
                tracing::warn!(
                    error = %e,
                    retry_in_s = retry.then_some(SCAN_RETRY.as_secs()),
                    "state key filter not used: its scan of the cold store failed; every new id reads the cold store"
                );
                if retry {
                    *lock(&self.scan_retry_at) = Some(Instant::now() + SCAN_RETRY);
                }
            }
        }
    }

    /// `Some(keys inserted)`, or `None` when stopped or when the filters cannot be trusted.
    fn scan_cold_keys_inner(&self, stop: &Stop) -> Result<Option<usize>, StateError> {
        #[cfg(test)]
        if self
            .cfg
            .fail_scans
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StateError::Unavailable("injected scan failure".into()));
        }
        let t = self.cold()?;
        let now = unix_ms();
        let horizon = now.saturating_add(self.ttl_ms);
        let mut keys = 0usize;
        // fjall's iterator reads a snapshot taken here, after the open's checkpoint. A key
        // that reaches the cold store later is hot first, hence in the filter by
        // `insert_slot`.
        for (n, kv) in t.msg.iter().enumerate() {
            if n % 4096 == 4095 && *lock(&stop.0) {
                return Ok(None);
            }
            let (k, v) = kv.into_inner().map_err(fjall_err)?;
            let exp = codec::be_u64_at(&v, codec::RECORD_EXPIRY_OFFSET)
                .ok_or_else(|| StateError::Corrupt("cold record without expiry".into()))?;
            // Expired: a create may ignore it (its version starts above the old one's).
            if exp <= now {
                continue;
            }
            // Written under a longer TTL than today's: the filters keep a key for one TTL
            // only, so they could drop this one while it still counts.
            if exp > horizon {
                tracing::info!(
                    "state key filter not used: the cold store holds records that expire more than ttl_s from now (ttl_s was lowered); every new id reads the cold store"
                );
                return Ok(None);
            }
            let key = codec::parse_msg_key(&k).map_err(StateError::Corrupt)?;
            let h = self.hash_of(&key);
            lock(&self.stripes[stripe_index(h)]).filter.insert(h, now);
            keys += 1;
        }
        Ok(Some(keys))
    }

    fn background(&self, stop: &Stop) {
        let interval = Duration::from_millis(self.cfg.checkpoint_interval_ms);
        loop {
            {
                let (m, cv) = stop;
                let g = lock(m);
                if *g {
                    return;
                }
                let (g, _) = cv.wait_timeout(g, TICK).unwrap_or_else(|e| e.into_inner());
                if *g {
                    return;
                }
            }
            // Frames of futures nobody polls any more still reach the OS within a tick.
            let _ = self.wal.flush_buffers();
            let due = lock(&self.last_ckpt).elapsed() >= interval
                || self.wal.unrotated_bytes() >= self.cfg.checkpoint_bytes
                || self.cold.read().map(|c| c.is_none()).unwrap_or(true);
            if due {
                if self.cold.read().map(|c| c.is_none()).unwrap_or(true) {
                    self.reopen_cold();
                }
                let _ = self.checkpoint();
            }
            self.evict(unix_ms(), false);
            let retry = {
                let mut at = lock(&self.scan_retry_at);
                let due = at.is_some_and(|t| Instant::now() >= t);
                if due {
                    *at = None;
                }
                due
            };
            if retry {
                // Inline: checkpoints wait for it (seconds per ten million records).
                self.scan_cold_keys(stop);
            }
        }
    }
}

impl StateStore for JournalStore {
    fn create(&self, record: MessageRecord) -> StoreFuture<CreateOutcome> {
        self.after(self.inner.create(record, unix_ms()))
    }

    fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        now_ms: u64,
    ) -> StoreFuture<UpdateOutcome> {
        self.after(self.inner.update(&key, &updates, now_ms, unix_ms()))
    }

    fn apply_receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> StoreFuture<ReceiptOutcome> {
        self.after(self.inner.receipt(link_id, &smsc_id, &receipt, unix_ms()))
    }

    fn get(&self, key: MessageKey) -> StoreFuture<Option<MessageRecord>> {
        self.after(self.inner.get(&key, unix_ms()))
    }

    fn find_by_smsc_id(
        &self,
        link_id: u32,
        smsc_id: String,
    ) -> StoreFuture<Option<(MessageKey, u16)>> {
        if check_smsc_id(&smsc_id).is_err() {
            return ready(Ok(None));
        }
        ready(
            self.inner
                .find_receipt(link_id, &smsc_id, unix_ms())
                .map(|o| o.map(|(k, _, part, _)| (Arc::unwrap_or_clone(k), part))),
        )
    }

    fn scan_non_final(&self, cursor: Option<ScanCursor>, limit: usize) -> StoreFuture<ScanPage> {
        ready(self.inner.scan(cursor, limit, unix_ms()))
    }

    fn expire_due(&self, now_ms: u64, limit: usize) -> StoreFuture<Vec<MessageRecord>> {
        self.after(self.inner.expire(now_ms, limit))
    }

    /// Syncs every log and folds them into the cold store (graceful shutdown: the next start
    /// replays nothing). Blocking I/O on the caller's thread: it runs once, at shutdown.
    fn flush(&self) -> StoreFuture<()> {
        ready(self.inner.wal.sync_all().and_then(|()| {
            self.inner.checkpoint()?;
            let t = self.inner.cold()?;
            t.db.persist(PersistMode::SyncAll).map_err(fjall_err)
        }))
    }

    fn is_available(&self) -> bool {
        self.inner.wal.is_healthy() && self.inner.cold_ok.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::suite::{self, SuiteHarness};

    struct Harness {
        dir: tempfile::TempDir,
        sync: bool,
        /// Checkpoint and evict everything after every op: every op then runs its cold path.
        cold_always: bool,
        /// Every checkpoint ingests tables (not a write batch).
        ingest: bool,
    }

    impl Harness {
        fn new(sync: bool, cold_always: bool) -> Harness {
            Harness {
                dir: tempfile::tempdir().expect("tempdir"),
                sync,
                cold_always,
                ingest: false,
            }
        }

        fn cfg(&self, ttl_secs: u64) -> JournalConfig {
            JournalConfig {
                path: self.dir.path().join("state"),
                ttl_secs,
                sync: self.sync,
                ingest_min_records: if self.ingest { 1 } else { INGEST_MIN_RECORDS },
                ..JournalConfig::default()
            }
        }
    }

    /// Runs every op of the inner store, then (once it resolved) checkpoints and evicts all.
    struct ColdAlways(Arc<JournalStore>);

    impl ColdAlways {
        fn wrap<T: Send + 'static>(&self, f: StoreFuture<T>) -> StoreFuture<T> {
            let s = Arc::clone(&self.0);
            Box::pin(async move {
                let r = f.await;
                s.checkpoint_now().expect("checkpoint");
                s.evict_all_for_test();
                r
            })
        }
    }

    impl StateStore for ColdAlways {
        fn create(&self, r: MessageRecord) -> StoreFuture<CreateOutcome> {
            self.wrap(self.0.create(r))
        }
        fn update(&self, k: MessageKey, u: Vec<PartUpdate>, n: u64) -> StoreFuture<UpdateOutcome> {
            self.wrap(self.0.update(k, u, n))
        }
        fn apply_receipt(&self, l: u32, id: String, r: ReceiptInfo) -> StoreFuture<ReceiptOutcome> {
            self.wrap(self.0.apply_receipt(l, id, r))
        }
        fn get(&self, k: MessageKey) -> StoreFuture<Option<MessageRecord>> {
            self.wrap(self.0.get(k))
        }
        fn find_by_smsc_id(&self, l: u32, id: String) -> StoreFuture<Option<(MessageKey, u16)>> {
            self.wrap(self.0.find_by_smsc_id(l, id))
        }
        fn scan_non_final(&self, c: Option<ScanCursor>, n: usize) -> StoreFuture<ScanPage> {
            self.wrap(self.0.scan_non_final(c, n))
        }
        fn expire_due(&self, now: u64, n: usize) -> StoreFuture<Vec<MessageRecord>> {
            self.wrap(self.0.expire_due(now, n))
        }
        fn flush(&self) -> StoreFuture<()> {
            self.0.flush()
        }
        fn is_available(&self) -> bool {
            self.0.is_available()
        }
    }

    impl SuiteHarness for Harness {
        fn open(&self, ttl_secs: u64) -> Arc<dyn StateStore> {
            let s = JournalStore::open(self.cfg(ttl_secs)).expect("open store");
            if self.cold_always {
                Arc::new(ColdAlways(s))
            } else {
                s
            }
        }
    }

    use crate::state::suite::{monoio_block_on, tokio_block_on};

    #[test]
    fn suite_on_monoio_fsync_off() {
        monoio_block_on(suite::run_all(&Harness::new(false, false)));
    }

    #[test]
    fn suite_on_tokio_fsync_batch() {
        tokio_block_on(suite::run_all(&Harness::new(true, false)));
    }

    #[test]
    fn suite_with_every_record_evicted_after_every_op() {
        monoio_block_on(suite::run_all(&Harness::new(false, true)));
    }

    /// The same with every checkpoint written as ingested tables: every cold read, receipt
    /// lookup, expiry and scan then runs against what ingestion wrote.
    #[test]
    fn suite_with_every_record_evicted_and_checkpoints_ingested() {
        let mut h = Harness::new(true, true);
        h.ingest = true;
        tokio_block_on(suite::run_all(&h));
    }

    fn test_cfg(dir: &std::path::Path, sync: bool) -> JournalConfig {
        JournalConfig {
            path: dir.join("state"),
            sync,
            ..JournalConfig::default()
        }
    }

    fn record(tx: &str) -> MessageRecord {
        MessageRecord::new_accepted(
            MessageKey::new(1, tx),
            1,
            "s",
            "d",
            crate::state::Encoding::Gsm7,
            "t",
            1,
            unix_ms(),
        )
    }

    fn submitted(tx: &str) -> PartUpdate {
        PartUpdate::Submitted {
            index: 0,
            link_id: 7,
            smsc_message_id: format!("m-{tx}"),
        }
    }

    fn delivered() -> ReceiptInfo {
        ReceiptInfo {
            status: Status::Delivered,
            stat: "DELIVRD".into(),
            err: None,
            done_at_ms: None,
            received_at_ms: unix_ms(),
        }
    }

    /// Child of `sigkill_loses_no_acknowledged_change`: two threads (two log lanes). Thread A
    /// creates and submits; thread B applies the receipts of A's records (a record's versions
    /// spread over both lanes). Checkpoints and evictions run all the time, so the kill lands
    /// anywhere: mid-checkpoint, between fold and segment delete, on a cold reload.
    #[test]
    #[ignore = "child process of sigkill_loses_no_acknowledged_change"]
    fn crash_child() {
        let Ok(dir) = std::env::var("SMSGW_JOURNAL_CRASH_DIR") else {
            return;
        };
        let sync = std::env::var("SMSGW_JOURNAL_CRASH_SYNC").is_ok();
        let ingest = std::env::var("SMSGW_JOURNAL_CRASH_INGEST").is_ok();
        let s = JournalStore::open(JournalConfig {
            path: PathBuf::from(dir),
            sync,
            checkpoint_interval_ms: 20,
            hot_secs: 1,
            ingest_min_records: if ingest { 1 } else { INGEST_MIN_RECORDS },
            ..JournalConfig::default()
        })
        .expect("open");
        let (tx_ids, rx_ids) = std::sync::mpsc::sync_channel::<String>(1024);
        let b = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                monoio_block_on(async {
                    while let Ok(tx) = rx_ids.recv() {
                        let r = s.apply_receipt(7, format!("m-{tx}"), delivered()).await;
                        if let Ok(ReceiptOutcome::Applied(_)) = r {
                            println!("DLV {tx}");
                        }
                    }
                })
            })
        };
        monoio_block_on(async {
            // Bounded: the parent kills us long before this ends.
            for i in 0..1_000_000u32 {
                let tx = format!("c-{i}");
                if let Ok(CreateOutcome::Created(_)) = s.create(record(&tx)).await {
                    println!("ACK {tx}");
                    let u = s.update(
                        MessageKey::new(1, tx.as_str()),
                        vec![submitted(&tx)],
                        unix_ms(),
                    );
                    if let Ok(UpdateOutcome::Updated { changed: true, .. }) = u.await {
                        println!("SUB {tx}");
                        let _ = tx_ids.send(tx);
                    }
                }
            }
        });
        drop(tx_ids);
        let _ = b.join();
    }

    fn crash_and_check(sync: bool, ingest: bool) {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crash");
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("exe"));
        cmd.args([
            "state::journal::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMSGW_JOURNAL_CRASH_DIR", &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        if ingest {
            cmd.env("SMSGW_JOURNAL_CRASH_INGEST", "1");
        }
        if sync {
            cmd.env("SMSGW_JOURNAL_CRASH_SYNC", "1");
        }
        let mut child = cmd.spawn().expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        // The strongest state acknowledged per id: 1 created, 2 submitted, 3 delivered.
        let mut acked: HashMap<String, u8> = HashMap::new();
        let mut delivered_n = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let (level, tx) = match line.split_once(' ') {
                Some(("ACK", tx)) => (1, tx),
                Some(("SUB", tx)) => (2, tx),
                Some(("DLV", tx)) => (3, tx),
                _ => continue,
            };
            if level == 3 {
                delivered_n += 1;
            }
            let e = acked.entry(tx.to_string()).or_default();
            *e = (*e).max(level);
            if delivered_n >= 3_000 || Instant::now() > deadline {
                break;
            }
        }
        // Child::kill is SIGKILL on Unix: no destructors, no final checkpoint.
        child.kill().expect("kill child");
        let _ = child.wait();
        assert!(delivered_n >= 100, "child delivered only {delivered_n}");
        let s = JournalStore::open(JournalConfig {
            path,
            sync,
            ..JournalConfig::default()
        })
        .expect("reopen after SIGKILL");
        let mut wrong = Vec::new();
        for (tx, level) in &acked {
            let r = monoio_block_on(s.get(MessageKey::new(1, tx.as_str()))).expect("get");
            let ok = matches!(
                (level, r.as_ref().map(|r| r.status)),
                (1, Some(_))
                    | (2, Some(Status::Submitted | Status::Delivered))
                    | (3, Some(Status::Delivered))
            );
            if !ok {
                wrong.push((tx.clone(), *level, r.map(|r| r.status)));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} acknowledged changes lost: {:?}",
            wrong.len(),
            acked.len(),
            &wrong[..wrong.len().min(5)]
        );
        // The receipt index came back too: a repeated receipt is a duplicate, not unknown.
        if let Some((tx, _)) = acked.iter().find(|(_, l)| **l == 3) {
            let r = monoio_block_on(s.apply_receipt(7, format!("m-{tx}"), delivered()));
            assert_eq!(r, Ok(ReceiptOutcome::Duplicate), "{tx}");
        }
    }

    #[test]
    fn hot_set_bound_refuses_new_records_and_eviction_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = JournalStore::open(JournalConfig {
            max_hot_records: 3,
            ..test_cfg(dir.path(), false)
        })
        .expect("open");
        for i in 0..3 {
            let r = monoio_block_on(s.create(record(&format!("b-{i}"))));
            assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
        }
        let r = monoio_block_on(s.create(record("b-3")));
        assert_eq!(r, Err(StateError::Overloaded));
        // A repeat of a held id is still answered from memory, not refused.
        let r = monoio_block_on(s.create(record("b-0")));
        assert!(matches!(r, Ok(CreateOutcome::Exists(_))), "{r:?}");
        // Once checkpointed, records may leave memory; they stay readable from fjall, and the
        // room they free takes new records.
        s.checkpoint_now().expect("checkpoint");
        s.evict_all_for_test();
        assert_eq!(s.stats().hot_records, 0);
        let r = monoio_block_on(s.create(record("b-3")));
        assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
        let r = monoio_block_on(s.create(record("b-1")));
        assert!(
            matches!(r, Ok(CreateOutcome::Exists(_))),
            "evicted id: {r:?}"
        );
        let got = monoio_block_on(s.get(MessageKey::new(1, "b-2"))).expect("get");
        assert_eq!(got.map(|r| r.transaction_id), Some("b-2".to_string()));
        assert!(
            s.stats().loaded == 0,
            "a repeat or a read does not load a record back"
        );
    }

    #[test]
    fn a_failed_log_sync_fails_the_op_and_reads_do_not_show_the_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = JournalStore::open(test_cfg(dir.path(), true)).expect("open");
        let key = MessageKey::new(1, "f-1");
        let r = tokio_block_on(s.create(record("f-1")));
        assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
        s.wal_for_test().fail_next_syncs_for_test(1);
        let u = tokio_block_on(s.update(key.clone(), vec![submitted("f-1")], unix_ms()));
        assert!(matches!(u, Err(StateError::Unavailable(_))), "{u:?}");
        // The change is in memory but its frame is not durable: a read that would show it
        // waits for that frame and fails rather than answer with a state a crash could undo.
        let g = tokio_block_on(s.get(key.clone()));
        assert!(
            matches!(g, Err(StateError::Unavailable(_))),
            "read of a not-durable change: {g:?}"
        );
        // The log recovers by itself (a fresh segment); a later change makes the record
        // durable again, and the update that "failed" may have landed (outcome unknown).
        let deadline = Instant::now() + Duration::from_secs(10);
        let rec = loop {
            let r = tokio_block_on(s.apply_receipt(7, "m-f-1".into(), delivered()));
            if let Ok(ReceiptOutcome::Applied(rec)) = r {
                break rec;
            }
            assert!(Instant::now() < deadline, "log never recovered: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(rec.status, Status::Delivered);
        let g = tokio_block_on(s.get(key)).expect("get after recovery");
        assert_eq!(g.map(|r| r.status), Some(Status::Delivered));
        assert!(s.is_available());
    }

    /// A hung disk (an fdatasync that does not return) answers `Unavailable` after
    /// `op_timeout_ms`, refuses new ops at once while hung, and the store comes back by itself
    /// once the call returns.
    #[test]
    fn a_hung_log_sync_fails_ops_after_op_timeout_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = JournalStore::open(JournalConfig {
            // Above a real fdatasync on a busy CI box, well below the stall.
            op_timeout_ms: 500,
            ..test_cfg(dir.path(), true)
        })
        .expect("open");
        let r = monoio_block_on(s.create(record("h-0")));
        assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
        s.wal_for_test()
            .stall_next_io_for_test(Duration::from_millis(4_000));
        let t0 = Instant::now();
        let r = monoio_block_on(s.create(record("h-1")));
        let waited = t0.elapsed();
        assert!(matches!(r, Err(StateError::Unavailable(_))), "{r:?}");
        assert!(waited < Duration::from_millis(3_000), "took {waited:?}");
        assert!(!s.is_available());
        let t0 = Instant::now();
        let r = monoio_block_on(s.create(record("h-2")));
        assert!(matches!(r, Err(StateError::Unavailable(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(300), "refused at once");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.is_available() {
            assert!(Instant::now() < deadline, "store never came back");
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = monoio_block_on(s.create(record("h-3")));
        assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
        // The op answered `Unavailable` while hung had its outcome unknown; its change did
        // reach the log once the call returned, so a retry finds it.
        let r = monoio_block_on(s.create(record("h-1")));
        assert!(matches!(r, Ok(CreateOutcome::Exists(_))), "{r:?}");
    }

    /// Switching engines on one `path`: writer → journal any time (its records are the
    /// journal's cold data), journal → writer after a clean stop (logs folded), and the writer
    /// refuses a path whose logs still hold frames instead of silently ignoring them.
    #[test]
    fn engines_switch_both_ways_and_the_writer_refuses_unfolded_logs() {
        use crate::state::{EmbeddedConfig, EmbeddedStore};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        let writer_cfg = || EmbeddedConfig {
            path: path.clone(),
            ..EmbeddedConfig::default()
        };
        {
            let w = EmbeddedStore::open(writer_cfg()).expect("writer open");
            let r = monoio_block_on(w.create(record("w-1")));
            assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
            monoio_block_on(w.flush()).expect("flush");
        }
        {
            let j = JournalStore::open(test_cfg(dir.path(), false)).expect("journal open");
            // The writer's record (format V2, version 0) is found and can move on.
            let r = monoio_block_on(j.create(record("w-1")));
            assert!(matches!(r, Ok(CreateOutcome::Exists(_))), "{r:?}");
            let u = monoio_block_on(j.update(
                MessageKey::new(1, "w-1"),
                vec![submitted("w-1")],
                unix_ms(),
            ));
            assert!(
                matches!(u, Ok(UpdateOutcome::Updated { changed: true, .. })),
                "{u:?}"
            );
            let r = monoio_block_on(j.create(record("j-1")));
            assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
            // Dropped cleanly: the logs are folded into fjall.
        }
        {
            let w = EmbeddedStore::open(writer_cfg()).expect("writer after a clean journal stop");
            let g = monoio_block_on(w.get(MessageKey::new(1, "w-1"))).expect("get");
            assert_eq!(g.map(|r| r.status), Some(Status::Submitted));
            let g = monoio_block_on(w.get(MessageKey::new(1, "j-1"))).expect("get");
            assert!(g.is_some(), "journal record readable by the writer");
        }
        // Frames the journal has not folded (as after a crash): the writer must not open.
        {
            let jc = test_cfg(dir.path(), false);
            let wal = Wal::open(WalConfig::new(jc.wal_dir(), false)).expect("wal");
            let mut buf = Vec::new();
            let mut r = record("j-2");
            r.expires_at_ms = unix_ms() + 3_600_000;
            encode_event(&mut buf, &MessageKey::new(1, "j-2"), 1, &r);
            wal.append(&buf).expect("append");
            wal.sync_all().expect("sync");
        }
        match EmbeddedStore::open(writer_cfg()) {
            Err(StateError::Invalid(m)) => assert!(m.contains("not yet folded"), "{m}"),
            Err(e) => panic!("wrong error: {e:?}"),
            Ok(_) => panic!("the writer opened a path with unfolded journal logs"),
        }
        // The journal folds them, after which the writer opens again and sees the record.
        drop(JournalStore::open(test_cfg(dir.path(), false)).expect("journal replays"));
        let w = EmbeddedStore::open(writer_cfg()).expect("writer after the fold");
        let g = monoio_block_on(w.get(MessageKey::new(1, "j-2"))).expect("get");
        assert!(g.is_some(), "replayed record folded into fjall");
    }

    #[test]
    fn a_large_checkpoint_is_ingested_and_everything_reads_back_from_cold() {
        checkpoint_then_everything_from_cold(true);
    }

    /// The same checks through write batches: both ways must give the same cold store.
    #[test]
    fn a_small_checkpoint_is_a_batch_and_everything_reads_back_from_cold() {
        checkpoint_then_everything_from_cold(false);
    }

    /// The status the checkpoint tests leave message `i` in: every second one submitted, every
    /// fourth one delivered.
    fn status_of(i: usize) -> Status {
        match i {
            _ if i.is_multiple_of(4) => Status::Delivered,
            _ if i.is_multiple_of(2) => Status::Submitted,
            _ => Status::Accepted,
        }
    }

    /// Creates `{prefix}-0..n` and submits every second one (SMSC id `m-{prefix}-{i}`, link 7).
    async fn created_and_submitted(s: &JournalStore, prefix: &str, n: usize) {
        for i in 0..n {
            let tx = format!("{prefix}-{i}");
            let r = s.create(record(&tx)).await;
            assert!(matches!(r, Ok(CreateOutcome::Created(_))), "{r:?}");
            if i.is_multiple_of(2) {
                let key = MessageKey::new(1, tx.as_str());
                let u = s.update(key, vec![submitted(&tx)], unix_ms()).await;
                assert!(matches!(u, Ok(UpdateOutcome::Updated { .. })), "{u:?}");
            }
        }
    }

    /// Delivers every fourth of `{prefix}-0..n` (submitted by `created_and_submitted`).
    async fn delivered_every_fourth(s: &JournalStore, prefix: &str, n: usize) {
        for i in (0..n).step_by(4) {
            let r = s
                .apply_receipt(7, format!("m-{prefix}-{i}"), delivered())
                .await;
            assert!(matches!(r, Ok(ReceiptOutcome::Applied(_))), "{r:?}");
        }
    }

    /// Evicts every record, then reads `{prefix}-0..n` back from the cold store with the
    /// status `status_of` says.
    fn evict_all_then_read_from_cold(s: &JournalStore, prefix: &str, n: usize) {
        s.evict_all_for_test();
        assert_eq!(s.stats().hot_records, 0);
        monoio_block_on(async {
            for i in 0..n {
                let key = MessageKey::new(1, format!("{prefix}-{i}").as_str());
                let got = s.get(key).await.expect("get").map(|r| r.status);
                assert_eq!(got, Some(status_of(i)), "{prefix}-{i}");
            }
        });
    }

    /// A failed pass gives the events it took back to their slots for the retry, except to
    /// slots that changed while it was writing (their newer event stays): the retry writes
    /// every record at its latest version.
    #[test]
    fn a_failed_checkpoint_leaves_every_change_to_the_next_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = JournalStore::open(test_cfg(dir.path(), false)).expect("open");
        monoio_block_on(created_and_submitted(&s, "k", 12));
        let s2 = Arc::clone(&s);
        *lock(&s.inner.fail_next_checkpoint) = Some(Box::new(move || {
            monoio_block_on(delivered_every_fourth(&s2, "k", 12));
        }));
        assert!(s.checkpoint_now().is_err());
        assert_eq!(s.stats().checkpoint_failures, 1);
        assert_eq!(s.checkpoint_now().expect("checkpoint"), 12);
        evict_all_then_read_from_cold(&s, "k", 12);
    }

    /// A new send of each of `{prefix}-0..n` finds the stored record.
    async fn creates_find_existing(s: &JournalStore, prefix: &str, n: usize) {
        for i in 0..n {
            let again = s.create(record(&format!("{prefix}-{i}"))).await;
            assert!(
                matches!(again, Ok(CreateOutcome::Exists(_))),
                "{prefix}-{i}: {again:?}"
            );
        }
    }

    fn wait_filter_ready(s: &JournalStore) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.stats().key_filter_ready {
            assert!(Instant::now() < deadline, "key filter scan did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The ids a previous process left in the cold store must stop a new send after a
    /// restart: the start-up scan puts them in the filter. New ids skip the cold read.
    #[test]
    fn after_a_restart_the_key_filter_knows_every_stored_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = JournalStore::open(test_cfg(dir.path(), false)).expect("open");
            monoio_block_on(created_and_submitted(&s, "r", 500));
        } // clean stop: checkpointed
        let s = JournalStore::open(test_cfg(dir.path(), false)).expect("reopen");
        wait_filter_ready(&s);
        assert_eq!(
            s.stats().hot_records,
            0,
            "nothing replayed: all from the cold store"
        );
        monoio_block_on(async {
            creates_find_existing(&s, "r", 500).await;
            for i in 0..500 {
                let new = s.create(record(&format!("n-{i}"))).await;
                assert!(
                    matches!(new, Ok(CreateOutcome::Created(_))),
                    "n-{i}: {new:?}"
                );
            }
        });
        let skips = s.stats().key_filter_skips;
        // 16 MiB for 1000 keys: false positives are rare; the stored ids all read cold.
        assert!((490..=500).contains(&skips), "skips {skips}");
    }

    /// Records written under a longer TTL than today's could outlive their place in the
    /// filters (kept one TTL): the filters are then not used, and stored ids still count.
    #[test]
    fn a_lowered_ttl_turns_the_key_filter_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = |ttl_secs| JournalConfig {
            ttl_secs,
            ..test_cfg(dir.path(), false)
        };
        {
            let s = JournalStore::open(cfg(3600)).expect("open");
            monoio_block_on(created_and_submitted(&s, "t", 20));
        }
        let s = JournalStore::open(cfg(60)).expect("reopen");
        // The scan ends at the first such record; its thread is then gone.
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.scan.as_ref().is_some_and(|h| !h.is_finished()) {
            assert!(Instant::now() < deadline, "scan still running");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!s.stats().key_filter_ready);
        monoio_block_on(async {
            creates_find_existing(&s, "t", 20).await;
            let new = s.create(record("t-new")).await;
            assert!(matches!(new, Ok(CreateOutcome::Created(_))), "{new:?}");
        });
        assert_eq!(s.stats().key_filter_skips, 0);
    }

    /// A scan that failed on I/O runs again from the background thread; until it succeeds
    /// every create reads the cold store.
    #[test]
    fn a_failed_key_filter_scan_is_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = JournalStore::open(test_cfg(dir.path(), false)).expect("open");
            monoio_block_on(created_and_submitted(&s, "q", 50));
        }
        let cfg = test_cfg(dir.path(), false);
        cfg.fail_scans.store(2, Ordering::Relaxed);
        let s = JournalStore::open(cfg.clone()).expect("reopen");
        // Stored ids count while the filter is not ready.
        monoio_block_on(creates_find_existing(&s, "q", 50));
        wait_filter_ready(&s);
        assert_eq!(
            cfg.fail_scans.load(Ordering::Relaxed),
            0,
            "both failures used"
        );
        monoio_block_on(creates_find_existing(&s, "q", 50));
        let new = monoio_block_on(s.create(record("q-new")));
        assert!(matches!(new, Ok(CreateOutcome::Created(_))), "{new:?}");
        assert_eq!(s.stats().key_filter_skips, 1);
    }

    /// A record past its TTL is left out of the filter, so a new send with its id skips the
    /// cold read and never learns the old version. The new record must still win over the
    /// old image: in the replay of a crash, and in the cold store after a checkpoint.
    #[test]
    fn an_id_reused_after_expiry_without_a_cold_read_wins_over_the_old_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = |ttl_secs| JournalConfig {
            ttl_secs,
            checkpoint_interval_ms: 3_600_000,
            checkpoint_bytes: u64::MAX / 2,
            ..test_cfg(dir.path(), false)
        };
        {
            let s = JournalStore::open(cfg(1)).expect("open");
            let r = monoio_block_on(async {
                s.create(record("x")).await.expect("create");
                let u = s.update(MessageKey::new(1, "x"), vec![submitted("x")], unix_ms());
                u.await.expect("submitted");
                s.apply_receipt(7, "m-x".into(), delivered()).await
            });
            assert!(matches!(r, Ok(ReceiptOutcome::Applied(_))), "{r:?}");
        } // clean stop: the delivered record (version 3) is cold
        std::thread::sleep(Duration::from_millis(1_100));
        let s = JournalStore::open(cfg(60)).expect("reopen");
        wait_filter_ready(&s);
        let again = monoio_block_on(s.create(record("x"))).expect("reuse");
        assert!(matches!(again, CreateOutcome::Created(_)), "{again:?}");
        assert_eq!(s.stats().key_filter_skips, 1, "no cold read for x");
        // A crash before the next checkpoint: the log holds the new record, the cold store
        // the old, delivered one with its version.
        *lock(&s.inner.fail_next_checkpoint) = Some(Box::new(|| {}));
        drop(s);
        let s = JournalStore::open(cfg(60)).expect("reopen after the crash");
        let r = monoio_block_on(s.get(MessageKey::new(1, "x"))).expect("get");
        assert_eq!(
            r.map(|r| r.status),
            Some(Status::Accepted),
            "replay kept the new one"
        );
        // Once folded, the cold store holds the new one too.
        s.checkpoint_now().expect("checkpoint");
        s.evict_all_for_test();
        let r = monoio_block_on(s.get(MessageKey::new(1, "x"))).expect("get");
        assert_eq!(
            r.map(|r| r.status),
            Some(Status::Accepted),
            "cold image replaced"
        );
    }

    fn checkpoint_then_everything_from_cold(ingest: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_cfg(dir.path(), false);
        cfg.ingest_min_records = if ingest { 40 } else { 1000 };
        let ingested = u64::from(ingest);
        let s = JournalStore::open(cfg).expect("open");
        let key = |i: usize| MessageKey::new(1, format!("g-{i}").as_str());
        monoio_block_on(async {
            created_and_submitted(&s, "g", 60).await;
            delivered_every_fourth(&s, "g", 60).await;
        });
        assert_eq!(s.checkpoint_now().expect("checkpoint"), 60);
        assert_eq!(s.stats().ingested_checkpoints, ingested);
        evict_all_then_read_from_cold(&s, "g", 60);
        monoio_block_on(async {
            creates_find_existing(&s, "g", 60).await;
            // The receipt index from the ingested table: a first receipt applies, a repeat is
            // a duplicate.
            let r = s.apply_receipt(7, "m-g-2".into(), delivered()).await;
            assert!(matches!(r, Ok(ReceiptOutcome::Applied(_))), "{r:?}");
            let r = s.apply_receipt(7, "m-g-0".into(), delivered()).await;
            assert!(matches!(r, Ok(ReceiptOutcome::Duplicate)), "{r:?}");
            let found = s.find_by_smsc_id(7, "m-g-6".into()).await.expect("find");
            assert_eq!(found, Some((key(6), 0)));
        });
        // The `open` entries from the cold table: the 44 non-final records expire, and only
        // they (one page: a sweep walks at most 2 x limit cold entries); the next checkpoint
        // writes their removals, and nothing is open after.
        let far = unix_ms() + 48 * 3600 * 1000;
        let page = monoio_block_on(s.expire_due(far, 100)).expect("expire");
        assert!(page.iter().all(|r| r.status == Status::Expired));
        assert_eq!(page.len(), 44);
        assert_eq!(s.checkpoint_now().expect("checkpoint"), 45);
        assert_eq!(s.stats().ingested_checkpoints, 2 * ingested);
        s.evict_all_for_test();
        let page = monoio_block_on(s.scan_non_final(None, 100)).expect("scan");
        assert!(page.records.is_empty(), "{:?}", page.records.len());
        let page = monoio_block_on(s.expire_due(far, 100)).expect("expire");
        assert!(page.is_empty());
    }

    #[test]
    fn sigkill_loses_no_acknowledged_change_fsync_off() {
        crash_and_check(false, false);
    }

    #[test]
    fn sigkill_loses_no_acknowledged_change_fsync_batch() {
        crash_and_check(true, false);
    }

    /// The child checkpoints every 20 ms as ingested tables, so the kill lands between (or
    /// inside) ingestions of the three keyspaces.
    #[test]
    fn sigkill_loses_no_acknowledged_change_checkpoints_ingested() {
        crash_and_check(false, true);
    }
}
