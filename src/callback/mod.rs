//! Delivery-status callbacks (webhooks): an HTTP POST per message status change to the
//! message's `callback_url` (or its app's default), signed with the app's callback secret,
//! retried with back-off, batched, and restart-safe.
//!
//! * [`outbox`] — the durable local outbox (its own fjall database under `[callbacks] path`)
//!   and the writer thread that batches its commits (one fsync per batch).
//! * [`dispatch`] — the delivery loop on the tokio side runtime: schedule, batching by
//!   `(app, url)`, bounded concurrency, back-off, give-up.
//! * [`sign`] — `X-Smsgw-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.
//!
//! # Guarantees (docs/operations.md, "Delivery callbacks")
//!
//! At least once, per status change, across restarts: [`Callbacks::notify`] resolves only
//! once the event is fsynced in the outbox, and the callers await it before the change is
//! acknowledged outward (the deliver_sm_resp for receipts; the HTTP answer for submit
//! outcomes). An event leaves the outbox only after a 2xx, or when it is given up (non-retryable
//! answer, `max_attempts`, `max_age_s`), which is logged and counted. Every event carries a
//! stable `event_id` (`<app_id>:<transaction_id>:<status>`): receivers dedupe on it.
//!
//! Messages with no callback URL (none in the request, none for the app) cost two atomic
//! loads here and no write.

pub mod dispatch;
pub mod outbox;
pub mod sign;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::state::{
    CreateOutcome, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome, ScanCursor,
    ScanPage, StateStore, Status, StoreFuture, UpdateOutcome,
};
pub use outbox::Entry;

/// `[callbacks]` configuration (every key documented in docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    /// Off: no outbox is opened and no callback is sent (`callback_url` is still stored).
    pub enabled: bool,
    /// Directory of the outbox database (relative to the working directory). Empty (the
    /// default): beside the state store, `<state.path>-callbacks` (see [`outbox_dir`]), so a
    /// process that has its own state directory also has its own outbox (each is locked by
    /// one process at a time).
    pub path: PathBuf,
    /// POSTs per event before it is given up (the first try counts).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt, with jitter, up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// An event older than this is given up at its next failure.
    pub max_age_s: u64,
    /// Whole-request timeout of one POST (connect + send + answer headers).
    pub timeout_ms: u64,
    /// Most events in one POST (a JSON array).
    pub batch_max_events: usize,
    /// Most bytes in one POST body.
    pub batch_max_bytes: usize,
    /// A new event waits this long before it is due, so that events of one burst share POSTs.
    pub batch_linger_ms: u64,
    /// POSTs in flight at once, over all URLs.
    pub concurrency: usize,
    /// POSTs in flight at once to one `(app, url)`.
    pub per_url_concurrency: usize,
    /// Most events in the outbox (pending delivery); beyond it new events are refused (counted
    /// and logged; the status stays readable with `GET /api/v1/sms/{id}`).
    pub max_pending: usize,
    /// Bound of the queue in front of the outbox writer thread.
    pub queue_capacity: usize,
    /// Longest accepted `callback_url`.
    pub max_url_bytes: usize,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            enabled: true,
            path: PathBuf::new(),
            max_attempts: 10,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            max_age_s: 86_400,
            timeout_ms: 10_000,
            batch_max_events: 100,
            batch_max_bytes: 1 << 20,
            batch_linger_ms: 20,
            concurrency: 32,
            per_url_concurrency: 2,
            max_pending: 100_000,
            queue_capacity: 16_384,
            max_url_bytes: 2048,
        }
    }
}

/// The outbox directory: `path` if set, else `<state_path>-callbacks` (a sibling of the state
/// store's directory, e.g. `var/state` → `var/state-callbacks`).
pub fn outbox_dir(path: &std::path::Path, state_path: &std::path::Path) -> PathBuf {
    if !path.as_os_str().is_empty() {
        return path.to_path_buf();
    }
    let mut name = state_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "state".into());
    name.push("-callbacks");
    state_path.with_file_name(name)
}

