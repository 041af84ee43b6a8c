//! Rate limits: L1 accuracy on virtual time, the L2 lease protocol against a real
//! `redis-server` (started by the test on a free loopback port), Redis failure and recovery,
//! and three real `smsgw serve` processes sharing one Redis.
//!
//! `SMSGW_SKIP_REDIS_TESTS=1` skips the Redis tests on a machine without redis-server;
//! otherwise a missing redis-server fails them (CI installs it).

mod common;
mod redis_server;

use std::path::Path;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smsgw::limit::{
    Decision, Gcra, L1Table, L2Client, L2Config, L2Shard, LimitKey, Quota, SharedL1, Take,
};

const S: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// L1 on virtual time

/// Arrivals at `factor` × the rate, evenly spaced, for `secs` seconds; returns admitted parts.
fn drive_gcra(rate: u64, burst: u64, factor: u64, secs: u64, parts: impl Fn(u64) -> u64) -> u64 {
    let q = Quota::new(rate, burst);
    let mut g = Gcra::default();
    let arrivals = rate * factor * secs;
    let start = 1_000 * S;
    let mut admitted = 0;
    for k in 0..arrivals {
        let now = start + k * secs * S / arrivals;
        let p = parts(k);
        if g.check(q, p, now) == Decision::Allow {
            admitted += p;
        }
    }
    admitted
}

#[test]
fn gcra_admits_rate_times_t_plus_burst() {
    for (rate, burst) in [(7, 3), (100, 1), (100, 100), (1000, 50), (250_000, 1000)] {
        let admitted = drive_gcra(rate, burst, 3, 10, |_| 1);
        let expected = rate * 10 + burst;
        assert!(
            admitted.abs_diff(expected) <= 1,
            "rate {rate} burst {burst}: admitted {admitted}, expected {expected} ± 1"
        );
    }
}

#[test]
fn gcra_counts_parts_not_requests() {
    // 1..=4 parts per message; the admitted *parts* follow the rate.
    let (rate, burst) = (1000, 100);
    let admitted = drive_gcra(rate, burst, 3, 10, |k| 1 + (k * 7 % 4));
    let expected = rate * 10 + burst;
    assert!(
        admitted.abs_diff(expected) <= 4,
        "admitted {admitted} parts, expected {expected} ± 4"
    );
}

