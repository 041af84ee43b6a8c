//! L1: the per-shard limiter. GCRA (generic cell rate algorithm): one `u64` per key, the
//! "theoretical arrival time" (TAT) of the next part, and no refill timer.
//!
//! Time is passed in (`now_ns`, nanoseconds since any fixed epoch); nothing here reads a clock,
//! so tests run on virtual time.
//!
//! A node-wide limit is split across the N shards: each shard's emission interval is N times
//! the node's (its rate is exactly rate/N, to the nanosecond), and its burst is `burst / N`
//! plus one for the first `burst % N` shards (so the shares add up to the node's burst), but at
//! least one part (a shard must be able to admit something; for `burst < N` the node may burst
//! `N - burst` parts above its configured burst). See `docs/limits-and-policy.md` for why the
//! split is static.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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
    /// `rate_per_s` parts per second with `burst` parts, whole (one shard).
    pub fn new(rate_per_s: u64, burst: u64) -> Quota {
        Quota::share(rate_per_s, burst, 1, 0)
    }

    /// Shard `index`'s share (of `shards`) of a node-wide `rate_per_s` / `burst`.
    /// The emission interval is rounded up, so the shares never add up to more than the rate.
    pub fn share(rate_per_s: u64, burst: u64, shards: usize, index: usize) -> Quota {
        let shards = shards.max(1) as u64;
        let emission_ns = if rate_per_s == 0 {
            u64::MAX
        } else {
            let t = (NANOS_PER_S * u128::from(shards)).div_ceil(u128::from(rate_per_s));
            u64::try_from(t).unwrap_or(u64::MAX).max(1)
        };
        let base = burst / shards;
        let extra = u64::from((index as u64) < burst % shards);
        Quota {
            emission_ns,
            burst: (base + extra).max(1),
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

impl Gcra {
    /// Admits `parts` at `now_ns` if they fit, and records them.
    ///
    /// A request bigger than the burst is admitted when the bucket is full (it could never fit
    /// otherwise) and leaves a debt the following parts repay, so the long-run rate is exact.
    #[inline]
    pub fn check(&mut self, quota: Quota, parts: u64, now_ns: u64) -> Decision {
        if quota.emission_ns == u64::MAX {
            return Decision::Deny {
                retry_after_ns: NANOS_PER_S as u64,
            };
        }
        let tat = self.tat_ns.max(now_ns);
        let fit = parts.min(quota.burst);
        let horizon = now_ns.saturating_add(quota.burst.saturating_mul(quota.emission_ns));
        let needed = tat.saturating_add(fit.saturating_mul(quota.emission_ns));
        if needed > horizon {
            return Decision::Deny {
                retry_after_ns: needed - horizon,
            };
        }
        self.tat_ns = tat.saturating_add(parts.saturating_mul(quota.emission_ns));
        Decision::Allow
    }

    /// Gives back `parts` admitted by `check` (a later stage refused the message).
    pub fn refund(&mut self, quota: Quota, parts: u64, now_ns: u64) {
        if quota.emission_ns == u64::MAX {
            return;
        }
        let back = parts.saturating_mul(quota.emission_ns);
        self.tat_ns = self
            .tat_ns
            .saturating_sub(back)
            .max(now_ns.min(self.tat_ns));
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

#[derive(Debug)]
struct Bucket {
    node_limit: (u64, u64),
    quota: Quota,
    gcra: Gcra,
}

/// One shard's L1 buckets. Plain data: it lives on its shard and is never shared.
#[derive(Debug)]
pub struct L1Table {
    shards: usize,
    index: usize,
    /// key → (node-wide (rate, burst) the quota was computed from, this shard's quota, state)
    buckets: HashMap<u64, Bucket, BuildHasherDefault<KeyHasher>>,
}

impl L1Table {
    /// The table of shard `index` of `shards`.
    pub fn new(shards: usize, index: usize) -> L1Table {
        L1Table {
            shards: shards.max(1),
            index,
            buckets: HashMap::default(),
        }
    }

    /// This shard's quota for a node-wide `rate_per_s` / `burst`.
    pub fn quota(&self, rate_per_s: u64, burst: u64) -> Quota {
        Quota::share(rate_per_s, burst, self.shards, self.index)
    }

    /// Checks `parts` against `key` whose node-wide limit is `rate_per_s`/`burst`. A changed
    /// limit (e.g. a pool member went down) takes effect at once; the bucket's TAT is kept, so
    /// a change does not hand out a fresh burst.
    #[inline]
    pub fn check(
        &mut self,
        key: LimitKey,
        rate_per_s: u64,
        burst: u64,
        parts: u64,
        now_ns: u64,
    ) -> Decision {
        let (shards, index) = (self.shards, self.index);
        let b = self.buckets.entry(key.packed()).or_insert_with(|| Bucket {
            node_limit: (rate_per_s, burst),
            quota: Quota::share(rate_per_s, burst, shards, index),
            gcra: Gcra::default(),
        });
        if b.node_limit != (rate_per_s, burst) {
            b.node_limit = (rate_per_s, burst);
            b.quota = Quota::share(rate_per_s, burst, shards, index);
        }
        b.gcra.check(b.quota, parts, now_ns)
    }

    /// Gives back parts admitted by `check` for `key`.
    pub fn refund(&mut self, key: LimitKey, parts: u64, now_ns: u64) {
        if let Some(b) = self.buckets.get_mut(&key.packed()) {
            b.gcra.refund(b.quota, parts, now_ns);
        }
    }

    /// Number of keys with state (bounded by the configured apps, links and pools).
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
    fn shares_add_up_to_the_node_burst_and_rate() {
        for shards in 1..=7usize {
            for burst in [1u64, 5, 7, 100, 101] {
                let sum: u64 = (0..shards)
                    .map(|i| Quota::share(300, burst, shards, i).burst)
                    .sum();
                assert_eq!(
                    sum,
                    burst.max(shards as u64),
                    "shards {shards} burst {burst}"
                );
                let rate: f64 = (0..shards)
                    .map(|i| Quota::share(300, burst, shards, i).rate_per_s())
                    .sum();
                assert!(rate <= 300.0 && rate > 299.99, "{rate}");
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
