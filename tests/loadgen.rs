//! The load generator against the in-process null server on loopback: rate accuracy,
//! coordinated-omission-correct latency, error accounting and bounds. Every run here is
//! bounded by `--duration`/`--requests` and the drain timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use smsgw::loadgen::{self, BenchArgs, BenchConfig, NullServer, NullServerConfig, Report};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn bench_args(target: SocketAddr, extra: &[&str]) -> BenchArgs {
    let url = format!("http://{target}");
    let mut argv = vec!["bench", "--url", &url, "--quiet"];
    if !extra.contains(&"--threads") {
        argv.extend_from_slice(&["--threads", "1"]);
    }
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

fn bench(target: SocketAddr, extra: &[&str]) -> Report {
    let config = BenchConfig::from_args(&bench_args(target, extra)).expect("valid arguments");
    loadgen::run_bench(&config).expect("bench runs")
}

fn null_server(status: u16, stall_once: Option<(u64, Duration)>) -> NullServer {
    NullServer::start(NullServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        status,
        stall_once,
    })
    .expect("null server starts")
}

#[test]
fn open_loop_meets_the_rate_with_no_errors() {
    let server = null_server(200, None);
    let report = bench(
        server.local_addr(),
        &["--rate", "2000", "--duration", "1s", "--connections", "4"],
    );
    eprintln!("{}", report.table());
    // The schedule has exactly 2000 slots before 1 s; allow a little slack anyway.
    assert!((1900..=2000).contains(&report.sent), "sent {}", report.sent);
    assert_eq!(report.accepted, report.sent);
    assert_eq!(report.errors_total, 0, "{:?}", report.error_kinds);
    assert_eq!(report.connect_errors, 0);
    assert_eq!(
        report.histogram_ns.len(),
        report.accepted,
        "one latency sample per answer"
    );
    assert!(report.latency.p50_us > 0.0);
    assert!(report.latency.p50_us <= report.latency.p99_us);
    assert!(report.latency.p99_us <= report.latency.max_us);
    // Paced, not bursted: the answers span the whole second.
    assert!(
        report.elapsed_s > 0.95 && report.elapsed_s < 1.5,
        "elapsed {}",
        report.elapsed_s
    );
    assert!(
        (report.accepted_per_s - 2000.0).abs() < 200.0,
        "achieved {}/s",
        report.accepted_per_s
    );
    assert_eq!(server.served(), report.sent);
    assert_eq!(report.exit_code(0.01), 0);
    server.stop();
}

#[test]
fn open_loop_with_pipelining_and_two_threads_keeps_the_count() {
    let server = null_server(200, None);
    let report = bench(
        server.local_addr(),
        &[
            "--rate",
            "3000",
            "--duration",
            "500ms",
            "--connections",
            "5",
            "--pipeline",
            "4",
            "--threads",
            "2",
        ],
    );
    assert_eq!(report.sent, 1500);
    assert_eq!(report.accepted, 1500);
    assert_eq!(report.errors_total, 0, "{:?}", report.error_kinds);
    assert_eq!(report.threads, 2);
    assert_eq!(server.served(), 1500);
    server.stop();
}

#[test]
fn a_server_stall_shows_as_latency_from_the_scheduled_time() {
    // The server thread blocks for 200 ms before its 500th answer. Requests due during the
    // stall (about 400 of 2000) queue up; measured from their due times they take up to
    // 200 ms. A closed-loop tool measuring from the actual send would record one slow request
    // and a p99 near the normal latency.
    let stall = Duration::from_millis(200);
    let server = null_server(200, Some((500, stall)));
    let report = bench(
        server.local_addr(),
        &["--rate", "2000", "--duration", "1s", "--connections", "2"],
    );
    eprintln!("{}", report.table());
    assert_eq!(report.errors_total, 0, "{:?}", report.error_kinds);
    assert!((1900..=2000).contains(&report.accepted));
    let l = &report.latency;
    assert!(l.max_us >= 190_000.0, "max {} µs", l.max_us);
    assert!(l.p999_us >= 180_000.0, "p99.9 {} µs", l.p999_us);
    assert!(l.p99_us >= 150_000.0, "p99 {} µs", l.p99_us);
    // Roughly a fifth of the requests were due during the stall and waited for it.
    let slow = report.histogram_ns.count_between(20_000_000, u64::MAX);
    assert!(slow >= 250, "only {slow} requests above 20 ms");
    server.stop();
}

#[test]
fn server_errors_exceed_the_threshold_and_fail_the_run() {
    let server = null_server(500, None);
    let args = bench_args(
        server.local_addr(),
        &["--rate", "500", "--duration", "500ms", "--connections", "2"],
    );
    let config = BenchConfig::from_args(&args).unwrap();
    let report = loadgen::run_bench(&config).unwrap();
    assert_eq!(report.accepted, 0);
    assert_eq!(report.rejected_total, report.sent);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].status, 500);
    assert_eq!(report.rejected[0].code, "null_status");
    assert!((report.error_rate - 1.0).abs() < 1e-9);
    // The CLI entry point turns that into a failing exit code.
    assert_eq!(loadgen::run(args).unwrap(), 1);
    server.stop();
}

