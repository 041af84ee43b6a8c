//! The Aerospike state backend against a real server: the shared conformance suite, then what
//! only a shared store has to get right (two store instances = two gateway replicas).
//!
//! Runs only when `AEROSPIKE_HOSTS` is set (e.g. `127.0.0.1:3000`); otherwise every test prints
//! a `SKIPPED:` line to stderr and passes. How to start a server for it:
//! `docs/operations.md#aerospike`. `AEROSPIKE_NAMESPACE` (default `test`) picks the namespace.
//! Every id is scoped by a random run prefix, so runs against one persistent server do not
//! interfere; each test has its own sets (`smsgw_t_<test>_msg` / `smsgw_t_<test>_rcpt`) so that
//! one test's expiry sweep cannot take another's records (tests run in parallel). Do not run
//! two test processes against one server at the same time.

mod common;

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GatewayOptions, LinkSpec, Sim, http, wait_until};

use smsgw::state::aerospike::{AerospikeConfig, AerospikeStore};
use smsgw::state::suite::{self, SuiteHarness};
use smsgw::state::{
    CreateOutcome, Encoding, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome,
    StateError, StateStore, Status, UpdateOutcome, unix_ms,
};

/// Every test has its own sets (`smsgw_t_<test>_msg` / `_rcpt`): tests of one binary run in
/// parallel, and an expiry sweep in one must not take another's records.
fn set_prefix(test: &str) -> String {
    format!("smsgw_t_{test}_")
}

/// The seed hosts, or `None` after printing the skip notice.
fn hosts(test: &str) -> Option<String> {
    match std::env::var("AEROSPIKE_HOSTS") {
        Ok(h) if !h.trim().is_empty() => Some(h),
        _ => {
            // Straight to the stderr handle: libtest captures `eprintln!`, and a skip that
            // nobody sees would pass for a test that ran.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: AEROSPIKE_HOSTS not set (see docs/operations.md#aerospike)"
            );
            None
        }
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    hosts: String,
    prefix: String,
}

impl Harness {
    fn new(hosts: String, test: &str) -> Harness {
        Harness {
            // The client's side runtime, like `smsgw serve`'s.
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
            hosts,
            prefix: set_prefix(test),
        }
    }

    fn config(&self, ttl_secs: u64) -> AerospikeConfig {
        AerospikeConfig {
            hosts: self.hosts.clone(),
            namespace: std::env::var("AEROSPIKE_NAMESPACE").unwrap_or_else(|_| "test".into()),
            set_prefix: self.prefix.clone(),
            ttl_secs,
            ..AerospikeConfig::default()
        }
    }

    fn store(&self, cfg: AerospikeConfig) -> Arc<AerospikeStore> {
        AerospikeStore::connect_blocking(cfg, self.rt.handle().clone())
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.hosts))
    }
}

impl SuiteHarness for Harness {
    fn open(&self, ttl_secs: u64) -> Arc<dyn StateStore> {
        self.store(self.config(ttl_secs))
    }
}

/// Awaits on a runtime that is not tokio (the shards' monoio): the store's futures must not
/// need the runtime that completes them.
use smsgw::state::suite::monoio_block_on;

fn run_prefix() -> String {
    format!("as-{:016x}", fastrand::u64(..))
}

fn record(app: u64, tx: &str, parts: u16) -> MessageRecord {
    MessageRecord::new_accepted(
        MessageKey::new(app, tx),
        1,
        "Sender",
        "+4512345678",
        Encoding::Gsm7,
        "hello",
        parts,
        unix_ms(),
    )
}

fn delivered() -> ReceiptInfo {
    ReceiptInfo {
        status: Status::Delivered,
        stat: "DELIVRD".into(),
        err: None,
        done_at_ms: None,
        received_at_ms: unix_ms(),
    }
}

#[test]
fn conformance_suite() {
    let Some(h) = hosts("conformance_suite") else {
        return;
    };
    let h = Harness::new(h, "suite");
    monoio_block_on(suite::run_all(&h));
}

