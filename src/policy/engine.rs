//! The contact-policy decision: blacklist, CP2 duplicate, CP1 caps, in that order, with
//! check-then-count (only a message that passes every asked strategy is counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::blacklist::Blacklist;
use super::number::Normalizer;
use super::{PolicySettings, State, Strategies};

/// Milliseconds since the Unix epoch; injectable so tests can cross midnight at will.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock the test sets.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn new(ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const DAY_MS: i64 = 86_400_000;

/// Calendar periods in the configured fixed UTC offset. Day index = local days since
/// 1970-01-01; week index counts ISO weeks (Monday first): 1970-01-01 was a Thursday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day: i64,
    pub week: i64,
    /// Milliseconds until the local day / week ends (≥ 1).
    pub day_left_ms: i64,
    pub week_left_ms: i64,
}

pub fn periods(now_ms: i64, utc_offset_s: i32) -> Periods {
    let local = now_ms + i64::from(utc_offset_s) * 1000;
    let day = local.div_euclid(DAY_MS);
    let week = (day + 3).div_euclid(7);
    let day_end = (day + 1) * DAY_MS;
    let week_end = ((week + 1) * 7 - 3) * DAY_MS;
    Periods {
        day,
        week,
        day_left_ms: (day_end - local).max(1),
        week_left_ms: (week_end - local).max(1),
    }
}

/// One question to the engine.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub app_id: u64,
    /// E.164 key of the destination (see `number`).
    pub destination: u64,
    /// `text_hash` of the message text (CP2).
    pub text_hash: u64,
    pub strategies: Strategies,
}

/// Why the engine could not answer (the caller applies the fail-open/closed policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy counter store unavailable: {0}")]
    Unavailable(String),
}

/// Counters kept in this process: bounded maps whose entries expire with their period.
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    max_entries: usize,
    /// Checks answered `ok` without counting because the maps were full of live entries.
    pub full_skips: AtomicU64,
}

#[derive(Default)]
struct MemoryInner {
    /// destination → (day, count, week, count).
    caps: HashMap<u64, CapEntry>,
    /// (app, destination, text hash) → expiry (ms).
    dups: HashMap<(u64, u64, u64), i64>,
}

#[derive(Clone, Copy)]
struct CapEntry {
    day: i64,
    day_count: u32,
    week: i64,
    week_count: u32,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(MemoryInner::default()),
            max_entries: max_entries.max(1),
            full_skips: AtomicU64::new(0),
        }
    }

    /// Atomic check-then-count under one lock (the same semantics as the Redis script).
    pub fn check(&self, req: &CheckRequest, s: &PolicySettings, now_ms: i64) -> State {
        let p = periods(now_ms, s.utc_offset_s);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dup_key = (req.app_id, req.destination, req.text_hash);
        if req.strategies.cp2
            && let Some(&exp) = g.dups.get(&dup_key)
            && exp > now_ms
        {
            return State::Duplicate;
        }
        let mut entry = CapEntry {
            day: p.day,
            day_count: 0,
            week: p.week,
            week_count: 0,
        };
        if req.strategies.cp1 {
            if let Some(e) = g.caps.get(&req.destination) {
                if e.day == p.day {
                    entry.day_count = e.day_count;
                }
                if e.week == p.week {
                    entry.week_count = e.week_count;
                }
            }
            if s.daily_cap > 0 && entry.day_count >= s.daily_cap {
                return State::DailyCap;
            }
            if s.weekly_cap > 0 && entry.week_count >= s.weekly_cap {
                return State::WeeklyCap;
            }
        }
        // Count. Bound: when a map is full, drop expired entries; if it is still full, answer
        // ok without counting (fail-open, counted in `full_skips`) rather than grow.
        if req.strategies.cp2 {
            if g.dups.len() >= self.max_entries && !g.dups.contains_key(&dup_key) {
                g.dups.retain(|_, exp| *exp > now_ms);
            }
            if g.dups.len() < self.max_entries || g.dups.contains_key(&dup_key) {
                g.dups
                    .insert(dup_key, now_ms + s.cp2_window.as_millis() as i64);
            } else {
                self.full_skips.fetch_add(1, Ordering::Relaxed);
            }
        }
        if req.strategies.cp1 {
            if g.caps.len() >= self.max_entries && !g.caps.contains_key(&req.destination) {
                g.caps.retain(|_, e| e.week == p.week);
            }
            if g.caps.len() < self.max_entries || g.caps.contains_key(&req.destination) {
                entry.day_count += 1;
                entry.week_count += 1;
                g.caps.insert(req.destination, entry);
            } else {
                self.full_skips.fetch_add(1, Ordering::Relaxed);
            }
        }
        State::Ok
    }

    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.caps.len() + g.dups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The published blacklist: an `Arc` snapshot replaced whole by the refresher, plus a
/// generation number so readers can keep their own copy and only lock when it changed.
pub struct BlacklistCell {
    generation: AtomicU64,
    current: Mutex<Arc<Blacklist>>,
}

impl Default for BlacklistCell {
    fn default() -> Self {
        BlacklistCell {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Blacklist::default())),
        }
    }
}

