//! A real S3-compatible server for tests: `moto[server]` (Python), started on a free loopback
//! port and killed by PID on drop. Missing moto prints `SKIPPED:` so the skip is visible.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port the OS says is free now (a tiny race with other binders is accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when `python3 -m moto.server` can run; otherwise prints a visible `SKIPPED:` line.
pub fn available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server, flask, werkzeug"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: moto[server] not installed (python3 -m pip install 'moto[server]')");
    }
    ok
}

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts moto on a free port, or `None` (with the skip line) when moto is missing.
    pub fn start() -> Option<Moto> {
        available().then(|| Moto::start_on(free_port()))
    }

    /// Starts moto on `port` (a restart on the same port keeps the endpoint; moto's storage is
    /// in memory, so every start is empty).
    pub fn start_on(port: u16) -> Moto {
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto");
        let m = Moto { child, port };
        let up = super::wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "moto did not listen on {port}");
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Unsigned CreateBucket: rust-s3's sends a LocationConstraint moto refuses for us-east-1.
    pub fn create_bucket(&self, name: &str) {
        let (st, body) = super::raw_http(&self.endpoint(), "PUT", &format!("/{name}"), b"");
        assert_eq!(st, 200, "create bucket {name}: {body}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path-style bucket handle with moto's test credentials.
pub fn bucket(endpoint: &str, name: &str) -> Box<s3::Bucket> {
    let creds = s3::creds::Credentials::new(Some("test"), Some("test"), None, None, None).unwrap();
    let region = s3::Region::Custom {
        region: "us-east-1".into(),
        endpoint: endpoint.into(),
    };
    s3::Bucket::new(name, region, creds)
        .unwrap()
        .with_path_style()
}
