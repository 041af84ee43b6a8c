//! The shard side of gRPC: tonic runs on the tokio side runtime (`api::grpc`), but every call is
//! executed by a shard, through the same `Pipeline` methods REST uses, so there is one place
//! with the rules about messages and one per-shard state (router, limits, auth cache).
//!
//! ```text
//! tonic handler (tokio) ──try_send──▶ bounded channel of shard k (round-robin)
//!                                     └─▶ shard_loop: one monoio task per call (bounded)
//!                                            Pipeline::{send,status,...} ──oneshot──▶ handler
//! ```
//!
//! Bounds: each shard's channel holds `CHANNEL_CAPACITY` calls; a call that finds every
//! channel full is refused with `Overloaded` (UNAVAILABLE, retryable) instead of waiting; a
//! shard runs at most `MAX_IN_FLIGHT_PER_SHARD` gRPC calls at once and stops taking calls off its
//! channel while at that bound, so the channel then fills and the refusals start.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use super::pipeline::{Pipeline, SendAnswer, SendInput};
use super::stages::RequestMeta;
use crate::api::{ApiError, ErrorKind};
use crate::auth::LoginAnswer;
use crate::smpp::text::{Encoding, TextInfo};
use crate::state::MessageRecord;

/// Calls waiting in one shard's gRPC channel.
pub const CHANNEL_CAPACITY: usize = 1024;
/// gRPC calls one shard executes at once (each is one monoio task holding its request).
pub const MAX_IN_FLIGHT_PER_SHARD: usize = 4096;

/// What a gRPC caller sent besides the message: the metadata the admission stages read and
/// the peer address (for the app's CIDRs and the link whitelist). Owned: it crosses threads.
#[derive(Debug, Clone)]
pub struct CallMeta {
    /// `authorization` metadata (`Bearer <jwt>`).
    pub authorization: Option<String>,
    /// `app_id` metadata (REST's `X-App-ID`).
    pub app_id: Option<String>,
    pub peer: IpAddr,
}

impl CallMeta {
    pub fn anonymous() -> CallMeta {
        CallMeta {
            authorization: None,
            app_id: None,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// The header lookup `RequestMeta` expects: the REST header names map onto the gRPC
    /// metadata keys, so the auth stage does not know which protocol it serves.
    fn header<'s>(&'s self, name: &str) -> Option<&'s str> {
        if name.eq_ignore_ascii_case("authorization") {
            self.authorization.as_deref()
        } else if name.eq_ignore_ascii_case("x-app-id") || name.eq_ignore_ascii_case("app_id") {
            self.app_id.as_deref()
        } else {
            None
        }
    }
}

/// One gRPC call on its way to a shard, with the one-shot its answer goes back on.
pub enum GrpcCall {
    /// `SendMessage` and each item of `SendMessageStream` (`stream` tells which, for metrics).
    Send {
        /// The request as pipeline input, or why it could not be read: a malformed request is
        /// still answered (after authentication, as REST reads no body before it) and counted
        /// here, on the shard.
        input: Result<SendInput, ApiError>,
        meta: CallMeta,
        stream: bool,
        reply: oneshot::Sender<Result<SendAnswer, ApiError>>,
    },
    GetStatus {
        transaction_id: String,
        meta: CallMeta,
        reply: oneshot::Sender<Result<MessageRecord, ApiError>>,
    },
    CheckTextLen {
        message: String,
        /// `(encoding, esme)` as read from the request, or why they could not be (answered
        /// after authentication).
        options: Result<(Option<Encoding>, Option<u32>), ApiError>,
        meta: CallMeta,
        reply: oneshot::Sender<Result<TextInfo, ApiError>>,
    },
    /// `CheckESME`: the links report (as REST's `GET /api/v1/smpp/links`).
    Links {
        meta: CallMeta,
        reply: oneshot::Sender<Result<serde_json::Value, ApiError>>,
    },
    Login {
        app_id: u64,
        secret: String,
        meta: CallMeta,
        reply: oneshot::Sender<Result<LoginAnswer, ApiError>>,
    },
}

/// The tokio side's handle on the shards' gRPC channels. `Send + Sync`.
pub struct GrpcBridge {
    shards: Vec<async_channel::Sender<GrpcCall>>,
    next: AtomicUsize,
}

