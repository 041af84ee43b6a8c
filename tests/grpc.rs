//! The gRPC API against the real binary on loopback, exercised by a client we did not write:
//! Python `grpcio`, with stubs generated from `proto/` at run time by `grpcio-tools`
//! (tests/py/grpc_client.py). The gateway runs with authentication on and two links on one
//! `smsgw smsc-sim`: 100 (1000 msg/s) and 101 (1 msg/s, to provoke RESOURCE_EXHAUSTED).
//!
//! Needs `python3 -m pip install grpcio grpcio-tools` (done by `.ci/run`).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, Sim, spawn};

const SERVER_KEY: &str = "0123456789abcdef0123456789abcdef-grpc-key";
const SECRET: &str = "grpc-s3cret";
/// Bound on one Python client run (it bounds each RPC and wait itself; this is the backstop).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

struct Gw {
    _proc: Proc,
    grpc: String,
    _dir: tempfile::TempDir,
}

fn start_gateway(sim: &Sim) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let smsgw = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\nshards = 2\n\
         shutdown_timeout_ms = 5000\ninstance_id = \"grpc\"\n\n\
         [state]\npath = \"{state}\"\nfsync = \"off\"\nbatch_delay_us = 0\n\n\
         [health]\ncheck_interval_s = 1\n\n\
         [security]\napps_file = \"apps.toml\"\n\n\
         [cdr]\ndir = \"{cdr}\"\nflush_interval_ms = 200\n\n\
         [callbacks]\npath = \"{callbacks}\"\n",
        state = dir.path().join("state").display(),
        cdr = dir.path().join("cdr").display(),
        callbacks = dir.path().join("callbacks").display(),
    );
    let link = |id: u32, rate: &str| {
        format!(
            "[links.{id}]\nhost = \"127.0.0.1\"\nport = {port}\nsystem_id = \"gw{id}\"\n\
             password = \"pw\"\n{rate}\nenquire_interval_s = 1\nresp_timeout_ms = 2000\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 500\n\n",
            port = sim.smpp_port
        )
    };
    let rules = link(100, "esme_rate = 1000") + &link(101, "esme_rate = 1\nesme_rate_burst = 1");
    // App 1 may use both links; app 2 only link 100 (for PERMISSION_DENIED).
    let apps = format!(
        "[apps.1]\nname = \"one\"\nsecret_hash = \"{h}\"\nallowed_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n\
         allowed_esmes = [100, 101]\n\n\
         [apps.2]\nname = \"two\"\nsecret_hash = \"{h}\"\nallowed_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n\
         allowed_esmes = [100]\n",
        h = smsgw::auth::hash_secret(SECRET)
    );
    std::fs::write(dir.path().join("smsgw.toml"), smsgw).unwrap();
    std::fs::write(dir.path().join("smpp_rules.toml"), rules).unwrap();
    std::fs::write(dir.path().join("apps.toml"), apps).unwrap();
    let args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        dir.path().join("smsgw.toml").display().to_string(),
        "--rules".into(),
        dir.path().join("smpp_rules.toml").display().to_string(),
    ];
    let (proc, line) = spawn(
        "gw",
        &args,
        &[("SMSGW_JWT_SECRET", SERVER_KEY)],
        "smsgw listening",
        Duration::from_secs(30),
    );
    let grpc = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("grpc= in the listening line")
        .to_string();
    assert_ne!(grpc, "off", "gRPC listener is off: {line}");
    Gw {
        _proc: proc,
        grpc,
        _dir: dir,
    }
}

/// Runs the Python client; returns its stdout. Fails the test on a non-zero exit or timeout.
fn run_client(gw: &Gw, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/grpc_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--addr", &gw.grpc, "--secret", SECRET])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (with grpcio and grpcio-tools installed)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("grpc client did not finish within {CLIENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    eprintln!("{out}");
    assert!(status.success(), "grpc client failed ({status}):\n{out}");
    out
}

fn result_json(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("RESULT line");
    serde_json::from_str(line).unwrap()
}

/// Every unary case: send → delivered, auth failures, bad input, rate limit, NOT_FOUND,
/// CheckTextLen, CheckESME, Login, and a mixed stream.
#[test]
fn grpc_api_cases_with_grpcio() {
    let sim = Sim::start(&[]);
    let gw = start_gateway(&sim);
    let out = run_client(&gw, &["--case", "api"]);
    assert_eq!(result_json(&out)["ok"], true);
    // Each case printed its PASS line (a silently skipped case would be missing).
    for case in [
        "login",
        "send_message_ok",
        "get_status_delivered",
        "missing_token",
        "invalid_token",
        "wrong_app_metadata",
        "esme_not_allowed",
        "invalid_daddr",
        "rate_limited",
        "unknown_transaction",
        "text_len_gsm7",
        "check_esme_one",
        "stream_mixed",
    ] {
        assert!(
            out.lines().any(|l| l == format!("PASS {case}")),
            "case {case} did not pass:\n{out}"
        );
    }
}

/// 500 messages over one bidirectional stream: 500 answers, all accepted, and the simulator
/// received each message exactly once.
#[test]
fn grpc_stream_500_each_exactly_once() {
    const N: usize = 500;
    let sim = Sim::start(&["--dlr-percent", "0"]);
    let gw = start_gateway(&sim);
    let out = run_client(&gw, &["--case", "stream", "--n", &N.to_string()]);
    let result = result_json(&out);
    assert_eq!(result["n"], N);
    // The client's destinations: one per message, `+49152` and the index in 8 digits (the
    // submit_sm carries them without the `+`; the TON says international).
    let dests: Vec<String> = (0..N).map(|i| format!("49152{i:08}")).collect();
    let msgs = sim.messages(100_000);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for m in &msgs {
        if let Some(d) = m["destination"].as_str() {
            *seen.entry(d.to_string()).or_default() += 1;
        }
    }
    for d in &dests {
        assert_eq!(
            seen.get(d).copied(),
            Some(1),
            "{d} reached the SMSC {:?} times",
            seen.get(d)
        );
    }
    eprintln!(
        "stream of {N}: {:.3} s",
        result["elapsed_s"].as_f64().unwrap_or(0.0)
    );
}
