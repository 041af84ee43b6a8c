//! Rate limiting, in SMPP parts (a 3-part message costs 3).
//!
//! * `l1` — node-wide GCRA: one lock-free shared state per key, checked by every shard.
//! * `l2` — cluster-wide limits in Redis: shards lease parts in batches (Lua GCRA).
//! * `LimitStage` — the pipeline's `limit` slot: per app (`[limits]`), per link (`esme_rate`)
//!   or pool (sum of healthy members' rates).
//!
//! Which layer decides a key: with `[redis] url` set and Redis up, L2 (the lease already is
//! this shard's limit, sized to its demand); with no Redis, L1 with the whole limit per node;
//! with Redis down, `on_redis_down`: `fail_open` → L1 with this node's 1/`expected_replicas`
//! share (through the same shared state, so uneven shards still get the whole share),
//! `fail_closed` → 503. L1 is not stacked on top of a healthy L2: the lease already is the
//! limit, a second check would only cost time. See `docs/limits-and-policy.md`.

pub mod l1;
pub mod l2;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{ApiError, ErrorKind};
use crate::config::{Config, LimitsConfig, LinkId, OnRedisDown, PoolId};
use crate::route::{HealthTable, Target};
use crate::shard::stages::{Admission, RequestMeta, Stage, Verdict};

pub use l1::{AtomicGcra, Decision, Gcra, L1Table, LimitKey, Quota, SharedL1};
pub use l2::{Grant, L2Client, L2Config, L2Error, L2Health, L2Shard, Take, redis_limiter_up};

/// Most times one request waits for an in-flight lease before it is refused (each wait is
/// bounded by the Redis timeout).
const MAX_LEASE_WAITS: u32 = 3;

/// The node's limits: configuration, link health and the Redis client. Shared by the shards
/// (`Arc`); each shard builds its own `LimitStage` from it.
pub struct Limits {
    config: LimitsConfig,
    health: Arc<HealthTable>,
    shards: usize,
    l2: Option<L2Client>,
    /// The node's L1 state, one per key for all shards.
    l1: Arc<SharedL1>,
    epoch: Instant,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("shards", &self.shards)
            .field("l2", &self.l2)
            .finish()
    }
}

impl Limits {
    pub fn new(
        config: LimitsConfig,
        health: Arc<HealthTable>,
        shards: usize,
        l2: Option<L2Client>,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            health,
            shards: shards.max(1),
            l2,
            l1: SharedL1::new(),
            epoch: Instant::now(),
        })
    }

    /// From the gateway's configuration; starts the Redis client on `side` when `[redis] url`
    /// is set (it connects in the background: Redis down at start is a fallback, not an error).
    pub fn from_config(
        config: &Config,
        health: Arc<HealthTable>,
        shards: usize,
        side: &tokio::runtime::Handle,
    ) -> Result<Arc<Limits>, L2Error> {
        let l2 = match &config.redis.url {
            None => None,
            Some(url) => Some(L2Client::start(
                L2Config {
                    url: url.clone(),
                    timeout: config.redis.timeout,
                    key_prefix: config.redis.key_prefix.clone(),
                    reconnect_min: config.redis.reconnect_min,
                    reconnect_max: config.redis.reconnect_max,
                    lease_max: config.limits.lease_max.get(),
                    lease_ttl: config.limits.lease_ttl,
                    ..L2Config::default()
                },
                side,
            )?),
        };
        Ok(Limits::new(config.limits.clone(), health, shards, l2))
    }

    /// The stage of shard `index`. Every shard's stage checks the same node-wide L1 state;
    /// `index` is kept for the shards' call sites.
    pub fn stage(self: &Arc<Self>, _index: usize) -> LimitStage {
        LimitStage {
            limits: Arc::clone(self),
            l1: RefCell::new(L1Table::new(Arc::clone(&self.l1))),
            l2: self.l2.clone().map(L2Shard::new),
        }
    }

    /// Health and round-trip counter of the Redis limiter; `None` without Redis.
    pub fn l2_health(&self) -> Option<&Arc<L2Health>> {
        self.l2.as_ref().map(|c| c.health())
    }

    /// The limits that apply to a message: `(key, rate_per_s, burst)`, at most two.
    fn keys(&self, admission: &Admission) -> ([(LimitKey, u64, u64); 2], usize) {
        let mut out = [(LimitKey::App(0), 0, 0); 2];
        let mut n = 0;
        let app = self
            .config
            .apps
            .get(&admission.app_id)
            .or(self.config.app_default.as_ref());
        if let Some(a) = app {
            out[n] = (
                LimitKey::App(admission.app_id),
                u64::from(a.rate_per_s.get()),
                u64::from(a.burst.get()),
            );
            n += 1;
        }
        if self.config.links {
            // Unknown esme, link down or pool without a healthy member: no limit here, routing
            // answers 404/503 (a 429 would tell the client to retry a message that cannot go).
            let limit = match self.health.registry().resolve(u64::from(admission.esme)) {
                Ok(Target::Link(LinkId(id))) => self
                    .health
                    .effective_rate(LinkId(id))
                    .map(|(r, b)| (LimitKey::Link(id), u64::from(r), u64::from(b))),
                Ok(Target::Pool(PoolId(id))) => self
                    .health
                    .pool_capacity(PoolId(id))
                    .zip(self.health.pool_burst(PoolId(id)))
                    .map(|(r, b)| (LimitKey::Pool(id), r, b)),
                Err(_) => None,
            };
            if let Some(l) = limit.filter(|l| l.1 > 0) {
                out[n] = l;
                n += 1;
            }
        }
        (out, n)
    }
}

