//! The engine as the gateway's policy stage, and as `smsgw mcp`: a standalone HTTP service
//! with the reference check API.
//!
//! API (`smsgw mcp`):
//! * `POST /api/v1/check` `{"strategy": "cp1,cp2", "destination": "+49…", "app_id": 7,
//!   "text": "…"}` → `200 {"state": "ok", "pass": true}` (also for blocked messages: the
//!   answer is the decision, not an error); 400/422 for a malformed request, 503 when the
//!   counter store is down and `on_redis_down = "fail_closed"`.
//! * `GET /api/v1/health` → `OK`; `GET /metrics` → answers per state, Prometheus text.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use tracing::{info, warn};

use super::blacklist::Blacklist;
use super::engine::{CheckRequest, PolicyEngine, SystemClock, periods};
use super::loader::Loader;
use super::redis_store::RedisStore;
use super::{PolicyConfig, State, Strategies};
use crate::api::http::{Method, Request, Response};
use crate::api::{ApiError, ErrorKind};
use crate::shard::stages::{Admission, RequestMeta, Stage, Verdict};

/// Builds the engine from configuration: Redis counters if `[redis] url` is set, blacklist
/// sources loaded once before returning (bounded by `first_load_timeout`; on failure the
/// gateway starts with an empty list and keeps retrying), then refreshed on `side`.
pub fn build_engine(
    cfg: &PolicyConfig,
    redis: &crate::config::RedisConfig,
    side: &tokio::runtime::Handle,
    first_load_timeout: Duration,
) -> Result<Arc<PolicyEngine>, super::engine::PolicyError> {
    let mut engine = PolicyEngine::new(cfg.settings.clone(), Arc::new(SystemClock));
    if cfg.remote.is_some() {
        // The remote `smsgw mcp` holds the lists and counters; this engine stays empty.
        info!("contact policy: asking the remote service (remote_url); no local lists or counters");
        return Ok(Arc::new(engine));
    }
    if let Some(url) = &redis.url {
        engine = engine.with_redis(RedisStore::start(
            url,
            &redis.key_prefix,
            redis.timeout,
            side.clone(),
        )?);
    }
    let engine = Arc::new(engine);
    if !cfg.sources.is_empty() {
        let mut loader = Loader::new(
            cfg.sources.clone(),
            engine.normalizer.clone(),
            Arc::clone(&engine.blacklist),
        );
        let first = side
            .block_on(async { tokio::time::timeout(first_load_timeout, loader.refresh()).await });
        match first {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "blacklist: first load failed; starting empty"),
            Err(_) => warn!("blacklist: first load timed out; starting empty"),
        }
        let interval = cfg.refresh_interval;
        side.spawn(async move {
            tokio::time::sleep(interval).await;
            loader.run(interval).await
        });
    }
    Ok(engine)
}

/// The error a blocked message gets: the state is the code.
pub fn state_error(state: State, engine: &PolicyEngine) -> Option<ApiError> {
    state_error_at(state, engine.clock.now_ms(), engine.settings.utc_offset_s)
}

/// [`state_error`] without an engine (the remote stage): `Retry-After` from the calendar.
pub fn state_error_at(state: State, now_ms: i64, utc_offset_s: i32) -> Option<ApiError> {
    let p = periods(now_ms, utc_offset_s);
    let secs = |ms: i64| u32::try_from((ms + 999) / 1000).unwrap_or(u32::MAX).max(1);
    Some(match state {
        State::Ok => return None,
        State::Blacklist => ApiError::new(
            ErrorKind::PolicyBlacklist,
            "destination is blacklisted (contact policy)",
        ),
        State::Duplicate => ApiError::new(
            ErrorKind::PolicyDuplicate,
            "duplicate message to this destination within the window (contact policy)",
        ),
        State::DailyCap => ApiError::new(
            ErrorKind::PolicyDailyCap,
            "daily message cap for this destination reached (contact policy)",
        )
        .retry_after(secs(p.day_left_ms)),
        State::WeeklyCap => ApiError::new(
            ErrorKind::PolicyWeeklyCap,
            "weekly message cap for this destination reached (contact policy)",
        )
        .retry_after(secs(p.week_left_ms)),
    })
}

