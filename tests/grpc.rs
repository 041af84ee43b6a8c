//! The gRPC API against the real binary on loopback, exercised by a client we did not write:
//! Python `grpcio`, with stubs generated from `proto/` at run time by `grpcio-tools`
//! (tests/py/grpc_client.py). The gateway runs with authentication on and two links on one
//! `smsgw smsc-sim`: 100 (10000 msg/s) and 101 (1 msg/s, to provoke RESOURCE_EXHAUSTED).
//!
//! Needs `python3 -m pip install grpcio grpcio-tools` (done by `.ci/run`); without them the
//! grpcio cases print `SKIPPED:` (the flow-control and grpc_enabled cases use no Python).

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
    proc: Proc,
    http: String,
    grpc: String,
    _dir: tempfile::TempDir,
}

fn start_gateway(sim: &Sim) -> Gw {
    start_gateway_with(sim, "")
}

/// As `start_gateway`, with `server_extra` lines added to `[server]`.
fn start_gateway_with(sim: &Sim, server_extra: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let smsgw = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\nshards = 2\n\
         shutdown_timeout_ms = 5000\ninstance_id = \"grpc\"\n{server_extra}\n\n\
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
    let rules = link(100, "esme_rate = 10000") + &link(101, "esme_rate = 1\nesme_rate_burst = 1");
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
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .expect("http= in the listening line")
        .to_string();
    Gw {
        http,
        proc,
        grpc,
        _dir: dir,
    }
}

/// Runs the Python client; returns its stdout, or `None` (with a visible SKIPPED line) when
/// python3 or grpcio/grpcio-tools are missing. Fails the test on another non-zero exit or a
/// timeout.
fn run_client(gw: &Gw, extra: &[&str]) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/grpc_client.py");
    let child = Command::new("python3")
        .arg(script)
        .args(["--addr", &gw.grpc, "--secret", SECRET])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: python3 not runnable ({e}), so grpcio is not importable");
            return None;
        }
    };
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
    if status.code() == Some(77) && out.starts_with("SKIP") {
        eprintln!("SKIPPED: {}", out.trim());
        return None;
    }
    assert!(status.success(), "grpc client failed ({status}):\n{out}");
    Some(out)
}

