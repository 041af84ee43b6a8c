//! Prometheus metrics: per-shard counter/histogram slots, summed at scrape time, and the
//! exposition. Only this module knows the exposition format.
//!
//! # Slots, and `prometheus-client` only at the edge
//! The hot path writes plain per-shard slots: each shard owns one [`ShardMetrics`] and is its
//! only writer, so no cache line is written by two cores for metrics. The crate's own metric
//! types (`Counter`, `Family`, ...) each own one atomic shared by every writer (and `Family`
//! hashes labels behind a lock), which is exactly the cross-core traffic the slots avoid. The
//! crate is used where it pays: [`SlotCollector`] implements its `Collector`, sums the slots
//! when the registry encodes it (at scrape time), and the crate's Prometheus text encoder
//! writes the page (HELP/TYPE, `_total`, label escaping, cumulative buckets).
//!
//! # Hot path cost
//! `ShardMetrics` is 128-byte aligned and written only by its own shard thread, with `Relaxed`
//! `fetch_add`: the line is never contended, so the add stays in the core's cache. The scrape
//! (any shard's HTTP handler) reads all slots with `Relaxed` loads; totals may be off by the
//! few increments racing with it, which Prometheus tolerates (counters stay monotonic because
//! every slot only grows).
//!
//! Process-wide counters of work that runs off the shards (delivery callbacks, crash
//! recovery; on the tokio side runtime) use the same [`Counter`] type with several writers:
//! `fetch_add` keeps them exact, and they are not on the message path.

mod exposition;
pub mod sample;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use exposition::{
    CONTENT_TYPE, Gauges, PolicyRemoteHealth, PolicyStoreHealth, SlotCollector, render,
};
pub use sample::{LinkSampler, scrape};

/// A counter: single-writer in the shard slots (see module docs for why `fetch_add` is then
/// uncontended); multi-writer only for the process-wide, off-path counters.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A single-writer gauge (the last value written by its shard).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs .. 10 s (plus `+Inf`).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// The same bounds in nanoseconds, for the comparison on the hot path (no float math).
const LATENCY_BUCKETS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Fixed-bucket latency histogram; buckets are stored non-cumulative (one add per observation)
/// and made cumulative at scrape.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `LATENCY_BUCKETS.len()` bounded buckets + the `+Inf` one.
    buckets: [Counter; 17],
    sum_ns: Counter,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_NS.partition_point(|&b| b < ns);
        self.buckets[i].inc();
        self.sum_ns.add(ns);
    }
}

/// Summed view of histograms (of all shards).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Non-cumulative counts, `LATENCY_BUCKETS.len() + 1` entries (last = above 10 s).
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl HistogramSnapshot {
    fn add(&mut self, h: &Histogram) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; h.buckets.len()];
        }
        for (acc, b) in self.buckets.iter_mut().zip(&h.buckets) {
            let v = b.get();
            *acc += v;
            self.count += v;
        }
        self.sum_seconds += h.sum_ns.get() as f64 / 1e9;
    }
}

/// Routes of the REST API, as the `route` label (a fixed set: no label cardinality from paths).
/// gRPC calls have their own family (`smsgw_grpc_requests_total`).
pub const ROUTES: [&str; 11] = [
    "send",
    "send_batch",
    "check_text_len",
    "status",
    "links",
    "login",
    "admin",
    "healthy",
    "openapi",
    "metrics",
    "other",
];

/// The route label of a request path.
pub fn route_index(path: &str) -> usize {
    let name = match path {
        "/api/v1/sms/send" => "send",
        crate::api::rest::BATCH_PATH => "send_batch",
        "/api/v1/sms/check-text-len" => "check_text_len",
        "/api/v1/smpp/links" => "links",
        "/api/v1/user/login" => "login",
        "/healthy" => "healthy",
        "/openapi.json" => "openapi",
        "/metrics" => "metrics",
        p if p.starts_with("/api/v1/admin/") => "admin",
        p if p.starts_with("/api/v1/sms/") => "status",
        _ => "other",
    };
    ROUTES
        .iter()
        .position(|r| *r == name)
        .unwrap_or(ROUTES.len() - 1)
}

/// HTTP statuses the API answers with; anything else is counted under `other`.
pub const STATUSES: [u16; 16] = [
    200, 400, 401, 403, 404, 405, 409, 413, 422, 429, 431, 500, 502, 503, 504, 0,
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// Number of `reason` label values: every API error code (`ErrorKind::ALL`, so a new kind
/// gets its slot without touching this module) plus `other`.
pub const REASON_COUNT: usize = crate::api::ErrorKind::ALL.len() + 1;

/// The `reason` label of slot `i` (the last one is `other`).
pub fn reason_label(i: usize) -> &'static str {
    crate::api::ErrorKind::ALL
        .get(i)
        .map_or("other", |k| k.code())
}

