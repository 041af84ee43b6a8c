//! L2: cluster-wide limits in Redis, shared by every replica, paid for in batches.
//!
//! Two halves:
//! * `L2Client` (thread-safe) owns the Redis connection on the tokio side runtime. Shards send
//!   it lease requests over a bounded channel and get the answer on a tokio oneshot, a plain
//!   future that a monoio shard can await. It also owns the health flag: a failed or timed-out
//!   call marks Redis down (one log line), and then only the client probes Redis, with capped
//!   exponential back-off, until it answers again (another log line).
//! * `L2Shard` (one per shard, `!Send`) holds this shard's leases: tokens granted by Redis
//!   that the shard spends locally without a round trip. It asks for the next lease in the
//!   background when a lease runs low, so a busy shard rarely waits; a lease dies after
//!   `lease_ttl` so a replica that stops (or crashes) cannot spend old capacity later.
//!
//! The Redis side is GCRA in a Lua script (`LEASE_SCRIPT`): atomic, with the server's clock
//! (`TIME`), so replicas with skewed clocks agree; the key expires when its bucket is full
//! again, so idle keys cost nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::l1::LimitKey;

/// GCRA over a batch. `KEYS[1]`: the bucket's TAT (µs, server clock).
/// ARGV: emission interval in µs (may be fractional), burst in parts, parts wanted.
/// Returns `{granted, wait_us}`: `granted` ≤ wanted parts were taken; when 0, `wait_us` is how
/// long until one part fits.
pub const LEASE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local horizon = now + burst * interval
local n = math.floor((horizon - tat) / interval + 1e-9)
if n > want then n = want end
if n <= 0 then
  return {0, math.ceil(tat + interval - horizon)}
end
tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {n, 0}
"#;

/// What the L2 client needs from configuration.
#[derive(Debug, Clone)]
pub struct L2Config {
    /// `redis://host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// Longest wait for one Redis call; beyond it Redis counts as down.
    pub timeout: Duration,
    /// Prefix of every key this gateway writes (`<prefix>:limit:<key>`).
    pub key_prefix: String,
    /// Probe back-off while Redis is down.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Most parts one lease grants (the batch): ≥ 100 keeps steady state at ≤ 1 round trip per
    /// 100 parts per shard.
    pub lease_max: u32,
    /// Unused leased parts die this long after the grant.
    pub lease_ttl: Duration,
    /// Bound of the shards → client request channel.
    pub queue_capacity: usize,
}

impl Default for L2Config {
    fn default() -> Self {
        L2Config {
            url: "redis://127.0.0.1:6379".into(),
            timeout: Duration::from_millis(50),
            key_prefix: "smsgw".into(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            lease_max: 100,
            lease_ttl: Duration::from_secs(1),
            queue_capacity: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L2Error {
    #[error("redis is unavailable")]
    Unavailable,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Redis(String),
    #[error("too many lease requests queued")]
    Busy,
    #[error("the L2 client has stopped")]
    Stopped,
}

/// One answer of the lease script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// When `granted` is 0: how long until one part fits.
    pub wait: Duration,
}

/// 0 = no Redis configured, 1 = up, 2 = down. Process-wide, for the metrics exporter.
static REDIS_LIMITER_STATE: AtomicU8 = AtomicU8::new(0);

/// Whether the Redis limiter is usable: `None` when no Redis is configured in this process.
pub fn redis_limiter_up() -> Option<bool> {
    match REDIS_LIMITER_STATE.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s == 1),
    }
}

/// Health and counters of one `L2Client`, readable from any thread.
#[derive(Debug)]
pub struct L2Health {
    /// 1 = up, 2 = down (starts down until the first successful connection).
    state: AtomicU8,
    /// Redis calls made (lease scripts and probes).
    pub round_trips: AtomicU64,
    /// Up/down transitions since start.
    pub transitions: AtomicU64,
}

impl L2Health {
    fn new() -> L2Health {
        L2Health {
            state: AtomicU8::new(2),
            round_trips: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == 1
    }

    /// Records the outcome of a call; logs only on a change (never per message).
    fn set(&self, up: bool, why: &str) {
        let new = if up { 1 } else { 2 };
        let old = self.state.swap(new, Ordering::AcqRel);
        REDIS_LIMITER_STATE.store(new, Ordering::Relaxed);
        if old != new {
            self.transitions.fetch_add(1, Ordering::Relaxed);
            if up {
                info!("redis limiter available again: cluster-wide (L2) limits enforced");
            } else {
                warn!(
                    reason = why,
                    "redis limiter unavailable: falling back per [limits] on_redis_down"
                );
            }
        }
    }
}

struct LeaseRequest {
    key: String,
    interval_us: f64,
    burst: u64,
    want: u32,
    reply: tokio::sync::oneshot::Sender<Result<Grant, L2Error>>,
}

/// The process's handle on Redis. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct L2Client {
    tx: tokio::sync::mpsc::Sender<LeaseRequest>,
    health: Arc<L2Health>,
    config: Arc<L2Config>,
}

impl std::fmt::Debug for L2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Client")
            .field("up", &self.health.is_up())
            .finish()
    }
}

