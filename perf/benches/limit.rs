//! Limiter micro-benchmarks: one GCRA check, one L1 table check (hash lookup + GCRA), the whole
//! `limit` stage for a message (app key + pool key, pool capacity read from the health table),
//! and the L2 lease fast path (parts spent from a lease already held; needs `redis-server`,
//! started privately on a free loopback port, or that bench is skipped).
//! Run: `cargo bench --bench limit -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::TcpStream;
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::config::{LinkId, Source, from_sources};
use smsgw::limit::{
    Gcra, L1Table, L2Client, L2Config, L2Shard, LimitKey, Limits, Quota, SharedL1, Take,
};
use smsgw::route::{HealthTable, Registry};
use smsgw::shard::stages::{Admission, RequestMeta, Stage, Verdict};

const SMSGW: &str = "[limits]\napp_rate_per_s = 10000000\n";
const RULES: &str = r#"
[links.100]
host = "127.0.0.1"
system_id = "a"
password = "p"
esme_rate = 100000
[links.101]
host = "127.0.0.1"
system_id = "b"
password = "p"
esme_rate = 100000
[pools.500]
members = [{ link = 100, weight = 1 }, { link = 101, weight = 1 }]
"#;

/// A private redis-server, killed on drop.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let r = Redis(child, port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("limit");
    group.throughput(Throughput::Elements(1));

    // Rates high enough that every check admits (the admit path is the hot one).
    let q = Quota::new(1_000_000_000, 1_000_000);
    let mut g = Gcra::default();
    let mut now = 0u64;
    group.bench_function("gcra_check", |b| {
        b.iter(|| {
            now += 2;
            black_box(g.check(q, black_box(1), now))
        })
    });

    // One shard's view of the node-wide shared state (an uncontended compare-exchange).
    let mut table = L1Table::new(SharedL1::new());
    for app in 0..64 {
        table.check(LimitKey::App(app), 1_000_000_000, 1_000_000, 1, 0);
    }
    let mut now = 0u64;
    group.bench_function("l1_table_check_64_keys", |b| {
        b.iter(|| {
            now += 4;
            black_box(table.check(
                LimitKey::App(black_box(17)),
                1_000_000_000,
                1_000_000,
                1,
                now,
            ))
        })
    });

    let config = from_sources(
        Source {
            path: Path::new("smsgw.toml"),
            text: SMSGW,
        },
        Source {
            path: Path::new("smpp_rules.toml"),
            text: RULES,
        },
        &|_| None,
    )
    .expect("bench config is valid");
    let registry = Arc::new(Registry::new(&config.rules, NonZeroUsize::new(1).unwrap()));
    let health = Arc::new(HealthTable::new(registry, Instant::now()));
    for link in [100, 101] {
        health.report_bind_state(LinkId(link), 0, true, Instant::now());
        health.report_enquire_ok(LinkId(link), 0, Instant::now());
    }
    let limits = Limits::new(config.limits.clone(), health, 1, None);
    let stage = limits.stage(0);
    let lookup = |_: &str| None;
    let meta = RequestMeta {
        client_ip: [127, 0, 0, 1].into(),
        header: &lookup,
    };
    let mut admission = Admission {
        app_id: 7,
        esme: 500,
        destination: "79000000000".into(),
        text_len_chars: 10,
        parts: 1,
        strategy: None,
        text_hash: 0,
    };
    // Far above the configured rates, so after the burst most checks are refusals: this is
    // the cost of a check either way (both paths read the clock once and touch two buckets).
    group.bench_function("stage_app_and_pool_l1", |b| {
        b.iter(|| black_box(matches!(stage.check(&mut admission, &meta), Verdict::Pass)))
    });

    match Redis::start() {
        None => eprintln!("redis-server not available: l2 lease benches skipped"),
        Some(redis) => {
            let side = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            for (name, lease_max) in [
                ("l2_lease_take_fast_path", 1_000_000u32),
                ("l2_lease_take_lease_100_incl_refills", 100),
            ] {
                let client = L2Client::start(
                    L2Config {
                        url: format!("redis://127.0.0.1:{}/0", redis.1),
                        timeout: Duration::from_millis(500),
                        lease_max,
                        lease_ttl: Duration::from_secs(60),
                        key_prefix: format!("bench{lease_max}"),
                        ..L2Config::default()
                    },
                    side.handle(),
                )
                .unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                while !client.health().is_up() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let shard = L2Shard::new(client);
                // 10^10 parts/s: Redis never says no, only the lease size bounds a grant.
                let rate = 10_000_000_000u64;
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let start = Instant::now();
                            for _ in 0..iters {
                                loop {
                                    match shard.take(
                                        LimitKey::App(1),
                                        rate,
                                        rate,
                                        1,
                                        Instant::now(),
                                    ) {
                                        Take::Taken => break,
                                        Take::Wait(rx) => {
                                            let _ = rx.recv().await;
                                        }
                                        Take::Denied(_) => panic!("bench lease denied"),
                                        Take::Unavailable => panic!("redis unavailable"),
                                    }
                                }
                            }
                            start.elapsed()
                        })
                    })
                });
            }
            drop(redis);
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
