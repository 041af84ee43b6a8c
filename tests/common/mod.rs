//! Shared helpers for integration tests that run the real `smsgw` binary: start the gateway
//! and simulators on loopback ports the OS picks, wait for readiness, talk HTTP, and kill
//! every child on drop (also when a test panics).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod moto;

pub const BIN: &str = env!("CARGO_BIN_EXE_smsgw");

/// A child process killed (SIGKILL) and reaped on drop unless it already exited.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_timeout(timeout)
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Spawns `smsgw <args>` with `env`, forwards its stderr to the test's stderr (prefixed), and
/// returns the first stdout line that starts with `ready_prefix` (within `timeout`).
pub fn spawn(
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
    ready_prefix: &str,
    timeout: Duration,
) -> (Proc, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env(
        "RUST_LOG",
        std::env::var("SMSGW_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let prefix = ready_prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&prefix) {
                let _ = tx.send(line);
            }
        }
    });
    let tag = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
        }
    });
    let mut proc = Proc {
        name: name.to_string(),
        child,
    };
    match rx.recv_timeout(timeout) {
        Ok(line) => (proc, line),
        Err(_) => {
            let status = proc.child.try_wait();
            proc.kill();
            panic!("{name} did not become ready within {timeout:?} (exit: {status:?})");
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `http://<addr>` from a ready line's `http=<addr>` field (`smsgw listening ...`).
pub fn http_url_of(ready_line: &str) -> String {
    let addr = field(ready_line, "http").expect("http= in the ready line");
    format!("http://{addr}")
}

/// A running simulator.
pub struct Sim {
    pub proc: Proc,
    pub smpp_port: u16,
    pub control: String,
}

impl Sim {
    /// `POST /faults` on the control port; panics unless it is taken.
    pub fn set_faults(&self, json: &str) {
        let (st, v) = http(&self.control, "POST", "/faults", json);
        assert_eq!(st, 200, "POST /faults {json}: {v}");
    }

    /// Starts `smsgw smsc-sim` on OS-chosen ports; `extra` are more flags.
    pub fn start(extra: &[&str]) -> Sim {
        Self::start_on(0, extra)
    }

    /// As `start`, on a given SMPP port (to bring a "killed" SMSC back on the same address).
    pub fn start_on(smpp_port: u16, extra: &[&str]) -> Sim {
        let mut args: Vec<String> = vec![
            "smsc-sim".into(),
            "--listen".into(),
            format!("127.0.0.1:{smpp_port}"),
            "--control-port".into(),
            "0".into(),
            "--dlr-delay-ms".into(),
            "50".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (proc, line) = spawn(
            "sim",
            &args,
            &[],
            "smsc-sim listening",
            Duration::from_secs(20),
        );
        let smpp: std::net::SocketAddr = field(&line, "smpp")
            .and_then(|a| a.parse().ok())
            .expect("smpp addr");
        let control = field(&line, "control").expect("control addr").to_string();
        Sim {
            proc,
            smpp_port: smpp.port(),
            control: format!("http://{control}"),
        }
    }

    /// `GET /messages?limit=N` → the `messages` array.
    pub fn messages(&self, limit: usize) -> Vec<Value> {
        let (st, v) = http(
            &self.control,
            "GET",
            &format!("/messages?limit={limit}"),
            "",
        );
        assert_eq!(st, 200, "sim /messages: {v}");
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    pub fn stats(&self) -> Value {
        http(&self.control, "GET", "/stats", "").1
    }

    pub fn submits_total(&self) -> u64 {
        self.messages(100_000).len() as u64
    }
}

/// One `[links.N]` of a test config.
#[derive(Clone)]
pub struct LinkSpec {
    pub id: u32,
    pub port: u16,
    pub binds: u32,
    pub system_id: String,
    pub extra: String,
}

impl LinkSpec {
    pub fn new(id: u32, port: u16) -> LinkSpec {
        LinkSpec {
            id,
            port,
            binds: 1,
            system_id: format!("gw{id}"),
            extra: String::new(),
        }
    }
}

/// A running gateway with its temporary config and state directory.
pub struct Gateway {
    pub proc: Proc,
    pub url: String,
    pub dir: tempfile::TempDir,
}

pub struct GatewayOptions {
    pub shards: u32,
    pub links: Vec<LinkSpec>,
    /// `(pool id, [(link, weight)])`
    pub pools: Vec<(u32, Vec<(u32, u32)>)>,
    pub max_body_bytes: u32,
    pub legacy_driver: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            shards: 2,
            links: Vec::new(),
            pools: Vec::new(),
            max_body_bytes: 16 * 1024,
            legacy_driver: false,
        }
    }
}

/// Test runs cover both drivers: `SMSGW_TEST_LEGACY=1` (or the option) forces epoll.
pub fn legacy_from_env() -> bool {
    std::env::var("MONOIO_FORCE_LEGACY_DRIVER").is_ok_and(|v| v == "1")
}

pub fn write_configs(dir: &Path, o: &GatewayOptions) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    let smsgw = format!(
        r#"[server]
http_addr = "127.0.0.1:0"
grpc_addr = "127.0.0.1:0"
shards = {shards}
max_body_bytes = {body}
shutdown_timeout_ms = 5000
instance_id = "test"

[state]
path = "{state}"
fsync = "off"
batch_delay_us = 0

[health]
check_interval_s = 1

[security]
enabled = false

[cdr]
dir = "{cdr}"
flush_interval_ms = 200

[callbacks]
path = "{callbacks}"
"#,
        shards = o.shards,
        body = o.max_body_bytes,
        state = state.display(),
        // CDRs stay in the test's temp dir (the default is var/cdr under the working directory).
        cdr = dir.join("cdr").display(),
        // The callback outbox is a locked database: each gateway needs its own.
        callbacks = dir.join("callbacks").display()
    );
    let mut rules = String::new();
    for l in &o.links {
        rules.push_str(&format!(
            "[links.{id}]\nhost = \"127.0.0.1\"\nport = {port}\nsystem_id = \"{sid}\"\npassword = \"pw\"\nbinds = {binds}\nesme_rate = 1000\nenquire_interval_s = 1\nresp_timeout_ms = 2000\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n{extra}\n\n",
            id = l.id,
            port = l.port,
            sid = l.system_id,
            binds = l.binds,
            extra = l.extra
        ));
    }
    for (id, members) in &o.pools {
        rules.push_str(&format!("[pools.{id}]\nmembers = [\n"));
        for (link, weight) in members {
            rules.push_str(&format!("  {{ link = {link}, weight = {weight} }},\n"));
        }
        rules.push_str("]\n\n");
    }
    let a = dir.join("smsgw.toml");
    let b = dir.join("smpp_rules.toml");
    std::fs::write(&a, smsgw).unwrap();
    std::fs::write(&b, rules).unwrap();
    (a, b)
}

/// Starts `smsgw serve --config a --rules b` with `env` and returns it with its ready line
/// (`smsgw listening http=... grpc=...`), within 30 s.
pub fn spawn_serve(a: &Path, b: &Path, env: &[(&str, &str)]) -> (Proc, String) {
    let args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        a.display().to_string(),
        "--rules".into(),
        b.display().to_string(),
    ];
    spawn("gw", &args, env, "smsgw listening", Duration::from_secs(30))
}

