//! `GET /metrics` against the real `smsgw serve` binary and a real `smsgw smsc-sim`: the page
//! parses as Prometheus text, counters and histograms match the traffic sent, link state
//! follows the SMSC, and every metric emitted is documented in docs/metrics.md.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::{Gateway, GatewayOptions, LinkSpec, Sim, raw_http, wait_until};

const UP: Duration = Duration::from_secs(20);

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict-enough parser of the text format 0.0.4: panics (fails the test) on any line that
/// is not a `# HELP`/`# TYPE` comment or `name{k="v",...} value`. Returns samples and the
/// declared families with their types.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP line");
            assert!(!help.trim().is_empty(), "{name} has empty HELP");
            helps.insert(name.to_string(), ());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        assert!(!line.is_empty(), "empty line in exposition");
        let (series, value) = line.rsplit_once(' ').expect("value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                for pair in body.split("\",") {
                    let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        assert!(types.contains_key(&family), "{name} has no TYPE before it");
        if types[&family] == "counter" {
            assert!(family.ends_with("_total"), "counter {family} lacks _total");
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    for name in types.keys() {
        assert!(helps.contains_key(name), "{name} has no HELP");
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn scrape(gw: &Gateway) -> (Vec<Sample>, BTreeMap<String, String>) {
    let (st, text) = raw_http(&gw.url, "GET", "/metrics", b"");
    assert_eq!(st, 200, "{text}");
    parse(&text)
}

/// The raw response head of `GET /metrics` (to check the Content-Type header).
fn head(gw: &Gateway) -> String {
    let addr = gw.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[test]
fn counters_histograms_and_link_state() {
    const N: u64 = 12;
    let mut sim = Sim::start(&[]);
    let gw = Gateway::start(GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        legacy_driver: common::legacy_from_env(),
        ..Default::default()
    });
    gw.wait_links(&[100], true, UP);

    assert!(
        head(&gw).contains("content-type: text/plain; version=0.0.4"),
        "{}",
        head(&gw)
    );

    for i in 0..N {
        let (st, v) = gw.send(100, &format!("49151{i:06}"), "metrics");
        assert_eq!(st, 200, "{v}");
    }
    let (st, _) = raw_http(&gw.url, "POST", "/api/v1/sms/send", b"{not json");
    assert_eq!(st, 400);

    let (samples, types) = scrape(&gw);
    assert_eq!(types["smsgw_send_duration_seconds"], "histogram");
    let accepted = value(&samples, "smsgw_messages_accepted_total", &[]);
    assert_eq!(accepted, Some(N as f64));
    assert_eq!(
        value(
            &samples,
            "smsgw_messages_rejected_total",
            &[("reason", "invalid_json")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "smsgw_http_requests_total",
            &[("route", "send"), ("status", "200")]
        ),
        Some(N as f64)
    );
    assert_eq!(
        value(
            &samples,
            "smsgw_http_requests_total",
            &[("route", "send"), ("status", "400")]
        ),
        Some(1.0)
    );
    for h in [
        "smsgw_send_duration_seconds",
        "smsgw_smpp_submit_resp_seconds",
    ] {
        assert_eq!(
            value(&samples, &format!("{h}_count"), &[]),
            Some(N as f64),
            "{h}"
        );
        assert_eq!(
            value(&samples, &format!("{h}_bucket"), &[("le", "+Inf")]),
            Some(N as f64),
            "{h}"
        );
        assert!(value(&samples, &format!("{h}_sum"), &[]).unwrap() > 0.0);
    }
    // Buckets are cumulative: never decreasing with `le`.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == "smsgw_send_duration_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        value(&samples, "smsgw_parts_submitted_total", &[]),
        Some(N as f64)
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "smsgw_shard_driver" && s.value == 1.0),
        "no driver gauge"
    );

    // The simulator sends a delivery receipt 50 ms after each submit.
    let receipts = wait_until(UP, || {
        let (s, _) = scrape(&gw);
        value(&s, "smsgw_receipt_delay_seconds_count", &[]) == Some(N as f64)
    });
    let (s, _) = scrape(&gw);
    assert!(
        receipts,
        "receipt_delay count {:?}",
        value(&s, "smsgw_receipt_delay_seconds_count", &[])
    );
    assert_eq!(
        value(&s, "smsgw_receipts_total", &[("outcome", "applied")]),
        Some(N as f64)
    );

    // Link state: up while bound (sampled every health tick), down after the SMSC dies.
    let up = wait_until(UP, || {
        value(&scrape(&gw).0, "smsgw_link_up", &[("link", "100")]) == Some(1.0)
    });
    assert!(up, "link_up never 1");
    let (s, _) = scrape(&gw);
    assert!(value(&s, "smsgw_link_window_capacity", &[("link", "100")]).unwrap() > 0.0);
    sim.proc.kill();
    let down = wait_until(UP, || {
        value(&scrape(&gw).0, "smsgw_link_up", &[("link", "100")]) == Some(0.0)
    });
    assert!(down, "link_up still 1 after the SMSC was killed");
    // The gateway keeps trying to reconnect (reconnect_min_ms = 100).
    let reconnects = wait_until(UP, || {
        value(
            &scrape(&gw).0,
            "smsgw_smpp_reconnects_total",
            &[("link", "100")],
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(reconnects, "no reconnect counted");
}

#[test]
fn every_emitted_metric_is_documented() {
    let sim = Sim::start(&[]);
    let gw = Gateway::start(GatewayOptions {
        links: vec![LinkSpec::new(7, sim.smpp_port)],
        ..Default::default()
    });
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    let (_, types) = scrape(&gw);
    assert!(types.len() > 20, "too few families: {types:?}");
    for name in types.keys() {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is emitted but not in docs/metrics.md"
        );
    }
    // Families only present with Redis configured are documented too.
    for name in ["smsgw_redis_up", "smsgw_redis_transitions_total"] {
        assert!(docs.contains(&format!("`{name}`")), "{name}");
    }
}

/// The dashboard only queries metrics that exist (are documented), so a rename breaks here.
#[test]
fn dashboard_queries_documented_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let mut seen = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(base) = word.strip_prefix("smsgw_") {
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| base.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                        .unwrap_or(base);
                    assert!(
                        docs.contains(&format!("`smsgw_{family}`")),
                        "dashboard uses undocumented smsgw_{family}"
                    );
                    seen += 1;
                }
            }
        }
    }
    assert!(seen > 10, "dashboard queries almost nothing");
}