impl L2Client {
    /// Starts the client's task on `runtime` (the tokio side runtime). It connects in the
    /// background; until then (and whenever Redis is down) `health().is_up()` is false.
    pub fn start(config: L2Config, runtime: &tokio::runtime::Handle) -> Result<L2Client, L2Error> {
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| L2Error::Redis(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(config.queue_capacity.max(1));
        let health = Arc::new(L2Health::new());
        REDIS_LIMITER_STATE.store(2, Ordering::Relaxed);
        let config = Arc::new(config);
        runtime.spawn(run_client(
            client,
            Arc::clone(&config),
            rx,
            Arc::clone(&health),
        ));
        Ok(L2Client { tx, health, config })
    }

    pub fn health(&self) -> &Arc<L2Health> {
        &self.health
    }

    pub fn config(&self) -> &L2Config {
        &self.config
    }

    /// Asks Redis for up to `want` parts of `key` whose cluster-wide limit is
    /// `rate_per_s`/`burst`. Never blocks: a full queue is `Busy`.
    pub fn lease(
        &self,
        key: LimitKey,
        rate_per_s: u64,
        burst: u64,
        want: u32,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Grant, L2Error>>, L2Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = LeaseRequest {
            key: format!("{}:limit:{}", self.config.key_prefix, key.name()),
            interval_us: 1e6 / rate_per_s.max(1) as f64,
            burst: burst.max(1),
            want: want.max(1),
            reply,
        };
        self.tx.try_send(req).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => L2Error::Busy,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => L2Error::Stopped,
        })?;
        Ok(rx)
    }
}

async fn connect(
    client: &redis::Client,
    config: &L2Config,
) -> Result<redis::aio::ConnectionManager, L2Error> {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(200))))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(1);
    let fut = redis::aio::ConnectionManager::new_with_config(client.clone(), cfg);
    match tokio::time::timeout(config.timeout.max(Duration::from_millis(500)), fut).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(L2Error::Redis(e.to_string())),
        Err(_) => Err(L2Error::Timeout(config.timeout)),
    }
}

