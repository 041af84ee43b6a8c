//! The null-HTTP baseline: answers `200 {"success":true}` to every request with keep-alive,
//! pipelining and one write per batch of parsed requests. It does exactly the HTTP work any
//! server must do and nothing else, so "gateway msg/s ÷ null req/s" in the same run says how
//! much of this machine's HTTP capacity the gateway's own work leaves.
//!
//! For the load generator's own tests it can also answer with another status, or stall its
//! whole thread once (to prove latency is measured from the scheduled send time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::LoadgenError;

const MAX_HEADERS: usize = 64;
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
const READ_BUF_BYTES: usize = 16 * 1024;

/// How the null server behaves.
#[derive(Debug, Clone)]
pub struct NullServerConfig {
    pub addr: SocketAddr,
    pub threads: usize,
    /// Status of every answer; non-2xx answers carry `{"success":false,...,"code":"null_status"}`.
    pub status: u16,
    /// Stall the serving thread once, before answering the request with this global index.
    pub stall_once: Option<(u64, Duration)>,
}

/// A running null server. Dropping it leaves the threads running; call [`NullServer::stop`].
pub struct NullServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    response: Vec<u8>,
    stall_once: Option<(u64, Duration)>,
    stalled: AtomicBool,
}

fn canned_response(status: u16) -> Vec<u8> {
    let (reason, body): (&str, &str) = match status {
        200 => ("OK", "{\"success\":true}"),
        _ => (
            "Null",
            "{\"success\":false,\"error\":\"null server answers this status\",\"code\":\"null_status\"}",
        ),
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl NullServer {
    /// Bind and start serving on `config.threads` monoio runtimes sharing one listening socket.
    pub fn start(config: NullServerConfig) -> Result<Self, LoadgenError> {
        if config.threads == 0 {
            return Err(LoadgenError::InvalidArgument {
                what: "--threads",
                why: "must be at least 1".to_owned(),
            });
        }
        if !(200..=599).contains(&config.status) {
            return Err(LoadgenError::InvalidArgument {
                what: "--status",
                why: format!("{} is not an HTTP status 200..=599", config.status),
            });
        }
        let listener =
            std::net::TcpListener::bind(config.addr).map_err(|source| LoadgenError::Bind {
                addr: config.addr,
                source,
            })?;
        // monoio's epoll driver calls accept() when it believes the socket is ready; on a
        // blocking socket a spurious readiness would then block the whole runtime thread.
        listener.set_nonblocking(true).map_err(LoadgenError::Io)?;
        let addr = listener.local_addr().map_err(LoadgenError::Io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            stop: stop.clone(),
            served: served.clone(),
            response: canned_response(config.status),
            stall_once: config.stall_once,
            stalled: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(config.threads);
        for i in 0..config.threads {
            // Every thread accepts on a duplicate of the same socket: one accept queue, so a
            // connection goes to whichever thread is free and `stop` can wake each of them.
            let std_listener = listener.try_clone().map_err(LoadgenError::Io)?;
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("null-http-{i}"))
                .spawn(move || serve_thread(std_listener, shared))
                .map_err(LoadgenError::Io)?;
            threads.push(handle);
        }
        Ok(Self {
            addr,
            stop,
            served,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Block until the server threads end (they only end on `stop` or a runtime error).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stop accepting, close every connection and join the threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Each thread sits in accept(); one connection per thread wakes them all. Bounded:
        // one attempt per thread with a short timeout.
        for _ in 0..self.threads.len() {
            let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_thread(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "null-http: cannot build runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let driver = if monoio::utils::is_legacy() {
            "epoll"
        } else {
            "io_uring"
        };
        tracing::info!(driver, "null-http thread serving");
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "null-http: cannot register listener");
                return;
            }
        };
        let mut accept_errors = 0u32;
        loop {
            let accepted = listener.accept().await;
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            match accepted {
                Ok((stream, _)) => {
                    accept_errors = 0;
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning on the error.
                    accept_errors = accept_errors.saturating_add(1);
                    tracing::warn!(error = %e, "null-http: accept failed");
                    let pause = Duration::from_millis(10u64 << accept_errors.min(6));
                    monoio::time::sleep(pause).await;
                }
            }
        }
    });
}

/// Outcome of framing one request at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Framed {
    Incomplete,
    /// A request of this many bytes; `close` when the client asked to close after it.
    Request {
        len: usize,
        close: bool,
    },
    /// Answer with this status and close (malformed, too large, chunked).
    Refuse(u16),
}