/// Whether link `id` is `connected` in `GET /api/v1/smpp/links` of the gateway at `url`.
pub fn link_connected(url: &str, id: u32) -> bool {
    let (st, v) = http(url, "GET", "/api/v1/smpp/links", "");
    st == 200
        && v["links"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["id"] == id && l["state"] == "connected")
}

/// Waits (20 s at most) until link `id` of the gateway at `url` is connected; panics if not.
pub fn wait_link_connected(url: &str, id: u32) {
    let ok = wait_until(Duration::from_secs(20), || link_connected(url, id));
    assert!(ok, "link {id} not connected at {url}");
}

/// Rewrites a config written by [`write_configs`] so that CDR batches stay open for the whole
/// test (1 h flush interval): only a shutdown flush, or the crash journal, can write them.
pub fn keep_cdr_batches_open(cfg: &Path) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains("flush_interval_ms = 200"), "{text}");
    std::fs::write(
        cfg,
        text.replace("flush_interval_ms = 200", "flush_interval_ms = 3600000"),
    )
    .unwrap();
}

impl Gateway {
    /// Starts `serve` on configs already written into `dir` (which the gateway keeps).
    pub fn spawn_in(dir: tempfile::TempDir, a: &Path, b: &Path) -> Gateway {
        let (proc, line) = spawn_serve(a, b, &[]);
        let addr = field(&line, "http").expect("http addr").to_string();
        Gateway {
            proc,
            url: format!("http://{addr}"),
            dir,
        }
    }