/// Node of `shards` shards (each its own `L1Table` on one `SharedL1`, as in the gateway),
/// node-wide `rate`/`burst`, arrivals at `total_per_s` spread over the shards by `weights`
/// (pseudo-random, seeded), for 10 s of virtual time.
fn drive_split(shards: usize, rate: u64, burst: u64, total_per_s: u64, weights: &[u32]) -> u64 {
    assert_eq!(weights.len(), shards);
    let shared = SharedL1::new();
    let mut tables: Vec<L1Table> = (0..shards)
        .map(|_| L1Table::new(Arc::clone(&shared)))
        .collect();
    let sum: u32 = weights.iter().sum();
    let mut rng = fastrand::Rng::with_seed(7);
    let secs = 10;
    let arrivals = total_per_s * secs;
    let mut admitted = 0;
    for k in 0..arrivals {
        let now = 1_000 * S + k * secs * S / arrivals;
        let mut pick = rng.u32(0..sum);
        let shard = weights
            .iter()
            .position(|&w| {
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap();
        if tables[shard].check(LimitKey::Link(100), rate, burst, 1, now) == Decision::Allow {
            admitted += 1;
        }
    }
    admitted
}

#[test]
fn node_limit_holds_within_5_percent_however_unevenly_traffic_lands_on_shards() {
    // The node-wide limit is one shared GCRA state: a shard that gets most (or all) of the
    // traffic may use the whole limit, and the node never admits more than it. (A static 1/N
    // split admitted only ~65 % of the limit at 2 shards, 90/10 %, 1.5×.)
    let (rate, burst) = (1000, 100);
    let expected = rate * 10 + burst;
    let cases: [(usize, &[u32], u64); 7] = [
        (2, &[90, 10], 1500),
        (2, &[100, 0], 1500),
        (2, &[90, 10], 3000),
        (2, &[100, 0], 3000),
        (4, &[40, 30, 20, 10], 3000),
        (4, &[97, 1, 1, 1], 1500),
        (8, &[100, 0, 0, 0, 0, 0, 0, 0], 2000),
    ];
    for (shards, weights, total) in cases {
        let admitted = drive_split(shards, rate, burst, total, weights);
        let err = admitted.abs_diff(expected) as f64 / expected as f64;
        eprintln!(
            "{shards} shards {weights:?} at {total}/s: admitted {admitted} of {expected} ({:.2}% off)",
            err * 100.0
        );
        assert!(
            admitted <= expected + 1,
            "{shards} shards {weights:?}: over the node limit: {admitted} > {expected}"
        );
        assert!(
            err <= 0.05,
            "{shards} shards {weights:?} at {total}/s: admitted {admitted}, expected {expected} ± 5%"
        );
    }
}

#[test]
fn real_threads_hammering_one_key_never_exceed_rate_times_t_plus_burst() {
    // Real contention on the shared TAT: 4 threads (one `L1Table` each, like shards) check one
    // key as fast as they can, on a shared virtual clock that a fifth thread advances, for a
    // bounded number of checks. Whatever the interleaving, admitted ≤ rate × T + burst where T
    // is the virtual time elapsed at the last check.
    let (rate, burst) = (10_000u64, 50u64);
    let shared = SharedL1::new();
    let clock = Arc::new(AtomicU64::new(1_000 * S));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (clock, done) = (Arc::clone(&clock), Arc::clone(&done));
        std::thread::spawn(move || {
            // At most 20 000 ticks of 50 µs virtual time (1 s), bounded in wall time too.
            let deadline = Instant::now() + Duration::from_secs(10);
            for _ in 0..20_000 {
                if done.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                clock.fetch_add(50_000, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (shared, clock) = (Arc::clone(&shared), Arc::clone(&clock));
            std::thread::spawn(move || {
                let mut table = L1Table::new(shared);
                let (mut admitted, mut last_now) = (0u64, 0u64);
                for i in 0..200_000u64 {
                    let now = clock.load(Ordering::Relaxed);
                    last_now = now;
                    let parts = 1 + i % 3;
                    if table.check(LimitKey::App(7), rate, burst, parts, now) == Decision::Allow {
                        admitted += parts;
                    }
                }
                (admitted, last_now)
            })
        })
        .collect();
    let results: Vec<(u64, u64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    let admitted: u64 = results.iter().map(|r| r.0).sum();
    // The latest virtual time any check saw: the ticker kept going after the workers stopped.
    let elapsed_ns = results.iter().map(|r| r.1).max().unwrap_or(0) - 1_000 * S;
    // Parts admitted by a request larger than what is left are repaid later; with 1..=3 parts
    // per request the overshoot is at most 2 parts (one request's worth).
    let bound = rate * elapsed_ns / S + burst + 2;
    eprintln!(
        "4 threads on one key: admitted {admitted} parts in {elapsed_ns} ns virtual, bound {bound}"
    );
    assert!(admitted <= bound, "admitted {admitted} > {bound}");
    assert!(admitted >= burst, "admitted {admitted}: not even the burst");
}

// ---------------------------------------------------------------------------------------------
// Configuration

const RULES: &str =
    "[links.100]\nhost = \"127.0.0.1\"\nsystem_id = \"x\"\npassword = \"p\"\nesme_rate = 10\n";

fn load(smsgw: &str) -> Result<smsgw::config::Config, smsgw::config::ConfigErrors> {
    smsgw::config::from_sources(
        smsgw::config::Source {
            path: Path::new("smsgw.toml"),
            text: smsgw,
        },
        smsgw::config::Source {
            path: Path::new("smpp_rules.toml"),
            text: RULES,
        },
        &|_| None,
    )
}

#[test]
fn limits_and_redis_config() {
    let c = load("").unwrap();
    assert!(c.redis.url.is_none());
    assert!(c.limits.app_default.is_none());
    assert_eq!(c.limits.on_redis_down, smsgw::config::OnRedisDown::FailOpen);

    let c = load(
        "[limits]\napp_rate_per_s = 50\non_redis_down = \"fail_closed\"\nexpected_replicas = 3\n\
         [limits.apps.7]\nrate_per_s = 200\nburst = 20\n\
         [redis]\nurl = \"redis://127.0.0.1:6390/0\"\ntimeout_ms = 20\n",
    )
    .unwrap();
    let d = c.limits.app_default.unwrap();
    assert_eq!((d.rate_per_s.get(), d.burst.get()), (50, 50));
    let a = c.limits.apps[&7];
    assert_eq!((a.rate_per_s.get(), a.burst.get()), (200, 20));
    assert_eq!(c.limits.expected_replicas.get(), 3);
    assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6390/0"));
    assert_eq!(c.redis.timeout, Duration::from_millis(20));

    let errs = load(
        "[limits]\napp_rate_per_s = -1\nexpected_replicas = 0\nlease_ttl_ms = 1\n\
         [limits.apps.x]\nrate_per_s = 1\n[limits.apps.8]\nrate_per_s = 0\n\
         [redis]\nurl = \"http://x\"\n",
    )
    .unwrap_err();
    for key in [
        "limits.app_rate_per_s",
        "limits.expected_replicas",
        "limits.lease_ttl_ms",
        "limits.apps.x",
        "limits.apps.8.rate_per_s",
        "redis.url",
    ] {
        assert_eq!(errs.for_key(key).count(), 1, "{key}: {errs}");
    }
    let errs = load("[limits]\nrate = 1\n").unwrap_err();
    assert_eq!(errs.for_key("limits.rate").count(), 1, "{errs}");
}

// ---------------------------------------------------------------------------------------------
// L2 against a real redis-server

fn side() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn shard_rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

fn client(
    redis: &RedisServer,
    side: &tokio::runtime::Runtime,
    f: impl FnOnce(&mut L2Config),
) -> L2Client {
    let mut cfg = L2Config {
        url: redis.url(),
        timeout: Duration::from_millis(200),
        key_prefix: format!("t{}", fastrand::u32(..)),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..L2Config::default()
    };
    f(&mut cfg);
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("smsgw=debug")
        .try_init();
    let c = L2Client::start(cfg, side.handle()).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(5), || c.health().is_up()),
        "L2 client never connected"
    );
    c
}

/// Takes `parts` (one at a time) from `shard`, waiting for leases as needed; gives up on a
/// denial after sleeping. Returns how many were taken within `deadline`.
async fn take_n(
    shard: &L2Shard,
    key: LimitKey,
    rate: u64,
    burst: u64,
    parts: u64,
    deadline: Instant,
) -> u64 {
    let mut taken = 0;
    while taken < parts && Instant::now() < deadline {
        match shard.take(key, rate, burst, 1, Instant::now()) {
            Take::Taken => taken += 1,
            Take::Wait(rx) => {
                let _ = rx.recv().await;
            }
            Take::Denied(_) => monoio::time::sleep(Duration::from_millis(1)).await,
            Take::Unavailable => panic!("redis unavailable during the test"),
        }
    }
    taken
}

#[test]
fn l2_steady_state_costs_one_round_trip_per_100_parts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let side = side();
    let c = client(&redis, &side, |_| {});
    let before = redis.calls("evalsha") + redis.calls("eval");
    let trips_before = c
        .health()
        .round_trips
        .load(std::sync::atomic::Ordering::Relaxed);
    let shard = L2Shard::new(c.clone());
    assert_eq!(shard.lease_size(1_000_000), 100);
    let n = 20_000;
    let taken = shard_rt().block_on(async {
        take_n(
            &shard,
            LimitKey::App(1),
            1_000_000,
            100_000,
            n,
            Instant::now() + Duration::from_secs(30),
        )
        .await
    });
    assert_eq!(taken, n);
    let calls = redis.calls("evalsha") + redis.calls("eval") - before;
    let trips = c
        .health()
        .round_trips
        .load(std::sync::atomic::Ordering::Relaxed)
        - trips_before;
    eprintln!(
        "{n} parts: {calls} script calls seen by redis, {trips} round trips counted by the client"
    );
    // 200 leases of 100, plus the background refill started when the last lease ran low, plus
    // (seen by Redis only) the first EVALSHA that meets NOSCRIPT and is retried as EVAL.
    assert!(calls <= n / 100 + 2, "{calls} calls for {n} parts");
    assert!(trips <= n / 100 + 1, "{trips} round trips for {n} parts");
}

#[test]
fn l2_shards_share_the_cluster_rate() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let side = side();
    let c = client(&redis, &side, |_| {});
    // Three "shards" (as on three replicas) ask as fast as they can for 3 s.
    let (rate, burst) = (2000u64, 100u64);
    let shards: Vec<L2Shard> = (0..3).map(|_| L2Shard::new(c.clone())).collect();
    let secs = 3;
    let start = Instant::now();
    let taken = shard_rt().block_on(async {
        let deadline = start + Duration::from_secs(secs);
        let mut total: u64 = 0;
        while Instant::now() < deadline {
            for s in &shards {
                match s.take(LimitKey::Link(100), rate, burst, 1, Instant::now()) {
                    Take::Taken => total += 1,
                    Take::Wait(rx) => {
                        let _ = rx.recv().await;
                    }
                    Take::Denied(_) => monoio::time::sleep(Duration::from_micros(200)).await,
                    Take::Unavailable => panic!("redis unavailable"),
                }
            }
        }
        total
    });
    let expected = rate * secs + burst;
    let err = taken.abs_diff(expected) as f64 / expected as f64;
    eprintln!(
        "3 shards, {secs} s at {rate}/s burst {burst}: took {taken}, expected {expected} ({:.2}% off)",
        err * 100.0
    );
    assert!(err <= 0.05, "took {taken}, expected {expected} ± 5%");
}

#[test]
fn l2_unused_lease_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let side = side();
    let c = client(&redis, &side, |cfg| {
        cfg.lease_ttl = Duration::from_millis(100)
    });
    let shard = L2Shard::new(c.clone());
    let trips = || {
        c.health()
            .round_trips
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    shard_rt().block_on(async {
        let key = LimitKey::App(9);
        assert_eq!(
            take_n(
                &shard,
                key,
                100_000,
                1000,
                1,
                Instant::now() + Duration::from_secs(5)
            )
            .await,
            1
        );
        let after_first = trips();
        // 99 leased parts left: spent without a round trip while the lease is fresh...
        assert_eq!(
            take_n(
                &shard,
                key,
                100_000,
                1000,
                10,
                Instant::now() + Duration::from_secs(5)
            )
            .await,
            10
        );
        assert_eq!(trips(), after_first);
        // ...and gone once it is older than lease_ttl: the next part needs Redis again.
        monoio::time::sleep(Duration::from_millis(150)).await;
        assert!(matches!(
            shard.take(key, 100_000, 1000, 1, Instant::now()),
            Take::Wait(_)
        ));
    });
}

#[test]
fn l2_redis_down_then_back_without_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let side = side();
    let c = client(&redis, &side, |_| {});
    let shard = L2Shard::new(c.clone());
    let rt_result = shard_rt().block_on(async {
        let key = LimitKey::App(3);
        assert_eq!(
            take_n(
                &shard,
                key,
                1000,
                1000,
                5,
                Instant::now() + Duration::from_secs(5)
            )
            .await,
            5
        );
        redis.kill();
        // Spend the lease until a refill meets the dead Redis: then the shard is told to fall back.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut unavailable = false;
        while Instant::now() < deadline {
            match shard.take(key, 1000, 1000, 1, Instant::now()) {
                Take::Unavailable => {
                    unavailable = true;
                    break;
                }
                Take::Wait(rx) => {
                    let _ = rx.recv().await;
                }
                _ => monoio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        assert!(unavailable, "never reported unavailable");
        assert!(!c.health().is_up());
        // Not `redis_limiter_up()`: that flag is process-wide (for the metrics exporter) and the
        // other Redis tests running in parallel in this process flip it; this client's own
        // health is the deterministic signal.
        redis.restart();
        let back = Instant::now();
        while !c.health().is_up() {
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "no recovery within 5 s"
            );
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("recovered {:?} after the restart", back.elapsed());
        take_n(
            &shard,
            key,
            1000,
            1000,
            5,
            Instant::now() + Duration::from_secs(5),
        )
        .await
    });
    assert_eq!(rt_result, 5);
    // connected, down, up again
    assert!(
        c.health()
            .transitions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

// ---------------------------------------------------------------------------------------------
// Three real gateways sharing one Redis

struct Node {
    gw: common::Proc,
    url: String,
    _dir: tempfile::TempDir,
}

const LINK_RATE: u64 = 300;
const LINK_BURST: u64 = 30;

fn start_node(name: &str, redis_url: &str, prefix: &str, smpp_port: u16) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let smsgw = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\nshards = 2\n\
         shutdown_timeout_ms = 3000\ninstance_id = \"{name}\"\n\n\
         [state]\npath = \"{state}\"\nfsync = \"off\"\nbatch_delay_us = 0\n\n\
         [callbacks]\npath = \"{callbacks}\"\n\n\
         [health]\ncheck_interval_s = 1\n\n[security]\nenabled = false\n\n\
         [limits]\non_redis_down = \"fail_open\"\nexpected_replicas = 3\n\n\
         [redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 100\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 300\n",
        state = dir.path().join("state").display(),
        callbacks = dir.path().join("callbacks").display(),
    );
    let rules = format!(
        "[links.100]\nhost = \"127.0.0.1\"\nport = {smpp_port}\nsystem_id = \"{name}\"\npassword = \"pw\"\n\
         esme_rate = {LINK_RATE}\nesme_rate_burst = {LINK_BURST}\nwindow = 50\nenquire_interval_s = 1\n"
    );
    let a = dir.path().join("smsgw.toml");
    let b = dir.path().join("smpp_rules.toml");
    std::fs::write(&a, smsgw).unwrap();
    std::fs::write(&b, rules).unwrap();
    let args: Vec<String> = [
        "serve",
        "--config",
        &a.display().to_string(),
        "--rules",
        &b.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (gw, line) = common::spawn(name, &args, &[], "smsgw listening", Duration::from_secs(30));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .expect("http addr")
        .to_string();
    Node {
        gw,
        url: format!("http://{addr}"),
        _dir: dir,
    }
}

fn wait_link_up(node: &Node) {
    let ok = common::wait_until(Duration::from_secs(20), || {
        let (st, v) = common::http(&node.url, "GET", "/api/v1/smpp/links", "");
        st == 200
            && v["links"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["id"] == 100 && l["state"] == "connected")
    });
    assert!(ok, "link 100 of {} never connected", node.url);
}

/// Runs `smsgw bench` against every node at once (`per_node_rate` req/s of 1-part messages
/// each, for `secs`) and returns (accepted, rate_limited) over all nodes.
fn drive(nodes: &[Node], per_node_rate: u64, secs: u64, during: impl FnOnce()) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut benches = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let json = dir.path().join(format!("bench{i}.json"));
        let child = std::process::Command::new(common::BIN)
            .args([
                "bench",
                "--url",
                &n.url,
                "--rate",
                &per_node_rate.to_string(),
                "--duration",
                &format!("{secs}s"),
                "--connections",
                "16",
                "--esme",
                "100",
                "--text-mix",
                "gsm7=100",
                "--max-error-rate",
                "1",
                "--quiet",
                "--json",
                &json.display().to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn smsgw bench");
        benches.push((child, json));
    }
    during();
    let (mut accepted, mut limited) = (0, 0);
    for (mut child, json) in benches {
        let deadline = Instant::now() + Duration::from_secs(secs + 30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("bench did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("bench ({status}) wrote no json: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        accepted += v["accepted"].as_u64().unwrap();
        limited += v["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["code"] == "rate_limited")
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum::<u64>();
        eprintln!("bench {}: {}", json.display(), v["rejected"]);
    }
    (accepted, limited)
}

#[test]
fn three_gateways_share_one_cluster_limit_and_survive_a_redis_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = common::Sim::start(&[]);
    let prefix = format!("t{}", fastrand::u32(..));
    let nodes: Vec<Node> = (0..3)
        .map(|i| start_node(&format!("gw{i}"), &redis.url(), &prefix, sim.smpp_port))
        .collect();
    for n in &nodes {
        wait_link_up(n);
    }

    // Phase 1: 3× the cluster limit for 10 s.
    let secs = 10;
    let (accepted, limited) = drive(&nodes, LINK_RATE, secs, || {});
    let expected = LINK_RATE * secs + LINK_BURST;
    let err = accepted.abs_diff(expected) as f64 / expected as f64;
    eprintln!(
        "3 gateways at 3x for {secs}s: accepted {accepted} (expected {expected}, {:.2}% off), rate_limited {limited}",
        err * 100.0
    );
    assert!(limited > 0, "nothing was rate limited at 3x the limit");
    assert!(err <= 0.05, "accepted {accepted}, expected {expected} ± 5%");
    let key = format!("{prefix}:limit:link:100");
    assert_eq!(redis.cli(&["EXISTS", &key]), "1", "no L2 bucket in redis");

    // Phase 2: Redis killed after 3 s, back after 6 s. Fail-open: each node keeps admitting
    // its 1/3 share locally, so the cluster stays near the limit; afterwards L2 is used again.
    let redis_ref = &mut redis;
    let (accepted, limited) = drive(&nodes, LINK_RATE, secs, move || {
        std::thread::sleep(Duration::from_secs(3));
        redis_ref.kill();
        std::thread::sleep(Duration::from_secs(3));
        redis_ref.restart();
    });
    let err = accepted.abs_diff(expected) as f64 / expected as f64;
    eprintln!(
        "with redis down 3 s of {secs}: accepted {accepted} (limit {expected}, {:.2}% off), rate_limited {limited}",
        err * 100.0
    );
    // The fallback share (the node's 1/3) is one state shared by the node's shards, so uneven
    // shards do not lose it; the lower bound still allows for the switch-over at kill and
    // restart (leases in flight, reconnect).
    assert!(
        accepted <= expected + expected / 20,
        "over the limit while redis was down: {accepted}"
    );
    assert!(
        accepted >= expected * 8 / 10,
        "fail-open admitted too little: {accepted}"
    );
    // The restarted server's stats start at zero: any lease script call proves L2 is back.
    let calls = redis.calls("evalsha") + redis.calls("eval");
    eprintln!("lease script calls on the restarted redis: {calls}");
    assert!(calls > 0, "L2 not used again after the restart");
    for mut n in nodes {
        n.gw.terminate(Duration::from_secs(5));
    }
    drop(sim);
}
