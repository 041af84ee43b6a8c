//! Contact policy against real servers: CP1 caps across day and week boundaries and CP2
//! windows (memory and a private `redis-server`), blacklists from a real S3-compatible server
//! (`moto[server]`, started here on a free loopback port and killed by PID), E.164
//! normalisation, and through the real binaries: `smsgw serve` refusing a blacklisted
//! destination before the SMSC sees it, and `smsgw mcp` answering the reference API.
//!
//! Missing servers: `redis-server` missing fails unless `SMSGW_SKIP_REDIS_TESTS=1`; moto
//! missing (`python3 -m moto.server` not importable) prints `SKIPPED:` and returns.

mod common;
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::moto::{self, Moto};
use common::{Gateway, LinkSpec, Sim, http, spawn, wait_until};
use redis_server::RedisServer;
use smsgw::policy::blacklist::Blacklist;
use smsgw::policy::engine::{BlacklistCell, PolicyEngine};
use smsgw::policy::loader::{Loader, S3Source, Source};
use smsgw::policy::number::Normalizer;
use smsgw::policy::redis_store::RedisStore;
use smsgw::policy::{CheckRequest, ManualClock, State, Strategies, text_hash};

/// Monday 2026-11-23 00:00 UTC.
const MONDAY: i64 = 1_795_392_000_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn side() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(daily: u32, weekly: u32, offset_s: i32) -> smsgw::policy::PolicySettings {
    smsgw::policy::PolicySettings {
        daily_cap: daily,
        weekly_cap: weekly,
        utc_offset_s: offset_s,
        cp2_window: Duration::from_secs(60),
        memory_max_entries: 10_000,
        ..Default::default()
    }
}

fn req(dest: u64, text: &str, s: &str) -> CheckRequest {
    CheckRequest {
        app_id: 7,
        destination: dest,
        text_hash: text_hash(text),
        strategies: Strategies::parse(s).unwrap(),
    }
}

fn check(rt: &tokio::runtime::Runtime, e: &PolicyEngine, r: &CheckRequest) -> State {
    rt.block_on(e.check(r)).expect("policy answer")
}

/// CP1: 2 per day, 3 per week, calendar in UTC+02:00; crosses a local midnight and a local
/// Monday 00:00. Distinct texts so CP2 never interferes.
fn cp1_calendar(rt: &tokio::runtime::Runtime, engine: &PolicyEngine, clock: &ManualClock) {
    let d = 4915100000001;
    // Sunday 2026-11-22 20:00 local (18:00 UTC): still last week.
    clock.set(MONDAY - 6 * HOUR);
    assert_eq!(check(rt, engine, &req(d, "a", "cp1")), State::Ok);
    assert_eq!(check(rt, engine, &req(d, "b", "cp1")), State::Ok);
    assert_eq!(check(rt, engine, &req(d, "c", "cp1")), State::DailyCap);
    // 21:59 UTC = 23:59 local Sunday: same day.
    clock.set(MONDAY - 2 * HOUR - 60_000);
    assert_eq!(check(rt, engine, &req(d, "d", "cp1")), State::DailyCap);
    // 22:00 UTC = Monday 00:00 local: new day AND new week.
    clock.set(MONDAY - 2 * HOUR);
    assert_eq!(check(rt, engine, &req(d, "e", "cp1")), State::Ok);
    assert_eq!(check(rt, engine, &req(d, "f", "cp1")), State::Ok);
    assert_eq!(check(rt, engine, &req(d, "g", "cp1")), State::DailyCap);
    // Tuesday local: day resets, week has 2 of 3.
    clock.set(MONDAY - 2 * HOUR + DAY);
    assert_eq!(check(rt, engine, &req(d, "h", "cp1")), State::Ok);
    assert_eq!(check(rt, engine, &req(d, "i", "cp1")), State::WeeklyCap);
    // Refused checks were not counted: Sunday local next week (day 7) still weekly capped,
    // next Monday local free again.
    clock.set(MONDAY - 2 * HOUR + 7 * DAY - 1);
    assert_eq!(check(rt, engine, &req(d, "j", "cp1")), State::WeeklyCap);
    clock.set(MONDAY - 2 * HOUR + 7 * DAY);
    assert_eq!(check(rt, engine, &req(d, "k", "cp1")), State::Ok);
    // Another destination is independent.
    assert_eq!(check(rt, engine, &req(d + 1, "a", "cp1")), State::Ok);
}