/// Slot of an API error code; a code no `ErrorKind` has is counted as `other`. A linear scan
/// over ~40 short strings, on the error path only.
fn reason_index(code: &str) -> usize {
    crate::api::ErrorKind::ALL
        .iter()
        .position(|k| k.code() == code)
        .unwrap_or(REASON_COUNT - 1)
}

/// gRPC methods, as the `method` label (`other` for a name not in the list).
pub const GRPC_METHODS: [&str; 7] = [
    "SendMessage",
    "SendStream",
    "GetStatus",
    "CheckTextLen",
    "CheckESME",
    "Login",
    "other",
];

/// gRPC status codes, as the `code` label: `OK` and the tonic code names in SCREAMING_SNAKE.
/// A name not in the list is counted as `UNKNOWN`.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn grpc_method_index(method: &str) -> usize {
    GRPC_METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(GRPC_METHODS.len() - 1)
}

fn grpc_code_index(code: &str) -> usize {
    GRPC_CODES.iter().position(|c| *c == code).unwrap_or(2)
}

/// Why a callback POST failed, as the `reason` label (`other` for anything else).
pub const CALLBACK_FAILURES: [&str; 5] = ["connect", "timeout", "http_4xx", "http_5xx", "other"];

fn callback_failure_index(reason: &str) -> usize {
    CALLBACK_FAILURES
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(CALLBACK_FAILURES.len() - 1)
}

/// Delivery-status callbacks (process-wide: they run on the tokio side runtime, not on the
/// shards, so these are plain shared atomics off the message path).
#[derive(Debug, Default)]
pub struct CallbackMetrics {
    /// Status events put into the callback outbox.
    pub events_enqueued: Counter,
    /// Events refused because the outbox was at its bound.
    pub events_dropped: Counter,
    /// POSTs answered 2xx.
    pub posts_ok: Counter,
    posts_failed: [Counter; CALLBACK_FAILURES.len()],
    /// Events abandoned after the last retry.
    pub events_gave_up: Counter,
    /// Events in the outbox not yet delivered (set by the callback worker).
    pub outbox_backlog: Gauge,
}

impl CallbackMetrics {
    /// A POST failed; `reason` is one of [`CALLBACK_FAILURES`] (anything else counts as
    /// `other`).
    pub fn post_failed(&self, reason: &str) {
        self.posts_failed[callback_failure_index(reason)].inc();
    }

    /// Failed POSTs by reason, indexed like [`CALLBACK_FAILURES`].
    pub fn posts_failed(&self) -> [u64; CALLBACK_FAILURES.len()] {
        std::array::from_fn(|i| self.posts_failed[i].get())
    }
}

/// CDR writer backlog, read at scrape time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CdrBacklog {
    /// Records queued for the writer thread, not yet in a closed batch.
    pub queued_records: u64,
    /// Closed batches waiting for the sink (held in memory or spooled).
    pub pending_batches: u64,
    /// Batch files in the S3 spool directory, and their bytes.
    pub spool_files: u64,
    pub spool_bytes: u64,
}

/// Reads the CDR backlog at scrape time.
pub type CdrProbe = Box<dyn Fn() -> CdrBacklog + Send + Sync>;

/// Per-link values of one shard, written by that shard's health loop.
#[derive(Debug, Default)]
pub struct LinkSlot {
    /// Binds of this link run by the shard / of those, bound now (submit-capable sessions).
    pub binds: Gauge,
    pub binds_up: Gauge,
    /// Submits written and unanswered / queued behind the window; window capacity.
    pub outstanding: Gauge,
    pub queued: Gauge,
    pub window: Gauge,
    /// Monotonic across sessions (the sampler adds per-session deltas).
    pub throttled: Counter,
    pub submit_timeouts: Counter,
    pub unmatched_responses: Counter,
    pub delivers: Counter,
    /// TCP connection attempts beyond the first of each bind.
    pub reconnects: Counter,
}

