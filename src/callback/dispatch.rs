//! The delivery loop (one task on the tokio side runtime): keeps every pending event in a
//! schedule ordered by due time, groups due events by `(app, url)` into POSTs of up to
//! `batch_max_events` / `batch_max_bytes`, runs at most `concurrency` POSTs at once and at most
//! `per_url_concurrency` per group, and decides per answer:
//!
//! | answer | action |
//! |---|---|
//! | 2xx | delivered: deleted from the outbox |
//! | 408, 429, 5xx, connect error, timeout, other transport error | retry after `backoff` (or `Retry-After`, capped), until `max_attempts` / `max_age_s`, then give up |
//! | any other status (3xx, other 4xx) | give up at once: retrying cannot help and would only load the receiver |
//!
//! Giving up deletes the event, logs it (one WARN line per POST, ids at DEBUG) and counts it
//! (`smsgw_callback_events_gave_up_total`); the status itself stays readable through the API.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

use super::outbox::{Entry, Op};
use super::{CallbackConfig, CallbackError, sign};
use crate::state::unix_ms;

/// Most due events examined per scheduling round (bounds one round's work; the rest is
/// looked at in the next round, right after).
const SCAN_LIMIT: usize = 20_000;
/// Longest sleep of the loop when nothing is due (it also wakes on every new event and answer).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The HTTP client: whole-request timeout, no redirects (a webhook that redirects is
/// misconfigured, and following it could send signed events somewhere unintended), bounded
/// idle pool per host.
pub fn client(cfg: &CallbackConfig) -> Result<reqwest::Client, CallbackError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(cfg.per_url_concurrency)
        .user_agent(concat!("smsgw/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CallbackError::Client(e.to_string()))
}

/// Delay before retry number `attempts` (1 = the first retry): `initial · 2^(attempts-1)`
/// capped at `max`, with "equal jitter" — half fixed, half `unit`-scaled (`unit` in [0, 1)) —
/// so retries of one burst spread out but never come sooner than half the nominal delay.
pub fn backoff_ms(attempts: u32, initial_ms: u64, max_ms: u64, unit: f64) -> u64 {
    let shift = attempts.saturating_sub(1).min(40);
    let nominal = initial_ms.saturating_mul(1u64 << shift).min(max_ms);
    let half = nominal / 2;
    half.saturating_add(((nominal - half) as f64 * unit.clamp(0.0, 1.0)) as u64)
}

/// What one POST's answer means for its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// `reason` is a `smsgw_callback_posts_failed_total` label.
    Retry {
        reason: &'static str,
        retry_after: Option<Duration>,
    },
    GiveUp {
        reason: &'static str,
        status: Option<u16>,
    },
}

/// The decision table of the module doc, for an HTTP status.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 => Outcome::Retry {
            reason: "http_4xx",
            retry_after,
        },
        500..=599 => Outcome::Retry {
            reason: "http_5xx",
            retry_after,
        },
        400..=499 => Outcome::GiveUp {
            reason: "http_4xx",
            status: Some(status),
        },
        _ => Outcome::GiveUp {
            reason: "other",
            status: Some(status),
        },
    }
}

type Group = (u64, String);

