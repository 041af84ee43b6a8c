//! HTTP/1.1 request-head parsing and response serialisation, sans-io.
//!
//! The connection loop (`api::server`) owns the socket; this module only looks at bytes. It is
//! deliberately small: Content-Length bodies only (no chunked request bodies), bounded head size,
//! header count and body size, so that every failure is a precise status and never an unbounded
//! buffer. Parsing borrows the read buffer: no allocation per request.

use std::fmt::Write as _;

/// Maximum number of request headers we parse; more is 431.
pub const MAX_HEADERS: usize = 32;

/// Bounds applied to every request. Each one is a limit on memory a client can make us hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, in bytes. Over it: 431.
    pub max_head_bytes: usize,
    /// Body (Content-Length) in bytes. Over it: 413.
    pub max_body_bytes: usize,
    /// Requests answered per write batch on one connection (pipelining bound).
    pub max_pipeline_depth: usize,
    /// One path whose body may be larger than `max_body_bytes` (the batch submit, whose body
    /// holds up to a bounded number of messages), with its own bound. The larger of the two
    /// applies on that path; every other path keeps `max_body_bytes`.
    pub large_body: Option<(&'static str, usize)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            max_pipeline_depth: 32,
            large_body: Some((super::rest::BATCH_PATH, super::rest::BATCH_MAX_BODY_BYTES)),
        }
    }
}

impl Limits {
    /// The body bound for a request to `path`.
    pub fn max_body_for(&self, path: &str) -> usize {
        match self.large_body {
            Some((p, n)) if p == path => n.max(self.max_body_bytes),
            _ => self.max_body_bytes,
        }
    }

    /// The largest body any path accepts (sizes the connection's read buffer bound).
    pub fn max_any_body(&self) -> usize {
        self.large_body
            .map_or(self.max_body_bytes, |(_, n)| n.max(self.max_body_bytes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Other,
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// One parsed request; borrows the connection's read buffer.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: Method,
    /// Path without the query string.
    pub path: &'b str,
    /// Raw query string (after `?`), empty if none.
    pub query: &'b str,
    pub body: &'b [u8],
    /// Whether the connection stays open after the answer (HTTP/1.1 default, `Connection`).
    pub keep_alive: bool,
    /// The client's address; set by the connection loop (the parser does not know it).
    pub peer: Option<std::net::IpAddr>,
    headers: [httparse::Header<'b>; MAX_HEADERS],
    header_count: usize,
}

impl<'b> Request<'b> {
    /// First header with this name (ASCII case-insensitive), as bytes.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers[..self.header_count]
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every header as `(name, value)`, in request order.
    pub fn headers(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + '_ {
        self.headers[..self.header_count]
            .iter()
            .map(|h| (h.name, h.value))
    }

    /// Header value as UTF-8 text; `None` when absent or not text.
    pub fn header_str(&self, name: &str) -> Option<&'b str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Why a request could not be parsed. Every variant maps to one status and closes the
/// connection: after a framing error we cannot know where the next request starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request")]
    Malformed,
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error(
        "chunked or other transfer-encoded request bodies are not supported; send Content-Length"
    )]
    LengthRequired,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("unsupported HTTP version")]
    Version,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed | HttpError::BadContentLength => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::LengthRequired => 411,
            HttpError::Version => 505,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            HttpError::Malformed => "bad_request",
            HttpError::BadContentLength => "bad_content_length",
            HttpError::HeadTooLarge => "header_too_large",
            HttpError::TooManyHeaders => "too_many_headers",
            HttpError::BodyTooLarge => "body_too_large",
            HttpError::LengthRequired => "length_required",
            HttpError::Version => "http_version_not_supported",
        }
    }
}

/// Result of looking at the front of the read buffer.
// `Complete` is by far the common variant and lives on the stack for one request; boxing it to
// shrink `Partial` would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parse<'b> {
    /// A whole request and the number of bytes it used.
    Complete(Request<'b>, usize),
    /// More bytes are needed. `expect_continue` is true when the head is complete and the client
    /// waits for `100 Continue` before sending the body.
    Partial { expect_continue: bool },
}

/// Parses one request from the front of `buf`.
pub fn parse_request<'b>(buf: &'b [u8], limits: &Limits) -> Result<Parse<'b>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(Parse::Partial {
                expect_continue: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(_) => return Err(HttpError::Malformed),
    };
    if head_len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    let method = Method::parse(req.method.unwrap_or(""));
    let target = req.path.unwrap_or("/");
    let version = req.version.unwrap_or(1);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };

    let mut content_length: Option<usize> = None;
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or(HttpError::BadContentLength)?;
            // Two different lengths is request smuggling territory: refuse.
            if content_length.is_some_and(|old| old != n) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("connection") {
            if contains_token(h.value, b"close") {
                keep_alive = false;
            } else if contains_token(h.value, b"keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body_for(path) {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parse::Partial { expect_continue });
    }
    let header_count = req.headers.len();
    // httparse shrank `req.headers` to the parsed ones; copy them (they are two slices each) so
    // the request owns its header table and the stack array can go.
    let mut owned = [httparse::EMPTY_HEADER; MAX_HEADERS];
    owned[..header_count].copy_from_slice(req.headers);
    Ok(Parse::Complete(
        Request {
            method,
            path,
            query,
            body: &buf[head_len..total],
            keep_alive,
            peer: None,
            headers: owned,
            header_count,
        },
        total,
    ))
}

