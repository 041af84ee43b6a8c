//! End to end: the real `smsgw serve` binary against real `smsgw smsc-sim` processes on
//! loopback. Every scenario runs twice: on the default driver (io_uring where the kernel
//! allows it) and with `MONOIO_FORCE_LEGACY_DRIVER=1` (epoll).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Gateway, GatewayOptions, LinkSpec, Sim, raw_http};
use serde_json::Value;

const UP: Duration = Duration::from_secs(20);

fn one_link_gateway(sim: &Sim, legacy: bool) -> Gateway {
    let gw = Gateway::start(GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        legacy_driver: legacy,
        ..Default::default()
    });
    gw.wait_links(&[100], true, UP);
    gw
}

fn send_receipt_delivered(legacy: bool) {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, legacy);
    let (st, v) = gw.send(100, "+4915112345678", "Hello from smsgw");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["parts"], 1);
    assert_eq!(v["encoding"], "gsm7");
    assert_eq!(v["status"], "submitted");
    let ids = v["message_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    assert!(!ids[0].as_str().unwrap().is_empty());
    let txid = v["transaction_id"].as_str().unwrap().to_string();

    let rec = gw.wait_status(&txid, "delivered", Duration::from_secs(10));
    assert_eq!(rec["parts"][0]["status"], "delivered", "{rec}");
    assert_eq!(rec["parts"][0]["receipt"]["stat"], "DELIVRD", "{rec}");
    assert_eq!(rec["destination"], "+4915112345678");

    // The simulator saw exactly that message.
    let msgs = sim.messages(10);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "Hello from smsgw");
    assert_eq!(msgs[0]["destination"], "4915112345678");
    assert_eq!(msgs[0]["source"], "Test");
    assert_eq!(msgs[0]["registered_delivery"], 1);

    // A retried transaction_id does not send again.
    let body = serde_json::json!({"esme": 100, "source": "Test", "destination": "+1", "message": "x", "transaction_id": txid});
    let (st, again) = gw.post("/api/v1/sms/send", &body.to_string());
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["status"], "delivered");
    assert_eq!(
        sim.messages(10).len(),
        1,
        "duplicate must not reach the SMSC"
    );
}

/// The text of one received part: the payload after the UDH, decoded per data_coding.
fn part_text(p: &Value) -> String {
    let hex = p["payload_hex"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let body = if p["esm_class"].as_u64().unwrap() & 0x40 != 0 {
        &bytes[1 + bytes[0] as usize..]
    } else {
        &bytes[..]
    };
    smsgw::smpp::text::decode(body, p["data_coding"].as_u64().unwrap() as u8).unwrap()
}

/// The parts the simulator received for one destination, in arrival order.
fn parts_for(sim: &Sim, destination: &str) -> Vec<Value> {
    sim.messages(1000)
        .into_iter()
        .filter(|m| m["destination"] == destination)
        .collect()
}

fn multipart_gsm7_and_ucs2(legacy: bool) {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, legacy);

    // 200 GSM7 characters with an extension character (2 septets): 201 septets → 2 parts.
    let gsm_text: String = "€".to_string() + &"a".repeat(199);
    let (st, v) = gw.send(100, "111", &gsm_text);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["parts"].as_u64(), v["encoding"].as_str()),
        (Some(2), Some("gsm7")),
        "{v}"
    );
    assert_eq!(v["message_ids"].as_array().unwrap().len(), 2);
    let parts = parts_for(&sim, "111");
    assert_eq!(parts.len(), 2);
    let mut text = String::new();
    let refs: BTreeSet<u64> = parts
        .iter()
        .map(|p| p["udh"]["concat"]["ref"].as_u64().unwrap())
        .collect();
    assert_eq!(refs.len(), 1, "one reference for all parts: {parts:?}");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["data_coding"], 0);
        assert_eq!(p["esm_class"].as_u64().unwrap() & 0x40, 0x40, "UDHI set");
        assert_eq!(p["udh"]["concat"]["total"], 2);
        assert_eq!(p["udh"]["concat"]["seq"], i as u64 + 1);
        text.push_str(&part_text(p));
    }
    assert_eq!(text, gsm_text);

    // 100 Cyrillic characters: UCS2, 67 per part → 2 parts.
    let ucs_text: String = "Привет мир ".repeat(10)[..].chars().take(100).collect();
    let (st, v) = gw.send(100, "222", &ucs_text);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["parts"].as_u64(), v["encoding"].as_str()),
        (Some(2), Some("ucs2")),
        "{v}"
    );
    let parts = parts_for(&sim, "222");
    assert_eq!(parts.len(), 2);
    let mut text = String::new();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["data_coding"], 8);
        assert_eq!(p["udh"]["concat"]["total"], 2);
        assert_eq!(p["udh"]["concat"]["seq"], i as u64 + 1);
        text.push_str(&part_text(p));
    }
    assert_eq!(text, ucs_text);
    let txid = v["transaction_id"].as_str().unwrap();
    let rec = gw.wait_status(txid, "delivered", Duration::from_secs(10));
    assert_eq!(rec["parts"].as_array().unwrap().len(), 2);
}

