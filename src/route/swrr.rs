//! Smooth weighted round-robin, as nginx does it (`ngx_http_upstream_get_peer`).
//!
//! Each pick: every eligible member's `current` grows by its weight; the member with the
//! largest `current` (first one on ties) is picked and its `current` drops by the sum of the
//! eligible weights. Starting from all-zero `current`, the sequence repeats every
//! `W = sum(weights)` picks and each member appears exactly `weight` times per period, spread
//! out rather than in runs: weights a=5, b=1, c=1 give `a a b a c a a`.
//!
//! Ineligible (unhealthy) members are skipped: they neither gain nor lose. When the eligible set
//! changes (a member goes down or comes back), every `current` is reset to zero. Why: the
//! exact-share property holds for a run that starts from zero; carrying `current` values from
//! before an outage would skew the first period after it (a returning member could get a burst
//! or a drought; in a simulation over random weight sets, about a quarter broke the
//! exact-window property after one member dropped). With the reset, a member's share moves to
//! the others at once when it goes down, and when it returns it gets exactly its weight in every
//! window of W picks from then on, interleaved with the others: it rejoins smoothly, without a
//! catch-up burst. The property test `swrr_exact_between_health_changes` fails without it.
//!
//! nginx also lowers `effective_weight` after failures and raises it back one step per pick
//! (slow start). We do not: link health here is binary and changes only on transitions that
//! were confirmed by a bind and an enquire_link, so there is nothing gradual to track.

use crate::config::{LinkId, MAX_POOL_MEMBERS, PoolMember};

/// One shard's round-robin state for one pool. Plain data: each shard owns its own.
#[derive(Debug, Clone)]
pub struct Swrr {
    members: Vec<Member>,
    /// Bit i set = member i was eligible at the previous pick.
    last_eligible: u64,
}

#[derive(Debug, Clone)]
struct Member {
    link: LinkId,
    weight: i64,
    current: i64,
}

impl Swrr {
    /// At most `MAX_POOL_MEMBERS` members (validated config guarantees it); extra members are
    /// ignored rather than panicking.
    pub fn new(members: &[PoolMember]) -> Self {
        debug_assert!(members.len() <= MAX_POOL_MEMBERS);
        let members = members
            .iter()
            .take(MAX_POOL_MEMBERS)
            .map(|m| Member {
                link: m.link,
                weight: i64::from(m.weight.get()),
                current: 0,
            })
            .collect();
        Swrr {
            members,
            last_eligible: 0,
        }
    }

    /// The member links in configuration order.
    pub fn links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.members.iter().map(|m| m.link)
    }

    /// Picks the next member among those for which `eligible` is true; `None` if there are none.
    /// `eligible` is called exactly once per member.
    pub fn pick(&mut self, mut eligible: impl FnMut(LinkId) -> bool) -> Option<LinkId> {
        let mut mask = 0u64;
        for (i, m) in self.members.iter().enumerate() {
            if eligible(m.link) {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return None;
        }
        if mask != self.last_eligible {
            for m in &mut self.members {
                m.current = 0;
            }
            self.last_eligible = mask;
        }
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, m) in self.members.iter_mut().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            // Bounded: |current| stays below the total weight (≤ 64 × 10 000), far from overflow.
            m.current += m.weight;
            total += m.weight;
            // Strict `>`: the first member wins ties, as in nginx, which makes runs deterministic.
            if best.is_none_or(|(_, best_current)| m.current > best_current) {
                best = Some((i, m.current));
            }
        }
        let (b, _) = best?;
        self.members[b].current -= total;
        Some(self.members[b].link)
    }
}