#[test]
fn closed_loop_with_pipelining_stops_at_the_request_cap() {
    let server = null_server(200, None);
    let started = Instant::now();
    let report = bench(
        server.local_addr(),
        &[
            "--rate",
            "max",
            "--requests",
            "5000",
            "--duration",
            "20s",
            "--connections",
            "4",
            "--pipeline",
            "16",
        ],
    );
    eprintln!("{}", report.table());
    assert_eq!(report.sent, 5000);
    assert_eq!(report.accepted, 5000);
    assert_eq!(report.errors_total, 0, "{:?}", report.error_kinds);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "ran {:?}",
        started.elapsed()
    );
    assert_eq!(server.served(), 5000);
    server.stop();
}

#[test]
fn closed_loop_stops_at_the_duration() {
    let server = null_server(200, None);
    let started = Instant::now();
    let report = bench(
        server.local_addr(),
        &["--rate", "max", "--duration", "500ms", "--connections", "2"],
    );
    let took = started.elapsed();
    assert!(report.accepted > 100, "only {} answered", report.accepted);
    assert_eq!(report.errors_total, 0, "{:?}", report.error_kinds);
    assert!(took < Duration::from_secs(3), "ran {took:?}");
    server.stop();
}

#[test]
fn an_unreachable_target_is_a_bounded_total_failure() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let args = bench_args(
        port,
        &[
            "--rate",
            "100",
            "--duration",
            "500ms",
            "--connections",
            "2",
            "--drain-timeout",
            "200ms",
        ],
    );
    let report = loadgen::run_bench(&BenchConfig::from_args(&args).unwrap()).unwrap();
    assert_eq!(report.sent, 0);
    assert_eq!(
        report.unsent, 50,
        "every scheduled request is accounted for"
    );
    assert!(report.connect_errors > 0);
    assert!((report.error_rate - 1.0).abs() < 1e-9);
    assert_eq!(report.exit_code(0.01), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ran {:?}",
        started.elapsed()
    );
}

#[test]
fn json_and_hdr_outputs_are_written() {
    let server = null_server(200, None);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let hdr = dir.path().join("hdr.txt");
    let args = bench_args(
        server.local_addr(),
        &[
            "--rate",
            "500",
            "--duration",
            "300ms",
            "--connections",
            "2",
            "--json",
            json.to_str().unwrap(),
            "--hdr-out",
            hdr.to_str().unwrap(),
        ],
    );
    assert_eq!(loadgen::run(args).unwrap(), 0);
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(value["sent"], 150);
    assert_eq!(value["accepted"], 150);
    assert_eq!(value["mode"], "rate");
    assert!(value["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    let text = std::fs::read_to_string(&hdr).unwrap();
    assert!(text.contains("Percentile"));
    assert!(text.contains("Total count    =          150"), "{text}");
    server.stop();
}

#[test]
fn the_precise_timer_sends_on_time() {
    // The default pacer thread wakes writers within tens of µs of the due time; monoio's 1 ms
    // timer wheel alone sends a median of about 1 ms late.
    let server = null_server(200, None);
    let report = bench(
        server.local_addr(),
        &[
            "--rate",
            "1000",
            "--duration",
            "500ms",
            "--connections",
            "2",
        ],
    );
    eprintln!("{}", report.table());
    assert_eq!(report.errors_total, 0, "{:?}", report.error_kinds);
    assert!(
        report.send_lag_p50_us < 300.0,
        "median send lag {} µs",
        report.send_lag_p50_us
    );
    let wheel = bench(
        server.local_addr(),
        &[
            "--rate",
            "1000",
            "--duration",
            "500ms",
            "--connections",
            "2",
            "--timer",
            "wheel",
        ],
    );
    assert_eq!(wheel.errors_total, 0, "{:?}", wheel.error_kinds);
    assert_eq!(wheel.accepted, 500);
    server.stop();
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn spawn_sim_runs_the_simulator_for_the_bench_only() {
    let server = null_server(200, None);
    let sim = free_port();
    let sim_addr = sim.to_string();
    let args = bench_args(
        server.local_addr(),
        &[
            "--rate",
            "200",
            "--duration",
            "300ms",
            "--connections",
            "1",
            "--spawn-sim",
            "--sim-listen",
            &sim_addr,
            "--sim-bin",
            env!("CARGO_BIN_EXE_smsgw"),
        ],
    );
    assert_eq!(loadgen::run(args).unwrap(), 0);
    // The guard killed and reaped the child, so its port closes. Not instantly: the kernel
    // tears down an exited process's io_uring (which holds the listener through a pending
    // accept) in deferred work, so poll briefly.
    let closed_by = Instant::now() + Duration::from_secs(3);
    while std::net::TcpStream::connect_timeout(&sim, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < closed_by,
            "simulator still listening after the bench"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A simulator that cannot start is a clear error, not a hang.
    let args = bench_args(
        server.local_addr(),
        &[
            "--duration",
            "100ms",
            "--spawn-sim",
            "--sim-listen",
            &sim_addr,
            "--sim-bin",
            env!("CARGO_BIN_EXE_smsgw"),
            "--sim-arg=--no-such-flag",
        ],
    );
    let err = loadgen::run(args).unwrap_err();
    assert!(err.to_string().contains("smsc-sim"), "{err}");
    server.stop();
}
