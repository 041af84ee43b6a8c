//! The gateway's policy stage when `[policy] remote_url` is set: it asks a remote
//! `smsgw mcp` (`POST {remote_url}/api/v1/check`) instead of the in-process engine, so
//! several gateways share one set of lists and counters.
//!
//! One small HTTP/1.1 client per shard (no locks, no cross-thread wakeups): keep-alive
//! connections in a bounded idle pool, a timeout over connect + request + answer, and a bound
//! on requests in flight. When the service fails (connect error, timeout, non-200, garbage),
//! the shard marks it down, logs once, and answers by `remote_on_error` without asking again
//! for [`PROBE_INTERVAL`]; one message per interval probes the service, and the first success
//! logs the recovery. So an outage costs one timeout per shard per interval, not one per
//! message.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde::Deserialize;
use tracing::{info, warn};

use super::engine::{Clock, SystemClock};
use super::number::Normalizer;
use super::{PolicyConfig, State, Strategies};
use crate::api::{ApiError, ErrorKind};
use crate::shard::stages::{Admission, RequestMeta, Stage, Verdict};

/// While the service is down, at most one message per interval (per shard) asks it.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Idle keep-alive connections kept per shard.
const IDLE_MAX: usize = 8;
/// An answer is a few dozen bytes; anything bigger is not the check API.
const MAX_RESPONSE: usize = 16 * 1024;

/// `[policy] remote_*`, validated.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `host:port` (resolved when a shard starts, again after a failure).
    pub authority: String,
    /// Path prefix before `/api/v1/check` (no trailing slash; usually empty).
    pub base_path: String,
    /// Bound of one check: connect + request + answer.
    pub timeout: Duration,
    /// Service failing: pass the message (true) or refuse it with 503 `overloaded` (false).
    pub fail_open: bool,
    /// Checks waiting for an answer, per shard; beyond it a message gets 503 `overloaded`.
    pub max_in_flight: usize,
}

/// `http://host:port[/prefix]` → (`host:port`, `/prefix`). Only plain HTTP: the service is
/// meant for a private network, like Redis.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: expected http://host:port (https is not supported)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!("{url:?}: the port is required (http://host:port)"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{url:?}: expected http://host:port"));
    }
    Ok((authority.to_string(), path.to_string()))
}

/// Counters shared by every shard's stage (process-wide).
#[derive(Default, Debug)]
pub struct RemoteStats {
    /// Checks that failed (connect, timeout, non-200, bad answer).
    pub errors: AtomicU64,
    /// Messages passed unchecked because the service was failing (`fail_open`).
    pub fail_open_passes: AtomicU64,
    /// Messages refused because the service was failing (`fail_closed`).
    pub fail_closed_refusals: AtomicU64,
    /// Shards whose stage considers the service down now (changed on transitions only, so
    /// never per message); `/metrics` shows the service up while it is 0.
    pub shards_down: AtomicU64,
}

/// Process-wide counters (read by tests and, later, `/metrics`).
pub fn stats() -> &'static RemoteStats {
    static STATS: std::sync::OnceLock<RemoteStats> = std::sync::OnceLock::new();
    STATS.get_or_init(RemoteStats::default)
}

/// The policy stage of one shard: the remote one when `remote_url` is set, else the
/// in-process one over `engine`.
pub fn stage(cfg: &PolicyConfig, engine: &Arc<super::PolicyEngine>) -> Box<dyn Stage> {
    match &cfg.remote {
        Some(r) => Box::new(RemoteStage::new(r.clone(), cfg)),
        None => Box::new(super::mcp::PolicyStage::new(Arc::clone(engine))),
    }
}

#[derive(Debug, thiserror::Error)]
enum RemoteError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the answer")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("bad answer: {0}")]
    Protocol(String),
}

