//! Delivery callbacks through the real binaries (issue 5, point 5): `smsgw serve` with
//! authentication on, `smsgw smsc-sim` emitting receipts, and a small HTTP server in this test
//! playing the customer's webhook receiver.
//!
//! Signatures are checked here with an independent implementation of the documented
//! algorithm (docs/operations.md, "Delivery callbacks"), not with the gateway's own code.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{GatewayOptions, LinkSpec, Proc, Sim, wait_until};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const SERVER_KEY: &str = "callbacks-test-server-key-0123456789abcdef";
const SECRET_1: &str = "app-one-callback-secret";
const SECRET_2: &str = "app-two-callback-secret";
/// argon2id of something; the tests mint tokens with the server key, they never log in.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$LJfYVHi9BnnsKj0SN4l4iA$iUds5Uhe4xTr4l9NBy0pwmuqlqNUPRUzJbFXr2UnXVA";
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The receiver: a blocking HTTP/1.1 server (keep-alive, Content-Length bodies) that records
// every request and answers from a script of status codes (then `fallback`).

#[derive(Debug, Clone)]
struct Req {
    at: Instant,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Req {
    fn events(&self) -> Vec<Value> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Array(a)) => a,
            other => panic!("callback body is not a JSON array: {other:?}"),
        }
    }
}

#[derive(Default)]
struct RxState {
    reqs: Mutex<Vec<Req>>,
    script: Mutex<VecDeque<u16>>,
    fallback: Mutex<u16>,
}

