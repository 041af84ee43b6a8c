//! Link health, shared by all shards (control plane).
//!
//! The SMPP I/O layer reports what happens to each bind; the table folds that into one
//! Connected/Disconnected state per link and returns a `Transition` only when that state
//! changes, so callers log and count changes, not every report.
//!
//! A bind counts as *up* once it is bound **and** has answered an enquire_link since it bound.
//! So a recovered link carries traffic again only after it rebinds and passes a health check
//! (the I/O layer should send one enquire_link right after each bind to keep that gap short).
//! A link is Connected while at least one of its binds is up.
//!
//! Writers take a per-link mutex (reports are rare: binds, unbinds, one enquire_link per bind
//! per interval); the hot path reads one atomic per link.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::config::{LinkId, PoolId};

use super::Registry;

/// A link's state as the rest of the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    Disconnected,
}

/// One bind's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindHealth {
    /// Not bound (connecting, backing off, refused, or disabled).
    Down,
    /// Bound, waiting for its first enquire_link answer (or the last one failed).
    Bound,
    /// Bound and answering enquire_link: carries traffic.
    Up,
}

/// A Connected/Disconnected change of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub link: LinkId,
    pub state: LinkState,
    pub at: Instant,
}

/// A copy of one link's health for status pages (`GET /api/v1/smpp/links`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHealthSnapshot {
    pub link: LinkId,
    pub state: LinkState,
    /// When the link last changed state (the table's creation time if it never did).
    pub since: Instant,
    pub binds: Vec<BindHealth>,
    /// Connected/Disconnected changes since start.
    pub transitions: u64,
}

/// Health of every link in a `Registry`.
#[derive(Debug)]
pub struct HealthTable {
    registry: Arc<Registry>,
    links: Box<[LinkHealth]>,
    /// Bumped on every transition: lets a shard notice cheaply that something changed.
    generation: AtomicU64,
}

#[derive(Debug)]
struct LinkHealth {
    id: LinkId,
    enabled: bool,
    esme_rate: u32,
    esme_rate_burst: u32,
    up: AtomicBool,
    detail: Mutex<LinkDetail>,
}

#[derive(Debug)]
struct LinkDetail {
    binds: Vec<BindHealth>,
    since: Instant,
    transitions: u64,
}

