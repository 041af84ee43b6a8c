//! `smsgw send`: one message from a shell through a running gateway's REST API.
//!
//! A tiny blocking HTTP/1.1 client over `std::net` (one request, `Connection: close`): the CLI
//! needs no async runtime and no HTTP client crate for this.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    /// Gateway base URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    pub url: String,
    /// Link or pool id.
    #[arg(long)]
    pub esme: u32,
    /// Source address (sender id or number).
    #[arg(long)]
    pub from: String,
    /// Destination number.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub text: String,
    #[arg(long)]
    pub transaction_id: Option<String>,
    /// `auto` (default), `gsm7` or `ucs2`.
    #[arg(long)]
    pub encoding: Option<String>,
    /// Sent as `Authorization: Bearer <token>` when given.
    #[arg(long, env = "SMSGW_TOKEN")]
    pub token: Option<String>,
    /// Sent as `X-App-ID` when given.
    #[arg(long, env = "SMSGW_APP_ID")]
    pub app_id: Option<String>,
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unsupported URL {0:?}: expected http://host:port")]
    Url(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("I/O error talking to the gateway: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP answer from the gateway")]
    BadAnswer,
}

/// Sends the message; returns (success, answer body). Success means HTTP 2xx and
/// `"success": true` in the answer.
pub fn send(args: &SendArgs) -> Result<(bool, String), ClientError> {
    let mut body = serde_json::json!({
        "esme": args.esme,
        "source": args.from,
        "destination": args.to,
        "message": args.text,
    });
    if let Some(t) = &args.transaction_id {
        body["transaction_id"] = t.clone().into();
    }
    if let Some(e) = &args.encoding {
        body["encoding"] = e.clone().into();
    }
    let mut headers = Vec::new();
    if let Some(t) = &args.token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    if let Some(a) = &args.app_id {
        headers.push(("x-app-id", a.clone()));
    }
    let (status, text) = request(
        &args.url,
        "POST",
        "/api/v1/sms/send",
        &headers,
        body.to_string().as_bytes(),
        Duration::from_secs(args.timeout_s),
    )?;
    let success = (200..300).contains(&status)
        && serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("success").and_then(|s| s.as_bool()))
            .unwrap_or(false);
    Ok((success, text))
}

/// One blocking request; returns (status, body as text).
pub fn request(
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let host_port = base_url
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| ClientError::Url(base_url.to_string()))?;
    let mut stream = TcpStream::connect(host_port).map_err(|source| ClientError::Connect {
        addr: host_port.to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host_port}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer and close before reading the whole body (e.g. 413): a failed write
    // is reported only if no answer can be read either.
    let write_result = stream.write_all(&bytes);
    let mut answer = Vec::new();
    let read_result = stream.read_to_end(&mut answer);
    match parse_answer(&answer) {
        Ok(a) => Ok(a),
        Err(e) => {
            write_result?;
            read_result?;
            Err(e)
        }
    }
}

fn parse_answer(answer: &[u8]) -> Result<(u16, String), ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(ClientError::BadAnswer),
    };
    let status = resp.code.ok_or(ClientError::BadAnswer)?;
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let rest = &answer[head..];
    let body = match len {
        Some(n) if n <= rest.len() => &rest[..n],
        Some(_) => return Err(ClientError::BadAnswer),
        None => rest,
    };
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answer_with_length() {
        let raw = b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 2\r\n\r\n{}extra";
        assert_eq!(parse_answer(raw).unwrap(), (422, "{}".to_string()));
        assert!(parse_answer(b"garbage").is_err());
        assert!(matches!(
            request("https://x", "GET", "/", &[], b"", Duration::from_secs(1)),
            Err(ClientError::Url(_))
        ));
    }
}