#[test]
fn a_receipt_on_another_replica_finds_its_message() {
    let Some(h) = hosts("a_receipt_on_another_replica_finds_its_message") else {
        return;
    };
    let h = Harness::new(h, "replica");
    let (a, b) = (h.open(3600), h.open(3600));
    let p = run_prefix();
    let app = fastrand::u64(1 << 40..1 << 50);
    let link = fastrand::u32(1_000_000..2_000_000);
    monoio_block_on(async {
        let key = MessageKey::new(app, format!("{p}-x"));
        assert!(matches!(
            a.create(record(app, &key.transaction_id, 2)).await,
            Ok(CreateOutcome::Created(_))
        ));
        let ids = [format!("{p}-s0"), format!("{p}-s1")];
        let up = a
            .update(
                key.clone(),
                vec![
                    PartUpdate::Submitted {
                        index: 0,
                        link_id: link,
                        smsc_message_id: ids[0].clone(),
                    },
                    PartUpdate::Submitted {
                        index: 1,
                        link_id: link,
                        smsc_message_id: ids[1].clone(),
                    },
                ],
                unix_ms(),
            )
            .await
            .expect("update");
        assert!(matches!(up, UpdateOutcome::Updated { changed: true, .. }));
        // B never saw this message: it finds it through the shared receipt index.
        assert_eq!(
            b.find_by_smsc_id(link, ids[1].clone()).await.expect("find"),
            Some((key.clone(), 1))
        );
        match b
            .apply_receipt(link, ids[0].clone(), delivered())
            .await
            .expect("receipt")
        {
            ReceiptOutcome::Applied(r) => assert_eq!(r.parts[0].status, Status::Delivered),
            other => panic!("{other:?}"),
        }
        // The duplicate arrives on A: harmless.
        assert_eq!(
            a.apply_receipt(link, ids[0].clone(), delivered())
                .await
                .expect("receipt"),
            ReceiptOutcome::Duplicate
        );
        match a
            .apply_receipt(link, ids[1].clone(), delivered())
            .await
            .expect("receipt")
        {
            ReceiptOutcome::Applied(r) => assert_eq!(r.status, Status::Delivered),
            other => panic!("{other:?}"),
        }
        let seen_by_b = b.get(key).await.expect("get").expect("present");
        assert_eq!(seen_by_b.status, Status::Delivered);
    });
}

#[test]
fn concurrent_creates_on_two_replicas_create_once() {
    let Some(h) = hosts("concurrent_creates_on_two_replicas_create_once") else {
        return;
    };
    let h = Harness::new(h, "create");
    let (a, b) = (h.open(3600), h.open(3600));
    let p = run_prefix();
    let app = fastrand::u64(1 << 40..1 << 50);
    monoio_block_on(async {
        for i in 0..50 {
            let tx = format!("{p}-{i}");
            // Both futures are in flight before either is awaited.
            let fa = a.create(record(app, &tx, 1));
            let fb = b.create(record(app, &tx, 1));
            let (ra, rb) = (fa.await.expect("a"), fb.await.expect("b"));
            let created = [&ra, &rb]
                .iter()
                .filter(|o| matches!(o, CreateOutcome::Created(_)))
                .count();
            assert_eq!(created, 1, "{tx}: {ra:?} / {rb:?}");
            let (CreateOutcome::Created(c) | CreateOutcome::Exists(c)) = &ra;
            let (CreateOutcome::Created(d) | CreateOutcome::Exists(d)) = &rb;
            assert_eq!(c, d, "both answer the one stored record");
        }
    });
}

#[test]
fn expire_due_on_two_replicas_returns_each_record_once() {
    let Some(h) = hosts("expire_due_on_two_replicas_returns_each_record_once") else {
        return;
    };
    let h = Harness::new(h, "expire");
    let (a, b) = (h.open(3600), h.open(3600));
    let p = run_prefix();
    let app = fastrand::u64(1 << 40..1 << 50);
    let link = fastrand::u32(1_000_000..2_000_000);
    let n = 60;
    monoio_block_on(async {
        let mut want = HashSet::new();
        for i in 0..n {
            let tx = format!("{p}-{i}");
            a.create(record(app, &tx, 1)).await.expect("create");
            if i % 2 == 0 {
                a.update(
                    MessageKey::new(app, &tx),
                    vec![PartUpdate::Submitted {
                        index: 0,
                        link_id: link,
                        smsc_message_id: format!("{p}-s{i}"),
                    }],
                    unix_ms(),
                )
                .await
                .expect("update");
            }
            want.insert(tx);
        }
        // One final record: never expired.
        let fin = format!("{p}-final");
        a.create(record(app, &fin, 1)).await.expect("create");
        a.update(
            MessageKey::new(app, &fin),
            vec![PartUpdate::AllPending {
                status: Status::Failed,
                error_code: None,
            }],
            unix_ms(),
        )
        .await
        .expect("update");

        // As if the TTL had passed; both replicas sweep at once, in small pages.
        let later = unix_ms() + 3_700_000;
        let mut got: Vec<String> = Vec::new();
        for _ in 0..10_000 {
            let fa = a.expire_due(later, 7);
            let fb = b.expire_due(later, 7);
            let (ra, rb) = (fa.await.expect("a"), fb.await.expect("b"));
            if ra.is_empty() && rb.is_empty() {
                break;
            }
            for r in ra.into_iter().chain(rb) {
                assert_eq!(r.status, Status::Expired);
                if r.app_id == app {
                    got.push(r.transaction_id);
                }
            }
        }
        let unique: HashSet<String> = got.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "a record was expired twice: {got:?}"
        );
        assert_eq!(unique, want);
        let r = a
            .get(MessageKey::new(app, &fin))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(r.status, Status::Failed);
    });
}

