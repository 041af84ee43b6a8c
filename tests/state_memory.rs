//! `[state] backend = "memory"` through the real binary: a message goes end to end (accepted,
//! submitted to the simulator, delivered by its receipt, idempotent while the process lives),
//! the start says loudly that nothing is durable, and a restart really forgets everything, as
//! documented (docs/operations.md, "Memory backend").

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{GatewayOptions, LinkSpec, Proc, Sim, http, wait_until};

fn memory_configs(dir: &Path, sim: &Sim) -> (PathBuf, PathBuf) {
    let o = GatewayOptions {
        links: vec![LinkSpec::new(100, sim.smpp_port)],
        ..GatewayOptions::default()
    };
    let (a, b) = common::write_configs(dir, &o);
    let text = std::fs::read_to_string(&a).unwrap();
    assert!(text.contains("[state]\n"), "{text}");
    let text = text.replacen("[state]\n", "[state]\nbackend = \"memory\"\n", 1);
    std::fs::write(&a, text).unwrap();
    (a, b)
}

/// `smsgw serve` with its stderr kept (to find the startup warning); returns the process, its
/// base URL and the stderr lines so far (still filling).
fn start(a: &Path, b: &Path) -> (Proc, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(a)
        .arg("--rules")
        .arg(b)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn smsgw");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("smsgw listening") {
                let _ = tx.send(line);
            }
        }
    });
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[gw] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let proc = Proc {
        name: "gw".into(),
        child,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway not ready within 30 s");
    (proc, common::http_url_of(&line), logs)
}

fn body(tx: &str) -> String {
    serde_json::json!({
        "esme": 100, "source": "Test", "destination": "+4915112345678",
        "message": "memory backend", "transaction_id": tx,
    })
    .to_string()
}

fn received(sim: &Sim) -> usize {
    sim.messages(1000)
        .iter()
        .filter(|m| m.to_string().contains("memory backend"))
        .count()
}

#[test]
fn memory_backend_sends_end_to_end_and_forgets_on_restart() {
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = memory_configs(dir.path(), &sim);

    // check-config names the backend and says it is not durable.
    let out = Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&a)
        .arg("--rules")
        .arg(&b)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("state memory") && text.contains("NOT durable"),
        "{text}"
    );

    let (mut gw, url, logs) = start(&a, &b);
    // Logged before the ready line, but read by another thread: allow it a moment.
    let warned = wait_until(Duration::from_secs(5), || {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("NOT DURABLE"))
    });
    assert!(warned, "no startup warning: {:?}", logs.lock().unwrap());
    common::wait_link_connected(&url, 100);
    let (st, v) = http(&url, "POST", "/api/v1/sms/send", &body("mem-1"));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], false, "{v}");
    let ok = wait_until(Duration::from_secs(20), || {
        http(&url, "GET", "/api/v1/sms/mem-1", "").1["status"] == "delivered"
    });
    assert!(ok, "{}", http(&url, "GET", "/api/v1/sms/mem-1", "").1);
    // Idempotent while the process lives.
    let (st, again) = http(&url, "POST", "/api/v1/sms/send", &body("mem-1"));
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["message_ids"], v["message_ids"], "{again}");
    assert!(wait_until(Duration::from_secs(5), || received(&sim) == 1));
    // Nothing on disk where the embedded store would live.
    assert!(
        !dir.path().join("state").exists(),
        "memory backend wrote a state dir"
    );

    // A graceful restart forgets everything: the record and the idempotency key.
    assert!(
        gw.terminate(Duration::from_secs(15)).is_some(),
        "no graceful stop"
    );
    let (_gw, url, _) = start(&a, &b);
    common::wait_link_connected(&url, 100);
    let (st, v) = http(&url, "GET", "/api/v1/sms/mem-1", "");
    assert_eq!(
        st, 404,
        "record survived a restart of the memory backend: {v}"
    );
    let (st, v) = http(&url, "POST", "/api/v1/sms/send", &body("mem-1"));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], false, "idempotency key survived: {v}");
    assert!(
        wait_until(Duration::from_secs(10), || received(&sim) == 2),
        "the resend after the restart did not reach the SMSC: {}",
        received(&sim)
    );
}
