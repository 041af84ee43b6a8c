//! Tests for routing: SWRR exactness (fixed sequences and properties), failover and rejoin,
//! health transitions, capacity, bind placement, and the shard router's errors.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::config::{Config, PoolMember, Source, from_sources};

fn members(weights: &[u32]) -> Vec<PoolMember> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| PoolMember {
            link: LinkId(i as u32 + 1),
            weight: NonZeroU32::new(*w).unwrap(),
        })
        .collect()
}

fn names(picks: &[LinkId]) -> String {
    picks
        .iter()
        .map(|l| char::from(b'a' + (l.0 - 1) as u8).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts that in every window of `w` consecutive picks each link appears exactly
/// `weights[link]` times.
fn assert_exact_windows(picks: &[LinkId], weights: &HashMap<LinkId, u32>) {
    let w: u32 = weights.values().sum();
    let w = w as usize;
    assert!(picks.len() >= w, "need at least one window");
    for start in 0..=picks.len() - w {
        let mut counts: HashMap<LinkId, u32> = HashMap::new();
        for l in &picks[start..start + w] {
            *counts.entry(*l).or_default() += 1;
        }
        for (link, weight) in weights {
            assert_eq!(
                counts.get(link).copied().unwrap_or(0),
                *weight,
                "window at {start}: {counts:?}"
            );
        }
        assert!(
            counts.keys().all(|l| weights.contains_key(l)),
            "ineligible link picked: {counts:?}"
        );
    }
}

#[test]
fn swrr_matches_nginx_sequence() {
    let mut swrr = Swrr::new(&members(&[5, 1, 1]));
    let picks: Vec<_> = (0..14).map(|_| swrr.pick(|_| true).unwrap()).collect();
    assert_eq!(names(&picks), "a a b a c a a a a b a c a a");
}

#[test]
fn swrr_equal_weights_alternate() {
    let mut swrr = Swrr::new(&members(&[1, 1, 1]));
    let picks: Vec<_> = (0..6).map(|_| swrr.pick(|_| true).unwrap()).collect();
    assert_eq!(names(&picks), "a b c a b c");
}

#[test]
fn swrr_down_member_share_goes_to_others_and_rejoins_smoothly() {
    let mut swrr = Swrr::new(&members(&[3, 2, 1]));
    let (a, b, c) = (LinkId(1), LinkId(2), LinkId(3));
    for _ in 0..4 {
        swrr.pick(|_| true);
    }
    // b goes down mid-period: from now on a:c = 3:1, b never picked.
    let down: Vec<_> = (0..8).map(|_| swrr.pick(|l| l != b).unwrap()).collect();
    assert_exact_windows(&down, &HashMap::from([(a, 3), (c, 1)]));
    // b returns: exact 3:2:1 in every window from the first pick on, so no catch-up burst.
    let back: Vec<_> = (0..18).map(|_| swrr.pick(|_| true).unwrap()).collect();
    assert_exact_windows(&back, &HashMap::from([(a, 3), (b, 2), (c, 1)]));
    assert_eq!(names(&back[..6]), "a b a c b a");
}

#[test]
fn swrr_no_eligible_member() {
    let mut swrr = Swrr::new(&members(&[1, 2]));
    assert_eq!(swrr.pick(|_| false), None);
    assert!(swrr.pick(|_| true).is_some());
}

proptest! {
    #[test]
    fn swrr_every_window_is_exact(weights in proptest::collection::vec(1u32..=20, 1..=8)) {
        let mut swrr = Swrr::new(&members(&weights));
        let w: u32 = weights.iter().sum();
        let picks: Vec<_> = (0..3 * w).map(|_| swrr.pick(|_| true).unwrap()).collect();
        let expected = members(&weights).iter().map(|m| (m.link, m.weight.get())).collect();
        assert_exact_windows(&picks, &expected);
    }

    /// Health flips at random points, also mid-period; after each change every window of the
    /// eligible members' total weight is exact, and down members are never picked.
    #[test]
    fn swrr_exact_between_health_changes(
        weights in proptest::collection::vec(1u32..=10, 2..=6),
        phases in proptest::collection::vec((any::<u64>(), 1usize..=3, 0usize..=40), 1..=6),
    ) {
        let all = members(&weights);
        let mut swrr = Swrr::new(&all);
        for (mask_seed, periods, extra) in phases {
            let up: Vec<bool> = (0..all.len()).map(|i| mask_seed & (1 << i) != 0).collect();
            let eligible: HashMap<LinkId, u32> =
                all.iter().zip(&up).filter(|(_, u)| **u).map(|(m, _)| (m.link, m.weight.get())).collect();
            let is_up = |l: LinkId| eligible.contains_key(&l);
            if eligible.is_empty() {
                prop_assert_eq!(swrr.pick(is_up), None);
                continue;
            }
            let w: u32 = eligible.values().sum();
            // `extra` leaves the phase mid-period, so the next phase starts from a state that
            // is not all-zero: that is where carried-over weights would skew the shares.
            let n = w as usize * periods + extra;
            let picks: Vec<_> = (0..n).map(|_| swrr.pick(is_up).unwrap()).collect();
            assert_exact_windows(&picks, &eligible);
        }
    }
}

const RULES: &str = r#"
[links.100]
host = "127.0.0.1"
system_id = "a"
password = "p"
esme_rate = 100
esme_rate_burst = 150
binds = 3

[links.101]
host = "127.0.0.1"
system_id = "b"
password = "p"
esme_rate = 50

[links.102]
host = "127.0.0.1"
system_id = "c"
password = "p"
esme_rate = 25
enabled = false

[links.103]
host = "127.0.0.1"
system_id = "d"
password = "p"
esme_rate = 10
bind_mode = "receiver"

[pools.500]
members = [{ link = 100, weight = 2 }, { link = 101, weight = 1 }, { link = 102, weight = 5 }]
"#;

fn config() -> Config {
    from_sources(
        Source {
            path: Path::new("smsgw.toml"),
            text: "",
        },
        Source {
            path: Path::new("smpp_rules.toml"),
            text: RULES,
        },
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn registry(shards: usize) -> Arc<Registry> {
    Arc::new(Registry::new(
        &config().rules,
        NonZeroUsize::new(shards).unwrap(),
    ))
}

#[test]
fn resolve_links_and_pools() {
    let r = registry(2);
    assert_eq!(r.resolve(100), Ok(Target::Link(LinkId(100))));
    assert_eq!(r.resolve(500), Ok(Target::Pool(PoolId(500))));
    assert_eq!(r.resolve(0), Err(RouteError::UnknownEsme(0)));
    assert_eq!(r.resolve(u64::MAX), Err(RouteError::UnknownEsme(u64::MAX)));
    assert_eq!(
        r.resolve(u64::from(u32::MAX) + 100),
        Err(RouteError::UnknownEsme(u64::from(u32::MAX) + 100))
    );
}

#[test]
fn shard_router_errors() {
    let mut router = ShardRouter::new(registry(2));
    assert_eq!(router.route(7, |_| true), Err(RouteError::UnknownEsme(7)));
    assert_eq!(router.route(100, |_| true), Ok(LinkId(100)));
    assert_eq!(
        router.route(100, |_| false),
        Err(RouteError::LinkDown(LinkId(100)))
    );
    assert_eq!(
        router.route(102, |_| true),
        Err(RouteError::LinkDisabled(LinkId(102)))
    );
    assert_eq!(
        router.route(103, |_| true),
        Err(RouteError::ReceiveOnly(LinkId(103)))
    );
    assert_eq!(
        router.route(500, |_| false),
        Err(RouteError::NoHealthyMember(PoolId(500)))
    );
    assert!(RouteError::NoHealthyMember(PoolId(500)).is_retryable());
    assert!(!RouteError::UnknownEsme(1).is_retryable());
}

#[test]
fn shard_router_skips_disabled_members_and_keeps_weights() {
    let mut router = ShardRouter::new(registry(1));
    // 102 is disabled: it must not be asked about nor picked, though `is_available` says yes.
    let picks: Vec<_> = (0..30)
        .map(|_| router.route(500, |_| true).unwrap())
        .collect();
    assert_exact_windows(&picks, &HashMap::from([(LinkId(100), 2), (LinkId(101), 1)]));
}

#[test]
fn pool_fails_over_through_health_table() {
    let reg = registry(1);
    let health = HealthTable::new(reg.clone(), Instant::now());
    let mut router = ShardRouter::new(reg);
    let now = Instant::now();
    for (link, bind) in [(100, 0), (101, 0)] {
        health.report_bind_state(LinkId(link), bind, true, now);
        health.report_enquire_ok(LinkId(link), bind, now);
    }
    let picks: Vec<_> = (0..9)
        .map(|_| router.route(500, |l| health.is_up(l)).unwrap())
        .collect();
    assert_exact_windows(&picks, &HashMap::from([(LinkId(100), 2), (LinkId(101), 1)]));
    health.report_bind_state(LinkId(101), 0, false, now);
    let picks: Vec<_> = (0..5)
        .map(|_| router.route(500, |l| health.is_up(l)).unwrap())
        .collect();
    assert!(picks.iter().all(|l| *l == LinkId(100)));
    health.report_bind_state(LinkId(100), 0, false, now);
    assert_eq!(
        router.route(500, |l| health.is_up(l)),
        Err(RouteError::NoHealthyMember(PoolId(500)))
    );
}

#[test]
fn health_transitions_only_on_change() {
    let reg = registry(2);
    let t0 = Instant::now();
    let health = HealthTable::new(reg, t0);
    let link = LinkId(100);
    let t = |s| t0 + Duration::from_secs(s);
    assert_eq!(health.state(link), Some(LinkState::Disconnected));

    // Bound is not enough: the link waits for an enquire_link answer.
    assert_eq!(health.report_bind_state(link, 0, true, t(1)), None);
    assert!(!health.is_up(link));
    let up = health.report_enquire_ok(link, 0, t(2));
    assert_eq!(
        up,
        Some(Transition {
            link,
            state: LinkState::Connected,
            at: t(2)
        })
    );
    assert!(health.is_up(link));
    let generation = health.generation();

    // More good news about a connected link is not a transition.
    assert_eq!(health.report_enquire_ok(link, 0, t(3)), None);
    assert_eq!(health.report_bind_state(link, 0, true, t(3)), None);
    assert_eq!(health.report_bind_state(link, 1, true, t(3)), None);
    assert_eq!(health.report_enquire_ok(link, 1, t(3)), None);
    // Losing one of two binds is not a transition either.
    assert_eq!(health.report_bind_state(link, 0, false, t(4)), None);
    assert_eq!(health.generation(), generation);
    assert_eq!(
        health.snapshot(link).unwrap().binds,
        vec![BindHealth::Down, BindHealth::Up, BindHealth::Down]
    );

    // A failed health check on the last good bind takes the link down.
    let down = health.report_enquire_failed(link, 1, t(5));
    assert_eq!(
        down,
        Some(Transition {
            link,
            state: LinkState::Disconnected,
            at: t(5)
        })
    );
    assert_eq!(health.effective_rate(link), Some((0, 0)));
    // A late enquire answer for a bind that is down does not resurrect it.
    assert_eq!(health.report_enquire_ok(link, 0, t(6)), None);
    // Rebind alone does not bring it back; rebind + enquire does.
    assert_eq!(health.report_bind_state(link, 0, true, t(7)), None);
    assert!(!health.is_up(link));
    assert!(health.report_enquire_ok(link, 0, t(8)).is_some());
    assert_eq!(health.effective_rate(link), Some((100, 150)));

    let snap = health.snapshot(link).unwrap();
    assert_eq!(
        (snap.state, snap.since, snap.transitions),
        (LinkState::Connected, t(8), 3)
    );
    assert_eq!(health.generation(), generation + 2);
}

#[test]
fn health_ignores_unknown_disabled_and_out_of_range() {
    let health = HealthTable::new(registry(1), Instant::now());
    let now = Instant::now();
    assert_eq!(health.report_bind_state(LinkId(9), 0, true, now), None);
    assert_eq!(health.report_bind_state(LinkId(100), 3, true, now), None); // binds = 3: 0..=2
    assert_eq!(health.report_bind_state(LinkId(102), 0, true, now), None);
    assert_eq!(health.report_enquire_ok(LinkId(102), 0, now), None);
    assert!(!health.is_up(LinkId(102)));
    assert!(!health.is_up(LinkId(9)));
    assert_eq!(health.effective_rate(LinkId(9)), None);
}

#[test]
fn pool_capacity_is_sum_of_healthy_members() {
    let health = HealthTable::new(registry(1), Instant::now());
    let now = Instant::now();
    let pool = PoolId(500);
    assert_eq!(health.pool_capacity(pool), Some(0));
    health.report_bind_state(LinkId(100), 0, true, now);
    health.report_enquire_ok(LinkId(100), 0, now);
    assert_eq!(health.pool_capacity(pool), Some(100));
    assert_eq!(health.pool_burst(pool), Some(150));
    health.report_bind_state(LinkId(101), 0, true, now);
    health.report_enquire_ok(LinkId(101), 0, now);
    assert_eq!(health.pool_capacity(pool), Some(150));
    health.report_bind_state(LinkId(100), 0, false, now);
    assert_eq!(health.pool_capacity(pool), Some(50));
    assert_eq!(health.pool_capacity(PoolId(1)), None);
}

#[test]
fn binds_spread_round_robin_over_shards() {
    assert_eq!(binds_for_shard(5, 0, 0, 2), vec![0, 2, 4]);
    assert_eq!(binds_for_shard(5, 0, 1, 2), vec![1, 3]);
    assert_eq!(binds_for_shard(1, 3, 0, 4), Vec::<u32>::new());
    assert_eq!(binds_for_shard(1, 3, 3, 4), vec![0]);
    assert_eq!(binds_for_shard(3, 0, 7, 2), Vec::<u32>::new()); // shard out of range

    // Placement starts at an offset per link (its position in id order), so single-bind links
    // do not all land on shard 0.
    let r = registry(4);
    let homes: Vec<Vec<usize>> = [100, 101]
        .iter()
        .map(|l| r.shards_with_link(LinkId(*l)).collect())
        .collect();
    assert_eq!(homes, vec![vec![0, 1, 2], vec![1]]);
    assert_eq!(
        r.shards_with_link(LinkId(102)).count(),
        0,
        "disabled link has no binds"
    );
    assert_eq!(r.binds_for_shard(LinkId(102), 0), Vec::<u32>::new());
    assert_eq!(r.shard_of_bind(LinkId(101), 0), Some(1));
}

proptest! {
    /// Every bind runs on exactly one shard; shards get ⌊n/s⌋ or ⌈n/s⌉ binds; and
    /// `shards_with_link` names exactly the shards that got one.
    #[test]
    fn bind_placement_is_a_balanced_partition(binds in 1u32..=64, offset in 0usize..100, shards in 1usize..=16) {
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        for s in 0..shards {
            let mine = binds_for_shard(binds, offset, s, shards);
            let n = mine.len() as u32;
            prop_assert!(n == binds / shards as u32 || n == binds.div_ceil(shards as u32));
            for b in mine {
                prop_assert!(owner.insert(b, s).is_none());
            }
        }
        prop_assert_eq!(owner.len() as u32, binds);

        let rules = format!(
            "[links.1]\nhost = \"h\"\nsystem_id = \"s\"\npassword = \"p\"\nesme_rate = 1\nbinds = {binds}\n"
        );
        let cfg = from_sources(
            Source { path: Path::new("a"), text: "" },
            Source { path: Path::new("b"), text: &rules },
            &|_| None,
        ).unwrap();
        let r = Registry::new(&cfg.rules, NonZeroUsize::new(shards).unwrap());
        let with: Vec<usize> = r.shards_with_link(LinkId(1)).collect();
        let expected: Vec<usize> = (0..shards).filter(|s| !r.binds_for_shard(LinkId(1), *s).is_empty()).collect();
        prop_assert_eq!(with, expected);
    }
}

#[derive(Debug, Clone, Copy)]
enum Report {
    Bind(u32, bool),
    EnquireOk(u32),
    EnquireFailed(u32),
}

fn report_strategy() -> impl Strategy<Value = Report> {
    prop_oneof![
        (0u32..3, any::<bool>()).prop_map(|(b, up)| Report::Bind(b, up)),
        (0u32..3).prop_map(Report::EnquireOk),
        (0u32..3).prop_map(Report::EnquireFailed),
    ]
}

proptest! {
    /// Against a straightforward model: a bind is up iff it bound and answered an enquire_link
    /// since, without a failed one after; the link is up iff a bind is; a transition is
    /// returned exactly when the link's state flips.
    #[test]
    fn health_table_matches_model(reports in proptest::collection::vec(report_strategy(), 0..60)) {
        let health = HealthTable::new(registry(2), Instant::now());
        let link = LinkId(100); // 3 binds
        let mut model = [BindHealth::Down; 3];
        let mut was_up = false;
        for r in reports {
            let now = Instant::now();
            let t = match r {
                Report::Bind(b, up) => {
                    let m = &mut model[b as usize];
                    *m = match (up, *m) { (false, _) => BindHealth::Down, (true, BindHealth::Up) => BindHealth::Up, (true, _) => BindHealth::Bound };
                    health.report_bind_state(link, b, up, now)
                }
                Report::EnquireOk(b) => {
                    let m = &mut model[b as usize];
                    if *m != BindHealth::Down { *m = BindHealth::Up; }
                    health.report_enquire_ok(link, b, now)
                }
                Report::EnquireFailed(b) => {
                    let m = &mut model[b as usize];
                    if *m != BindHealth::Down { *m = BindHealth::Bound; }
                    health.report_enquire_failed(link, b, now)
                }
            };
            let up = model.contains(&BindHealth::Up);
            prop_assert_eq!(health.is_up(link), up);
            prop_assert_eq!(health.snapshot(link).unwrap().binds, model.to_vec());
            match t {
                Some(t) => {
                    prop_assert_ne!(up, was_up);
                    prop_assert_eq!(t.state, if up { LinkState::Connected } else { LinkState::Disconnected });
                }
                None => prop_assert_eq!(up, was_up),
            }
            was_up = up;
        }
    }
}

/// Binds of one link report from different threads (as from different shards): transitions
/// still alternate and the final state agrees with the binds' final states.
#[test]
fn health_reports_from_many_threads() {
    let health = Arc::new(HealthTable::new(registry(3), Instant::now()));
    let link = LinkId(100);
    let threads: Vec<_> = (0..3u32)
        .map(|bind| {
            let health = Arc::clone(&health);
            std::thread::spawn(move || {
                let mut transitions = Vec::new();
                for i in 0..2000u32 {
                    let now = Instant::now();
                    let t = match (i + bind) % 3 {
                        0 => health.report_bind_state(link, bind, true, now),
                        1 => health.report_enquire_ok(link, bind, now),
                        _ => health.report_bind_state(link, bind, i % 2 == 0, now),
                    };
                    transitions.extend(t);
                }
                transitions
            })
        })
        .collect();
    let all: Vec<Transition> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let connected = all
        .iter()
        .filter(|t| t.state == LinkState::Connected)
        .count();
    let disconnected = all.len() - connected;
    let snap = health.snapshot(link).unwrap();
    let final_up = snap.binds.contains(&BindHealth::Up);
    assert_eq!(health.is_up(link), final_up);
    assert_eq!(
        connected - disconnected,
        usize::from(final_up),
        "{connected} vs {disconnected}"
    );
    assert_eq!(snap.transitions as usize, all.len());
}