/// The gateway's policy stage (one per shard). Keeps its own blacklist snapshot and swaps
/// it only when the published generation changed, so the hot path takes no lock.
pub struct PolicyStage {
    engine: Arc<PolicyEngine>,
    cached: RefCell<(u64, Arc<Blacklist>)>,
}

impl PolicyStage {
    pub fn new(engine: Arc<PolicyEngine>) -> PolicyStage {
        let snap = (engine.blacklist.generation(), engine.blacklist.snapshot());
        PolicyStage {
            engine,
            cached: RefCell::new(snap),
        }
    }

    fn list(&self) -> Arc<Blacklist> {
        let generation = self.engine.blacklist.generation();
        let mut c = self.cached.borrow_mut();
        if c.0 != generation {
            *c = (generation, self.engine.blacklist.snapshot());
        }
        Arc::clone(&c.1)
    }
}

fn answer(engine: &PolicyEngine, state: State) -> Result<(), ApiError> {
    // No `engine.metrics.record` here: on the shards that would be one atomic shared by every
    // core per message, and `serve` never exports those answers (its refusals are counted
    // per shard by reason in `smsgw_messages_rejected_total`). `smsgw mcp` counts in `check`.
    match state_error(state, engine) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

impl Stage for PolicyStage {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn check<'s>(&'s self, a: &'s mut Admission, _meta: &'s RequestMeta<'_>) -> Verdict<'s> {
        let engine = &self.engine;
        let strategies = match a.strategy.as_deref() {
            Some(s) => match Strategies::parse(s) {
                Ok(s) => s,
                Err(e) => return Verdict::Reject(ApiError::new(ErrorKind::InvalidField, e)),
            },
            None => engine.settings.default_strategy,
        };
        if !strategies.any() {
            return Verdict::Pass;
        }
        // A destination that is not an E.164 number (e.g. a short code) cannot be on a list
        // of E.164 numbers and has no per-subscriber caps: policy does not apply.
        let Ok(destination) = engine.normalizer.to_key(&a.destination) else {
            return Verdict::Pass;
        };
        let req = CheckRequest {
            app_id: a.app_id,
            destination,
            text_hash: a.text_hash,
            strategies,
        };
        let list = self.list();
        if engine.blacklisted(&list, &req) {
            return match answer(engine, State::Blacklist) {
                Ok(()) => Verdict::Pass,
                Err(e) => Verdict::Reject(e),
            };
        }
        if !engine.needs_remote(&req) {
            return match answer(engine, engine.check_memory(&req)) {
                Ok(()) => Verdict::Pass,
                Err(e) => Verdict::Reject(e),
            };
        }
        Verdict::Wait(Box::pin(async move {
            match engine.check_with(&list, &req).await {
                Ok(state) => answer(engine, state),
                Err(e) => Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!("contact policy unavailable: {e}"),
                )
                .retry_after(1)),
            }
        }))
    }
}

/// `POST /api/v1/check` body.
#[derive(Debug, Deserialize)]
struct CheckBody {
    #[serde(default)]
    strategy: Option<String>,
    destination: String,
    #[serde(default)]
    app_id: u64,
    #[serde(default, alias = "message")]
    text: String,
    /// `policy::text_hash` of the text, instead of `text` (what a gateway with `remote_url`
    /// sends: it has only the hash at that point, and it is shorter).
    #[serde(default)]
    text_hash: Option<u64>,
}

/// The HTTP service of `smsgw mcp`.
pub struct McpService {
    pub engine: Arc<PolicyEngine>,
}

fn text(status: u16, body: &str, content_type: &'static str) -> Response {
    Response {
        status,
        content_type,
        body: body.as_bytes().to_vec(),
        headers: Vec::new(),
    }
}

fn json_error(status: u16, code: &str, msg: &str) -> Response {
    Response::json(status, crate::api::http::error_body(msg, code))
}