/// One shard's slots. Aligned so that two shards' slots never share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub struct ShardMetrics {
    http: [[Counter; STATUSES.len()]; ROUTES.len()],
    pub accepted: Counter,
    pub parts_submitted: Counter,
    rejected: [Counter; REASON_COUNT],
    pub send_duration: Histogram,
    pub submit_resp: Histogram,
    /// Per message: `Pipeline::send` took it → its last submit_sm_resp (not for crash
    /// resubmissions).
    pub ingress_to_submit_resp: Histogram,
    pub receipt_delay: Histogram,
    pub receipts_applied: Counter,
    pub receipts_duplicate: Counter,
    pub receipts_unmatched: Counter,
    pub receipts_unparsable: Counter,
    /// Receipts left unacknowledged (the SMSC resends) because the store was down.
    pub receipts_not_acked_store_down: Counter,
    /// Messages whose every part the SMSC accepted / that ended failed at submission.
    pub submitted: Counter,
    pub failed: Counter,
    /// Messages handed to another shard / refused because its queue was full.
    pub handed_over: Counter,
    pub handover_full: Counter,
    /// Messages retried on another bind of the same link / another member of the pool.
    pub retried_other_bind: Counter,
    pub retried_other_member: Counter,
    /// Submitted messages whose outcome write failed.
    pub state_write_failed_after_submit: Counter,
    grpc: [[Counter; GRPC_CODES.len()]; GRPC_METHODS.len()],
    /// 0 = not started, 1 = io_uring, 2 = epoll.
    driver: Gauge,
    pub links: Box<[LinkSlot]>,
}

impl ShardMetrics {
    fn new(links: usize) -> ShardMetrics {
        ShardMetrics {
            http: Default::default(),
            accepted: Counter::default(),
            parts_submitted: Counter::default(),
            rejected: std::array::from_fn(|_| Counter::default()),
            send_duration: Histogram::default(),
            submit_resp: Histogram::default(),
            ingress_to_submit_resp: Histogram::default(),
            receipt_delay: Histogram::default(),
            receipts_applied: Counter::default(),
            receipts_duplicate: Counter::default(),
            receipts_unmatched: Counter::default(),
            receipts_unparsable: Counter::default(),
            receipts_not_acked_store_down: Counter::default(),
            submitted: Counter::default(),
            failed: Counter::default(),
            handed_over: Counter::default(),
            handover_full: Counter::default(),
            retried_other_bind: Counter::default(),
            retried_other_member: Counter::default(),
            state_write_failed_after_submit: Counter::default(),
            grpc: Default::default(),
            driver: Gauge::default(),
            links: (0..links).map(|_| LinkSlot::default()).collect(),
        }
    }

    #[inline]
    pub fn http_request(&self, path: &str, status: u16) {
        self.http[route_index(path)][status_index(status)].inc();
    }

    /// A send answered with an error; `code` is the API error code.
    #[inline]
    pub fn rejected(&self, code: &str) {
        self.rejected[reason_index(code)].inc();
    }

    /// A gRPC call handled on this shard: `method` one of [`GRPC_METHODS`], `code` `OK` or a
    /// tonic code name in SCREAMING_SNAKE (e.g. `UNAUTHENTICATED`). Unknown names fall into
    /// `other` / `UNKNOWN` rather than panic.
    #[inline]
    pub fn grpc_request(&self, method: &str, code: &str) {
        self.grpc[grpc_method_index(method)][grpc_code_index(code)].inc();
    }

    pub fn set_driver(&self, driver: crate::runtime::Driver) {
        self.driver.set(match driver {
            crate::runtime::Driver::IoUring => 1,
            crate::runtime::Driver::Epoll => 2,
        });
    }
}

/// Reads `(queue length, batches, batched ops)` of the state store at scrape time.
pub type StateProbe = Box<dyn Fn() -> (u64, u64, u64) + Send + Sync>;

/// Reads the journal engine's counters at scrape time; `None` once the store is gone (the
/// probe holds it weakly), which drops its families from the page.
pub type JournalProbe = Box<dyn Fn() -> Option<crate::state::journal::JournalStats> + Send + Sync>;

/// All shards' slots, created once at startup.
pub struct Metrics {
    shards: Box<[ShardMetrics]>,
    /// Link ids, in slot order.
    link_ids: Vec<u32>,
    /// Set at startup when the state backend reports a backlog (embedded, writer engine).
    pub state_probe: OnceLock<StateProbe>,
    /// Set at startup when the embedded backend runs the journal engine.
    pub journal_probe: OnceLock<JournalProbe>,
    /// Set at startup by `serve` to read the CDR writer's backlog.
    pub cdr_probe: OnceLock<CdrProbe>,
    /// Delivery-status callbacks (side runtime).
    pub callbacks: CallbackMetrics,
    /// Crash recovery at start: parts resubmitted / marked `Unknown` (side runtime).
    pub recovered_resubmitted: Counter,
    pub recovered_unknown: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.shards.len())
            .field("link_ids", &self.link_ids)
            .finish()
    }
}

