//! Routing: which link carries a message.
//!
//! * `Registry` — links and pools from `smpp_rules.toml` (immutable, `Arc`-shared), `resolve`
//!   of an API `esme` value, and where each link's binds live (`binds_for_shard`,
//!   `shards_with_link`).
//! * `HealthTable` — per-link Connected/Disconnected, fed by the SMPP I/O layer
//!   (`report_bind_state`, `report_enquire_ok`), shared across shards; `effective_rate` and
//!   `pool_capacity` for the limiter.
//! * `ShardRouter` — one per shard, not shared: that shard's SWRR state of every pool.
//!
//! How the gateway is meant to use it, per message on shard `s`:
//! `router.route(esme, |l| health.is_up(l))` picks among globally healthy links, so every
//! shard's SWRR sequence has the exact configured shares; then the message goes to a local bind
//! of that link if shard `s` has one (`registry.binds_for_shard(link, s)`), else it is handed
//! to one of `registry.shards_with_link(link)` over the bounded cross-shard channel.

mod health;
mod registry;
mod swrr;

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::config::{LinkId, PoolId};

pub use health::{BindHealth, HealthTable, LinkHealthSnapshot, LinkState, Transition};
pub use registry::{Registry, binds_for_shard};
pub use swrr::Swrr;

/// What an `esme` value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Link(LinkId),
    Pool(PoolId),
}

/// Why no link was chosen. All but `UnknownEsme` are "no route right now" (HTTP 503 `no_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No link or pool has this id (HTTP 404/422 at the edge).
    #[error("no link or pool with id {0}")]
    UnknownEsme(u64),
    #[error("link {0} is down")]
    LinkDown(LinkId),
    #[error("link {0} is disabled")]
    LinkDisabled(LinkId),
    /// The link binds as receiver only: it brings receipts/MO but cannot send.
    #[error("link {0} binds as receiver only and cannot send")]
    ReceiveOnly(LinkId),
    #[error("pool {0} has no healthy member")]
    NoHealthyMember(PoolId),
}

impl RouteError {
    /// Whether the same request may succeed later without change (the link may come back).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RouteError::LinkDown(_) | RouteError::NoHealthyMember(_)
        )
    }
}

/// One shard's routing state. Deliberately `!Send + !Sync`: it lives on its shard's thread
/// and needs no locks.
#[derive(Debug)]
pub struct ShardRouter {
    registry: Arc<Registry>,
    /// Sorted by pool id; a pool's SWRR holds only its enabled members.
    pools: Vec<(PoolId, Swrr)>,
    _not_shared: PhantomData<Cell<()>>,
}

impl ShardRouter {
    pub fn new(registry: Arc<Registry>) -> Self {
        let pools = registry
            .pools()
            .map(|p| {
                // Disabled links never carry traffic; leaving them out of the SWRR keeps the
                // shares of the others exact without asking the caller about them.
                let members: Vec<_> = p
                    .members
                    .iter()
                    .copied()
                    .filter(|m| registry.link(m.link).is_some_and(|l| l.enabled))
                    .collect();
                (p.id, Swrr::new(&members))
            })
            .collect();
        ShardRouter {
            registry,
            pools,
            _not_shared: PhantomData,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn resolve(&self, esme: u64) -> Result<Target, RouteError> {
        self.registry.resolve(esme)
    }

    /// The link for `target`. `is_available(link)` says whether a link may take a message now
    /// (typically `HealthTable::is_up`); it is called once per enabled pool member.
    pub fn pick(
        &mut self,
        target: Target,
        is_available: impl Fn(LinkId) -> bool,
    ) -> Result<LinkId, RouteError> {
        match target {
            Target::Link(link) => {
                let cfg = self
                    .registry
                    .link(link)
                    .ok_or(RouteError::UnknownEsme(u64::from(link.0)))?;
                if !cfg.enabled {
                    Err(RouteError::LinkDisabled(link))
                } else if !cfg.can_submit() {
                    Err(RouteError::ReceiveOnly(link))
                } else if is_available(link) {
                    Ok(link)
                } else {
                    Err(RouteError::LinkDown(link))
                }
            }
            Target::Pool(pool) => {
                let i = self
                    .pools
                    .binary_search_by_key(&pool, |(id, _)| *id)
                    .map_err(|_| RouteError::UnknownEsme(u64::from(pool.0)))?;
                self.pools[i]
                    .1
                    .pick(is_available)
                    .ok_or(RouteError::NoHealthyMember(pool))
            }
        }
    }

    /// `resolve` then `pick`.
    pub fn route(
        &mut self,
        esme: u64,
        is_available: impl Fn(LinkId) -> bool,
    ) -> Result<LinkId, RouteError> {
        let target = self.resolve(esme)?;
        self.pick(target, is_available)
    }
}

#[cfg(test)]
mod tests;