/// Which layer admitted a key (so a later refusal can give the parts back).
#[derive(Debug, Clone, Copy)]
enum Taken {
    L1(LimitKey),
    L2(LimitKey),
}

enum Step {
    Done(Taken),
    Reject(ApiError),
    Wait(async_channel::Receiver<()>),
}

/// The `limit` stage of one shard.
pub struct LimitStage {
    limits: Arc<Limits>,
    l1: RefCell<L1Table>,
    l2: Option<L2Shard>,
}

fn rate_limited(key: LimitKey, rate: u64, retry_after_s: u32) -> ApiError {
    let what = match key {
        LimitKey::App(id) => format!("app {id}"),
        LimitKey::Link(id) => format!("link {id}"),
        LimitKey::Pool(id) => format!("pool {id}"),
    };
    ApiError::new(
        ErrorKind::RateLimited,
        format!("rate limit of {what} exceeded ({rate} parts/s)"),
    )
    .retry_after(retry_after_s)
}

impl LimitStage {
    fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.limits.epoch).as_nanos())
            .unwrap_or(u64::MAX)
    }

    fn l1_step(&self, key: LimitKey, rate: u64, burst: u64, parts: u64, now: Instant) -> Step {
        let now_ns = self.now_ns(now);
        match self.l1.borrow_mut().check(key, rate, burst, parts, now_ns) {
            Decision::Allow => Step::Done(Taken::L1(key)),
            Decision::Deny { retry_after_ns } => Step::Reject(rate_limited(
                key,
                rate,
                Decision::retry_after_s(retry_after_ns),
            )),
        }
    }

    fn step(&self, (key, rate, burst): (LimitKey, u64, u64), parts: u64, now: Instant) -> Step {
        let Some(l2) = &self.l2 else {
            return self.l1_step(key, rate, burst, parts, now);
        };
        match l2.take(key, rate, burst, parts, now) {
            Take::Taken => Step::Done(Taken::L2(key)),
            Take::Denied(wait) => Step::Reject(rate_limited(
                key,
                rate,
                Decision::retry_after_s(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)),
            )),
            Take::Wait(rx) => Step::Wait(rx),
            Take::Unavailable => match self.limits.config.on_redis_down {
                OnRedisDown::FailOpen => {
                    let n = u64::from(self.limits.config.expected_replicas.get());
                    self.l1_step(
                        key,
                        rate.div_ceil(n).max(1),
                        burst.div_ceil(n).max(1),
                        parts,
                        now,
                    )
                }
                OnRedisDown::FailClosed => Step::Reject(
                    ApiError::new(
                        ErrorKind::Overloaded,
                        "rate limiter unavailable (redis down) and on_redis_down = fail_closed",
                    )
                    .retry_after(1),
                ),
            },
        }
    }

    fn refund(&self, taken: &[Option<Taken>], parts: u64) {
        let now_ns = self.now_ns(Instant::now());
        for t in taken.iter().flatten() {
            match *t {
                Taken::L1(k) => self.l1.borrow_mut().refund(k, parts, now_ns),
                Taken::L2(k) => {
                    if let Some(l2) = &self.l2 {
                        l2.refund(k, parts);
                    }
                }
            }
        }
    }

    /// The rest of a check that had to wait for a lease: `keys[from..]` still to do.
    async fn finish(
        &self,
        keys: [(LimitKey, u64, u64); 2],
        n: usize,
        mut from: usize,
        mut taken: [Option<Taken>; 2],
        mut rx: async_channel::Receiver<()>,
        parts: u64,
    ) -> Result<(), ApiError> {
        let mut waits = 0;
        loop {
            // Closed (never sent to) when the lease request completes.
            let _ = rx.recv().await;
            waits += 1;
            while from < n {
                match self.step(keys[from], parts, Instant::now()) {
                    Step::Done(t) => {
                        taken[from] = Some(t);
                        from += 1;
                    }
                    Step::Reject(e) => {
                        self.refund(&taken, parts);
                        return Err(e);
                    }
                    Step::Wait(next) if waits < MAX_LEASE_WAITS => {
                        rx = next;
                        break;
                    }
                    Step::Wait(_) => {
                        self.refund(&taken, parts);
                        let (key, rate, _) = keys[from];
                        return Err(rate_limited(key, rate, 1));
                    }
                }
            }
            if from >= n {
                return Ok(());
            }
        }
    }
}

impl Stage for LimitStage {
    fn name(&self) -> &'static str {
        "limit"
    }

    fn check<'s>(
        &'s self,
        admission: &'s mut Admission,
        _meta: &'s RequestMeta<'_>,
    ) -> Verdict<'s> {
        let (keys, n) = self.limits.keys(admission);
        if n == 0 {
            return Verdict::Pass;
        }
        let parts = admission.parts.max(1) as u64;
        let now = Instant::now();
        let mut taken: [Option<Taken>; 2] = [None, None];
        for i in 0..n {
            match self.step(keys[i], parts, now) {
                Step::Done(t) => taken[i] = Some(t),
                Step::Reject(e) => {
                    self.refund(&taken, parts);
                    return Verdict::Reject(e);
                }
                Step::Wait(rx) => {
                    return Verdict::Wait(Box::pin(self.finish(keys, n, i, taken, rx, parts)));
                }
            }
        }
        Verdict::Pass
    }
}

/// `Retry-After` for a wait, in whole seconds rounded up (at least 1).
pub fn retry_after_s(wait: Duration) -> u32 {
    Decision::retry_after_s(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX))
}
