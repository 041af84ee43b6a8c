//! `GET /metrics` against the real `smsgw serve` binary and a real `smsgw smsc-sim`: the page
//! parses as Prometheus text, counters and histograms match the traffic sent, link state
//! follows the SMSC, and every metric emitted is documented in docs/metrics.md.

mod common;
mod redis_server;

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

/// The families of the embedded backend's journal engine (the default): present only with it.
const JOURNAL_FAMILIES: [&str; 10] = [
    "smsgw_state_hot_records",
    "smsgw_state_log_bytes",
    "smsgw_state_log_syncs_total",
    "smsgw_state_log_sync_waiters_total",
    "smsgw_state_checkpoints_total",
    "smsgw_state_checkpointed_records_total",
    "smsgw_state_checkpoint_failures_total",
    "smsgw_state_evicted_total",
    "smsgw_state_cold_loads_total",
    "smsgw_state_replayed_records",
];

/// The families of the embedded backend's writer engine: present only with it.
const WRITER_FAMILIES: [&str; 3] = [
    "smsgw_state_queue_len",
    "smsgw_state_batches_total",
    "smsgw_state_batched_ops_total",
];

/// Writes the test configs for `o` into a new temp dir with `state_extra` (lines) added to
/// its `[state]` table, and starts the gateway. Returns it and the config paths (to restart
/// it on the same state directory).
fn start_with_state(
    o: &GatewayOptions,
    state_extra: &str,
) -> (Gateway, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = common::write_configs(dir.path(), o);
    let text = std::fs::read_to_string(&a).unwrap();
    assert!(text.contains("[state]\n"), "{text}");
    std::fs::write(
        &a,
        text.replacen("[state]\n", &format!("[state]\n{state_extra}"), 1),
    )
    .unwrap();
    let gw = Gateway::spawn_in(dir, &a, &b);
    (gw, a, b)
}