impl CallbackConfig {
    /// Range checks; every problem in one message.
    pub fn validate(&self) -> Result<(), CallbackError> {
        let mut bad = Vec::new();
        if !(1..=1000).contains(&self.max_attempts) {
            bad.push("max_attempts must be in 1..=1000");
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            bad.push("backoff_initial_ms must be > 0 and <= backoff_max_ms");
        }
        if self.max_age_s == 0 || self.timeout_ms == 0 {
            bad.push("max_age_s and timeout_ms must be > 0");
        }
        if !(1..=10_000).contains(&self.batch_max_events) || self.batch_max_bytes < 1024 {
            bad.push("batch_max_events must be in 1..=10000 and batch_max_bytes >= 1024");
        }
        if self.batch_linger_ms > 60_000 {
            bad.push("batch_linger_ms must be <= 60000");
        }
        if self.concurrency == 0 || self.per_url_concurrency == 0 {
            bad.push("concurrency and per_url_concurrency must be > 0");
        }
        if self.max_pending == 0 || self.queue_capacity == 0 {
            bad.push("max_pending and queue_capacity must be > 0");
        }
        if !(32..=65_536).contains(&self.max_url_bytes) {
            bad.push("max_url_bytes must be in 32..=65536");
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(CallbackError::Config(bad.join("; ")))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("invalid [callbacks] configuration: {0}")]
    Config(String),
    #[error("callback outbox: {0}")]
    Outbox(String),
    #[error("callback HTTP client: {0}")]
    Client(String),
}

/// Why a callback URL is refused (the API answers 422 `invalid_callback_url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("callback_url is longer than {0} bytes")]
    TooLong(usize),
    #[error("callback_url is not an absolute URL")]
    Unparsable,
    #[error("callback_url must use http or https")]
    Scheme,
    #[error("callback_url must name a host")]
    NoHost,
    #[error("callback_url must not carry credentials (user:password@)")]
    Userinfo,
}

/// Checks a callback URL: absolute http(s), a host, no `user:pass@`, at most `max_len`
/// bytes. (Credentials in URLs end up in logs and proxies; receivers authenticate us by the
/// signature instead.)
pub fn validate_url(url: &str, max_len: usize) -> Result<(), UrlError> {
    if url.len() > max_len {
        return Err(UrlError::TooLong(max_len));
    }
    let u = reqwest::Url::parse(url).map_err(|_| UrlError::Unparsable)?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(UrlError::Userinfo);
    }
    Ok(())
}

/// The stable id of the event "message `key` reached `status`".
pub fn event_id(app_id: u64, transaction_id: &str, status: Status) -> String {
    format!("{app_id}:{transaction_id}:{}", status.as_str())
}

/// The JSON object of one event (one element of a POST's array).
pub fn event_json(r: &MessageRecord, event_id: &str) -> serde_json::Value {
    let parts: Vec<serde_json::Value> = r
        .parts
        .iter()
        .map(|p| {
            serde_json::json!({
                "index": p.index,
                "status": p.status.as_str(),
                "smsc_message_id": p.smsc_message_id,
                "error_code": p.error_code,
                "receipt": p.receipt.as_ref().map(|rc| serde_json::json!({
                    "stat": rc.stat,
                    "err": rc.err,
                    "received_at_ms": rc.received_at_ms,
                })),
            })
        })
        .collect();
    serde_json::json!({
        "event_id": event_id,
        "type": "message.status",
        "app_id": r.app_id,
        "transaction_id": r.transaction_id,
        "status": r.status.as_str(),
        "final": r.status.is_final(),
        "esme": r.esme,
        "link": r.link_id,
        "source": r.source,
        "destination": r.destination,
        "parts": parts,
        "created_at_ms": r.created_at_ms,
        "occurred_at_ms": r.updated_at_ms,
    })
}

/// A boxed future that runs on monoio shards and on tokio alike (no runtime inside).
pub type NotifyFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// Longest a shard waits for an event to become durable before it acknowledges the change
/// anyway (a stuck disk must not stall receipts and answers forever; the state store bounds
/// its own writes the same way).
pub const NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Awaits [`Callbacks::notify`]'s future on a monoio shard, at most [`NOTIFY_TIMEOUT`].
/// `false` when the event was refused or did not become durable in time (logged; the event
/// may still land in the outbox later).
pub async fn wait_on_shard(durable: NotifyFuture) -> bool {
    match monoio::time::timeout(NOTIFY_TIMEOUT, durable).await {
        Ok(ok) => ok,
        Err(_) => {
            warn!(
                timeout = ?NOTIFY_TIMEOUT,
                "callback outbox write not durable in time; status change acknowledged anyway"
            );
            false
        }
    }
}