pub struct Dispatcher {
    cfg: CallbackConfig,
    client: reqwest::Client,
    ops: async_channel::Sender<Op>,
    auth: Arc<crate::auth::AuthService>,
    metrics: Arc<crate::metrics::Metrics>,
    pending: Arc<AtomicUsize>,
    /// Scheduled events (not in flight), by id.
    entries: HashMap<String, Entry>,
    /// `(due_ms, event_id)` of every scheduled event.
    sched: BTreeSet<(u64, String)>,
    in_flight: HashMap<Group, usize>,
    in_flight_total: usize,
    new_rx: tokio::sync::mpsc::UnboundedReceiver<Entry>,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: CallbackConfig,
        client: reqwest::Client,
        ops: async_channel::Sender<Op>,
        auth: Arc<crate::auth::AuthService>,
        metrics: Arc<crate::metrics::Metrics>,
        pending: Arc<AtomicUsize>,
        leftovers: Vec<Entry>,
        new_rx: tokio::sync::mpsc::UnboundedReceiver<Entry>,
    ) -> Dispatcher {
        let mut d = Dispatcher {
            cfg,
            client,
            ops,
            auth,
            metrics,
            pending,
            entries: HashMap::new(),
            sched: BTreeSet::new(),
            in_flight: HashMap::new(),
            in_flight_total: 0,
            new_rx,
        };
        for e in leftovers {
            d.schedule(e);
        }
        d
    }

    fn schedule(&mut self, e: Entry) {
        self.sched.insert((e.next_due_ms, e.event_id.clone()));
        if let Some(old) = self.entries.insert(e.event_id.clone(), e) {
            // Cannot happen (the outbox dedupes ids), but never leave a stale schedule slot.
            self.sched.remove(&(old.next_due_ms, old.event_id));
        }
    }

    /// Starts POSTs for due events, within the concurrency bounds.
    fn launch_due(&mut self, now: u64, results: &tokio::sync::mpsc::Sender<(Vec<Entry>, Outcome)>) {
        if self.in_flight_total >= self.cfg.concurrency {
            return;
        }
        let per_url = self.cfg.per_url_concurrency;
        let max_events = self.cfg.batch_max_events;
        // Due events per group, oldest first, at most what the group may send now.
        let mut order: Vec<Group> = Vec::new();
        let mut groups: HashMap<Group, Vec<String>> = HashMap::new();
        for (scanned, (due, id)) in self.sched.iter().enumerate() {
            if *due > now || scanned >= SCAN_LIMIT {
                break;
            }
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            let g = (e.app_id, e.url.clone());
            let busy = self.in_flight.get(&g).copied().unwrap_or(0);
            if busy >= per_url {
                continue;
            }
            let list = groups.entry(g.clone()).or_insert_with(|| {
                order.push(g);
                Vec::new()
            });
            if list.len() < max_events * (per_url - busy) {
                list.push(id.clone());
            }
        }
        for g in order {
            let Some(ids) = groups.remove(&g) else {
                continue;
            };
            let mut ids = ids.into_iter().peekable();
            while ids.peek().is_some()
                && self.in_flight_total < self.cfg.concurrency
                && self.in_flight.get(&g).copied().unwrap_or(0) < per_url
            {
                let mut batch: Vec<Entry> = Vec::new();
                let mut bytes = 2usize;
                while batch.len() < max_events {
                    let Some(id) = ids.peek() else { break };
                    let len = self.entries.get(id).map_or(0, |e| e.body.len() + 1);
                    if !batch.is_empty() && bytes + len > self.cfg.batch_max_bytes {
                        break;
                    }
                    let id = ids.next().unwrap_or_default();
                    if let Some(e) = self.entries.remove(&id) {
                        self.sched.remove(&(e.next_due_ms, id));
                        bytes += len;
                        batch.push(e);
                    }
                }
                if batch.is_empty() {
                    break;
                }
                *self.in_flight.entry(g.clone()).or_insert(0) += 1;
                self.in_flight_total += 1;
                self.spawn_post(g.clone(), batch, results.clone());
            }
        }
    }

    fn spawn_post(
        &self,
        (app_id, url): Group,
        batch: Vec<Entry>,
        results: tokio::sync::mpsc::Sender<(Vec<Entry>, Outcome)>,
    ) {
        let mut body =
            String::with_capacity(batch.iter().map(|e| e.body.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e.body);
        }
        body.push(']');
        // The app's current secret (rotation applies to the next POST, retries included).
        let secret: Option<Vec<u8>> = self
            .auth
            .apps()
            .get(app_id)
            .and_then(|a| a.callback_secret().map(|s| s.as_bytes().to_vec()));
        let client = self.client.clone();
        let count = batch.len();
        tokio::spawn(async move {
            let outcome = post(&client, &url, body, secret.as_deref(), count).await;
            // The loop holds a sender and reads until it stops; a failed send means it is gone.
            let _ = results.send((batch, outcome)).await;
        });
    }

    /// Applies a POST's outcome to its events.
    async fn finish(&mut self, batch: Vec<Entry>, outcome: Outcome) {
        if let Some(first) = batch.first() {
            let g = (first.app_id, first.url.clone());
            if let Some(n) = self.in_flight.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.remove(&g);
                }
            }
        }
        self.in_flight_total = self.in_flight_total.saturating_sub(1);
        let m = &self.metrics.callbacks;
        match outcome {
            Outcome::Delivered => {
                m.posts_ok.inc();
                for e in batch {
                    debug!(event_id = %e.event_id, "callback delivered");
                    self.remove(e.event_id).await;
                }
            }
            Outcome::GiveUp { reason, status } => {
                m.post_failed(reason);
                let mut gave_up = Vec::with_capacity(batch.len());
                for mut e in batch {
                    e.attempts += 1;
                    gave_up.push(e);
                }
                self.give_up(gave_up, reason, status).await;
            }
            Outcome::Retry {
                reason,
                retry_after,
            } => {
                m.post_failed(reason);
                let now = unix_ms();
                let max_age_ms = self.cfg.max_age_s.saturating_mul(1000);
                let mut gave_up = Vec::new();
                for mut e in batch {
                    e.attempts += 1;
                    if e.attempts >= self.cfg.max_attempts
                        || now.saturating_sub(e.created_ms) >= max_age_ms
                    {
                        gave_up.push(e);
                        continue;
                    }
                    let mut delay = backoff_ms(
                        e.attempts,
                        self.cfg.backoff_initial_ms,
                        self.cfg.backoff_max_ms,
                        fastrand::f64(),
                    );
                    if let Some(ra) = retry_after {
                        let ra = u64::try_from(ra.as_millis()).unwrap_or(u64::MAX);
                        delay = delay.max(ra.min(self.cfg.backoff_max_ms));
                    }
                    e.next_due_ms = now + delay;
                    // Buffered: if lost in a crash, the event is simply tried again sooner.
                    let _ = self.ops.send(Op::Reschedule(e.clone())).await;
                    self.schedule(e);
                }
                self.give_up(gave_up, reason, None).await;
            }
        }
    }

    /// Drops events for good: one WARN line per POST (not per event, so a dead receiver with
    /// a large backlog does not flood the log), every id at DEBUG, counted per event.
    async fn give_up(&mut self, events: Vec<Entry>, reason: &'static str, status: Option<u16>) {
        let Some(first) = events.first() else {
            return;
        };
        warn!(
            events = events.len(),
            first_event_id = %first.event_id,
            app_id = first.app_id,
            attempts = first.attempts,
            reason,
            status,
            "callbacks given up"
        );
        for e in events {
            debug!(event_id = %e.event_id, attempts = e.attempts, "callback given up");
            self.metrics.callbacks.events_gave_up.inc();
            self.remove(e.event_id).await;
        }
    }

    async fn remove(&mut self, event_id: String) {
        // If this buffered delete is lost in a crash, the event is sent once more (at least
        // once); receivers dedupe on `event_id`.
        let _ = self.ops.send(Op::Delete(event_id)).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// How long to sleep: until the next not-yet-due event, at most [`IDLE_WAKE`]. Due events
    /// held back by a concurrency bound wait for an answer, which wakes the loop anyway.
    fn next_wake(&self, now: u64) -> Duration {
        self.sched
            .range((now + 1, String::new())..)
            .next()
            .map_or(IDLE_WAKE, |(due, _)| {
                Duration::from_millis(due - now).min(IDLE_WAKE)
            })
    }
}