/// CP2: same app + destination + text within 60 s is a duplicate; another text, app or
/// destination is not; after the window it passes again. A duplicate is not counted by CP1.
fn cp2_window(rt: &tokio::runtime::Runtime, engine: &PolicyEngine, clock: &ManualClock) {
    let d = 4915100000099;
    clock.set(MONDAY + 10 * DAY);
    assert_eq!(check(rt, engine, &req(d, "hello", "cp1,cp2")), State::Ok);
    assert_eq!(
        check(rt, engine, &req(d, "hello", "cp2,cp1")),
        State::Duplicate
    );
    assert_eq!(check(rt, engine, &req(d, "hello!", "cp2")), State::Ok);
    let mut other_app = req(d, "hello", "cp2");
    other_app.app_id = 8;
    assert_eq!(check(rt, engine, &other_app), State::Ok);
    assert_eq!(check(rt, engine, &req(d + 1, "hello", "cp2")), State::Ok);
    // Without cp2 asked, the same text passes.
    assert_eq!(check(rt, engine, &req(d, "hello", "cp1")), State::Ok);
    clock.advance(Duration::from_millis(59_999));
    assert_eq!(check(rt, engine, &req(d, "hello", "cp2")), State::Duplicate);
    clock.advance(Duration::from_millis(1));
    assert_eq!(check(rt, engine, &req(d, "hello", "cp2")), State::Ok);
    // daily cap 2: "hello" (1st), "hello" cp1-only (2nd); so the 3rd cp1 check is capped
    // and the duplicates above did not count.
    assert_eq!(check(rt, engine, &req(d, "zzz", "cp1")), State::DailyCap);
}

#[test]
fn cp1_and_cp2_in_memory() {
    let rt = side();
    let clock = ManualClock::new(MONDAY);
    let engine = PolicyEngine::new(settings(2, 3, 2 * 3600), clock.clone());
    cp1_calendar(&rt, &engine, &clock);
    cp2_window(&rt, &engine, &clock);
}

#[test]
fn cp1_and_cp2_in_redis() {
    let Some(redis) = RedisServer::start() else {
        eprintln!("SKIPPED: redis-server not installed");
        return;
    };
    let rt = side();
    let clock = ManualClock::new(MONDAY);
    let store = RedisStore::start(
        &redis.url(),
        "t",
        Duration::from_millis(500),
        rt.handle().clone(),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || store.connected()));
    let mut s = settings(2, 3, 2 * 3600);
    s.fail_open = false; // a Redis failure must show, not fall back to memory silently
    let engine = PolicyEngine::new(s, clock.clone()).with_redis(store);
    cp1_calendar(&rt, &engine, &clock);
    cp2_window(&rt, &engine, &clock);
    assert!(
        engine.memory.is_empty(),
        "counted in memory instead of Redis"
    );
    // Keys as documented, with TTLs.
    let day_key = "t:mcp:{+4915100000001}:d:20787"; // next Monday, local
    assert_eq!(redis.cli(&["GET", day_key]), "1", "{day_key}");
    let ttl: i64 = redis.cli(&["PTTL", day_key]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= DAY + HOUR, "ttl {ttl}");
    let dups = redis.cli(&["KEYS", "t:mcp:{+4915100000099}:dup:*"]);
    assert_eq!(dups.lines().count(), 3, "{dups}"); // hello (app 7, 8), hello! (app 7)

    // Redis gone: fail-closed answers an error; fail-open would count in memory.
    drop(redis);
    let r = rt.block_on(engine.check(&req(4915100000555, "x", "cp1")));
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn normalisation_reaches_the_blacklist() {
    let n = Normalizer {
        default_country_code: "49".into(),
    };
    let list = Blacklist::from_keys(vec![n.to_key("+49 151 1234567").unwrap()]);
    for s in [
        "+491511234567",
        "00491511234567",
        "0151-123 45 67",
        "(0151) 1234567",
    ] {
        assert!(list.contains(n.to_key(s).unwrap()), "{s}");
    }
    assert!(!list.contains(n.to_key("+491511234568").unwrap()));
}

