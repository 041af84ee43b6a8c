//! L1: the node's own limiter. GCRA (generic cell rate algorithm): one `u64` per key, the
//! "theoretical arrival time" (TAT) of the next part, and no refill timer.
//!
//! Time is passed in (`now_ns`, nanoseconds since any fixed epoch); nothing here reads a clock,
//! so tests run on virtual time.
//!
//! A node-wide limit is ONE GCRA state per key shared by all shards (`AtomicGcra`: the TAT in
//! an `AtomicU64`, updated with a compare-exchange loop). A static 1/N split per shard would
//! under-admit whenever traffic lands unevenly (one keep-alive client sits on one shard and
//! would get 1/N of the limit); the shared TAT admits the node's limit whichever shard the
//! parts arrive on. Contention is bounded by the number of shards (one CAS each per check), and
//! each key's state sits on its own cache line. Each shard caches the `Arc` of every key it has
//! seen (`L1Table`), so the shared key map's lock is only taken the first time a shard meets a
//! key; the hot path is a shard-local lookup plus one CAS.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

const NANOS_PER_S: u128 = 1_000_000_000;

/// A limit as GCRA parameters: one part every `emission_ns`, up to `burst` parts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Emission interval T: nanoseconds per part. `u64::MAX` means "nothing is admitted".
    pub emission_ns: u64,
    /// Parts that may be admitted at once from idle (≥ 1).
    pub burst: u64,
}

impl Quota {
    /// `rate_per_s` parts per second with up to `burst` parts at once (at least one). The
    /// emission interval is rounded up, so the quota never admits more than the rate.
    pub fn new(rate_per_s: u64, burst: u64) -> Quota {
        let emission_ns = if rate_per_s == 0 {
            u64::MAX
        } else {
            let t = NANOS_PER_S.div_ceil(u128::from(rate_per_s));
            u64::try_from(t).unwrap_or(u64::MAX).max(1)
        };
        Quota {
            emission_ns,
            burst: burst.max(1),
        }
    }

    /// Parts per second this quota admits (for logs and tests).
    pub fn rate_per_s(&self) -> f64 {
        if self.emission_ns == u64::MAX {
            0.0
        } else {
            1e9 / self.emission_ns as f64
        }
    }
}

/// The answer of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over the limit; the same request would fit after `retry_after_ns`.
    Deny {
        retry_after_ns: u64,
    },
}

impl Decision {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_s(retry_after_ns: u64) -> u32 {
        u32::try_from(retry_after_ns.div_ceil(NANOS_PER_S as u64))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// One key's GCRA state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gcra {
    /// When the bucket is empty again: every admitted part pushes it `emission_ns` later.
    tat_ns: u64,
}

/// One GCRA step on `tat_ns`: the new TAT if `parts` fit at `now_ns`, else how long until
/// they would. Shared by the plain and the atomic state so their math cannot drift apart.
///
/// A request bigger than the burst is admitted when the bucket is full (it could never fit
/// otherwise) and leaves a debt the following parts repay, so the long-run rate is exact.
#[inline]
fn gcra_step(tat_ns: u64, quota: Quota, parts: u64, now_ns: u64) -> Result<u64, u64> {
    if quota.emission_ns == u64::MAX {
        return Err(NANOS_PER_S as u64);
    }
    let tat = tat_ns.max(now_ns);
    let fit = parts.min(quota.burst);
    let horizon = now_ns.saturating_add(quota.burst.saturating_mul(quota.emission_ns));
    let needed = tat.saturating_add(fit.saturating_mul(quota.emission_ns));
    if needed > horizon {
        return Err(needed - horizon);
    }
    Ok(tat.saturating_add(parts.saturating_mul(quota.emission_ns)))
}

/// The TAT after giving back `parts`: never before `now_ns` (unless it already was), so a
/// refund cannot create more than a full bucket.
#[inline]
fn refund_step(tat_ns: u64, quota: Quota, parts: u64, now_ns: u64) -> u64 {
    if quota.emission_ns == u64::MAX {
        return tat_ns;
    }
    let back = parts.saturating_mul(quota.emission_ns);
    tat_ns.saturating_sub(back).max(now_ns.min(tat_ns))
}

#[inline]
fn decision(step: Result<u64, u64>) -> Decision {
    match step {
        Ok(_) => Decision::Allow,
        Err(retry_after_ns) => Decision::Deny { retry_after_ns },
    }
}

impl Gcra {
    /// Admits `parts` at `now_ns` if they fit, and records them.
    #[inline]
    pub fn check(&mut self, quota: Quota, parts: u64, now_ns: u64) -> Decision {
        let step = gcra_step(self.tat_ns, quota, parts, now_ns);
        if let Ok(tat) = step {
            self.tat_ns = tat;
        }
        decision(step)
    }

