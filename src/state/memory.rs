//! In-memory state backend (`[state] backend = "memory"`): **NOT DURABLE**.
//!
//! Everything lives in this process's memory: a restart (graceful or not) loses every record,
//! every receipt correlation and the idempotency of every `transaction_id` sent before it. It
//! exists as the measurement baseline for "what do state writes cost end to end" (the same
//! writes as the embedded backend, at the cost of a hash-map insert) and for tests and
//! development. Never run it where messages matter.
//!
//! # Semantics
//!
//! The same contract as the embedded backend (both pass [`super::suite`]): idempotent
//! `create` (a live record with the key answers `Exists` with the stored record; an expired
//! one is replaced), `expires_at_ms = now + ttl` set at create and never extended, a receipt
//! index `(link_id, smsc id)` → `(key, part)` written together with the `Submitted` part
//! (latest wins), forward-only updates through [`MessageRecord::apply`], `expire_due` turning
//! non-final records past expiry `Expired` exactly once, `scan_non_final` in expiry order with
//! a cursor, and every read treating an expired record or index entry as absent. `flush` has
//! nothing to do; `is_available` is always true.
//!
//! # Layout: striped, one lock per stripe
//!
//! Records are spread over [`STRIPES`] stripes by a hash of their key; each stripe is one
//! `Mutex` around its records, its `open` set (non-final records ordered by
//! `(expires_at_ms, seq)`) and its purge queue (every record in creation order). The receipt
//! index has its own [`STRIPES`] stripes by a hash of `(link_id, smsc id)`. An operation takes
//! one record stripe lock (and, while holding it, the receipt stripe locks it writes), so ops on
//! different messages from different shards rarely meet on a lock. Lock order is always record
//! stripe → receipt stripe; `apply_receipt` reads the index and releases it before it takes the
//! record stripe. Index entries are written while the record stripe is held, so a receipt that
//! finds one finds its part already `Submitted`. `seq` (unique per store) ties index, `open`
//! and purge entries to one incarnation of a key, so an entry of an expired-and-replaced
//! record is recognised as stale.
//!
//! Futures are ready when returned: the work is done on the caller's thread under the stripe
//! lock (a few hundred ns), cheaper than any hand-over to another thread.
//!
//! # Bounds
//!
//! * `max_records` records at most (counting expired ones not dropped yet); a `create` beyond
//!   it answers [`StateError::Overloaded`] (503 `state_unavailable`). Receipt index entries are
//!   bounded by records × parts (they are dropped with their record).
//! * An expired record is dropped once it is final: lazily by `create` (a few from the head of
//!   its stripe's purge queue) and by every `expire_due` call (the gateway's sweep, every 10 s).
//!   A non-final expired record waits for `expire_due` to turn it `Expired` first, so its CDR is
//!   never skipped. The purge queue is in creation order, which is expiry order as long as the
//!   TTL is fixed and the clock does not step back; otherwise a record is dropped a bit late,
//!   never early (drops check the record's own expiry).
//! * `expire_due` and `scan_non_final` pages are clamped to [`MAX_PAGE`].
//!
//! # Measured (2-core VM shared with other builds, load 3–4, 2026-11-26)
//!
//! * Store alone (release, system allocator, a throw-away test; one-part message = create +
//!   `Submitted` update + delivered receipt, including building the record and ids): 2.2–2.6 µs
//!   per message on one thread. Two threads: 1.7–1.9 µs wall per message with 64 stripes,
//!   2.4–2.8 µs with one lock (`STRIPES = 1`: slower than one thread, the lock ping-pongs).
//!   ~1,070 B of RSS per such record (debug build, 300k records).
//! * End to end (`bench/run-e2e.sh` with `DURATION=5s RATES=1000 HALF=0 BATCH=1000 GRPC=0`,
//!   one binary, runs interleaved): REST max 27.1–29.6k msg/s with `memory`, 17.9–18.3k with
//!   embedded `fsync = "off"`, 9.0–11.3k with embedded `fsync = "batch"` (the default); batch
//!   submits of 1000: 38.6–44.0k / 21.9–22.6k / 7.6–8.7k msg/s; p50 at 1,000 msg/s 0.28–0.31 /
//!   0.39–0.40 / 0.9–1.8 ms. Gateway CPU per message at max: 35–41 µs / 71–73 µs / 81–99 µs.