/// The callback service: the shards' and recovery's handle. Cheap to share (`Arc`).
pub struct Callbacks {
    cfg: CallbackConfig,
    auth: Arc<crate::auth::AuthService>,
    metrics: Arc<crate::metrics::Metrics>,
    /// `None` when `[callbacks] enabled = false`.
    outbox: Option<outbox::Outbox>,
    /// Events in the outbox or on their way into it (reserved before the write).
    pending: Arc<AtomicUsize>,
    /// Apps-file generation `any_app_default` was computed for (0 = never).
    defaults_generation: AtomicU64,
    /// Whether some app has a default `callback_url` (checked before taking the apps lock).
    any_app_default: AtomicBool,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("enabled", &self.outbox.is_some())
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

impl Callbacks {
    /// Opens the outbox (when enabled) and starts the writer thread and, on `side`, the
    /// dispatcher, which first schedules every event an earlier process left in the outbox.
    /// The dispatcher stops with the side runtime; what it had not delivered stays in the
    /// outbox for the next start.
    pub fn start(
        cfg: CallbackConfig,
        auth: Arc<crate::auth::AuthService>,
        metrics: Arc<crate::metrics::Metrics>,
        side: &tokio::runtime::Handle,
    ) -> Result<Arc<Callbacks>, CallbackError> {
        cfg.validate()?;
        let pending = Arc::new(AtomicUsize::new(0));
        let outbox = if cfg.enabled {
            let (new_tx, new_rx) = tokio::sync::mpsc::unbounded_channel();
            let (outbox, leftovers) =
                outbox::Outbox::open(&cfg.path, cfg.queue_capacity, Arc::clone(&pending), new_tx)?;
            if !leftovers.is_empty() {
                tracing::info!(
                    events = leftovers.len(),
                    "callback outbox: resuming events left by an earlier process"
                );
            }
            let client = dispatch::client(&cfg)?;
            side.spawn(dispatch::run(dispatch::Dispatcher::new(
                cfg.clone(),
                client,
                outbox.ops(),
                Arc::clone(&auth),
                Arc::clone(&metrics),
                Arc::clone(&pending),
                leftovers,
                new_rx,
            )));
            Some(outbox)
        } else {
            None
        };
        Ok(Arc::new(Callbacks {
            cfg,
            auth,
            metrics,
            outbox,
            pending,
            defaults_generation: AtomicU64::new(0),
            any_app_default: AtomicBool::new(false),
        }))
    }

    /// Whether callbacks are on (`[callbacks] enabled`).
    pub fn is_enabled(&self) -> bool {
        self.outbox.is_some()
    }

    pub fn config(&self) -> &CallbackConfig {
        &self.cfg
    }

    /// Events pending delivery (outbox size, including reservations in flight to it).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The URL events of `r` go to: its own, else its app's default (when any app has one:
    /// the apps lock is only taken then).
    fn url_for(&self, r: &MessageRecord) -> Option<String> {
        if let Some(u) = &r.callback_url {
            return Some(u.clone());
        }
        let generation = self.auth.generation();
        if self.defaults_generation.load(Ordering::Acquire) != generation {
            let any = self.auth.apps().iter().any(|a| a.callback_url.is_some());
            self.any_app_default.store(any, Ordering::Release);
            self.defaults_generation
                .store(generation, Ordering::Release);
        }
        if !self.any_app_default.load(Ordering::Acquire) {
            return None;
        }
        self.auth.apps().get(r.app_id)?.callback_url.clone()
    }

    /// Whether status changes of `r` produce events (callbacks on and a URL for it). Cheap
    /// when nothing asks for callbacks; lets a caller prepare an event only when one is due.
    pub fn wants(&self, r: &MessageRecord) -> bool {
        self.outbox.is_some() && self.url_for(r).is_some()
    }