/// Sends one batch and classifies the answer. The response body is not read.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: String,
    secret: Option<&[u8]>,
    count: usize,
) -> Outcome {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Smsgw-Event-Count", count.to_string());
    if let Some(secret) = secret {
        let t = unix_ms() / 1000;
        req = req.header(sign::HEADER, sign::header_value(secret, t, body.as_bytes()));
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            classify(resp.status().as_u16(), retry_after)
        }
        Err(e) => Outcome::Retry {
            reason: if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "other"
            },
            retry_after: None,
        },
    }
}

/// The loop: schedule new events, start due POSTs, apply answers. It runs until the side
/// runtime is shut down (or the outbox writer stops); what is pending stays in the outbox for
/// the next start.
pub async fn run(mut d: Dispatcher) {
    let (res_tx, mut res_rx) = tokio::sync::mpsc::channel(d.cfg.concurrency.max(1));
    loop {
        let now = unix_ms();
        d.launch_due(now, &res_tx);
        d.metrics
            .callbacks
            .outbox_backlog
            .set(d.pending.load(Ordering::Relaxed) as u64);
        let wake = d.next_wake(now);
        tokio::select! {
            e = d.new_rx.recv() => match e {
                Some(e) => {
                    d.schedule(e);
                    // Take what else arrived, so a burst is scheduled (and batched) at once.
                    for _ in 0..SCAN_LIMIT {
                        match d.new_rx.try_recv() {
                            Ok(e) => d.schedule(e),
                            Err(_) => break,
                        }
                    }
                }
                // The outbox writer stopped (process shutting down).
                None => return,
            },
            Some((batch, outcome)) = res_rx.recv() => d.finish(batch, outcome).await,
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jitter_stays_in_half_to_full() {
        for attempts in 1..=60u32 {
            let nominal = 1000u64
                .saturating_mul(1u64 << (attempts - 1).min(40))
                .min(300_000);
            let lo = backoff_ms(attempts, 1000, 300_000, 0.0);
            let hi = backoff_ms(attempts, 1000, 300_000, 0.999_999);
            assert_eq!(lo, nominal / 2, "attempt {attempts}");
            assert!(
                hi <= nominal && hi >= nominal - 1,
                "attempt {attempts}: {hi}"
            );
            for _ in 0..50 {
                let d = backoff_ms(attempts, 1000, 300_000, fastrand::f64());
                assert!((lo..=nominal).contains(&d));
            }
        }
        assert_eq!(backoff_ms(1, 1000, 300_000, 0.0), 500);
        assert_eq!(backoff_ms(2, 1000, 300_000, 0.0), 1000);
        assert_eq!(backoff_ms(u32::MAX, u64::MAX, u64::MAX, 1.0), u64::MAX);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(200, None), Outcome::Delivered);
        assert_eq!(classify(204, None), Outcome::Delivered);
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(matches!(classify(s, None), Outcome::Retry { .. }), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert_eq!(
                classify(s, None),
                Outcome::GiveUp {
                    reason: "http_4xx",
                    status: Some(s)
                }
            );
        }
        for s in [301, 302, 100] {
            assert!(matches!(
                classify(s, None),
                Outcome::GiveUp {
                    reason: "other",
                    ..
                }
            ));
        }
        let ra = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, ra),
            Outcome::Retry {
                reason: "http_4xx",
                retry_after: ra
            }
        );
    }
}