impl GrpcBridge {
    /// One bounded channel per shard: the bridge and each shard's receiving end (by shard id).
    pub fn new(
        shards: usize,
        capacity: usize,
    ) -> (Arc<GrpcBridge>, Vec<async_channel::Receiver<GrpcCall>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..shards.max(1))
            .map(|_| async_channel::bounded(capacity.max(1)))
            .unzip();
        (
            Arc::new(GrpcBridge {
                shards: tx,
                next: AtomicUsize::new(0),
            }),
            rx,
        )
    }

    /// Hands `call` to the next shard in round-robin order, or to the first one after it with
    /// room. Never waits: all channels full is `Overloaded` (UNAVAILABLE, retry later).
    pub fn dispatch(&self, mut call: GrpcCall) -> Result<(), ApiError> {
        let n = self.shards.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match self.shards[(start + i) % n].try_send(call) {
                Ok(()) => return Ok(()),
                Err(async_channel::TrySendError::Full(c)) => call = c,
                Err(async_channel::TrySendError::Closed(_)) => {
                    return Err(ApiError::new(
                        ErrorKind::ShuttingDown,
                        "gateway is shutting down",
                    ));
                }
            }
        }
        Err(ApiError::new(ErrorKind::Overloaded, "all shards are busy").retry_after(1))
    }

    /// Stops accepting calls (shutdown): shards finish what they took and their loops end.
    pub fn close(&self) {
        for tx in &self.shards {
            tx.close();
        }
    }
}

/// Awaits a shard's answer; a dropped one-shot means the shard stopped (shutdown).
pub async fn answer<T>(rx: oneshot::Receiver<Result<T, ApiError>>) -> Result<T, ApiError> {
    rx.await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorKind::ShuttingDown,
            "the shard stopped before answering",
        ))
    })
}

/// gRPC code name of a result, as the `code` label of `smsgw_grpc_requests_total`.
fn code_name<T>(r: &Result<T, ApiError>) -> &'static str {
    match r {
        Ok(_) => "OK",
        Err(e) => grpc_code_name(e.kind),
    }
}

fn grpc_code_name(kind: ErrorKind) -> &'static str {
    // GRPC_CODES is indexed by the numeric code (0 OK ... 16 UNAUTHENTICATED).
    crate::metrics::GRPC_CODES
        .get(kind.grpc_code() as usize)
        .copied()
        .unwrap_or("UNKNOWN")
}

/// A shard's gRPC executor: takes calls off its channel while fewer than
/// `MAX_IN_FLIGHT_PER_SHARD` run, each in its own task. Ends when the channel is closed.
pub async fn shard_loop(pipeline: Rc<Pipeline>, calls: async_channel::Receiver<GrpcCall>) {
    // A token per running call: `send` waits while all are taken, which stops the intake.
    let (tokens, done) = async_channel::bounded::<()>(MAX_IN_FLIGHT_PER_SHARD);
    while let Ok(call) = calls.recv().await {
        if tokens.send(()).await.is_err() {
            break;
        }
        let p = Rc::clone(&pipeline);
        let done = done.clone();
        monoio::spawn(async move {
            execute(&p, call).await;
            let _ = done.try_recv();
        });
    }
}