fn parse_content_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    // Digits only: no sign, no spaces inside; a bounded number of digits avoids overflow.
    if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |acc, d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as usize)
    })
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// An answer ready to serialise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (e.g. `Retry-After`, `Allow`). Empty for almost every answer: no allocation.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// The `100 Continue` interim answer.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends the serialised response to `out` (many responses share one buffer and one write).
pub fn write_response(out: &mut Vec<u8>, resp: &Response, keep_alive: bool, head_only: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(resp.content_type.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(num.format(resp.body.len()).as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    for (name, value) in &resp.headers {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        // Header values are ours, but a stray CR/LF would split the response: drop them.
        out.extend(value.bytes().filter(|&b| b != b'\r' && b != b'\n'));
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
}

/// A JSON error body `{"error": "...", "code": "..."}`.
pub fn error_body(message: &str, code: &str) -> Vec<u8> {
    let mut s = String::with_capacity(message.len() + code.len() + 24);
    s.push_str("{\"error\":");
    s.push_str(&serde_json::to_string(message).unwrap_or_else(|_| "\"\"".into()));
    let _ = write!(s, ",\"code\":");
    s.push_str(&serde_json::to_string(code).unwrap_or_else(|_| "\"\"".into()));
    s.push('}');
    s.into_bytes()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            max_head_bytes: 256,
            max_body_bytes: 16,
            max_pipeline_depth: 4,
            large_body: None,
        }
    }

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf, &lim()).unwrap() {
            Parse::Complete(r, n) => (r, n),
            other => panic!("expected complete, got {other:?}"),
        }
    }

    #[test]
    fn get_without_body() {
        let raw = b"GET /healthy?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/healthy");
        assert_eq!(r.query, "x=1");
        assert!(r.body.is_empty());
        assert!(r.keep_alive);
        assert_eq!(r.header_str("host"), Some("a"));
    }

    #[test]
    fn post_with_body_and_pipelined_rest() {
        let raw = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(r.body, b"hello");
        let (r2, n2) = complete(&raw[n..]);
        assert_eq!(r2.path, "/b");
        assert_eq!(n + n2, raw.len());
    }

    #[test]
    fn partial_head_and_partial_body() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHo", &lim()),
            Ok(Parse::Partial {
                expect_continue: false
            })
        ));
        assert!(matches!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe", &lim()),
            Ok(Parse::Partial {
                expect_continue: false
            })
        ));
        assert!(matches!(
            parse_request(
                b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                &lim()
            ),
            Ok(Parse::Partial {
                expect_continue: true
            })
        ));
    }

    #[test]
    fn limits_and_framing_errors() {
        let big = b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n";
        assert_eq!(
            parse_request(big, &lim()).unwrap_err(),
            HttpError::BodyTooLarge
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_request(chunked, &lim()).unwrap_err(),
            HttpError::LengthRequired
        );
        let bad_len = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(
            parse_request(bad_len, &lim()).unwrap_err(),
            HttpError::BadContentLength
        );
        let two_len = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            parse_request(two_len, &lim()).unwrap_err(),
            HttpError::BadContentLength
        );
        let huge_len = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(
            parse_request(huge_len, &lim()).unwrap_err(),
            HttpError::BadContentLength
        );
        let garbage = b"\x00\x01 nonsense\r\n\r\n";
        assert_eq!(
            parse_request(garbage, &lim()).unwrap_err(),
            HttpError::Malformed
        );
        // A method token that never ends is still "partial" to httparse: the size bound stops it.
        let long_head = vec![b'a'; 300];
        assert_eq!(
            parse_request(&long_head, &lim()).unwrap_err(),
            HttpError::HeadTooLarge
        );
        let mut long_hdr = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long_hdr.extend(std::iter::repeat_n(b'v', 300));
        assert_eq!(
            parse_request(&long_hdr, &lim()).unwrap_err(),
            HttpError::HeadTooLarge
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let big_lim = Limits {
            max_head_bytes: 4096,
            ..lim()
        };
        assert_eq!(
            parse_request(&many, &big_lim).unwrap_err(),
            HttpError::TooManyHeaders
        );
    }

    #[test]
    fn connection_header_and_http10() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn serialises_responses_back_to_back() {
        let mut out = Vec::new();
        let r = Response::json(200, b"{}".to_vec());
        write_response(&mut out, &r, true, false);
        let e = Response::json(413, error_body("too \"big\"", "body_too_large"))
            .with_header("retry-after", "1\r\nx".into());
        write_response(&mut out, &e, false, false);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}\
             HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
             content-length: 47\r\nconnection: close\r\nretry-after: 1x\r\n\r\n\
             {\"error\":\"too \\\"big\\\"\",\"code\":\"body_too_large\"}"
        );
    }

    #[test]
    fn large_body_bound_applies_to_its_path_only() {
        let l = Limits {
            large_body: Some(("/big", 32)),
            ..lim()
        };
        let req = |path: &str, n: usize| {
            let mut r = format!("POST {path} HTTP/1.1\r\ncontent-length: {n}\r\n\r\n").into_bytes();
            r.extend(std::iter::repeat_n(b'x', n));
            r
        };
        assert!(matches!(
            parse_request(&req("/big", 32), &l),
            Ok(Parse::Complete(..))
        ));
        assert_eq!(
            parse_request(&req("/big", 33), &l).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            parse_request(&req("/small", 17), &l).unwrap_err(),
            HttpError::BodyTooLarge
        );
        // The larger of the two bounds applies on the large path.
        let l = Limits {
            large_body: Some(("/big", 4)),
            ..lim()
        };
        assert!(matches!(
            parse_request(&req("/big", 16), &l),
            Ok(Parse::Complete(..))
        ));
        assert_eq!(l.max_any_body(), 16);
    }

    #[test]
    fn head_only_omits_body_but_keeps_length() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::json(200, b"abc".to_vec()), true, true);
        assert!(out.ends_with(b"content-length: 3\r\n\r\n"));
    }
}