/// submit_sm PDUs the simulator received (its counter, not the bounded message ring).
fn submits(sim: &Sim) -> u64 {
    sim.stats()["submits_received"]
        .as_u64()
        .expect("submits_received")
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
    assert_ne!(gw.grpc, "off");
    let Some(out) = run_client(&gw, &["--case", "api"]) else {
        return;
    };
    assert_eq!(result_json(&out)["ok"], true);
    // The gRPC listener stops with the rest on SIGTERM (graceful, bounded).
    let mut gw = gw;
    let status = gw.proc.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway exit after SIGTERM: {status:?}"
    );
    // Each case printed its PASS line (a silently skipped case would be missing).
    for case in [
        "login",
        "send_message_ok",
        "get_status_delivered",
        "missing_token",
        "auth_before_input",
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
    let sim = Sim::start(&["--dlr-percent", "0", "--messages-capacity", "10000"]);
    let gw = start_gateway(&sim);
    let Some(out) = run_client(&gw, &["--case", "stream", "--n", &N.to_string()]) else {
        return;
    };
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

/// A stream client that sends fast and does not read its answers is held back by HTTP/2 flow
/// control: the gateway processes a bounded number of its requests (in flight, queued answers
/// and the client's receive window) and the client cannot hand all of them to the transport;
/// once it reads, every request is answered and reaches the SMSC exactly once.
/// (Our tonic client here: the property under test is the server's bound, and the client's
/// receive window must be set small, which grpcio does not expose per channel.)
#[test]
fn grpc_stream_is_flow_controlled() {
    use smsgw::api::grpc::pb::auth::{LoginRequest, auth_client::AuthClient};
    use smsgw::api::grpc::pb::sms::v1::{
        CheckEsmeRequest, SmsRequest, sms_service_client::SmsServiceClient,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_stream::StreamExt;

    const N: usize = 4000;
    let sim = Sim::start(&["--dlr-percent", "0", "--messages-capacity", "10000"]);
    let gw = start_gateway(&sim);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = submits(&sim);
    let pulled = Arc::new(AtomicUsize::new(0));
    let mut inbound = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            // ~180 answers fit into what the client accepts without reading.
            .initial_stream_window_size(16 * 1024)
            .connect()
            .await
            .expect("connect");
        let token = AuthClient::new(channel.clone())
            .login(LoginRequest {
                app_id: 1,
                secret: SECRET.into(),
                ..Default::default()
            })
            .await
            .expect("login")
            .into_inner()
            .token;
        // Wait until link 100 is bound and healthy.
        let mut sms = SmsServiceClient::new(channel.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut q = tonic::Request::new(CheckEsmeRequest { esme: 100 });
            q.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            q.metadata_mut().insert("app_id", "1".parse().unwrap());
            let up = sms
                .check_esme(q)
                .await
                .is_ok_and(|r| r.get_ref().links.iter().all(|l| l.state == "connected"));
            if up {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "link 100 not up in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let counter = Arc::clone(&pulled);
        let requests = tokio_stream::iter(0..N).map(move |i| {
            counter.fetch_add(1, Ordering::Relaxed);
            SmsRequest {
                task_id: i as i64,
                esme: 100,
                saddr: "Test".into(),
                daddr: format!("+49153{i:08}"),
                message: format!("flow {i}"),
                ..Default::default()
            }
        });
        let mut req = tonic::Request::new(requests);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req.metadata_mut().insert("app_id", "1".parse().unwrap());
        tokio::time::timeout(
            Duration::from_secs(10),
            SmsServiceClient::new(channel).send_message_stream(req),
        )
        .await
        .expect("stream opens")
        .expect("stream accepted")
        .into_inner()
    });
    // Not reading: give the gateway ample time to process everything it would take.
    std::thread::sleep(Duration::from_secs(2));
    let processed = submits(&sim) - before;
    let handed = pulled.load(Ordering::Relaxed);
    eprintln!(
        "while not reading: {handed} of {N} requests left the client, {processed} reached the SMSC"
    );
    assert!(
        processed < 2000,
        "{processed} of {N} processed without the client reading: no flow control"
    );
    assert!(
        handed < 3500,
        "the client handed over {handed} of {N} requests"
    );
    // Now read everything: every request answered and accepted.
    let answered = rt.block_on(async {
        let mut ok = 0;
        let mut seen = std::collections::HashSet::new();
        while let Some(r) = tokio::time::timeout(Duration::from_secs(20), inbound.message())
            .await
            .expect("answers keep coming")
            .expect("stream healthy")
        {
            assert!(r.success, "{r:?}");
            assert!(seen.insert(r.task_id), "two answers for task {}", r.task_id);
            ok += 1;
        }
        ok
    });
    assert_eq!(answered, N);
    assert_eq!(submits(&sim) - before, N as u64);
}

/// `grpc_enabled = false`: no gRPC listener (`grpc=off` in the start line), REST unaffected.
#[test]
fn grpc_can_be_turned_off() {
    let sim = Sim::start(&[]);
    let gw = start_gateway_with(&sim, "grpc_enabled = false");
    assert_eq!(gw.grpc, "off");
    let (status, body) = common::http(&format!("http://{}", gw.http), "GET", "/healthy", "");
    assert_eq!(status, 200, "{body}");
}

/// The gRPC listener holds at most `max_connections_per_shard × shards` connections: one more
/// is closed at once (its call fails), and a closed connection frees its place.
#[test]
fn grpc_connections_are_bounded() {
    use smsgw::api::grpc::pb::sms::v1::{
        CheckTextLenRequest, sms_service_client::SmsServiceClient,
    };
    use tonic::transport::{Channel, Endpoint};

    let sim = Sim::start(&[]);
    // 2 shards × 2 = 4 gRPC connections.
    let gw = start_gateway_with(&sim, "max_connections_per_shard = 2");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}", gw.grpc);
    // One call on a connection of its own; UNAUTHENTICATED (no token) proves the gateway
    // answered, anything else is a transport failure.
    let call = |ch: Channel| async move {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            SmsServiceClient::new(ch).check_text_len(CheckTextLenRequest {
                message: "x".into(),
                ..Default::default()
            }),
        )
        .await;
        matches!(r, Ok(Err(s)) if s.code() == tonic::Code::Unauthenticated)
    };
    rt.block_on(async {
        let connect = || async {
            Endpoint::from_shared(url.clone())
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
        };
        let mut open = Vec::new();
        for i in 0..4 {
            let ch = connect().await.expect("connect");
            assert!(
                call(ch.clone()).await,
                "connection {i} within the bound answered"
            );
            open.push(ch);
        }
        let answered = match connect().await {
            Ok(ch) => call(ch).await,
            Err(_) => false,
        };
        assert!(!answered, "a fifth connection was served");
        // Closing one frees a place (the server notices the close asynchronously).
        drop(open.pop());
        let mut served = false;
        for _ in 0..50 {
            if let Ok(ch) = connect().await
                && call(ch).await
            {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "no place freed after closing a connection");
    });
}