impl Metrics {
    pub fn new(shards: usize, link_ids: Vec<u32>) -> Metrics {
        Metrics {
            shards: (0..shards.max(1))
                .map(|_| ShardMetrics::new(link_ids.len()))
                .collect(),
            link_ids,
            state_probe: OnceLock::new(),
            journal_probe: OnceLock::new(),
            cdr_probe: OnceLock::new(),
            callbacks: CallbackMetrics::default(),
            recovered_resubmitted: Counter::default(),
            recovered_unknown: Counter::default(),
        }
    }

    /// The slots of `shard` (out-of-range ids share the last slot rather than panic).
    #[inline]
    pub fn shard(&self, shard: usize) -> &ShardMetrics {
        &self.shards[shard.min(self.shards.len() - 1)]
    }

    pub fn link_index(&self, link: u32) -> Option<usize> {
        self.link_ids.iter().position(|&l| l == link)
    }

    /// Sums every shard's slots.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            http: vec![vec![0; STATUSES.len()]; ROUTES.len()],
            rejected: vec![0; REASON_COUNT],
            grpc: vec![vec![0; GRPC_CODES.len()]; GRPC_METHODS.len()],
            links: self
                .link_ids
                .iter()
                .map(|&id| LinkSnapshot {
                    id,
                    ..LinkSnapshot::default()
                })
                .collect(),
            ..Snapshot::default()
        };
        for (i, sh) in self.shards.iter().enumerate() {
            for (r, row) in sh.http.iter().enumerate() {
                for (st, c) in row.iter().enumerate() {
                    s.http[r][st] += c.get();
                }
            }
            for (i, c) in sh.rejected.iter().enumerate() {
                s.rejected[i] += c.get();
            }
            s.accepted += sh.accepted.get();
            s.parts_submitted += sh.parts_submitted.get();
            s.send_duration.add(&sh.send_duration);
            s.submit_resp.add(&sh.submit_resp);
            s.ingress_to_submit_resp.add(&sh.ingress_to_submit_resp);
            s.receipt_delay.add(&sh.receipt_delay);
            s.receipts_applied += sh.receipts_applied.get();
            s.receipts_duplicate += sh.receipts_duplicate.get();
            s.receipts_unmatched += sh.receipts_unmatched.get();
            s.receipts_unparsable += sh.receipts_unparsable.get();
            s.receipts_not_acked_store_down += sh.receipts_not_acked_store_down.get();
            s.submitted += sh.submitted.get();
            s.failed += sh.failed.get();
            s.handed_over += sh.handed_over.get();
            s.handover_full += sh.handover_full.get();
            s.retried_other_bind += sh.retried_other_bind.get();
            s.retried_other_member += sh.retried_other_member.get();
            s.state_write_failed_after_submit += sh.state_write_failed_after_submit.get();
            for (acc, row) in s.grpc.iter_mut().zip(sh.grpc.iter()) {
                for (a, c) in acc.iter_mut().zip(row) {
                    *a += c.get();
                }
            }
            s.drivers.push((
                i,
                match sh.driver.get() {
                    1 => Some("io_uring"),
                    2 => Some("epoll"),
                    _ => None,
                },
            ));
            for (acc, l) in s.links.iter_mut().zip(sh.links.iter()) {
                acc.binds += l.binds.get();
                acc.binds_up += l.binds_up.get();
                acc.outstanding += l.outstanding.get();
                acc.queued += l.queued.get();
                acc.window += l.window.get();
                acc.throttled += l.throttled.get();
                acc.submit_timeouts += l.submit_timeouts.get();
                acc.unmatched_responses += l.unmatched_responses.get();
                acc.delivers += l.delivers.get();
                acc.reconnects += l.reconnects.get();
            }
        }
        s
    }
}

/// Sum over shards of one link's slots.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LinkSnapshot {
    pub id: u32,
    pub binds: u64,
    pub binds_up: u64,
    pub outstanding: u64,
    pub queued: u64,
    pub window: u64,
    pub throttled: u64,
    pub submit_timeouts: u64,
    pub unmatched_responses: u64,
    pub delivers: u64,
    pub reconnects: u64,
}

