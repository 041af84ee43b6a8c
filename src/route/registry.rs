//! The links/pools registry: an immutable snapshot of `smpp_rules.toml`, shared by all shards
//! behind an `Arc`, plus where each link's binds live.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use crate::config::{LinkConfig, LinkId, PoolConfig, PoolId, RulesConfig};

use super::{RouteError, Target};

/// Links and pools by id, and the bind→shard assignment for a fixed shard count.
#[derive(Debug, Clone)]
pub struct Registry {
    links: BTreeMap<LinkId, LinkConfig>,
    pools: BTreeMap<PoolId, PoolConfig>,
    /// Position of each link in id order: offsets bind placement so links with one bind each do
    /// not all land on shard 0.
    ordinal: BTreeMap<LinkId, usize>,
    shard_count: NonZeroUsize,
}

impl Registry {
    pub fn new(rules: &RulesConfig, shard_count: NonZeroUsize) -> Self {
        let ordinal = rules
            .links
            .keys()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        Registry {
            links: rules.links.clone(),
            pools: rules.pools.clone(),
            ordinal,
            shard_count,
        }
    }

    /// What an API `esme` value names. Link and pool ids never collide (validated).
    pub fn resolve(&self, esme: u64) -> Result<Target, RouteError> {
        let id = u32::try_from(esme).map_err(|_| RouteError::UnknownEsme(esme))?;
        if self.links.contains_key(&LinkId(id)) {
            Ok(Target::Link(LinkId(id)))
        } else if self.pools.contains_key(&PoolId(id)) {
            Ok(Target::Pool(PoolId(id)))
        } else {
            Err(RouteError::UnknownEsme(esme))
        }
    }

    pub fn link(&self, id: LinkId) -> Option<&LinkConfig> {
        self.links.get(&id)
    }

    pub fn pool(&self, id: PoolId) -> Option<&PoolConfig> {
        self.pools.get(&id)
    }

    pub fn links(&self) -> impl Iterator<Item = &LinkConfig> {
        self.links.values()
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolConfig> {
        self.pools.values()
    }

    pub fn shard_count(&self) -> NonZeroUsize {
        self.shard_count
    }

    /// The bind indexes of `link` that shard `shard_index` runs (empty for a disabled or
    /// unknown link, or when the link has fewer binds than there are shards).
    pub fn binds_for_shard(&self, link: LinkId, shard_index: usize) -> Vec<u32> {
        match (self.links.get(&link), self.ordinal.get(&link)) {
            (Some(cfg), Some(&ordinal)) if cfg.enabled => binds_for_shard(
                cfg.binds.get(),
                ordinal,
                shard_index,
                self.shard_count.get(),
            ),
            _ => Vec::new(),
        }
    }

    /// The shard that runs bind `bind_index` of `link`.
    pub fn shard_of_bind(&self, link: LinkId, bind_index: u32) -> Option<usize> {
        let ordinal = *self.ordinal.get(&link)?;
        Some(shard_of_bind(ordinal, bind_index, self.shard_count.get()))
    }

    /// Shards that hold at least one bind of `link`, ascending: where to hand a message over
    /// when the local shard has none.
    pub fn shards_with_link(&self, link: LinkId) -> impl Iterator<Item = usize> + '_ {
        let shards = self.shard_count.get();
        let (binds, ordinal) = match (self.links.get(&link), self.ordinal.get(&link)) {
            (Some(cfg), Some(&o)) if cfg.enabled => (cfg.binds.get() as usize, o),
            _ => (0, 0),
        };
        // Binds go round-robin from the link's offset, so `min(binds, shards)` consecutive
        // shards (mod shards) hold one.
        let used = binds.min(shards);
        (0..shards).filter(move |s| (s + shards - ordinal % shards) % shards < used)
    }
}

/// Which bind indexes of a link with `binds` binds run on `shard_index` of `shard_count`.
/// Bind b goes to shard `(offset + b) % shard_count`: round-robin, starting at a per-link offset.
pub fn binds_for_shard(
    binds: u32,
    offset: usize,
    shard_index: usize,
    shard_count: usize,
) -> Vec<u32> {
    if shard_count == 0 || shard_index >= shard_count {
        return Vec::new();
    }
    (0..binds)
        .filter(|&b| shard_of_bind(offset, b, shard_count) == shard_index)
        .collect()
}

fn shard_of_bind(offset: usize, bind_index: u32, shard_count: usize) -> usize {
    (offset % shard_count + bind_index as usize % shard_count) % shard_count
}