/// The client task: serves lease requests while Redis is up, probes it while it is down.
async fn run_client(
    client: redis::Client,
    config: Arc<L2Config>,
    mut rx: tokio::sync::mpsc::Receiver<LeaseRequest>,
    health: Arc<L2Health>,
) {
    let script = Arc::new(redis::Script::new(LEASE_SCRIPT));
    let mut conn: Option<redis::aio::ConnectionManager> = None;
    let mut backoff = config.reconnect_min;
    let mut next_probe = tokio::time::Instant::now();
    // A failed call (in a spawned task) wakes the loop so that probing starts even when no
    // further request arrives (shards stop asking while Redis is down).
    let failed = Arc::new(tokio::sync::Notify::new());
    loop {
        tokio::select! {
            _ = failed.notified() => {}
            req = rx.recv() => {
                let Some(req) = req else { return };
                match (&conn, health.is_up()) {
                    (Some(c), true) => {
                        tokio::spawn(serve(
                            c.clone(),
                            Arc::clone(&script),
                            req,
                            Arc::clone(&health),
                            config.timeout,
                            Arc::clone(&failed),
                        ));
                    }
                    _ => {
                        let _ = req.reply.send(Err(L2Error::Unavailable));
                    }
                }
            }
            _ = tokio::time::sleep_until(next_probe), if !health.is_up() => {
                health.round_trips.fetch_add(1, Ordering::Relaxed);
                let probed = match connect(&client, &config).await {
                    Ok(mut c) => {
                        let ping_cmd = redis::cmd("PING");
                        let ping = ping_cmd.query_async::<String>(&mut c);
                        match tokio::time::timeout(config.timeout, ping).await {
                            Ok(Ok(_)) => Ok(c),
                            Ok(Err(e)) => Err(L2Error::Redis(e.to_string())),
                            Err(_) => Err(L2Error::Timeout(config.timeout)),
                        }
                    }
                    Err(e) => Err(e),
                };
                match probed {
                    Ok(c) => {
                        conn = Some(c);
                        backoff = config.reconnect_min;
                        health.set(true, "");
                    }
                    Err(e) => {
                        conn = None;
                        tracing::debug!(error = %e, retry_in = ?backoff, "redis limiter probe failed");
                        health.set(false, &e.to_string());
                        // Jitter so that many replicas do not probe in lock step.
                        let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                        next_probe = tokio::time::Instant::now() + backoff + jitter;
                        backoff = (backoff * 2).min(config.reconnect_max);
                    }
                }
            }
        }
        // A call that failed marked Redis down: probe soon, from the minimum back-off.
        if !health.is_up() && conn.is_some() {
            conn = None;
            backoff = config.reconnect_min;
            next_probe = tokio::time::Instant::now() + config.reconnect_min;
        }
    }
}

async fn serve(
    mut conn: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    req: LeaseRequest,
    health: Arc<L2Health>,
    timeout: Duration,
    failed: Arc<tokio::sync::Notify>,
) {
    health.round_trips.fetch_add(1, Ordering::Relaxed);
    let mut invocation = script.key(&req.key);
    invocation
        .arg(format!("{:.6}", req.interval_us))
        .arg(req.burst)
        .arg(req.want);
    let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
    let answer = match tokio::time::timeout(timeout, call).await {
        Ok(Ok((granted, wait_us))) => Ok(Grant {
            granted: u32::try_from(granted.max(0)).unwrap_or(u32::MAX),
            wait: Duration::from_micros(u64::try_from(wait_us.max(0)).unwrap_or(0)),
        }),
        Ok(Err(e)) => {
            health.set(false, &e.to_string());
            failed.notify_one();
            Err(L2Error::Redis(e.to_string()))
        }
        Err(_) => {
            health.set(false, "timeout");
            failed.notify_one();
            Err(L2Error::Timeout(timeout))
        }
    };
    let _ = req.reply.send(answer);
}

/// Result of trying to spend leased parts.
pub enum Take {
    Taken,
    /// Redis said no; try again after this long (no round trip until then).
    Denied(Duration),
    /// Redis cannot be asked now: the caller falls back (fail-open) or refuses (fail-closed).
    Unavailable,
    /// A lease request is in flight: await this, then try again.
    Wait(async_channel::Receiver<()>),
}

#[derive(Default)]
struct Lease {
    tokens: u64,
    expires: Option<Instant>,
    /// No Redis call for this key before this instant (after a zero grant).
    denied_until: Option<Instant>,
    denied_wait: Duration,
    in_flight: bool,
    /// Requests waiting for the in-flight lease: closed (woken) when it lands.
    waiters: Vec<async_channel::Sender<()>>,
}

/// One shard's leases. `!Send`: it lives on its shard; the tasks it spawns are monoio tasks.
pub struct L2Shard {
    client: L2Client,
    leases: Rc<RefCell<HashMap<LimitKey, Lease>>>,
}