    /// Records the event "`r` is now in `r.status`" in the outbox. `None`: nothing to do (no
    /// URL, callbacks off, or `accepted`, which the synchronous answer already tells). `Some`:
    /// await it before acknowledging the change outward; it resolves `true` once the event is
    /// durable, `false` if it was refused (outbox full or failing — counted and logged; the
    /// caller carries on, the status stays readable through the API).
    pub fn notify(&self, r: &MessageRecord) -> Option<NotifyFuture> {
        let outbox = self.outbox.as_ref()?;
        if r.status == Status::Accepted {
            return None;
        }
        let url = self.url_for(r)?;
        let id = event_id(r.app_id, &r.transaction_id, r.status);
        let now = crate::state::unix_ms();
        let entry = Entry {
            event_id: id.clone(),
            app_id: r.app_id,
            url,
            attempts: 0,
            created_ms: now,
            next_due_ms: now + self.cfg.batch_linger_ms,
            body: event_json(r, &id).to_string(),
        };
        // Reserve a slot first, so the bound holds however many shards enqueue at once.
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.refused(&id, "outbox full (max_pending)");
            return None;
        }
        match outbox.put(entry) {
            Ok(done) => {
                let metrics = Arc::clone(&self.metrics);
                Some(Box::pin(async move {
                    let ok = done.recv().await.unwrap_or(false);
                    if ok {
                        metrics.callbacks.events_enqueued.inc();
                    } else {
                        metrics.callbacks.events_dropped.inc();
                        warn!(event_id = %id, "callback event could not be written to the outbox");
                    }
                    ok
                }))
            }
            Err(why) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.refused(&id, why);
                None
            }
        }
    }

    fn refused(&self, event_id: &str, why: &str) {
        self.metrics.callbacks.events_dropped.inc();
        // One line per refused event would flood the log exactly when the outbox is in
        // trouble: log the first and then every 1000th.
        static REFUSED: AtomicU64 = AtomicU64::new(0);
        let n = REFUSED.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            warn!(
                event_id,
                why,
                refused_so_far = n + 1,
                "callback event refused"
            );
        }
    }

    /// [`Callbacks::notify`] awaited in place (for async callers that simply wait).
    pub async fn notify_and_wait(&self, r: &MessageRecord) {
        if let Some(f) = self.notify(r) {
            f.await;
        }
    }
}

/// A [`StateStore`] that forwards everything to `inner` and records a callback event for
/// every status change its `update` and `expire_due` make. Handed to crash recovery and the
/// TTL sweep, so they notify without knowing about callbacks. (The shards call
/// [`Callbacks::notify`] themselves, at the exact point the change is acknowledged.)
pub struct NotifyingStore {
    inner: Arc<dyn StateStore>,
    callbacks: Arc<Callbacks>,
}

impl NotifyingStore {
    pub fn wrap(inner: Arc<dyn StateStore>, callbacks: Arc<Callbacks>) -> Arc<dyn StateStore> {
        Arc::new(NotifyingStore { inner, callbacks })
    }
}

impl StateStore for NotifyingStore {
    fn create(&self, record: MessageRecord) -> StoreFuture<CreateOutcome> {
        self.inner.create(record)
    }