fn swrr_exact_distribution(legacy: bool) {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&[])).collect();
    let links: Vec<LinkSpec> = sims
        .iter()
        .enumerate()
        .map(|(i, s)| LinkSpec::new(1 + i as u32, s.smpp_port))
        .collect();
    // One shard: the exactness claim is per shard (each shard runs its own SWRR over the same
    // healthy set); with one shard every request sees the same sequence.
    let gw = Gateway::start(GatewayOptions {
        shards: 1,
        links,
        pools: vec![(500, vec![(1, 3), (2, 2), (3, 1)])],
        legacy_driver: legacy,
        ..Default::default()
    });
    gw.wait_links(&[1, 2, 3], true, UP);
    let windows = 5;
    let mut by_link: BTreeMap<u64, u32> = BTreeMap::new();
    for i in 0..(6 * windows) {
        let (st, v) = gw.send(500, &format!("{}", 1000 + i), "pool");
        assert_eq!(st, 200, "{v}");
        *by_link.entry(v["link"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(
        by_link,
        BTreeMap::from([(1, 3 * windows), (2, 2 * windows), (3, windows)])
    );
    let seen: Vec<usize> = sims.iter().map(|s| s.messages(1000).len()).collect();
    assert_eq!(
        seen,
        vec![3 * windows as usize, 2 * windows as usize, windows as usize]
    );
    let (_, links) = gw.get("/api/v1/smpp/links");
    assert_eq!(links["pools"][0]["capacity"], 3000, "{links}");
}

fn failover_and_recovery(legacy: bool) {
    let sim_a = Sim::start(&[]);
    let sim_b = Sim::start(&[]);
    let port_a = sim_a.smpp_port;
    let gw = Gateway::start(GatewayOptions {
        links: vec![LinkSpec::new(1, port_a), LinkSpec::new(2, sim_b.smpp_port)],
        pools: vec![(500, vec![(1, 1), (2, 1)])],
        legacy_driver: legacy,
        ..Default::default()
    });
    gw.wait_links(&[1, 2], true, UP);
    for i in 0..4 {
        let (st, v) = gw.send(500, &format!("10{i}"), "before");
        assert_eq!(st, 200, "{v}");
    }

    // Kill link 1's SMSC. Until the gateway notices, a send may fail; none may be lost.
    let mut sim_a = sim_a;
    sim_a.proc.kill();
    let mut accepted_ok = Vec::new();
    let mut reported_failed = Vec::new();
    for i in 0..20 {
        let (st, v) = gw.send(500, &format!("20{i}"), "during");
        assert!(st != 500, "never 500: {v}");
        if st == 200 && v["success"] == true {
            assert_eq!(v["link"], 2, "traffic must move to link 2: {v}");
            accepted_ok.push(v["transaction_id"].as_str().unwrap().to_string());
        } else {
            assert!((502..=504).contains(&st), "{st} {v}");
            if let Some(t) = v["transaction_id"].as_str() {
                // Accepted but not submitted: the store says so.
                let (_, rec) = gw.get(&format!("/api/v1/sms/{t}"));
                assert!(
                    matches!(rec["status"].as_str(), Some("failed" | "unknown")),
                    "{rec}"
                );
            }
            reported_failed.push(v);
        }
    }
    gw.wait_links(&[1], false, UP);
    for i in 0..6 {
        let (st, v) = gw.send(500, &format!("30{i}"), "after");
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["link"], 2);
        accepted_ok.push(v["transaction_id"].as_str().unwrap().to_string());
    }
    // Every message answered with success reached the surviving SMSC.
    let at_b: BTreeSet<String> = sim_b
        .messages(1000)
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_string())
        .collect();
    for t in &accepted_ok {
        let (_, rec) = gw.get(&format!("/api/v1/sms/{t}"));
        assert!(
            matches!(rec["status"].as_str(), Some("submitted" | "delivered")),
            "{rec}"
        );
        assert!(at_b.contains(rec["destination"].as_str().unwrap()), "{rec}");
    }
    // The SMSC comes back on the same port: link 1 rebinds, passes a check, carries traffic.
    let _sim_a2 = Sim::start_on(port_a, &[]);
    gw.wait_links(&[1], true, UP);
    let mut links_used = BTreeSet::new();
    for i in 0..4 {
        let (st, v) = gw.send(500, &format!("40{i}"), "back");
        assert_eq!(st, 200, "{v}");
        links_used.insert(v["link"].as_u64().unwrap());
    }
    assert_eq!(links_used, BTreeSet::from([1, 2]));
}