impl L2Shard {
    pub fn new(client: L2Client) -> L2Shard {
        L2Shard {
            client,
            leases: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    pub fn client(&self) -> &L2Client {
        &self.client
    }

    /// Parts per lease for a cluster-wide rate: 50 ms of the whole cluster's rate (so one
    /// shard cannot sit on a large part of a small limit), at most `lease_max`.
    pub fn lease_size(&self, rate_per_s: u64) -> u32 {
        let fair = (rate_per_s / 20).max(1);
        u32::try_from(fair)
            .unwrap_or(u32::MAX)
            .min(self.client.config.lease_max.max(1))
    }

    /// Spends `parts` of `key` from this shard's lease, or says what to do instead. Starts a
    /// background refill when the lease falls below a quarter of its size.
    /// Must run inside a monoio runtime (it may spawn the task that receives the lease).
    pub fn take(
        &self,
        key: LimitKey,
        rate_per_s: u64,
        burst: u64,
        parts: u64,
        now: Instant,
    ) -> Take {
        let size = self.lease_size(rate_per_s);
        let mut leases = self.leases.borrow_mut();
        let lease = leases.entry(key).or_default();
        if lease.expires.is_some_and(|e| e <= now) {
            lease.tokens = 0;
            lease.expires = None;
        }
        let up = self.client.health.is_up();
        let denied = lease.denied_until.is_some_and(|d| now < d);
        // Parts already leased are spent even while Redis is down: Redis counted them.
        if lease.tokens >= parts {
            lease.tokens -= parts;
            if up && lease.tokens < u64::from(size / 4).max(1) && !lease.in_flight && !denied {
                // Best effort: a full queue only means the next request asks again.
                let _ = self.refill(lease, key, rate_per_s, burst, size);
            }
            return Take::Taken;
        }
        if !up {
            return Take::Unavailable;
        }
        if denied {
            return Take::Denied(lease.denied_wait);
        }
        if !lease.in_flight {
            let want = size.max(u32::try_from(parts).unwrap_or(u32::MAX));
            if self.refill(lease, key, rate_per_s, burst, want).is_err() {
                return Take::Unavailable;
            }
        }
        let (tx, rx) = async_channel::bounded(1);
        lease.waiters.push(tx);
        Take::Wait(rx)
    }

    /// Puts back parts taken for a message a later check refused.
    pub fn refund(&self, key: LimitKey, parts: u64) {
        if let Some(l) = self.leases.borrow_mut().get_mut(&key)
            && l.expires.is_some()
        {
            l.tokens += parts;
        }
    }

    fn refill(
        &self,
        lease: &mut Lease,
        key: LimitKey,
        rate_per_s: u64,
        burst: u64,
        want: u32,
    ) -> Result<(), L2Error> {
        let rx = self.client.lease(key, rate_per_s, burst, want)?;
        lease.in_flight = true;
        let leases = Rc::clone(&self.leases);
        let ttl = self.client.config.lease_ttl;
        // How long a denied shard stays quiet: a quarter of the time the cluster needs to earn
        // one lease (so a denied shard costs Redis at most ~4 calls per lease's worth of
        // capacity), but short enough that the bucket does not overflow its burst while every
        // shard is quiet (that capacity would be lost).
        let quiet = Duration::from_secs_f64(f64::from(want) / rate_per_s.max(1) as f64 / 4.0)
            .min(Duration::from_millis(250));
        monoio::spawn(async move {
            let answer = rx.await.unwrap_or(Err(L2Error::Stopped));
            let now = Instant::now();
            let mut map = leases.borrow_mut();
            let Some(lease) = map.get_mut(&key) else {
                return;
            };
            lease.in_flight = false;
            match answer {
                Ok(g) if g.granted > 0 => {
                    if lease.expires.is_none_or(|e| e <= now) {
                        lease.tokens = 0;
                    }
                    lease.tokens += u64::from(g.granted);
                    lease.expires = Some(now + ttl);
                    lease.denied_until = None;
                }
                Ok(g) => {
                    let wait = g.wait.max(quiet);
                    lease.denied_until = Some(now + wait);
                    lease.denied_wait = g.wait.max(Duration::from_millis(1));
                }
                // The client has marked Redis down; waiters see `Unavailable` on retry.
                Err(_) => {}
            }
            // Dropping the senders closes the channels: every waiter wakes and retries.
            lease.waiters.clear();
        });
        Ok(())
    }
}