impl BlacklistCell {
    pub fn publish(&self, list: Blacklist) {
        let n = list.len();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
        self.generation.fetch_add(1, Ordering::Release);
        info!(numbers = n, "blacklist published");
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Blacklist> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Per-state answer counters (for `/metrics`).
#[derive(Default)]
pub struct PolicyMetrics {
    /// Index = `State as usize`.
    pub answers: [AtomicU64; 5],
    /// Checks that failed for a store error (before the fail-open/closed decision).
    pub store_errors: AtomicU64,
    /// The last counter-store call failed (for logging the transitions only).
    pub store_down: std::sync::atomic::AtomicBool,
}

impl PolicyMetrics {
    pub fn record(&self, s: State) {
        self.answers[s as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Where CP1/CP2 counters live.
pub enum CounterBackend {
    Memory,
    Redis(super::redis_store::RedisStore),
}

/// The engine: shared by every shard (and by `smsgw mcp`).
pub struct PolicyEngine {
    pub settings: PolicySettings,
    pub normalizer: Normalizer,
    pub blacklist: Arc<BlacklistCell>,
    pub memory: MemoryStore,
    pub backend: CounterBackend,
    pub clock: Arc<dyn Clock>,
    pub metrics: PolicyMetrics,
}

impl PolicyEngine {
    pub fn new(settings: PolicySettings, clock: Arc<dyn Clock>) -> PolicyEngine {
        PolicyEngine {
            normalizer: Normalizer {
                default_country_code: settings.default_country_code.clone(),
            },
            memory: MemoryStore::new(settings.memory_max_entries),
            settings,
            blacklist: Arc::new(BlacklistCell::default()),
            backend: CounterBackend::Memory,
            clock,
            metrics: PolicyMetrics::default(),
        }
    }

    pub fn with_redis(mut self, store: super::redis_store::RedisStore) -> PolicyEngine {
        self.backend = CounterBackend::Redis(store);
        self
    }

    /// The blacklist part (no I/O).
    pub fn blacklisted(&self, list: &Blacklist, req: &CheckRequest) -> bool {
        req.strategies.blacklist && list.contains(req.destination)
    }

    /// Whether the counters need a round trip (Redis configured and a counting strategy).
    pub fn needs_remote(&self, req: &CheckRequest) -> bool {
        matches!(self.backend, CounterBackend::Redis(_))
            && (req.strategies.cp1 || req.strategies.cp2)
    }

    /// Counters in memory (also the fail-open fallback while Redis is down).
    pub fn check_memory(&self, req: &CheckRequest) -> State {
        if !(req.strategies.cp1 || req.strategies.cp2) {
            return State::Ok;
        }
        self.memory.check(req, &self.settings, self.clock.now_ms())
    }

    /// The whole decision. Returns `Err` only when Redis failed and `on_redis_down` is
    /// fail-closed.
    pub async fn check(&self, req: &CheckRequest) -> Result<State, PolicyError> {
        let list = self.blacklist.snapshot();
        let state = self.check_with(&list, req).await;
        if let Ok(s) = &state {
            self.metrics.record(*s);
        }
        state
    }

    pub async fn check_with(
        &self,
        list: &Blacklist,
        req: &CheckRequest,
    ) -> Result<State, PolicyError> {
        if self.blacklisted(list, req) {
            return Ok(State::Blacklist);
        }
        match &self.backend {
            CounterBackend::Redis(r) if req.strategies.cp1 || req.strategies.cp2 => {
                match r.check(req, &self.settings, self.clock.now_ms()).await {
                    Ok(s) => {
                        if self.metrics.store_down.swap(false, Ordering::Relaxed) {
                            info!("policy: redis answers again; counting in redis");
                        }
                        Ok(s)
                    }
                    Err(e) => {
                        self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                        // One line per outage, not per message (the counter counts those).
                        if !self.metrics.store_down.swap(true, Ordering::Relaxed) {
                            warn!(
                                error = %e,
                                mode = if self.settings.fail_open { "fail_open" } else { "fail_closed" },
                                "policy: redis failing; counting in memory (fail_open) or refusing (fail_closed) until it answers"
                            );
                        }
                        if self.settings.fail_open {
                            Ok(self.check_memory(req))
                        } else {
                            Err(e)
                        }
                    }
                }
            }
            _ => Ok(self.check_memory(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_local_calendar() {
        // 2026-11-23 is a Monday. 00:00 UTC.
        let monday = 1_795_392_000_000i64;
        let p = periods(monday, 0);
        let sunday_late = periods(monday - 1, 0);
        assert_eq!(p.day, sunday_late.day + 1);
        assert_eq!(p.week, sunday_late.week + 1);
        assert_eq!(p.day_left_ms, DAY_MS);
        assert_eq!(p.week_left_ms, 7 * DAY_MS);
        // Tuesday → same week.
        assert_eq!(periods(monday + DAY_MS, 0).week, p.week);
        // In UTC+3 the Monday starts at 21:00 UTC on Sunday.
        let east = periods(monday - 3 * 3_600_000, 3 * 3600);
        assert_eq!(east.week, p.week);
        assert_eq!(
            periods(monday - 3 * 3_600_000 - 1, 3 * 3600).week,
            p.week - 1
        );
    }
}