fn bad_inputs(legacy: bool) {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, legacy);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed json",
            "{\"esme\": 100, ".into(),
            400,
            "invalid_json",
        ),
        ("not an object", "[1,2,3]".into(), 422, "invalid_field"),
        (
            "missing message",
            r#"{"esme":100,"source":"A","destination":"1"}"#.into(),
            422,
            "missing_field",
        ),
        (
            "missing esme",
            r#"{"source":"A","destination":"1","message":"x"}"#.into(),
            422,
            "missing_field",
        ),
        (
            "letters in number",
            r#"{"esme":100,"source":"A","destination":"12ab","message":"x"}"#.into(),
            422,
            "invalid_address",
        ),
        (
            "number too long",
            r#"{"esme":100,"source":"A","destination":"123456789012345678901","message":"x"}"#
                .into(),
            422,
            "invalid_address",
        ),
        (
            "empty text",
            r#"{"esme":100,"source":"A","destination":"1","message":""}"#.into(),
            422,
            "empty_message",
        ),
        (
            "unknown esme",
            r#"{"esme":999,"source":"A","destination":"1","message":"x"}"#.into(),
            404,
            "unknown_esme",
        ),
        (
            "esme not a number",
            r#"{"esme":"abc","source":"A","destination":"1","message":"x"}"#.into(),
            422,
            "invalid_field",
        ),
        (
            "too many parts",
            format!(
                r#"{{"esme":100,"source":"A","destination":"1","message":"{}"}}"#,
                "a".repeat(153 * 10 + 1)
            ),
            422,
            "too_many_parts",
        ),
        (
            "bad encoding",
            r#"{"esme":100,"source":"A","destination":"1","message":"x","encoding":"ebcdic"}"#
                .into(),
            422,
            "invalid_field",
        ),
        (
            "gsm7 forced on cyrillic",
            r#"{"esme":100,"source":"A","destination":"1","message":"Ж","encoding":"gsm7"}"#.into(),
            422,
            "invalid_field",
        ),
    ];
    for (name, body, status, code) in cases {
        let (st, v) = gw.post("/api/v1/sms/send", &body);
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{name}: {v}"
        );
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: {v}"
        );
    }
    // Oversized body (limit 16 KiB in the test config).
    let big = format!(
        r#"{{"esme":100,"source":"A","destination":"1","message":"{}"}}"#,
        "a".repeat(20_000)
    );
    let (st, text) = raw_http(&gw.url, "POST", "/api/v1/sms/send", big.as_bytes());
    assert_eq!(st, 413, "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    let (st, v) = gw.get("/api/v1/nope");
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    let (st, v) = gw.get("/api/v1/sms/send");
    assert_eq!((st, v["code"].as_str()), (405, Some("method_not_allowed")));
    let (st, v) = gw.get("/api/v1/sms/no-such-transaction");
    assert_eq!((st, v["code"].as_str()), (404, Some("unknown_transaction")));
    let (st, v) = gw.get("/healthy");
    assert_eq!((st, v), (200, serde_json::json!({"status": "ok"})));
    let (st, v) = gw.get("/openapi.json");
    assert_eq!(st, 200);
    assert!(
        v["paths"]["/api/v1/sms/send"].is_object(),
        "openapi document served"
    );
    let (st, v) = gw.post("/api/v1/sms/check-text-len", r#"{"message":"Привет"}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["encoding"].as_str(),
            v["parts"].as_u64(),
            v["units"].as_u64()
        ),
        (Some("ucs2"), Some(1), Some(6))
    );
    // Nothing above reached the SMSC.
    assert!(sim.messages(10).is_empty());
}