/// With room in the window, a message costs three state writes (accepted-and-marked,
/// submitted, receipt): the hand-over mark rides on the create instead of being a fourth
/// awaited write (the slow path, behind a full window, writes it separately). Counted by the
/// `writer` engine, whose batches are the only place writes are counted one by one.
#[test]
fn a_message_with_room_in_the_window_costs_three_state_writes() {
    const N: u64 = 10;
    let sim = Sim::start(&[]);
    let (gw, _, _) = start_with_state(
        &GatewayOptions {
            links: vec![LinkSpec::new(100, sim.smpp_port)],
            ..Default::default()
        },
        "engine = \"writer\"\n",
    );
    gw.wait_links(&[100], true, UP);
    // The writer engine shows its queue families and none of the journal's.
    let (s, _) = scrape(&gw);
    for name in WRITER_FAMILIES {
        assert!(
            value(&s, name, &[]).is_some(),
            "{name} with the writer engine"
        );
    }
    for name in JOURNAL_FAMILIES {
        assert!(
            value(&s, name, &[]).is_none(),
            "{name} with the writer engine"
        );
    }
    let ops = |gw: &Gateway| value(&scrape(gw).0, "smsgw_state_batched_ops_total", &[]);
    let before = ops(&gw).expect("state ops metric");
    let mut txids = Vec::new();
    for i in 0..N {
        // One at a time: the window always has room.
        let (st, v) = gw.send(100, &format!("49152{i:06}"), "three writes");
        assert_eq!(st, 200, "{v}");
        txids.push(v["transaction_id"].as_str().unwrap().to_string());
    }
    for t in &txids {
        gw.wait_status(t, "delivered", Duration::from_secs(10));
    }
    // Status reads are not writes; give the last receipt's commit a moment to be counted.
    let want = (3 * N) as f64;
    wait_until(Duration::from_secs(5), || ops(&gw) == Some(before + want));
    assert_eq!(
        ops(&gw),
        Some(before + want),
        "state writes for {N} messages"
    );
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
        "smsgw_ingress_to_submit_resp_seconds",
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
    // Per-shard stage counters (moved off shared atomics): every message was submitted.
    assert_eq!(
        value(&samples, "smsgw_messages_submitted_total", &[]),
        Some(N as f64)
    );
    assert_eq!(
        value(&samples, "smsgw_messages_failed_total", &[]),
        Some(0.0)
    );
    // Process-wide sources are wired: the state store (journal engine, the default), CDR
    // backlog probe, routing view.
    let hot = value(&samples, "smsgw_state_hot_records", &[]);
    assert!(
        hot.is_some_and(|v| v >= N as f64),
        "{N} fresh messages are in memory: hot_records {hot:?}"
    );
    // `open` checkpoints once before serving, so at least one checkpoint is counted.
    assert!(
        value(&samples, "smsgw_state_checkpoints_total", &[]).is_some_and(|v| v >= 1.0),
        "checkpoints {:?}",
        value(&samples, "smsgw_state_checkpoints_total", &[])
    );
    assert!(value(&samples, "smsgw_state_checkpointed_records_total", &[]).is_some());
    assert_eq!(
        value(&samples, "smsgw_state_checkpoint_failures_total", &[]),
        Some(0.0)
    );
    assert!(value(&samples, "smsgw_state_log_bytes", &[]).is_some());
    for name in WRITER_FAMILIES {
        assert!(
            value(&samples, name, &[]).is_none(),
            "{name} with the journal engine"
        );
    }
    assert!(
        value(&samples, "smsgw_cdr_queue_len", &[]).is_some(),
        "cdr probe not wired"
    );
    assert!(value(&samples, "smsgw_cdr_pending_batches", &[]).is_some());
    assert_eq!(
        value(&samples, "smsgw_link_connected", &[("link", "100")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "smsgw_callback_outbox_backlog", &[]),
        Some(0.0),
        "callbacks are off in this config"
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
    // Every message is final after its receipt: one CDR each, none refused.
    let cdrs = wait_until(UP, || {
        value(&scrape(&gw).0, "smsgw_cdr_records_total", &[]) == Some(N as f64)
    });
    assert!(
        cdrs,
        "cdr records {:?}",
        value(&scrape(&gw).0, "smsgw_cdr_records_total", &[])
    );
    assert_eq!(value(&s, "smsgw_cdr_refused_total", &[]), Some(0.0));

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

/// Under load the link gauges move: with an SMSC that answers every submit after 700 ms and
/// a dozen sends in flight, the health loop (250 ms tick) must see window occupancy > 0; with
/// an SMSC that throttles half the submits, the throttle counter moves. Stage counters and
/// the submit_sm_resp histogram agree with what was sent.
#[test]
fn window_occupancy_and_throttles_under_load() {
    const SLOW: u64 = 12;
    const THROTTLED: u64 = 16;
    let slow = Sim::start(&["--latency-ms", "700"]);
    let throttling = Sim::start(&["--throttle-percent", "50", "--seed", "7"]);
    let gw = Gateway::start(GatewayOptions {
        links: vec![
            LinkSpec::new(100, slow.smpp_port),
            LinkSpec::new(200, throttling.smpp_port),
        ],
        legacy_driver: common::legacy_from_env(),
        ..Default::default()
    });
    gw.wait_links(&[100, 200], true, UP);
    let gw = std::sync::Arc::new(gw);

    let senders: Vec<_> = (0..SLOW + THROTTLED)
        .map(|i| {
            let gw = std::sync::Arc::clone(&gw);
            std::thread::spawn(move || {
                let link = if i < SLOW { 100 } else { 200 };
                gw.send(link, &format!("49152{i:06}"), "load").0
            })
        })
        .collect();
    // While the slow SMSC holds the answers, the sampled window occupancy is above zero.
    let mut peak = 0.0f64;
    let busy = wait_until(Duration::from_secs(10), || {
        let v = value(
            &scrape(&gw).0,
            "smsgw_link_window_outstanding",
            &[("link", "100")],
        )
        .unwrap_or(0.0);
        peak = peak.max(v);
        v > 0.0
    });
    let statuses: Vec<u16> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        busy,
        "window occupancy never above 0 under load (peak {peak})"
    );
    assert!(
        statuses[..SLOW as usize].iter().all(|&s| s == 200),
        "{statuses:?}"
    );

    let (s, _) = scrape(&gw);
    let accepted = value(&s, "smsgw_messages_accepted_total", &[]).unwrap();
    let submitted = value(&s, "smsgw_messages_submitted_total", &[]).unwrap();
    let failed = value(&s, "smsgw_messages_failed_total", &[]).unwrap();
    let ok = statuses.iter().filter(|&&s| s == 200).count() as f64;
    assert_eq!(accepted, (SLOW + THROTTLED) as f64);
    assert_eq!(
        submitted + failed,
        accepted,
        "every accepted message has an outcome"
    );
    assert_eq!(submitted, ok, "a 200 answer is a submitted message");
    // 12 messages each waited >= 700 ms for their submit_sm_resp.
    let resp_sum = value(&s, "smsgw_smpp_submit_resp_seconds_sum", &[]).unwrap();
    assert!(resp_sum >= SLOW as f64 * 0.7, "submit_resp sum {resp_sum}");
    assert_eq!(
        value(&s, "smsgw_smpp_submit_resp_seconds_count", &[]),
        Some(accepted)
    );
    // Stages nest: each ingress → submit_sm_resp observation contains its bind →
    // submit_sm_resp one (same messages); the response comes after both, but the send
    // histogram has successful sends only, so that comparison needs every message submitted
    // (a throttle-exhausted message is possible: 50% throttles, 5 retries).
    let ingress_sum = value(&s, "smsgw_ingress_to_submit_resp_seconds_sum", &[]).unwrap();
    let send_sum = value(&s, "smsgw_send_duration_seconds_sum", &[]).unwrap();
    assert!(
        resp_sum <= ingress_sum,
        "bind {resp_sum} <= ingress {ingress_sum}"
    );
    if failed == 0.0 {
        assert!(
            ingress_sum <= send_sum,
            "ingress {ingress_sum} <= response {send_sum}"
        );
    }
    // The throttle counter is sampled on the health tick.
    let throttles = wait_until(Duration::from_secs(5), || {
        value(
            &scrape(&gw).0,
            "smsgw_smpp_throttled_total",
            &[("link", "200")],
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(throttles, "no throttle counted on link 200");
    assert_eq!(
        value(&s, "smsgw_smpp_throttled_total", &[("link", "100")]),
        Some(0.0)
    );
    // Idle again: occupancy back to zero.
    let idle = wait_until(Duration::from_secs(5), || {
        value(
            &scrape(&gw).0,
            "smsgw_link_window_outstanding",
            &[("link", "100")],
        ) == Some(0.0)
    });
    assert!(idle, "window occupancy stuck above 0 when idle");
}

/// Starts `smsgw serve` with one link on `sim` and `extra` appended to smsgw.toml; returns the
/// gateway and its gRPC address.
fn start_gateway_with(sim: &Sim, extra: &str) -> (Gateway, String) {
    let dir = tempfile::tempdir().unwrap();
    let o = GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..Default::default()
    };
    let (a, b) = common::write_configs(dir.path(), &o);
    let mut text = std::fs::read_to_string(&a).unwrap();
    text.push_str(extra);
    std::fs::write(&a, text).unwrap();
    let args: Vec<String> = [
        "serve".to_string(),
        "--config".to_string(),
        a.display().to_string(),
        "--rules".to_string(),
        b.display().to_string(),
    ]
    .to_vec();
    let (proc, line) = common::spawn("gw", &args, &[], "smsgw listening", UP);
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} in {line}"))
            .to_string()
    };
    let gw = Gateway {
        proc,
        url: format!("http://{}", field("http")),
        dir,
    };
    (gw, field("grpc"))
}

/// gRPC calls are counted per method and status code, and a gRPC send goes through the same
/// stage accounting as REST (accepted, rejected by reason, send latency). The client is
/// tonic's generated one (the same proto; the interop test with a foreign client is
/// tests/grpc.rs).
#[test]
fn grpc_calls_are_counted_by_method_and_code() {
    use smsgw::api::grpc::pb::sms::v1::sms_service_client::SmsServiceClient;
    use smsgw::api::grpc::pb::sms::v1::{CheckTextLenRequest, GetStatusRequest, SmsRequest};

    let sim = Sim::start(&[]);
    let (gw, grpc) = start_gateway_with(&sim, "");
    gw.wait_links(&[100], true, UP);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = tokio::time::timeout(UP, SmsServiceClient::connect(format!("http://{grpc}")))
            .await
            .expect("connect in time")
            .expect("connect");
        let send = |i: u32, daddr: &str| SmsRequest {
            transaction_id: format!("grpc-metrics-{i}"),
            esme: 100,
            saddr: "smsgw".into(),
            daddr: daddr.into(),
            message: "grpc metrics".into(),
            ..Default::default()
        };
        for i in 0..3 {
            let r = c
                .send_message(send(i, &format!("49154{i:06}")))
                .await
                .expect("send");
            assert!(r.get_ref().success, "{:?}", r.get_ref());
        }
        // No destination: INVALID_ARGUMENT, however the server carries it (status or body).
        let _ = c.send_message(send(9, "")).await;
        let e = c
            .get_status(GetStatusRequest {
                transaction_id: "no-such-message".into(),
            })
            .await
            .expect_err("unknown transaction");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        c.check_text_len(CheckTextLenRequest {
            message: "hello".into(),
            ..Default::default()
        })
        .await
        .expect("check_text_len");
    });

    let (s, _) = scrape(&gw);
    let grpc_calls = |method: &str, code: &str| {
        value(
            &s,
            "smsgw_grpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(grpc_calls("SendMessage", "OK"), Some(3.0));
    assert_eq!(grpc_calls("SendMessage", "INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(grpc_calls("GetStatus", "NOT_FOUND"), Some(1.0));
    assert_eq!(grpc_calls("CheckTextLen", "OK"), Some(1.0));
    assert_eq!(value(&s, "smsgw_messages_accepted_total", &[]), Some(3.0));
    assert_eq!(
        value(&s, "smsgw_send_duration_seconds_count", &[]),
        Some(3.0)
    );
    let rejected: f64 = s
        .iter()
        .filter(|x| x.name == "smsgw_messages_rejected_total")
        .map(|x| x.value)
        .sum();
    assert_eq!(rejected, 1.0, "the invalid send is one rejection");
    // gRPC does not show up as REST traffic.
    assert!(
        value(
            &s,
            "smsgw_http_requests_total",
            &[("route", "send"), ("status", "200")]
        )
        .is_none()
    );
}

/// With Redis configured for L2 limits and the contact-policy counters, both health gauges
/// are 1 while it answers and drop to 0 (with errors and transitions counted) once it is
/// killed. Needs `redis-server` (CI installs it; `SMSGW_SKIP_REDIS_TESTS=1` skips).
#[test]
fn redis_and_policy_store_health_follow_redis() {
    let Some(mut redis) = redis_server::RedisServer::start() else {
        return;
    };
    let sim = Sim::start(&[]);
    let (gw, _) = start_gateway_with(
        &sim,
        &format!(
            "\n[limits]\napp_rate_per_s = 1000\non_redis_down = \"fail_open\"\n\n\
         [redis]\nurl = \"{}\"\nkey_prefix = \"m\"\ntimeout_ms = 100\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 300\n\n\
         [policy]\ndefault_strategy = \"cp2\"\n",
            redis.url()
        ),
    );
    gw.wait_links(&[100], true, UP);

    // E.164 destinations: the policy stage skips numbers it cannot normalise.
    for i in 0..3 {
        let (st, v) = gw.send(100, &format!("+49153{i:06}"), "redis");
        assert_eq!(st, 200, "{v}");
    }
    let (s, _) = scrape(&gw);
    assert_eq!(value(&s, "smsgw_redis_up", &[]), Some(1.0));
    assert_eq!(value(&s, "smsgw_policy_store_up", &[]), Some(1.0));
    assert_eq!(value(&s, "smsgw_policy_store_errors_total", &[]), Some(0.0));
    assert!(value(&s, "smsgw_redis_round_trips_total", &[]).unwrap() >= 1.0);
    assert!(
        value(&s, "smsgw_policy_remote_errors_total", &[]).is_none(),
        "no remote MCP configured"
    );
    let transitions_before = value(&s, "smsgw_redis_transitions_total", &[]).unwrap();

    redis.kill();
    // Fail-open on both: messages keep flowing while Redis is down.
    let down = wait_until(UP, || {
        let _ = gw.send(100, "+49153999999", "redis down");
        let s = scrape(&gw).0;
        value(&s, "smsgw_redis_up", &[]) == Some(0.0)
            && value(&s, "smsgw_policy_store_up", &[]) == Some(0.0)
    });
    let (s, _) = scrape(&gw);
    assert!(
        down,
        "redis_up {:?} policy_store_up {:?}",
        value(&s, "smsgw_redis_up", &[]),
        value(&s, "smsgw_policy_store_up", &[])
    );
    assert!(value(&s, "smsgw_policy_store_errors_total", &[]).unwrap() >= 1.0);
    assert!(value(&s, "smsgw_redis_transitions_total", &[]).unwrap() > transitions_before);
}

/// Starts `smsgw mcp` listening on `listen` with an empty blacklist; returns it and its URL.
fn start_mcp(dir: &std::path::Path, listen: &str) -> (common::Proc, String) {
    std::fs::create_dir_all(dir.join("lists")).unwrap();
    std::fs::write(dir.join("lists").join("l.csv"), "phone\n").unwrap();
    let (a, b) = common::write_configs(dir, &GatewayOptions::default());
    let mut text = std::fs::read_to_string(&a).unwrap();
    text.push_str("\n[policy]\nblacklist_dir = \"lists\"\n");
    std::fs::write(&a, text).unwrap();
    let args: Vec<String> = ["mcp", "--config"]
        .into_iter()
        .map(String::from)
        .chain([a.display().to_string(), "--rules".into()])
        .chain([b.display().to_string(), "--listen".into(), listen.into()])
        .collect();
    let (proc, line) = common::spawn("mcp", &args, &[], "smsgw mcp listening", UP);
    (proc, common::http_url_of(&line))
}

/// With `[policy] remote_url`, the remote service's health is visible: up while it answers,
/// down (with errors and fail-open passes counted) once it is killed, up again after it is
/// back on the same port and each shard's probe succeeded.
#[test]
fn remote_policy_health_follows_the_mcp_service() {
    let mcp_dir = tempfile::tempdir().unwrap();
    let (mut mcp, base) = start_mcp(mcp_dir.path(), "127.0.0.1:0");
    let listen = base.trim_start_matches("http://").to_string();
    let sim = Sim::start(&[]);
    let (gw, _) = start_gateway_with(
        &sim,
        &format!(
            "\n[policy]\ndefault_strategy = \"blacklist\"\nremote_url = \"{base}\"\n\
             remote_timeout_ms = 1000\nremote_on_error = \"fail_open\"\n"
        ),
    );
    gw.wait_links(&[100], true, UP);
    let send = |i: u32| gw.send(100, &format!("+49155{i:06}"), "remote").0;
    for i in 0..4 {
        assert_eq!(send(i), 200);
    }
    let (s, _) = scrape(&gw);
    assert_eq!(value(&s, "smsgw_policy_remote_up", &[]), Some(1.0));
    assert_eq!(
        value(&s, "smsgw_policy_remote_errors_total", &[]),
        Some(0.0)
    );
    assert!(
        value(&s, "smsgw_policy_store_up", &[]).is_none(),
        "the remote service holds the counters, not this gateway"
    );

    mcp.kill();
    // Fail-open: sends keep succeeding; each shard notices the outage on its own.
    let mut i = 100;
    let down = wait_until(UP, || {
        i += 1;
        assert_eq!(send(i), 200, "fail_open must pass the message");
        value(&scrape(&gw).0, "smsgw_policy_remote_up", &[]) == Some(0.0)
    });
    assert!(down, "remote_up never dropped after the service was killed");
    let (s, _) = scrape(&gw);
    assert!(value(&s, "smsgw_policy_remote_errors_total", &[]).unwrap() >= 1.0);
    assert!(value(&s, "smsgw_policy_remote_fail_open_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(&s, "smsgw_policy_remote_fail_closed_total", &[]),
        Some(0.0)
    );

    // Back on the same port: every shard's next probe (one message per second) recovers it.
    let (_mcp, _) = start_mcp(mcp_dir.path(), &listen);
    let up = wait_until(UP, || {
        i += 1;
        let _ = send(i);
        value(&scrape(&gw).0, "smsgw_policy_remote_up", &[]) == Some(1.0)
    });
    assert!(up, "remote_up never recovered after the service came back");
}

/// The journal engine's restart families: messages sent and then SIGKILLed before any
/// periodic checkpoint (interval at its maximum, so only the one at open runs) are replayed
/// from the logs at the next start, which `smsgw_state_replayed_records` shows, and the
/// checkpoint at that open folds them into the cold store.
#[test]
fn journal_replay_after_sigkill_is_counted() {
    const N: u64 = 6;
    let sim = Sim::start(&[]);
    let o = GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..Default::default()
    };
    let (gw, a, b) = start_with_state(&o, "checkpoint_interval_ms = 600000\n");
    gw.wait_links(&[100], true, UP);
    let mut txids = Vec::new();
    for i in 0..N {
        let (st, v) = gw.send(100, &format!("49156{i:06}"), "journal");
        assert_eq!(st, 200, "{v}");
        txids.push(v["transaction_id"].as_str().unwrap().to_string());
    }
    for t in &txids {
        gw.wait_status(t, "delivered", Duration::from_secs(10));
    }
    let (s, _) = scrape(&gw);
    assert!(
        value(&s, "smsgw_state_hot_records", &[]).is_some_and(|v| v >= N as f64),
        "hot_records {:?}",
        value(&s, "smsgw_state_hot_records", &[])
    );
    assert!(
        value(&s, "smsgw_state_log_bytes", &[]).is_some_and(|v| v > 0.0),
        "{N} messages written since the checkpoint at open: log_bytes {:?}",
        value(&s, "smsgw_state_log_bytes", &[])
    );
    assert_eq!(value(&s, "smsgw_state_replayed_records", &[]), Some(0.0));
    assert_eq!(
        value(&s, "smsgw_state_checkpoint_failures_total", &[]),
        Some(0.0)
    );
    let Gateway { mut proc, dir, .. } = gw;
    proc.kill(); // SIGKILL: no flush, the logs stay

    let gw = Gateway::spawn_in(dir, &a, &b);
    let (s, _) = scrape(&gw);
    assert_eq!(
        value(&s, "smsgw_state_replayed_records", &[]),
        Some(N as f64),
        "one record per message replayed from the logs"
    );
    assert!(
        value(&s, "smsgw_state_checkpoints_total", &[]).is_some_and(|v| v >= 1.0),
        "open checkpoints the replayed records"
    );
    assert!(
        value(&s, "smsgw_state_checkpointed_records_total", &[]).is_some_and(|v| v >= N as f64),
        "checkpointed {:?}",
        value(&s, "smsgw_state_checkpointed_records_total", &[])
    );
    assert!(
        value(&s, "smsgw_state_hot_records", &[]).is_some_and(|v| v >= N as f64),
        "replayed records stay in memory"
    );
    for t in &txids {
        let (st, v) = gw.get(&format!("/api/v1/sms/{t}"));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["status"], "delivered", "{v}");
    }
}

/// Families present only when their source is configured (Redis for limits, the policy
/// engine's Redis store or a remote MCP, the embedded backend's writer engine; the default
/// journal engine's families are emitted by the gateway of the test below); documented like
/// the rest.
const CONDITIONAL: [&str; 12] = [
    "smsgw_state_queue_len",
    "smsgw_state_batches_total",
    "smsgw_state_batched_ops_total",
    "smsgw_redis_up",
    "smsgw_redis_round_trips_total",
    "smsgw_redis_transitions_total",
    "smsgw_policy_store_up",
    "smsgw_policy_store_errors_total",
    "smsgw_policy_remote_up",
    "smsgw_policy_remote_errors_total",
    "smsgw_policy_remote_fail_open_total",
    "smsgw_policy_remote_fail_closed_total",
];

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
    // Families only present with their dependency configured are documented too.
    for name in CONDITIONAL {
        assert!(docs.contains(&format!("`{name}`")), "{name}");
    }
    // And every family the docs list is emitted here or conditional: no stale rows.
    for line in docs.lines().filter(|l| l.starts_with("| `smsgw_")) {
        let name = line
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap_or("");
        assert!(
            types.contains_key(name) || CONDITIONAL.contains(&name),
            "docs/metrics.md lists {name}, which the gateway does not emit"
        );
    }
    // The dashboard queries only families that exist: emitted here, or conditional.
    for family in dashboard_families() {
        assert!(
            types.contains_key(&family) || CONDITIONAL.contains(&family.as_str()),
            "dashboard queries {family}, which the gateway does not emit"
        );
    }
}

/// Every `smsgw_*` metric family named in a dashboard query (histogram series mapped to
/// their family).
fn dashboard_families() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let mut exprs: Vec<String> = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let mut out = Vec::new();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(base) = word.strip_prefix("smsgw_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| base.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                    .unwrap_or(base);
                out.push(format!("smsgw_{family}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The dashboard is a well-formed Grafana model and only queries documented metrics, so a
/// rename breaks here (the live check against emitted families is in
/// `every_emitted_metric_is_documented`).
#[test]
fn dashboard_queries_documented_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let mut ids = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let pos = &panel["gridPos"];
        for k in ["x", "y", "w", "h"] {
            assert!(pos[k].is_u64(), "panel {id} gridPos.{k}");
        }
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} queries nothing");
        let mut refs = std::collections::BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "panel {id}"
            );
        }
    }
    let families = dashboard_families();
    for family in &families {
        assert!(
            docs.contains(&format!("`{family}`")),
            "dashboard uses undocumented {family}"
        );
    }
    assert!(families.len() > 30, "dashboard queries almost nothing");
}
