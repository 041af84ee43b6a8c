//! The gRPC face of the gateway (`proto/` is the source; build.rs generates `pb`).
//!
//! Like `rest`, this module only translates: protobuf messages ↔ pipeline inputs and answers,
//! `ApiError` → `tonic::Status` through the one mapping in `api::error`. The calls themselves
//! run on a shard (`crate::shard::grpc` hands them over); tonic runs on the tokio side runtime.
//!
//! Errors: the gRPC code is `ErrorKind::grpc_code`; the status message is
//! `"<code>: <human message>"` where `<code>` is the stable REST `code` (e.g.
//! `rate_limited: ...`), and a retry hint travels as `retry-after` metadata (seconds).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::error::{ApiError, ErrorKind};
use crate::shard::grpc::{CallMeta, GrpcBridge, GrpcCall, answer};
use crate::shard::pipeline::{SendAnswer, SendInput};
use crate::smpp::text::Encoding;
use crate::state::MessageRecord;

/// Generated messages, servers and clients.
pub mod pb {
    pub mod sms {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic)]
            tonic::include_proto!("sms.v1");
        }
    }
    pub mod auth {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("auth");
    }
}

use pb::auth::auth_server::{Auth, AuthServer};
use pb::auth::{LoginRequest, LoginResponse};
use pb::sms::v1 as sms;
use sms::sms_service_server::{SmsService, SmsServiceServer};

/// Largest request message the server decodes (a send is well under 1 KiB; tonic's decoder
/// refuses a bigger one with OUT_OF_RANGE from its length prefix, before buffering it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Concurrent HTTP/2 streams (calls) per client connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Requests of one `SendMessageStream` being processed at once. The server reads the next
/// request only when one of these has produced its response and that response fit into the
/// (equally bounded) outgoing queue, so a client that sends faster than the gateway answers,
/// or reads answers slowly, is held back by HTTP/2 flow control, not by our buffers.
pub const STREAM_IN_FLIGHT: usize = 128;
/// HTTP/2 receive window per stream: what one client may have sent that the server has not
/// read yet (about a thousand send requests). hyper's default (1 MiB) would let a stream client
/// park ~16k requests in our buffers while the handler is at `STREAM_IN_FLIGHT`.
pub const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// HTTP/2 receive window per connection (all its streams together).
pub const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// The `tonic::Status` of an error: code from the shared mapping, code name in the message.
pub fn status(e: &ApiError) -> Status {
    let mut s = Status::new(
        tonic::Code::from_i32(e.kind.grpc_code()),
        format!("{}: {}", e.kind.code(), e.message),
    );
    if let Some(secs) = e.retry_after_s
        && let Ok(v) = secs.to_string().parse()
    {
        s.metadata_mut().insert("retry-after", v);
    }
    s
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidField, msg.into())
}

/// The metadata and peer of a call, in the form the shard's admission stages read.
fn call_meta<T>(req: &Request<T>) -> CallMeta {
    let md = req.metadata();
    let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    CallMeta {
        authorization: text("authorization"),
        // The reference's key is `app_id`; `x-app-id` (REST's header name) works too.
        app_id: text("app_id").or_else(|| text("x-app-id")),
        peer: req
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
    }
}

fn parse_encoding(name: &str) -> Result<Option<Encoding>, ApiError> {
    if name.is_empty() || name.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    name.parse::<Encoding>().map(Some).map_err(|_| {
        invalid(format!(
            "unknown encoding {name:?} (expected auto, gsm7, latin1 or ucs2)"
        ))
    })
}

/// `esme` as an id: 1..=u32::MAX.
fn esme_id(esme: i64, zero_ok: bool) -> Result<Option<u32>, ApiError> {
    if esme == 0 && zero_ok {
        return Ok(None);
    }
    u32::try_from(esme)
        .ok()
        .filter(|&n| n > 0)
        .map(Some)
        .ok_or_else(|| invalid("`esme` must be a positive link or pool id"))
}