impl RemoteError {
    /// What a kept-alive connection the server closed meanwhile looks like.
    fn stale_connection(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            RemoteError::Closed => true,
            RemoteError::Io(e) => matches!(e.kind(), K::ConnectionReset | K::BrokenPipe),
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    state: String,
}

pub struct RemoteStage {
    cfg: RemoteConfig,
    normalizer: Normalizer,
    default_strategy: Strategies,
    utc_offset_s: i32,
    addr: Cell<Option<SocketAddr>>,
    idle: RefCell<Vec<TcpStream>>,
    in_flight: Cell<usize>,
    down: Cell<bool>,
    next_probe: Cell<Instant>,
}

/// Decrements the in-flight count however the check ends (also when the request is dropped).
struct InFlight<'a>(&'a Cell<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

fn strategy_names(s: Strategies) -> String {
    let mut v = Vec::with_capacity(3);
    if s.cp1 {
        v.push("cp1");
    }
    if s.cp2 {
        v.push("cp2");
    }
    if s.blacklist {
        v.push("blacklist");
    }
    v.join(",")
}

impl RemoteStage {
    pub fn new(cfg: RemoteConfig, policy: &PolicyConfig) -> RemoteStage {
        let stage = RemoteStage {
            normalizer: Normalizer {
                default_country_code: policy.settings.default_country_code.clone(),
            },
            default_strategy: policy.settings.default_strategy,
            utc_offset_s: policy.settings.utc_offset_s,
            addr: Cell::new(None),
            idle: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            down: Cell::new(false),
            next_probe: Cell::new(Instant::now()),
            cfg,
        };
        if let Err(e) = stage.resolve() {
            warn!(error = %e, "policy: remote service address not resolved yet");
        }
        stage
    }

    fn resolve(&self) -> Result<SocketAddr, RemoteError> {
        if let Some(a) = self.addr.get() {
            return Ok(a);
        }
        // Blocking lookup on the shard thread, but only at start and after a failure (at most
        // once per probe interval); an IP address resolves without any lookup.
        let a = self
            .cfg
            .authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| RemoteError::Resolve(self.cfg.authority.clone()))?;
        self.addr.set(Some(a));
        Ok(a)
    }

    /// The answer when the service cannot be asked.
    fn on_failure(&self) -> Result<(), ApiError> {
        let s = stats();
        if self.cfg.fail_open {
            s.fail_open_passes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            s.fail_closed_refusals.fetch_add(1, Ordering::Relaxed);
            Err(
                ApiError::new(ErrorKind::Overloaded, "contact policy service unavailable")
                    .retry_after(1),
            )
        }
    }

    fn mark_down(&self, e: &RemoteError) {
        stats().errors.fetch_add(1, Ordering::Relaxed);
        self.next_probe.set(Instant::now() + PROBE_INTERVAL);
        self.addr.set(None);
        self.idle.borrow_mut().clear();
        if !self.down.replace(true) {
            stats().shards_down.fetch_add(1, Ordering::Relaxed);
            warn!(
                error = %e,
                url = %self.cfg.authority,
                mode = if self.cfg.fail_open { "fail_open" } else { "fail_closed" },
                "policy: remote service unavailable; answering by remote_on_error until it recovers"
            );
        }
    }

    fn mark_up(&self) {
        if self.down.replace(false) {
            stats().shards_down.fetch_sub(1, Ordering::Relaxed);
            info!(url = %self.cfg.authority, "policy: remote service recovered");
        }
    }

    async fn ask(&self, body: &str) -> Result<State, RemoteError> {
        let pooled = self.idle.borrow_mut().pop();
        let reused = pooled.is_some();
        let stream = match pooled {
            Some(s) => s,
            None => TcpStream::connect_addr(self.resolve()?).await?,
        };
        match self.exchange(stream, body).await {
            // A kept-alive connection the server closed meanwhile: try once on a fresh one
            // (the server did not answer, so it most likely did not see the request).
            Err(e) if reused && e.stale_connection() => {
                let s = TcpStream::connect_addr(self.resolve()?).await?;
                self.exchange(s, body).await
            }
            other => other,
        }
    }

    async fn exchange(&self, mut stream: TcpStream, body: &str) -> Result<State, RemoteError> {
        let _ = stream.set_nodelay(true);
        let req = format!(
            "POST {}/api/v1/check HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{}",
            self.cfg.base_path,
            self.cfg.authority,
            body.len(),
            body
        );
        let (res, _) = stream.write_all(req.into_bytes()).await;
        res?;
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let (head_len, status, content_len, close) = loop {
            if let Some(h) = parse_head(&buf)? {
                break h;
            }
            buf = read_more(&mut stream, buf).await?;
        };
        let total = head_len + content_len;
        if total > MAX_RESPONSE {
            return Err(RemoteError::Protocol(format!("{content_len}-byte body")));
        }
        while buf.len() < total {
            buf = read_more(&mut stream, buf).await?;
        }
        if !close && buf.len() == total {
            let mut idle = self.idle.borrow_mut();
            if idle.len() < IDLE_MAX {
                idle.push(stream);
            }
        }
        if status != 200 {
            return Err(RemoteError::Status(status));
        }
        let a: Answer = serde_json::from_slice(&buf[head_len..total])
            .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        State::parse(&a.state).ok_or_else(|| RemoteError::Protocol(format!("state {:?}", a.state)))
    }
}