use super::{check_smsc_id, check_txid, check_update, ready};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    CreateOutcome, MAX_PAGE, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome,
    ScanCursor, ScanPage, StateError, StateStore, Status, StoreFuture, UpdateOutcome, unix_ms,
};

/// Number of lock stripes (records, and separately the receipt index). A power of two well
/// above the shard count of any box, so two shards rarely contend on one lock.
pub const STRIPES: usize = 64;

/// Default of [`MemoryConfig::max_records`].
pub const DEFAULT_MAX_RECORDS: usize = 1_000_000;

/// Expired, final records a `create` drops from the head of its stripe's purge queue: more
/// than one, so the lazy purge keeps up with the creation rate by itself; small, so one create
/// never pays for a long backlog (the sweep's `expire_due` drops the rest).
const PURGE_PER_CREATE: usize = 4;

/// Most records one `expire_due` call drops per stripe (a bound on the time a stripe is held).
const PURGE_PER_SWEEP: usize = 4 * MAX_PAGE / STRIPES;

/// Configuration of the in-memory store.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Record lifetime in seconds from creation (at least 1).
    pub ttl_secs: u64,
    /// Most records held at once (at least 1); `create` beyond it answers `Overloaded`.
    pub max_records: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            ttl_secs: 24 * 3600,
            max_records: DEFAULT_MAX_RECORDS,
        }
    }
}

/// One record and the incarnation number its index entries carry.
struct Slot {
    /// The map's own key, for index entries written later (`update`).
    key: Arc<MessageKey>,
    record: MessageRecord,
    seq: u64,
}

#[derive(Default)]
struct RecordStripe {
    records: HashMap<Arc<MessageKey>, Slot, super::FastHash>,
    /// Non-final records by `(expires_at_ms, seq)`: the expiry sweep takes the head, the
    /// recovery scan walks it in order.
    open: BTreeMap<(u64, u64), Arc<MessageKey>>,
    /// Every record in creation order `(expires_at_ms, seq, key)`, for dropping expired ones.
    purge: VecDeque<(u64, u64, Arc<MessageKey>)>,
    /// Next `seq` of this stripe; `seq = counter * STRIPES + stripe index` is unique per store.
    next_seq: u64,
}

struct ReceiptEntry {
    key: Arc<MessageKey>,
    part: u16,
    expires_at_ms: u64,
    seq: u64,
}

type ReceiptStripe = HashMap<(u32, String), ReceiptEntry, super::FastHash>;

/// The storage, shared by every handle of one store.
struct Inner {
    records: Vec<Mutex<RecordStripe>>,
    receipts: Vec<Mutex<ReceiptStripe>>,
    /// Records held (live or expired-not-yet-dropped), for `max_records`.
    count: AtomicUsize,
    max_records: usize,
    /// Stripe hashing; random per store so that chosen ids cannot pile onto one stripe.
    hasher: super::FastHash,
    /// Where the next `expire_due` starts, so a busy stripe does not starve the others.
    sweep_start: AtomicUsize,
}

/// The in-memory store. **Not durable**: see the module documentation.
pub struct MemoryStore {
    inner: Arc<Inner>,
    ttl_ms: u64,
}

/// A poisoned stripe lock only means another thread panicked while holding it; every mutation
/// here keeps the stripe consistent at each step that can panic (none should), so go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cursor bytes: the last `(expires_at_ms, seq)` returned, both u64 BE.
fn encode_cursor(pos: (u64, u64)) -> ScanCursor {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&pos.0.to_be_bytes());
    b.extend_from_slice(&pos.1.to_be_bytes());
    ScanCursor(b)
}