/// An `SmsRequest` as the pipeline's input. `meta.app_id` is filled from the body's `app_id`
/// when the metadata has none; both present and different is `app_id_mismatch`.
pub fn send_input(r: sms::SmsRequest, meta: &mut CallMeta) -> Result<SendInput, ApiError> {
    let esme = esme_id(r.esme, false)?.unwrap_or_default();
    for (name, v) in [
        ("ston", r.ston),
        ("snpi", r.snpi),
        ("dton", r.dton),
        ("dnpi", r.dnpi),
    ] {
        // Range only: the link's configured TON/NPI are what goes into the submit_sm.
        if let Some(v) = v
            && !(0..=255).contains(&v)
        {
            return Err(invalid(format!("`{name}` must be in 0..=255, got {v}")));
        }
    }
    if r.app_id < 0 {
        return Err(ApiError::new(
            ErrorKind::InvalidAppId,
            "`app_id` must be a positive integer",
        ));
    }
    if r.app_id > 0 {
        match meta.app_id.as_deref().map(|s| s.trim().parse::<i64>()) {
            None => meta.app_id = Some(r.app_id.to_string()),
            Some(Ok(m)) if m == r.app_id => {}
            Some(Ok(_)) => {
                return Err(ApiError::new(
                    ErrorKind::AppIdMismatch,
                    "`app_id` in the request differs from the app_id metadata",
                ));
            }
            // Unparsable metadata: the auth stage reports it with its own code.
            Some(Err(_)) => {}
        }
    }
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Ok(SendInput {
        esme,
        source: r.saddr,
        destination: r.daddr,
        message: r.message,
        transaction_id: opt(r.transaction_id),
        encoding: parse_encoding(&r.encoding)?,
        callback_url: opt(r.callback_url),
        strategy: opt(r.strategy),
    })
}

/// A pipeline answer as an `SmsResponse` (also used for failed stream items).
pub fn send_response(a: &SendAnswer, task_id: i64, sent_at: i64) -> sms::SmsResponse {
    sms::SmsResponse {
        success: a.error.is_none(),
        error: a
            .error
            .as_ref()
            .map(|e| e.message.to_string())
            .unwrap_or_default(),
        code: a
            .error
            .as_ref()
            .map(|e| e.kind.code().to_string())
            .unwrap_or_default(),
        esme: i64::from(a.esme),
        transaction_id: a.transaction_id.clone(),
        task_id,
        parts: a.parts as u32,
        encoding: a.encoding.to_string(),
        message_ids: a.message_ids.clone(),
        status: a.status.as_str().to_string(),
        link: a.link,
        duplicate: a.duplicate,
        grpc_code: a.error.as_ref().map_or(0, |e| e.kind.grpc_code()),
        sent_at,
        retry_after_s: a.error.as_ref().and_then(|e| e.retry_after_s).unwrap_or(0),
    }
}

/// A stream item refused before the pipeline produced an answer.
fn error_response(e: &ApiError, echo: &Echo) -> sms::SmsResponse {
    sms::SmsResponse {
        success: false,
        error: e.message.to_string(),
        code: e.kind.code().to_string(),
        esme: echo.esme,
        transaction_id: echo.transaction_id.clone(),
        task_id: echo.task_id,
        grpc_code: e.kind.grpc_code(),
        sent_at: echo.sent_at,
        retry_after_s: e.retry_after_s.unwrap_or(0),
        ..Default::default()
    }
}

/// What a stream item's answer repeats from its request, kept before the request is consumed.
struct Echo {
    esme: i64,
    transaction_id: String,
    task_id: i64,
    sent_at: i64,
}