impl McpService {
    pub async fn handle(&self, req: &Request<'_>) -> Response {
        match (req.method, req.path) {
            (Method::Get, "/api/v1/health") => text(200, "OK", "text/plain"),
            (Method::Get, "/metrics") => text(200, &self.metrics(), "text/plain; version=0.0.4"),
            (Method::Post, "/api/v1/check") => self.check(req.body).await,
            (_, "/api/v1/health" | "/metrics" | "/api/v1/check") => {
                json_error(405, "method_not_allowed", "method not allowed")
            }
            _ => json_error(404, "not_found", "no such route"),
        }
    }

    async fn check(&self, body: &[u8]) -> Response {
        let b: CheckBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return json_error(400, "invalid_json", &e.to_string()),
        };
        let strategies = match b.strategy.as_deref() {
            Some(s) => match Strategies::parse(s) {
                Ok(s) => s,
                Err(e) => return json_error(422, "invalid_field", &e),
            },
            None => self.engine.settings.default_strategy,
        };
        let destination = match self.engine.normalizer.to_key(&b.destination) {
            Ok(d) => d,
            Err(e) => {
                return json_error(422, "invalid_address", &format!("destination: {e}"));
            }
        };
        let req = CheckRequest {
            app_id: b.app_id,
            destination,
            text_hash: b.text_hash.unwrap_or_else(|| super::text_hash(&b.text)),
            strategies,
        };
        match self.engine.check(&req).await {
            Ok(state) => Response::json(
                200,
                format!(
                    r#"{{"state":"{}","pass":{}}}"#,
                    state.as_str(),
                    state.pass()
                )
                .into_bytes(),
            ),
            Err(e) => json_error(503, "overloaded", &e.to_string()),
        }
    }

    fn metrics(&self) -> String {
        let m = &self.engine.metrics;
        let mut out = String::from(
            "# HELP smsgw_policy_checks_total Contact-policy answers by state.\n\
             # TYPE smsgw_policy_checks_total counter\n",
        );
        for s in State::ALL {
            out.push_str(&format!(
                "smsgw_policy_checks_total{{state=\"{}\"}} {}\n",
                s.as_str(),
                m.answers[s as usize].load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP smsgw_policy_store_errors_total Counter-store (Redis) failures.\n\
             # TYPE smsgw_policy_store_errors_total counter\n\
             smsgw_policy_store_errors_total {}\n\
             # HELP smsgw_policy_blacklist_numbers Numbers in the loaded blacklist.\n\
             # TYPE smsgw_policy_blacklist_numbers gauge\n\
             smsgw_policy_blacklist_numbers {}\n",
            m.store_errors.load(Ordering::Relaxed),
            self.engine.blacklist.snapshot().len()
        ));
        out
    }
}

impl crate::api::server::Service for McpService {
    fn call(&self, req: &Request<'_>) -> impl Future<Output = Response> {
        self.handle(req)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Policy(#[from] super::engine::PolicyError),
}

/// `smsgw mcp`: serve the engine on `listen` until SIGTERM/SIGINT.
pub fn run_mcp(
    config: crate::config::Config,
    listen: SocketAddr,
    signals: crate::runtime::TerminationSignals,
) -> Result<(), McpError> {
    let side = crate::runtime::side_runtime(2)?;
    // The service is the engine: a `remote_url` in the same file is for gateways only.
    let mut policy = config.policy.clone();
    policy.remote = None;
    let engine = build_engine(
        &policy,
        &config.redis,
        side.handle(),
        Duration::from_secs(10),
    )?;
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    info!(%addr, "mcp listening");
    // Machine-readable readiness line on stdout (tests and scripts wait for it).
    println!("smsgw mcp listening http={addr}");
    let (trigger, shutdown) = crate::runtime::shutdown_pair();
    let _watcher = signals.spawn_watcher(trigger)?;
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let listener = monoio::net::TcpListener::from_std(std_listener)?;
        crate::api::server::serve(
            listener,
            Rc::new(McpService { engine }),
            Rc::new(crate::api::server::ServerConfig::default()),
            shutdown,
            Duration::from_secs(2),
        )
        .await;
        Ok::<(), std::io::Error>(())
    })?;
    drop(side);
    Ok(())
}
