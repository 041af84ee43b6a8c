//! Filling the slots from state that lives elsewhere: each shard's binds (sampled by its
//! health loop) and the process-wide parts read at scrape time.

use std::collections::HashMap;

use super::{Gauges, PolicyRemoteHealth, PolicyStoreHealth, ShardMetrics};
use crate::shard::pipeline::{LocalBind, Shared};
use crate::smpp::io::BindState;
use crate::smpp::session::SessionStats;

/// Per-shard memory of the last session counters seen, so that link counters stay monotonic
/// across reconnects (a new session starts its counters at zero).
#[derive(Debug, Default)]
pub struct LinkSampler {
    /// `(link, bind index)` → (connect attempts, last session stats).
    last: HashMap<(u32, u32), (u64, SessionStats)>,
}

/// `now - before` for a counter of the current session; a smaller value means a new session.
fn delta(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

impl LinkSampler {
    /// Writes this shard's per-link slots from its binds. Called by the shard's health loop
    /// (the only writer of these slots); reads only local state, no I/O.
    pub fn sample<'a>(
        &mut self,
        slots: &ShardMetrics,
        link_index: impl Fn(u32) -> Option<usize>,
        binds: impl Iterator<Item = (u32, &'a [LocalBind])>,
    ) {
        for (link, list) in binds {
            let Some(slot) = link_index(link).and_then(|i| slots.links.get(i)) else {
                continue;
            };
            let (mut total, mut up, mut outstanding, mut queued, mut window) = (0, 0, 0, 0, 0);
            for b in list.iter().filter(|b| b.can_submit) {
                total += 1;
                if matches!(b.handle.state(), BindState::Bound { .. }) {
                    up += 1;
                    window += b.handle.config().window as u64;
                }
                let (o, q) = b.handle.load();
                outstanding += o as u64;
                queued += q as u64;
            }
            // Session counters and reconnects of every session (receivers carry delivers).
            for b in list {
                let entry = self
                    .last
                    .entry((link, b.index + u32::from(!b.can_submit) * (1 << 31)));
                let (prev_connects, prev) = entry.or_default();
                let connects = b.handle.connect_attempts();
                // The first connection of a bind is not a reconnect.
                let before = (*prev_connects).max(1);
                if connects > before {
                    slot.reconnects.add(connects - before);
                }
                *prev_connects = connects.max(*prev_connects);
                if let Some(now) = b.handle.session_stats() {
                    slot.throttled.add(delta(now.throttled, prev.throttled));
                    slot.submit_timeouts
                        .add(delta(now.timed_out, prev.timed_out));
                    slot.unmatched_responses
                        .add(delta(now.unmatched_responses, prev.unmatched_responses));
                    slot.delivers.add(delta(now.delivers, prev.delivers));
                    *prev = now;
                } else {
                    // Disconnected: the next session starts from zero.
                    *prev = SessionStats::default();
                }
            }
            slot.binds.set(total);
            slot.binds_up.set(up);
            slot.outstanding.set(outstanding);
            slot.queued.set(queued);
            slot.window.set(window);
        }
    }
}

/// The `/metrics` page: every shard's slots summed (by the collector, at encode time), plus
/// the process-wide values read here.
pub fn scrape(shared: &Shared) -> String {
    super::render(&shared.metrics, &process_gauges(shared))
}

/// Reads the process-wide values: dependency health, backlogs, the routing health table.
/// Atomics and probes only: no I/O, no lock held across anything slow.
pub fn process_gauges(shared: &Shared) -> Gauges {
    use std::sync::atomic::Ordering::Relaxed;
    let cdr = shared.cdr.stats();
    let mut g = Gauges {
        cdr_accepted: cdr.records_accepted.load(Relaxed),
        cdr_refused: cdr.records_rejected.load(Relaxed),
        cdr_batches_written: cdr.batches_written.load(Relaxed),
        cdr_upload_failures: cdr.upload_failures.load(Relaxed),
        cdr_journal_failures: cdr.journal_failures.load(Relaxed),
        cdr_journal_recovered: cdr.journal_recovered_records.load(Relaxed),
        cdr_backlog: shared.metrics.cdr_probe.get().map(|p| p()),
        link_health: shared
            .registry
            .links()
            .filter_map(|l| {
                let h = shared.health.snapshot(l.id)?;
                Some((
                    l.id.0,
                    h.state == crate::route::LinkState::Connected,
                    h.transitions,
                ))
            })
            .collect(),
        ..Gauges::default()
    };
    if let Some(h) = shared.limits.l2_health() {
        g.redis_up = Some(h.is_up());
        g.redis_round_trips = h.round_trips.load(Relaxed);
        g.redis_transitions = h.transitions.load(Relaxed);
    }
    if let Some(probe) = shared.metrics.state_probe.get() {
        let (queue, batches, ops) = probe();
        g.state_queue_len = Some(queue);
        g.state_batches = batches;
        g.state_batched_ops = ops;
    }
    if let Some(probe) = shared.metrics.journal_probe.get() {
        g.state_journal = probe();
    }
    if shared.config.policy.remote.is_some() {
        let r = crate::policy::remote::stats();
        g.policy_remote = Some(PolicyRemoteHealth {
            shards_down: r.shards_down.load(Relaxed),
            errors: r.errors.load(Relaxed),
            fail_open_passes: r.fail_open_passes.load(Relaxed),
            fail_closed_refusals: r.fail_closed_refusals.load(Relaxed),
        });
    } else if let Some(engine) = &shared.policy
        && matches!(
            engine.backend,
            crate::policy::engine::CounterBackend::Redis(_)
        )
    {
        g.policy_store = Some(PolicyStoreHealth {
            up: !engine.metrics.store_down.load(Relaxed),
            errors: engine.metrics.store_errors.load(Relaxed),
        });
    }
    g
}

#[cfg(test)]
mod tests {
    use super::delta;

    #[test]
    fn session_counter_deltas_survive_reconnects() {
        assert_eq!(delta(5, 3), 2);
        assert_eq!(delta(2, 7), 2); // new session counted from zero
        assert_eq!(delta(0, 0), 0);
    }
}