impl HealthTable {
    /// Every link starts Disconnected with all binds down.
    pub fn new(registry: Arc<Registry>, now: Instant) -> Self {
        let links = registry
            .links()
            .map(|l| LinkHealth {
                id: l.id,
                enabled: l.enabled,
                esme_rate: l.esme_rate.get(),
                esme_rate_burst: l.esme_rate_burst.get(),
                up: AtomicBool::new(false),
                detail: Mutex::new(LinkDetail {
                    binds: vec![BindHealth::Down; l.binds.get() as usize],
                    since: now,
                    transitions: 0,
                }),
            })
            .collect();
        HealthTable {
            registry,
            links,
            generation: AtomicU64::new(0),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn entry(&self, link: LinkId) -> Option<&LinkHealth> {
        // Links are built in id order from a BTreeMap, so the slice is sorted by id.
        self.links
            .binary_search_by_key(&link, |l| l.id)
            .ok()
            .map(|i| &self.links[i])
    }

    /// Hot path: is this link carrying traffic? Unknown links are not.
    #[inline]
    pub fn is_up(&self, link: LinkId) -> bool {
        self.entry(link)
            .is_some_and(|l| l.up.load(Ordering::Acquire))
    }

    pub fn state(&self, link: LinkId) -> Option<LinkState> {
        self.entry(link).map(|l| {
            if l.up.load(Ordering::Acquire) {
                LinkState::Connected
            } else {
                LinkState::Disconnected
            }
        })
    }

    /// Counts transitions of all links; changes whenever any link changes state.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A bind connected and bound (`up = true`), or was lost/unbound/refused (`up = false`).
    /// For `tx+rx` links report the transmitter session: it is the one that carries messages.
    pub fn report_bind_state(
        &self,
        link: LinkId,
        bind_index: u32,
        up: bool,
        now: Instant,
    ) -> Option<Transition> {
        let next = if up {
            BindHealth::Bound
        } else {
            BindHealth::Down
        };
        self.update(link, bind_index, now, |current| match (current, up) {
            // A repeated "bound" report must not demote a bind that already passed its check.
            (BindHealth::Up, true) => BindHealth::Up,
            _ => next,
        })
    }

    /// A bind answered an enquire_link: a bound bind becomes up. Ignored for a bind that is not
    /// bound (a late answer after a disconnect).
    pub fn report_enquire_ok(
        &self,
        link: LinkId,
        bind_index: u32,
        now: Instant,
    ) -> Option<Transition> {
        self.update(link, bind_index, now, |current| match current {
            BindHealth::Down => BindHealth::Down,
            BindHealth::Bound | BindHealth::Up => BindHealth::Up,
        })
    }

    /// An enquire_link went unanswered (or got an error) while the session stayed bound: the
    /// bind stops carrying traffic until the next enquire_link succeeds.
    pub fn report_enquire_failed(
        &self,
        link: LinkId,
        bind_index: u32,
        now: Instant,
    ) -> Option<Transition> {
        self.update(link, bind_index, now, |current| match current {
            BindHealth::Down => BindHealth::Down,
            BindHealth::Bound | BindHealth::Up => BindHealth::Bound,
        })
    }

    fn update(
        &self,
        link: LinkId,
        bind_index: u32,
        now: Instant,
        step: impl FnOnce(BindHealth) -> BindHealth,
    ) -> Option<Transition> {
        let entry = self.entry(link)?;
        if !entry.enabled {
            return None;
        }
        // A poisoned lock only means another reporter panicked mid-update; the data is a plain
        // vector of states and still meaningful.
        let mut detail = entry.detail.lock().unwrap_or_else(|p| p.into_inner());
        let bind = detail.binds.get_mut(bind_index as usize)?;
        *bind = step(*bind);
        let up = detail.binds.contains(&BindHealth::Up);
        if up == entry.up.load(Ordering::Acquire) {
            return None;
        }
        detail.since = now;
        detail.transitions += 1;
        entry.up.store(up, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Some(Transition {
            link,
            state: if up {
                LinkState::Connected
            } else {
                LinkState::Disconnected
            },
            at: now,
        })
    }

    pub fn snapshot(&self, link: LinkId) -> Option<LinkHealthSnapshot> {
        let entry = self.entry(link)?;
        let detail = entry.detail.lock().unwrap_or_else(|p| p.into_inner());
        Some(LinkHealthSnapshot {
            link,
            state: if entry.up.load(Ordering::Acquire) {
                LinkState::Connected
            } else {
                LinkState::Disconnected
            },
            since: detail.since,
            binds: detail.binds.clone(),
            transitions: detail.transitions,
        })
    }

    /// `(rate, burst)` in message parts per second for the limiter: the configured values while
    /// the link is up, `(0, 0)` while it is down. `None` for an unknown link.
    pub fn effective_rate(&self, link: LinkId) -> Option<(u32, u32)> {
        let entry = self.entry(link)?;
        Some(if entry.up.load(Ordering::Acquire) {
            (entry.esme_rate, entry.esme_rate_burst)
        } else {
            (0, 0)
        })
    }

    /// A pool's capacity in parts per second: the sum of its healthy members' `esme_rate`.
    /// `None` for an unknown pool.
    pub fn pool_capacity(&self, pool: PoolId) -> Option<u64> {
        let cfg = self.registry.pool(pool)?;
        Some(
            cfg.members
                .iter()
                .filter_map(|m| self.effective_rate(m.link))
                .map(|(rate, _)| u64::from(rate))
                .sum(),
        )
    }

    /// Like `pool_capacity` for the burst: the sum of healthy members' `esme_rate_burst`.
    pub fn pool_burst(&self, pool: PoolId) -> Option<u64> {
        let cfg = self.registry.pool(pool)?;
        Some(
            cfg.members
                .iter()
                .filter_map(|m| self.effective_rate(m.link))
                .map(|(_, burst)| u64::from(burst))
                .sum(),
        )
    }
}
