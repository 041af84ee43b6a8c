//! CDR export through the real binaries: `smsgw serve` (local CDR sink in the test's temp dir)
//! against `smsgw smsc-sim`. One CDR per message, written when the message becomes final
//! (receipt or rejected submit), and a graceful SIGTERM writes the CDRs still in the batch.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Gateway, GatewayOptions, LinkSpec, Sim, wait_until};
use serde_json::Value;

const UP: Duration = Duration::from_secs(20);

/// Every CDR in the finished `.ndjson.gz` files under `dir`.
fn cdrs(dir: &Path) -> Vec<Value> {
    common::cdr_lines(dir)
}

/// CDRs by transaction id; panics on a second CDR for the same message.
fn by_txid(records: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for r in records {
        let id = r["transaction_id"]
            .as_str()
            .expect("transaction_id")
            .to_owned();
        if let Some(first) = map.insert(id.clone(), r.clone()) {
            panic!("two CDRs for {id}: {first} and {r}");
        }
    }
    map
}

/// Waits (bounded) until `n` CDRs are on disk, then a bit longer (several flush intervals) so
/// a duplicate would show up too.
fn wait_cdrs(dir: &Path, n: usize) -> BTreeMap<String, Value> {
    let ok = wait_until(Duration::from_secs(15), || cdrs(dir).len() >= n);
    assert!(ok, "expected {n} CDRs, found {:?}", cdrs(dir));
    std::thread::sleep(Duration::from_millis(800));
    let all = cdrs(dir);
    assert_eq!(all.len(), n, "exactly one CDR per message: {all:?}");
    by_txid(all)
}

fn send(gw: &Gateway, txid: &str) -> (u16, Value) {
    let body = serde_json::json!({
        "esme": 100, "source": "Test", "destination": "+4915112345678",
        "message": "cdr test", "transaction_id": txid,
    });
    gw.post("/api/v1/sms/send", &body.to_string())
}

#[test]
fn delivered_and_rejected_messages_get_one_cdr_each() {
    let sim = Sim::start(&[]);
    let gw = Gateway::start(GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..Default::default()
    });
    gw.wait_links(&[100], true, UP);
    let dir = gw.dir.path().join("cdr");

    const N: usize = 20;
    let txids: Vec<String> = (0..N).map(|i| format!("cdr-ok-{i}")).collect();
    for t in &txids {
        let (st, v) = send(&gw, t);
        assert_eq!(st, 200, "{v}");
    }
    for t in &txids {
        gw.wait_status(t, "delivered", Duration::from_secs(10));
    }
    let got = wait_cdrs(&dir, N);
    for t in &txids {
        let c = got
            .get(t)
            .unwrap_or_else(|| panic!("no CDR for {t}: {got:?}"));
        assert_eq!(c["status"], "delivered", "{c}");
        assert_eq!(c["closed_by"], "final", "{c}");
        assert_eq!(c["instance"], "test", "{c}");
        assert_eq!(c["link_id"], 100, "{c}");
        assert_eq!(c["parts_count"], 1, "{c}");
        let p = &c["parts"][0];
        assert!(
            p["smsc_message_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{c}"
        );
        assert_eq!(p["receipt_stat"], "DELIVRD", "{c}");
        assert!(c.get("text").is_none() && c.get("message").is_none(), "{c}");
    }

    // The SMSC rejects every submit with ESME_RINVDSTADR (0x0B): the message is final at the
    // submit answer, so its CDR comes from the submit path, not from a receipt.
    sim.set_faults(r#"{"throttle_percent": 100, "throttle_status": 11}"#);
    let (st, v) = send(&gw, "cdr-rej");
    assert_ne!(st, 200, "rejected submit must not answer 200: {v}");
    let got = wait_cdrs(&dir, N + 1);
    let c = &got["cdr-rej"];
    assert_eq!(c["status"], "rejected", "{c}");
    assert_eq!(c["closed_by"], "final", "{c}");
    assert_eq!(c["parts"][0]["status"], "rejected", "{c}");
    assert_eq!(c["parts"][0]["error_code"], 11, "{c}");
    assert_eq!(c["parts"][0]["smsc_message_id"], Value::Null, "{c}");

    let (st, text) = common::raw_http(&gw.url, "GET", "/metrics", b"");
    assert_eq!(st, 200, "{text}");
    let want = format!("smsgw_cdr_records_total {}", N + 1);
    assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
    assert!(
        text.lines().any(|l| l == "smsgw_cdr_refused_total 0"),
        "{text}"
    );
}

/// One link to `sim`, CDR batches open for the whole test (see `keep_cdr_batches_open`).
fn configs_with_open_batches(sim: &Sim) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, rules) = common::write_configs(
        tmp.path(),
        &GatewayOptions {
            links: vec![LinkSpec::new(100, sim.smpp_port)],
            ..Default::default()
        },
    );
    common::keep_cdr_batches_open(&cfg);
    (tmp, cfg, rules)
}

