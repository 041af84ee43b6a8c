//! Routing micro-benchmarks: one SWRR pick over a 4-member pool, through the shard router as
//! the gateway calls it (resolve + pick, health read from the shared table).
//! Run: `cargo bench --bench route -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::config::{LinkId, PoolMember, Source, from_sources};
use smsgw::route::{HealthTable, Registry, ShardRouter, Swrr};

const RULES: &str = r#"
[links.100]
host = "127.0.0.1"
system_id = "a"
password = "p"
esme_rate = 100
[links.101]
host = "127.0.0.1"
system_id = "b"
password = "p"
esme_rate = 100
[links.102]
host = "127.0.0.1"
system_id = "c"
password = "p"
esme_rate = 100
[links.103]
host = "127.0.0.1"
system_id = "d"
password = "p"
esme_rate = 100
[pools.500]
members = [
  { link = 100, weight = 5 },
  { link = 101, weight = 3 },
  { link = 102, weight = 1 },
  { link = 103, weight = 1 },
]
"#;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));

    let members: Vec<PoolMember> = [5, 3, 1, 1]
        .iter()
        .enumerate()
        .map(|(i, w)| PoolMember {
            link: LinkId(100 + i as u32),
            weight: NonZeroU32::new(*w).unwrap(),
        })
        .collect();
    let mut swrr = Swrr::new(&members);
    group.bench_function("swrr_pick_4_members", |b| {
        b.iter(|| black_box(swrr.pick(|_| true)))
    });

    let config = from_sources(
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
    .expect("bench config is valid");
    let registry = Arc::new(Registry::new(&config.rules, NonZeroUsize::new(1).unwrap()));
    let health = HealthTable::new(registry.clone(), Instant::now());
    for link in 100..104 {
        health.report_bind_state(LinkId(link), 0, true, Instant::now());
        health.report_enquire_ok(LinkId(link), 0, Instant::now());
    }
    let mut router = ShardRouter::new(registry);
    group.bench_function("shard_route_pool_4_members_health_table", |b| {
        b.iter(|| black_box(router.route(black_box(500), |l| health.is_up(l))))
    });
    // One member down: the eligible set is stable, so this is the steady failover cost.
    health.report_bind_state(LinkId(101), 0, false, Instant::now());
    group.bench_function("shard_route_pool_4_members_one_down", |b| {
        b.iter(|| black_box(router.route(black_box(500), |l| health.is_up(l))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