fn frame_request(buf: &[u8]) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST_HEAD_BYTES => {
            return Framed::Refuse(431);
        }
        Ok(httparse::Status::Partial) => return Framed::Incomplete,
        Err(_) => return Framed::Refuse(400),
    };
    let mut body_len: usize = 0;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => body_len = n,
                None => return Framed::Refuse(400),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Framed::Refuse(501);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if body_len > MAX_REQUEST_BODY_BYTES {
        return Framed::Refuse(413);
    }
    if buf.len() < head_len + body_len {
        return Framed::Incomplete;
    }
    Framed::Request {
        len: head_len + body_len,
        close,
    }
}

fn refusal(status: u16) -> Vec<u8> {
    format!("HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BUF_BYTES);
    let mut wbuf: Vec<u8> = Vec::with_capacity(READ_BUF_BYTES);
    loop {
        if rbuf.len() == rbuf.capacity() {
            // Only a request larger than the buffer gets here; framing bounds it.
            rbuf.reserve(rbuf.capacity());
        }
        let (len, cap) = (rbuf.len(), rbuf.capacity());
        let (result, slice) = stream.read(rbuf.slice_mut(len..cap)).await;
        rbuf = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut consumed = 0;
        let mut close = false;
        loop {
            match frame_request(&rbuf[consumed..]) {
                Framed::Incomplete => break,
                Framed::Request {
                    len,
                    close: wants_close,
                } => {
                    consumed += len;
                    let index = shared.served.fetch_add(1, Ordering::Relaxed);
                    if let Some((at, pause)) = shared.stall_once
                        && index >= at
                        && !shared.stalled.swap(true, Ordering::SeqCst)
                    {
                        // Deliberately block the whole runtime thread: every connection on it
                        // stalls, like a GC pause or a stuck disk would.
                        std::thread::sleep(pause);
                    }
                    wbuf.extend_from_slice(&shared.response);
                    if wants_close {
                        close = true;
                        break;
                    }
                }
                Framed::Refuse(status) => {
                    wbuf.extend_from_slice(&refusal(status));
                    close = true;
                    break;
                }
            }
        }
        rbuf.drain(..consumed);
        if !wbuf.is_empty() {
            // One write for every response of this read: the batching the gateway does too.
            let (result, buf) = stream.write_all(wbuf).await;
            wbuf = buf;
            wbuf.clear();
            if result.is_err() {
                return;
            }
        }
        if close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_requests_and_refuses_bad_ones() {
        let req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(
            frame_request(req),
            Framed::Request {
                len: req.len(),
                close: false
            }
        );
        assert_eq!(frame_request(&req[..req.len() - 1]), Framed::Incomplete);
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert_eq!(
            frame_request(close),
            Framed::Request {
                len: close.len(),
                close: true
            }
        );
        let http10 = b"GET / HTTP/1.0\r\n\r\n";
        assert!(matches!(
            frame_request(http10),
            Framed::Request { close: true, .. }
        ));
        assert_eq!(
            frame_request(b"\x00\x01garbage\r\n\r\n"),
            Framed::Refuse(400)
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(frame_request(chunked), Framed::Refuse(501));
        let big = b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(frame_request(big), Framed::Refuse(413));
        let mut endless = b"GET / HTTP/1.1\r\nX: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD_BYTES + 1));
        assert_eq!(frame_request(&endless), Framed::Refuse(431));
    }

    #[test]
    fn canned_responses_frame_correctly() {
        for status in [200, 500] {
            let bytes = canned_response(status);
            let resp = super::super::http::parse_response(&bytes).unwrap().unwrap();
            assert_eq!(resp.len, bytes.len());
            assert_eq!(resp.status, status);
            assert_eq!(
                super::super::http::body_says_success(resp.body),
                status == 200
            );
        }
    }
}