struct Receiver {
    port: u16,
    state: Arc<RxState>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, script: &[u16], fallback: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(RxState::default());
        *state.script.lock().unwrap() = script.iter().copied().collect();
        *state.fallback.lock().unwrap() = fallback;
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !sp.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (st, sp) = (Arc::clone(&st), Arc::clone(&sp));
                        conns.push(std::thread::spawn(move || serve_conn(s, &st, &sp)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener closes here (connects are refused); connections close below.
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        Receiver {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn reqs(&self) -> Vec<Req> {
        self.state.reqs.lock().unwrap().clone()
    }

    /// Every event received, with the index of the request that carried it.
    fn events(&self) -> Vec<(usize, Value)> {
        self.reqs()
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.events().into_iter().map(move |e| (i, e)))
            .collect()
    }

    fn event_ids(&self) -> HashSet<String> {
        self.events()
            .into_iter()
            .map(|(_, e)| e["event_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Ids of the events the receiver accepted (answered 2xx).
    fn accepted_ids(&self) -> HashSet<String> {
        self.reqs()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| r.events())
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Stops accepting and closes every connection (the receiver is "down").
    fn shut(mut self) -> Vec<Req> {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.reqs()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve_conn(mut s: TcpStream, st: &RxState, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    while !stop.load(Ordering::Acquire) {
        // A complete request in `buf`?
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let path = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("")
                .to_string();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                let code = st
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(*st.fallback.lock().unwrap());
                st.reqs.lock().unwrap().push(Req {
                    at: Instant::now(),
                    path,
                    headers,
                    body,
                    status: code,
                });
                let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                if s.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The documented signature check, written independently of src/callback/sign.rs.

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `X-Smsgw-Signature: t=<unix>,v1=<hex(HMAC-SHA256(secret, "<t>." + body))>`, t within 5 min.
fn signature_ok(secret: &str, r: &Req) -> bool {
    let Some(h) = r.headers.get("x-smsgw-signature") else {
        return false;
    };
    let mut t = None;
    let mut v1 = Vec::new();
    for part in h.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if t.abs_diff(now) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    let expected = hex(&mac.finalize().into_bytes());
    v1.contains(&expected)
}

// ---------------------------------------------------------------------------------------------
// Gateway with authentication on and two apps (1: per-message URLs; 2: a default URL).

struct Gw {
    proc: Proc,
    url: String,
    tokens: HashMap<u64, String>,
}

fn write_setup(dir: &Path, sim: &Sim, app2_url: &str, callbacks: &str) -> (PathBuf, PathBuf) {
    let opts = GatewayOptions {
        shards: 2,
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..GatewayOptions::default()
    };
    let (a, b) = common::write_configs(dir, &opts);
    let text = std::fs::read_to_string(&a).unwrap();
    assert!(text.contains("[security]\nenabled = false\n") && text.contains("[callbacks]\n"));
    let text = text
        .replace(
            "[security]\nenabled = false\n",
            "[security]\napps_file = \"apps.toml\"\n",
        )
        .replace("[callbacks]\n", &format!("[callbacks]\n{callbacks}"));
    std::fs::write(&a, text).unwrap();
    let apps = format!(
        "[apps.1]\nname = \"one\"\nsecret_hash = \"{HASH}\"\nallowed_cidrs = [\"127.0.0.1/32\", \"::1/128\"]\n\
         callback_secret = \"{SECRET_1}\"\n\n\
         [apps.2]\nname = \"two\"\nsecret_hash = \"{HASH}\"\nallowed_cidrs = [\"127.0.0.1/32\", \"::1/128\"]\n\
         callback_url = \"{app2_url}\"\ncallback_secret = \"{SECRET_2}\"\n"
    );
    std::fs::write(dir.join("apps.toml"), apps).unwrap();
    (a, b)
}

/// Test defaults: fast back-off so retries fit in seconds.
const FAST: &str = "backoff_initial_ms = 200\nbackoff_max_ms = 1000\nbatch_linger_ms = 30\n";

fn start_gw(a: &Path, b: &Path) -> Gw {
    let (proc, line) = common::spawn_serve(a, b, &[("SMSGW_JWT_SECRET", SERVER_KEY)]);
    let mut tokens = HashMap::new();
    for app in [1u64, 2] {
        let out = std::process::Command::new(common::BIN)
            .args(["token", "--config"])
            .arg(a)
            .arg("--rules")
            .arg(b)
            .args(["--app-id", &app.to_string()])
            .env("SMSGW_JWT_SECRET", SERVER_KEY)
            .output()
            .expect("smsgw token");
        assert!(out.status.success(), "token: {out:?}");
        tokens.insert(
            app,
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
        );
    }
    let gw = Gw {
        proc,
        url: common::http_url_of(&line),
        tokens,
    };
    let ok = wait_until(WAIT, || {
        let (st, v) = gw.call(1, "GET", "/api/v1/smpp/links", "");
        st == 200 && v["links"][0]["state"] == "connected"
    });
    assert!(ok, "link 100 not connected");
    gw
}

impl Gw {
    fn call(&self, app: u64, method: &str, path: &str, body: &str) -> (u16, Value) {
        let headers = [
            ("Authorization", format!("Bearer {}", self.tokens[&app])),
            ("X-App-ID", app.to_string()),
        ];
        let (st, text) = smsgw::api::client::request(
            &self.url,
            method,
            path,
            &headers,
            body.as_bytes(),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn send(&self, app: u64, txid: &str, callback_url: Option<&str>) -> (u16, Value) {
        let mut body = serde_json::json!({
            "esme": 100, "source": "Test", "destination": "4915100000001",
            "message": "hello", "transaction_id": txid,
        });
        if let Some(u) = callback_url {
            body["callback_url"] = Value::from(u);
        }
        self.call(app, "POST", "/api/v1/sms/send", &body.to_string())
    }

    fn send_ok(&self, app: u64, txid: &str, callback_url: Option<&str>) -> Value {
        let (st, v) = self.send(app, txid, callback_url);
        assert_eq!(st, 200, "send {txid}: {v}");
        v
    }

    fn wait_status(&self, app: u64, txid: &str, status: &str) {
        let ok = wait_until(WAIT, || {
            self.call(app, "GET", &format!("/api/v1/sms/{txid}"), "").1["status"] == status
        });
        assert!(ok, "{txid} not {status}");
    }

    /// A sample of `/metrics`; `None` when the series is not exported.
    fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let (st, text) = smsgw::api::client::request(
            &self.url,
            "GET",
            "/metrics",
            &[],
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(st, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
    }

    /// Asserts `series >= min` (docs/metrics.md, "Delivery-status callbacks").
    fn assert_metric_at_least(&self, series: &str, min: f64) {
        let v = self
            .metric(series)
            .unwrap_or_else(|| panic!("{series} is not exported by /metrics"));
        assert!(v >= min, "{series} = {v}, want >= {min}");
    }
}

/// Waits until the receiver accepted (2xx) every event in `want`.
fn wait_events(rx: &Receiver, want: &[String]) {
    let ok = wait_until(WAIT, || {
        let got = rx.accepted_ids();
        want.iter().all(|w| got.contains(w))
    });
    assert!(
        ok,
        "missing events: want {want:?}, got {:?}",
        rx.event_ids()
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn signed_events_for_submitted_and_delivered_per_message_and_per_app_default_url() {
    let sim = Sim::start(&[]);
    let rx = Receiver::start(0, &[], 200);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_setup(dir.path(), &sim, &rx.url("/app-two"), FAST);
    let gw = start_gw(&a, &b);

    // Invalid URLs are refused before anything is recorded, with a machine-readable code.
    for bad in [
        "ftp://127.0.0.1/x",
        "http://user:pw@127.0.0.1/x",
        "not a url",
    ] {
        let (st, v) = gw.send(1, "bad-url", Some(bad));
        assert_eq!(st, 422, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_callback_url", "{bad}: {v}");
    }
    let (st, _) = gw.call(1, "GET", "/api/v1/sms/bad-url", "");
    assert_eq!(st, 404, "a refused send must not be recorded");

    let answer = gw.send_ok(1, "m-1", Some(&rx.url("/per-message")));
    let smsc_id = answer["message_ids"][0].as_str().unwrap().to_string();
    gw.send_ok(2, "d-1", None);
    wait_events(
        &rx,
        &[
            "1:m-1:submitted".into(),
            "1:m-1:delivered".into(),
            "2:d-1:submitted".into(),
            "2:d-1:delivered".into(),
        ],
    );
    for r in rx.reqs() {
        let app = r.events()[0]["app_id"].as_u64().unwrap();
        let (secret, other, path) = match app {
            1 => (SECRET_1, SECRET_2, "/per-message"),
            2 => (SECRET_2, SECRET_1, "/app-two"),
            _ => panic!("unexpected app {app}"),
        };
        assert_eq!(r.path, path);
        assert!(signature_ok(secret, &r), "bad signature: {:?}", r.headers);
        assert!(
            !signature_ok(other, &r),
            "signature must depend on the app's secret"
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(
            r.headers.get("x-smsgw-event-count"),
            Some(&r.events().len().to_string())
        );
        // Tampering with the body breaks the signature.
        let mut tampered = r.clone();
        tampered.body.push(b' ');
        assert!(!signature_ok(secret, &tampered));
    }
    let events = rx.events();
    let find = |id: &str| {
        events
            .iter()
            .find(|(_, e)| e["event_id"] == id)
            .map(|(_, e)| e.clone())
            .unwrap()
    };
    let sub = find("1:m-1:submitted");
    assert_eq!(sub["type"], "message.status");
    assert_eq!(sub["transaction_id"], "m-1");
    assert_eq!(sub["status"], "submitted");
    assert_eq!(sub["final"], false);
    assert_eq!(sub["esme"], 100);
    assert_eq!(sub["link"], 100);
    assert_eq!(sub["destination"], "4915100000001");
    assert_eq!(sub["parts"][0]["status"], "submitted");
    let del = find("1:m-1:delivered");
    assert_eq!(del["status"], "delivered");
    assert_eq!(del["final"], true);
    assert_eq!(del["parts"][0]["smsc_message_id"], smsc_id.as_str());
    assert_eq!(del["parts"][0]["receipt"]["stat"], "DELIVRD");
    assert!(del["occurred_at_ms"].as_u64() >= sub["occurred_at_ms"].as_u64());
    // The message text is never sent to the receiver.
    assert!(
        rx.reqs()
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("hello"))
    );
    gw.assert_metric_at_least("smsgw_callback_posts_ok_total", 1.0);
    gw.assert_metric_at_least("smsgw_callback_events_enqueued_total", 4.0);
    drop(gw);
}

#[test]
fn receiver_errors_are_retried_with_backoff_then_delivered() {
    // No receipts: the one event (submitted) meets the whole script.
    let sim = Sim::start(&["--dlr-percent", "0"]);
    // The first two POSTs fail with 500, everything after succeeds.
    let rx = Receiver::start(0, &[500, 500], 200);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_setup(dir.path(), &sim, &rx.url("/unused"), FAST);
    let gw = start_gw(&a, &b);
    gw.send_ok(1, "r-1", Some(&rx.url("/flaky")));
    wait_events(&rx, &["1:r-1:submitted".into()]);
    let reqs = rx.reqs();
    let carrying = |id: &str| -> Vec<Instant> {
        reqs.iter()
            .filter(|r| r.events().iter().any(|e| e["event_id"] == id))
            .map(|r| r.at)
            .collect()
    };
    let tries = carrying("1:r-1:submitted");
    assert_eq!(tries.len(), 3, "500, 500, 200 means three POSTs");
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // Back-off with equal jitter: retry n waits at least half of 200 ms · 2^(n-1).
    let gap1 = tries[1] - tries[0];
    let gap2 = tries[2] - tries[1];
    assert!(
        gap1 >= Duration::from_millis(90),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(190),
        "second retry after {gap2:?}"
    );
    assert!(gap2 < Duration::from_secs(5) && gap1 < Duration::from_secs(5));
    // Done once answered 2xx: never sent again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.reqs().len(), 3, "an event was sent again after its 2xx");
    gw.assert_metric_at_least(
        "smsgw_callback_posts_failed_total{reason=\"http_5xx\"}",
        2.0,
    );
    drop(gw);
}

#[test]
fn events_survive_sigkill_while_the_receiver_is_down() {
    let sim = Sim::start(&[]);
    // Learn a free port, then take the receiver down: every POST fails to connect.
    let rx = Receiver::start(0, &[], 200);
    let port = rx.port;
    let url = rx.url("/later");
    assert!(rx.shut().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_setup(dir.path(), &sim, &url, FAST);
    let mut gw = start_gw(&a, &b);
    const N: usize = 10;
    let mut want = Vec::new();
    for i in 0..N {
        let txid = format!("k-{i}");
        gw.send_ok(1, &txid, Some(&url));
        want.push(format!("1:{txid}:submitted"));
        want.push(format!("1:{txid}:delivered"));
    }
    for i in 0..N {
        gw.wait_status(1, &format!("k-{i}"), "delivered");
    }
    // Let a few connect failures happen before the kill (first tries after 30 ms linger,
    // retries after 100..200 ms, 200..400 ms, ...).
    std::thread::sleep(Duration::from_millis(1500));
    gw.assert_metric_at_least("smsgw_callback_posts_failed_total{reason=\"connect\"}", 1.0);
    // SIGKILL: no shutdown path runs.
    gw.proc.kill();
    let rx = Receiver::start(port, &[], 200);
    let gw = start_gw(&a, &b);
    wait_events(&rx, &want);
    let got = rx.event_ids();
    assert_eq!(got.len(), 2 * N, "unexpected events: {got:?}");
    for r in rx.reqs() {
        assert!(signature_ok(SECRET_1, &r));
    }
    // Delivered events leave the outbox.
    let drained = wait_until(WAIT, || {
        gw.metric("smsgw_callback_outbox_backlog") == Some(0.0)
    });
    assert!(
        drained,
        "backlog {:?}",
        gw.metric("smsgw_callback_outbox_backlog")
    );
    drop(gw);
}

#[test]
fn many_due_events_share_posts() {
    let sim = Sim::start(&[]);
    let rx = Receiver::start(0, &[], 200);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_setup(
        dir.path(),
        &sim,
        &rx.url("/unused"),
        "backoff_initial_ms = 200\nbackoff_max_ms = 1000\nbatch_linger_ms = 200\nbatch_max_events = 50\nper_url_concurrency = 1\n",
    );
    let gw = Arc::new(start_gw(&a, &b));
    const N: usize = 60;
    let url = rx.url("/bulk");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let gw = Arc::clone(&gw);
            let url = url.clone();
            std::thread::spawn(move || {
                for i in (t..N).step_by(4) {
                    gw.send_ok(1, &format!("b-{i}"), Some(&url));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let want: Vec<String> = (0..N)
        .flat_map(|i| [format!("1:b-{i}:submitted"), format!("1:b-{i}:delivered")])
        .collect();
    wait_events(&rx, &want);
    let reqs = rx.reqs();
    let events: usize = reqs.iter().map(|r| r.events().len()).sum();
    let biggest = reqs.iter().map(|r| r.events().len()).max().unwrap();
    eprintln!(
        "{events} events in {} POSTs (largest {biggest})",
        reqs.len()
    );
    assert!(
        reqs.len() * 2 <= events,
        "{} POSTs for {events} events",
        reqs.len()
    );
    assert!(
        biggest > 1 && biggest <= 50,
        "largest POST has {biggest} events"
    );
    for r in &reqs {
        assert!(signature_ok(SECRET_1, r));
    }
    drop(gw);
}

#[test]
fn client_errors_give_up_without_retrying() {
    let sim = Sim::start(&[]);
    let rx = Receiver::start(0, &[], 410);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_setup(dir.path(), &sim, &rx.url("/unused"), FAST);
    let gw = start_gw(&a, &b);
    gw.send_ok(1, "g-1", Some(&rx.url("/gone")));
    gw.wait_status(1, "g-1", "delivered");
    // Answered 410, so never accepted: wait until both were seen.
    let seen = wait_until(WAIT, || rx.event_ids().len() == 2);
    assert!(seen, "events seen: {:?}", rx.event_ids());
    // With a 200 ms back-off a retry would have come several times in this window.
    std::thread::sleep(Duration::from_secs(2));
    let events = rx.events();
    let ids: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["event_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "an event was retried after a 4xx: {ids:?}"
    );
    gw.assert_metric_at_least("smsgw_callback_events_gave_up_total", 2.0);
    gw.assert_metric_at_least(
        "smsgw_callback_posts_failed_total{reason=\"http_4xx\"}",
        1.0,
    );
    drop(gw);
}

#[test]
fn a_message_in_flight_at_sigkill_gets_its_unknown_event_from_crash_recovery() {
    // The SMSC answers after 1.5 s (below the link's 2 s response timeout, so the session
    // stays healthy): the send below is on the wire when the gateway is killed.
    let sim = Sim::start(&["--latency-ms", "1500"]);
    let rx = Receiver::start(0, &[], 200);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_setup(dir.path(), &sim, &rx.url("/unused"), FAST);
    let mut gw = start_gw(&a, &b);
    let url = rx.url("/recovered");
    let headers = (gw.url.clone(), gw.tokens[&1].clone());
    let sender = std::thread::spawn(move || {
        let body = serde_json::json!({
            "esme": 100, "source": "Test", "destination": "4915100000001",
            "message": "in flight", "transaction_id": "c-1", "callback_url": url,
        });
        // The connection dies with the gateway; the answer does not matter.
        let _ = smsgw::api::client::request(
            &headers.0,
            "POST",
            "/api/v1/sms/send",
            &[
                ("Authorization", format!("Bearer {}", headers.1)),
                ("X-App-ID", "1".into()),
            ],
            body.to_string().as_bytes(),
            Duration::from_secs(20),
        );
    });
    let on_wire = wait_until(WAIT, || !sim.messages(10).is_empty());
    assert!(on_wire, "the submit_sm never reached the simulator");
    gw.proc.kill();
    sender.join().unwrap();
    let gw = start_gw(&a, &b);
    gw.wait_status(1, "c-1", "unknown");
    wait_events(&rx, &["1:c-1:unknown".into()]);
    let events = rx.events();
    let (_, e) = events
        .iter()
        .find(|(_, e)| e["event_id"] == "1:c-1:unknown")
        .unwrap();
    assert_eq!(e["final"], true);
    assert_eq!(e["parts"][0]["status"], "unknown");
    assert!(
        !rx.event_ids().contains("1:c-1:submitted"),
        "the outcome was never known: no submitted event"
    );
    for r in rx.reqs() {
        assert!(signature_ok(SECRET_1, &r));
    }
    drop(gw);
}