fn decode_cursor(c: &ScanCursor) -> Result<(u64, u64), StateError> {
    let bytes: &[u8; 16] =
        c.0.as_slice()
            .try_into()
            .map_err(|_| StateError::Invalid("not a memory-store scan cursor".into()))?;
    let (a, b) = bytes.split_at(8);
    let a: [u8; 8] = a.try_into().unwrap_or_default();
    let b: [u8; 8] = b.try_into().unwrap_or_default();
    Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new(cfg: MemoryConfig) -> Result<Arc<MemoryStore>, StateError> {
        if cfg.ttl_secs == 0 {
            return Err(StateError::Invalid(
                "memory store: ttl_secs must be at least 1".into(),
            ));
        }
        if cfg.max_records == 0 {
            return Err(StateError::Invalid(
                "memory store: max_records must be at least 1".into(),
            ));
        }
        let inner = Inner {
            records: (0..STRIPES)
                .map(|_| Mutex::new(RecordStripe::default()))
                .collect(),
            receipts: (0..STRIPES)
                .map(|_| Mutex::new(ReceiptStripe::default()))
                .collect(),
            count: AtomicUsize::new(0),
            max_records: cfg.max_records,
            hasher: Default::default(),
            sweep_start: AtomicUsize::new(0),
        };
        Ok(Arc::new(MemoryStore {
            inner: Arc::new(inner),
            ttl_ms: cfg.ttl_secs.saturating_mul(1000),
        }))
    }

    /// Another handle on the same storage with a different TTL (for records it creates). The
    /// conformance suite's "reopen" uses it: it checks that a new handle sees what the old one
    /// wrote, which is all a memory store can offer (a real restart loses everything).
    pub fn share_with_ttl(&self, ttl_secs: u64) -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            inner: Arc::clone(&self.inner),
            ttl_ms: ttl_secs.max(1).saturating_mul(1000),
        })
    }

    /// Records held, including expired ones not dropped yet (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn record_stripe(&self, key: &MessageKey) -> usize {
        (self.hasher.hash_one(key) as usize) & (STRIPES - 1)
    }

    fn receipt_stripe(&self, link_id: u32, smsc_id: &str) -> usize {
        (self.hasher.hash_one((link_id, smsc_id)) as usize) & (STRIPES - 1)
    }

    /// Writes the receipt index entry of one part (latest wins). Called with the record's
    /// stripe held.
    fn index_part(&self, link_id: u32, smsc_id: &str, entry: ReceiptEntry) {
        let i = self.receipt_stripe(link_id, smsc_id);
        lock(&self.receipts[i]).insert((link_id, smsc_id.to_string()), entry);
    }

    /// Removes the index entries of `slot`'s parts that still point at it (a later submission
    /// with the same SMSC id may have taken one over). Called with the record's stripe held.
    fn unindex(&self, slot: &Slot) {
        for p in &slot.record.parts {
            if let (Some(link), Some(id)) = (p.link_id, &p.smsc_message_id) {
                let i = self.receipt_stripe(link, id);
                let mut g = lock(&self.receipts[i]);
                let k = (link, id.clone());
                if g.get(&k).is_some_and(|e| e.seq == slot.seq) {
                    g.remove(&k);
                }
            }
        }
    }

    /// Drops up to `budget` expired, final records from the head of `s`'s purge queue. Stops at
    /// the first entry that is not expired yet (the queue is in expiry order) or that is
    /// expired but still non-final (`expire_due` must hand it out first).
    fn purge(&self, s: &mut RecordStripe, now_ms: u64, budget: usize) {
        for _ in 0..budget {
            let Some((exp, seq, key)) = s.purge.front() else {
                return;
            };
            if *exp > now_ms {
                return;
            }
            match s.records.get(&**key) {
                // Stale entry: the key was replaced after it expired (a new seq) or is gone.
                Some(slot) if slot.seq != *seq => {}
                None => {}
                Some(slot) if !slot.record.status.is_final() => return,
                Some(_) => {
                    let key = Arc::clone(key);
                    if let Some(slot) = s.records.remove(&*key) {
                        self.unindex(&slot);
                        self.count.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            s.purge.pop_front();
        }
    }
}

impl MemoryStore {
    fn create_now(&self, mut r: MessageRecord, now: u64) -> Result<CreateOutcome, StateError> {
        r.validate().map_err(StateError::Invalid)?;
        let inner = &*self.inner;
        let key = r.key();
        let si = inner.record_stripe(&key);
        let mut g = lock(&inner.records[si]);
        let s = &mut *g;
        inner.purge(s, now, PURGE_PER_CREATE);
        match s.records.get(&key) {
            Some(slot) if slot.record.expires_at_ms > now => {
                return Ok(CreateOutcome::Exists(slot.record.clone()));
            }
            Some(_) => {
                // Expired: replaced by the new record (no change in count). Its `open` and
                // index entries go now; its purge entry is recognised as stale by its seq.
                if let Some(old) = s.records.remove(&key) {
                    s.open.remove(&(old.record.expires_at_ms, old.seq));
                    inner.unindex(&old);
                }
            }
            None => {
                if inner.count.fetch_add(1, Ordering::Relaxed) >= inner.max_records {
                    inner.count.fetch_sub(1, Ordering::Relaxed);
                    return Err(StateError::Overloaded);
                }
            }
        }
        let seq = s.next_seq * STRIPES as u64 + si as u64;
        s.next_seq += 1;
        r.expires_at_ms = now.saturating_add(self.ttl_ms);
        r.status = r.derive_status();
        let key = Arc::new(key);
        for p in &r.parts {
            if let (Some(link), Some(id)) = (p.link_id, &p.smsc_message_id) {
                inner.index_part(
                    link,
                    id,
                    ReceiptEntry {
                        key: Arc::clone(&key),
                        part: p.index,
                        expires_at_ms: r.expires_at_ms,
                        seq,
                    },
                );
            }
        }
        if !r.status.is_final() {
            s.open.insert((r.expires_at_ms, seq), Arc::clone(&key));
        }
        s.purge.push_back((r.expires_at_ms, seq, Arc::clone(&key)));
        s.records.insert(
            Arc::clone(&key),
            Slot {
                key,
                record: r.clone(),
                seq,
            },
        );
        Ok(CreateOutcome::Created(r))
    }

    fn update_now(
        &self,
        key: &MessageKey,
        updates: &[PartUpdate],
        at_ms: u64,
        now: u64,
    ) -> Result<UpdateOutcome, StateError> {
        check_update(key, updates)?;
        let inner = &*self.inner;
        let mut g = lock(&inner.records[inner.record_stripe(key)]);
        let s = &mut *g;
        let Some(slot) = s.records.get_mut(key) else {
            return Ok(UpdateOutcome::NotFound);
        };
        if slot.record.expires_at_ms <= now {
            return Ok(UpdateOutcome::NotFound);
        }
        let was_open = !slot.record.status.is_final();
        let (key, seq) = (&slot.key, slot.seq);
        let changed = slot
            .record
            .apply_all(updates, at_ms, |r, part, link_id, smsc_id| {
                inner.index_part(
                    link_id,
                    smsc_id,
                    ReceiptEntry {
                        key: Arc::clone(key),
                        part,
                        expires_at_ms: r.expires_at_ms,
                        seq,
                    },
                );
            });
        let record = slot.record.clone();
        if was_open && record.status.is_final() {
            s.open.remove(&(record.expires_at_ms, slot.seq));
        }
        Ok(UpdateOutcome::Updated { record, changed })
    }

    fn receipt_now(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: &ReceiptInfo,
        now: u64,
    ) -> Result<ReceiptOutcome, StateError> {
        check_smsc_id(&smsc_id)?;
        let Some((key, part, seq)) = self.lookup(link_id, smsc_id, now) else {
            return Ok(ReceiptOutcome::NotFound);
        };
        let inner = &*self.inner;
        let mut g = lock(&inner.records[inner.record_stripe(&key)]);
        let s = &mut *g;
        let Some(slot) = s.records.get_mut(&*key) else {
            return Ok(ReceiptOutcome::NotFound);
        };
        // A different seq: the entry belonged to an earlier incarnation of the key.
        if slot.seq != seq || slot.record.expires_at_ms <= now {
            return Ok(ReceiptOutcome::NotFound);
        }
        let was_open = !slot.record.status.is_final();
        let at = receipt.received_at_ms.max(slot.record.updated_at_ms);
        if !slot.record.apply_receipt(part, receipt, at) {
            return Ok(ReceiptOutcome::Duplicate);
        }
        let record = slot.record.clone();
        if was_open && record.status.is_final() {
            s.open.remove(&(record.expires_at_ms, seq));
        }
        Ok(ReceiptOutcome::Applied(record))
    }

    /// The live index entry of `(link_id, smsc_id)`: key, part, seq.
    fn lookup(
        &self,
        link_id: u32,
        smsc_id: String,
        now: u64,
    ) -> Option<(Arc<MessageKey>, u16, u64)> {
        if check_smsc_id(&smsc_id).is_err() {
            return None;
        }
        let inner = &*self.inner;
        let g = lock(&inner.receipts[inner.receipt_stripe(link_id, &smsc_id)]);
        g.get(&(link_id, smsc_id))
            .filter(|e| e.expires_at_ms > now)
            .map(|e| (Arc::clone(&e.key), e.part, e.seq))
    }

    fn get_now(&self, key: &MessageKey, now: u64) -> Option<MessageRecord> {
        if check_txid(&key.transaction_id).is_err() {
            return None;
        }
        let inner = &*self.inner;
        let g = lock(&inner.records[inner.record_stripe(key)]);
        g.records
            .get(key)
            .filter(|s| s.record.expires_at_ms > now)
            .map(|s| s.record.clone())
    }

    fn expire_now(&self, now_ms: u64, limit: usize, real_now: u64) -> Vec<MessageRecord> {
        let limit = limit.clamp(1, MAX_PAGE);
        let inner = &*self.inner;
        let start = inner.sweep_start.fetch_add(1, Ordering::Relaxed) & (STRIPES - 1);
        let mut out = Vec::new();
        for i in 0..STRIPES {
            let mut g = lock(&inner.records[(start + i) & (STRIPES - 1)]);
            let s = &mut *g;
            while out.len() < limit {
                let Some((&(exp, seq), key)) = s.open.first_key_value() else {
                    break;
                };
                if exp > now_ms {
                    break;
                }
                let key = Arc::clone(key);
                s.open.remove(&(exp, seq));
                match s.records.get_mut(&*key) {
                    Some(slot) if slot.seq == seq && !slot.record.status.is_final() => {
                        slot.record.apply(
                            &PartUpdate::AllPending {
                                status: Status::Expired,
                                error_code: None,
                            },
                            now_ms,
                        );
                        out.push(slot.record.clone());
                    }
                    // Stale: final already, or replaced (its new entry has another seq).
                    _ => {}
                }
            }
            // Now that the due ones are final, the expired ones can go (real clock: a sweep
            // run "as if later" must not drop records that reads can still see).
            inner.purge(s, real_now, PURGE_PER_SWEEP);
        }
        out
    }

    fn scan_now(
        &self,
        cursor: Option<ScanCursor>,
        limit: usize,
        now: u64,
    ) -> Result<ScanPage, StateError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Everything with expiry <= now is expired: start after it, or after the cursor.
        let mut from = (now, u64::MAX);
        if let Some(c) = &cursor {
            from = from.max(decode_cursor(c)?);
        }
        let inner = &*self.inner;
        // Merge the stripes' ordered `open` sets: the `limit` smallest positions after `from`.
        // Once `limit` candidates are known, a stripe's walk stops at the largest of them.
        let mut cand: Vec<((u64, u64), Arc<MessageKey>)> = Vec::new();
        for stripe in &inner.records {
            let g = lock(stripe);
            let cutoff = (cand.len() >= limit).then(|| cand[limit - 1].0);
            for (pos, key) in g
                .open
                .range((Bound::Excluded(from), Bound::Unbounded))
                .take(limit)
            {
                if cutoff.is_some_and(|c| *pos >= c) {
                    break;
                }
                cand.push((*pos, Arc::clone(key)));
            }
            drop(g);
            cand.sort_unstable_by_key(|(pos, _)| *pos);
            cand.truncate(limit);
        }
        let mut page = ScanPage::default();
        for ((_, seq), key) in &cand {
            let g = lock(&inner.records[inner.record_stripe(key)]);
            if let Some(slot) = g.records.get(&**key)
                && slot.seq == *seq
                && slot.record.expires_at_ms > now
                && !slot.record.status.is_final()
            {
                page.records.push(slot.record.clone());
            }
        }
        if cand.len() >= limit
            && let Some((pos, _)) = cand.last()
        {
            page.next = Some(encode_cursor(*pos));
        }
        Ok(page)
    }
}

impl StateStore for MemoryStore {
    fn create(&self, record: MessageRecord) -> StoreFuture<CreateOutcome> {
        ready(self.create_now(record, unix_ms()))
    }

    fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        now_ms: u64,
    ) -> StoreFuture<UpdateOutcome> {
        ready(self.update_now(&key, &updates, now_ms, unix_ms()))
    }

    fn apply_receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> StoreFuture<ReceiptOutcome> {
        ready(self.receipt_now(link_id, smsc_id, &receipt, unix_ms()))
    }

    fn get(&self, key: MessageKey) -> StoreFuture<Option<MessageRecord>> {
        ready(Ok(self.get_now(&key, unix_ms())))
    }

    fn find_by_smsc_id(
        &self,
        link_id: u32,
        smsc_id: String,
    ) -> StoreFuture<Option<(MessageKey, u16)>> {
        ready(Ok(self
            .lookup(link_id, smsc_id, unix_ms())
            .map(|(k, part, _)| ((*k).clone(), part))))
    }

    fn scan_non_final(&self, cursor: Option<ScanCursor>, limit: usize) -> StoreFuture<ScanPage> {
        ready(self.scan_now(cursor, limit, unix_ms()))
    }

    fn expire_due(&self, now_ms: u64, limit: usize) -> StoreFuture<Vec<MessageRecord>> {
        ready(Ok(self.expire_now(now_ms, limit, unix_ms())))
    }

    fn flush(&self) -> StoreFuture<()> {
        // Nothing is ever written anywhere: there is nothing to flush.
        ready(Ok(()))
    }

    fn is_available(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Encoding;
    use crate::state::suite::{self, SuiteHarness};

    /// The suite's "reopen" is a new handle on the same storage: a memory store cannot survive
    /// a real restart, and is documented not to.
    struct Harness {
        store: Arc<MemoryStore>,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                store: MemoryStore::new(MemoryConfig::default()).expect("store"),
            }
        }
    }

    impl SuiteHarness for Harness {
        fn open(&self, ttl_secs: u64) -> Arc<dyn StateStore> {
            self.store.share_with_ttl(ttl_secs)
        }
    }

    #[test]
    fn suite_on_monoio() {
        let h = Harness::new();
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("monoio runtime")
            .block_on(suite::run_all(&h));
    }

    #[test]
    fn suite_on_tokio() {
        let h = Harness::new();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
            .block_on(suite::run_all(&h));
    }

    fn record(tx: &str, parts: u16, now: u64) -> MessageRecord {
        MessageRecord::new_accepted(
            MessageKey::new(1, tx),
            7,
            "src",
            "+100",
            Encoding::Gsm7,
            "hi",
            parts,
            now,
        )
    }

    fn store(ttl_secs: u64, max_records: usize) -> Arc<MemoryStore> {
        MemoryStore::new(MemoryConfig {
            ttl_secs,
            max_records,
        })
        .expect("store")
    }

    fn created(s: &MemoryStore, r: MessageRecord, now: u64) -> MessageRecord {
        match s.create_now(r, now) {
            Ok(CreateOutcome::Created(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn futures_are_ready_at_once() {
        let s = store(60, 10);
        let mut f = s.create(record("a", 1, unix_ms()));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(matches!(
            f.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Ok(CreateOutcome::Created(_)))
        ));
    }

    #[test]
    fn capacity_is_a_hard_bound_and_frees_on_expiry() {
        let s = store(10, 3);
        let t0 = 1_000_000;
        for i in 0..3 {
            created(&s, record(&format!("m{i}"), 1, t0), t0);
        }
        assert_eq!(
            s.create_now(record("m3", 1, t0), t0),
            Err(StateError::Overloaded)
        );
        // A repeat of a held id is still answered (no new record needed).
        assert!(matches!(
            s.create_now(record("m0", 1, t0), t0),
            Ok(CreateOutcome::Exists(_))
        ));
        // Past the TTL the non-final records are not dropped before the sweep expires them
        // (their CDR must not be skipped)...
        let later = t0 + 10_000;
        assert_eq!(
            s.create_now(record("m3", 1, later), later),
            Err(StateError::Overloaded)
        );
        for stripe in &s.inner.records {
            s.inner.purge(&mut lock(stripe), later, usize::MAX);
        }
        assert_eq!(s.len(), 3);
        // ...the sweep hands them out once and drops them, which frees the room.
        let gone = s.expire_now(later, 100, later);
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|r| r.status == Status::Expired));
        assert_eq!(s.len(), 0);
        assert!(s.expire_now(later, 100, later).is_empty());
        created(&s, record("m3", 1, later), later);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn final_expired_records_are_dropped_lazily_with_their_index() {
        let s = store(10, 10_000);
        let t0 = 1_000_000;
        // Enough records that every stripe holds some.
        // 16 per stripe on average: the stripe of "new" below is empty with p ~ 1e-7.
        for i in 0..(16 * STRIPES) {
            let k = format!("d{i}");
            created(&s, record(&k, 1, t0), t0);
            let sub = PartUpdate::Submitted {
                index: 0,
                link_id: 9,
                smsc_message_id: k.clone(),
            };
            s.update_now(&MessageKey::new(1, &*k), &[sub], t0, t0)
                .expect("update");
            let rcpt = ReceiptInfo {
                status: Status::Delivered,
                stat: "DELIVRD".into(),
                err: None,
                done_at_ms: None,
                received_at_ms: t0,
            };
            assert!(matches!(
                s.receipt_now(9, k, &rcpt, t0),
                Ok(ReceiptOutcome::Applied(_))
            ));
        }
        let receipts = |s: &MemoryStore| {
            s.inner
                .receipts
                .iter()
                .map(|r| lock(r).len())
                .sum::<usize>()
        };
        assert_eq!(receipts(&s), 16 * STRIPES);
        assert!(s.inner.records.iter().all(|r| lock(r).open.is_empty()));
        // Expired and final: creates after the TTL drop some, the sweep the rest, nothing
        // to expire (all final).
        let later = t0 + 10_001;
        created(&s, record("new", 1, later), later);
        assert!(s.len() < 16 * STRIPES + 1, "create purged nothing");
        assert!(s.expire_now(later, 100, later).is_empty());
        assert_eq!(s.len(), 1);
        assert_eq!(receipts(&s), 0);
        assert_eq!(s.get_now(&MessageKey::new(1, "d0"), later), None);
    }

    #[test]
    fn replaced_record_does_not_inherit_the_old_index() {
        let s = store(10, 100);
        let t0 = 1_000_000;
        created(&s, record("r", 1, t0), t0);
        let sub = PartUpdate::Submitted {
            index: 0,
            link_id: 9,
            smsc_message_id: "old".into(),
        };
        s.update_now(&MessageKey::new(1, "r"), &[sub], t0, t0)
            .expect("update");
        // Expired (never swept), then the same id again: a new record.
        let later = t0 + 10_000;
        let r = created(&s, record("r", 1, later), later);
        assert_eq!(r.status, Status::Accepted);
        assert_eq!(s.lookup(9, "old".into(), later), None);
        // The old record's `open` entry went with it: the sweep finds the new one only, later.
        assert!(s.expire_now(later, 100, later).is_empty());
        let swept = s.expire_now(later + 10_000, 100, later);
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].expires_at_ms, later + 10_000);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn scan_walks_stripes_in_expiry_order() {
        let s = store(100, 10_000);
        let t0 = unix_ms();
        let n = 3 * STRIPES + 5;
        for i in 0..n {
            // Distinct expiries, created out of order.
            let at = t0 + ((i * 7919) % n) as u64;
            created(&s, record(&format!("s{i}"), 1, at), at);
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        for _ in 0..1_000 {
            let page = s.scan_now(cursor.take(), 7, t0).expect("scan");
            assert!(page.records.len() <= 7);
            seen.extend(page.records.iter().map(|r| r.expires_at_ms));
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), n);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert!(matches!(
            s.scan_now(Some(ScanCursor(vec![1, 2])), 7, t0),
            Err(StateError::Invalid(_))
        ));
    }

    #[test]
    fn concurrent_creates_of_one_id_from_threads_create_once() {
        let s = store(60, 100_000);
        let wins = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for i in 0..500 {
                        if let Ok(CreateOutcome::Created(_)) =
                            s.create_now(record(&format!("c{i}"), 1, unix_ms()), unix_ms())
                        {
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::Relaxed), 500);
        assert_eq!(s.len(), 500);
    }
}