/// Sum over shards of every slot.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    /// `[route][status]`, indexed like `ROUTES` / `STATUSES`.
    pub http: Vec<Vec<u64>>,
    pub rejected: Vec<u64>,
    pub accepted: u64,
    pub parts_submitted: u64,
    pub send_duration: HistogramSnapshot,
    pub submit_resp: HistogramSnapshot,
    pub ingress_to_submit_resp: HistogramSnapshot,
    pub receipt_delay: HistogramSnapshot,
    pub receipts_applied: u64,
    pub receipts_duplicate: u64,
    pub receipts_unmatched: u64,
    pub receipts_unparsable: u64,
    pub receipts_not_acked_store_down: u64,
    pub submitted: u64,
    pub failed: u64,
    pub handed_over: u64,
    pub handover_full: u64,
    pub retried_other_bind: u64,
    pub retried_other_member: u64,
    pub state_write_failed_after_submit: u64,
    /// `[method][code]`, indexed like `GRPC_METHODS` / `GRPC_CODES`.
    pub grpc: Vec<Vec<u64>>,
    pub drivers: Vec<(usize, Option<&'static str>)>,
    pub links: Vec<LinkSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_every_shard() {
        let m = Metrics::new(3, vec![7, 9]);
        for shard in 0..3 {
            for _ in 0..=shard {
                m.shard(shard).accepted.inc();
                m.shard(shard).http_request("/api/v1/sms/send", 200);
                m.shard(shard)
                    .send_duration
                    .observe(Duration::from_micros(300));
            }
            m.shard(shard).rejected("rate_limited");
            m.shard(shard).links[1].binds_up.set(1);
            m.shard(shard).links[1].throttled.add(2);
        }
        let s = m.snapshot();
        assert_eq!(s.accepted, 1 + 2 + 3);
        assert_eq!(s.http[route_index("/api/v1/sms/send")][0], 6);
        assert_eq!(s.rejected[reason_index("rate_limited")], 3);
        assert_eq!(s.send_duration.count, 6);
        // 300 µs falls in the (250 µs, 500 µs] bucket.
        assert_eq!(s.send_duration.buckets[2], 6);
        assert!((s.send_duration.sum_seconds - 6.0 * 0.0003).abs() < 1e-9);
        assert_eq!(s.links[0].binds_up, 0);
        assert_eq!(s.links[1].binds_up, 3);
        assert_eq!(s.links[1].throttled, 6);
        assert_eq!(s.links[1].id, 9);
    }

    #[test]
    fn histogram_bucket_edges_and_overflow() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // exactly on the first bound: le="0.0001"
        h.observe(Duration::from_nanos(100_001));
        h.observe(Duration::from_secs(11)); // +Inf
        h.observe(Duration::MAX); // saturates, no panic
        let mut s = HistogramSnapshot::default();
        s.add(&h);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[16], 2);
        assert_eq!(s.count, 4);
    }

    #[test]
    fn slots_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<ShardMetrics>(), 128);
        assert_eq!(std::mem::size_of::<ShardMetrics>() % 128, 0);
    }

    #[test]
    fn unknown_labels_fall_into_other() {
        assert_eq!(ROUTES[route_index("/nope")], "other");
        assert_eq!(ROUTES[route_index("/api/v1/sms/send-batch")], "send_batch");
        assert_eq!(ROUTES[route_index("/api/v1/sms/abc-123")], "status");
        assert_eq!(STATUSES[status_index(299)], 0);
        assert_eq!(reason_label(reason_index("brand_new_code")), "other");
        let m = Metrics::new(2, vec![]);
        m.shard(99).accepted.inc(); // out of range: no panic
        assert_eq!(m.snapshot().accepted, 1);
    }

    #[test]
    fn grpc_and_callback_labels_fall_back_instead_of_panicking() {
        let m = Metrics::new(1, vec![]);
        let sh = m.shard(0);
        sh.grpc_request("SendMessage", "OK");
        sh.grpc_request("Login", "UNAUTHENTICATED");
        sh.grpc_request("Nope", "WHATEVER");
        assert_eq!(sh.grpc[0][0].get(), 1);
        assert_eq!(sh.grpc[5][16].get(), 1);
        assert_eq!(
            sh.grpc[GRPC_METHODS.len() - 1][2].get(),
            1,
            "other / UNKNOWN"
        );
        m.callbacks.post_failed("timeout");
        m.callbacks.post_failed("teapot");
        let f = m.callbacks.posts_failed();
        assert_eq!(f[1], 1);
        assert_eq!(f[CALLBACK_FAILURES.len() - 1], 1);
    }

    #[test]
    fn every_error_code_has_its_own_slot() {
        use crate::api::ErrorKind;
        for kind in ErrorKind::ALL {
            assert_eq!(reason_label(reason_index(kind.code())), kind.code());
        }
        assert_eq!(reason_label(REASON_COUNT - 1), "other");
    }
}