#[test]
fn beyond_max_in_flight_ops_are_refused_at_once() {
    let Some(h) = hosts("beyond_max_in_flight_ops_are_refused_at_once") else {
        return;
    };
    let h = Harness::new(h, "inflight");
    let s = h.store(AerospikeConfig {
        max_in_flight: 2,
        ..h.config(3600)
    });
    let app = fastrand::u64(1 << 40..1 << 50);
    let futs: Vec<_> = (0..50)
        .map(|i| s.get(MessageKey::new(app, format!("nope-{i}"))))
        .collect();
    let results = monoio_block_on(async {
        let mut out = Vec::new();
        for f in futs {
            out.push(f.await);
        }
        out
    });
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(StateError::Overloaded)))
        .count();
    assert!(overloaded >= 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(None) | Err(StateError::Overloaded))),
        "{results:?}"
    );
    // Once they are done, permits are back.
    assert_eq!(s.op_stats().1, 0);
    assert!(
        monoio_block_on(s.flush()).is_ok(),
        "flush with nothing in flight"
    );
}

#[test]
fn an_unreachable_cluster_fails_within_the_connect_bound() {
    // Needs no server: nothing listens on port 1. Runs always.
    let h = Harness::new("127.0.0.1:1".into(), "none");
    let t = std::time::Instant::now();
    let r = AerospikeStore::connect_blocking(
        AerospikeConfig {
            connect_timeout_ms: 300,
            ..h.config(3600)
        },
        h.rt.handle().clone(),
    );
    assert!(
        matches!(r, Err(StateError::Unavailable(_))),
        "{:?}",
        r.err()
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(3));
}

/// The test configs of `tests/common` switched to the Aerospike backend at `hosts`.
fn aerospike_configs(
    dir: &Path,
    o: &GatewayOptions,
    hosts: &str,
    prefix: &str,
) -> (PathBuf, PathBuf) {
    let (a, b) = common::write_configs(dir, o);
    let text = std::fs::read_to_string(&a).unwrap();
    assert!(text.contains("[state]\n"), "{text}");
    let ns = std::env::var("AEROSPIKE_NAMESPACE").unwrap_or_else(|_| "test".into());
    let text = text.replacen("[state]\n", "[state]\nbackend = \"aerospike\"\n", 1)
        + &format!(
            "\n[state.aerospike]\nhosts = \"{hosts}\"\nnamespace = \"{ns}\"\nset_prefix = \"{prefix}\"\nconnect_timeout_ms = 2000\n"
        );
    std::fs::write(&a, text).unwrap();
    (a, b)
}

fn serve_args(a: &Path, b: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--config".into(),
        a.display().to_string(),
        "--rules".into(),
        b.display().to_string(),
    ]
}

#[test]
fn serve_refuses_to_start_without_its_cluster() {
    // Needs no server: nothing listens on port 1, so `serve` must exit with an error naming
    // the store (not hang, not fall back to an untracked mode). Runs always.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = aerospike_configs(
        dir.path(),
        &GatewayOptions::default(),
        "127.0.0.1:1",
        &set_prefix("none"),
    );
    let mut child = std::process::Command::new(common::BIN)
        .args(serve_args(&a, &b))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn smsgw");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve kept running without its Aerospike cluster");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "exit {status:?}; stderr: {err}");
    assert!(
        err.contains("state store") && err.contains("aerospike"),
        "stderr does not name the store: {err}"
    );
}

#[test]
fn two_gateways_share_state_on_aerospike() {
    let Some(hosts) = hosts("two_gateways_share_state_on_aerospike") else {
        return;
    };
    let sim = Sim::start(&[]);
    let o = GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..GatewayOptions::default()
    };
    let start = |dir: &Path| {
        let (a, b) = aerospike_configs(dir, &o, &hosts, &set_prefix("gw"));
        let (proc, line) = common::spawn(
            "gw",
            &serve_args(&a, &b),
            &[],
            "smsgw listening",
            Duration::from_secs(30),
        );
        (proc, common::http_url_of(&line))
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_ga, url_a) = start(da.path());
    let (_gb, url_b) = start(db.path());
    let links_up =
        |url: &str| wait_until(Duration::from_secs(20), || common::link_connected(url, 100));
    assert!(links_up(&url_a) && links_up(&url_b), "links not up");
    let tx = run_prefix();
    let body = serde_json::json!({
        "esme": 100, "source": "Test", "destination": "+4512345678",
        "message": "shared state", "transaction_id": tx,
    })
    .to_string();
    let (st, v) = http(&url_a, "POST", "/api/v1/sms/send", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], false, "{v}");
    // The same id on the other replica: the stored outcome, never a second send.
    let (st, v) = http(&url_b, "POST", "/api/v1/sms/send", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], true, "{v}");
    // The receipt reaches whichever bind the simulator picks; both replicas see the result.
    for url in [&url_a, &url_b] {
        let ok = wait_until(Duration::from_secs(20), || {
            http(url, "GET", &format!("/api/v1/sms/{tx}"), "").1["status"] == "delivered"
        });
        assert!(
            ok,
            "{url}: {}",
            http(url, "GET", &format!("/api/v1/sms/{tx}"), "").1
        );
    }
    let sent = sim
        .messages(100_000)
        .iter()
        .filter(|m| m.to_string().contains("shared state"))
        .count();
    assert_eq!(sent, 1, "sent {sent} times");
}