fn sigterm_exits_zero(legacy: bool) {
    // Every SMSC answer takes 700 ms, so the send below is in flight when SIGTERM arrives.
    let sim = Sim::start(&["--latency-ms", "700"]);
    let mut gw = one_link_gateway(&sim, legacy);
    let url = gw.url.clone();
    let in_flight = std::thread::spawn(move || {
        let body = serde_json::json!({"esme": 100, "source": "Test", "destination": "1", "message": "bye"});
        common::http(&url, "POST", "/api/v1/sms/send", &body.to_string())
    });
    std::thread::sleep(Duration::from_millis(250));
    let status = gw
        .proc
        // shutdown_timeout_ms is 5 s in the test config; the margin is for a CI box whose two
        // cores are busy with the other tests of this binary.
        .terminate(Duration::from_secs(15))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // The request in flight at SIGTERM was finished, not dropped.
    let (st, v) = in_flight.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(sim.messages(10).len(), 1);
}

/// An SMSC may send the receipt before the submit_sm_resp (here: receipts 50 ms after the
/// submit, resps after 700 ms). The receipt must wait for the resp's write instead of being
/// acknowledged as unknown and lost.
fn receipt_before_submit_resp_is_applied(legacy: bool) {
    let sim = Sim::start(&["--latency-ms", "700"]);
    let gw = one_link_gateway(&sim, legacy);
    let mut txids = Vec::new();
    for i in 0..3 {
        let (st, v) = gw.send(100, &format!("+49151000000{i}"), "early receipt");
        assert_eq!(st, 200, "{v}");
        txids.push(v["transaction_id"].as_str().unwrap().to_string());
    }
    for txid in &txids {
        let rec = gw.wait_status(txid, "delivered", Duration::from_secs(10));
        assert_eq!(rec["parts"][0]["receipt"]["stat"], "DELIVRD", "{rec}");
    }
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
    send_receipt_delivered,
    multipart_gsm7_and_ucs2,
    swrr_exact_distribution,
    failover_and_recovery,
    bad_inputs,
    sigterm_exits_zero,
    receipt_before_submit_resp_is_applied,
);

/// `serve` turns transparent huge pages off for its process (`prctl(PR_SET_THP_DISABLE)`,
/// see `runtime::disable_transparent_huge_pages`): the kernel reports it in
/// `/proc/<pid>/status`. Not per driver: it happens before the runtime starts.
#[test]
fn serve_runs_with_transparent_huge_pages_off() {
    let sim = Sim::start(&[]);
    let gw = one_link_gateway(&sim, common::legacy_from_env());
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.proc.pid()))
        .expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("kernel reports THP_enabled");
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("0"),
        "huge pages still on for serve: {line}"
    );
}