    pub fn start(o: GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = write_configs(dir.path(), &o);
        let env: Vec<(&str, &str)> = if o.legacy_driver {
            vec![("MONOIO_FORCE_LEGACY_DRIVER", "1")]
        } else {
            Vec::new()
        };
        let (proc, line) = spawn_serve(&a, &b, &env);
        let addr = field(&line, "http").expect("http addr").to_string();
        eprintln!("gateway ready: {line}");
        if o.legacy_driver {
            assert!(
                line.contains("drivers=epoll"),
                "legacy driver not in use: {line}"
            );
        }
        Gateway {
            proc,
            url: format!("http://{addr}"),
            dir,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http(&self.url, "GET", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        http(&self.url, "POST", path, body)
    }

    pub fn send(&self, esme: u32, to: &str, text: &str) -> (u16, Value) {
        let body =
            serde_json::json!({"esme": esme, "source": "Test", "destination": to, "message": text});
        self.post("/api/v1/sms/send", &body.to_string())
    }

    /// Waits until every link in `ids` is `connected` in `GET /api/v1/smpp/links`.
    pub fn wait_links(&self, ids: &[u32], up: bool, timeout: Duration) {
        let want = if up { "connected" } else { "disconnected" };
        let ok = wait_until(timeout, || {
            let (st, v) = self.get("/api/v1/smpp/links");
            st == 200
                && ids.iter().all(|id| {
                    v["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|l| l["id"] == *id && l["state"] == want)
                })
        });
        assert!(
            ok,
            "links {ids:?} not {want} within {timeout:?}: {}",
            self.get("/api/v1/smpp/links").1
        );
    }

    /// Polls the status of `txid` until it is `status`.
    pub fn wait_status(&self, txid: &str, status: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(timeout, || {
            let (_, v) = self.get(&format!("/api/v1/sms/{txid}"));
            let done = v["status"] == status;
            last = v;
            done
        });
        assert!(ok, "{txid} not {status} within {timeout:?}: {last}");
        last
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request; the body parsed as JSON (`Value::Null` if it is not JSON).
pub fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (st, text) = raw_http(base, method, path, body.as_bytes());
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn raw_http(base: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    smsgw::api::client::request(base, method, path, &[], body, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
}

/// Every CDR in the finished `.ndjson.gz` files under `dir` (in-progress temp files are not
/// named `*.ndjson.gz`; crash journals end in `.open`).
pub fn cdr_lines(dir: &Path) -> Vec<Value> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p: PathBuf = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".ndjson.gz") {
                let gz = std::fs::read(&p).expect("read CDR file");
                let mut s = String::new();
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_string(&mut s)
                    .expect("valid gzip");
                for line in s.lines() {
                    out.push(serde_json::from_str(line).expect("one JSON CDR per line"));
                }
            }
        }
    }
    out
}