    /// Gives back `parts` admitted by `check` (a later stage refused the message).
    pub fn refund(&mut self, quota: Quota, parts: u64, now_ns: u64) {
        self.tat_ns = refund_step(self.tat_ns, quota, parts, now_ns);
    }
}

/// One key's GCRA state shared by every shard of the node. Aligned to a cache line so two hot
/// keys never share one (false sharing would make unrelated keys contend).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct AtomicGcra {
    tat_ns: AtomicU64,
}

impl AtomicGcra {
    /// `Gcra::check` on the shared TAT. Lock-free: a failed compare-exchange means another
    /// shard admitted parts in between, so the step is recomputed on its TAT (at most one retry
    /// per concurrent shard in practice). `Relaxed` is enough: the TAT is the only shared
    /// datum, and all operations on one atomic are totally ordered.
    #[inline]
    pub fn check(&self, quota: Quota, parts: u64, now_ns: u64) -> Decision {
        let mut cur = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let step = gcra_step(cur, quota, parts, now_ns);
            let Ok(next) = step else {
                return decision(step);
            };
            match self
                .tat_ns
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Decision::Allow,
                Err(actual) => cur = actual,
            }
        }
    }

    /// `Gcra::refund` on the shared TAT.
    pub fn refund(&self, quota: Quota, parts: u64, now_ns: u64) {
        // The closure always returns `Some`, so this cannot fail.
        let _ = self
            .tat_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(refund_step(tat, quota, parts, now_ns))
            });
    }
}

/// Cheap hashing for the small integer keys of the limiter (SipHash costs more than the check).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKey {
    App(u64),
    Link(u32),
    Pool(u32),
}

impl LimitKey {
    fn packed(self) -> u64 {
        match self {
            LimitKey::App(id) => id & ((1 << 62) - 1),
            LimitKey::Link(id) => (1 << 62) | u64::from(id),
            LimitKey::Pool(id) => (2 << 62) | u64::from(id),
        }
    }