// ---------------------------------------------------------------------------------------------
// S3 (moto)

fn s3_source(endpoint: &str) -> S3Source {
    S3Source {
        bucket: "lists".into(),
        prefix: "blacklists/".into(),
        endpoint: endpoint.into(),
        region: "us-east-1".into(),
        access_key: "test".into(),
        secret_key: "test".into(),
        path_style: true,
        timeout: Duration::from_secs(2),
    }
}

async fn put(b: &s3::Bucket, key: &str, body: &str) {
    let r = b.put_object(key, body.as_bytes()).await.unwrap();
    assert_eq!(r.status_code(), 200, "PUT {key}");
}

#[test]
fn blacklist_from_s3_refreshes_on_etag_and_survives_s3_down() {
    let Some(moto) = Moto::start() else { return };
    let rt = side();
    let b = moto::bucket(&moto.endpoint(), "lists");
    rt.block_on(async {
        moto.create_bucket("lists");
        put(&b, "blacklists/a.csv", "number\n+49 151 1111111\n# c\n").await;
        put(&b, "blacklists/b.csv", "0049-151-2222222,reason\n").await;
        put(&b, "other/c.csv", "+491513333333\n").await;
    });
    let n = Normalizer::default();
    let cell = Arc::new(BlacklistCell::default());
    let mut loader = Loader::new(
        vec![Source::S3(s3_source(&moto.endpoint()))],
        n.clone(),
        Arc::clone(&cell),
    );
    let stats = Arc::clone(&loader.stats);
    assert!(rt.block_on(loader.refresh()).unwrap());
    let k = |s: &str| n.to_key(s).unwrap();
    let list = cell.snapshot();
    assert!(list.contains(k("+491511111111")) && list.contains(k("+491512222222")));
    assert!(!list.contains(k("+491513333333")), "outside the prefix");
    assert_eq!(stats.fetches.load(Ordering::Relaxed), 2);

    // Unchanged: listed, not downloaded, not republished.
    let generation = cell.generation();
    assert!(!rt.block_on(loader.refresh()).unwrap());
    assert_eq!(stats.fetches.load(Ordering::Relaxed), 2);
    assert_eq!(cell.generation(), generation);

    // One object changes (new ETag): only it is fetched, the new number appears.
    rt.block_on(put(&b, "blacklists/b.csv", "+491514444444\n"));
    assert!(rt.block_on(loader.refresh()).unwrap());
    assert_eq!(stats.fetches.load(Ordering::Relaxed), 3);
    let list = cell.snapshot();
    assert!(list.contains(k("+491514444444")) && list.contains(k("+491511111111")));
    assert!(
        !list.contains(k("+491512222222")),
        "old content of b.csv gone"
    );

    // A file with no valid number: refused, last good copy stays.
    rt.block_on(put(&b, "blacklists/b.csv", "garbage\nmore garbage\n"));
    assert!(rt.block_on(loader.refresh()).is_err());
    assert!(cell.snapshot().contains(k("+491514444444")));

    // S3 down: refresh fails, the last good copy stays published.
    drop(moto);
    let before = cell.generation();
    let t = Instant::now();
    assert!(rt.block_on(loader.refresh()).is_err());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(cell.generation(), before);
    assert!(cell.snapshot().contains(k("+491514444444")));
    assert!(stats.failures.load(Ordering::Relaxed) >= 2);
}

// ---------------------------------------------------------------------------------------------
// Through the binaries