fn status_view(r: &MessageRecord) -> sms::MessageStatus {
    use crate::state::Encoding as E;
    sms::MessageStatus {
        transaction_id: r.transaction_id.clone(),
        app_id: r.app_id,
        esme: r.esme,
        link: r.link_id,
        source: r.source.clone(),
        destination: r.destination.clone(),
        status: r.status.as_str().to_string(),
        encoding: match r.encoding {
            E::Gsm7 => "gsm7",
            E::Latin1 => "latin1",
            E::Ucs2 => "ucs2",
        }
        .to_string(),
        parts: r
            .parts
            .iter()
            .map(|p| sms::Part {
                index: u32::from(p.index),
                status: p.status.as_str().to_string(),
                link: p.link_id,
                message_id: p.smsc_message_id.clone(),
                error_code: p.error_code,
                submitted_at_ms: p.submitted_at_ms,
                receipt: p.receipt.as_ref().map(|rc| sms::Receipt {
                    status: rc.status.as_str().to_string(),
                    stat: rc.stat.clone(),
                    err: rc.err.clone(),
                    done_at_ms: rc.done_at_ms,
                    received_at_ms: rc.received_at_ms,
                }),
            })
            .collect(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        expires_at_ms: r.expires_at_ms,
        callback_url: r.callback_url.clone(),
    }
}

/// `CheckESME` from the links report (the JSON REST serves), restricted to `esme` if set: a
/// link, or a pool and its member links.
fn esme_view(
    report: &serde_json::Value,
    esme: Option<u32>,
) -> Result<sms::CheckEsmeResponse, ApiError> {
    use serde_json::Value;
    let u64_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let u32_of = |v: &Value, k: &str| u32::try_from(u64_of(v, k)).unwrap_or(u32::MAX);
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let empty = Vec::new();
    let links = report
        .get("links")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let pools = report
        .get("pools")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let link = |l: &Value| sms::LinkState {
        id: u32_of(l, "id"),
        state: str_of(l, "state"),
        enabled: l.get("enabled").and_then(Value::as_bool).unwrap_or(false),
        binds_configured: u32_of(l, "binds_configured"),
        binds_up: u32_of(l, "binds_up"),
        binds: l
            .get("binds")
            .and_then(Value::as_array)
            .map(|b| {
                b.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        window: u32_of(l, "window"),
        window_used: u64_of(l, "window_used"),
        queued: u64_of(l, "queued"),
        esme_rate: u64_of(l, "esme_rate"),
        esme_rate_burst: u64_of(l, "esme_rate_burst"),
        configured_rate: u64_of(l, "configured_rate"),
        host: str_of(l, "host"),
        port: u32_of(l, "port"),
        system_id: str_of(l, "system_id"),
    };
    let pool = |p: &Value| sms::PoolState {
        id: u32_of(p, "id"),
        name: str_of(p, "name"),
        members: p
            .get("members")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| sms::PoolMember {
                        link: u32_of(m, "link"),
                        weight: u32_of(m, "weight"),
                        state: str_of(m, "state"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        healthy_members: u32_of(p, "healthy_members"),
        capacity: u64_of(p, "capacity"),
        burst: u64_of(p, "burst"),
    };
    let Some(id) = esme else {
        return Ok(sms::CheckEsmeResponse {
            links: links.iter().map(link).collect(),
            pools: pools.iter().map(pool).collect(),
        });
    };
    if let Some(l) = links.iter().find(|l| u32_of(l, "id") == id) {
        return Ok(sms::CheckEsmeResponse {
            links: vec![link(l)],
            pools: Vec::new(),
        });
    }
    if let Some(p) = pools.iter().find(|p| u32_of(p, "id") == id) {
        let p = pool(p);
        let members: Vec<u32> = p.members.iter().map(|m| m.link).collect();
        return Ok(sms::CheckEsmeResponse {
            links: links
                .iter()
                .filter(|l| members.contains(&u32_of(l, "id")))
                .map(link)
                .collect(),
            pools: vec![p],
        });
    }
    Err(ApiError::new(
        ErrorKind::UnknownEsme,
        format!("no link or pool with id {id}"),
    ))
}

/// `sms.v1.SmsService` on the side runtime; every call goes to a shard through `bridge`.
pub struct SmsApi {
    bridge: Arc<GrpcBridge>,
}

impl SmsApi {
    /// Hands a call to a shard and waits for its answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> GrpcCall,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.bridge.dispatch(make(tx))?;
        answer(rx).await
    }

    /// One `SendMessageStream` item: always an answer, failures included.
    async fn send_stream_item(&self, req: sms::SmsRequest, meta: &CallMeta) -> sms::SmsResponse {
        let echo = Echo {
            esme: req.esme,
            transaction_id: req.transaction_id.clone(),
            task_id: req.task_id,
            sent_at: req.sent_at,
        };
        let mut meta = meta.clone();
        let input = send_input(req, &mut meta);
        match self
            .call(|reply| GrpcCall::Send {
                input,
                meta,
                stream: true,
                reply,
            })
            .await
        {
            Ok(a) => send_response(&a, echo.task_id, echo.sent_at),
            Err(e) => error_response(&e, &echo),
        }
    }
}

type SendStream = Pin<Box<dyn Stream<Item = Result<sms::SmsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SmsService for Arc<SmsApi> {
    async fn send_message(
        &self,
        request: Request<sms::SmsRequest>,
    ) -> Result<Response<sms::SmsResponse>, Status> {
        let mut meta = call_meta(&request);
        let req = request.into_inner();
        let (task_id, sent_at) = (req.task_id, req.sent_at);
        // A conversion error is answered by the shard too (after authentication; counted).
        let input = send_input(req, &mut meta);
        let a = self
            .call(|reply| GrpcCall::Send {
                input,
                meta,
                stream: false,
                reply,
            })
            .await
            .map_err(|e| status(&e))?;
        // Accepted but then failed (e.g. the SMSC refused it): a non-OK status, like REST's
        // non-2xx; the record (GetStatus) keeps the details.
        if let Some(e) = &a.error {
            return Err(status(e));
        }
        Ok(Response::new(send_response(&a, task_id, sent_at)))
    }

    type SendMessageStreamStream = SendStream;

    async fn send_message_stream(
        &self,
        request: Request<Streaming<sms::SmsRequest>>,
    ) -> Result<Response<SendStream>, Status> {
        let meta = call_meta(&request);
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel::<Result<sms::SmsResponse, Status>>(STREAM_IN_FLIGHT);
        let permits = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
        let api = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                // A permit before reading: at most STREAM_IN_FLIGHT requests are read and not
                // yet answered into `out_tx`; beyond that the request stream is not polled.
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let req = tokio::select! {
                    r = inbound.message() => r,
                    // The client went away: stop reading.
                    () = out_tx.closed() => break,
                };
                let req = match req {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(s) => {
                        tracing::debug!(status = %s, "gRPC send stream broken");
                        // Broken request stream (bad frame, over-size message): end with it.
                        let _ = out_tx.send(Err(s)).await;
                        break;
                    }
                };
                let api = Arc::clone(&api);
                let meta = meta.clone();
                let out = out_tx.clone();
                tokio::spawn(async move {
                    let resp = api.send_stream_item(req, &meta).await;
                    let _ = out.send(Ok(resp)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn check_text_len(
        &self,
        request: Request<sms::CheckTextLenRequest>,
    ) -> Result<Response<sms::CheckTextLenResponse>, Status> {
        let meta = call_meta(&request);
        let req = request.into_inner();
        let options = parse_encoding(&req.encoding)
            .and_then(|enc| esme_id(req.esme, true).map(|esme| (enc, esme)));
        let characters = req.message.chars().count();
        let info = self
            .call(|reply| GrpcCall::CheckTextLen {
                message: req.message,
                options,
                meta,
                reply,
            })
            .await
            .map_err(|e| status(&e))?;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Response::new(sms::CheckTextLenResponse {
            encoding: info.encoding.name().to_string(),
            data_coding: u32::from(info.data_coding),
            parts: n(info.parts),
            units: n(info.units),
            unit: info.encoding.unit_name().to_string(),
            octets: n(info.octets),
            units_per_part: n(info.units_per_part),
            remaining_in_last_part: n(info.remaining_in_last_part),
            message_payload: info.message_payload,
            characters: n(characters),
        }))
    }

    async fn check_esme(
        &self,
        request: Request<sms::CheckEsmeRequest>,
    ) -> Result<Response<sms::CheckEsmeResponse>, Status> {
        let meta = call_meta(&request);
        let esme = esme_id(request.get_ref().esme, true);
        // Authenticated (on the shard) before `esme` is looked at.
        let report = self
            .call(|reply| GrpcCall::Links { meta, reply })
            .await
            .map_err(|e| status(&e))?;
        let esme = esme.map_err(|e| status(&e))?;
        esme_view(&report, esme)
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn get_status(
        &self,
        request: Request<sms::GetStatusRequest>,
    ) -> Result<Response<sms::MessageStatus>, Status> {
        let meta = call_meta(&request);
        let transaction_id = request.into_inner().transaction_id;
        let record = self
            .call(|reply| GrpcCall::GetStatus {
                transaction_id,
                meta,
                reply,
            })
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(status_view(&record)))
    }
}

/// `auth.Auth`: login, executed on a shard like everything else (its metrics slot; the argon2
/// check itself on the auth service's bounded login threads).
pub struct AuthApi {
    api: Arc<SmsApi>,
}

#[tonic::async_trait]
impl Auth for AuthApi {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let meta = call_meta(&request);
        let req = request.into_inner();
        let app_id = u64::try_from(req.app_id)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| status(&invalid("`app_id` must be a positive integer")))?;
        let secret = if req.secret.is_empty() {
            req.password
        } else {
            req.secret
        };
        if secret.is_empty() {
            return Err(status(&ApiError::new(
                ErrorKind::MissingField,
                "missing field `secret`",
            )));
        }
        let a = self
            .api
            .call(|reply| GrpcCall::Login {
                app_id,
                secret,
                meta,
                reply,
            })
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(LoginResponse {
            token: a.token,
            token_type: a.token_type.to_string(),
            expires_in: a.expires_in,
            app_id: i64::try_from(a.app_id).unwrap_or(i64::MAX),
        }))
    }
}

/// Settings of the gRPC listener.
#[derive(Debug, Clone)]
pub struct GrpcServerConfig {
    /// Longest a unary call (or a stream's setup) may take before DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Client connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

/// How long accepting pauses after an accept error (e.g. out of file descriptors), instead
/// of retrying in a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The listener as tonic's connection stream, with a bound on open connections: each accepted
/// connection holds a permit until it is closed; without a free permit it is closed at once
/// (each connection may hold up to `CONNECTION_WINDOW_BYTES` of unread requests, so their
/// number must be bounded too).
struct LimitedIncoming {
    listener: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for LimitedIncoming {
    type Item = std::io::Result<LimitedConn>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((io, peer))) => {
                    let Ok(permit) = Arc::clone(&this.permits).try_acquire_owned() else {
                        tracing::debug!(%peer, "gRPC connection refused: at the connection bound");
                        drop(io);
                        continue;
                    };
                    // Small frames: latency matters more than packet count.
                    let _ = io.set_nodelay(true);
                    return Poll::Ready(Some(Ok(LimitedConn {
                        io,
                        _permit: permit,
                    })));
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "gRPC accept failed; pausing accept");
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
            }
        }
    }
}

/// An accepted connection and its permit (released when tonic drops the connection).
struct LimitedConn {
    io: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for LimitedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for LimitedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A running gRPC server.
pub struct GrpcServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` now (so a port error surfaces at start) and serves on `handle`'s runtime until
/// `shutdown` resolves; tonic then stops accepting and lets running calls finish.
pub fn start(
    handle: &tokio::runtime::Handle,
    addr: SocketAddr,
    bridge: Arc<GrpcBridge>,
    cfg: GrpcServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<GrpcServer> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let _guard = handle.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let incoming = LimitedIncoming {
        listener,
        permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1))),
        pause: None,
    };
    let api = Arc::new(SmsApi { bridge });
    let sms_svc = SmsServiceServer::new(Arc::clone(&api))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES * 16);
    let auth_svc = AuthServer::new(AuthApi { api }).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .timeout(cfg.request_timeout)
        // Bounds what a client that resets streams in a loop can make us hold.
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(16 * 1024)
        .add_service(sms_svc)
        .add_service(auth_svc);
    let task = handle.spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
    });
    Ok(GrpcServer { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> sms::SmsRequest {
        sms::SmsRequest {
            task_id: 7,
            esme: 100,
            saddr: "Test".into(),
            daddr: "+4915100000001".into(),
            message: "hi".into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_carries_code_and_retry_hint() {
        let s = status(&ApiError::new(ErrorKind::RateLimited, "slow down").retry_after(2));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), "rate_limited: slow down");
        assert_eq!(s.metadata().get("retry-after").unwrap(), "2");
        let s = status(&ApiError::new(ErrorKind::InvalidToken, "bad"));
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn request_fields_are_checked() {
        let mut meta = CallMeta::anonymous();
        let i = send_input(req(), &mut meta).unwrap();
        assert_eq!((i.esme, i.transaction_id, i.strategy), (100, None, None));
        for bad in [0, -1, i64::from(u32::MAX) + 1] {
            let e = send_input(sms::SmsRequest { esme: bad, ..req() }, &mut meta).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidField);
        }
        let e = send_input(
            sms::SmsRequest {
                dton: Some(256),
                ..req()
            },
            &mut meta,
        )
        .unwrap_err();
        assert_eq!(e.kind.grpc_code(), 3);
        let e = send_input(
            sms::SmsRequest {
                encoding: "klingon".into(),
                ..req()
            },
            &mut meta,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidField);
    }

    #[test]
    fn body_app_id_fills_or_must_match_metadata() {
        let mut meta = CallMeta::anonymous();
        send_input(sms::SmsRequest { app_id: 5, ..req() }, &mut meta).unwrap();
        assert_eq!(meta.app_id.as_deref(), Some("5"));
        let e = send_input(sms::SmsRequest { app_id: 6, ..req() }, &mut meta).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AppIdMismatch);
    }

    #[test]
    fn esme_view_filters_links_and_pools() {
        let report = serde_json::json!({
            "links": [{"id": 1, "state": "connected", "binds": ["up"]}, {"id": 2}, {"id": 3}],
            "pools": [{"id": 10, "members": [{"link": 1, "weight": 1}, {"link": 2, "weight": 3}]}],
        });
        let all = esme_view(&report, None).unwrap();
        assert_eq!((all.links.len(), all.pools.len()), (3, 1));
        let one = esme_view(&report, Some(1)).unwrap();
        assert_eq!(one.links[0].state, "connected");
        assert_eq!(one.links[0].binds, vec!["up".to_string()]);
        let pool = esme_view(&report, Some(10)).unwrap();
        assert_eq!(
            pool.links.iter().map(|l| l.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(pool.pools[0].members[1].weight, 3);
        assert_eq!(
            esme_view(&report, Some(99)).unwrap_err().kind,
            ErrorKind::UnknownEsme
        );
    }
}