#[test]
fn sigterm_writes_pending_cdrs() {
    let sim = Sim::start(&[]);
    // A flush interval far beyond the test: only the shutdown flush can write the batch.
    let (tmp, cfg, rules) = configs_with_open_batches(&sim);
    let mut gw = Gateway::spawn_in(tmp, &cfg, &rules);
    gw.wait_links(&[100], true, UP);
    let dir = gw.dir.path().join("cdr");

    let txids: Vec<String> = (0..3).map(|i| format!("cdr-term-{i}")).collect();
    for t in &txids {
        let (st, v) = send(&gw, t);
        assert_eq!(st, 200, "{v}");
    }
    for t in &txids {
        gw.wait_status(t, "delivered", Duration::from_secs(10));
    }
    assert!(cdrs(&dir).is_empty(), "batch closed before shutdown");
    let status = gw
        .proc
        .terminate(Duration::from_secs(10))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let got = by_txid(cdrs(&dir));
    assert_eq!(got.len(), txids.len(), "{got:?}");
    for t in &txids {
        assert_eq!(got[t]["status"], "delivered", "{}", got[t]);
    }
}

/// The open batch is journalled: a SIGKILL (no shutdown flush) loses none of its CDRs; the
/// next start places them under the batch's own key, and its own shutdown adds no duplicate.
/// Without the journal the batch (flush interval 1 h here) died with the process.
#[test]
fn sigkill_loses_no_cdr_of_the_open_batch() {
    let sim = Sim::start(&[]);
    let (tmp, cfg, rules) = configs_with_open_batches(&sim);
    let start = |tmp: tempfile::TempDir| {
        let gw = Gateway::spawn_in(tmp, &cfg, &rules);
        gw.wait_links(&[100], true, UP);
        gw
    };
    let mut gw = start(tmp);
    let dir = gw.dir.path().join("cdr");
    let txids: Vec<String> = (0..5).map(|i| format!("cdr-kill-{i}")).collect();
    for t in &txids {
        let (st, v) = send(&gw, t);
        assert_eq!(st, 200, "{v}");
    }
    for t in &txids {
        gw.wait_status(t, "delivered", Duration::from_secs(10));
    }
    // The CDR is emitted right after the receipt's state write: give the writer a moment.
    std::thread::sleep(Duration::from_millis(300));
    assert!(cdrs(&dir).is_empty(), "batch closed before the kill");
    gw.proc.kill();
    assert!(cdrs(&dir).is_empty(), "nothing placed by a killed process");

    let tmp = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let mut gw = start(tmp);
    let got = wait_cdrs(&dir, txids.len());
    for t in &txids {
        assert_eq!(got[t]["status"], "delivered", "{}", got[t]);
    }
    let (st, text) = common::raw_http(&gw.url, "GET", "/metrics", b"");
    assert_eq!(st, 200, "{text}");
    let want = format!("smsgw_cdr_journal_recovered_records_total {}", txids.len());
    assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
    assert!(
        text.lines()
            .any(|l| l == "smsgw_cdr_journal_failures_total 0"),
        "{text}"
    );
    let status = gw
        .proc
        .terminate(Duration::from_secs(10))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    // by_txid panics on a second CDR for one message.
    assert_eq!(by_txid(cdrs(&dir)).len(), txids.len());
    let journals: Vec<_> = std::fs::read_dir(dir.join(".journal"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(journals.is_empty(), "journals left: {journals:?}");
}