async fn read_more(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
    if buf.len() >= MAX_RESPONSE {
        return Err(RemoteError::Protocol("answer too large".into()));
    }
    if buf.capacity() - buf.len() < 256 {
        buf.reserve(1024);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
    let buf = slice.into_inner();
    match res? {
        0 => Err(RemoteError::Closed),
        _ => Ok(buf),
    }
}

/// `Some((head length, status, content length, connection: close))` once the head is in.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, usize, bool)>, RemoteError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 8 * 1024 {
            Err(RemoteError::Protocol("header too large".into()))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| RemoteError::Protocol("non-UTF-8 header".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| RemoteError::Protocol(format!("status line {status_line:?}")))?;
    let mut content_len = None;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_len = Some(
                v.parse::<usize>()
                    .map_err(|_| RemoteError::Protocol(format!("content-length {v:?}")))?,
            );
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RemoteError::Protocol(
                "chunked answers are not supported".into(),
            ));
        }
    }
    let content_len =
        content_len.ok_or_else(|| RemoteError::Protocol("no content-length".into()))?;
    Ok(Some((end + 4, status, content_len, close)))
}

impl Stage for RemoteStage {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn check<'s>(&'s self, a: &'s mut Admission, _meta: &'s RequestMeta<'_>) -> Verdict<'s> {
        let strategies = match a.strategy.as_deref() {
            Some(s) => match Strategies::parse(s) {
                Ok(s) => s,
                Err(e) => return Verdict::Reject(ApiError::new(ErrorKind::InvalidField, e)),
            },
            None => self.default_strategy,
        };
        if !strategies.any() {
            return Verdict::Pass;
        }
        // Same rule as in process: a non-E.164 destination (short code) is out of scope.
        let Ok(destination) = self.normalizer.to_key(&a.destination) else {
            return Verdict::Pass;
        };
        if self.down.get() {
            let now = Instant::now();
            if now < self.next_probe.get() {
                return match self.on_failure() {
                    Ok(()) => Verdict::Pass,
                    Err(e) => Verdict::Reject(e),
                };
            }
            // This message probes; the others keep the failure answer meanwhile.
            self.next_probe.set(now + PROBE_INTERVAL);
        }
        if self.in_flight.get() >= self.cfg.max_in_flight {
            return Verdict::Reject(
                ApiError::new(
                    ErrorKind::Overloaded,
                    "too many contact-policy checks in flight",
                )
                .retry_after(1),
            );
        }
        self.in_flight.set(self.in_flight.get() + 1);
        // Made here, not in the future: a future dropped before its first poll still gives
        // its slot back.
        let guard = InFlight(&self.in_flight);
        let body = format!(
            r#"{{"strategy":"{}","destination":"+{}","app_id":{},"text_hash":{}}}"#,
            strategy_names(strategies),
            destination,
            a.app_id,
            a.text_hash
        );
        Verdict::Wait(Box::pin(async move {
            let _guard = guard;
            let answer = match monoio::time::timeout(self.cfg.timeout, self.ask(&body)).await {
                Ok(r) => r,
                Err(_) => Err(RemoteError::Timeout(self.cfg.timeout)),
            };
            match answer {
                Ok(state) => {
                    self.mark_up();
                    match super::mcp::state_error_at(state, SystemClock.now_ms(), self.utc_offset_s)
                    {
                        None => Ok(()),
                        Some(e) => Err(e),
                    }
                }
                Err(e) => {
                    self.mark_down(&e);
                    self.on_failure()
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9100").unwrap(),
            ("127.0.0.1:9100".into(), String::new())
        );
        assert_eq!(
            parse_url("http://mcp.internal:80/policy/").unwrap(),
            ("mcp.internal:80".into(), "/policy".into())
        );
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("http://x:0").is_err());
    }

    #[test]
    fn heads() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 28\r\nConnection: keep-alive\r\n\r\n{";
        assert_eq!(parse_head(r).unwrap(), Some((r.len() - 1, 200, 28, false)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let c = b"HTTP/1.1 503 x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_head(c).unwrap(), Some((c.len(), 503, 0, true)));
    }
}
