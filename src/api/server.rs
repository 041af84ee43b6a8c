//! The HTTP/1.1 connection loop on monoio: accept, read, parse every complete request in the
//! buffer, answer them in order, write all answers with one write, repeat.
//!
//! Bounds: connections per shard, head and body size, requests per write batch, idle time.
//! On shutdown the accept loop stops, idle connections close, busy ones finish the batch in
//! hand (answered with `connection: close`) and the caller waits for them up to its deadline.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::http::{self, Limits, Parse, Request, Response};
use crate::runtime::Shutdown;

/// Something that answers one request. Implemented by the REST API; tests use small closures.
pub trait Service {
    fn call(&self, req: &Request<'_>) -> impl Future<Output = Response>;
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Open connections per shard; the next one gets 503 `overloaded` and is closed.
    pub max_connections: usize,
    /// A connection with no complete request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Read granularity; the buffer grows in these steps up to head + body limit.
const READ_CHUNK: usize = 16 * 1024;

/// Counts open connections of one shard.
#[derive(Clone, Default)]
pub struct ConnCounter(Rc<Cell<usize>>);

impl ConnCounter {
    pub fn get(&self) -> usize {
        self.0.get()
    }
}

struct ConnGuard(ConnCounter);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.0.set(self.0.0.get() - 1);
    }
}