    /// For a record with a callback URL, the event is made durable BEFORE the update (from
    /// the record read first, with `updates` applied), so a crash between the two writes
    /// cannot lose it; the update's own result is notified only if it differs from that
    /// prediction (a concurrent change) or the read failed.
    fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        now_ms: u64,
    ) -> StoreFuture<UpdateOutcome> {
        let inner = Arc::clone(&self.inner);
        let cb = Arc::clone(&self.callbacks);
        Box::pin(async move {
            let mut before: Option<Status> = None;
            let mut sent: Option<Status> = None;
            if cb.is_enabled()
                && let Ok(Some(mut r)) = inner.get(key.clone()).await
                && cb.wants(&r)
            {
                before = Some(r.status);
                for u in &updates {
                    r.apply(u, now_ms);
                }
                if Some(r.status) != before
                    && let Some(durable) = cb.notify(&r)
                    && durable.await
                {
                    sent = Some(r.status);
                }
            }
            let out = inner.update(key, updates, now_ms).await?;
            if let UpdateOutcome::Updated {
                record,
                changed: true,
            } = &out
                && Some(record.status) != sent
                && Some(record.status) != before
            {
                cb.notify_and_wait(record).await;
            }
            Ok(out)
        })
    }

    fn apply_receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> StoreFuture<ReceiptOutcome> {
        let fut = self.inner.apply_receipt(link_id, smsc_id, receipt);
        let cb = Arc::clone(&self.callbacks);
        Box::pin(async move {
            let out = fut.await?;
            if let ReceiptOutcome::Applied(record) = &out
                && record.status.is_final()
            {
                cb.notify_and_wait(record).await;
            }
            Ok(out)
        })
    }

    fn get(&self, key: MessageKey) -> StoreFuture<Option<MessageRecord>> {
        self.inner.get(key)
    }

    fn find_by_smsc_id(
        &self,
        link_id: u32,
        smsc_id: String,
    ) -> StoreFuture<Option<(MessageKey, u16)>> {
        self.inner.find_by_smsc_id(link_id, smsc_id)
    }

    fn scan_non_final(&self, cursor: Option<ScanCursor>, limit: usize) -> StoreFuture<ScanPage> {
        self.inner.scan_non_final(cursor, limit)
    }

    fn expire_due(&self, now_ms: u64, limit: usize) -> StoreFuture<Vec<MessageRecord>> {
        let fut = self.inner.expire_due(now_ms, limit);
        let cb = Arc::clone(&self.callbacks);
        Box::pin(async move {
            let out = fut.await?;
            for r in &out {
                cb.notify_and_wait(r).await;
            }
            Ok(out)
        })
    }

    fn flush(&self) -> StoreFuture<()> {
        self.inner.flush()
    }

    fn is_available(&self) -> bool {
        self.inner.is_available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_dir_defaults_beside_the_state_store() {
        use std::path::Path;
        let d = |p: &str, s: &str| outbox_dir(Path::new(p), Path::new(s));
        assert_eq!(d("", "var/state"), PathBuf::from("var/state-callbacks"));
        assert_eq!(
            d("", "/tmp/x/state"),
            PathBuf::from("/tmp/x/state-callbacks")
        );
        // Two gateways with their own state directories get their own outboxes.
        assert_ne!(d("", "/tmp/a/state"), d("", "/tmp/b/state"));
        assert_eq!(d("/srv/cb", "var/state"), PathBuf::from("/srv/cb"));
    }

    #[test]
    fn urls() {
        let ok = |u: &str| validate_url(u, 2048);
        assert_eq!(ok("https://example.com/hook"), Ok(()));
        assert_eq!(ok("http://127.0.0.1:8080/cb?x=1"), Ok(()));
        assert_eq!(ok("http://[::1]:9/cb"), Ok(()));
        assert_eq!(ok("ftp://example.com/"), Err(UrlError::Scheme));
        assert_eq!(ok("javascript:alert(1)"), Err(UrlError::Scheme));
        assert_eq!(ok("/relative"), Err(UrlError::Unparsable));
        assert_eq!(ok("https://user:pw@example.com/"), Err(UrlError::Userinfo));
        assert_eq!(ok("https://user@example.com/"), Err(UrlError::Userinfo));
        assert_eq!(ok("http://"), Err(UrlError::Unparsable));
        let long = format!("https://e.com/{}", "a".repeat(2048));
        assert_eq!(ok(&long), Err(UrlError::TooLong(2048)));
    }

    #[test]
    fn config_defaults_validate_and_bad_values_are_reported() {
        CallbackConfig::default().validate().unwrap();
        let c = CallbackConfig {
            max_attempts: 0,
            backoff_initial_ms: 10,
            backoff_max_ms: 5,
            concurrency: 0,
            ..CallbackConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_attempts") && e.contains("backoff") && e.contains("concurrency"));
    }

    fn record(txid: &str, url: Option<&str>, now_ms: u64) -> MessageRecord {
        let mut r = MessageRecord::new_accepted(
            MessageKey::new(0, txid),
            100,
            "SRC",
            "4915112345678",
            crate::state::Encoding::Gsm7,
            "hi",
            1,
            now_ms,
        );
        r.callback_url = url.map(str::to_owned);
        r
    }

    fn start(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Arc<Callbacks> {
        let mut sec = crate::auth::SecurityConfig::defaults_for(std::path::Path::new(
            "/nonexistent/smsgw.toml",
        ));
        sec.enabled = false;
        let auth = Arc::new(crate::auth::AuthService::start(sec, &|_| None).unwrap());
        let cfg = CallbackConfig {
            path: dir.join("callbacks"),
            // Nothing becomes due during the test: it checks the outbox, not delivery.
            batch_linger_ms: 60_000,
            ..CallbackConfig::default()
        };
        Callbacks::start(
            cfg,
            auth,
            Arc::new(crate::metrics::Metrics::new(1, Vec::new())),
            rt.handle(),
        )
        .unwrap()
    }

    #[test]
    fn notify_filters_dedupes_and_the_store_wrapper_records_recovery_and_expiry_events() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cb = start(dir.path(), &rt);
        let now = crate::state::unix_ms();
        let url = Some("http://127.0.0.1:9/cb");
        // `accepted` is never an event; no URL (and no app default) is no event, no write.
        assert!(cb.notify(&record("a", url, now)).is_none());
        let mut r = record("a", None, now);
        r.status = Status::Submitted;
        assert!(cb.notify(&r).is_none());
        assert_eq!(cb.pending(), 0);
        r.callback_url = url.map(str::to_owned);
        assert!(rt.block_on(cb.notify(&r).unwrap()));
        assert_eq!(cb.pending(), 1);
        // The same change again (e.g. a repeated receipt): acknowledged, stored once.
        assert!(rt.block_on(cb.notify(&r).unwrap()));
        assert_eq!(cb.pending(), 1);

        // Recovery and the TTL sweep go through the wrapper.
        let store = crate::state::EmbeddedStore::open(crate::state::EmbeddedConfig {
            path: dir.path().join("state"),
            ttl_secs: 1,
            ..crate::state::EmbeddedConfig::default()
        })
        .unwrap();
        let wrapped = NotifyingStore::wrap(store, Arc::clone(&cb));
        rt.block_on(wrapped.create(record("u", url, now))).unwrap();
        rt.block_on(wrapped.create(record("e", url, now))).unwrap();
        rt.block_on(wrapped.create(record("quiet", None, now)))
            .unwrap();
        let out = rt
            .block_on(wrapped.update(
                MessageKey::new(0, "u"),
                vec![PartUpdate::Final {
                    index: 0,
                    status: Status::Unknown,
                    error_code: None,
                }],
                now,
            ))
            .unwrap();
        assert!(matches!(out, UpdateOutcome::Updated { changed: true, .. }));
        assert_eq!(cb.pending(), 2, "unknown event recorded");
        let expired = rt.block_on(wrapped.expire_due(now + 5_000, 10)).unwrap();
        assert_eq!(expired.len(), 2, "e and quiet expire");
        assert_eq!(cb.pending(), 3, "one expired event (quiet has no URL)");

        // Restart: the outbox hands back every pending event.
        drop(wrapped);
        drop(cb);
        drop(rt);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cb = start(dir.path(), &rt);
        assert_eq!(cb.pending(), 3);
    }

    #[test]
    fn event_json_has_the_documented_fields() {
        let mut r = MessageRecord::new_accepted(
            MessageKey::new(7, "tx-1"),
            100,
            "SRC",
            "4915112345678",
            crate::state::Encoding::Gsm7,
            "hi",
            1,
            1000,
        );
        r.status = Status::Delivered;
        r.link_id = Some(100);
        let id = event_id(7, "tx-1", Status::Delivered);
        assert_eq!(id, "7:tx-1:delivered");
        let v = event_json(&r, &id);
        for k in [
            "event_id",
            "type",
            "app_id",
            "transaction_id",
            "status",
            "final",
            "esme",
            "link",
            "source",
            "destination",
            "parts",
            "created_at_ms",
            "occurred_at_ms",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["status"], "delivered");
        assert_eq!(v["final"], true);
        assert_eq!(v["parts"][0]["index"], 0);
        // The message text is never in an event.
        assert!(!v.to_string().contains("\"hi\""));
    }
}