    /// The key's name in Redis and in logs: `app:7`, `link:100`, `pool:900`.
    pub fn name(self) -> String {
        match self {
            LimitKey::App(id) => format!("app:{id}"),
            LimitKey::Link(id) => format!("link:{id}"),
            LimitKey::Pool(id) => format!("pool:{id}"),
        }
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// The node's L1 state: one `AtomicGcra` per key, shared by the shards (`Arc`). Keys are
/// created on first use; their number is bounded by the configured apps, links and pools
/// (requests reach the limiter only after authentication and routing).
#[derive(Debug, Default)]
pub struct SharedL1 {
    keys: RwLock<KeyMap<Arc<AtomicGcra>>>,
}

impl SharedL1 {
    pub fn new() -> Arc<SharedL1> {
        Arc::new(SharedL1::default())
    }

    /// The state of `key`, created if new. Takes the lock: shards call it once per key.
    fn state(&self, key: u64) -> Arc<AtomicGcra> {
        if let Some(s) = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(s);
        }
        // A poisoned lock still holds a consistent map (inserts cannot half-happen).
        let mut w = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(w.entry(key).or_default())
    }

    /// Number of keys with state.
    pub fn len(&self) -> usize {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct Bucket {
    /// The (rate, burst) `quota` was computed from: recomputed only when it changes.
    limit: (u64, u64),
    quota: Quota,
    state: Arc<AtomicGcra>,
}

/// One shard's handle on the node's L1 state: caches each key's shared state and quota, so a
/// check is a shard-local lookup plus one compare-exchange. Lives on its shard.
#[derive(Debug)]
pub struct L1Table {
    shared: Arc<SharedL1>,
    buckets: KeyMap<Bucket>,
}

impl L1Table {
    /// A shard's view of `shared` (every shard of a node must get the same `SharedL1`).
    pub fn new(shared: Arc<SharedL1>) -> L1Table {
        L1Table {
            shared,
            buckets: HashMap::default(),
        }
    }

    /// Checks `parts` against `key` whose node-wide limit is `rate_per_s`/`burst`. A changed
    /// limit (e.g. a pool member went down, or Redis went down and the fail-open share
    /// applies) takes effect at once; the shared TAT is kept, so a change does not hand out a
    /// fresh burst.
    #[inline]
    pub fn check(
        &mut self,
        key: LimitKey,
        rate_per_s: u64,
        burst: u64,
        parts: u64,
        now_ns: u64,
    ) -> Decision {
        let shared = &self.shared;
        let b = self.buckets.entry(key.packed()).or_insert_with(|| Bucket {
            limit: (rate_per_s, burst),
            quota: Quota::new(rate_per_s, burst),
            state: shared.state(key.packed()),
        });
        if b.limit != (rate_per_s, burst) {
            b.limit = (rate_per_s, burst);
            b.quota = Quota::new(rate_per_s, burst);
        }
        b.state.check(b.quota, parts, now_ns)
    }

    /// Gives back parts admitted by `check` for `key`.
    pub fn refund(&mut self, key: LimitKey, parts: u64, now_ns: u64) {
        if let Some(b) = self.buckets.get(&key.packed()) {
            b.state.refund(b.quota, parts, now_ns);
        }
    }

    /// Number of keys this shard has seen (bounded by the configured apps, links and pools).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn idle_bucket_admits_the_burst_then_the_rate() {
        let q = Quota::new(100, 20);
        let mut g = Gcra::default();
        let t0 = 5 * S;
        let burst = (0..100)
            .filter(|_| g.check(q, 1, t0) == Decision::Allow)
            .count();
        assert_eq!(burst, 20);
        // 10 ms later exactly one more part fits.
        assert_eq!(g.check(q, 1, t0 + S / 100), Decision::Allow);
        assert!(matches!(g.check(q, 1, t0 + S / 100), Decision::Deny { .. }));
    }

    #[test]
    fn retry_after_is_when_the_request_fits() {
        let q = Quota::new(10, 10);
        let mut g = Gcra::default();
        assert_eq!(g.check(q, 10, 0), Decision::Allow);
        let Decision::Deny { retry_after_ns } = g.check(q, 3, 0) else {
            panic!("must deny")
        };
        assert_eq!(retry_after_ns, 300_000_000);
        assert_eq!(Decision::retry_after_s(retry_after_ns), 1);
        assert_eq!(g.check(q, 3, retry_after_ns), Decision::Allow);
        assert_eq!(Decision::retry_after_s(2_000_000_001), 3);
    }

    #[test]
    fn oversize_request_admitted_when_full_and_repaid() {
        let q = Quota::new(10, 2);
        let mut g = Gcra::default();
        assert_eq!(g.check(q, 5, 0), Decision::Allow);
        // The 5 parts cost 500 ms: nothing fits before the debt is repaid.
        assert!(matches!(g.check(q, 1, 200_000_000), Decision::Deny { .. }));
        assert_eq!(g.check(q, 1, 400_000_000), Decision::Allow);
    }

    #[test]
    fn refund_returns_capacity() {
        let q = Quota::new(10, 3);
        let mut g = Gcra::default();
        assert_eq!(g.check(q, 3, 0), Decision::Allow);
        g.refund(q, 2, 0);
        assert_eq!(g.check(q, 2, 0), Decision::Allow);
        assert!(matches!(g.check(q, 1, 0), Decision::Deny { .. }));
    }

    #[test]
    fn shards_share_one_state_per_key() {
        let shared = SharedL1::new();
        let mut a = L1Table::new(Arc::clone(&shared));
        let mut b = L1Table::new(Arc::clone(&shared));
        // The whole burst of 10 is the node's: 6 on one shard leave 4 for the other.
        for _ in 0..6 {
            assert_eq!(a.check(LimitKey::Link(1), 100, 10, 1, S), Decision::Allow);
        }
        let admitted_b = (0..10)
            .filter(|_| b.check(LimitKey::Link(1), 100, 10, 1, S) == Decision::Allow)
            .count();
        assert_eq!(admitted_b, 4);
        // Another key has its own state.
        assert_eq!(b.check(LimitKey::Pool(1), 100, 10, 1, S), Decision::Allow);
        assert_eq!(shared.len(), 2);
        // A refund on one shard is capacity for the other.
        b.refund(LimitKey::Link(1), 1, S);
        assert_eq!(a.check(LimitKey::Link(1), 100, 10, 1, S), Decision::Allow);
    }

    #[test]
    fn atomic_and_plain_gcra_agree() {
        let q = Quota::new(37, 5);
        let mut g = Gcra::default();
        let a = AtomicGcra::default();
        let mut rng = 0x1234_5678_u64;
        let mut now = S;
        for _ in 0..10_000 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += (rng >> 40) % (S / 20);
            let parts = 1 + (rng >> 20) % 7;
            assert_eq!(g.check(q, parts, now), a.check(q, parts, now));
            if rng.is_multiple_of(5) {
                g.refund(q, 1, now);
                a.refund(q, 1, now);
            }
        }
    }

    #[test]
    fn zero_rate_admits_nothing() {
        let mut g = Gcra::default();
        assert!(matches!(
            g.check(Quota::new(0, 0), 1, S),
            Decision::Deny { .. }
        ));
    }
}
