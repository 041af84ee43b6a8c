//! The control API: plain HTTP/1.1 on loopback, one request per connection, JSON bodies.
//! It runs on its own thread with blocking I/O so it never competes with the SMPP event loops.
//!
//! - `GET /stats`                counters, open binds, answers by command_status
//! - `GET /messages?limit=N`     the last N received submit_sm / data_sm (default 100)
//! - `GET /faults`               current behaviour and armed one-shot faults
//! - `POST /faults`              JSON patch (see `FaultsPatch`); answers the new state
//! - `POST /reset`               behaviour back to the flags, counters and messages cleared

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::config::FaultsPatch;
use super::shared::Shared;

/// Largest request head + body accepted.
const MAX_REQUEST: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MESSAGES_LIMIT: usize = 100;

pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.is_shutdown() {
            return;
        }
        let Ok(mut s) = conn else {
            // EMFILE and friends: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let _ = handle(&mut s, &shared);
    }
}

fn handle(s: &mut TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (method, path, head_len, content_length) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut content_length = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(usize::MAX);
                    }
                }
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    head_len,
                    content_length,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => continue,
            _ => return respond(s, 400, &json!({ "error": "bad request" })),
        }
    };
    if content_length > MAX_REQUEST {
        return respond(s, 413, &json!({ "error": "body too large" }));
    }
    while buf.len() < head_len + content_length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_len..head_len + content_length];
    let (status, v) = route(shared, &method, &path, body);
    respond(s, status, &v)
}

fn route(shared: &Shared, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    match (method, p) {
        ("GET", "/stats") => (200, shared.stats_json()),
        ("GET", "/messages") => {
            let mut limit = DEFAULT_MESSAGES_LIMIT;
            for kv in query.split('&') {
                if let Some(v) = kv.strip_prefix("limit=") {
                    match v.parse::<usize>() {
                        Ok(n) => limit = n,
                        Err(_) => return (400, json!({ "error": "limit must be a number" })),
                    }
                }
            }
            (200, shared.messages_json(limit))
        }
        ("GET", "/faults") => (200, shared.faults_json()),
        ("POST", "/faults") => {
            let patch: FaultsPatch = if body.iter().all(u8::is_ascii_whitespace) {
                FaultsPatch::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(p) => p,
                    Err(e) => return (400, json!({ "error": e.to_string() })),
                }
            };
            let next = match shared.behaviour().apply(&patch) {
                Ok(b) => b,
                Err(e) => return (400, json!({ "error": e.to_string() })),
            };
            shared.set_behaviour(next);
            if let Some(n) = patch.disconnect_after_submits {
                shared.set_disconnect_after(n);
            }
            if let Some(m) = &patch.malformed {
                shared.arm_malformed(m.kind, m.count);
            }
            let mut disconnected = 0;
            if patch.disconnect_now {
                disconnected = shared.disconnect_all(None);
            }
            let mut v = shared.faults_json();
            if let Value::Object(m) = &mut v {
                m.insert("disconnected".into(), json!(disconnected));
            }
            (200, v)
        }
        ("POST", "/reset") => {
            shared.reset();
            (200, json!({ "reset": true }))
        }
        (_, "/stats" | "/messages" | "/faults" | "/reset") => {
            (405, json!({ "error": "method not allowed" }))
        }
        _ => (404, json!({ "error": "not found" })),
    }
}

fn respond(s: &mut TcpStream, status: u16, v: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&body)?;
    s.flush()
}
