//! Batch submit (`POST /api/v1/sms/send-batch`) end to end: the real `smsgw serve` binary
//! against a real `smsgw smsc-sim` on loopback, on both drivers (like `tests/e2e.rs`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Gateway, GatewayOptions, LinkSpec, Sim, raw_http};
use serde_json::{Value, json};

const UP: Duration = Duration::from_secs(20);
const BATCH: &str = "/api/v1/sms/send-batch";

fn one_link_gateway(sim: &Sim, legacy: bool) -> Gateway {
    let gw = Gateway::start(GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        legacy_driver: legacy,
        ..Default::default()
    });
    gw.wait_links(&[100], true, UP);
    gw
}

fn item(to: &str, text: &str, txid: &str) -> Value {
    json!({"esme": 100, "source": "Test", "destination": to, "message": text, "transaction_id": txid})
}

/// Good and bad items in one batch: one result per item, in order, each with its own
/// outcome; a duplicate transaction_id inside the batch is sent once.
fn mixed_items_in_order(legacy: bool) {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, legacy);
    let long: String = "Batch multipart text. ".chars().cycle().take(300).collect();
    let body = json!({"messages": [
        item("+4915100000001", "first", "b-1"),
        {"esme": 100, "source": "Test", "message": "no destination", "transaction_id": "b-2"},
        item("+4915100000003", &long, "b-3"),
        {"esme": -1, "source": "Test", "destination": "+1", "message": "x"},
        item("+4915100000005", "", "b-5"),
        item("+4915100000006", "twice", "b-dup"),
        item("+4915100000006", "twice", "b-dup"),
        item("not a number!", "x", "b-8"),
        item("+4915100000009", "last", "b-9"),
    ]});
    let (st, v) = gw.post(BATCH, &body.to_string());
    assert_eq!(st, 200, "{v}");
    let r = v["results"].as_array().expect("results array");
    assert_eq!(r.len(), 9, "{v}");

    let ok = |i: usize| {
        assert_eq!(r[i]["success"], true, "item {i}: {}", r[i]);
        assert_eq!(r[i]["status"], "submitted", "item {i}: {}", r[i]);
    };
    let err = |i: usize, code: &str| {
        assert_eq!(r[i]["success"], false, "item {i}: {}", r[i]);
        assert_eq!(r[i]["code"], code, "item {i}: {}", r[i]);
        assert!(
            !r[i]["error"].as_str().unwrap_or("").is_empty(),
            "item {i}: {}",
            r[i]
        );
    };
    ok(0);
    assert_eq!(r[0]["transaction_id"], "b-1");
    err(1, "missing_field");
    ok(2);
    assert_eq!(r[2]["transaction_id"], "b-3");
    assert_eq!(r[2]["parts"], 2, "{}", r[2]);
    err(3, "invalid_field");
    err(4, "empty_message");
    err(7, "invalid_address");
    ok(8);
    assert_eq!(r[8]["transaction_id"], "b-9");
    // The same transaction_id twice in one batch: one send, one duplicate answer.
    assert_eq!(r[5]["transaction_id"], "b-dup");
    assert_eq!(r[6]["transaction_id"], "b-dup");
    let dups: Vec<bool> = [5, 6]
        .iter()
        .map(|&i| r[i]["duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(
        dups.iter().filter(|d| **d).count(),
        1,
        "exactly one duplicate: {} / {}",
        r[5],
        r[6]
    );
    assert_eq!(v["accepted"], 5, "{v}");
    assert_eq!(v["failed"], 4, "{v}");
    // Each refused item is counted by its reason, like a refused single send.
    let (st, text) = common::raw_http(&gw.url, "GET", "/metrics", b"");
    assert_eq!(st, 200, "{text}");
    for reason in [
        "missing_field",
        "invalid_field",
        "empty_message",
        "invalid_address",
    ] {
        let want = format!("smsgw_messages_rejected_total{{reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
    }

    // The SMSC saw 1 + 2 + 1 + 1 parts: nothing for the refused items, the duplicate once.
    assert!(
        common::wait_until(Duration::from_secs(5), || sim.messages(100).len() >= 5),
        "{:?}",
        sim.messages(100)
    );
    std::thread::sleep(Duration::from_millis(200));
    let msgs = sim.messages(100);
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    let dests: BTreeSet<&str> = msgs
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert!(!dests.contains("4915100000005"));
    // Every accepted item is in the store, delivered once the receipts came in.
    for id in ["b-1", "b-3", "b-dup", "b-9"] {
        gw.wait_status(id, "delivered", Duration::from_secs(10));
    }
}

/// A full-size batch: larger than `server.max_body_bytes` (16 KiB in the tests), accepted on
/// the batch path only; every item submitted once.
fn large_batch_and_body_bounds(legacy: bool) {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, legacy);
    let n = 300;
    let messages: Vec<Value> = (0..n)
        .map(|i| {
            item(
                &format!("+49151{i:08}"),
                "Bulk text for a batch item.",
                &format!("big-{i}"),
            )
        })
        .collect();
    let body = json!({ "messages": messages }).to_string();
    assert!(body.len() > 16 * 1024, "body {} bytes", body.len());
    let (st, v) = gw.post(BATCH, &body);
    assert_eq!(st, 200, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), n);
    for (i, x) in r.iter().enumerate() {
        assert_eq!(x["success"], true, "item {i}: {x}");
        assert_eq!(x["transaction_id"], format!("big-{i}"), "order");
    }
    assert_eq!(v["accepted"], n);
    assert!(
        common::wait_until(Duration::from_secs(10), || sim.submits_total() >= n as u64),
        "sim saw {}",
        sim.submits_total()
    );

    // The same body on the single-send path is over that path's bound.
    let (st, text) = raw_http(&gw.url, "POST", "/api/v1/sms/send", body.as_bytes());
    assert_eq!(st, 413, "{text}");
}

/// Envelope errors are the request's 4xx; nothing is sent.
fn malformed_envelopes(legacy: bool) {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, legacy);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_json"),
        ("".into(), 400, "invalid_json"),
        ("{}".into(), 422, "missing_field"),
        (r#"{"messages": 5}"#.into(), 422, "invalid_field"),
        (r#"{"messages": []}"#.into(), 422, "invalid_field"),
        (
            json!({"messages": vec![item("+1", "x", "t"); 1001]}).to_string(),
            422,
            "invalid_field",
        ),
    ];
    for (body, status, code) in cases {
        let (st, v) = gw.post(BATCH, &body);
        assert_eq!(st, status, "{body:.80}: {v}");
        assert_eq!(v["code"], code, "{body:.80}: {v}");
    }
    let (st, text) = raw_http(&gw.url, "GET", BATCH, b"");
    assert_eq!(st, 405, "{text}");
    assert_eq!(sim.submits_total(), 0);
}

/// Both drivers for every scenario.
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod io_uring_or_default {
            $(#[test] fn $name() { super::$name(super::common::legacy_from_env()); })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name(true); })*
        }
    };
}

on_both_drivers!(
    mixed_items_in_order,
    large_batch_and_body_bounds,
    malformed_envelopes,
);
