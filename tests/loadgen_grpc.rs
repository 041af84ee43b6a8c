//! `smsgw bench --protocol grpc | grpc-stream` against a real gateway and simulator on
//! loopback: accepted and rejected messages are counted right (cross-checked with what the
//! simulator received), rejections carry the gRPC code and the gateway's code, and an
//! unreachable target is a bounded failure. Every run is bounded by `--requests`/`--duration`.

mod common;

use std::time::Duration;

use clap::Parser;
use smsgw::loadgen::{self, BenchArgs, BenchConfig, Report};

use common::{GatewayOptions, LinkSpec, Proc, Sim, write_configs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn bench(grpc: &str, protocol: &str, extra: &[&str]) -> Report {
    let url = format!("http://{grpc}");
    let mut argv = vec![
        "bench",
        "--url",
        &url,
        "--protocol",
        protocol,
        "--quiet",
        "--threads",
        "1",
    ];
    if !extra.contains(&"--drain-timeout") {
        argv.extend_from_slice(&["--drain-timeout", "10s"]);
    }
    argv.extend_from_slice(extra);
    let config = BenchConfig::from_args(&Cli::parse_from(argv).args).expect("valid arguments");
    let report = loadgen::run_bench(&config).expect("bench runs");
    eprintln!("{}", report.table());
    report
}

struct Gw {
    _proc: Proc,
    grpc: String,
    _dir: tempfile::TempDir,
}

/// A gateway (authentication off, as in `common`) with link 100 at 1000 msg/s and link 101 at
/// 20 msg/s (burst 20), both on `sim`.
fn gateway(sim: &Sim) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = LinkSpec::new(101, sim.smpp_port);
    slow.extra = "esme_rate_burst = 20".into();
    let (a, b) = write_configs(
        dir.path(),
        &GatewayOptions {
            links: vec![LinkSpec::new(100, sim.smpp_port), slow],
            ..Default::default()
        },
    );
    // write_configs gives every link 1000 msg/s; link 101 gets 20.
    let rules = std::fs::read_to_string(&b)
        .unwrap()
        .replace("[links.101]\n", "[links.101]\nesme_rate = 20\n");
    let rules = dedupe_rate(&rules);
    std::fs::write(&b, rules).unwrap();
    let (proc, line) = common::spawn_serve(&a, &b, &[]);
    let grpc = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("grpc address")
        .to_string();
    Gw {
        _proc: proc,
        grpc,
        _dir: dir,
    }
}

/// Keeps the first `esme_rate` line of each link section (ours) and drops the later default.
fn dedupe_rate(rules: &str) -> String {
    let mut out = String::new();
    let mut seen = false;
    for line in rules.lines() {
        if line.starts_with("[links.") {
            seen = false;
        }
        if line.starts_with("esme_rate =") {
            if seen {
                continue;
            }
            seen = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Waits until a one-message probe is accepted (links bound and healthy).
fn wait_ready(gw: &Gw) {
    let ok = common::wait_until(Duration::from_secs(20), || {
        bench(
            &gw.grpc,
            "grpc",
            &["--rate", "10", "--requests", "1", "--esme", "100"],
        )
        .accepted
            == 1
    });
    assert!(ok, "gateway did not accept a gRPC probe within 20 s");
}

/// submit_sm PDUs the simulator received (its counter, not the bounded message ring).
fn submits(sim: &Sim) -> u64 {
    sim.stats()["submits_received"]
        .as_u64()
        .expect("submits_received")
}

fn rejected(report: &Report, status: u16, code: &str) -> u64 {
    report
        .rejected
        .iter()
        .filter(|r| r.status == status && r.code == code)
        .map(|r| r.count)
        .sum()
}

#[test]
fn grpc_bench_counts_accepted_and_rejected() {
    let sim = Sim::start(&["--dlr-percent", "0"]);
    let gw = gateway(&sim);
    wait_ready(&gw);
    let before = submits(&sim);

    // Unary, open loop: all accepted, each reached the SMSC once.
    let r = bench(
        &gw.grpc,
        "grpc",
        &[
            "--rate",
            "300",
            "--requests",
            "300",
            "--connections",
            "4",
            "--esme",
            "100",
            "--text-mix",
            "gsm7=1",
        ],
    );
    assert_eq!(
        (r.sent, r.accepted, r.errors_total),
        (300, 300, 0),
        "{:?}",
        r.error_kinds
    );
    assert_eq!(r.histogram_ns.len(), 300, "one latency sample per answer");
    assert_eq!(submits(&sim) - before, 300);

    // Streaming: the same, over one stream per connection.
    let before = submits(&sim);
    let r = bench(
        &gw.grpc,
        "grpc-stream",
        &[
            "--rate",
            "500",
            "--requests",
            "400",
            "--connections",
            "2",
            "--pipeline",
            "32",
            "--esme",
            "100",
            "--text-mix",
            "gsm7=1",
        ],
    );
    assert_eq!(
        (r.sent, r.accepted, r.errors_total),
        (400, 400, 0),
        "{:?}",
        r.error_kinds
    );
    assert_eq!(submits(&sim) - before, 400);

    // Unknown esme: every message rejected, counted under NOT_FOUND (5) / unknown_esme.
    let r = bench(
        &gw.grpc,
        "grpc",
        &["--rate", "200", "--requests", "50", "--esme", "999"],
    );
    assert_eq!(r.accepted, 0);
    assert_eq!(rejected(&r, 5, "unknown_esme"), 50, "{:?}", r.rejected);
    assert_eq!(
        r.exit_code(0.01),
        1,
        "an all-rejected run fails the threshold"
    );

    // Over link 101's rate (20/s, burst 20) at 200/s for 0.5 s: both outcomes, and the sum is
    // exact; the simulator saw exactly the accepted ones.
    for protocol in ["grpc", "grpc-stream"] {
        std::thread::sleep(Duration::from_millis(1500)); // refill the bucket
        let before = submits(&sim);
        let r = bench(
            &gw.grpc,
            protocol,
            &[
                "--rate",
                "200",
                "--requests",
                "100",
                "--esme",
                "101",
                "--text-mix",
                "gsm7=1",
            ],
        );
        let limited = rejected(&r, 8, "rate_limited");
        assert!(
            r.accepted >= 10 && limited >= 30,
            "{protocol}: {} accepted, {limited} limited",
            r.accepted
        );
        assert_eq!(r.accepted + limited, 100, "{protocol}: {:?}", r.rejected);
        assert_eq!(
            r.transport_errors + r.timeouts + r.unsent,
            0,
            "{protocol}: {:?}",
            r.error_kinds
        );
        assert_eq!(submits(&sim) - before, r.accepted, "{protocol}");
    }
}

#[test]
fn grpc_bench_against_nothing_is_a_bounded_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let r = bench(
        &format!("127.0.0.1:{port}"),
        "grpc",
        &[
            "--rate",
            "100",
            "--duration",
            "500ms",
            "--connect-timeout",
            "200ms",
            "--drain-timeout",
            "1s",
        ],
    );
    assert_eq!(r.accepted, 0);
    assert!(r.connect_errors >= 1);
    assert_eq!(r.exit_code(0.01), 1);
    assert!(started.elapsed() < Duration::from_secs(15));
}
