//! Minimal HTTP/1.1 response framing for the load generator: `httparse` for the head,
//! `Content-Length` bodies only (what the gateway and the null server send), and a cheap scan
//! of the JSON body for `"success"` and `"code"` so no per-response allocation is needed.

use memchr::memmem;

/// Largest response head we accept; beyond this the peer is not speaking our protocol.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body we accept.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest error code kept for the rejection table.
const MAX_CODE_BYTES: usize = 64;
const MAX_HEADERS: usize = 64;

/// Why a response could not be framed. Each one ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("response body of {0} bytes is larger than {MAX_BODY_BYTES}")]
    BodyTooLarge(u64),
    #[error("chunked or unframed response bodies are not supported")]
    Unframed,
    #[error("invalid Content-Length")]
    BadContentLength,
}

/// One complete response at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    /// Bytes of head + body; consume this many.
    pub len: usize,
    pub status: u16,
    /// The server announced `Connection: close`.
    pub close: bool,
    pub body: &'a [u8],
}

/// Frame the first response in `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response<'_>>, FrameError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(FrameError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(FrameError::Malformed(e)),
    };
    let status = resp.code.unwrap_or(0);
    let mut content_length: Option<u64> = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| FrameError::BadContentLength)?;
            let n: u64 = text
                .trim()
                .parse()
                .map_err(|_| FrameError::BadContentLength)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(FrameError::BadContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FrameError::Unframed);
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    let body_len = match content_length {
        Some(n) => n,
        // RFC 9112 6.3: these never carry a body.
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Err(FrameError::Unframed),
    };
    if body_len > MAX_BODY_BYTES as u64 {
        return Err(FrameError::BodyTooLarge(body_len));
    }
    let total = head_len + body_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Response {
        len: total,
        status,
        close,
        body: &buf[head_len..total],
    }))
}

/// Position right after `"key"` followed by optional whitespace and a colon and whitespace.
fn json_value_at<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(pos) = memmem::find(&body[from..], key) {
        let after = from + pos + key.len();
        let rest = &body[after..];
        let rest = trim_start(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            return Some(trim_start(rest));
        }
        from = after;
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[skip..]
}

/// The response body says `"success": true`.
pub fn body_says_success(body: &[u8]) -> bool {
    json_value_at(body, b"\"success\"").is_some_and(|v| v.starts_with(b"true"))
}

/// The `"code"` string of an error body, if any (bounded length, no unescaping: codes are
/// plain identifiers).
pub fn body_error_code(body: &[u8]) -> Option<&[u8]> {
    let value = json_value_at(body, b"\"code\"")?.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', value)?;
    Some(&value[..end.min(MAX_CODE_BYTES)])
}

/// Walks the per-item results of a batch answer (`{"results":[{"success":..,"code":..},..]}`)
/// in order: `f(success, code)` per item (`code` empty when absent); returns the item count.
/// A `"success"` key cannot occur unescaped inside a JSON string, so each occurrence starts
/// an item, and an item's code lies before the next occurrence.
pub fn for_each_batch_item(body: &[u8], mut f: impl FnMut(bool, &[u8])) -> u64 {
    const KEY: &[u8] = b"\"success\"";
    let mut items = 0;
    let mut rest = body;
    while let Some(pos) = memmem::find(rest, KEY) {
        let item = &rest[pos + KEY.len()..];
        let end = memmem::find(item, KEY).unwrap_or(item.len());
        let this = &item[..end];
        let ok = trim_start(this)
            .strip_prefix(b":")
            .is_some_and(|v| trim_start(v).starts_with(b"true"));
        let code = if ok {
            &b""[..]
        } else {
            body_error_code(this).unwrap_or(b"")
        };
        f(ok, code);
        items += 1;
        rest = &item[end..];
    }
    items
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_items_are_walked_in_order() {
        let body = br#"{"accepted":1,"failed":2,"results":[{"success":true,"error":null,"esme":1},{"success":false,"error":"x \"success\":true","code":"empty_message"},{"success": false,"error":"y","code":"rate_limited"}]}"#;
        let mut seen = Vec::new();
        let n = super::for_each_batch_item(body, |ok, code| seen.push((ok, code.to_vec())));
        assert_eq!(n, 3);
        assert_eq!(
            seen,
            vec![
                (true, b"".to_vec()),
                (false, b"empty_message".to_vec()),
                (false, b"rate_limited".to_vec())
            ]
        );
    }

    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"success\":true}";

    #[test]
    fn frames_pipelined_responses_and_waits_for_partial_ones() {
        let mut two = OK.to_vec();
        two.extend_from_slice(OK);
        let first = parse_response(&two).unwrap().unwrap();
        assert_eq!(first.len, OK.len());
        assert_eq!(first.status, 200);
        assert!(!first.close);
        assert_eq!(first.body, b"{\"success\":true}");
        let second = parse_response(&two[first.len..]).unwrap().unwrap();
        assert_eq!(second.len, OK.len());
        for cut in 0..OK.len() {
            assert_eq!(parse_response(&OK[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Err(FrameError::Unframed));
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert_eq!(parse_response(unframed), Err(FrameError::Unframed));
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse_response(bad_len), Err(FrameError::BadContentLength));
        let two_lens = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_response(two_lens), Err(FrameError::BadContentLength));
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n";
        assert!(matches!(
            parse_response(huge),
            Err(FrameError::BodyTooLarge(_))
        ));
        assert!(matches!(
            parse_response(b"SMPP garbage\r\n\r\n"),
            Err(FrameError::Malformed(_))
        ));
        let endless = vec![b'a'; MAX_HEAD_BYTES + 1];
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend_from_slice(&endless);
        assert_eq!(parse_response(&head), Err(FrameError::HeadTooLarge));
    }

    #[test]
    fn no_body_statuses_and_connection_close() {
        let r = parse_response(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.close, r.body.len()), (204, true, 0));
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.close, "HTTP/1.0 closes by default");
    }

    #[test]
    fn body_scan_finds_success_and_code() {
        assert!(body_says_success(b"{\"success\":true}"));
        assert!(body_says_success(b"{ \"esme\": 1, \"success\" :\n true }"));
        assert!(!body_says_success(b"{\"success\":false,\"error\":\"x\"}"));
        assert!(!body_says_success(b"{\"error\":\"success\"}"));
        assert!(!body_says_success(b""));
        assert_eq!(
            body_error_code(b"{\"error\":\"too fast\",\"code\": \"rate_limited\"}"),
            Some(&b"rate_limited"[..])
        );
        assert_eq!(body_error_code(b"{\"code\":42}"), None);
        assert_eq!(body_error_code(b"{\"code\":\"unterminated"), None);
        let long = format!("{{\"code\":\"{}\"}}", "x".repeat(200));
        assert_eq!(
            body_error_code(long.as_bytes()).unwrap().len(),
            MAX_CODE_BYTES
        );
    }
}