/// Accepts until shutdown, then waits for open connections to finish until `drain_deadline()`
/// (evaluated when shutdown begins).
pub async fn serve<S: Service + 'static>(
    listener: TcpListener,
    service: Rc<S>,
    cfg: Rc<ServerConfig>,
    shutdown: Shutdown,
    drain_timeout: Duration,
) {
    let conns = ConnCounter::default();
    let mut accept_errors = 0u32;
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = shutdown.wait() => None,
        };
        let Some(accepted) = accepted else { break };
        match accepted {
            Ok((stream, peer)) => {
                accept_errors = 0;
                let _ = stream.set_nodelay(true);
                if conns.get() >= cfg.max_connections {
                    monoio::spawn(refuse(stream));
                    continue;
                }
                conns.0.set(conns.get() + 1);
                let guard = ConnGuard(conns.clone());
                let service = Rc::clone(&service);
                let cfg = Rc::clone(&cfg);
                let shutdown = shutdown.clone();
                monoio::spawn(async move {
                    let _guard = guard;
                    let peer = Some(peer.ip());
                    if let Err(e) = connection(stream, peer, &*service, &cfg, &shutdown).await {
                        debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on accept.
                accept_errors = accept_errors.saturating_add(1);
                let backoff_ms = 1u64 << accept_errors.min(10);
                warn!(error = %e, backoff_ms, "accept failed");
                monoio::time::sleep(Duration::from_millis(backoff_ms)).await;
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + drain_timeout;
    while conns.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    if conns.get() > 0 {
        warn!(
            open = conns.get(),
            "shutdown: connections still open at the drain deadline"
        );
    }
}

async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::with_capacity(128);
    let resp = Response::json(503, http::error_body("too many connections", "overloaded"));
    http::write_response(&mut out, &resp, false, false);
    let _ = stream.write_all(out).await;
}

/// Serves one connection until it closes, errs, idles out or shutdown arrives.
pub async fn connection<S: Service>(
    mut stream: TcpStream,
    peer: Option<std::net::IpAddr>,
    service: &S,
    cfg: &ServerConfig,
    shutdown: &Shutdown,
) -> std::io::Result<()> {
    let limits = &cfg.limits;
    let max_buffer = limits.max_head_bytes + limits.max_any_body();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut continue_sent = false;
    loop {
        // Answer every complete request already buffered (bounded per batch), in order.
        let mut consumed = 0usize;
        let mut close = false;
        let mut framing_error = false;
        let mut want_continue = false;
        let mut error_resp: Option<Response> = None;
        out.clear();
        // Parse every complete request (bounded per batch); stop after one that closes.
        let mut batch: Vec<Request<'_>> = Vec::new();
        while batch.len() < limits.max_pipeline_depth {
            match http::parse_request(&buf[consumed..], limits) {
                Ok(Parse::Complete(mut req, used)) => {
                    req.peer = peer;
                    consumed += used;
                    continue_sent = false;
                    let last = !req.keep_alive;
                    batch.push(req);
                    if last {
                        break;
                    }
                }
                Ok(Parse::Partial { expect_continue }) => {
                    want_continue = expect_continue && !continue_sent;
                    break;
                }
                Err(e) => {
                    error_resp = Some(Response::json(
                        e.status(),
                        http::error_body(&e.to_string(), e.code()),
                    ));
                    break;
                }
            }
        }
        let answered = batch.len();
        // Pipelined requests are handled concurrently (a send waits for the SMSC); their
        // answers are still written in request order, all in one write.
        let responses = if answered == 1 {
            vec![service.call(&batch[0]).await]
        } else {
            join_all(batch.iter().map(|r| service.call(r)).collect()).await
        };
        for (req, resp) in batch.iter().zip(&responses) {
            // Once shutdown started, tell the client to go elsewhere for its next request.
            let keep_alive = req.keep_alive && !shutdown.is_triggered();
            http::write_response(&mut out, resp, keep_alive, req.method == http::Method::Head);
            if !keep_alive {
                close = true;
            }
        }
        drop(batch);
        if let Some(resp) = error_resp {
            if !close {
                http::write_response(&mut out, &resp, false, false);
                framing_error = true;
            }
            close = true;
        }
        if want_continue {
            out.extend_from_slice(http::CONTINUE);
            continue_sent = true;
        }
        if !out.is_empty() {
            let (res, back) = stream.write_all(out).await;
            out = back;
            res?;
        }
        if close {
            if framing_error {
                linger(&mut stream).await;
            }
            return Ok(());
        }
        if consumed > 0 {
            buf.drain(..consumed);
        }
        if answered == limits.max_pipeline_depth {
            // The batch bound was hit with maybe more requests buffered: parse again first.
            continue;
        }
        if shutdown.is_triggered() && buf.is_empty() {
            return Ok(());
        }
        // Need more bytes. Grow within the bound; the parser reports limit breaches itself, so
        // a full buffer here only happens for a request that exactly fills it and is incomplete.
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            let room = max_buffer.saturating_sub(buf.len()).clamp(1024, READ_CHUNK);
            buf.reserve(room);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let read = monoio::select! {
            r = monoio::time::timeout(cfg.idle_timeout, stream.read(buf.slice_mut(len..cap))) => Some(r),
            _ = shutdown.wait(), if buf.is_empty() => None,
        };
        match read {
            // Shutdown while idle: close without a word.
            None => return Ok(()),
            // Idle timeout: the read was cancelled and its buffer dropped; we close anyway.
            Some(Err(_elapsed)) => return Ok(()),
            Some(Ok((res, slice))) => {
                buf = slice.into_inner();
                let n = res?;
                if n == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs all futures concurrently on the current task; outputs in input order. Every wake polls
/// the futures still pending: fine for a batch bounded by the pipeline depth.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Bytes and time spent discarding input after an error answer.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
const LINGER_TIMEOUT: Duration = Duration::from_millis(500);

/// After answering a request we will not read (e.g. 413), close our side and discard what the
/// client is still sending for a bounded time. Closing with unread input makes the kernel send
/// a reset, and the client may then lose our answer before reading it.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER_TIMEOUT;
    let mut discarded = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    while discarded < LINGER_MAX_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match monoio::time::timeout(left, stream.read(buf)).await {
            Ok((Ok(n), back)) if n > 0 => {
                discarded += n;
                buf = back;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    struct Echo;

    impl Service for Echo {
        async fn call(&self, req: &Request<'_>) -> Response {
            // `?ms=N` makes the answer wait N ms (a send waiting for its SMSC).
            if let Some(ms) = req.query.strip_prefix("ms=").and_then(|v| v.parse().ok()) {
                monoio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut body = req.path.as_bytes().to_vec();
            body.push(b':');
            body.extend_from_slice(req.body);
            Response {
                status: 200,
                content_type: "text/plain",
                body,
                headers: Vec::new(),
            }
        }
    }

    /// Starts a one-shard server on a free port in a thread; returns its address and trigger.
    fn start(
        cfg: ServerConfig,
    ) -> (
        std::net::SocketAddr,
        crate::runtime::ShutdownTrigger,
        std::thread::JoinHandle<()>,
    ) {
        let (trigger, shutdown) = crate::runtime::shutdown_pair();
        let listeners = crate::runtime::bind_reuseport("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let l = listeners.into_iter().next().unwrap();
        let handle = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(l).unwrap();
                serve(
                    listener,
                    Rc::new(Echo),
                    Rc::new(cfg),
                    shutdown,
                    Duration::from_secs(2),
                )
                .await;
            });
        });
        (addr, trigger, handle)
    }

    fn read_until_closed(s: &mut std::net::TcpStream) -> String {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    #[test]
    fn pipelined_requests_answered_in_order_then_close() {
        let (addr, trigger, h) = start(ServerConfig::default());
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let text = read_until_closed(&mut s);
        let a = text.find("/a:1").unwrap();
        let b = text.find("/b:").unwrap();
        let c = text.find("/c:").unwrap();
        assert!(a < b && b < c, "{text}");
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3);
        trigger.trigger();
        h.join().unwrap();
    }

    #[test]
    fn request_split_across_reads_and_oversized_body() {
        let cfg = ServerConfig {
            limits: Limits {
                max_head_bytes: 1024,
                max_body_bytes: 8,
                max_pipeline_depth: 2,
                large_body: None,
            },
            ..ServerConfig::default()
        };
        let (addr, trigger, h) = start(cfg);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nContent-").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"Length: 3\r\n\r\nab").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"cPOST /y HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
            .unwrap();
        let text = read_until_closed(&mut s);
        assert!(text.contains("/x:abc"), "{text}");
        assert!(text.contains("413 Payload Too Large"), "{text}");
        assert!(text.contains("\"code\":\"body_too_large\""), "{text}");
        trigger.trigger();
        h.join().unwrap();
    }

    #[test]
    fn expect_continue_and_pipeline_depth_bound() {
        let cfg = ServerConfig {
            limits: Limits {
                max_head_bytes: 1024,
                max_body_bytes: 64,
                max_pipeline_depth: 2,
                large_body: None,
            },
            ..ServerConfig::default()
        };
        let (addr, trigger, h) = start(cfg);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 25];
        s.read_exact(&mut first).unwrap();
        assert_eq!(&first, http::CONTINUE);
        s.write_all(b"ok").unwrap();
        // Five pipelined requests with a batch bound of 2: all five answered, in order.
        let mut many = Vec::new();
        for i in 0..4 {
            many.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        many.extend_from_slice(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n");
        s.write_all(&many).unwrap();
        let text = read_until_closed(&mut s);
        assert!(text.contains("/e:ok"), "{text}");
        let positions: Vec<usize> = ["/0:", "/1:", "/2:", "/3:", "/last:"]
            .iter()
            .map(|p| text.find(p).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        trigger.trigger();
        h.join().unwrap();
    }

    #[test]
    fn pipelined_requests_run_concurrently_answers_stay_in_order() {
        let (addr, trigger, h) = start(ServerConfig::default());
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let started = std::time::Instant::now();
        // The first waits longest: sequential handling would take 1000 ms.
        s.write_all(
            b"GET /a?ms=400 HTTP/1.1\r\n\r\nGET /b?ms=300 HTTP/1.1\r\n\r\nGET /c?ms=200 HTTP/1.1\r\n\r\nGET /d?ms=100 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let text = read_until_closed(&mut s);
        let elapsed = started.elapsed();
        let pos: Vec<usize> = ["/a:", "/b:", "/c:", "/d:"]
            .iter()
            .map(|p| text.find(p).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(elapsed < Duration::from_millis(900), "took {elapsed:?}");
        trigger.trigger();
        h.join().unwrap();
    }

    #[test]
    fn shutdown_closes_idle_connections() {
        let (addr, trigger, h) = start(ServerConfig::default());
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        trigger.trigger();
        // The idle keep-alive connection is closed by the server, and serve() returns.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        h.join().unwrap();
    }

    #[test]
    fn bad_request_is_answered_and_closed() {
        let (addr, trigger, h) = start(ServerConfig::default());
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .unwrap();
        let text = read_until_closed(&mut s);
        assert!(text.starts_with("HTTP/1.1 411 Length Required"), "{text}");
        assert!(text.contains("length_required"));
        trigger.trigger();
        h.join().unwrap();
    }
}