fn gateway_with_policy(sim: &Sim, policy: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let o = common::GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..Default::default()
    };
    let (a, b) = common::write_configs(dir.path(), &o);
    let mut text = std::fs::read_to_string(&a).unwrap();
    text.push_str(policy);
    std::fs::write(&a, text).unwrap();
    let (proc, line) = common::spawn_serve(&a, &b, &[]);
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .expect("http addr")
        .to_string();
    Gateway {
        proc,
        url: format!("http://{addr}"),
        dir,
    }
}

#[test]
fn gateway_refuses_blacklisted_and_duplicate_before_the_smsc() {
    let sim = Sim::start(&[]);
    let lists = tempfile::tempdir().unwrap();
    std::fs::write(
        lists.path().join("optout.csv"),
        "phone\n+49 151 0000001\n0049 151 0000002\n",
    )
    .unwrap();
    let gw = gateway_with_policy(
        &sim,
        &format!(
            "\n[policy]\ndefault_strategy = \"blacklist\"\nblacklist_dir = \"{}\"\n",
            lists.path().display()
        ),
    );
    gw.wait_links(&[100], true, Duration::from_secs(20));

    let (st, v) = gw.send(100, "+491510000001", "hi");
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["code"], "blacklist", "{v}");
    let (st, v) = gw.send(100, "00491510000002", "hi");
    assert_eq!((st, v["code"].as_str()), (403, Some("blacklist")), "{v}");
    let (st, v) = gw.send(100, "+491510000003", "hi");
    assert_eq!(st, 200, "{v}");

    // CP2 asked by the request.
    let body = |text: &str| {
        serde_json::json!({"esme": 100, "source": "Test", "destination": "+491510000004",
            "message": text, "strategy": "cp2,blacklist"})
        .to_string()
    };
    let (st, v) = gw.post("/api/v1/sms/send", &body("same"));
    assert_eq!(st, 200, "{v}");
    let (st, v) = gw.post("/api/v1/sms/send", &body("same"));
    assert_eq!((st, v["code"].as_str()), (403, Some("duplicate")), "{v}");
    let (st, v) = gw.post(
        "/api/v1/sms/send",
        &serde_json::json!({"esme": 100, "source": "T", "destination": "+491510000005",
            "message": "x", "strategy": "cp9"})
        .to_string(),
    );
    assert_eq!(st, 422, "{v}");

    // The SMSC saw exactly the two admitted messages, never a blocked destination.
    assert!(wait_until(Duration::from_secs(10), || sim.submits_total() >= 2));
    std::thread::sleep(Duration::from_millis(300));
    let msgs = sim.messages(100);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let text = serde_json::to_string(&msgs).unwrap();
    assert!(
        !text.contains("491510000001") && !text.contains("491510000002"),
        "{text}"
    );
}