async fn execute(p: &Pipeline, call: GrpcCall) {
    let metrics = p.shared.metrics.shard(p.shard_id);
    match call {
        GrpcCall::Send {
            input,
            meta,
            stream,
            reply,
        } => {
            let started = std::time::Instant::now();
            let lookup = |name: &str| meta.header(name);
            let m = RequestMeta {
                client_ip: meta.peer,
                header: &lookup,
            };
            // Authenticated before the message is looked at, as REST does for /api/v1/sms/*:
            // an unauthenticated caller learns nothing about its input (the token check is
            // cached, so `send` verifying again is cheap).
            let r = match (p.authenticate(&m).await, input) {
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                (Ok(_), Ok(input)) => p.send(input, &m).await,
            };
            // Same accounting as REST: an accepted-then-failed message is a rejection too.
            let code = match &r {
                Ok(a) => match &a.error {
                    None => {
                        metrics.send_duration.observe(started.elapsed());
                        "OK"
                    }
                    Some(e) => {
                        metrics.rejected(e.kind.code());
                        grpc_code_name(e.kind)
                    }
                },
                Err(e) => {
                    metrics.rejected(e.kind.code());
                    grpc_code_name(e.kind)
                }
            };
            let method = if stream { "SendStream" } else { "SendMessage" };
            metrics.grpc_request(method, code);
            let _ = reply.send(r);
        }
        GrpcCall::GetStatus {
            transaction_id,
            meta,
            reply,
        } => {
            let lookup = |name: &str| meta.header(name);
            let m = RequestMeta {
                client_ip: meta.peer,
                header: &lookup,
            };
            // Authenticated before the id is validated (`status` validates first: REST has
            // authenticated at routing already).
            let r = match p.authenticate(&m).await {
                Ok(_) => p.status(&transaction_id, &m).await,
                Err(e) => Err(e),
            };
            metrics.grpc_request("GetStatus", code_name(&r));
            let _ = reply.send(r);
        }
        GrpcCall::CheckTextLen {
            message,
            options,
            meta,
            reply,
        } => {
            let lookup = |name: &str| meta.header(name);
            let m = RequestMeta {
                client_ip: meta.peer,
                header: &lookup,
            };
            // Authenticated like REST's /api/v1/sms/* before the text is looked at.
            let r = match (p.authenticate(&m).await, options) {
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                (Ok(_), Ok((encoding, esme))) => p.check_text_len(&message, encoding, esme),
            };
            metrics.grpc_request("CheckTextLen", code_name(&r));
            let _ = reply.send(r);
        }
        GrpcCall::Links { meta, reply } => {
            let lookup = |name: &str| meta.header(name);
            let m = RequestMeta {
                client_ip: meta.peer,
                header: &lookup,
            };
            let r = match p.authenticate(&m).await {
                Ok(_) => Ok(p.links_report()),
                Err(e) => Err(e),
            };
            metrics.grpc_request("CheckESME", code_name(&r));
            let _ = reply.send(r);
        }
        GrpcCall::Login {
            app_id,
            secret,
            meta,
            reply,
        } => {
            // The argon2 check runs on a short-lived login thread (bounded by the service),
            // never on this shard's thread.
            let r = p
                .shared
                .auth
                .login_offloaded(app_id, secret, meta.peer)
                .await;
            metrics.grpc_request("Login", code_name(&r));
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_maps_to_rest_header_names() {
        let m = CallMeta {
            authorization: Some("Bearer x".into()),
            app_id: Some("7".into()),
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        assert_eq!(m.header("Authorization"), Some("Bearer x"));
        assert_eq!(m.header("X-App-ID"), Some("7"));
        assert_eq!(m.header("x-admin-key"), None);
    }

    #[test]
    fn full_channels_refuse_without_waiting() {
        let (bridge, rx) = GrpcBridge::new(2, 1);
        let call = || {
            let (reply, _) = oneshot::channel();
            GrpcCall::Links {
                meta: CallMeta::anonymous(),
                reply,
            }
        };
        // Round-robin fills both shards, then the third finds no room anywhere.
        assert!(bridge.dispatch(call()).is_ok());
        assert!(bridge.dispatch(call()).is_ok());
        assert_eq!(rx[0].len() + rx[1].len(), 2);
        let e = bridge.dispatch(call()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.kind.grpc_code(), 14);
        // A full shard is skipped for one with room.
        rx[1].try_recv().ok();
        assert!(bridge.dispatch(call()).is_ok());
        assert_eq!(rx[1].len(), 1);
        bridge.close();
        assert_eq!(
            bridge.dispatch(call()).unwrap_err().kind,
            ErrorKind::ShuttingDown
        );
    }

    #[test]
    fn code_names_follow_the_mapping() {
        assert_eq!(grpc_code_name(ErrorKind::InvalidToken), "UNAUTHENTICATED");
        assert_eq!(grpc_code_name(ErrorKind::RateLimited), "RESOURCE_EXHAUSTED");
        assert_eq!(
            grpc_code_name(ErrorKind::InvalidAddress),
            "INVALID_ARGUMENT"
        );
        assert_eq!(grpc_code_name(ErrorKind::UnknownTransaction), "NOT_FOUND");
        assert_eq!(code_name::<()>(&Ok(())), "OK");
    }
}