#[test]
fn mcp_service_answers_the_reference_api() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("lists");
    std::fs::create_dir(&lists).unwrap();
    std::fs::write(lists.join("l.csv"), "+33612345678\n").unwrap();
    let o = common::GatewayOptions::default();
    let (a, b) = common::write_configs(dir.path(), &o);
    let mut text = std::fs::read_to_string(&a).unwrap();
    text.push_str("\n[policy]\ndaily_cap = 1\nweekly_cap = 5\nblacklist_dir = \"lists\"\n");
    std::fs::write(&a, text).unwrap();
    let args: Vec<String> = vec![
        "mcp".into(),
        "--config".into(),
        a.display().to_string(),
        "--rules".into(),
        b.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let (_proc, line) = spawn(
        "mcp",
        &args,
        &[],
        "smsgw mcp listening",
        Duration::from_secs(30),
    );
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap();
    let base = format!("http://{addr}");
    let (st, body) = common::raw_http(&base, "GET", "/api/v1/health", b"");
    assert_eq!((st, body.as_str()), (200, "OK"));
    let ask = |strategy: &str, dest: &str, text: &str| {
        http(
            &base,
            "POST",
            "/api/v1/check",
            &serde_json::json!({"strategy": strategy, "destination": dest, "app_id": 1, "text": text})
                .to_string(),
        )
    };
    let (st, v) = ask("blacklist", "+33 6 12 34 56 78", "x");
    assert_eq!(st, 200);
    assert_eq!(v, serde_json::json!({"state": "blacklist", "pass": false}));
    let (_, v) = ask("cp1", "+4915199999999", "x");
    assert_eq!(v, serde_json::json!({"state": "ok", "pass": true}));
    let (_, v) = ask("cp1", "+4915199999999", "y");
    assert_eq!(v, serde_json::json!({"state": "daily_cp", "pass": false}));
    let (_, v) = ask("cp2", "+4915199999998", "y");
    assert_eq!(v["state"], "ok");
    let (_, v) = ask("cp2", "+4915199999998", "y");
    assert_eq!(v, serde_json::json!({"state": "duplicate", "pass": false}));
    let (st, v) = ask("cp7", "+4915199999998", "y");
    assert_eq!(st, 422, "{v}");
    let (st, v) = ask("cp1", "abc", "y");
    assert_eq!(st, 422, "{v}");
    let (st, m) = common::raw_http(&base, "GET", "/metrics", b"");
    assert_eq!(st, 200);
    assert!(
        m.contains("smsgw_policy_checks_total{state=\"daily_cp\"} 1"),
        "{m}"
    );
    assert!(m.contains("smsgw_policy_blacklist_numbers 1"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// `serve` asking a remote `smsgw mcp` (`[policy] remote_url`)

/// Starts `smsgw mcp` on a free port with `list` as its only blacklist file; returns the
/// process and its base URL.
fn start_mcp(dir: &std::path::Path, list: &str, listen: &str) -> (common::Proc, String) {
    let lists = dir.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(lists.join("l.csv"), list).unwrap();
    let (a, b) = common::write_configs(dir, &common::GatewayOptions::default());
    let mut text = std::fs::read_to_string(&a).unwrap();
    text.push_str("\n[policy]\nblacklist_dir = \"lists\"\n");
    std::fs::write(&a, text).unwrap();
    let args: Vec<String> = vec![
        "mcp".into(),
        "--config".into(),
        a.display().to_string(),
        "--rules".into(),
        b.display().to_string(),
        "--listen".into(),
        listen.into(),
    ];
    let (proc, line) = spawn(
        "mcp",
        &args,
        &[],
        "smsgw mcp listening",
        Duration::from_secs(30),
    );
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .to_string();
    (proc, format!("http://{addr}"))
}

/// Sends until the answer's status is `want` (each shard notices the outage on its own),
/// bounded in count and time; returns the last answer.
fn send_until(gw: &Gateway, to: &str, want: u16) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (0, serde_json::Value::Null);
    for i in 0..200 {
        last = gw.send(100, to, &format!("m{i}"));
        if last.0 == want || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    last
}

#[test]
fn gateway_asks_the_remote_mcp_and_fails_open_when_it_is_gone() {
    let sim = Sim::start(&[]);
    let mcp_dir = tempfile::tempdir().unwrap();
    let (mut mcp, base) = start_mcp(mcp_dir.path(), "+491510000001\n", "127.0.0.1:0");
    // The gateway has no list of its own: a 403 can only come from the remote service.
    let gw = gateway_with_policy(
        &sim,
        &format!(
            "\n[policy]\ndefault_strategy = \"blacklist\"\nremote_url = \"{base}\"\n\
             remote_timeout_ms = 1000\nremote_on_error = \"fail_open\"\n"
        ),
    );
    gw.wait_links(&[100], true, Duration::from_secs(20));

    let (st, v) = gw.send(100, "+491510000001", "hi");
    assert_eq!((st, v["code"].as_str()), (403, Some("blacklist")), "{v}");
    // National format normalised by the gateway, answered by the service.
    let (st, v) = gw.send(100, "00491510000001", "hi");
    assert_eq!((st, v["code"].as_str()), (403, Some("blacklist")), "{v}");
    let (st, v) = gw.send(100, "+491510000003", "hi");
    assert_eq!(st, 200, "{v}");
    // CP2 through the service: the text hash travels, the second identical text is refused.
    let body = serde_json::json!({"esme": 100, "source": "T", "destination": "+491510000004",
        "message": "same", "strategy": "cp2"})
    .to_string();
    let (st, v) = gw.post("/api/v1/sms/send", &body);
    assert_eq!(st, 200, "{v}");
    let (st, v) = gw.post("/api/v1/sms/send", &body);
    assert_eq!((st, v["code"].as_str()), (403, Some("duplicate")), "{v}");

    assert!(wait_until(Duration::from_secs(10), || sim.submits_total() >= 2));
    std::thread::sleep(Duration::from_millis(300));
    let msgs = sim.messages(100);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        !serde_json::to_string(&msgs)
            .unwrap()
            .contains("491510000001"),
        "{msgs:?}"
    );

    // Service gone: fail_open lets messages through, also the blacklisted number (that is
    // what fail_open means), without waiting for the timeout each time.
    mcp.kill();
    let started = Instant::now();
    let (st, v) = send_until(&gw, "+491510000001", 200);
    assert_eq!(st, 200, "{v}");
    for _ in 0..10 {
        let (st, v) = gw.send(100, "+491510000005", "x");
        assert_eq!(st, 200, "{v}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Back on the same address: each shard's next probe (within a second) finds it again.
    let listen = base.trim_start_matches("http://").to_string();
    let (_mcp, _) = start_mcp(mcp_dir.path(), "+491510000001\n", &listen);
    let (st, v) = send_until(&gw, "+491510000001", 403);
    assert_eq!((st, v["code"].as_str()), (403, Some("blacklist")), "{v}");
    // That was one shard; each probes on its own, at most once per PROBE_INTERVAL (1 s), and
    // meanwhile keeps failing open. Wait (bounded) until a whole round, spread over the
    // shards, is refused: then every shard has found the service again.
    let round_refused = || {
        (0..10).all(|_| {
            let (st, v) = gw.send(100, "+491510000001", "x");
            st == 403 && v["code"] == "blacklist"
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), round_refused),
        "some shard still fails open 5 s after the service came back"
    );
    for _ in 0..10 {
        let (st, v) = gw.send(100, "+491510000001", "x");
        assert_eq!((st, v["code"].as_str()), (403, Some("blacklist")), "{v}");
    }
}

#[test]
fn gateway_fails_closed_when_the_remote_mcp_is_gone() {
    let sim = Sim::start(&[]);
    let mcp_dir = tempfile::tempdir().unwrap();
    let (mut mcp, base) = start_mcp(mcp_dir.path(), "+491510000001\n", "127.0.0.1:0");
    let gw = gateway_with_policy(
        &sim,
        &format!(
            "\n[policy]\ndefault_strategy = \"blacklist\"\nremote_url = \"{base}\"\n\
             remote_timeout_ms = 1000\nremote_on_error = \"fail_closed\"\n"
        ),
    );
    gw.wait_links(&[100], true, Duration::from_secs(20));
    let (st, v) = gw.send(100, "+491510000002", "hi");
    assert_eq!(st, 200, "{v}");

    mcp.kill();
    let (st, v) = send_until(&gw, "+491510000002", 503);
    assert_eq!((st, v["code"].as_str()), (503, Some("overloaded")), "{v}");
    // Every shard refuses (none passes a message unchecked).
    for _ in 0..10 {
        let (st, v) = gw.send(100, "+491510000002", "x");
        assert_eq!((st, v["code"].as_str()), (503, Some("overloaded")), "{v}");
    }
    // A message with no strategy needs no check and still goes through.
    let (st, v) = gw.post(
        "/api/v1/sms/send",
        &serde_json::json!({"esme": 100, "source": "T", "destination": "+491510000006",
            "message": "x", "strategy": "none"})
        .to_string(),
    );
    assert_eq!(st, 200, "{v}");
}
